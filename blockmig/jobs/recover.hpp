// Recovery: finish or undo a job whose process died, deciding per disk from
// the journal AND what QEMU says now (query-block, query-named-block-nodes,
// query-block-jobs) — never from what the dead process believed.
//
// The rules (table in docs/state-machines.md, "Recover decision"):
// - Before block-job-complete was sent the guest is on its source: undo
//   (cancel, delete nodes, stop the daemon, delete the created volume) —
//   unless the journal saw READY and the job was meant to pivot (or
//   `blockmig pivot` asks for it) and the mirror is READY now: then pivot.
// - After "complete sent" nothing is undone until QMP says where the device
//   is: on the target -> finish forward (direct node, hop goes, old nodes
//   released); on the source with the job gone -> the completion failed,
//   undo; anything else -> wait and say so.
// - If QMP cannot answer, nothing is deleted and the report says what to run.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "journal.hpp"
#include "qmp/commands.hpp"
#include "undo.hpp"

namespace blockmig::jobs {

struct DeviceNow {
    bool present = false;
    std::string node;  // the node the device sits on (filters hidden)
    std::string file;
};

// What QEMU says now about the job's disks.
struct QemuNow {
    std::map<std::string, DeviceNow> devices;  // by JobDisk::disk
    std::set<std::string> nodes;
    std::vector<qmp::BlockJobInfo> jobs;
    // The QEMU process answering now (SO_PEERCRED), when the transport can tell.
    std::optional<int> qemu_pid;
    const qmp::BlockJobInfo* job(std::string_view id) const;
    // The journal named another QEMU process: this one was restarted since.
    bool restarted(const Job& job) const {
        return job.guest.pid > 0 && qemu_pid && *qemu_pid > 0 && *qemu_pid != job.guest.pid;
    }
};
Result<QemuNow> observe_qemu(qmp::Client& client, const Job& job, qmp::Milliseconds timeout);

// What the caller asks for: recover (the journal's own intent), `blockmig
// pivot` (finish forward where that is possible), `pivot --abort` (undo
// where that is possible).
enum class Intent { as_journaled, pivot, abort };

enum class Direction { nothing, forward, undo, wait };
std::string_view to_string(Direction direction);

struct Decision {
    Direction direction = Direction::nothing;
    std::string reason;
};

// The journal's phase of one disk, "complete_sent" when that record is live.
std::string journal_phase(const Job& job, const JobDisk& disk);

// Pure: no QMP traffic. `now` is nullptr when QMP cannot answer.
Decision decide(const Job& job, const JobDisk& disk, const QemuNow* now, Intent intent);

struct DiskRecovery {
    std::string disk;
    std::string phase;  // journal phase before recovery
    Direction direction = Direction::nothing;
    std::string reason;
    std::vector<std::string> actions;
    std::vector<std::string> left_behind;
    bool settled = false;  // nothing more to do for this disk
};

struct RecoveryReport {
    std::string job;
    std::vector<DiskRecovery> disks;
    bool journal_removed = false;
    std::string next_step;  // what to run when something is not settled
    // Set: the job has ended without reaching its goal and no recovery can
    // change that (a migration lost in post-copy); one line saying why and
    // what was kept. The journal stays, no longer needing recovery.
    std::string ended;
};

// Decides and acts for one disk of the job behind `journal` (observing
// QEMU through `env.client`; nullptr when QMP is unreachable: nothing is
// deleted). A live move uses it too once block-job-complete was sent: the
// same truth-before-undo rules as a recovery after a crash.
// Errors only for journal I/O; what could not be done is in the result.
Result<DiskRecovery> recover_disk(Journal& journal, const std::string& disk, UndoEnv& env,
                                  Intent intent);

// Recovers every disk of the job (only those in `only_disks` when given) and
// removes the journal once every disk is settled with nothing left behind.
Result<RecoveryReport> recover_job(Journal& journal, UndoEnv& env, Intent intent,
                                   const std::filesystem::path& state_dir,
                                   const std::vector<std::string>& only_disks = {});

}  // namespace blockmig::jobs
