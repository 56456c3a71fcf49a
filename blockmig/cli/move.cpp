// `blockmig move`: storage-only live move of a running guest's disks.
#include "blockmig/move.hpp"

#include <fmt/core.h>
#include <signal.h>

#include <atomic>

#include "commands.hpp"
#include "pool_shared.hpp"
#include "qmp/client.hpp"

namespace blockmig::cli {

namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void on_interrupt(int) { g_interrupted.store(true); }

struct MoveArgs {
    std::string qmp_socket;
    std::vector<std::string> disks;
    bool all_disks = false;
    std::vector<std::string> targets;  // POOL|VOLUME, or DEV=TARGET
    std::string format;
    double bandwidth_mib = 0;
    std::string copy_mode = "auto";
    bool shallow = false;
    bool copy_only = false;
    bool no_pivot = false;
    bool verify = false;
    bool delete_source = false;
    bool unsafe = false;
    int timeout_s = 0;
    int stall_timeout_s = 15;
    std::optional<std::string> pools_file;
    std::string state_dir;
    bool force_unmanaged = false;
    int verify_timeout_s = 120;
};

Result<MoveOptions> to_options(const MoveArgs& args) {
    MoveOptions o;
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    o.pools = std::move(*config);
    for (const auto& d : args.disks) o.disks.push_back({d, ""});
    o.all_disks = args.all_disks;
    o.qmp_address = args.qmp_socket;
    o.jobs_dir = args.state_dir;
    o.force_unmanaged = args.force_unmanaged;
    o.verify_timeout = std::chrono::seconds(args.verify_timeout_s);
    for (const auto& t : args.targets) {
        // DEV=TARGET gives one disk its own target; '=' never occurs in pool specs.
        auto eq = t.find('=');
        if (eq == std::string::npos) {
            if (!o.default_target.empty())
                return fail(ErrorCode::invalid_argument,
                            "give one --to TARGET, or --to DEV=TARGET per disk");
            o.default_target = t;
            continue;
        }
        std::string dev = t.substr(0, eq), target = t.substr(eq + 1);
        auto it =
            std::find_if(o.disks.begin(), o.disks.end(), [&](auto& d) { return d.disk == dev; });
        if (it == o.disks.end())
            o.disks.push_back({dev, target});
        else
            it->target = target;
    }
    if (!args.format.empty()) {
        auto f = pools::parse_image_format(args.format);
        if (!f) return fail(f.error());
        o.format = *f;
    }
    o.bandwidth = static_cast<std::uint64_t>(args.bandwidth_mib * 1024 * 1024);
    o.copy_mode = args.copy_mode == "background"       ? CopyModePolicy::background
                  : args.copy_mode == "write-blocking" ? CopyModePolicy::write_blocking
                                                       : CopyModePolicy::auto_switch;
    o.shallow = args.shallow;
    o.copy_only = args.copy_only;
    o.no_pivot = args.no_pivot;
    o.verify = args.verify;
    o.delete_source = args.delete_source;
    o.unsafe = args.unsafe;
    o.timeout = std::chrono::seconds(args.timeout_s);
    o.stall_timeout = std::chrono::seconds(args.stall_timeout_s);
    if (o.copy_only && o.delete_source)
        return fail(ErrorCode::invalid_argument, "--delete-source makes no sense with --copy-only");
    return o;
}

// "copied 1.2 GiB in 1m04s (19.2 MiB/s); guest paused 0.3 s": what a person
// (or a log) wants to know once the move is over.
std::string summary_line(const MoveReport& report) {
    std::uint64_t copied = 0, forwarded = 0;
    for (const auto& d : report.disks)
        copied += d.bytes_copied, forwarded += d.guest_bytes_forwarded;
    const double seconds = report.duration.count() / 1000.0;
    const auto whole = static_cast<long>(seconds);
    std::string took = whole >= 60 ? fmt::format("{}m{:02}s", whole / 60, whole % 60)
                                   : fmt::format("{:.1f} s", seconds);
    std::string line = fmt::format(
        "summary: {} disk{}, copied {} in {} ({}/s)", report.disks.size(),
        report.disks.size() == 1 ? "" : "s", human_size(copied), took,
        human_size(seconds > 0 ? static_cast<std::uint64_t>(copied / seconds) : copied));
    if (forwarded)
        line += fmt::format(" (the guest wrote {} while the copy was write-blocking)",
                            human_size(forwarded));
    line += report.guest_paused.count() > 0
                ? fmt::format("; guest paused {:.1f} s", report.guest_paused.count() / 1000.0)
                : "; guest never paused";
    return line;
}

Result<void> run_move_command(const MoveArgs& args, const GlobalOptions& globals) {
    auto options = to_options(args);
    if (!options) return fail(options.error());
    options->qemu_dir = globals.qemu_dir;
    qmp::ConnectOptions connect;
    // No QMP call may block forever (a drain stuck on dead storage).
    connect.default_timeout = options->qmp_timeout;
    if (globals.verbose)
        connect.log = [](qmp::LogLevel, std::string_view text) {
            fmt::print(stderr, "qmp: {}\n", text);
        };
    auto client = connect_qmp(args.qmp_socket, connect);
    if (!client)
        return fail(client.error().with_context(fmt::format("connect to {}", args.qmp_socket)));

    auto progress =
        globals.output == OutputFormat::json ? make_json_progress() : make_text_progress();
    // Ctrl-C before the pivot rolls back instead of leaving half a move.
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    auto report = run_move(**client, *options, *progress, g_interrupted);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (!report) return fail(report.error());

    nlohmann::json disks = nlohmann::json::array();
    for (const auto& d : report->disks) {
        disks.push_back({{"disk", d.disk},
                         {"source", d.source},
                         {"target", d.target},
                         {"node", d.target_node},
                         {"pivoted", d.pivoted},
                         {"verified", d.verified},
                         {"write_blocking", d.switched_to_write_blocking},
                         {"switched_in_place", d.switched_in_place},
                         {"bytes_copied", d.bytes_copied},
                         {"guest_bytes_forwarded", d.guest_bytes_forwarded},
                         {"source_allocated", d.source_allocated},
                         {"target_allocated", d.target_allocated}});
        if (globals.output == OutputFormat::text && !args.no_pivot)
            fmt::print("{}: {} {} -> {} ({} allocated)\n", d.disk, d.pivoted ? "moved" : "copied",
                       d.source, d.target, human_size(d.target_allocated));
    }
    if (globals.output == OutputFormat::json)
        fmt::print("{}\n", nlohmann::json{{"event", "done"},
                                          {"disks", disks},
                                          {"seconds", report->duration.count() / 1000.0},
                                          {"guest_paused_ms", report->guest_paused.count()}}
                               .dump());
    else
        fmt::print("{}\n", summary_line(*report));
    return {};
}

}  // namespace

void add_move_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<MoveArgs>();
    auto* cmd = app.add_subcommand(
        "move", "live-move a running guest's disks to another pool (mirror, then pivot)");
    cmd->add_option("--qmp", args->qmp_socket,
                    "the guest's QMP socket (path, tcp:HOST:PORT or ssh://[USER@]HOST[:PORT]/PATH)")
        ->required();
    auto* disk = cmd->add_option("--disk", args->disks, "device id or node name (repeatable)");
    auto* all = cmd->add_flag("--all-disks", args->all_disks, "move every disk");
    disk->excludes(all);
    cmd->add_option("--to", args->targets, "target pool or volume, or DEV=TARGET per disk")
        ->required();
    cmd->add_option("--format", args->format,
                    "target format: qcow2 or raw (default: the source's)");
    cmd->add_option("--bandwidth", args->bandwidth_mib,
                    "MiB/s for all disks together (default: unlimited)")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--copy-mode", args->copy_mode, "background, write-blocking or auto (default)")
        ->check(CLI::IsMember({"background", "write-blocking", "auto"}));
    cmd->add_flag("--shallow", args->shallow,
                  "copy only the top image; the target keeps the backing chain");
    cmd->add_flag("--copy-only", args->copy_only,
                  "make a consistent copy; the guest stays on its source");
    auto* no_pivot =
        cmd->add_flag("--no-pivot", args->no_pivot,
                      "stop at READY (job keeps mirroring); finish later with `blockmig pivot`");
    no_pivot->excludes(cmd->get_option("--copy-only"));
    cmd->add_flag("--verify", args->verify,
                  "pause the guest briefly and prove target == source before finishing");
    cmd->add_flag("--delete-source", args->delete_source,
                  "delete the old volume after a confirmed pivot");
    cmd->add_flag("--unsafe", args->unsafe, "allow cache modes other than none on network targets");
    cmd->add_option("--timeout", args->timeout_s, "give up (and roll back) after SEC seconds")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--stall-timeout", args->stall_timeout_s,
                    "fail when the copy makes no progress for SEC (15)")
        ->check(CLI::PositiveNumber);
    add_pools_option(*cmd, args->pools_file);
    add_state_dir_option(*cmd, args->state_dir);
    cmd->add_option("--verify-timeout", args->verify_timeout_s,
                    "--verify pauses the guest at most SEC (120); then it resumes and the move "
                    "fails")
        ->check(CLI::PositiveNumber);
    cmd->add_flag("--force-unmanaged", args->force_unmanaged,
                  "move a libvirt-managed guest anyway (its domain XML is not updated)");
    cmd->callback([args, &dispatch] {
        dispatch.action = [args, &dispatch] { return run_move_command(*args, dispatch.globals); };
    });
}

}  // namespace blockmig::cli
