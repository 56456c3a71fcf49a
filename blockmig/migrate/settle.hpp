// Ending a migration from the truth: what BOTH QEMUs say now, never what a
// (possibly dead) blockmig process believed. A live run that fails and
// `blockmig recover` use the same code, so a failure and a crash end alike.
//
// Decision (docs/state-machines.md, "Migration", recover table):
// - post-copy first: while either side says postcopy-*, neither QEMU is
//   stopped (wait for the end); once migrate-start-postcopy and the
//   switchover were sent and the migration failed, the source is never
//   resumed unless the destination still waits for the device state
//   (inmigrate): the destination holds the only live copy -> wait (a
//   running destination is paused rather than lost).
// - the destination runs the guest, or has the whole migration (completed),
//   or the source says completed -> forward: `cont` the destination, `quit`
//   the source (unless keep_source). The source is never resumed then.
// - the source's migration is still going (setup, active, pre-switchover)
//   -> migrate_cancel, wait for it to end, decide again;
//   device / cancelling (a transient) -> wait for it to end, decide again.
// - the source says failed / cancelled / none -> undo: resume the source if
//   it is paused, restore its migration settings. After the switchover was
//   sent this needs the destination to answer that it does not run the
//   guest; otherwise wait.
// - the source does not answer and the destination does not run the guest
//   -> wait (nothing is done; the journal stays).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "jobs/journal.hpp"
#include "qmp/client.hpp"

namespace blockmig::migrate {

struct SideNow {
    bool reachable = false;
    std::string run_state;  // query-status
    std::string migration;  // query-migrate status
    std::string error;      // query-migrate error-desc, or why unreachable
};

struct Observation {
    SideNow src, dst;
};

Observation observe(qmp::Client* src, qmp::Client* dst, qmp::Milliseconds timeout);

enum class Verdict { forward, undo, cancel_first, again, wait };
std::string_view to_string(Verdict verdict);

struct Decision {
    Verdict verdict = Verdict::wait;
    std::string reason;
    // wait after a failed post-copy with the destination running: `stop` it
    // (a guest that may lack pages is paused rather than lost).
    bool pause_destination = false;
};

// Pure. `job` supplies whether the switchover was sent.
Decision decide(const jobs::Job& job, const Observation& now);

struct SettleResult {
    Verdict verdict = Verdict::wait;  // forward, undo or wait
    std::string reason;
    std::vector<std::string> actions;
    std::vector<std::string> left_behind;
    bool settled = false;  // the journal's migration phase is done / rolled_back
};

// Decides and acts until the migration is settled or only waiting is left
// (bounded by `timeout` per QMP call and per wait). `src` / `dst` are
// nullptr when unreachable. Errors only for journal I/O.
Result<SettleResult> settle(jobs::Journal& journal, qmp::Client* src, qmp::Client* dst,
                            qmp::Milliseconds timeout);

}  // namespace blockmig::migrate
