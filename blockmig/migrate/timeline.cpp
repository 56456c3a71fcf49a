#include "timeline.hpp"

#include <chrono>

namespace blockmig::migrate {

namespace {

// Mirror samples arrive several times a second per disk; the chart needs
// far fewer (the RAM phase is sampled every progress_interval anyway).
constexpr double k_disk_sample_spacing = 0.5;  // seconds

double number(const nlohmann::json& fields, const char* key) {
    auto it = fields.find(key);
    if (it == fields.end() || !it->is_number()) return k_unknown;
    const double v = it->get<double>();
    return v < 0 ? k_unknown : v;  // QEMU's -1 and ours mean "not known"
}

}  // namespace

TimelineRecorder::TimelineRecorder(ProgressSink& out, Clock& clock)
    : m_out(out), m_clock(clock), m_start(clock.now()) {}

double TimelineRecorder::elapsed() const {
    return std::chrono::duration<double>(m_clock.now() - m_start).count();
}

void TimelineRecorder::record(MigrateSample sample) {
    sample.t = elapsed();
    double rate = 0;
    for (const auto& [disk, d] : m_disks) {
        sample.disk_remaining[disk] = d.remaining;
        rate += d.rate;
    }
    if (!m_disks.empty()) sample.disk_rate = rate;
    m_timeline.samples.push_back(std::move(sample));
}

void TimelineRecorder::progress(const ProgressSample& s) {
    m_out.progress(s);
    if (s.total == 0) return;  // no length yet: nothing true to record
    m_disks[s.item] = {static_cast<double>(s.total - std::min(s.bytes, s.total)), s.rate};
    // Once the RAM moves, its samples carry the disks' state too.
    if (m_ram_seen) return;
    if (!m_timeline.samples.empty() &&
        elapsed() - m_timeline.samples.back().t < k_disk_sample_spacing)
        return;
    record({});
}

void TimelineRecorder::event(const std::string& name, const nlohmann::json& fields,
                             const std::string& message) {
    m_out.event(name, fields, message);
    if (name == "ram") {
        m_ram_seen = true;
        record({.ram_remaining = number(fields, "remaining"),
                .ram_transferred = number(fields, "transferred"),
                .ram_rate = number(fields, "rate"),
                .dirty_rate = number(fields, "dirty_rate"),
                .downtime_limit_ms = number(fields, "downtime_limit_ms")});
    } else if (name == "guest") {
        const std::string state = fields.value("state", "");
        if (state == "paused" && m_timeline.paused_at < 0) {
            m_timeline.paused_at = elapsed();
            m_timeline.pause_reason = fields.value("reason", "");
        } else if (state == "running" && m_timeline.paused_at >= 0 && m_timeline.resumed_at < 0) {
            m_timeline.resumed_at = elapsed();
        }
    } else if (name == "policy" && fields.value("qemu_status", "") == "postcopy-active" &&
               m_timeline.postcopy_at < 0) {
        m_timeline.postcopy_at = elapsed();
    }
}

}  // namespace blockmig::migrate
