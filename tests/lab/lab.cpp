#include "lab.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <utility>

extern char** environ;

namespace blockmig::lab {

namespace {

[[noreturn]] void die(const std::string& what) { throw std::runtime_error("lab: " + what); }

std::string env_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return v && *v ? v : fallback;
}

// fork + exec with stdout/stderr sent to `out_fd` (or /dev/null when -1) and
// extra environment entries. The child gets its own session, so a stuck
// script can be killed with its whole process group.
int spawn(const std::vector<std::string>& argv, int out_fd,
          const std::vector<std::string>& env_extra = {}) {
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
    for (const auto& e : env_extra) env_strings.push_back(e);
    std::vector<char*> cargv, cenv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    for (const auto& e : env_strings) cenv.push_back(const_cast<char*>(e.c_str()));
    cenv.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) die("fork failed");
    if (pid == 0) {
        setsid();
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(out_fd >= 0 ? out_fd : devnull, 1);
        dup2(out_fd >= 0 ? out_fd : devnull, 2);
        execvpe(cargv[0], cargv.data(), cenv.data());
        _exit(127);
    }
    return pid;
}

int wait_status(pid_t pid) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// SIGTERM, up to `grace`, then SIGKILL; reaps the child.
void terminate(pid_t pid, std::chrono::milliseconds grace) {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    auto deadline = Clock::now() + grace;
    int st = 0;
    while (Clock::now() < deadline) {
        if (waitpid(pid, &st, WNOHANG) == pid) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

std::string script(const char* name) { return (script_dir() / name).string(); }

int free_tcp_port() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("cannot bind a free port");
    socklen_t len = sizeof a;
    getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
    close(s);
    return ntohs(a.sin_port);
}

std::atomic<int> g_counter{0};

// "exit status 1", "signal 6 (SIGABRT), core dumped".
std::string describe_wait_status(int st) {
    if (WIFEXITED(st)) return "exit status " + std::to_string(WEXITSTATUS(st));
    if (!WIFSIGNALED(st)) return "wait status " + std::to_string(st);
    const char* name = sigabbrev_np(WTERMSIG(st));
    return "signal " + std::to_string(WTERMSIG(st)) +
           (name ? std::string(" (SIG") + name + ")" : "") + (WCOREDUMP(st) ? ", core dumped" : "");
}

}  // namespace

// ---- environment ---------------------------------------------------------

fs::path script_dir() { return BLOCKMIG_LAB_SCRIPTS; }

fs::path diskstamp_binary() { return BLOCKMIG_DISKSTAMP; }

bool running_in_ci() { return env_or("CI", "") == "true"; }

std::string missing_prerequisite() {
    if (geteuid() != 0) return "needs root (network namespaces, ganesha's VFS FSAL, tgtd)";
    for (const char* tool : {"qemu-system-x86_64", "qemu-img", "ganesha.nfsd", "rpcbind", "tgtd",
                             "tgtadm", "busybox", "ip", "nfs-ls"}) {
        if (run({"sh", "-c", std::string("command -v ") + tool}).status != 0)
            return std::string(tool) + " is not installed (run .ci/install-deps.sh)";
    }
    return {};
}

std::string use_qemu_flavour() {
    static std::once_flag once;
    static std::string problem;
    std::call_once(once, [] {
        // Output mixes fetch-qemu10.sh's progress (stderr) with NAME=VALUE lines.
        CommandResult r = run({script("qemu.sh"), "env"});
        if (r.status != 0) {
            problem = "BLOCKMIG_QEMU=" + env_or("BLOCKMIG_QEMU", "") + ": " + r.out;
            return;
        }
        static const std::regex setting(R"(^([A-Z_]+)=(.*)$)");
        std::istringstream lines(r.out);
        std::smatch m;
        for (std::string line; std::getline(lines, line);)
            if (std::regex_match(line, m, setting))
                setenv(m[1].str().c_str(), m[2].str().c_str(), 1);
    });
    return problem;
}

CommandResult run(const std::vector<std::string>& argv) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) die("pipe failed");
    pid_t pid = spawn(argv, fds[1]);
    close(fds[1]);
    CommandResult r;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0) r.out.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    r.status = wait_status(pid);
    return r;
}

std::string run_ok(const std::vector<std::string>& argv) {
    CommandResult r = run(argv);
    if (r.status != 0) {
        std::string cmd;
        for (const auto& a : argv) cmd += a + " ";
        die("`" + cmd + "` exited " + std::to_string(r.status) + ": " + r.out);
    }
    return r.out;
}

TempDir::TempDir(const std::string& prefix) {
    fs::path base = env_or("BLOCKMIG_LAB_TMP", "/var/tmp/blockmig-lab");
    fs::create_directories(base);
    std::string tmpl = (base / (prefix + ".XXXXXX")).string();
    if (!mkdtemp(tmpl.data())) die("mkdtemp " + tmpl + ": " + std::strerror(errno));
    m_path = tmpl;
}

TempDir::~TempDir() {
    std::error_code ec;
    if (env_or("BLOCKMIG_LAB_KEEP", "").empty()) fs::remove_all(m_path, ec);
}

// ---- NFS -------------------------------------------------------------------

NfsServer::NfsServer(const std::string& netns, const std::string& addr)
    : m_export(m_dir / "export"), m_netns(netns), m_addr(addr) {
    // rpcbind's port 111 admits one NFSv3 server per namespace: serialise
    // every NFS-using test on this machine, whichever process runs it.
    m_lock_fd = open("/run/lock/blockmig-lab-nfs.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (m_lock_fd < 0 || flock(m_lock_fd, LOCK_EX) != 0) die("cannot take the NFS lab lock");
    // rpcbind's lock and socket are files shared by every namespace: the lock covers them too.
    CommandResult r = run({"env", "BLOCKMIG_NETNS=" + m_netns, script("nfs.sh"), "start",
                           (m_dir / "state").string(), m_export.string(), m_addr});
    if (r.status != 0) {
        close(m_lock_fd);
        die("NFS server did not start: " + r.out);
    }
    m_pid = std::stoi(r.out);
}

void NfsServer::stop() {
    if (m_pid < 0) return;
    run({script("nfs.sh"), "stop", (m_dir / "state").string()});
    m_pid = -1;
}

NfsServer::~NfsServer() {
    stop();
    if (m_lock_fd >= 0) close(m_lock_fd);
}

// ---- iSCSI -----------------------------------------------------------------

IscsiTarget::IscsiTarget(std::uint64_t size, int luns, const std::string& chap_user,
                         const std::string& chap_password, const std::string& netns,
                         const std::string& addr)
    : m_netns(netns), m_addr(addr) {
    m_port = free_tcp_port();
    std::vector<std::string> argv{script("iscsi.sh"),
                                  "start",
                                  (m_dir / "tgt").string(),
                                  std::to_string(m_port),
                                  std::to_string(size),
                                  std::to_string(luns),
                                  m_addr};
    if (!chap_user.empty())
        argv.insert(argv.begin(),
                    {"env", "BLOCKMIG_ISCSI_CHAP=" + chap_user + ":" + chap_password});
    if (!m_netns.empty()) argv.insert(argv.begin(), {"env", "BLOCKMIG_NETNS=" + m_netns});
    CommandResult r = run(argv);
    if (r.status != 0) die("iSCSI target did not start: " + r.out);
    std::istringstream in(r.out);
    in >> m_pid >> m_iqn;
    m_running = true;
}

void IscsiTarget::stop() {
    if (!m_running) return;
    if (m_netns.empty())
        run({script("iscsi.sh"), "stop", (m_dir / "tgt").string()});
    else
        run({"env", "BLOCKMIG_NETNS=" + m_netns, script("iscsi.sh"), "stop",
             (m_dir / "tgt").string()});
    m_running = false;
}

IscsiTarget::~IscsiTarget() { stop(); }

std::string IscsiTarget::portal() const { return m_addr + ":" + std::to_string(m_port); }
std::string IscsiTarget::base_url() const { return "iscsi://" + portal() + "/" + m_iqn; }
std::string IscsiTarget::lun_url(int lun) const { return base_url() + "/" + std::to_string(lun); }
fs::path IscsiTarget::backing_file(int lun) const {
    return m_dir / "tgt" / ("lun" + std::to_string(lun) + ".img");
}

// ---- hosts -----------------------------------------------------------------

HostPair::HostPair(const std::string& rate) {
    m_name = "bm" + std::to_string(getpid()) + "x" + std::to_string(g_counter++);
    m_a = m_name + "-a";
    m_b = m_name + "-b";
    std::vector<std::string> argv{script("hosts.sh"), "up", m_name};
    if (!rate.empty()) argv.push_back(rate);
    CommandResult r = run(argv);
    if (r.status != 0) die("network namespaces did not come up: " + r.out);
}

HostPair::~HostPair() { run({script("hosts.sh"), "down", m_name}); }

void HostPair::set_link(bool up) {
    run_ok({script("hosts.sh"), "link", m_name, up ? "up" : "down"});
}

// ---- guest -----------------------------------------------------------------

Guest::Guest(GuestConfig config) : m_config(std::move(config)), m_qmp(m_dir / "qmp.sock") {
    // The slow part of a cold first run (building the guest, fetching a QEMU
    // flavour, probing KVM) happens here, so the deadline below is QEMU's own.
    run_ok({script("guest.sh"), "prepare"});
    std::vector<std::string> argv{script("guest.sh"), "run", m_qmp.string()};
    for (const auto& d : m_config.disks) {
        const std::string file_node = d.id + "-file", fmt_node = d.id + "-fmt";
        // cache=none + aio=native: what a production host uses, and what
        // makes the guest's fdatasync a real durability point on the image.
        argv.insert(argv.end(), {"-blockdev",
                                 "driver=file,node-name=" + file_node +
                                     ",filename=" + d.path.string() + ",cache.direct=on,aio=native",
                                 "-blockdev",
                                 "driver=" + d.format + ",node-name=" + fmt_node +
                                     ",file=" + file_node + ",cache.direct=on",
                                 "-device", "virtio-blk-pci,drive=" + fmt_node + ",id=" + d.id});
    }
    argv.insert(argv.end(), m_config.extra_args.begin(), m_config.extra_args.end());
    std::string append = "stamp.hb=" + std::to_string(m_config.heartbeat_ms);
    if (m_config.stamp_blocks) append += " stamp.blocks=" + std::to_string(m_config.stamp_blocks);
    if (m_config.dirty_mib) append += " stamp.dirty=" + std::to_string(m_config.dirty_mib);
    std::vector<std::string> env{"BLOCKMIG_GUEST_APPEND=" + append};
    if (!m_config.netns.empty()) env.push_back("BLOCKMIG_NETNS=" + m_config.netns);
    if (!m_config.cwd.empty()) env.push_back("BLOCKMIG_GUEST_CWD=" + m_config.cwd.string());

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) die("pipe failed");
    m_pid = spawn(argv, fds[1], env);
    close(fds[1]);
    m_reader = std::thread([this, fd = fds[0]] { read_console(fd); });

    auto deadline = Clock::now() + std::chrono::seconds(60);  // a loaded machine; QEMU needs ~1 s
    while (!fs::exists(m_qmp)) {
        if (!running() || Clock::now() > deadline) {
            std::string out = console();
            stop();
            die("guest QEMU did not start: " + out);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

Guest::~Guest() { stop(); }

bool Guest::running() const { return !reap_if_exited() && m_pid > 0 && kill(m_pid, 0) == 0; }

bool Guest::reap_if_exited() const {
    if (m_wait_status) return true;
    int st = 0;
    if (m_pid <= 0 || waitpid(m_pid, &st, WNOHANG) != m_pid) return false;
    m_wait_status = st;
    m_dead_pid = std::exchange(m_pid, -1);
    return true;
}

std::string Guest::death_report() {
    if (!reap_if_exited()) return {};
    {
        // QEMU's last words (an assertion, say) are still in the pipe: let the reader drain it.
        std::unique_lock lock(m_mutex);
        m_changed.wait_for(lock, std::chrono::seconds(2), [&] {
            return !m_lines.empty() && m_lines.back().second == "<console closed>";
        });
    }
    std::string report = "lab: guest QEMU (pid " + std::to_string(m_dead_pid) +
                         ") died: " + describe_wait_status(*m_wait_status) + "; last output:\n";
    std::lock_guard lock(m_mutex);
    const std::size_t first = m_lines.size() > 40 ? m_lines.size() - 40 : 0;
    for (std::size_t i = first; i < m_lines.size(); ++i) report += m_lines[i].second + "\n";
    return report;
}

bool Guest::wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!reap_if_exited()) {
        if (m_pid <= 0) return true;
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    m_wait_status.reset();  // an expected exit: nothing to report
    if (m_reader.joinable()) m_reader.join();
    return true;
}

GuestConfig incoming_config(const GuestConfig& source, const std::string& netns) {
    GuestConfig c = source;
    c.netns = netns;
    c.extra_args.insert(c.extra_args.end(), {"-incoming", "defer"});
    return c;
}

void Guest::stop() {
    // The lab did not stop it: say so, or the test shows only refused connections.
    if (std::string why = death_report(); !why.empty() && !m_death_told) {
        std::fprintf(stderr, "%s", why.c_str());
        m_death_told = true;
    }
    if (m_pid > 0) {
        terminate(m_pid, std::chrono::seconds(3));
        m_pid = -1;
    }
    if (m_reader.joinable()) m_reader.join();
}

void Guest::read_console(int fd) {
    static const std::regex ack_re(R"(^ACK dev=(\S+) gen=(\d+) blk=(\d+))");
    std::string pending;
    char buf[8192];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        pending.append(buf, static_cast<size_t>(n));
        size_t pos;
        while ((pos = pending.find('\n')) != std::string::npos) {
            std::string line = pending.substr(0, pos);
            pending.erase(0, pos + 1);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            auto now = Clock::now();
            std::lock_guard lock(m_mutex);
            std::smatch m;
            if (line.starts_with("HB ")) {
                m_heartbeats.push_back(now);
            } else if (std::regex_search(line, m, ack_re)) {
                m_acks[m[1]] = Ack{std::stoull(m[2]), std::stoull(m[3])};
            } else {
                m_lines.emplace_back(now, line);  // keep memory small: HB/ACK are only counted
            }
            m_changed.notify_all();
        }
    }
    close(fd);
    std::lock_guard lock(m_mutex);
    m_lines.emplace_back(Clock::now(), "<console closed>");
    m_changed.notify_all();
}

bool Guest::wait_for_line(const std::string& needle, std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    return m_changed.wait_for(lock, timeout, [&] {
        for (const auto& [t, l] : m_lines)
            if (l.find(needle) != std::string::npos) return true;
        return false;
    });
}

bool Guest::wait_for_ack(const std::string& dev, std::uint64_t gen,
                         std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    return m_changed.wait_for(lock, timeout, [&] {
        auto it = m_acks.find(dev);
        return it != m_acks.end() && it->second.gen >= gen;
    });
}

std::optional<Ack> Guest::last_ack(const std::string& dev) const {
    std::lock_guard lock(m_mutex);
    auto it = m_acks.find(dev);
    if (it == m_acks.end()) return std::nullopt;
    return it->second;
}

std::chrono::milliseconds Guest::max_heartbeat_gap(Clock::time_point since) const {
    std::lock_guard lock(m_mutex);
    Clock::duration worst{};
    std::optional<Clock::time_point> prev;
    for (auto t : m_heartbeats) {
        if (t < since) continue;
        if (prev) worst = std::max(worst, t - *prev);
        prev = t;
    }
    return std::chrono::duration_cast<std::chrono::milliseconds>(worst);
}

std::size_t Guest::heartbeats_since(Clock::time_point since) const {
    std::lock_guard lock(m_mutex);
    return static_cast<std::size_t>(std::count_if(m_heartbeats.begin(), m_heartbeats.end(),
                                                  [&](auto t) { return t >= since; }));
}

std::optional<Clock::time_point> Guest::first_heartbeat() const {
    std::lock_guard lock(m_mutex);
    if (m_heartbeats.empty()) return std::nullopt;
    return m_heartbeats.front();
}

std::optional<Clock::time_point> Guest::last_heartbeat() const {
    std::lock_guard lock(m_mutex);
    if (m_heartbeats.empty()) return std::nullopt;
    return m_heartbeats.back();
}

std::string Guest::console() const {
    std::lock_guard lock(m_mutex);
    std::string out;
    for (const auto& [t, l] : m_lines) out += l + "\n";
    return out;
}

std::string Guest::qmp(const std::string& command_json) {
    // Appended to a failure: whether (and how) the QEMU process is gone.
    auto gone_note = [&]() -> std::string {
        std::string why = death_report();
        if (why.empty()) return "; guest QEMU (pid " + std::to_string(m_pid) + ") still runs";
        m_death_told = true;
        return "; " + why;
    };
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, m_qmp.c_str(), sizeof a.sun_path - 1);
    if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        const std::string why = std::strerror(errno);
        close(s);
        die("connect " + m_qmp.string() + ": " + why + gone_note());
    }
    // A QEMU whose main loop is stuck (a drain on dead storage) accepts the
    // connection but never answers: fail the test instead of hanging it.
    timeval limit{.tv_sec = 60, .tv_usec = 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    std::string buffer;
    auto read_line = [&]() -> std::string {
        for (;;) {
            if (auto pos = buffer.find('\n'); pos != std::string::npos) {
                std::string line = buffer.substr(0, pos);
                buffer.erase(0, pos + 1);
                return line;
            }
            char buf[4096];
            ssize_t n = read(s, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                close(s);
                die("QMP " + command_json + ": no answer within 60 s" + gone_note());
            }
            if (n <= 0) {
                close(s);
                die("QMP connection closed" + gone_note());
            }
            buffer.append(buf, static_cast<size_t>(n));
        }
    };
    auto send_and_reply = [&](const std::string& cmd) {
        std::string line = cmd + "\n";
        if (write(s, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
            die("QMP write failed" + gone_note());
        for (;;) {
            std::string reply = read_line();
            if (reply.find("\"event\"") == std::string::npos) return reply;
        }
    };
    read_line();  // greeting
    send_and_reply(R"({"execute":"qmp_capabilities"})");
    std::string reply = send_and_reply(command_json);
    close(s);
    return reply;
}

void Guest::pause() {
    std::string r = qmp(R"({"execute":"stop"})");
    if (r.find("\"return\"") == std::string::npos) die("QMP stop failed: " + r);
}

void Guest::resume() {
    std::string r = qmp(R"({"execute":"cont"})");
    if (r.find("\"return\"") == std::string::npos) die("QMP cont failed: " + r);
}

// ---- verification -----------------------------------------------------------

VerifyReport verify_raw(const fs::path& raw, std::uint64_t nblocks, std::optional<Ack> ack) {
    std::vector<std::string> argv{diskstamp_binary().string(), "verify", raw.string(),
                                  std::to_string(nblocks)};
    if (ack) {
        argv.push_back(std::to_string(ack->gen));
        argv.push_back(std::to_string(ack->blk));
    }
    CommandResult r = run(argv);
    VerifyReport v;
    v.status = r.status;
    v.output = r.out;
    static const std::regex re(
        R"(VERIFY blocks=(\d+) ok=(\d+) empty=(\d+) bad=(\d+) lost=(\d+) gen_min=(\d+) gen_max=(\d+))");
    std::smatch m;
    if (!std::regex_search(r.out, m, re)) {
        if (v.status == 0) v.status = 2;  // no summary line: never report intact
        return v;
    }
    v.blocks = std::stoull(m[1]);
    v.ok = std::stoull(m[2]);
    v.empty = std::stoull(m[3]);
    v.bad = std::stoull(m[4]);
    v.lost = std::stoull(m[5]);
    v.gen_min = std::stoull(m[6]);
    v.gen_max = std::stoull(m[7]);
    return v;
}

VerifyReport verify_image(const std::string& image, const std::string& format,
                          std::uint64_t nblocks, std::optional<Ack> ack) {
    TempDir tmp("verify");
    fs::path raw = tmp / "image.raw";
    // -U: the guest's QEMU may still hold the image lock (it is paused, not gone).
    run_ok({"qemu-img", "convert", "-U", "-f", format, "-O", "raw", image, raw.string()});
    return verify_raw(raw, nblocks, ack);
}

}  // namespace blockmig::lab
