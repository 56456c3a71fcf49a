#include "migrate_offline.hpp"

#include <fmt/core.h>
#include <signal.h>

#include <atomic>

#include "blockmig/offline.hpp"

namespace blockmig::cli {

namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void on_offline_interrupt(int) { g_interrupted.store(true); }

void print_report(const OfflineReport& r, const GlobalOptions& globals) {
    if (globals.output == OutputFormat::json) {
        nlohmann::json disks = nlohmann::json::array();
        for (const auto& d : r.disks)
            disks.push_back({{"disk", d.device},
                             {"source", d.source},
                             {"target", d.target},
                             {"format", d.format},
                             {"size", d.size},
                             {"data_bytes", d.data_bytes},
                             {"sha256", d.digest}});
        fmt::print("{}\n", nlohmann::json{{"event", "done"},
                                          {"job", r.job},
                                          {"offline", true},
                                          {"shutdown", r.shutdown},
                                          {"seconds", r.seconds},
                                          {"disks", disks},
                                          {"source_kept", true}}
                               .dump());
        return;
    }
    for (const auto& d : r.disks)
        fmt::print("{}: {} -> {} ({}, {:.1f} MiB of data, sha256 {} on both)\n", d.device, d.source,
                   d.target, d.format, static_cast<double>(d.data_bytes) / (1 << 20), d.digest);
    fmt::print(
        "offline migration done in {:.1f} s: the guest {}; {} disk{} copied and verified; the "
        "source files are kept (blockmig never deletes them)\n",
        r.seconds, r.shutdown, r.disks.size(), r.disks.size() == 1 ? "" : "s");
}

}  // namespace

void check_offline_usage(bool offline, const std::string& dst_qmp, bool dst_launch,
                         const std::string& dst_pool, const std::string& copy_storage,
                         const std::vector<std::string>& disks) {
    if (!offline) {
        if (!disks.empty()) throw CLI::ValidationError("--disk", "only with --offline");
        return;
    }
    if (dst_pool.empty())
        throw CLI::ValidationError("--offline", "needs --dst-pool POOL (where the copies go)");
    if (!dst_qmp.empty() || dst_launch || !copy_storage.empty())
        throw CLI::ValidationError("--offline",
                                   "copies the disks of a guest it shuts down: no --dst-qmp, "
                                   "--dst-launch or --copy-storage");
}

Result<void> run_offline_command(const OfflineArgs& args, const GlobalOptions& globals) {
    OfflineOptions o;
    o.src_qmp = args.src_qmp;
    o.dst_pool = args.dst_pool;
    o.disks = args.disks;
    o.shutdown_timeout = std::chrono::seconds(args.shutdown_timeout_s);
    o.jobs_dir = args.state_dir;
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    o.pools = std::move(*config);
    qmp::ConnectOptions connect;
    connect.default_timeout = o.qmp_timeout;
    auto src = connect_qmp(args.src_qmp, connect);
    if (!src) return fail(src.error().with_context("connect to the source " + args.src_qmp));
    auto progress =
        globals.output == OutputFormat::json ? make_json_progress() : make_text_progress();
    struct sigaction sa {};
    sa.sa_handler = on_offline_interrupt;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    auto report = run_offline_migrate(**src, o, *progress, g_interrupted);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (!report) return fail(report.error());
    print_report(*report, globals);
    return {};
}

}  // namespace blockmig::cli
