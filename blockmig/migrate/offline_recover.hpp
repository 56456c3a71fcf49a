// `blockmig recover` for an `offline` journal (migrate --offline whose
// process died). No QEMU is asked: the guest's was shut down or still runs
// on its own files, which the job never writes (or, --src-disk, there was
// none). Every disk "done" (all
// copies verified): forward, the copies stay. Otherwise undo: every volume
// the job created is deleted (a half-written or unverified copy is never
// left looking like a good one).
#pragma once

#include <filesystem>

#include "jobs/journal.hpp"
#include "jobs/recover.hpp"
#include "jobs/undo.hpp"

namespace blockmig::migrate {

// Errors only for journal I/O; what could not be deleted is left_behind and
// the journal stays (next_step names the command to run again).
Result<jobs::RecoveryReport> recover_offline(jobs::Journal& journal, jobs::UndoEnv& env,
                                             const std::filesystem::path& state_dir);

}  // namespace blockmig::migrate
