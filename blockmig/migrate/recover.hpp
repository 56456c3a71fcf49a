// `blockmig recover` for a `migrate` journal: connects nothing itself; asks
// both QEMUs (settle.hpp) where the guest really is and finishes forward or
// undoes, reported in the shape `blockmig recover` prints for every job.
#pragma once

#include <filesystem>

#include "jobs/journal.hpp"
#include "jobs/recover.hpp"
#include "qmp/client.hpp"
#include "qmp/clock.hpp"

namespace blockmig::migrate {

// `src` / `dst`: nullptr when that QEMU's QMP does not answer. The journal
// is removed once the migration is settled with nothing left behind.
//
// A post-copy whose destination QEMU is proven gone (its monitor's socket
// missing or the connection refused, as release.hpp proves it) while the
// source waits paused has ended: the guest is lost. The journal records
// phase `lost` (it no longer needs recovery) and `ended` says so in one
// line, naming the volumes that hold the guest's newest data; nothing is
// sent to either QEMU, no volume is touched, the source stays paused. A
// destination that merely does not answer (a timeout) proves nothing: wait.
// A recover of a lost job changes nothing and says it has ended.
// `clock`: the post-copy recovery's retries and deadline.
// Errors only for journal I/O.
Result<jobs::RecoveryReport> recover_migration(jobs::Journal& journal, qmp::Client* src,
                                               qmp::Client* dst, qmp::Milliseconds timeout,
                                               const std::filesystem::path& state_dir,
                                               Clock& clock = system_clock());

}  // namespace blockmig::migrate
