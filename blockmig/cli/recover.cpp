// `blockmig recover JOB | --all`: finishes or undoes jobs whose blockmig
// process died, from their journals and what the guest's QEMU says now
// (blockmig/jobs/recover.hpp).
#include "jobs/recover.hpp"

#include <fmt/core.h>

#include "commands.hpp"
#include "jobs/journal.hpp"
#include "migrate/offline_recover.hpp"
#include "migrate/recover.hpp"
#include "qmp/client.hpp"

namespace blockmig::cli {

namespace {

struct RecoverArgs {
    std::vector<std::string> ids;
    bool all = false;
    std::string state_dir;
    int step_timeout_s = 15;
};

void print_report(const jobs::RecoveryReport& report, const GlobalOptions& globals) {
    if (globals.output == OutputFormat::json) {
        nlohmann::json disks = nlohmann::json::array();
        for (const auto& d : report.disks)
            disks.push_back({{"disk", d.disk},
                             {"phase", d.phase},
                             {"direction", jobs::to_string(d.direction)},
                             {"reason", d.reason},
                             {"actions", d.actions},
                             {"left_behind", d.left_behind},
                             {"settled", d.settled}});
        fmt::print("{}\n", nlohmann::json{{"event", "recovered"},
                                          {"job", report.job},
                                          {"disks", disks},
                                          {"journal_removed", report.journal_removed},
                                          {"ended", report.ended},
                                          {"next_step", report.next_step}}
                               .dump());
        return;
    }
    for (const auto& d : report.disks) {
        fmt::print("job {} {}: {} ({})\n", report.job, d.disk, jobs::to_string(d.direction),
                   d.reason);
        for (const auto& a : d.actions) fmt::print("  {}\n", a);
        for (const auto& l : d.left_behind) fmt::print("  {}\n", l);
    }
}

// Recovers one job its caller holds locked; `failures` collects the
// one-line reasons it is not done.
Result<void> recover_journal(const std::filesystem::path& dir, jobs::Journal& journal,
                             jobs::Intent intent, const RecoverArgs& args,
                             const GlobalOptions& globals, std::vector<std::string>& failures) {
    const std::string id = journal.job().id;
    qmp::ConnectOptions connect;
    connect.timeout = std::chrono::seconds(args.step_timeout_s);
    connect.default_timeout = std::chrono::seconds(args.step_timeout_s);
    // A post-copy recovery sends migrate-recover out-of-band (postcopy_recovery.hpp).
    connect.enable_oob = true;
    auto client = connect_qmp(journal.job().guest.qmp, connect);
    jobs::UndoEnv env;
    env.client = client ? client->get() : nullptr;
    env.step_timeout = std::chrono::seconds(args.step_timeout_s);
    // A migration is settled from what both QEMUs say.
    decltype(client) dst_client = fail(ErrorCode::not_found, "no destination");
    if (journal.job().migration)
        dst_client = connect_qmp(journal.job().migration->destination.qmp, connect);
    auto report = journal.job().kind == "offline" ? migrate::recover_offline(journal, env, dir)
                  : journal.job().migration
                      ? migrate::recover_migration(journal, env.client,
                                                   dst_client ? dst_client->get() : nullptr,
                                                   env.step_timeout, dir)
                      : jobs::recover_job(journal, env, intent, dir);
    if (!report) return fail(report.error());
    print_report(*report, globals);
    if (!report->ended.empty()) {
        failures.push_back(fmt::format("job {}: {}", id, report->ended));
    } else if (!report->journal_removed) {
        std::string why = client ? ""
                                 : fmt::format("the guest's QMP {} does not answer ({}); ",
                                               journal.job().guest.qmp, client.error().message);
        failures.push_back(
            fmt::format("job {} is not fully recovered: {}nothing unsafe was "
                        "done; run `{}` again",
                        id, why, report->next_step));
    }
    return {};
}

Result<void> recover_one(const std::filesystem::path& dir, const std::string& id,
                         jobs::Intent intent, const RecoverArgs& args, const GlobalOptions& globals,
                         std::vector<std::string>& failures) {
    auto journal = jobs::Journal::open(dir, id);
    if (!journal) return fail(journal.error());
    return recover_journal(dir, *journal, intent, args, globals, failures);
}

Result<void> failures_to_error(const std::vector<std::string>& failures) {
    if (failures.empty()) return {};
    return fail(ErrorCode::invalid_state,
                failures.size() == 1
                    ? failures.front()
                    : fmt::format("{} (and {} more)", failures.front(), failures.size() - 1));
}

}  // namespace

Result<void> run_recover(const std::filesystem::path& dir, const std::vector<std::string>& ids,
                         jobs::Intent intent, int step_timeout_s, const GlobalOptions& globals) {
    RecoverArgs args;
    args.step_timeout_s = step_timeout_s;
    std::vector<std::string> failures;
    for (const auto& id : ids)
        if (auto r = recover_one(dir, id, intent, args, globals, failures); !r) return r;
    return failures_to_error(failures);
}

Result<void> recover_locked(const std::filesystem::path& dir, jobs::Journal& journal,
                            int step_timeout_s, const GlobalOptions& globals) {
    RecoverArgs args;
    args.step_timeout_s = step_timeout_s;
    std::vector<std::string> failures;
    if (auto r = recover_journal(dir, journal, jobs::Intent::as_journaled, args, globals, failures);
        !r)
        return r;
    return failures_to_error(failures);
}

namespace {

Result<void> run_recover_command(const RecoverArgs& args, const GlobalOptions& globals) {
    const std::filesystem::path dir =
        args.state_dir.empty() ? jobs::default_state_dir() : std::filesystem::path(args.state_dir);
    std::vector<std::string> ids = args.ids;
    if (args.all) {
        auto listed = jobs::list_jobs(dir);
        if (!listed) return fail(listed.error());
        for (const auto& l : *listed)
            if (!l.running && l.job.needs_recovery()) ids.push_back(l.job.id);
        if (ids.empty()) {
            if (globals.output == OutputFormat::text)
                fmt::print("nothing to recover in {}\n", dir.string());
            return {};
        }
    }
    return run_recover(dir, ids, jobs::Intent::as_journaled, args.step_timeout_s, globals);
}

}  // namespace

void add_recover_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<RecoverArgs>();
    auto* cmd = app.add_subcommand(
        "recover", "finish or undo jobs whose blockmig process died (see `blockmig jobs`)");
    auto* ids = cmd->add_option("JOB", args->ids, "job id(s) from `blockmig jobs`");
    auto* all = cmd->add_flag("--all", args->all, "every job that needs recovery");
    ids->excludes(all);
    add_state_dir_option(*cmd, args->state_dir);
    cmd->add_option("--step-timeout", args->step_timeout_s,
                    "deadline of each QMP call and undo step, in seconds (15)")
        ->check(CLI::PositiveNumber);
    cmd->callback([args, &dispatch] {
        if (args->ids.empty() && !args->all)
            throw CLI::ValidationError("recover", "give a JOB id or --all");
        dispatch.action = [args, &dispatch] {
            return run_recover_command(*args, dispatch.globals);
        };
    });
}

}  // namespace blockmig::cli
