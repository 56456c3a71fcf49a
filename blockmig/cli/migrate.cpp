// `blockmig migrate`: live migration of a running guest into a destination
// QEMU started with the same devices and `-incoming defer`.
#include "blockmig/migrate.hpp"

#include <fmt/core.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <set>

#include "commands.hpp"
#include "migrate/launch.hpp"
#include "migrate_offline.hpp"
#include "pool_shared.hpp"
#include "progress/human_size.hpp"
#include "qmp/client.hpp"

namespace blockmig::cli {

namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void on_migrate_interrupt(int) { g_interrupted.store(true); }

struct MigrateArgs {
    std::string src_qmp, dst_qmp, dst_addr;
    std::string copy_storage;
    int dst_port = 0;
    std::string dst_pool;
    bool dst_launch = false;
    std::vector<std::string> dst_vols;     // --dst-vol DEV=VOLUME
    std::vector<std::string> launch_argv;  // after --
    std::optional<std::string> pools_file;
    double bandwidth_mib = 0;
    std::string copy_mode;  // empty = auto
    int max_downtime_ms = 300;
    int timeout_s = 0;
    double timeout_per_gib = 0;
    std::string policy = "minimal-downtime";
    std::optional<int> postcopy_after_s;  // --postcopy-after (only with --policy postcopy)
    std::string compress = "none";
    int parallel = 0;
    bool keep_source = false;
    bool unsafe = false;
    std::string tls_dir;
    std::string state_dir;
    std::string report;    // --report FILE.svg
    bool offline = false;  // --offline (cli/migrate_offline.cpp)
    bool no_guardian = false;
    std::vector<std::string> disks;
    std::vector<std::string> src_disks;    // --src-disk DEV=PATH (--offline, no QEMU)
    std::vector<std::string> src_formats;  // --src-format [DEV=]FORMAT
    int shutdown_timeout_s = 60;
};

Result<std::unique_ptr<qmp::Client>> connect(const std::string& address, const char* side,
                                             const MigrateOptions& o,
                                             const GlobalOptions& globals) {
    qmp::ConnectOptions connect;
    connect.default_timeout = o.qmp_timeout;  // no QMP call may block forever
    // Post-copy recovery's migrate-recover / migrate-pause go out-of-band: the
    // destination's main thread may wait for a page the broken link holds back.
    connect.enable_oob = true;
    if (globals.verbose)
        connect.log = [side](qmp::LogLevel, std::string_view text) {
            fmt::print(stderr, "qmp {}: {}\n", side, text);
        };
    auto client = connect_qmp(address, connect);
    if (!client)
        return fail(
            client.error().with_context(fmt::format("connect to the {} {}", side, address)));
    return client;
}

// The final report for people: total time, QEMU's downtime, bytes per
// stream, RAM passes, each policy action.
void print_migrate_summary(const MigrateReport& r, const std::string& destination) {
    fmt::print(
        "migrated to {} in {:.1f} s ({:.1f} s of it moving RAM): {} RAM pass{}{}, QEMU "
        "downtime {} ms; {}\n",
        destination, r.total.count() / 1000.0, r.duration.count() / 1000.0, r.iterations,
        r.iterations == 1 ? "" : "es", r.postcopy ? " then post-copy" : "", r.downtime_ms,
        r.source_quit ? "the source QEMU quit" : "the source QEMU is left paused");
    std::string streams;
    for (const auto& s : r.streams)
        streams +=
            fmt::format("{}{} {}", streams.empty() ? "" : ", ", s.stream, human_mib(s.bytes));
    if (!streams.empty()) fmt::print("bytes moved: {}\n", streams);
    for (const auto& a : r.actions) fmt::print("policy: {}\n", a);
}

// A failed run's report (the series up to the failure), for whoever debugs
// it. The failure stays the result: a report that cannot be written is a
// warning, never the error line or the exit code.
void report_failure(const MigrateArgs& args, const GlobalOptions& globals,
                    const MigrateReport& failed) {
    if (!args.report.empty()) {
        if (auto w = write_report_svg(args.report, failed); !w)
            fmt::print(stderr, "blockmig: warning: {}\n", w.error().message);
        else if (globals.output != OutputFormat::json)
            fmt::print("report: {} (failed in phase {})\n", args.report, failed.failure->phase);
    }
    if (globals.output == OutputFormat::json) fmt::print("{}\n", report_json(failed).dump());
    std::fflush(stdout);
}

Result<void> run_migrate_command(const MigrateArgs& args, const GlobalOptions& globals) {
    MigrateOptions o;
    o.src_qmp = args.src_qmp;
    o.dst_qmp = args.dst_qmp;
    o.dst_addr = args.dst_addr;
    o.copy_storage = args.copy_storage == "all"   ? CopyStorage::all
                     : args.copy_storage == "inc" ? CopyStorage::inc
                                                  : CopyStorage::none;
    o.nbd_port = static_cast<std::uint16_t>(args.dst_port);
    if (args.dst_launch) {
        auto config = pools::load_pools_config(args.pools_file);
        if (!config) return fail(config.error());
        o.launch = DestinationLaunch{.pool = args.dst_pool,
                                     .config = std::move(*config),
                                     .argv = args.launch_argv,
                                     .qmp = args.dst_qmp};
        for (const auto& text : args.dst_vols) {
            auto v = migrate::parse_dst_vol(text);  // the CLI checked it
            if (v) o.launch->volumes[v->first] = v->second;
        }
    }
    o.bandwidth = static_cast<std::uint64_t>(args.bandwidth_mib * 1024 * 1024);
    o.copy_mode = args.copy_mode == "background"       ? CopyModePolicy::background
                  : args.copy_mode == "write-blocking" ? CopyModePolicy::write_blocking
                                                       : CopyModePolicy::auto_switch;
    o.max_downtime = std::chrono::milliseconds(args.max_downtime_ms);
    o.timeout = std::chrono::seconds(args.timeout_s);
    o.timeout_per_gib = args.timeout_per_gib;
    o.policy = args.policy == "postcopy"  ? MigratePolicy::postcopy
               : args.policy == "suspend" ? MigratePolicy::suspend
                                          : MigratePolicy::minimal_downtime;
    if (args.postcopy_after_s) o.postcopy_after = std::chrono::seconds(*args.postcopy_after_s);
    o.compress = args.compress == "zstd"     ? MigrateCompress::zstd
                 : args.compress == "xbzrle" ? MigrateCompress::xbzrle
                                             : MigrateCompress::none;
    o.parallel = args.parallel;
    o.keep_source = args.keep_source;
    o.unsafe = args.unsafe;
    o.tls_dir = args.tls_dir;
    o.jobs_dir = args.state_dir;
    // The guardian is this very binary (its hidden `_guard` command, cli/guard.cpp).
    if (!args.no_guardian) o.guardian = "/proc/self/exe";
    auto src = connect(args.src_qmp, "source", o, globals);
    if (!src) return fail(src.error());
    std::unique_ptr<qmp::Client> dst;
    if (!args.dst_launch) {
        auto c = connect(args.dst_qmp, "destination", o, globals);
        if (!c) return fail(c.error());
        dst = std::move(*c);
    }

    auto progress =
        globals.output == OutputFormat::json ? make_json_progress() : make_text_progress();
    // Ctrl-C before the switchover cancels the migration instead of leaving it.
    struct sigaction sa {};
    sa.sa_handler = on_migrate_interrupt;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    MigrateReport failed;
    auto report = dst ? run_migrate(**src, *dst, o, *progress, g_interrupted, &failed)
                      : run_migrate_launching(**src, o, *progress, g_interrupted, &failed);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (!report) {
        if (failed.failure) report_failure(args, globals, failed);
        return fail(report.error());
    }

    // The migration is done whatever happens to the report: a failure to
    // write it is one error line after the summary.
    Result<void> written;
    if (!args.report.empty()) written = write_report_svg(args.report, *report);
    if (globals.output == OutputFormat::json) {
        fmt::print("{}\n", report_json(*report).dump());
        return written;
    }
    print_migrate_summary(*report, args.dst_launch ? "the QEMU blockmig started" : args.dst_qmp);
    if (written && !args.report.empty()) fmt::print("report: {}\n", args.report);
    return written;
}

}  // namespace

// --dst-launch with --dst-qmp ssh://...: a command or pool that cannot work
// on the other host is a usage error, found before anything is made.
void check_remote_launch(const MigrateArgs& args) {
    DestinationLaunch launch{.pool = args.dst_pool, .argv = args.launch_argv, .qmp = args.dst_qmp};
    if (auto config = pools::load_pools_config(args.pools_file))
        launch.config = std::move(*config);  // else the run reports the pools file
    if (auto ok = migrate::check_launch_target(launch); !ok)
        throw CLI::ValidationError(ok.error().message);
}

void add_migrate_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<MigrateArgs>();
    auto* cmd = app.add_subcommand(
        "migrate", "live-migrate a running guest into a destination QEMU (-incoming defer)");
    cmd->add_option("--src-qmp", args->src_qmp,
                    "the guest's QMP (path, tcp:HOST:PORT or ssh://[USER@]HOST[:PORT]/PATH); "
                    "required unless --offline --src-disk");
    cmd->add_option(
        "--dst-qmp", args->dst_qmp,
        "the destination QEMU's QMP (path, tcp:HOST:PORT or ssh://[USER@]HOST[:PORT]/PATH); "
        "it runs with the same devices and -incoming defer");
    cmd->add_option("--dst-pool", args->dst_pool,
                    "with --dst-launch: the pool where blockmig creates the destination's volumes "
                    "(raw, each the size of its source disk)");
    cmd->add_flag(
        "--dst-launch", args->dst_launch,
        "blockmig starts the destination QEMU: the command after -- (run as argv, no shell; "
        "{qmp} = its QMP socket, {vol:DEV} = the volume made for disk DEV), e.g. -- ip netns "
        "exec B qemu-system-x86_64 ... -qmp unix:{qmp},server=on,wait=off -incoming defer; "
        "an iSCSI pool with CHAP credentials needs -object {secret-object} (= secret,id="
        "blockmig-chap,file=/dev/stdin,format=raw: blockmig writes the password to the "
        "command's stdin, {vol:DEV} names the secret) and its stdin left to QEMU; "
        "on another host give --dst-qmp ssh://HOST/PATH and -- ssh HOST qemu-system-x86_64 ... "
        "({qmp} = PATH there, each remote word quoted for its shell by blockmig)");
    cmd->add_option("--dst-vol", args->dst_vols,
                    "with --dst-launch: DEV=VOLUME, the volume disk DEV gets in --dst-pool "
                    "(repeatable): the file created instead of <job>-<dev>.raw, or in an iSCSI "
                    "pool the LUN (lunN or N; by default a free LUN of at least the disk's size)")
        ->type_name("DEV=VOLUME");
    cmd->add_option("CMD", args->launch_argv, "with --dst-launch: the destination's command");
    add_pools_option(*cmd, args->pools_file);
    cmd->add_option("--dst-addr", args->dst_addr,
                    "HOST[:PORT] the destination listens on for the migration stream (default "
                    "127.0.0.1; port 0 or none = QEMU picks)")
        ->default_str("127.0.0.1");
    cmd->add_option("--copy-storage", args->copy_storage,
                    "none: both QEMUs open the same volumes (shared storage); all: copy every "
                    "disk into the destination QEMU's own volumes over NBD; inc: copy only each "
                    "disk's qcow2 overlay into the destination's overlay over the same base "
                    "(required unless --offline)")
        ->check(CLI::IsMember({"none", "all", "inc"}));
    cmd->add_option("--dst-port", args->dst_port,
                    "with --copy-storage all/inc: the port of the destination's NBD server "
                    "(default: the first free one of 10809-10824)")
        ->check(CLI::Range(1, 65535));
    cmd->add_option("--bandwidth", args->bandwidth_mib,
                    "MiB/s for the migration stream (default: unlimited, set explicitly)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--copy-mode", args->copy_mode,
                    "how the disk mirrors treat the guest's writes during the copy: auto "
                    "(default): write-blocking from the start where QEMU can switch a mirror in "
                    "place (>= 8.2: each write reaches both sides before it completes, so a busy "
                    "guest writes at the link's pace and nothing is copied twice), else "
                    "background; background: writes complete locally and are copied after them, "
                    "switched to write-blocking once in sync where QEMU can (as Proxmox); "
                    "write-blocking: as auto, refused where QEMU cannot switch in place")
        ->check(CLI::IsMember({"auto", "background", "write-blocking"}));
    cmd->add_option("--max-downtime", args->max_downtime_ms,
                    "longest acceptable guest pause at the switchover, in ms (300)")
        ->check(CLI::PositiveNumber);
    auto* timeout =
        cmd->add_option("--timeout", args->timeout_s,
                        "cancel (guest stays on the source) if not switched over after SEC seconds")
            ->check(CLI::NonNegativeNumber);
    cmd->add_option("--timeout-per-gib", args->timeout_per_gib,
                    "like --timeout, SEC per GiB of guest RAM plus the disks to copy (Nova uses "
                    "800, KubeVirt 150)")
        ->check(CLI::PositiveNumber)
        ->excludes(timeout);
    cmd->add_option("--policy", args->policy,
                    "minimal-downtime (default): pre-copy, the downtime limit starts at 100 ms and "
                    "doubles up to --max-downtime each time the remaining RAM stops shrinking, "
                    "then the migration is cancelled at the timeout; postcopy: switch to "
                    "post-copy after --postcopy-after seconds of pre-copy, once every disk is in "
                    "sync (the guest runs on the destination while its RAM follows; no way back "
                    "once switched); suspend: "
                    "auto-converge throttles the guest, harder at each stall, and as last resort "
                    "it is paused to finish")
        ->check(CLI::IsMember({"minimal-downtime", "postcopy", "suspend"}));
    cmd->add_option("--postcopy-after", args->postcopy_after_s,
                    "with --policy postcopy: switch to post-copy after at most SEC seconds of "
                    "pre-copy, even if it still converges (default: only when it stalls; 0 = as "
                    "soon as every disk is in sync)")
        ->check(CLI::Range(0, 86400));
    cmd->add_option("--compress", args->compress,
                    "zstd: multifd channels compress with zstd; xbzrle: delta-encode pages sent "
                    "again; none (default)")
        ->check(CLI::IsMember({"zstd", "xbzrle", "none"}));
    cmd->add_option("--parallel", args->parallel,
                    "N multifd channels (parallel TCP streams) on both sides")
        ->check(CLI::Range(1, 255));
    cmd->add_flag("--keep-source", args->keep_source,
                  "leave the paused source QEMU running instead of quitting it");
    cmd->add_flag("--unsafe", args->unsafe,
                  "allow shared disks opened with a host cache (cache mode other than none)");
    cmd->add_option("--tls-dir", args->tls_dir,
                    "NBD and the migration stream over TLS, certificates checked both ways: DIR "
                    "holds ca-cert.pem, server-cert.pem, server-key.pem (read by the destination "
                    "QEMU) and ca-cert.pem, client-cert.pem, client-key.pem (read by the source "
                    "QEMU), at the same absolute path on both hosts");
    add_state_dir_option(*cmd, args->state_dir);
    cmd->add_flag("--no-guardian", args->no_guardian,
                  "start no guardian: by default a process of its own (its own session, not "
                  "the terminal's) waits for this blockmig to end and, if it dies instead (kill "
                  "-9, OOM, SSH drop), runs `blockmig recover JOB` so the guest is not left "
                  "paused at the switchover; give this when a supervisor recovers jobs itself");
    cmd->add_option("--report", args->report,
                    "write FILE.svg when the migration ends, completed or failed: remaining "
                    "bytes, dirty rate, throughput and the downtime limit over time, the guest's "
                    "pause marked; a failure's phase and cause in the title and its time marked "
                    "(not after a pre-flight refusal, which touches nothing)")
        ->type_name("FILE");
    cmd->add_flag("--offline", args->offline,
                  "cold migration: power the guest down (--src-qmp; or --src-disk: a guest that "
                  "is not running), copy its disks into --dst-pool (each in its format, in "
                  "parallel, sparse), compare SHA-256 of source and copy");
    cmd->add_option("--src-disk", args->src_disks,
                    "with --offline, instead of --src-qmp: the disk DEV of a guest that is not "
                    "running is the local file PATH (repeatable; DEV names the disk in reports, "
                    "the copy keeps PATH's file name); refused while a process (its QEMU) has "
                    "PATH open for writing, which is locked against QEMU until the copy ends")
        ->type_name("DEV=PATH");
    cmd->add_option("--src-format", args->src_formats,
                    "with --src-disk: raw or qcow2 for every disk, or DEV=FORMAT for one "
                    "(default: probed like qemu-img: the qcow2 magic, else raw)")
        ->type_name("[DEV=]FORMAT");
    cmd->add_option("--disk", args->disks, "with --offline: only this disk (repeatable)");
    cmd->add_option("--shutdown-timeout", args->shutdown_timeout_s,
                    "with --offline: seconds the guest has to power down before quit (60)")
        ->check(CLI::PositiveNumber);
    cmd->callback([args, &dispatch] {
        check_offline_usage(args->offline, args->dst_qmp, args->dst_launch, args->dst_pool,
                            args->copy_storage, args->disks);
        auto src_files =
            check_source_usage(args->offline, args->src_qmp, args->src_disks, args->src_formats);
        if (args->postcopy_after_s && args->policy != "postcopy")
            throw CLI::ValidationError("--postcopy-after", "only with --policy postcopy");
        if (args->offline && !args->tls_dir.empty())
            throw CLI::ValidationError("--tls-dir",
                                       "not with --offline (no stream crosses the network)");
        if (!args->dst_vols.empty() && !args->dst_launch)
            throw CLI::ValidationError("--dst-vol", "only with --dst-launch");
        std::set<std::string> vol_disks;
        for (const auto& text : args->dst_vols) {
            auto v = migrate::parse_dst_vol(text);
            if (!v) throw CLI::ValidationError(v.error().message);
            if (!vol_disks.insert(v->first).second)
                throw CLI::ValidationError("--dst-vol", "disk " + v->first + " given twice");
        }
        if (args->offline) {
            dispatch.action = [args, src_files, &dispatch] {
                return run_offline_command(
                    {args->src_qmp, src_files, args->dst_pool, args->disks,
                     args->shutdown_timeout_s, args->pools_file, args->state_dir},
                    dispatch.globals);
            };
            return;
        }
        if (args->copy_storage.empty())
            throw CLI::ValidationError("--copy-storage",
                                       "is required (none, all or inc), or --offline");
        if (args->dst_addr.empty()) args->dst_addr = "127.0.0.1";
        if (!args->report.empty()) {
            const auto dir = std::filesystem::path(args->report).parent_path();
            if (!dir.empty() && !std::filesystem::is_directory(dir))
                throw CLI::ValidationError("--report", "no directory " + dir.string());
        }
        if (!args->copy_mode.empty() && args->copy_storage == "none")
            throw CLI::ValidationError("--copy-mode", "only with --copy-storage all or inc");
        if (args->dst_port != 0 && args->copy_storage == "none")
            throw CLI::ValidationError("--dst-port", "only with --copy-storage all or inc");
        if (args->dst_launch && args->copy_storage == "inc")
            throw CLI::ValidationError(launch_refusal(CopyStorage::inc).message);
        if (args->compress == "xbzrle" && args->parallel > 0)
            throw CLI::ValidationError("--compress xbzrle",
                                       "does not combine with --parallel: multifd channels send "
                                       "whole pages (use --compress zstd)");
        if (!args->dst_launch && args->dst_qmp.empty())
            throw CLI::ValidationError("--dst-qmp", "give --dst-qmp, or --dst-launch -- CMD...");
        if (args->dst_launch &&
            (args->dst_pool.empty() || args->launch_argv.empty() || args->copy_storage != "all"))
            throw CLI::ValidationError("--dst-launch",
                                       "needs --dst-pool POOL, --copy-storage all and the command "
                                       "after --");
        if (args->dst_launch && !args->dst_qmp.empty()) check_remote_launch(*args);
        if (!args->dst_launch && (!args->dst_pool.empty() || !args->launch_argv.empty()))
            throw CLI::ValidationError("--dst-pool", "only with --dst-launch");
        dispatch.action = [args, &dispatch] {
            return run_migrate_command(*args, dispatch.globals);
        };
    });
}

}  // namespace blockmig::cli
