// One disk's move: a state machine driven by run_move() (move.cpp).
//
//   planned --create_target--> target_created --attach--> attached
//     --start_mirror--> copying --(READY)--> ready
//     ready --pivot--> pivoted --switch_to_direct--> done
//     ready --finish_copy_only--> copied
//   any state before pivoted --rollback--> rolled_back (source untouched)
//
// Every side effect pushes its undo onto a stack; rollback() runs it in
// reverse, bounded in time (a stuck job is ended by killing the NBD hop).
// After block-job-complete succeeded the undo stack is dropped: the target
// is now the guest's disk and must never be deleted.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blockmig/move.hpp"
#include "jobs/claims.hpp"
#include "jobs/effects.hpp"
#include "jobs/names.hpp"
#include "nbd_hop.hpp"
#include "qmp/commands.hpp"
#include "source_disk.hpp"

namespace blockmig {

enum class DiskMoveState {
    planned,
    target_created,
    attached,
    copying,
    ready,
    completing,  // block-job-complete sent: only QMP says where the device is
    pivoted,
    done,
    copied,
    rolled_back
};
std::string_view to_string(DiskMoveState state);

// Where one disk goes, decided (and checked) before anything is created.
struct TargetPlan {
    std::unique_ptr<pools::Pool> pool;
    std::string volume;  // name in the pool; "" = the first of `candidates` that can be claimed
    // iSCSI pools: unused-looking LUNs to try in order (chosen together for
    // the whole run; a claim and the pool's own check keep them distinct).
    std::vector<std::string> candidates;
    pools::ImageFormat format = pools::ImageFormat::raw;
    bool network = false;  // NFS / iSCSI: go through the NBD hop
};

class DiskMove {
  public:
    DiskMove(qmp::Client& client, SourceDisk source, TargetPlan plan, const MoveOptions& options,
             ProgressSink& progress);

    const SourceDisk& source() const { return m_source; }
    DiskMoveState state() const { return m_state; }
    const std::string& job_id() const { return m_job_id; }
    std::string target_url() const;
    pools::Pool& target_pool() { return *m_plan.pool; }

    // Creates the target volume, attaches it to the guest's QEMU (through
    // the hop for network targets) and starts the mirror.
    Result<void> start(qmp::CopyMode mode, std::uint64_t speed);
    // Feeds one query-block-jobs sample; moves copying -> ready. Fails if
    // the job ended with an error or vanished.
    Result<void> observe(const std::vector<qmp::BlockJobInfo>& jobs);
    Result<void> set_speed(std::uint64_t speed);
    // Restarts the mirror in write-blocking mode (QEMU 7.2 has no
    // block-job-change): cancel, then mirror again onto the same target.
    Result<void> restart_write_blocking(std::uint64_t speed);
    // Switches the running mirror to write-blocking in place (QEMU >= 8.2,
    // block-job-change): nothing is copied twice. The move is then ready
    // only once QEMU reports the job actively synced.
    Result<void> change_to_write_blocking();
    // Waits until the job is ready with nothing left to copy (guest paused).
    Result<void> wait_in_sync(std::chrono::milliseconds timeout);

    // Joins the job: every side effect from now on is journaled through
    // `effects`; names come from the job id and the full device id.
    void bind(jobs::Effects& effects, const jobs::DiskNames& names,
              const std::filesystem::path& hop_dir, const std::filesystem::path& jobs_dir);
    // What the journal keeps about this disk.
    jobs::JobDisk journal_entry() const;

    // `--no-pivot`: leaves the READY job (and its NBD hop) running after
    // blockmig exits; the journal describes it for `blockmig pivot` /
    // `blockmig recover`.
    Result<void> leave_ready();

    // block-job-complete; then QMP decides (jobs::recover_disk): on the
    // target it finishes forward (direct node, hop goes), on the source with
    // the job gone it rolls back; otherwise the journal stays for recover.
    Result<void> pivot();
    Result<void> finish_copy_only();  // cancel at READY: target keeps a consistent copy
    void rollback();                  // best effort; leaves the guest on its source

    // Progress numbers of the current job.
    std::uint64_t offset() const { return m_offset; }
    std::uint64_t length() const { return m_len; }
    bool switched_to_write_blocking() const { return m_switched; }
    bool switched_in_place() const { return m_switched_in_place; }
    // READY, and after an in-place switch also actively synced.
    bool ready_to_finish() const {
        return m_state == DiskMoveState::ready && (!m_switched_in_place || m_actively_synced);
    }
    std::chrono::steady_clock::time_point last_progress() const { return m_last_progress; }
    DiskMoveReport report() const;
    pools::ImageFormat target_format() const { return m_plan.format; }
    void kill_hop() {
        if (m_hop) m_hop->kill_now();
    }
    bool uses_hop() const { return m_hop.has_value(); }
    std::string hop_log() const { return m_hop ? m_hop->log_tail() : std::string{}; }

  private:
    bool shallow() const { return m_options.shallow && m_source.has_backing; }
    Result<void> create_target();
    Result<void> create_volume();
    Result<void> phase(std::string_view name);
    Result<void> attach_target();
    Result<void> start_mirror(qmp::CopyMode mode, std::uint64_t speed);
    Result<void> wait_job_gone(std::chrono::milliseconds timeout,
                               std::optional<std::string>* error);
    std::optional<std::uint64_t> guest_written() const;
    void count_forwarded_writes();

    qmp::Client& m_client;
    SourceDisk m_source;
    TargetPlan m_plan;
    const MoveOptions& m_options;
    ProgressSink& m_progress;
    DiskMoveState m_state = DiskMoveState::planned;

    std::string m_prefix;  // node-name prefix of everything blockmig adds
    std::string m_job_id;
    pools::BlockdevChain m_chain;  // target nodes as pools/ describes them
    std::string m_top_node;        // the target format node the mirror writes to
    std::string m_hop_node;        // nbd client node (network targets)
    std::optional<NbdHop> m_hop;
    jobs::Effects* m_effects = nullptr;
    std::filesystem::path m_hop_dir, m_jobs_dir;
    std::optional<jobs::TargetClaim> m_claim;

    std::uint64_t m_offset = 0, m_len = 0;
    std::chrono::steady_clock::time_point m_last_progress = std::chrono::steady_clock::now();
    bool m_switched = false;
    bool m_switched_in_place = false;
    bool m_actively_synced = false;
    std::uint64_t m_copied_by_earlier_jobs = 0;  // offsets of mirrors cancelled by a restart
    // Guest writes a write-blocking mirror forwards count in its offset too;
    // the guest's write counter at the switch separates them from the copy.
    std::optional<std::uint64_t> m_guest_written_at_switch;
    std::uint64_t m_guest_bytes_forwarded = 0;
    std::uint64_t m_target_allocated = 0;
    std::uint64_t m_source_allocated = 0;
};

}  // namespace blockmig
