// `migrate --copy-storage all|inc`: every disk copied into the destination
// QEMU's own (same-size) volumes before the RAM moves; with inc only the
// data of each disk's overlay (sync=top) into the destination's own overlay
// over the same base (its export serves the overlay's format node, backing
// attached, so what the mirror skips reads through to the base).
//
// Destination: `nbd-server-start` on --dst-addr only, one writable
// `block-export-add` per disk (per-job names, jobs/names.hpp). Source: an
// NBD client node and a mirror::Mirror per disk, driven by one
// mirror::Group (started write-blocking or switched once READY where
// block-job-change exists, copy_mode.hpp; without it background, and a
// mirror a few MiB short of READY counts, mirror/group.hpp).
// At pre-switchover finish() soft-cancels every mirror (final sync) and
// detaches the NBD client nodes.
//
// Every side effect is journaled before it happens. Destination effects
// are recorded under disk k_destination, source effects under the device
// id; every ending releases them from the journal (release.hpp, through
// settle.hpp), so a live failure and `blockmig recover` undo alike.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "blockmig/migrate.hpp"
#include "blockmig/progress.hpp"
#include "jobs/effects.hpp"
#include "mirror/group.hpp"
#include "preflight.hpp"
#include "qmp/features.hpp"
#include "release.hpp"

namespace blockmig::migrate {

class StorageCopy {
  public:
    StorageCopy(qmp::Client& src, qmp::Client& dst, jobs::Journal& journal,
                const MigrateOptions& options, ProgressSink& progress);

    // Exports, NBD nodes, mirrors; returns once every mirror is ready to
    // finish. `features`: the source QEMU's schema. `cancel` aborts the wait.
    Result<void> copy(const SideFacts& src, const SideFacts& dst, const qmp::Features& features,
                      const std::atomic<bool>& cancel);
    // Whether every mirror is ready and nothing is left to copy: in
    // write-blocking mode (each guest write reaches the destination before
    // it completes), or with its offset at its length right now. false when
    // a job cannot be read. --policy postcopy switches only then.
    bool in_sync();
    // At pre-switchover (vCPUs stopped): every mirror READY (one the RAM
    // started without, nearly done, catches up now), final sync of each,
    // then the NBD client nodes are removed from the source.
    Result<void> finish();

    // While the RAM moves: one query-block-jobs, each mirror's progress
    // passed to the sink (phase "sync"). Best effort: a failed query is skipped.
    void sample();
    // Bytes each mirror wrote to the destination ("disk:DEV"), QEMU's count.
    std::vector<StreamBytes> streams() const;

  private:
    Result<void> start_server();
    Result<void> export_disks(const SideFacts& src, const SideFacts& dst);
    Result<void> start_mirrors(const SideFacts& src, qmp::CopyMode mode);
    // Waits (guest paused) until `m` is READY with nothing left to copy.
    Result<void> catch_up(mirror::Mirror& m);
    Result<void> dst_effect(jobs::EffectKind kind, const std::string& name,
                            const std::function<Result<void>()>& act);

    qmp::Client& m_src;
    qmp::Client& m_dst;
    jobs::Journal& m_journal;
    const MigrateOptions& m_o;
    ProgressSink& m_progress;
    jobs::UndoEnv m_src_env;
    jobs::Effects m_src_effects;
    qmp::SocketAddress m_server;
    bool m_in_place = false, m_can_switch = false;
    std::vector<std::unique_ptr<mirror::Mirror>> m_mirrors;
    std::map<std::string, RateMeter> m_meters;       // sample(): per disk
    std::map<std::string, std::uint64_t> m_sampled;  // sample(): the last offset per disk
};

// The ports the destination's NBD server may listen on: `port` alone when
// given, else NBD's own 10809 and the next ones (libvirt and Proxmox pick
// from a range too), tried in order while the port is in use.
struct PortRange {
    std::uint16_t first = 0, last = 0;
};
PortRange nbd_ports(std::uint16_t port);
inline constexpr std::uint16_t k_nbd_port = 10809;
inline constexpr std::uint16_t k_nbd_ports = 16;

// --dst-addr's host part ("10.0.0.2:4444" -> "10.0.0.2", "[::1]" -> "::1").
std::string nbd_host(const std::string& dst_addr);

}  // namespace blockmig::migrate
