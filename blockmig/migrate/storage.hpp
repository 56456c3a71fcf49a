// `migrate --copy-storage all`: every disk copied into the destination
// QEMU's own (empty, same-size) volumes before the RAM moves.
//
// Destination: `nbd-server-start` on --dst-addr only, one writable
// `block-export-add` per disk (per-job names, jobs/names.hpp). Source: an
// NBD client node and a mirror::Mirror per disk, driven by one
// mirror::Group (all READY, write-blocking where block-job-change exists).
// At pre-switchover finish() soft-cancels every mirror (final sync) and
// detaches the NBD client nodes; after the migration completed
// stop_destination() removes the exports and the server.
//
// Every side effect is journaled before it happens. Destination effects
// are recorded under disk k_destination and undone with the destination's
// UndoEnv; source effects under the device id with the source's.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "blockmig/migrate.hpp"
#include "blockmig/progress.hpp"
#include "jobs/effects.hpp"
#include "mirror/group.hpp"
#include "preflight.hpp"

namespace blockmig::migrate {

// The journal's disk key of destination-side effects (no qdev id has '@').
inline constexpr const char* k_destination = "@dst";

class StorageCopy {
  public:
    StorageCopy(qmp::Client& src, qmp::Client& dst, jobs::Journal& journal,
                const MigrateOptions& options, ProgressSink& progress);

    // Exports, NBD nodes, mirrors; returns once every mirror is ready to
    // finish. `cancel` aborts the wait.
    Result<void> copy(const SideFacts& src, const SideFacts& dst, const std::atomic<bool>& cancel);
    // At pre-switchover (vCPUs stopped): final sync of every mirror, then
    // the NBD client nodes are removed from the source.
    Result<void> finish();
    // Exports and NBD server removed from the destination (success or failure).
    jobs::UndoReport stop_destination();
    // Failure before the destination ran: mirrors cancelled, NBD nodes
    // removed, then stop_destination(). Returns what was left behind.
    std::vector<std::string> abort();

  private:
    Result<void> export_disks(const SideFacts& src, const SideFacts& dst);
    Result<void> start_mirrors(const SideFacts& src);
    Result<void> dst_effect(jobs::EffectKind kind, const std::string& name,
                            const std::function<Result<void>()>& act);

    qmp::Client& m_src;
    qmp::Client& m_dst;
    jobs::Journal& m_journal;
    const MigrateOptions& m_o;
    ProgressSink& m_progress;
    jobs::UndoEnv m_src_env, m_dst_env;
    jobs::Effects m_src_effects;
    qmp::SocketAddress m_server;
    bool m_in_place = false, m_can_switch = false;
    std::vector<std::unique_ptr<mirror::Mirror>> m_mirrors;
};

// The NBD server's address: --dst-addr's host, port 10809 (NBD's own).
qmp::SocketAddress nbd_server_address(const std::string& dst_addr);

}  // namespace blockmig::migrate
