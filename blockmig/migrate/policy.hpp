// What `migrate --policy` does while the RAM moves: a pure controller fed
// the source's query-migrate samples, deciding each policy action (the RHV
// migration guide's three policies; Nova's and KubeVirt's completion
// timeouts). migrate.cpp sends what it decides; the controller sends nothing.
//
// Stall: QEMU syncs the dirty bitmap at the end of every pass
// (dirty-sync-count + 1); what remains right after is what the guest
// dirtied during the pass. Pre-copy has stalled when that amount did not
// shrink by k_progress for `stall_passes` passes in a row: the guest dirties
// RAM as fast as the link sends it. The first pass (every page once) never
// counts. Each stall escalates one step, then the count starts again:
// - minimal-downtime: downtime-limit starts at k_start_downtime (Proxmox's
//   100 ms) and doubles up to --max-downtime; at the deadline, abort.
// - postcopy: downtime-limit --max-downtime; at the first stall, or once
//   pre-copy has run --postcopy-after seconds if given (virsh's
//   migrate-postcopy after a delay; 0 = at the first sample), whichever
//   comes first, start post-copy, but only while every disk is in sync (its
//   mirror ready and every guest write reaching the destination), else wait
//   until they are; at the deadline (before the switch), abort.
// - suspend: downtime-limit --max-downtime with QEMU's auto-converge on;
//   each stall doubles cpu-throttle-increment (QEMU's 10 % -> 20 -> 40), and
//   when the strongest throttle still stalls, pause the guest (`stop`) so
//   the rest converges; at the deadline, abort (the caller resumes it).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "blockmig/migrate.hpp"
#include "qmp/clock.hpp"

namespace blockmig::migrate {

// One query-migrate of the source during pre-copy.
struct RamSample {
    std::uint64_t remaining = 0;    // ram.remaining, bytes
    std::uint64_t transferred = 0;  // ram.transferred, bytes
    std::uint64_t passes = 0;       // ram.dirty-sync-count
    std::uint64_t dirty_pages_rate = 0;
    int cpu_throttle = 0;  // cpu-throttle-percentage (auto-converge), 0 when off
};

enum class PolicyStep { set_downtime, throttle, pause_guest, start_postcopy, wait, abort };

struct PolicyAction {
    PolicyStep step = PolicyStep::wait;
    std::chrono::milliseconds downtime{0};  // set_downtime: the new downtime-limit
    int throttle_increment = 0;             // throttle: the new cpu-throttle-increment, %
    std::string text;                       // one line for MigrateReport.actions and progress
};

struct PolicyConfig {
    MigratePolicy policy = MigratePolicy::minimal_downtime;
    std::chrono::milliseconds max_downtime{300};
    Clock::time_point deadline = Clock::time_point::max();  // max = no timeout
    std::chrono::seconds timeout{0};                        // for messages
    int stall_passes = 2;
    // postcopy: when RAM pre-copy started (`migrate` sent) and, if set, how
    // long it runs at most before the switch (a stall switches earlier).
    Clock::time_point ram_started{};
    std::optional<std::chrono::seconds> postcopy_after;
};

// Proxmox starts its downtime limit at 100 ms too (qemu-server's
// migrate_downtime steps).
inline constexpr std::chrono::milliseconds k_start_downtime{100};
// QEMU's default cpu-throttle-increment and the most suspend raises it to.
inline constexpr int k_start_throttle_increment = 10;
inline constexpr int k_max_throttle_increment = 40;
// A pass "shrank" when it left at least 10 % less than the best one before.
inline constexpr double k_progress = 0.10;

// The downtime-limit set before `migrate`.
std::chrono::milliseconds initial_downtime(MigratePolicy policy,
                                           std::chrono::milliseconds max_downtime);

class PolicyController {
  public:
    explicit PolicyController(PolicyConfig config);

    // One decision per sample (nullopt: nothing to do). `sample` nullopt:
    // query-migrate gave nothing this time (only the deadline is checked).
    // `disks_in_sync`: every disk's mirror is ready and mirrors every write
    // (true without copied disks); only post-copy asks. Post-copy starts at
    // a stall or at the first sample from ram_started + postcopy_after on.
    // After an abort, pause or post-copy the caller acts on it; the
    // controller decides nothing more but the deadline (never after
    // post-copy: from there the guest runs on the destination).
    std::optional<PolicyAction> decide(Clock::time_point now,
                                       const std::optional<RamSample>& sample, bool disks_in_sync);

    std::chrono::milliseconds downtime() const { return m_downtime; }
    bool stalled() const { return m_stalled >= m_config.stall_passes; }

  private:
    void observe(const RamSample& s);
    std::optional<PolicyAction> escalate(const RamSample& s);
    std::string stall_reason() const;
    std::optional<std::string> postcopy_time_up(Clock::time_point now, const RamSample& s) const;
    std::optional<PolicyAction> start_postcopy(const std::string& why, bool disks_in_sync);

    PolicyConfig m_config;
    std::chrono::milliseconds m_downtime;
    int m_throttle_increment = k_start_throttle_increment;
    std::uint64_t m_passes = 0;
    std::optional<std::uint64_t> m_floor;  // least left after a pass so far
    int m_stalled = 0;                     // passes since the floor last fell
    bool m_paused = false, m_postcopy = false, m_aborted = false, m_waiting = false;
};

}  // namespace blockmig::migrate
