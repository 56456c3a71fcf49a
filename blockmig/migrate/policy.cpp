#include "policy.hpp"

#include <fmt/core.h>

#include <algorithm>

#include "progress/human_size.hpp"

namespace blockmig::migrate {

std::chrono::milliseconds initial_downtime(MigratePolicy policy,
                                           std::chrono::milliseconds max_downtime) {
    if (policy != MigratePolicy::minimal_downtime) return max_downtime;
    return std::min(k_start_downtime, max_downtime);
}

PolicyController::PolicyController(PolicyConfig config)
    : m_config(config), m_downtime(initial_downtime(config.policy, config.max_downtime)) {}

std::optional<PolicyAction> PolicyController::decide(Clock::time_point now,
                                                     const std::optional<RamSample>& sample,
                                                     bool disks_in_sync) {
    if (m_aborted || m_postcopy) return std::nullopt;
    if (now >= m_config.deadline) {
        m_aborted = true;
        std::string where = sample ? fmt::format("{} of RAM still to send after {} passes",
                                                 human_mib(sample->remaining), sample->passes)
                                   : std::string("RAM still to send");
        return PolicyAction{
            .step = PolicyStep::abort,
            .text = fmt::format("timed out after {} s with {} (downtime limit {} ms)",
                                m_config.timeout.count(), where, m_downtime.count())};
    }
    if (!sample || m_paused) return std::nullopt;
    observe(*sample);
    if (m_config.policy == MigratePolicy::postcopy) {
        if (stalled()) return start_postcopy(stall_reason(), disks_in_sync);
        if (auto why = postcopy_time_up(now, *sample)) return start_postcopy(*why, disks_in_sync);
        return std::nullopt;
    }
    if (!stalled()) return std::nullopt;
    return escalate(*sample);
}

std::string PolicyController::stall_reason() const {
    return fmt::format("pre-copy stalled ({} left after each of {} passes)", human_mib(*m_floor),
                       m_config.stall_passes);
}

// --postcopy-after SEC: pre-copy ran that long (nullopt: not yet, or not asked).
std::optional<std::string> PolicyController::postcopy_time_up(Clock::time_point now,
                                                              const RamSample& s) const {
    if (!m_config.postcopy_after || now - m_config.ram_started < *m_config.postcopy_after)
        return std::nullopt;
    return fmt::format(
        "pre-copy ran {} s (--postcopy-after {}) with {} still to send after {} pass{}",
        std::chrono::duration_cast<std::chrono::seconds>(now - m_config.ram_started).count(),
        m_config.postcopy_after->count(), human_mib(s.remaining), s.passes,
        s.passes == 1 ? "" : "es");
}

// Counts the passes whose leftover did not beat the best one by k_progress.
void PolicyController::observe(const RamSample& s) {
    if (s.passes <= m_passes) return;
    const std::uint64_t new_passes = s.passes - m_passes;
    m_passes = s.passes;
    if (s.passes < 2) return;  // still the first pass: every page once
    const bool shrank = !m_floor || static_cast<double>(s.remaining) <
                                        static_cast<double>(*m_floor) * (1.0 - k_progress);
    if (shrank) {
        m_floor = s.remaining;
        m_stalled = 0;
        return;
    }
    m_stalled += static_cast<int>(std::min<std::uint64_t>(new_passes, 1000));
}

// Post-copy for `why`, but only with every disk in sync.
std::optional<PolicyAction> PolicyController::start_postcopy(const std::string& why,
                                                             bool disks_in_sync) {
    if (!disks_in_sync) {
        // Post-copy would run the guest on disks that miss writes: wait,
        // and say so once.
        if (m_waiting) return std::nullopt;
        m_waiting = true;
        return PolicyAction{.step = PolicyStep::wait,
                            .text = why + ": post-copy waits until every disk is in sync again"};
    }
    m_postcopy = true;
    return PolicyAction{.step = PolicyStep::start_postcopy,
                        .text = why + ": requested post-copy (every disk in sync)"};
}

std::optional<PolicyAction> PolicyController::escalate(const RamSample& s) {
    const std::string why = stall_reason();
    switch (m_config.policy) {
        case MigratePolicy::minimal_downtime: {
            if (m_downtime >= m_config.max_downtime) return std::nullopt;  // the deadline decides
            m_stalled = 0;
            const auto from = m_downtime;
            m_downtime = std::min(m_downtime * 2, m_config.max_downtime);
            return PolicyAction{.step = PolicyStep::set_downtime,
                                .downtime = m_downtime,
                                .text = fmt::format("{}: downtime limit {} -> {} ms", why,
                                                    from.count(), m_downtime.count())};
        }
        case MigratePolicy::postcopy:
            return std::nullopt;  // decide() starts it
        case MigratePolicy::suspend: {
            m_stalled = 0;
            if (m_throttle_increment < k_max_throttle_increment) {
                const int from = m_throttle_increment;
                m_throttle_increment = std::min(from * 2, k_max_throttle_increment);
                return PolicyAction{
                    .step = PolicyStep::throttle,
                    .throttle_increment = m_throttle_increment,
                    .text = fmt::format("{}: auto-converge throttle step {} -> {} % (vCPUs "
                                        "throttled {} %)",
                                        why, from, m_throttle_increment, s.cpu_throttle)};
            }
            m_paused = true;
            return PolicyAction{
                .step = PolicyStep::pause_guest,
                .text = fmt::format("{} with the vCPUs throttled {} %: paused the guest on the "
                                    "source to finish (last resort)",
                                    why, s.cpu_throttle)};
        }
    }
    return std::nullopt;
}

}  // namespace blockmig::migrate
