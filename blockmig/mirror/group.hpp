// Several mirrors driven and waited on together (`move --all-disks`, one
// mirror per disk in `migrate`): one event subscription for all of them,
// one bandwidth budget, one deadline.
//
// The wait is on QMP events (BLOCK_JOB_READY, JOB_STATUS_CHANGE, ...): the
// subscription is made when the Group is built, so build it BEFORE starting
// the mirrors. Between events one query-block-jobs per `tick` feeds progress
// display and the supervision below; an event ends the tick early, so READY
// is seen within milliseconds, not a poll interval.
//
// Supervision while copying, per mirror:
// - stall: no progress (a busy job whose offset does not move) for
//   `stall_timeout` -> the hop is killed (the job fails at once) and
//   wait_ready fails with timeout naming the target;
// - convergence (`auto_switch`): remaining bytes not shrinking for
//   `converge_window` while the copy still moves -> the mirror is switched
//   to write-blocking (in place when QEMU can, else restarted). Where the
//   switch is in place (free), a copy hovering a few MiB short of READY for
//   `hover_window` is switched too: QEMU declares READY only when nothing is
//   dirty and nothing in flight at one instant, which a steady writer may
//   never allow; with `go_on_when_nearly_done` such a copy counts as done
//   instead (the caller waits for READY with the guest paused). A target
//   that stopped answering is a stall, never a convergence problem.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mirror.hpp"

namespace blockmig::mirror {

struct CopyPolicy {
    std::uint64_t bandwidth = 0;           // bytes/s for all mirrors together; 0 = unlimited
    std::chrono::milliseconds timeout{0};  // the whole copy; 0 = none
    std::chrono::milliseconds stall_timeout{15'000};
    std::chrono::milliseconds converge_window{6'000};
    // How long a copy may hover a few MiB short of READY before it is
    // switched in place (or counts as done: go_on_when_nearly_done).
    std::chrono::milliseconds hover_window{2'000};
    bool auto_switch = true;       // switch to write-blocking when the copy does not converge
    bool can_switch = true;        // blockdev-mirror has copy-mode (Features::mirror_copy_mode)
    bool switch_in_place = false;  // block-job-change can (Features::mirror_change_copy_mode)
    // A copy that hovered a few MiB short of READY for hover_window counts
    // as done for wait_ready, and is never switched: migrate on a QEMU that
    // cannot switch in place lets its RAM move meanwhile and waits for READY
    // once the guest is paused (nothing dirties the disk any more).
    bool go_on_when_nearly_done = false;
    std::chrono::milliseconds tick{200};  // progress samples while nothing happens
};

// Something worth telling the user (e.g. a copy-mode switch).
struct Notice {
    std::string kind;  // "copy-mode"
    nlohmann::json fields;
    std::string text;
};

class Group {
  public:
    explicit Group(qmp::Client& client, Clock& clock = system_clock());

    void add(Mirror& mirror) { m_mirrors.push_back(&mirror); }
    const std::vector<Mirror*>& mirrors() const { return m_mirrors; }

    // The speed each copying mirror gets from `policy.bandwidth`.
    std::uint64_t speed_per_job(const CopyPolicy& policy) const;

    // Drives every mirror until all are ready to finish. After each sample
    // `on_sample` runs (progress display); notices go to `on_notice`.
    // Errors: cancelled (`cancel` became true), timeout (policy.timeout, or
    // a stall, with the mirror's disk in the message), io_error (a job
    // failed), invalid_state (a job vanished), and QMP errors.
    Result<void> wait_ready(
        const CopyPolicy& policy, const std::atomic<bool>* cancel,
        const std::function<void(const Mirror&)>& on_sample = {},
        const std::function<void(const Mirror&, const Notice&)>& on_notice = {});

  private:
    Result<void> supervise(Mirror& m, const CopyPolicy& policy, Clock::time_point now,
                           const std::function<void(const Mirror&, const Notice&)>& on_notice);
    // Whether `m` still gets closer to READY (see supervision above).
    bool converging(const Mirror& m, const CopyPolicy& policy, bool in_place,
                    Clock::time_point now);
    // A few MiB short of READY for longer than hover_window.
    bool hovered(const Mirror& m, const CopyPolicy& policy, Clock::time_point now) const;
    void announce_nearly_done(const Mirror& m,
                              const std::function<void(const Mirror&, const Notice&)>& on_notice);
    // Waits up to `max_wait` for an event about one of the mirrors.
    void wait_event(std::chrono::milliseconds max_wait);

    qmp::Client& m_client;
    Clock& m_clock;
    qmp::EventSubscription m_events;
    std::vector<Mirror*> m_mirrors;
    // Per mirror, whether it still closes in on READY (convergence).
    struct Closing {
        std::uint64_t best = 0;  // the least remaining seen
        Clock::time_point best_at, nearly_done_since;
        bool announced = false;  // the nearly-ready notice went out
    };
    std::map<const Mirror*, Closing> m_closing;
};

}  // namespace blockmig::mirror
