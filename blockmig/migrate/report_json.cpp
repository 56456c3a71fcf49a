// The final report of `blockmig migrate` as its last JSON line.
#include <cmath>

#include "blockmig/migrate.hpp"

namespace blockmig {

namespace {

using nlohmann::json;

json number(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

json sample_json(const MigrateSample& s) {
    json disks = json::object();
    for (const auto& [disk, remaining] : s.disk_remaining) disks[disk] = remaining;
    return {{"t", s.t},
            {"ram_remaining", number(s.ram_remaining)},
            {"ram_transferred", number(s.ram_transferred)},
            {"ram_rate", number(s.ram_rate)},
            {"dirty_rate", number(s.dirty_rate)},
            {"downtime_limit_ms", number(s.downtime_limit_ms)},
            {"disk_rate", number(s.disk_rate)},
            {"disk_remaining", disks}};
}

}  // namespace

json report_json(const MigrateReport& r) {
    json streams = json::array();
    for (const auto& s : r.streams) streams.push_back({{"stream", s.stream}, {"bytes", s.bytes}});
    json samples = json::array();
    for (const auto& s : r.timeline.samples) samples.push_back(sample_json(s));
    const auto& tl = r.timeline;
    json j = {{"event", r.failure ? "failed" : "done"},
              {"outcome", r.failure ? "failed" : "completed"},
              {"job", r.job},
              {"seconds", r.duration.count() / 1000.0},
              {"total_seconds", r.total.count() / 1000.0},
              {"downtime_ms", r.downtime_ms},
              {"ram_transferred", r.ram_transferred},
              {"iterations", r.iterations},
              {"bandwidth", r.bandwidth},
              {"timeout", r.timeout.count()},
              {"postcopy", r.postcopy},
              {"multifd_bytes", r.multifd_bytes},
              {"streams", streams},
              {"actions", r.actions},
              {"source_quit", r.source_quit},
              {"timeline",
               {{"paused_at", tl.paused_at},
                {"resumed_at", tl.resumed_at},
                {"pause_reason", tl.pause_reason},
                {"postcopy_at", tl.postcopy_at},
                {"samples", samples}}}};
    if (r.failure) {
        j["phase"] = r.failure->phase;
        j["cause"] = r.failure->cause;
        j["error"] = r.failure->message;
    }
    return j;
}

}  // namespace blockmig
