// One disk's move: a state machine driven by run_move() (move.cpp).
//
//   planned --create_target--> target_created --attach--> attached
//     --start_mirror--> copying --(READY)--> ready
//     ready --pivot--> pivoted --switch_to_direct--> done
//     ready --finish_copy_only--> copied
//   any state before pivoted --rollback--> rolled_back (source untouched)
//
// The move owns what is particular to it (choosing and creating the target
// volume under a claim, the shallow overlay header, the report); from
// `attached` on it is one disk's mirror (blockmig/mirror/), whose side
// effects are journaled with typed undo steps (blockmig/jobs/). After
// block-job-complete only QMP decides: the target may be the guest's disk.
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
#include "mirror/mirror.hpp"
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
    std::uint64_t volume_size = 0;  // the created volume's virtual size (a LUN may be larger)
    // iSCSI pools: unused-looking LUNs to try in order (chosen together for
    // the whole run; a claim and the pool's own check keep them distinct).
    std::vector<std::string> candidates;
    pools::ImageFormat format = pools::ImageFormat::raw;
    bool network = false;  // NFS / iSCSI: go through the NBD hop
};

class DiskMove {
  public:
    DiskMove(qmp::Client& client, SourceDisk source, TargetPlan plan, const MoveOptions& options,
             ProgressSink& progress, Clock& clock = system_clock());

    const SourceDisk& source() const { return m_source; }
    DiskMoveState state() const;
    const std::string& job_id() const { return m_names.block_job; }
    std::string target_url() const;
    pools::Pool& target_pool() { return *m_plan.pool; }
    // The disk's mirror (exists once bound).
    mirror::Mirror& mirror() { return *m_mirror; }

    // Creates the target volume, attaches it to the guest's QEMU (through
    // the hop for network targets) and starts the mirror.
    Result<void> start(qmp::CopyMode mode, std::uint64_t speed);
    // Waits until the job is ready with nothing left to copy (guest paused).
    Result<void> wait_in_sync(std::chrono::milliseconds timeout) {
        return m_mirror->wait_in_sync(timeout);
    }

    // Joins the job: every side effect from now on is journaled through
    // `effects`; names come from the job id and the full device id.
    void bind(jobs::Effects& effects, const jobs::DiskNames& names,
              const std::filesystem::path& hop_dir, const std::filesystem::path& jobs_dir);
    // What the journal keeps about this disk.
    jobs::JobDisk journal_entry() const;

    // `--no-pivot`: leaves the READY job (and its NBD hop) running after
    // blockmig exits; the journal describes it for `blockmig pivot` /
    // `blockmig recover`.
    Result<void> leave_ready() { return m_mirror->leave_running(); }

    // block-job-complete; then QMP decides (jobs::recover_disk): on the
    // target it finishes forward (direct node, hop goes), on the source with
    // the job gone it rolls back; otherwise the journal stays for recover.
    Result<void> pivot();
    Result<void> finish_copy_only();  // cancel at READY: target keeps a consistent copy
    void rollback();                  // best effort; leaves the guest on its source

    DiskMoveReport report() const;
    pools::ImageFormat target_format() const { return m_plan.format; }

  private:
    bool shallow() const { return m_options.shallow && m_source.has_backing; }
    Result<void> create_target();
    Result<void> create_volume();
    void stage_phase(std::string_view name);
    Result<void> attach_target();
    void warn(const std::vector<std::string>& messages);

    qmp::Client& m_client;
    SourceDisk m_source;
    TargetPlan m_plan;
    const MoveOptions& m_options;
    ProgressSink& m_progress;
    Clock& m_clock;
    DiskMoveState m_state = DiskMoveState::planned;  // until the mirror is attached

    jobs::DiskNames m_names;
    std::optional<mirror::Mirror> m_mirror;
    jobs::Effects* m_effects = nullptr;
    std::filesystem::path m_hop_dir, m_jobs_dir;
    std::optional<jobs::TargetClaim> m_claim;
    std::uint64_t m_target_allocated = 0;
    std::uint64_t m_source_allocated = 0;
};

}  // namespace blockmig
