// `blockmig migrate --offline`: the cold-migration branch of the migrate
// command (cli/migrate.cpp parses, this runs it).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"

namespace blockmig::cli {

struct OfflineArgs {
    std::string src_qmp;
    std::string dst_pool;
    std::vector<std::string> disks;  // --disk
    int shutdown_timeout_s = 60;
    std::optional<std::string> pools_file;
    std::string state_dir;
};

// Usage errors of --offline (CLI::ValidationError): what it needs, what it excludes.
void check_offline_usage(bool offline, const std::string& dst_qmp, bool dst_launch,
                         const std::string& dst_pool, const std::string& copy_storage,
                         const std::vector<std::string>& disks);

Result<void> run_offline_command(const OfflineArgs& args, const GlobalOptions& globals);

}  // namespace blockmig::cli
