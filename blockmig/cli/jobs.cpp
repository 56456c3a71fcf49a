// `blockmig jobs`: the journals in the state directory: phase, guest and
// what may still exist of each job (blockmig/jobs/journal.hpp).
#include <fmt/core.h>

#include <ctime>

#include "commands.hpp"
#include "jobs/journal.hpp"
#include "jobs/recover.hpp"

namespace blockmig::cli {

namespace {

struct JobsArgs {
    std::string state_dir;
};

nlohmann::json describe(const jobs::JobListing& l, const std::filesystem::path& dir) {
    nlohmann::json disks = nlohmann::json::array();
    for (const auto& d : l.job.disks)
        disks.push_back({{"disk", d.disk},
                         {"phase", jobs::journal_phase(l.job, d)},
                         {"source", d.source},
                         {"target", d.target},
                         {"exists", jobs::what_exists(l.job, d.disk)}});
    nlohmann::json j{{"id", l.job.id},
                     {"kind", l.job.kind},
                     {"state", l.running                ? "running"
                               : l.job.needs_recovery() ? "needs-recovery"
                                                        : "finished"},
                     {"finish", jobs::to_string(l.job.finish)},
                     {"created", l.job.created},
                     {"owner_pid", l.job.owner_pid},
                     {"guest",
                      {{"qmp", l.job.guest.qmp},
                       {"pid", l.job.guest.pid},
                       {"uuid", l.job.guest.uuid},
                       {"name", l.job.guest.name},
                       {"files", l.job.guest.files}}},
                     {"disks", disks},
                     {"journal", l.path.string()}};
    if (const auto& m = l.job.migration)
        j["migration"] = {{"phase", m->phase},
                          {"destination", m->destination.qmp},
                          {"dst_addr", m->dst_addr},
                          {"copy_storage", m->copy_storage},
                          {"exists", jobs::what_exists(l.job, "")}};
    if (!l.running && l.job.needs_recovery()) j["recover"] = jobs::recover_command(dir, l.job.id);
    return j;
}

Result<void> run_jobs(const JobsArgs& args, const GlobalOptions& globals) {
    const std::filesystem::path dir =
        args.state_dir.empty() ? jobs::default_state_dir() : std::filesystem::path(args.state_dir);
    auto listed = jobs::list_jobs(dir);
    if (!listed) return fail(listed.error());
    if (globals.output == OutputFormat::json) {
        nlohmann::json all = nlohmann::json::array();
        for (const auto& l : *listed) all.push_back(describe(l, dir));
        fmt::print("{}\n", nlohmann::json{{"jobs", all}}.dump());
        return {};
    }
    if (listed->empty()) {
        fmt::print("no jobs in {}\n", dir.string());
        return {};
    }
    for (const auto& l : *listed) {
        nlohmann::json j = describe(l, dir);
        fmt::print("job {} ({}, {}) guest {}\n", l.job.id, l.job.kind,
                   j["state"].get<std::string>(), l.job.guest.label());
        for (const auto& d : j["disks"]) {
            fmt::print("  {}: {} {} -> {}\n", d["disk"].get<std::string>(),
                       d["phase"].get<std::string>(), d["source"].get<std::string>(),
                       d["target"].get<std::string>());
            for (const auto& e : d["exists"]) fmt::print("    exists: {}\n", e.get<std::string>());
        }
        if (j.contains("migration")) {
            const auto& m = j["migration"];
            fmt::print("  migration: {} -> {}\n", m["phase"].get<std::string>(),
                       m["destination"].get<std::string>());
            for (const auto& e : m["exists"]) fmt::print("    exists: {}\n", e.get<std::string>());
        }
        if (j.contains("recover"))
            fmt::print("  recover with: {}\n", j["recover"].get<std::string>());
    }
    return {};
}

}  // namespace

void add_jobs_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<JobsArgs>();
    auto* cmd =
        app.add_subcommand("jobs", "list blockmig's job journals: phase, guest, what exists");
    add_state_dir_option(*cmd, args->state_dir);
    cmd->callback([args, &dispatch] {
        dispatch.action = [args, &dispatch] { return run_jobs(*args, dispatch.globals); };
    });
}

}  // namespace blockmig::cli
