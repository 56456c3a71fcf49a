// `blockmig recover` for a `migrate` journal: connects nothing itself; asks
// both QEMUs (settle.hpp) where the guest really is and finishes forward or
// undoes, reported in the shape `blockmig recover` prints for every job.
#pragma once

#include <filesystem>

#include "jobs/journal.hpp"
#include "jobs/recover.hpp"
#include "qmp/client.hpp"

namespace blockmig::migrate {

// `src` / `dst`: nullptr when that QEMU's QMP does not answer. The journal
// is removed once the migration is settled with nothing left behind.
// Errors only for journal I/O.
Result<jobs::RecoveryReport> recover_migration(jobs::Journal& journal, qmp::Client* src,
                                               qmp::Client* dst, qmp::Milliseconds timeout,
                                               const std::filesystem::path& state_dir);

}  // namespace blockmig::migrate
