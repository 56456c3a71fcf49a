#include "launch.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "jobs/effects.hpp"
#include "jobs/names.hpp"

namespace blockmig::migrate {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr std::string_view k_vol = "{vol:";

// Calls `each(placeholder)` for every "{...}" in `arg`.
template <typename F>
void placeholders(const std::string& arg, F&& each) {
    for (std::size_t at = arg.find('{'); at != std::string::npos; at = arg.find('{', at + 1)) {
        const auto end = arg.find('}', at);
        if (end == std::string::npos) return;
        each(std::string_view(arg).substr(at, end - at + 1));
    }
}

std::string log_tail(const fs::path& log) {
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.size() > 400) text = "..." + text.substr(text.size() - 400);
    std::replace(text.begin(), text.end(), '\n', ' ');
    return text;
}

// fork + exec without a shell, in its own session, every fd but stdio
// closed. The child reports a failed exec through a close-on-exec pipe.
Result<int> spawn(const std::vector<std::string>& argv, const fs::path& log) {
    int logfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0)
        return fail(ErrorCode::io_error,
                    fmt::format("open {}: {}", log.string(), std::strerror(errno)));
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        ::close(logfd);
        return fail(ErrorCode::io_error, fmt::format("pipe: {}", std::strerror(errno)));
    }
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
        setsid();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        int null = ::open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        // Nothing of blockmig's (QMP sockets, the journal's lock) leaks into
        // the QEMU that outlives it.
        for (int fd = 3; fd < 4096; ++fd)
            if (fd != report[1]) ::close(fd);
        execvp(cargv[0], cargv.data());
        int err = errno;
        (void)!::write(report[1], &err, sizeof err);
        _exit(127);
    }
    ::close(report[1]);
    ::close(logfd);
    if (pid < 0) {
        ::close(report[0]);
        return fail(ErrorCode::io_error, fmt::format("fork: {}", std::strerror(errno)));
    }
    int err = 0;
    ssize_t n;
    do n = ::read(report[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    ::close(report[0]);
    if (n == sizeof err) {
        waitpid(pid, nullptr, 0);
        return fail(ErrorCode::not_found,
                    fmt::format("cannot run {}: {}", argv.front(), std::strerror(err)));
    }
    return pid;
}

// Until the QMP socket answers, CMD exits, or the deadline.
Result<std::unique_ptr<qmp::Client>> wait_for_qmp(int pid, const fs::path& socket,
                                                  const fs::path& log,
                                                  const DestinationLaunch& launch,
                                                  qmp::Milliseconds qmp_timeout) {
    const auto deadline = std::chrono::steady_clock::now() + launch.start_timeout;
    Error last{ErrorCode::timeout, "no QMP socket yet", {}};
    for (;;) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid)
            return fail(
                ErrorCode::io_error,
                fmt::format("{} exited ({}) before its QMP answered: {}", launch.argv.front(),
                            WIFEXITED(status) ? fmt::format("status {}", WEXITSTATUS(status))
                                              : fmt::format("signal {}", WTERMSIG(status)),
                            log_tail(log)));
        if (fs::exists(socket)) {
            qmp::ConnectOptions options;
            options.enable_oob = true;  // the undo may need a yank (jobs/undo.cpp)
            options.timeout = std::min<qmp::Milliseconds>(qmp_timeout, 10s);
            options.default_timeout = qmp_timeout;
            auto client = qmp::Client::connect(socket.string(), options);
            if (client) return client;
            last = client.error();
        }
        if (std::chrono::steady_clock::now() > deadline)
            return fail(ErrorCode::timeout,
                        fmt::format("the destination QEMU's QMP {} did not answer within {} s "
                                    "({}); its log: {}",
                                    socket.string(), launch.start_timeout.count() / 1000,
                                    last.message, log_tail(log)));
        std::this_thread::sleep_for(50ms);
    }
}

}  // namespace

Result<void> check_launch(const std::vector<std::string>& argv,
                          const std::vector<std::string>& disks) {
    if (argv.empty())
        return fail(ErrorCode::invalid_argument, "--dst-launch: no command given after --");
    bool qmp = false;
    std::string bad;
    for (const auto& arg : argv)
        placeholders(arg, [&](std::string_view p) {
            if (p == "{qmp}") {
                qmp = true;
            } else if (p.starts_with(k_vol)) {
                const auto dev = p.substr(k_vol.size(), p.size() - k_vol.size() - 1);
                if (bad.empty() && std::find(disks.begin(), disks.end(), dev) == disks.end())
                    bad = fmt::format("--dst-launch: {}: the source has no disk {} (it has: {})", p,
                                      dev, fmt::format("{}", fmt::join(disks, ", ")));
            } else if (bad.empty()) {
                bad = fmt::format(
                    "--dst-launch: unknown placeholder {} (known: {{qmp}}, "
                    "{{vol:DEV}})",
                    p);
            }
        });
    if (!bad.empty()) return fail(ErrorCode::invalid_argument, bad);
    if (!qmp)
        return fail(ErrorCode::invalid_argument,
                    "--dst-launch: the command has no {qmp}: blockmig could not reach the QEMU it "
                    "starts (give it e.g. -qmp unix:{qmp},server=on,wait=off)");
    return {};
}

std::vector<std::string> expand_launch(const std::vector<std::string>& argv, const std::string& qmp,
                                       const std::map<std::string, std::string>& volumes) {
    std::vector<std::string> out;
    for (const auto& arg : argv) {
        std::string a = arg;
        auto replace = [&](const std::string& from, const std::string& to) {
            for (auto at = a.find(from); at != std::string::npos; at = a.find(from, at + to.size()))
                a.replace(at, from.size(), to);
        };
        replace("{qmp}", qmp);
        for (const auto& [dev, vol] : volumes) replace(fmt::format("{{vol:{}}}", dev), vol);
        out.push_back(std::move(a));
    }
    return out;
}

fs::path launch_socket(const fs::path& state_dir, const std::string& job) {
    return state_dir / (job + ".dst.qmp");
}

Result<std::unique_ptr<qmp::Client>> launch_destination(jobs::Journal& journal,
                                                        const DestinationLaunch& launch,
                                                        const SideFacts& src,
                                                        const fs::path& state_dir,
                                                        qmp::Milliseconds qmp_timeout) {
    const std::string job = journal.job().id;
    auto pool = pools::open_pool(launch.pool, launch.config);
    if (!pool) return fail(pool.error().with_context("--dst-pool " + launch.pool));
    jobs::UndoEnv env{.step_timeout = qmp_timeout};
    jobs::Effects effects(journal, env);
    std::map<std::string, std::string> volumes;
    for (const auto& d : src.disks) {
        const std::string name = fmt::format("{}-{}.raw", job, jobs::device_tag(d.device));
        auto made =
            effects.create_volume(k_launched, **pool, name, d.size, pools::ImageFormat::raw);
        if (!made)
            return fail(made.error().with_context(
                fmt::format("disk {}: create {} in {}", d.device, name, (*pool)->url())));
        volumes[d.device] = (*pool)->url_of(made->name);
    }
    const fs::path socket = launch_socket(state_dir, job);
    const fs::path log = state_dir / (job + ".dst.log");
    std::error_code ec;
    fs::remove(socket, ec);
    auto seq = journal.intend(
        {.disk = k_launched, .effect = jobs::EffectKind::destination_launched, .name = socket});
    if (!seq) return fail(seq.error());
    auto pid = spawn(expand_launch(launch.argv, socket.string(), volumes), log);
    if (auto w = journal.outcome(*seq, pid ? jobs::RecordState::done : jobs::RecordState::failed,
                                 pid ? "" : pid.error().message, pid ? *pid : -1);
        !w)
        return fail(w.error());
    // The pid is what a recovery stops: durable now, not with the next write.
    if (auto w = journal.flush(); !w) return fail(w.error());
    if (!pid) return fail(pid.error().with_context("--dst-launch"));
    return wait_for_qmp(*pid, socket, log, launch, qmp_timeout);
}

}  // namespace blockmig::migrate
