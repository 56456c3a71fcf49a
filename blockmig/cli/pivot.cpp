// `blockmig pivot`: finish (or abort) moves that `move --no-pivot` left READY.
#include <fmt/core.h>

#include "blockmig/move.hpp"
#include "commands.hpp"
#include "pool_shared.hpp"
#include "qmp/client.hpp"

namespace blockmig::cli {

namespace {

struct PivotArgs {
    std::string qmp_socket;
    std::vector<std::string> disks;
    bool abort = false;
    std::optional<std::string> pools_file;
    std::string state_dir;
};

Result<void> run_pivot_command(const PivotArgs& args, const GlobalOptions& globals) {
    PivotOptions options;
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    options.pools = std::move(*config);
    options.disks = args.disks;
    options.abort = args.abort;
    options.qmp_address = args.qmp_socket;
    options.jobs_dir = args.state_dir;
    qmp::ConnectOptions connect;
    connect.default_timeout = options.qmp_timeout;
    auto client = connect_qmp(args.qmp_socket, connect);
    if (!client)
        return fail(client.error().with_context(fmt::format("connect to {}", args.qmp_socket)));
    auto progress =
        globals.output == OutputFormat::json ? make_json_progress() : make_text_progress();
    auto report = run_pivot(**client, options, *progress);
    if (!report) return fail(report.error());
    for (const auto& d : report->disks) {
        if (globals.output == OutputFormat::json)
            fmt::print("{}\n", nlohmann::json{{"event", "done"},
                                              {"disk", d.disk},
                                              {"target", d.target},
                                              {"pivoted", d.pivoted}}
                                   .dump());
        else if (d.pivoted)
            fmt::print("{}: moved {} -> {}\n", d.disk, d.source, d.target);
    }
    return {};
}

}  // namespace

void add_pivot_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<PivotArgs>();
    auto* cmd =
        app.add_subcommand("pivot", "finish (or --abort) moves left READY by `move --no-pivot`");
    cmd->add_option("--qmp", args->qmp_socket, "the guest's QMP socket")->required();
    cmd->add_option("--disk", args->disks, "only these disks (default: all left READY)");
    cmd->add_flag("--abort", args->abort,
                  "cancel instead: the guest stays on its source, the target is deleted");
    add_pools_option(*cmd, args->pools_file);
    add_state_dir_option(*cmd, args->state_dir);
    cmd->callback([args, &dispatch] {
        dispatch.action = [args, &dispatch] { return run_pivot_command(*args, dispatch.globals); };
    });
}

}  // namespace blockmig::cli
