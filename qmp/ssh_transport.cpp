// QMP on another host through the system's OpenSSH client (qmp/transport.hpp).
//
// OpenSSH cannot stdio-forward to a Unix socket (`ssh -W` takes host:port
// only), so blockmig runs `ssh -N -L LOCAL:REMOTE` (streamlocal forwarding,
// OpenSSH >= 6.7): sshd on the other host connects to the QMP socket, and
// the forwarded end is a socket in a private 0700 directory here. Nothing is
// needed on the other host but sshd. The ssh process belongs to the
// transport: started per connection, killed and reaped with it.
#include <fcntl.h>
#include <fmt/core.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "qmp/address.hpp"
#include "qmp/transport.hpp"

namespace blockmig::qmp {

namespace {

namespace fs = std::filesystem;
using Steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The ssh client from PATH, resolved before fork (execv, not execvp, runs in the child).
std::optional<std::string> find_ssh() {
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/usr/bin:/bin";
    while (!dirs.empty()) {
        std::size_t colon = dirs.find(':');
        std::string_view dir = dirs.substr(0, colon);
        fs::path candidate = fs::path(dir.empty() ? "." : std::string(dir)) / "ssh";
        if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
        if (colon == std::string_view::npos) break;
        dirs = dirs.substr(colon + 1);
    }
    return std::nullopt;
}

std::string last_line(const std::string& text) {
    std::istringstream in(text);
    std::string line, last;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();  // ssh ends lines with CRLF
        if (!line.empty()) last = line;
    }
    return last;
}

// The ssh child and its private directory (forwarded socket, ssh's stderr).
class SshProcess {
  public:
    SshProcess() = default;
    SshProcess(const SshProcess&) = delete;
    SshProcess& operator=(const SshProcess&) = delete;
    ~SshProcess() {
        stop();
        std::error_code ec;
        if (!m_dir.empty()) fs::remove_all(m_dir, ec);
    }

    // Makes the 0700 directory (mkdtemp) under $XDG_RUNTIME_DIR or /tmp.
    Result<void> make_dir() {
        const char* runtime = std::getenv("XDG_RUNTIME_DIR");
        std::string base = runtime && *runtime ? runtime : "/tmp";
        std::string tmpl = base + "/blockmig-ssh-XXXXXX";
        if (!::mkdtemp(tmpl.data()))
            return fail(ErrorCode::io_error,
                        fmt::format("mkdtemp {}: {}", tmpl, std::strerror(errno)));
        m_dir = tmpl;
        return {};
    }

    // fork + execv: argv only, never a shell. The child gets its own process
    // group (a Ctrl-C meant for blockmig must not cut the monitor blockmig
    // needs to cancel cleanly) and SIGTERM when the thread that started it
    // exits (blockmig connects from its main thread), so a SIGKILLed blockmig
    // leaves no ssh behind.
    Result<void> spawn(const std::string& program, const std::vector<std::string>& args) {
        std::vector<char*> argv;
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        int err = ::open(stderr_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (err < 0)
            return fail(ErrorCode::io_error,
                        fmt::format("open {}: {}", stderr_path().string(), std::strerror(errno)));
        int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        const pid_t parent = ::getpid();
        pid_t pid = ::fork();
        if (pid == 0) {
            // Only async-signal-safe calls until execv.
            ::setpgid(0, 0);
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(127);
            ::dup2(null, 0);
            ::dup2(null, 1);
            ::dup2(err, 2);
            ::syscall(SYS_close_range, 3U, ~0U, 0U);
            struct sigaction dfl {};
            dfl.sa_handler = SIG_DFL;
            for (int s : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGCHLD}) ::sigaction(s, &dfl, nullptr);
            sigset_t none;
            ::sigemptyset(&none);
            ::sigprocmask(SIG_SETMASK, &none, nullptr);
            ::execv(program.c_str(), argv.data());
            ::_exit(127);
        }
        int fork_errno = errno;
        ::close(err);
        if (null >= 0) ::close(null);
        if (pid < 0)
            return fail(ErrorCode::io_error, fmt::format("fork: {}", std::strerror(fork_errno)));
        m_pid = pid;
        return {};
    }

    // True once the child has exited (reaped here; its status is kept).
    bool exited() {
        if (m_pid <= 0) return true;
        int status = 0;
        pid_t r = ::waitpid(m_pid, &status, WNOHANG);
        if (r == m_pid || (r < 0 && errno == ECHILD)) {
            m_pid = -1;
            return true;
        }
        return false;
    }

    // SIGTERM, then SIGKILL if ssh is still there after a second; reaped.
    void stop() {
        if (m_pid <= 0) return;
        ::kill(m_pid, SIGTERM);
        const auto deadline = Steady::now() + std::chrono::seconds(1);
        while (!exited() && Steady::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
        if (m_pid > 0) {
            ::kill(m_pid, SIGKILL);
            ::waitpid(m_pid, nullptr, 0);
            m_pid = -1;
        }
    }

    std::string stderr_text() const {
        std::ifstream in(stderr_path());
        std::stringstream s;
        s << in.rdbuf();
        return s.str();
    }

    fs::path socket_path() const { return m_dir / "qmp.sock"; }
    fs::path stderr_path() const { return m_dir / "ssh.stderr"; }

  private:
    fs::path m_dir;
    pid_t m_pid = -1;
};

// ssh's last words, without its own "ssh: " prefix.
std::string ssh_said(const std::string& text) {
    std::string said = last_line(text);
    return said.starts_with("ssh: ") ? said.substr(5) : said;
}

// What ssh wrote means, as one line for the user; nullopt when nothing in
// `text` is a failure ssh is known to report.
std::optional<Error> explain_ssh_failure(const Address& a, const std::string& text) {
    auto has = [&](std::string_view s) { return text.find(s) != std::string::npos; };
    std::string what;
    ErrorCode code = ErrorCode::io_error;
    if (has("Permission denied") || has("Too many authentication failures")) {
        what = fmt::format(
            "ssh to {} was refused (authentication failed: key, agent or "
            "ssh_config; blockmig never asks for a password)",
            a.host);
    } else if (has("Host key verification failed") || has("IDENTIFICATION HAS CHANGED")) {
        what =
            fmt::format("the host key of {} is not trusted (add it to known_hosts first)", a.host);
    } else if (has("Could not resolve hostname")) {
        what = fmt::format("cannot resolve host {}", a.host);
        code = ErrorCode::not_found;
    } else if (has("timed out")) {
        what = fmt::format("cannot reach {} (timed out)", a.host);
        code = ErrorCode::timeout;
    } else if (has("Connection refused") || has("No route to host") ||
               has("Network is unreachable")) {
        what = fmt::format("cannot reach sshd on {}", a.host);
    } else if (has("open failed") || has("administratively prohibited")) {
        what = fmt::format(
            "sshd on {} cannot open {} (no such socket, no permission, or "
            "AllowStreamLocalForwarding off)",
            a.host, a.path);
        code = ErrorCode::not_found;
    } else if (has("closed by remote host") || has("Broken pipe") || has("Timeout, server")) {
        what = fmt::format("the ssh connection to {} was lost", a.host);
        code = ErrorCode::interrupted;
    } else {
        return std::nullopt;
    }
    return Error{
        code, fmt::format("qmp: {}: {} (ssh: {})", to_string(a), what, ssh_said(text)), {}};
}

// ssh ended before the forward was up: what it said, known or not.
Error ssh_exited(const Address& a, const std::string& text) {
    if (auto known = explain_ssh_failure(a, text)) return *known;
    const std::string said = ssh_said(text);
    return Error{ErrorCode::io_error,
                 fmt::format("qmp: {}: ssh to {} failed{}", to_string(a), a.host,
                             said.empty() ? "" : " (ssh: " + said + ")"),
                 {}};
}

// The forwarded socket, wrapped: no fd passing over ssh, no peer pid (the
// local peer is ssh, not QEMU), and ssh's own words when the stream ends.
class SshTransport final : public Transport {
  public:
    // `said_before`: how much ssh had written to its stderr before the local
    // connection was made (anything after may be about this connection).
    SshTransport(Address address, std::unique_ptr<SshProcess> ssh, std::unique_ptr<Transport> inner,
                 std::size_t said_before)
        : m_address(std::move(address)),
          m_peer(to_string(m_address)),
          m_ssh(std::move(ssh)),
          m_inner(std::move(inner)),
          m_said_before(said_before) {}
    ~SshTransport() override {
        m_inner.reset();
        m_ssh.reset();  // kills and reaps ssh, removes the directory
    }

    Result<void> send(std::string_view line, std::span<const int> fds) override {
        if (!fds.empty())
            return fail(ErrorCode::unsupported,
                        fmt::format("qmp: {}: passing file descriptors needs a local Unix "
                                    "socket; it cannot work over ssh",
                                    m_peer));
        auto ok = m_inner->send(line, fds);
        if (!ok && !m_closed) return fail(diagnose(ok.error()));
        return ok;
    }

    Result<std::string> receive_line() override {
        auto line = m_inner->receive_line();
        if (!line && !m_closed && line.error().code == ErrorCode::interrupted)
            return fail(diagnose(line.error()));
        return line;
    }

    void close() override {
        m_closed = true;
        m_inner->close();
    }
    bool supports_fd_passing() const override { return false; }
    std::string peer() const override { return m_peer; }
    std::optional<int> peer_pid() const override { return std::nullopt; }

  private:
    // The stream ended: sshd could not open the socket, or ssh lost the host.
    // ssh writes why to its stderr around the same moment: wait (at most
    // 500 ms) for a reason it is known to give, or for ssh to end.
    Error diagnose(const Error& stream_error) {
        const auto deadline = Steady::now() + milliseconds(500);
        while (true) {
            std::string said = m_ssh->stderr_text();
            said.erase(0, std::min(m_said_before, said.size()));
            if (auto known = explain_ssh_failure(m_address, said)) {
                if (known->code != ErrorCode::not_found) known->code = ErrorCode::interrupted;
                return *known;
            }
            if (m_ssh->exited() || Steady::now() >= deadline) break;
            std::this_thread::sleep_for(milliseconds(10));
        }
        // Name the address the user gave, not the local end of the forward.
        Error e = stream_error;
        const std::string local = m_inner->peer();
        for (std::size_t at; (at = e.message.find(local)) != std::string::npos;)
            e.message.replace(at, local.size(), m_peer);
        return e;
    }

    Address m_address;
    std::string m_peer;
    std::unique_ptr<SshProcess> m_ssh;
    std::unique_ptr<Transport> m_inner;
    std::size_t m_said_before;  // ssh's stderr up to the connection (not about it)
    std::atomic<bool> m_closed{false};
};

std::vector<std::string> ssh_arguments(const Address& a, const SshOptions& options,
                                       const fs::path& local, milliseconds timeout) {
    const auto connect_s = std::max<long long>(1, (timeout.count() + 999) / 1000);
    std::vector<std::string> args{"ssh"};
    std::string config = options.config_file;
    if (config.empty())
        if (const char* env = std::getenv("BLOCKMIG_SSH_CONFIG")) config = env;
    if (!config.empty()) args.insert(args.end(), {"-F", config});
    args.insert(args.end(),
                {// never a prompt: blockmig runs unattended
                 "-o", "BatchMode=yes", "-o", fmt::format("ConnectTimeout={}", connect_s),
                 // a forward that cannot be set up ends ssh instead of leaving it idle
                 "-o", "ExitOnForwardFailure=yes",
                 // a dead link ends ssh (and so the QMP stream) within ~15 s
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                 // this process owns its connection: no multiplexing into a master
                 "-o", "ControlMaster=no", "-o", "ControlPath=none",
                 // ssh's stderr is a private file: keep the lines that explain failures
                 // ("channel 1: open failed" is INFO)
                 "-o", "LogLevel=INFO", "-a", "-x", "-N", "-L",
                 fmt::format("{}:{}", local.string(), a.path)});
    if (a.port) args.insert(args.end(), {"-p", std::to_string(a.port)});
    if (!a.user.empty()) args.insert(args.end(), {"-l", a.user});
    args.insert(args.end(), {"--", a.host});
    return args;
}

}  // namespace

Result<std::unique_ptr<Transport>> make_ssh_transport(const Address& address, milliseconds timeout,
                                                      const SshOptions& options) {
    const std::string peer = to_string(address);
    if (address.kind != Address::Kind::ssh)
        return fail(ErrorCode::invalid_argument, fmt::format("qmp: {}: not an ssh address", peer));
    auto program = find_ssh();
    if (!program)
        return fail(ErrorCode::not_found,
                    fmt::format("qmp: {}: no ssh in PATH (install openssh-client)", peer));
    auto ssh = std::make_unique<SshProcess>();
    if (auto ok = ssh->make_dir(); !ok) return fail(ok.error().with_context("qmp: " + peer));
    if (auto ok =
            ssh->spawn(*program, ssh_arguments(address, options, ssh->socket_path(), timeout));
        !ok)
        return fail(ok.error().with_context("qmp: " + peer));
    // No event says ssh has authenticated and bound the forward: poll for the
    // socket (every 10 ms, a few syscalls) while watching ssh, up to the deadline.
    const auto deadline = Steady::now() + timeout;
    while (true) {
        if (ssh->exited()) return fail(ssh_exited(address, ssh->stderr_text()));
        std::error_code ec;
        if (fs::is_socket(ssh->socket_path(), ec)) {
            const std::size_t said_before = ssh->stderr_text().size();
            auto inner = make_unix_transport(ssh->socket_path().string(), milliseconds(1000));
            if (inner)
                return std::make_unique<SshTransport>(address, std::move(ssh), std::move(*inner),
                                                      said_before);
            // bound but not yet listening: try again
        }
        if (Steady::now() >= deadline) {
            std::string said = ssh_said(ssh->stderr_text());
            return fail(ErrorCode::timeout,
                        fmt::format("qmp: {}: ssh to {} did not set up the forward within {} ms{}",
                                    peer, address.host, timeout.count(),
                                    said.empty() ? "" : " (ssh: " + said + ")"));
        }
        std::this_thread::sleep_for(milliseconds(10));
    }
}

}  // namespace blockmig::qmp
