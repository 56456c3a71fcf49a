// Private to the CLI: how each command file plugs into `blockmig`.
//
// Each command lives in its own cli_<name>.cpp and registers its CLI11
// subcommand(s). When CLI11 selects one, its callback stores the work in
// `Dispatch::action`; cli::run() calls it after parsing and turns an Error
// into the single "blockmig: error: ..." line and a non-zero exit.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <functional>
#include <string>

#include "qmp/client.hpp"
#include "qmp/error.hpp"

namespace blockmig::jobs {
class Journal;
}

namespace blockmig::cli {

enum class OutputFormat { text, json };

struct GlobalOptions {
    OutputFormat output = OutputFormat::text;
    bool verbose = false;
    std::string qemu_dir;  // --qemu-dir / $BLOCKMIG_QEMU_DIR; empty = PATH
};

struct Dispatch {
    std::function<Result<void>()> action;
    GlobalOptions globals;
    // What `blockmig` exits with when the action succeeds (compare: 1 = the images differ).
    int exit_code = 0;
};

void add_qmp_command(CLI::App& app, Dispatch& dispatch);
void add_pool_commands(CLI::App& app, Dispatch& dispatch);
void add_move_command(CLI::App& app, Dispatch& dispatch);
void add_pivot_command(CLI::App& app, Dispatch& dispatch);
void add_convert_command(CLI::App& app, Dispatch& dispatch);
void add_info_command(CLI::App& app, Dispatch& dispatch);
void add_compare_command(CLI::App& app, Dispatch& dispatch);
void add_jobs_command(CLI::App& app, Dispatch& dispatch);
void add_recover_command(CLI::App& app, Dispatch& dispatch);
void add_migrate_command(CLI::App& app, Dispatch& dispatch);
void add_guard_command(CLI::App& app, Dispatch& dispatch);

// `blockmig recover` of one job whose journal the caller holds locked (the
// guardian, jobs/guardian.hpp, runs exactly this). Prints the report;
// invalid_state with the recover command when the job is not fully recovered.
Result<void> recover_locked(const std::filesystem::path& dir, jobs::Journal& journal,
                            int step_timeout_s, const GlobalOptions& globals);

// Connects to a QMP address in any form (socket path, tcp:HOST:PORT,
// ssh://[USER@]HOST[:PORT]/PATH), warning once per address on stderr when it
// is unauthenticated TCP. Errors: those of qmp::Client::connect().
Result<std::unique_ptr<qmp::Client>> connect_qmp(std::string_view address,
                                                 qmp::ConnectOptions options);

// Adds `--state-dir DIR` (where job journals live; default
// $BLOCKMIG_STATE_DIR, else /var/lib/blockmig/jobs).
inline void add_state_dir_option(CLI::App& command, std::string& dir) {
    command.add_option("--state-dir", dir,
                       "job journals (default $BLOCKMIG_STATE_DIR, else /var/lib/blockmig/jobs)");
}

}  // namespace blockmig::cli
