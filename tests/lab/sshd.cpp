#include "sshd.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <stdexcept>

namespace blockmig::lab {

namespace {

// A TCP port nothing listens on right now, in this process's namespace.
int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error("lab: no free TCP port");
    ::close(fd);
    return ntohs(a.sin_port);
}

}  // namespace

SshServer::SshServer(const std::string& netns, const std::string& addr, int port)
    : m_addr(addr), m_port(port ? port : free_port()) {
    CommandResult r = run({(script_dir() / "sshd.sh").string(), "start", dir().string(), addr,
                           std::to_string(m_port), netns});
    if (r.status != 0) throw std::runtime_error("lab: sshd did not start: " + r.out);
    // The PID is the last word printed.
    std::istringstream words(r.out);
    for (std::string w; words >> w;) m_pid = std::atoi(w.c_str());
}

SshServer::~SshServer() { stop(); }

void SshServer::stop() {
    if (m_pid < 0) return;
    run({(script_dir() / "sshd.sh").string(), "stop", dir().string()});
    m_pid = -1;
}

std::string SshServer::missing_prerequisite() {
    if (run({"test", "-x", "/usr/sbin/sshd"}).status != 0)
        return "sshd is not installed (openssh-server; run .ci/install-deps.sh)";
    for (const char* tool : {"ssh", "ssh-keygen"})
        if (run({"sh", "-c", std::string("command -v ") + tool}).status != 0)
            return std::string(tool) +
                   " is not installed (openssh-client; run .ci/install-deps.sh)";
    return {};
}

std::string SshServer::url(const fs::path& socket, const std::string& user) const {
    return "ssh://" + user + "@" + m_addr + ":" + std::to_string(m_port) + socket.string();
}

}  // namespace blockmig::lab
