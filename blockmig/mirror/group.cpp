#include "group.hpp"

#include <fmt/core.h>

#include <algorithm>

namespace blockmig::mirror {

namespace {

using namespace std::chrono_literals;

long seconds(std::chrono::milliseconds d) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::seconds>(d).count());
}

// Under this a copy is a few chunks short of READY: what it has left goes
// up and down with the guest's writes.
constexpr std::uint64_t k_nearly_done = 4u << 20;

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
            if (auto r = supervise(*m, policy, now, on_notice); !r) return r;
            if (policy.go_on_when_nearly_done && hovered(*m, policy, now)) {
                announce_nearly_done(*m, on_notice);
                continue;
            }
            all_ready = false;
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
    // QEMU >= 8.2 switches the running job (block-job-change); older ones
    // need a new mirror that copies everything again. A mirror into a hop
    // restarts too: on QEMU 10.0 a hop that dies under a mirror switched in
    // place corrupted the guest QEMU's heap (docs/known-issues.md); a re-copy
    // costs time, a dead guest costs its data.
    const bool in_place = policy.switch_in_place && !m.uses_hop();
    if (converging(m, policy, in_place, now)) return {};
    // Left to catch up at the switchover, never copied again.
    if (policy.go_on_when_nearly_done && hovered(m, policy, now)) return {};
    // Only a copy that still moves but never catches up is a convergence
    // problem; one that does not move at all is a stall (above).
    if (!policy.auto_switch || !policy.can_switch || m.switched_to_write_blocking() ||
        m.length() == 0 || now - m.last_progress() >= 2s)
        return {};
    const std::uint64_t remaining = m.remaining();
    if (on_notice)
        on_notice(m, Notice{.kind = "copy-mode",
                            .fields = {{"disk", m.spec().disk},
                                       {"mode", "write-blocking"},
                                       {"how", in_place ? "in-place" : "restart"},
                                       {"reason", "guest writes faster than the copy"}},
                            .text = fmt::format(
                                "{}: the copy stopped closing in on READY ({} KiB left); "
                                "switching to write-blocking mode so it converges ({})",
                                m.spec().disk, remaining >> 10,
                                in_place ? "in place" : "restarting the mirror")});
    if (auto r = m.switch_to_write_blocking(in_place, speed_per_job(policy)); !r)
        return fail(r.error().with_context(m.spec().disk));
    m_closing.erase(&m);
    return {};
}

bool Group::hovered(const Mirror& m, const CopyPolicy& policy, Clock::time_point now) const {
    auto it = m_closing.find(&m);
    return it != m_closing.end() && it->second.nearly_done_since != Clock::time_point{} &&
           now - it->second.nearly_done_since > policy.hover_window;
}

void Group::announce_nearly_done(const Mirror& m,
                                 const std::function<void(const Mirror&, const Notice&)>& on_notice) {
    auto& c = m_closing[&m];
    if (c.announced || !on_notice) return;
    c.announced = true;
    on_notice(m, Notice{.kind = "nearly-ready",
                        .fields = {{"disk", m.spec().disk}, {"remaining", m.remaining()}},
                        .text = fmt::format("{}: {} KiB short of READY under the guest's writes; "
                                            "the last chunks follow while the guest is paused",
                                            m.spec().disk, m.remaining() >> 10)});
}

bool Group::converging(const Mirror& m, const CopyPolicy& policy, bool in_place,
                       Clock::time_point now) {
    const std::uint64_t remaining = m.remaining();
    auto& c = m_closing[&m];
    if (remaining >= k_nearly_done)
        c.nearly_done_since = {};
    else if (c.nearly_done_since == Clock::time_point{})
        c.nearly_done_since = now;
    if (in_place && c.nearly_done_since != Clock::time_point{} &&
        now - c.nearly_done_since > policy.hover_window)
        return false;
    if (c.best_at == Clock::time_point{} || remaining + (1u << 20) < c.best ||
        remaining < c.best * 95 / 100) {
        c.best = remaining;
        c.best_at = now;
        return true;
    }
    return now - c.best_at <= policy.converge_window;
}

}  // namespace blockmig::mirror
