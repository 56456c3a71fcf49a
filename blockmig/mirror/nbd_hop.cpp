#include "nbd_hop.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "jobs/names.hpp"

namespace blockmig {

namespace {

bool socket_accepts(const std::filesystem::path& path) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return false;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    bool ok = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(s);
    return ok;
}

}  // namespace

Result<DaemonSecrets> DaemonSecrets::prepare(const std::vector<nlohmann::json>& secrets) {
    DaemonSecrets out;
    for (const auto& secret : secrets) {
        if (!secret.contains("data")) {
            out.m_objects.push_back(secret);  // already by file or key
            continue;
        }
        const std::string id = secret.value("id", "");
        if (id.empty() || !secret["data"].is_string())
            return fail(ErrorCode::invalid_argument, "secret object without an id or string data");
        int fd = memfd_create("blockmig-secret", MFD_CLOEXEC);
        if (fd < 0)
            return fail(ErrorCode::io_error,
                        fmt::format("secret {}: memfd_create: {}", id, std::strerror(errno)));
        out.m_fds.push_back(fd);
        const std::string data = secret["data"].get<std::string>();
        if (write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size()))
            return fail(ErrorCode::io_error, fmt::format("secret {}: cannot write memfd", id));
        nlohmann::json object = secret;
        object.erase("data");
        object["file"] = fmt::format("/proc/self/fd/{}", fd);
        out.m_objects.push_back(std::move(object));
    }
    return out;
}

DaemonSecrets::DaemonSecrets(DaemonSecrets&& other) noexcept
    : m_objects(std::move(other.m_objects)), m_fds(std::exchange(other.m_fds, {})) {}

DaemonSecrets& DaemonSecrets::operator=(DaemonSecrets&& other) noexcept {
    if (this != &other) {
        for (int fd : m_fds) close(fd);
        m_objects = std::move(other.m_objects);
        m_fds = std::exchange(other.m_fds, {});
    }
    return *this;
}

DaemonSecrets::~DaemonSecrets() {
    for (int fd : m_fds) close(fd);
}

std::vector<std::string> storage_daemon_arguments(const std::filesystem::path& socket,
                                                  const nlohmann::json& protocol_node,
                                                  const DaemonSecrets& secrets) {
    std::vector<std::string> args;
    for (const auto& s : secrets.objects()) {
        // object-add arguments {qom-type, id, ...} become --object JSON
        args.push_back("--object");
        args.push_back(s.dump());
    }
    args.push_back("--blockdev");
    args.push_back(protocol_node.dump());
    args.push_back("--nbd-server");
    args.push_back("addr.type=unix,addr.path=" + socket.string());
    args.push_back("--export");
    args.push_back(fmt::format("type=nbd,id=hop,node-name={},name=hop,writable=on",
                               protocol_node.value("node-name", "")));
    return args;
}

Result<NbdHop> NbdHop::start(const std::filesystem::path& state_dir,
                             const nlohmann::json& protocol_node,
                             const std::vector<nlohmann::json>& secrets,
                             std::chrono::milliseconds timeout,
                             const std::filesystem::path& qemu_dir) {
    std::error_code ec;
    std::filesystem::create_directories(state_dir, ec);
    NbdHop hop;
    hop.m_dir = state_dir;
    hop.m_socket = state_dir / "nbd.sock";
    hop.m_log = jobs::hop_log_path(hop.m_socket);
    std::filesystem::remove(hop.m_socket, ec);
    const std::string node = protocol_node.value("node-name", "");
    if (node.empty() || hop.m_socket.string().size() >= sizeof(sockaddr_un::sun_path))
        return fail(ErrorCode::invalid_argument, "storage daemon: bad node or socket path");

    auto daemon_secrets = DaemonSecrets::prepare(secrets);
    if (!daemon_secrets) return fail(daemon_secrets.error().with_context("storage daemon"));
    std::vector<std::string> args{qemu_program(qemu_dir, "qemu-storage-daemon")};
    for (auto& a : storage_daemon_arguments(hop.m_socket, protocol_node, *daemon_secrets))
        args.push_back(std::move(a));

    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int log_fd = open(hop.m_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0)
        return fail(ErrorCode::io_error, fmt::format("storage daemon: create {}: {}",
                                                     hop.m_log.string(), std::strerror(errno)));
    // The daemon's log is what the user sees when it fails: say which program.
    const std::string cannot_run = fmt::format("cannot run {} (see --qemu-dir)\n", args[0]);
    pid_t pid = fork();
    if (pid < 0) {
        close(log_fd);
        return fail(ErrorCode::io_error, "storage daemon: fork failed");
    }
    if (pid == 0) {
        // Own process group: a Ctrl-C on blockmig's terminal must not kill
        // the hop before blockmig has detached the guest from it.
        setpgid(0, 0);
        for (int fd : daemon_secrets->fds()) fcntl(fd, F_SETFD, 0);  // inherit the secrets
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        execvp(argv[0], argv.data());
        // Only async-signal-safe calls after fork: the message is ready-made.
        (void)!write(2, cannot_run.data(), cannot_run.size());
        _exit(127);
    }
    close(log_fd);
    *daemon_secrets = DaemonSecrets{};  // the child holds its copies
    hop.m_pid = pid;

    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!socket_accepts(hop.m_socket)) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            hop.m_pid = -1;
            std::string why = hop.log_tail();
            return fail(ErrorCode::io_error,
                        fmt::format("storage daemon exited: {}", why.empty() ? "no message" : why));
        }
        if (std::chrono::steady_clock::now() > deadline) {
            std::string why = hop.log_tail();
            hop.kill_now();
            return fail(ErrorCode::timeout,
                        fmt::format("storage daemon did not open the target within {} s{}{}",
                                    timeout.count() / 1000, why.empty() ? "" : ": ", why));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return hop;
}

Result<NbdHop> NbdHop::adopt(int pid, const std::filesystem::path& socket) {
    // A PID can be reused: only adopt a qemu-storage-daemon serving `socket`.
    std::ifstream in(fmt::format("/proc/{}/cmdline", pid), std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmdline.find("qemu-storage-daemon") == std::string::npos ||
        cmdline.find(socket.string()) == std::string::npos)
        return fail(ErrorCode::not_found,
                    fmt::format("storage daemon {} serving {} is gone", pid, socket.string()));
    NbdHop hop;
    hop.m_pid = pid;
    hop.m_adopted = true;
    hop.m_socket = socket;
    hop.m_dir = socket.parent_path();
    hop.m_log = jobs::hop_log_path(socket);
    return hop;
}

NbdHop::NbdHop(NbdHop&& other) noexcept
    : m_pid(std::exchange(other.m_pid, -1)),
      m_adopted(other.m_adopted),
      m_socket(std::move(other.m_socket)),
      m_log(std::move(other.m_log)),
      m_dir(std::move(other.m_dir)) {}

NbdHop& NbdHop::operator=(NbdHop&& other) noexcept {
    if (this != &other) {
        kill_now();
        m_pid = std::exchange(other.m_pid, -1);
        m_adopted = other.m_adopted;
        m_socket = std::move(other.m_socket);
        m_log = std::move(other.m_log);
        m_dir = std::move(other.m_dir);
    }
    return *this;
}

NbdHop::~NbdHop() { kill_now(); }

nlohmann::json NbdHop::client_node(const std::string& node_name) const {
    return {{"driver", "nbd"},
            {"node-name", node_name},
            {"server", {{"type", "unix"}, {"path", m_socket.string()}}},
            {"export", "hop"},
            // Without it the block layer strips MAY_UNMAP from zero writes and
            // a thin target gets fully allocated by the mirror's zeroing pass.
            {"discard", "unmap"}};
}

bool NbdHop::running() const { return m_pid > 0 && kill(m_pid, 0) == 0; }

void NbdHop::wait_gone(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        int status = 0;
        bool gone = m_adopted ? kill(m_pid, 0) != 0 : waitpid(m_pid, &status, WNOHANG) == m_pid;
        if (gone) {
            m_pid = -1;
            return;
        }
        if (std::chrono::steady_clock::now() > deadline) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

void NbdHop::kill_now() {
    if (m_pid <= 0) return;
    kill(m_pid, SIGKILL);
    wait_gone(std::chrono::seconds(5));
    m_pid = -1;
}

void NbdHop::stop(std::chrono::milliseconds grace) {
    if (m_pid <= 0) return;
    kill(m_pid, SIGTERM);
    wait_gone(grace);
    kill_now();
}

std::string NbdHop::log_tail() const {
    std::ifstream in(m_log);
    std::string line, last;
    while (std::getline(in, line))
        if (!line.empty()) last = line;
    return last;
}

}  // namespace blockmig
