// Private to the CLI: what `blockmig pool` and `blockmig vol` share.
#pragma once

#include <fmt/core.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "commands.hpp"
#include "pools/address.hpp"

namespace blockmig::cli {

// Adds `--pools FILE` to a subcommand; the pools file is loaded when the
// command runs (load_pools_config's search order when not given).
inline void add_pools_option(CLI::App& command, std::optional<std::string>& path) {
    command.add_option("--pools", path,
                       "pools file (else $BLOCKMIG_POOLS, ~/.config/blockmig/pools.toml, "
                       "/etc/blockmig/pools.toml)");
}

// Prints one record: a JSON line, or "key: value" lines in text mode.
inline void print_record(const GlobalOptions& globals, const nlohmann::json& record) {
    if (globals.output == OutputFormat::json) {
        fmt::print("{}\n", record.dump());
        return;
    }
    for (const auto& [key, value] : record.items()) {
        fmt::print("{}: {}\n", key, value.is_string() ? value.get<std::string>() : value.dump());
    }
}

// "1.5 GiB" for people; JSON output keeps exact byte counts.
inline std::string human_size(std::uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double value = static_cast<double>(bytes);
    int unit = 0;
    while (value >= 1024 && unit < 5) value /= 1024, ++unit;
    return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, units[unit]);
}

void add_vol_commands(CLI::App& app, Dispatch& dispatch);

}  // namespace blockmig::cli
