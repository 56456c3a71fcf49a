#include <fmt/core.h>

#include <cstdlib>
#include <exception>
#include <optional>

#include "blockmig/cli.hpp"
#include "commands.hpp"

namespace blockmig::cli {

namespace {

int print_error(const Error& error) {
    fmt::print(stderr, "blockmig: error: {}\n", error.message);
    return 1;
}

}  // namespace

int run(int argc, char** argv) {
    // The one place exceptions are caught: CLI11 reports usage errors by
    // throwing, and nothing below may let one escape past here.
    try {
        CLI::App app{"blockmig: move virtual-machine disks while the guest keeps running"};
        app.require_subcommand(1);
        // Global options (--output, -v) may also follow the subcommand, as users type them.
        app.fallthrough();
        app.set_version_flag("--version", std::string("blockmig ") + BLOCKMIG_VERSION);
        Dispatch dispatch;
        std::map<std::string, OutputFormat> formats{{"text", OutputFormat::text},
                                                    {"json", OutputFormat::json}};
        app.add_option("--output", dispatch.globals.output, "text (default) or json lines")
            ->transform(CLI::CheckedTransformer(formats, CLI::ignore_case))
            ->option_text("text|json");
        app.add_flag("-v,--verbose", dispatch.globals.verbose, "log protocol details to stderr");
        app.add_option("--qemu-dir", dispatch.globals.qemu_dir,
                       "where qemu-storage-daemon and qemu-img are (default: PATH)")
            ->envname("BLOCKMIG_QEMU_DIR")
            ->option_text("DIR");
        std::optional<std::string> pools_file;
        app.add_option("--pools", pools_file, "pools file, for any command (as $BLOCKMIG_POOLS)")
            ->option_text("FILE");

        add_qmp_command(app, dispatch);
        add_pool_commands(app, dispatch);
        add_move_command(app, dispatch);
        add_pivot_command(app, dispatch);
        add_convert_command(app, dispatch);
        add_info_command(app, dispatch);
        add_compare_command(app, dispatch);
        add_jobs_command(app, dispatch);
        add_recover_command(app, dispatch);
        add_migrate_command(app, dispatch);
        add_guard_command(app, dispatch);

        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            // --help and --version arrive here too (exit code 0); anything
            // else is a usage error: exit 2, whatever CLI11's own code is.
            if (e.get_exit_code() == 0) return app.exit(e);
            fmt::print(stderr, "blockmig: error: {} (see --help)\n", e.what());
            return 2;
        }
        // `blockmig --pools FILE vol list`: every command loads its pools
        // file through load_pools_config(), which reads $BLOCKMIG_POOLS when
        // the command's own --pools is not given; the global option sets it.
        if (pools_file) setenv("BLOCKMIG_POOLS", pools_file->c_str(), 1);
        if (!dispatch.action) return 0;
        Result<void> result = dispatch.action();
        if (!result) return print_error(result.error());
        return dispatch.exit_code;
    } catch (const std::exception& e) {
        return print_error(Error{ErrorCode::io_error, e.what(), {}});
    } catch (...) {
        return print_error(Error{ErrorCode::io_error, "unexpected internal error", {}});
    }
}

}  // namespace blockmig::cli
