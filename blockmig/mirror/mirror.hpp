// One disk's mirror: the block job that copies a guest disk to a target
// while the guest runs, shared by `move` (pivot onto the target) and
// `migrate` (soft cancel at pre-switchover: the final sync, the guest stays
// on its source node and the destination takes over the copy).
//
//   idle --attach--> attached --start--> copying --READY--> ready
//   ready --pivot--> completing --QMP: device on target--> pivoted
//   ready --soft_cancel--> synced --detach--> detached
//   any state before completing --abort--> rolled_back
//
// Every side effect goes through jobs::Effects (intent durable before the
// act, outcome after; typed undo), so a crash at any point is recoverable
// by `blockmig recover`. The caller adds a JobDisk entry named `disk` to
// the journal before attach(); the mirror keeps its fields (block job, top
// and hop node, node chain, phase) current. Waits are on QMP events
// (subscribed before the command that causes them) with a slow query as a
// watchdog; time comes from the Clock. Several mirrors are driven and
// waited on together by mirror::Group (group.hpp).
//
// Use (migrate: one per disk, finished by a soft cancel at pre-switchover):
//   jobs::Effects effects(journal, env);  // the journal has a JobDisk "disk0"
//   mirror::Group group(client);          // subscribes: build before start()
//   mirror::Mirror m(client, effects, {.disk = "disk0", .source_node = "disk0-fmt",
//                                      .names = jobs::names_for(job_id, "disk0")});
//   group.add(m);
//   m.attach(mirror::Target::nbd(qmp::SocketAddress::inet("10.0.0.6", 10809), "disk0"));
//   m.start(qmp::CopyMode::write_blocking, 0);
//   group.wait_ready(policy, &cancel);    // every mirror READY
//   ... migration reaches pre-switchover ...
//   m.soft_cancel(); m.detach();          // on failure instead: m.abort()
//
// Thread safety: one thread at a time per Mirror; different mirrors on one
// Client may be used from different threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "jobs/effects.hpp"
#include "jobs/names.hpp"
#include "nbd_hop.hpp"
#include "qmp/clock.hpp"
#include "qmp/commands.hpp"
#include "target.hpp"

namespace blockmig::mirror {

enum class MirrorState {
    idle,
    attached,
    copying,
    ready,
    completing,  // block-job-complete sent: only QMP says where the device is
    pivoted,     // the device runs on the target (hop left, direct node)
    synced,      // soft cancel done: final sync, the guest stays on its source
    detached,    // after synced: target nodes removed, target kept
    rolled_back
};
std::string_view to_string(MirrorState state);

struct MirrorSpec {
    std::string disk;         // device id: the journal's key for this disk
    std::string source_node;  // the node the mirror reads (the device's top node)
    // Every name of the device in query-blockstats (drive id, qdev id/path),
    // to count what the guest wrote after a switch to write-blocking.
    std::vector<std::string> device_names;
    jobs::DiskNames names;  // node prefix, block-job id, hop node
    qmp::MirrorSync sync = qmp::MirrorSync::full;
    // sync=top: the target's format node shares this backing node.
    std::string backing_node;
    std::chrono::milliseconds daemon_start_timeout{15'000};
    // A busy job whose offset does not move this long while a finish is
    // awaited is stuck on its target (wait_ended kills the hop then).
    std::chrono::milliseconds stall_timeout{15'000};
};

// What a pivot ended in (the error cases are in Mirror::pivot()).
struct PivotResult {
    std::vector<std::string> warnings;  // e.g. what could not be cleaned up
};

class Mirror {
  public:
    Mirror(qmp::Client& client, jobs::Effects& effects, MirrorSpec spec,
           Clock& clock = system_clock());

    // Adds the target's nodes to the guest's QEMU (for a hop: starts the
    // daemon first), each journaled. idle -> attached.
    Result<void> attach(Target target);
    // blockdev-mirror (auto-dismiss off, so a failure can be read).
    // attached -> copying. `speed` 0 = unlimited.
    Result<void> start(qmp::CopyMode mode, std::uint64_t speed);

    // Feeds one query-block-jobs sample: copying -> ready. Fails (io_error)
    // if the job ended with an error, (invalid_state) if it vanished.
    Result<void> observe(const std::vector<qmp::BlockJobInfo>& jobs, Clock::time_point now);
    Result<void> set_speed(std::uint64_t speed);
    // background -> write-blocking: in place with block-job-change when
    // `in_place` (QEMU >= 8.2; ready to finish only once actively synced),
    // else cancel and mirror again (QEMU 7.2: the copy starts over).
    Result<void> switch_to_write_blocking(bool in_place, std::uint64_t speed);
    // Waits until the job is READY with nothing left to copy (guest paused).
    Result<void> wait_in_sync(std::chrono::milliseconds timeout);

    // block-job-complete, wait (events, bounded) for the job to end, then
    // QMP decides (jobs::recover_disk): on the target the disk is finished
    // forward (direct node, hop gone) -> pivoted; on the source with the job
    // gone -> rolled back, io_error; otherwise nothing is deleted and the
    // error (invalid_state) names `blockmig recover JOB`. A refused
    // complete fails with io_error and leaves the mirror ready.
    Result<PivotResult> pivot(const std::filesystem::path& jobs_dir,
                              std::chrono::milliseconds timeout = std::chrono::seconds(120));
    // Soft cancel of a READY mirror: QEMU does a final sync and ends the job
    // without switching; the guest stays on its source and the target holds
    // a consistent copy. ready -> synced; the target stays attached.
    // Errors: io_error (the final sync failed), timeout.
    Result<void> soft_cancel(std::chrono::milliseconds timeout = std::chrono::seconds(60));
    // After soft_cancel: removes the target's nodes (closing them flushes
    // qcow2 metadata) and the hop, keeps any volume. synced -> detached.
    Result<jobs::UndoReport> detach();
    // Undo everything this disk did (cancel, nodes, daemon, the volume the
    // caller created through the same Effects), newest first, each step
    // bounded. Never after complete was sent (invalid_state).
    Result<jobs::UndoReport> abort();
    // Leaves the READY job, its nodes and hop running after this process
    // exits (`move --no-pivot`); the journal describes them.
    Result<void> leave_running();

    // Fills the journal fields this mirror owns (block job, top/hop node,
    // chain). The phase is the caller's (set_phase does both).
    void journal_fields(jobs::JobDisk& disk) const;
    Result<void> set_phase(std::string_view phase);
    // Same, in memory only: durable with the next journal write.
    void stage_fields(std::optional<std::string_view> phase);

    const MirrorSpec& spec() const { return m_spec; }
    MirrorState state() const { return m_state; }
    const std::string& job_id() const { return m_spec.names.block_job; }
    const std::string& target_url() const { return m_target.url; }
    TargetKind target_kind() const { return m_target.kind; }
    const std::string& top_node() const { return m_top_node; }
    std::uint64_t offset() const { return m_offset; }
    std::uint64_t length() const { return m_len; }
    std::uint64_t remaining() const { return m_len - std::min(m_offset, m_len); }
    // READY, and after an in-place switch also actively synced.
    bool ready_to_finish() const {
        return m_state == MirrorState::ready && (!m_switched_in_place || m_actively_synced);
    }
    // When the job last moved data (or slept on its rate limit).
    Clock::time_point last_progress() const { return m_last_progress; }
    // Write-blocking now: started so, or switched (in place or restarted).
    bool switched_to_write_blocking() const { return m_switched; }
    bool switched_in_place() const { return m_switched_in_place; }
    // QEMU's count of what the job(s) wrote, restarted jobs included.
    std::uint64_t bytes_copied() const { return m_copied_by_earlier_jobs + m_offset; }
    // What the guest wrote while the mirror was write-blocking (until the
    // mirror was finished).
    std::uint64_t guest_bytes_forwarded() const { return m_guest_bytes_forwarded; }
    bool uses_hop() const { return m_hop.has_value(); }
    // Ends the job at once when it writes to a hop (pending requests fail).
    void kill_hop() {
        if (m_hop) m_hop->kill_now();
    }
    std::string hop_log() const { return m_hop ? m_hop->log_tail() : std::string{}; }

  private:
    Result<void> attach_volume();
    Result<void> attach_hop();
    Result<void> attach_nbd();
    // Waits (events, a query every second as a watchdog) until the job has
    // ended, dismissing a concluded one; `error` receives its error.
    Result<void> wait_ended(qmp::EventSubscription& sub, std::chrono::milliseconds timeout,
                            std::optional<std::string>* error);
    std::optional<std::uint64_t> guest_written() const;
    void count_forwarded_writes();
    void forget_hop();

    qmp::Client& m_client;
    jobs::Effects& m_effects;
    MirrorSpec m_spec;
    Clock& m_clock;
    MirrorState m_state = MirrorState::idle;
    Target m_target;
    std::string m_top_node;  // the node the mirror writes to
    std::string m_hop_node;  // the nbd client node (hop, nbd kinds)
    std::optional<NbdHop> m_hop;

    std::uint64_t m_offset = 0, m_len = 0;
    Clock::time_point m_last_progress;
    bool m_switched = false, m_switched_in_place = false, m_actively_synced = false;
    std::uint64_t m_copied_by_earlier_jobs = 0;  // offsets of mirrors cancelled by a restart
    // A write-blocking mirror counts the guest's writes it forwards in its
    // offset; the guest's write counter at the switch separates them.
    std::optional<std::uint64_t> m_guest_written_at_switch;
    std::uint64_t m_guest_bytes_forwarded = 0;
};

}  // namespace blockmig::mirror
