// The socket transports against real sockets: who is at the other end.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "qmp/transport.hpp"

using namespace blockmig;
using namespace blockmig::qmp;

namespace {

// A child process listening on a Unix socket, so the peer is another pid
// than the test's own. Killed and reaped on destruction.
class ListeningChild {
  public:
    explicit ListeningChild(const std::string& path) {
        int ready[2];
        if (::pipe(ready) != 0) std::abort();
        m_pid = ::fork();
        if (m_pid == 0) {
            // Only async-signal-safe calls between fork and _exit.
            sockaddr_un addr{};
            addr.sun_family = AF_UNIX;
            std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
            int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
            if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
                ::listen(fd, 4) != 0)
                ::_exit(1);
            char ok = 1;
            (void)!::write(ready[1], &ok, 1);
            while (true) ::pause();
        }
        ::close(ready[1]);
        char ok = 0;
        m_ready = ::read(ready[0], &ok, 1) == 1;
        ::close(ready[0]);
    }
    ~ListeningChild() {
        ::kill(m_pid, SIGKILL);
        ::waitpid(m_pid, nullptr, 0);
    }
    int pid() const { return m_pid; }
    bool ready() const { return m_ready; }

  private:
    int m_pid = -1;
    bool m_ready = false;
};

TEST(SocketTransport, UnixPeerPidIsTheListeningProcess) {
    auto dir =
        std::filesystem::temp_directory_path() / ("bm-peerpid-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "qmp.sock").string();
    {
        ListeningChild child(path);
        ASSERT_TRUE(child.ready());
        auto transport = make_unix_transport(path);
        ASSERT_TRUE(transport) << transport.error().message;
        ASSERT_TRUE((*transport)->peer_pid().has_value());
        EXPECT_EQ(*(*transport)->peer_pid(), child.pid());
        EXPECT_NE(*(*transport)->peer_pid(), ::getpid());
    }
    std::filesystem::remove_all(dir);
}

TEST(SocketTransport, TcpPeerPidIsUnknown) {
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(listener, 1), 0);
    socklen_t len = sizeof addr;
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    auto transport = make_tcp_transport("127.0.0.1", ntohs(addr.sin_port));
    ASSERT_TRUE(transport) << transport.error().message;
    EXPECT_FALSE((*transport)->peer_pid().has_value());
    ::close(listener);
}

}  // namespace
