#include "group.hpp"

#include <fmt/core.h>

#include <algorithm>

namespace blockmig::mirror {

namespace {

using namespace std::chrono_literals;

long seconds(std::chrono::milliseconds d) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::seconds>(d).count());
}

}  // namespace

Group::Group(qmp::Client& client, Clock& clock)
    : m_client(client),
      m_clock(clock),
      // Every job event; wait_event() keeps those of this group's jobs.
      m_events(client.subscribe(qmp::EventFilter({}, [](const qmp::Event& e) {
          return e.name == "JOB_STATUS_CHANGE" || e.name.starts_with("BLOCK_JOB_");
      }))) {}

std::uint64_t Group::speed_per_job(const CopyPolicy& policy) const {
    if (policy.bandwidth == 0) return 0;
    std::size_t active = 0;
    for (const auto* m : m_mirrors)
        if (m->state() == MirrorState::copying) ++active;
    return policy.bandwidth / std::max<std::size_t>(active, 1);
}

void Group::wait_event(std::chrono::milliseconds max_wait) {
    auto mine = [&](const qmp::Event& e) {
        const std::string id =
            e.name == "JOB_STATUS_CHANGE" ? e.data.value("id", "") : e.data.value("device", "");
        return std::any_of(m_mirrors.begin(), m_mirrors.end(),
                           [&](const Mirror* m) { return m->job_id() == id; });
    };
    // A timeout is the ordinary end of a quiet tick; a dead client shows in
    // the next query.
    (void)m_events.wait(mine, max_wait);
}

Result<void> Group::wait_ready(const CopyPolicy& policy, const std::atomic<bool>* cancel,
                               const std::function<void(const Mirror&)>& on_sample,
                               const std::function<void(const Mirror&, const Notice&)>& on_notice) {
    const auto deadline = deadline_after(m_clock, policy.timeout);
    std::uint64_t last_speed = speed_per_job(policy);
    for (;;) {
        if (cancel && cancel->load())
            return fail(ErrorCode::cancelled, "interrupted before the pivot");
        if (m_clock.now() > deadline)
            return fail(ErrorCode::timeout,
                        fmt::format("the copy did not finish within --timeout {} s",
                                    seconds(policy.timeout)));
        auto jobs = qmp::query_block_jobs(m_client);
        if (!jobs) return fail(jobs.error().with_context("query-block-jobs"));
        const auto now = m_clock.now();
        bool all_ready = true;
        for (Mirror* m : m_mirrors) {
            if (auto r = m->observe(*jobs, now); !r)
                return fail(r.error().with_context(m->spec().disk));
            if (on_sample) on_sample(*m);
            if (m->ready_to_finish()) continue;
            all_ready = false;
            if (auto r = supervise(*m, policy, now, on_notice); !r) return r;
        }
        if (all_ready) return {};
        // One bandwidth budget, shared among the jobs still copying.
        if (policy.bandwidth && speed_per_job(policy) != last_speed) {
            last_speed = speed_per_job(policy);
            for (Mirror* m : m_mirrors)
                if (m->state() == MirrorState::copying) (void)m->set_speed(last_speed);
        }
        wait_event(policy.tick);
    }
}

Result<void> Group::supervise(Mirror& m, const CopyPolicy& policy, Clock::time_point now,
                              const std::function<void(const Mirror&, const Notice&)>& on_notice) {
    if (now - m.last_progress() > policy.stall_timeout) {
        // The target stopped answering: end the job now (killing the hop
        // fails its requests) rather than wait on it.
        m.kill_hop();
        std::string log = m.hop_log();
        return fail(ErrorCode::timeout,
                    fmt::format("{}: no progress for {} s writing to {}: target unreachable?{}{}",
                                m.spec().disk, seconds(policy.stall_timeout), m.target_url(),
                                log.empty() ? "" : " storage daemon said: ", log));
    }
    // Convergence: remaining bytes must keep shrinking.
    const std::uint64_t remaining = m.remaining();
    auto& best = m_best[&m];
    if (best.second == Clock::time_point{} || remaining + (1u << 20) < best.first ||
        remaining < best.first * 95 / 100) {
        best = {remaining, now};
        return {};
    }
    // Only a copy that still moves but never catches up is a convergence
    // problem; one that does not move at all is a stall (above).
    if (!policy.auto_switch || !policy.can_switch || m.switched_to_write_blocking() ||
        now - best.second <= policy.converge_window || m.length() == 0 ||
        now - m.last_progress() >= 2s)
        return {};
    // QEMU >= 8.2 switches the running job (block-job-change); older ones
    // need a new mirror that copies everything again. A mirror into a hop
    // restarts too: on QEMU 10.0 a hop that dies under a mirror switched in
    // place corrupted the guest QEMU's heap (docs/known-issues.md); a re-copy
    // costs time, a dead guest costs its data.
    const bool in_place = policy.switch_in_place && !m.uses_hop();
    if (on_notice)
        on_notice(m, Notice{.kind = "copy-mode",
                            .fields = {{"disk", m.spec().disk},
                                       {"mode", "write-blocking"},
                                       {"how", in_place ? "in-place" : "restart"},
                                       {"reason", "guest writes faster than the copy"}},
                            .text = fmt::format(
                                "{}: remaining {} MiB stopped shrinking for {} s; switching to "
                                "write-blocking mode so the copy converges ({})",
                                m.spec().disk, remaining >> 20, seconds(policy.converge_window),
                                in_place ? "in place" : "restarting the mirror")});
    if (auto r = m.switch_to_write_blocking(in_place, speed_per_job(policy)); !r)
        return fail(r.error().with_context(m.spec().disk));
    best = {};
    return {};
}

}  // namespace blockmig::mirror
