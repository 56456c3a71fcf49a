// What `blockmig migrate` reports at the end (blockmig/migrate.hpp,
// MigrateReport): bytes per stream and a time series of what the live view
// showed, drawn by write_report_svg (`--report FILE.svg`) and printed as the
// final JSON line (`--output json`).
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qmp/error.hpp"

namespace blockmig {

inline constexpr double k_unknown = NAN;  // a value not measured at that time

// One reading, `t` seconds after the run began. Unknown values (RAM before
// it moves, a dirty rate before QEMU's second pass) are NaN.
struct MigrateSample {
    double t = 0;
    double ram_remaining = k_unknown;    // bytes
    double ram_transferred = k_unknown;  // bytes
    double ram_rate = k_unknown;         // bytes/s on the migration stream(s), QEMU's mbps
    double dirty_rate = k_unknown;       // bytes/s the guest dirties (QEMU's estimate)
    double downtime_limit_ms = k_unknown;
    double disk_rate = k_unknown;                  // bytes/s, every mirror together
    std::map<std::string, double> disk_remaining;  // device id -> bytes the mirror has left
};

struct MigrateTimeline {
    std::vector<MigrateSample> samples;
    // The guest paused (pre-switchover, or the start of --policy suspend)
    // until it ran on the destination, seconds since the start; -1 = never.
    double paused_at = -1, resumed_at = -1;
    std::string pause_reason;  // "switchover" or "suspend"
    double postcopy_at = -1;   // the switch to post-copy, -1 = none
};

// Bytes one stream carried: "ram" (the main migration stream), "multifd"
// (all multifd channels), "disk:DEV" (that disk's mirror, QEMU's count).
struct StreamBytes {
    std::string stream;
    std::uint64_t bytes = 0;
};

// How a failed run ended: its phase, the cause, and the whole error line
// blockmig printed (what was undone, what to run next).
struct MigrateFailure {
    std::string phase;
    std::string cause;
    std::string message;
};

struct MigrateReport;

// The final report as one JSON object: {"event": "done", "outcome":
// "completed", ...}, or after a failure {"event": "failed", "outcome":
// "failed", "phase", "cause", "error", ...} with the series up to it.
nlohmann::json report_json(const MigrateReport& report);

// An SVG of the run: remaining bytes (RAM, each disk), rates (guest dirty
// rate, RAM and disk throughput) and the downtime limit over time, the
// guest's pause shaded, the switch to post-copy marked; a failed run says so
// in its title (phase, cause) and marks the failure's time.
std::string render_report_svg(const MigrateReport& report);
// The same written to `path` atomically (a temporary file in the same
// directory, then rename), mode 0644. Errors: io_error naming the path.
Result<void> write_report_svg(const std::filesystem::path& path, const MigrateReport& report);

}  // namespace blockmig
