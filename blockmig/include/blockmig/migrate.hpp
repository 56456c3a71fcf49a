// `migrate`: live migration of a running guest to another QEMU (another
// host), driven over both QEMUs' QMP monitors.
//
// Shared storage (copy_storage none: both QEMUs open the same volumes,
// proven before anything is touched) or copied disks (all: every disk
// mirrored over NBD into the destination's own volume of the same size
// before the RAM moves), with a destination QEMU the user started with the
// same devices and `-incoming defer`. Sequence:
// capabilities (events, pause-before-switchover, late-block-activate where
// QEMU has it) and parameters (max-bandwidth always explicit, downtime-limit)
// on both sides, migrate-incoming on the destination, migrate on the source,
// MIGRATION events until pre-switchover, migrate-continue, completion, cont
// on the destination, quit on the source. States and the recover decision:
// docs/state-machines.md, "Migration".
//
// Failure before the switchover (timeout, destination gone, link down,
// Ctrl-C): the migration is cancelled, the guest keeps running on the
// source (resumed if it was paused), the source's migration settings are
// restored, and the Error names the phase and the cause. After the
// switchover nothing is rolled back: only what both QEMUs say decides, and
// the journal stays for `blockmig recover` when they cannot tell. With
// --policy postcopy the switchover is post-copy's point of no return: the
// source is never resumed after it (docs/state-machines.md).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "blockmig/copy_mode.hpp"
#include "blockmig/migrate_report.hpp"
#include "blockmig/progress.hpp"
#include "pools/address.hpp"
#include "qmp/client.hpp"
#include "qmp/clock.hpp"

namespace blockmig {

// inc: each disk is a qcow2 overlay over a base image both hosts open; only
// the overlay's data is copied (mirror sync=top) into the destination's own
// fresh overlay over the same base (migrate/overlay.cpp).
enum class CopyStorage { none, all, inc };

// How the RAM moves (migrate/tuning.hpp sets QEMU up, migrate/policy.hpp
// decides while it moves; pre-copy "stalls" when the RAM left after each
// pass stops shrinking):
// minimal_downtime: pre-copy only, the guest never slowed; downtime-limit
//   starts at 100 ms and doubles up to max_downtime at each stall; at the
//   timeout the migration is cancelled, the guest stays on the source;
// postcopy: pre-copy until it stalls, or for postcopy_after seconds if set
//   (until every disk is in sync, if later), then post-copy: the guest runs on the destination
//   while the rest of its RAM follows. From that switch on the guest's RAM is split across both
//   hosts: nothing is rolled back;
// suspend: auto-converge throttles the vCPUs, its step doubled at each
//   stall; as last resort the guest is paused (`stop`) so the rest
//   converges, resumed on the destination (or on the source on failure).
enum class MigratePolicy { minimal_downtime, postcopy, suspend };
enum class MigrateCompress { none, zstd, xbzrle };

// `--dst-pool POOL --dst-launch -- CMD...` (migrate/launch.hpp): blockmig
// creates the destination's volumes in `pool` and starts its QEMU with
// `argv` ({qmp} and {vol:DEV} replaced).
struct DestinationLaunch {
    std::string pool;  // POOL spec (pools/address.hpp)
    pools::PoolsConfig config;
    std::vector<std::string> argv;
    // --dst-qmp: empty = a socket blockmig names on this host; ssh://HOST/PATH =
    // the QEMU runs on HOST (argv is `ssh ... HOST CMD...`), {qmp} = PATH there.
    std::string qmp;
    std::chrono::milliseconds start_timeout{60'000};  // until its QMP answers
    // --dst-vol DEV=VOLUME: the volume disk DEV gets (dir / NFS: the file
    // created instead of <job>-<dev>.raw; iSCSI: the LUN, "lun<N>" or N).
    std::map<std::string, std::string> volumes;
};

struct MigrateOptions {
    std::string src_qmp;  // addresses as given: the guests' identities in the journal
    std::string dst_qmp;
    std::string dst_addr;  // HOST[:PORT] the destination listens on; PORT 0/absent = QEMU picks
    CopyStorage copy_storage = CopyStorage::none;
    // copy_storage all/inc: the destination's NBD server port; 0 = the first
    // free one of 10809-10824 (the one used is journaled).
    std::uint16_t nbd_port = 0;
    // Set: blockmig makes the destination (dst_qmp is then its {qmp} socket).
    std::optional<DestinationLaunch> launch;
    std::uint64_t bandwidth = 0;  // bytes/s; 0 = unlimited (still set explicitly)
    // The disk mirrors (copy_storage all/inc): auto = write-blocking from the
    // start where QEMU can also switch a mirror in place (block-job-change,
    // QEMU >= 8.2), else background (migrate/copy_mode.hpp).
    CopyModePolicy copy_mode = CopyModePolicy::auto_switch;
    std::chrono::milliseconds max_downtime{300};
    std::chrono::seconds timeout{0};  // whole migration; 0 = none
    // Instead of `timeout`: seconds per GiB of RAM plus the disks to copy (0 = none).
    double timeout_per_gib = 0;
    MigratePolicy policy = MigratePolicy::minimal_downtime;
    // postcopy (--postcopy-after): at most this many seconds of RAM pre-copy
    // before the switch to post-copy (a stall switches earlier); 0 = as soon
    // as every disk is in sync; unset = at the first stall only.
    std::optional<std::chrono::seconds> postcopy_after;
    MigrateCompress compress = MigrateCompress::none;
    int parallel = 0;          // multifd channels; 0 = one migration stream
    bool keep_source = false;  // leave the paused source QEMU instead of quitting it
    bool unsafe = false;       // allow shared disks whose host cache is not bypassed
    // Set: NBD and the migration stream over TLS with the tls-creds-x509
    // files in this directory (the same absolute path on both hosts;
    // blockmig/migrate/tls.hpp). Empty: plain TCP on --dst-addr only.
    std::filesystem::path tls_dir;
    std::filesystem::path jobs_dir;  // journals; default jobs::default_state_dir()
    // Set (the CLI passes /proc/self/exe unless --no-guardian): once the
    // journal exists, before the first side effect, this program is started
    // as the job's guardian (`EXE _guard ...`, blockmig/jobs/guardian.hpp),
    // which recovers the job if this process dies. Empty: no guardian.
    std::filesystem::path guardian;
    std::chrono::milliseconds qmp_timeout{30'000};  // deadline of each QMP call
    // How long the switchover (migrate-continue -> completed on both sides) may take.
    std::chrono::milliseconds switchover_timeout{60'000};
    // Post-copy: no page moved for this long means the link broke (QEMU
    // itself notices a silent link only when TCP gives up): the stream is
    // paused on both sides and recovered (migrate/postcopy_recovery.hpp).
    std::chrono::milliseconds postcopy_stall{10'000};
    // How long a post-copy recovery retries without --timeout (with it: until
    // the job's deadline, and at least 30 s).
    std::chrono::milliseconds postcopy_recover_timeout{300'000};
    std::chrono::milliseconds postcopy_retry_interval{2'000};  // between two attempts
    // How often RAM progress is read (query-migrate) between MIGRATION events.
    std::chrono::milliseconds progress_interval{1'000};
    Clock* clock = &system_clock();  // the --timeout deadline
};

struct MigrateReport {
    std::string job;
    std::chrono::milliseconds duration{0};  // migrate sent -> destination running
    std::int64_t downtime_ms = -1;          // QEMU's own count (query-migrate), -1 unknown
    std::uint64_t ram_transferred = 0;
    std::uint64_t iterations = 0;      // RAM passes (dirty-sync-count)
    std::uint64_t bandwidth = 0;       // the max-bandwidth that was set, bytes/s
    std::chrono::seconds timeout{0};   // the deadline applied (--timeout or per GiB), 0 = none
    bool postcopy = false;             // the migration switched to post-copy
    std::int64_t multifd_bytes = -1;   // sent over multifd channels (QEMU's count), -1 unknown
    std::vector<std::string> actions;  // each policy action, in order
    bool source_quit = false;
    // The first change to either QEMU -> the guest runs on the destination
    // (includes the disk copy, which `duration` does not).
    std::chrono::milliseconds total{0};
    std::vector<StreamBytes> streams;  // bytes per stream (migrate_report.hpp)
    MigrateTimeline timeline;          // what the live view showed, over time
    // Set when the run failed (the report then ends at the failure, `total`
    // after the start, and the fields QEMU reports at completion stay unknown).
    std::optional<MigrateFailure> failure;
};

// Migrates the guest behind `src` into the QEMU behind `dst`. `cancel`
// (SIGINT) aborts with rollback until the switchover. Blocks until done.
// `failed_report`: when the run fails after its job began (not a pre-flight
// refusal, which touched nothing), set to the report up to the failure, its
// `failure` naming the phase, the cause and the Error's line (--report).
Result<MigrateReport> run_migrate(qmp::Client& src, qmp::Client& dst, const MigrateOptions& options,
                                  ProgressSink& progress, const std::atomic<bool>& cancel,
                                  MigrateReport* failed_report = nullptr);

// The same with a destination blockmig makes itself (options.launch set):
// volumes created, the QEMU started and connected; all undone on failure.
// Only --copy-storage all (launch_refusal says why not the others).
Result<MigrateReport> run_migrate_launching(qmp::Client& src, const MigrateOptions& options,
                                            ProgressSink& progress, const std::atomic<bool>& cancel,
                                            MigrateReport* failed_report = nullptr);

Error launch_refusal(CopyStorage copy_storage);

}  // namespace blockmig
