// `move`: storage-only live move of a running guest's disks between pools.
//
// For each disk: create the target volume, attach it to the guest's QEMU,
// `blockdev-mirror` (sync=full), wait for READY while reporting progress,
// then pivot (`block-job-complete`) — or, with copy_only, cancel at READY so
// the target is a consistent copy and the guest stays on its source.
// Network targets (NFS, iSCSI) go through a blockmig-owned
// qemu-storage-daemon hop so that a dead server ends the job in bounded time;
// after the pivot the guest is re-pointed at a direct node and the hop
// stops. States and transitions: docs/state-machines.md.
//
// Failure before the pivot: the job is cancelled, every node blockmig added
// is removed, the volume it created is deleted, the guest keeps running on
// its source, and the Error names the step. Failure after the pivot: the
// Error says exactly what state the guest is in.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "blockmig/copy_mode.hpp"
#include "blockmig/progress.hpp"
#include "pools/address.hpp"
#include "pools/pool.hpp"
#include "qmp/client.hpp"
#include "qmp/clock.hpp"

namespace blockmig {

struct DiskTarget {
    std::string disk;    // guest device id (qdev id) or block node name
    std::string target;  // pool spec or exact volume spec; empty = the default target
};

// How a move reaches its pools: a seam (docs/ARCHITECTURE.md, "Seams") so
// unit tests drive a whole run_move() on MemPool or the fault pool. An
// empty function means the real one: pools::open_pool / pools::resolve_volume
// with MoveOptions::pools. A copy of resolve_volume goes to the undo thread
// that deletes a created volume, which run_move() abandons when the pool
// does not answer in time: capture by value what it needs.
struct PoolOpener {
    // A POOL spec (`--to POOL`) -> the pool, opened (connected).
    std::function<Result<std::unique_ptr<pools::Pool>>(std::string_view spec)> open_pool;
    // A VOLUME spec or URL (`--to VOLUME`, the source's location, a created
    // target's URL when it is undone) -> its pool, opened, and its name there.
    std::function<Result<pools::VolumeRef>(std::string_view spec)> resolve_volume;
};

struct MoveOptions {
    std::vector<DiskTarget> disks;
    bool all_disks = false;
    std::string default_target;                // --to POOL|VOLUME
    std::optional<pools::ImageFormat> format;  // default: the source's format
    std::uint64_t bandwidth = 0;               // bytes/s for all disks together; 0 = unlimited
    CopyModePolicy copy_mode = CopyModePolicy::auto_switch;
    bool shallow = false;  // copy only the top image; the target shares the backing chain
    bool copy_only = false;
    bool no_pivot = false;  // leave the jobs READY for `blockmig pivot`
    bool verify = false;
    bool delete_source = false;
    bool unsafe = false;                     // allow cache modes other than none on network targets
    std::chrono::seconds timeout{0};         // whole move; 0 = none
    std::chrono::seconds stall_timeout{15};  // no progress at all for this long = failure
    // Remaining bytes not shrinking for this long makes auto switch to write-blocking.
    std::chrono::seconds converge_window{6};
    std::filesystem::path state_dir;  // for hop sockets/logs; default /run/blockmig
    // Where qemu-storage-daemon and qemu-img are (`--qemu-dir`); empty = PATH.
    std::filesystem::path qemu_dir;
    pools::PoolsConfig pools;
    std::string qmp_address;                        // as given: the guest's identity in the journal
    std::filesystem::path jobs_dir;                 // journals; default jobs::default_state_dir()
    bool force_unmanaged = false;                   // move a libvirt-managed guest anyway
    std::chrono::milliseconds qmp_timeout{30'000};  // deadline of each QMP call and undo step
    // --verify: the guest stays paused at most this long; then it is resumed
    // and the move fails (rolled back).
    std::chrono::seconds verify_timeout{120};
    // Seams (unit tests): pools, and the time that the copy's --timeout,
    // the stall and convergence watchdogs and the undo steps' polls read.
    // The --verify pause and QMP call deadlines stay on real time: they
    // bound real processes and sockets.
    PoolOpener pool_opener;
    Clock* clock = &system_clock();
    // Longest quiet wait for a job event between two progress samples (real time).
    std::chrono::milliseconds sample_interval{200};
};

struct DiskMoveReport {
    std::string disk;
    std::string source;  // URL / path
    std::string target;  // URL / path
    std::string target_node;
    std::uint64_t source_allocated = 0;
    std::uint64_t target_allocated = 0;
    bool pivoted = false;
    bool verified = false;
    bool switched_to_write_blocking = false;
    bool switched_in_place = false;  // by block-job-change, not by a restarted mirror
    // Bytes the mirror job(s) wrote to the target, as QEMU counts them (job
    // offset): the copy, plus guest writes a write-blocking mirror forwarded;
    // a restarted mirror counts its lost first pass too.
    std::uint64_t bytes_copied = 0;
    // What the guest wrote while the mirror was write-blocking (its
    // query-blockstats wr_bytes from the switch to the end).
    std::uint64_t guest_bytes_forwarded = 0;
};

struct MoveReport {
    std::vector<DiskMoveReport> disks;
    std::chrono::milliseconds duration{0};      // from the first mirror's start to the end
    std::chrono::milliseconds guest_paused{0};  // the guest was paused (--verify) this long
};

struct PivotOptions {
    std::vector<std::string> disks;   // empty: every move left READY for this guest
    bool abort = false;               // cancel instead: guest stays on its source, target deleted
    std::filesystem::path state_dir;  // default /run/blockmig
    pools::PoolsConfig pools;
    std::string qmp_address;         // the guest, as `move` was given it
    std::filesystem::path jobs_dir;  // journals; default jobs::default_state_dir()
    std::chrono::milliseconds qmp_timeout{30'000};
    // Seams, as in MoveOptions: how `--abort` reaches the target's pool, and time.
    PoolOpener pool_opener;
    Clock* clock = &system_clock();
};

// Finishes (or aborts) moves that `move --no-pivot` left READY on the guest
// behind `client`, from the state saved in <state_dir>/jobs/.
Result<MoveReport> run_pivot(qmp::Client& client, const PivotOptions& options,
                             ProgressSink& progress);

// Runs a move on the guest behind `client`. `cancel` (e.g. set by SIGINT)
// aborts with rollback if it becomes true before the pivot. Blocks until done.
Result<MoveReport> run_move(qmp::Client& client, const MoveOptions& options, ProgressSink& progress,
                            const std::atomic<bool>& cancel);

}  // namespace blockmig
