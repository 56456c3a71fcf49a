// `blockmig migrate --offline`: the cold-migration branch of the migrate
// command (cli/migrate.cpp parses, this runs it).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "blockmig/offline.hpp"
#include "commands.hpp"

namespace blockmig::cli {

struct OfflineArgs {
    std::string src_qmp;                       // a running (or -no-shutdown) guest, or
    std::vector<OfflineSourceFile> src_files;  // --src-disk: a guest with no QEMU
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

// --src-qmp / --src-disk / --src-format (CLI::ValidationError): exactly one
// of --src-qmp and --src-disk with --offline, --src-qmp without it. Returns
// the --src-disk files, each with its --src-format if one applies.
std::vector<OfflineSourceFile> check_source_usage(bool offline, const std::string& src_qmp,
                                                  const std::vector<std::string>& src_disks,
                                                  const std::vector<std::string>& src_formats);

Result<void> run_offline_command(const OfflineArgs& args, const GlobalOptions& globals);

}  // namespace blockmig::cli
