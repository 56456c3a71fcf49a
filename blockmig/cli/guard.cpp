// `blockmig _guard --state-dir DIR --fd N JOB` (hidden): the guardian of a
// live `migrate` job, started by migrate itself (blockmig/jobs/guardian.hpp).
// It waits for the owner's end of channel N; if the owner died, it recovers
// the job with `blockmig recover`'s own code, its output in
// DIR/JOB.guardian.log (0600) and one line in syslog.
#include <fcntl.h>
#include <fmt/core.h>
#include <syslog.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

#include "commands.hpp"
#include "jobs/guardian.hpp"
#include "jobs/journal.hpp"

namespace blockmig::cli {

namespace {

struct GuardArgs {
    std::string state_dir;
    std::string id;
    int fd = -1;
    int step_timeout_s = 15;
};

// From here on stdout and stderr (the recover report, the error line) go to
// the job's log; until the owner died the guardian says nothing.
void log_to(const std::filesystem::path& log) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return;  // stdio stays on /dev/null; syslog still has the outcome
    std::fflush(stdout);
    dup2(fd, 1);
    dup2(fd, 2);
    ::close(fd);
}

std::string now_text() {
    std::time_t t = std::time(nullptr);
    char buf[32];
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

Result<void> run_guard(const GuardArgs& args, const GlobalOptions& globals) {
    const jobs::OwnerEnd end = jobs::wait_for_owner(args.fd);
    ::close(args.fd);
    if (end == jobs::OwnerEnd::finished) return {};
    const std::filesystem::path dir = args.state_dir;
    Result<void> outcome;
    auto ran = jobs::recover_abandoned(dir, args.id, [&](jobs::Journal& journal) {
        log_to(dir / (args.id + ".guardian.log"));
        fmt::print(
            "{} blockmig guardian: the blockmig process running job {} died; "
            "recovering it as `{}` would\n",
            now_text(), args.id, jobs::recover_command(dir, args.id));
        std::fflush(stdout);
        outcome = recover_locked(dir, journal, args.step_timeout_s, globals);
        return Result<void>{};
    });
    if (!ran) outcome = fail(ran.error());
    if (!ran || *ran) {
        const std::string line =
            outcome ? fmt::format("job {} recovered after its blockmig process died", args.id)
                    : fmt::format("job {}: {}", args.id, outcome.error().message);
        fmt::print("{} blockmig guardian: {}\n", now_text(), line);
        std::fflush(stdout);
        openlog("blockmig", LOG_PID, LOG_USER);
        syslog(outcome ? LOG_NOTICE : LOG_ERR, "guardian: %s", line.c_str());
        closelog();
    }
    return outcome;
}

}  // namespace

void add_guard_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<GuardArgs>();
    auto* cmd = app.add_subcommand("_guard", "internal: the guardian of a migrate job");
    cmd->group("");  // hidden: only `migrate` starts it
    cmd->add_option("--state-dir", args->state_dir)->required();
    cmd->add_option("--fd", args->fd)->required()->check(CLI::NonNegativeNumber);
    cmd->add_option("JOB", args->id)->required();
    cmd->callback([args, &dispatch] {
        dispatch.action = [args, &dispatch] { return run_guard(*args, dispatch.globals); };
    });
}

}  // namespace blockmig::cli
