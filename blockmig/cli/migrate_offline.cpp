#include "migrate_offline.hpp"

#include <fmt/core.h>
#include <signal.h>

#include <algorithm>
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
                             {"format_from", d.format_from},
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
        fmt::print("{}: {} -> {} ({}{}, {:.1f} MiB of data, sha256 {} on both)\n", d.device,
                   d.source, d.target, d.format, d.format_from == "probed" ? ", probed" : "",
                   static_cast<double>(d.data_bytes) / (1 << 20), d.digest);
    fmt::print(
        "offline migration done in {:.1f} s: the guest {}; {} disk{} copied and verified; the "
        "source files are kept (blockmig never deletes them)\n",
        r.seconds, r.shutdown, r.disks.size(), r.disks.size() == 1 ? "" : "s");
}

// "DEV=PATH" -> its two halves; a usage error when either is empty.
std::pair<std::string, std::string> split_assignment(const char* option, const std::string& text,
                                                     const char* right) {
    const auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
        throw CLI::ValidationError(option, fmt::format("{}: expected DEV={}", text, right));
    return {text.substr(0, eq), text.substr(eq + 1)};
}

pools::ImageFormat source_format(const std::string& text) {
    if (text == "raw") return pools::ImageFormat::raw;
    if (text == "qcow2") return pools::ImageFormat::qcow2;
    throw CLI::ValidationError("--src-format", text + ": raw or qcow2");
}

// --src-format FORMAT (every disk) or DEV=FORMAT (one), applied to `files`.
void apply_formats(std::vector<OfflineSourceFile>& files, const std::vector<std::string>& formats) {
    for (const auto& text : formats) {
        if (text.find('=') == std::string::npos) {
            for (auto& f : files) f.format = source_format(text);
            continue;
        }
        auto [dev, format] = split_assignment("--src-format", text, "FORMAT");
        auto it = std::find_if(files.begin(), files.end(),
                               [&](const OfflineSourceFile& f) { return f.device == dev; });
        if (it == files.end())
            throw CLI::ValidationError("--src-format", "no --src-disk " + dev + "=PATH");
        it->format = source_format(format);
    }
}

}  // namespace

std::vector<OfflineSourceFile> check_source_usage(bool offline, const std::string& src_qmp,
                                                  const std::vector<std::string>& src_disks,
                                                  const std::vector<std::string>& src_formats) {
    if (!src_formats.empty() && src_disks.empty())
        throw CLI::ValidationError("--src-format", "only with --src-disk (QEMU knows its formats)");
    if (!offline) {
        if (!src_disks.empty())
            throw CLI::ValidationError("--src-disk",
                                       "only with --offline (no QEMU runs the guest)");
        if (src_qmp.empty()) throw CLI::ValidationError("--src-qmp", "is required");
        return {};
    }
    if (!src_qmp.empty() && !src_disks.empty())
        throw CLI::ValidationError("--src-disk",
                                   "excludes --src-qmp: a running guest's disks are what its "
                                   "QEMU says, a stopped guest's the files given");
    if (src_qmp.empty() && src_disks.empty())
        throw CLI::ValidationError("--offline", "needs --src-qmp or --src-disk DEV=PATH");
    std::vector<OfflineSourceFile> files;
    for (const auto& text : src_disks) {
        auto [dev, path] = split_assignment("--src-disk", text, "PATH");
        for (const auto& f : files)
            if (f.device == dev) throw CLI::ValidationError("--src-disk", dev + " given twice");
        files.push_back({dev, path, std::nullopt});
    }
    apply_formats(files, src_formats);
    return files;
}

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

// Runs with SIGINT / SIGTERM turned into the undo.
static Result<OfflineReport> run_interruptible(auto&& run) {
    struct sigaction sa {};
    sa.sa_handler = on_offline_interrupt;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    auto report = run(g_interrupted);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    return report;
}

Result<void> run_offline_command(const OfflineArgs& args, const GlobalOptions& globals) {
    OfflineOptions o;
    o.src_qmp = args.src_qmp;
    o.src_files = args.src_files;
    o.dst_pool = args.dst_pool;
    o.disks = args.disks;
    o.shutdown_timeout = std::chrono::seconds(args.shutdown_timeout_s);
    o.jobs_dir = args.state_dir;
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    o.pools = std::move(*config);
    auto progress =
        globals.output == OutputFormat::json ? make_json_progress() : make_text_progress();
    Result<OfflineReport> report = fail(ErrorCode::cancelled, "not run");
    if (!o.src_files.empty()) {
        report = run_interruptible([&](const std::atomic<bool>& cancel) {
            return run_offline_migrate_stopped(o, *progress, cancel);
        });
    } else {
        qmp::ConnectOptions connect;
        connect.default_timeout = o.qmp_timeout;
        auto src = connect_qmp(args.src_qmp, connect);
        if (!src) return fail(src.error().with_context("connect to the source " + args.src_qmp));
        report = run_interruptible([&](const std::atomic<bool>& cancel) {
            return run_offline_migrate(**src, o, *progress, cancel);
        });
    }
    if (!report) return fail(report.error());
    print_report(*report, globals);
    return {};
}

}  // namespace blockmig::cli
