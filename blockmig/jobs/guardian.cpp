#include "guardian.hpp"

#include <fcntl.h>
#include <poll.h>
#include <fmt/core.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace blockmig::jobs {

namespace fs = std::filesystem;

namespace {

Error errno_error(ErrorCode code, std::string_view what, int err) {
    return Error{code, fmt::format("guardian: {}: {}", what, std::strerror(err)), {}};
}

// Closes every fd from 3 up but `keep_a` and `keep_b` (both >= 3).
// Async-signal-safe: runs between fork and exec.
void close_all_but(int keep_a, int keep_b) {
    const unsigned lo = static_cast<unsigned>(std::min(keep_a, keep_b));
    const unsigned hi = static_cast<unsigned>(std::max(keep_a, keep_b));
    if (lo > 3) ::close_range(3, lo - 1, 0);
    if (hi > lo + 1) ::close_range(lo + 1, hi - 1, 0);
    ::close_range(hi + 1, ~0U, 0);
}

// The grandchild: its own session (set by the first child), no signal
// blocked, stdio on /dev/null, nothing of blockmig's (QMP sockets, the
// journal's lock) but its end of the channel. Never returns.
[[noreturn]] void exec_guardian(char* const argv[], int guardian_fd, int report_fd) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    // migrate's own SIGINT/SIGTERM handlers end with exec anyway; an ignored
    // SIGHUP/SIGPIPE would not, and the guardian wants the defaults.
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) signal(s, SIG_DFL);
    int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2) ::close(null);
    }
    // The channel is close-on-exec like everything else: only this copy survives exec.
    fcntl(guardian_fd, F_SETFD, 0);
    close_all_but(guardian_fd, report_fd);
    execv(argv[0], argv);
    int err = errno;
    (void)!::write(report_fd, &err, sizeof err);
    _exit(127);
}

// An fd >= 3, so stdio redirection in the child never overwrites it.
int above_stdio(int fd) {
    if (fd > 2) return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    ::close(fd);
    return moved;
}

}  // namespace

Result<Guardian> Guardian::start(const fs::path& exe, const fs::path& state_dir,
                                 std::string_view id) {
    int channel[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channel) != 0)
        return fail(errno_error(ErrorCode::io_error, "socketpair", errno));
    Guardian owner(channel[0]);
    const int guardian_fd = above_stdio(channel[1]);
    int report[2];
    if (guardian_fd < 0 || pipe2(report, O_CLOEXEC) != 0) {
        const int err = errno;
        if (guardian_fd >= 0) ::close(guardian_fd);
        return fail(errno_error(ErrorCode::io_error, "pipe", err));
    }
    report[1] = above_stdio(report[1]);
    if (report[1] < 0) {
        const int err = errno;
        ::close(guardian_fd);
        ::close(report[0]);
        return fail(errno_error(ErrorCode::io_error, "pipe", err));
    }
    std::vector<std::string> args{exe.string(),       "_guard", "--state-dir",
                                  state_dir.string(), "--fd",   std::to_string(guardian_fd),
                                  std::string(id)};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    // Fork twice: the first child starts a session and exits at once, so the
    // guardian is nobody's child (no zombie while the owner runs) and not a
    // session leader (it can never gain a controlling terminal).
    const pid_t child = fork();
    if (child == 0) {
        setsid();
        const pid_t guardian = fork();
        if (guardian == 0) exec_guardian(argv.data(), guardian_fd, report[1]);
        _exit(guardian < 0 ? 1 : 0);
    }
    const int fork_err = errno;
    ::close(guardian_fd);
    ::close(report[1]);
    if (child < 0) {
        ::close(report[0]);
        return fail(errno_error(ErrorCode::io_error, "fork", fork_err));
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    // EOF: exec succeeded (the report pipe is close-on-exec); an int: its errno.
    int err = 0;
    ssize_t n;
    do n = ::read(report[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    ::close(report[0]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return fail(ErrorCode::io_error, "guardian: fork of the guardian process failed");
    if (n == sizeof err)
        return fail(errno_error(ErrorCode::not_found, "cannot run " + exe.string(), err));
    return owner;
}

Guardian::Guardian(Guardian&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}

Guardian& Guardian::operator=(Guardian&& other) noexcept {
    if (this != &other) {
        close();
        m_fd = std::exchange(other.m_fd, -1);
    }
    return *this;
}

Guardian::~Guardian() { close(); }

void Guardian::close() {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = -1;
}

// How long owner_finished() waits for the guardian to exit.
constexpr int k_guardian_exit_wait_ms = 2000;

void Guardian::owner_finished() {
    if (m_fd < 0) return;
    const char byte = k_owner_finished;
    // A guardian already gone (killed by someone) is no error of the job's:
    // MSG_NOSIGNAL, and the result is not checked.
    ssize_t n;
    do n = ::send(m_fd, &byte, 1, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    // Wait a moment for the guardian to exit (its end closes when it does):
    // blockmig then ends with no process of its job left, which scripts that
    // look for the job's processes (and the tests) rely on.
    if (n == 1) {
        pollfd gone{.fd = m_fd, .events = POLLIN, .revents = 0};
        char ignored;
        if (::poll(&gone, 1, k_guardian_exit_wait_ms) > 0) (void)!::read(m_fd, &ignored, 1);
    }
    close();
}

OwnerEnd wait_for_owner(int fd) {
    char byte = 0;
    ssize_t n;
    do n = ::read(fd, &byte, 1);
    while (n < 0 && errno == EINTR);
    return n == 1 && byte == k_owner_finished ? OwnerEnd::finished : OwnerEnd::died;
}

namespace {

// Blocks until nobody holds `lock` (an flock wait: no polling), then lets
// go at once. A missing lock file is nobody's.
Result<void> wait_until_unlocked(const fs::path& lock) {
    int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return {};
        return fail(errno_error(ErrorCode::io_error, "open " + lock.string(), errno));
    }
    int r;
    do r = flock(fd, LOCK_EX);
    while (r != 0 && errno == EINTR);
    const int err = errno;
    ::close(fd);  // drops the lock: Journal::open takes it on its own fd
    if (r != 0) return fail(errno_error(ErrorCode::io_error, "lock " + lock.string(), err));
    return {};
}

}  // namespace

Result<bool> recover_abandoned(const fs::path& state_dir, std::string_view id,
                               const RecoverLocked& recover) {
    const fs::path lock = state_dir / (std::string(id) + ".lock");
    for (;;) {
        if (auto w = wait_until_unlocked(lock); !w) return fail(w.error());
        auto journal = Journal::open(state_dir, id);
        if (!journal) {
            if (journal.error().code == ErrorCode::not_found) return false;
            // Someone (a human's `recover`) took the lock between our wait
            // and the open: wait for them, then look again.
            if (journal.error().code == ErrorCode::invalid_state) continue;
            return fail(journal.error());
        }
        // Any journal left after the owner died is unfinished (a normal end
        // removes it); `recover JOB` settles it whatever its phase.
        if (auto r = recover(*journal); !r) return fail(r.error());
        return true;
    }
}

}  // namespace blockmig::jobs
