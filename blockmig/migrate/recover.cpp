#include "recover.hpp"

#include "settle.hpp"

namespace blockmig::migrate {

namespace {

jobs::Direction direction_of(Verdict v) {
    switch (v) {
        case Verdict::forward:
            return jobs::Direction::forward;
        case Verdict::undo:
            return jobs::Direction::undo;
        default:
            return jobs::Direction::wait;
    }
}

}  // namespace

Result<jobs::RecoveryReport> recover_migration(jobs::Journal& journal, qmp::Client* src,
                                               qmp::Client* dst, qmp::Milliseconds timeout,
                                               const std::filesystem::path& state_dir) {
    jobs::RecoveryReport report;
    report.job = journal.job().id;
    jobs::DiskRecovery guest;
    guest.disk = "guest";
    guest.phase = journal.job().migration ? journal.job().migration->phase : "";
    auto s = settle(journal, src, dst, timeout);
    if (!s) return fail(s.error());
    guest.direction = direction_of(s->verdict);
    guest.reason = s->reason;
    guest.actions = s->actions;
    guest.left_behind = s->left_behind;
    guest.settled = s->settled && s->left_behind.empty();
    report.disks.push_back(guest);
    if (guest.settled && !journal.job().needs_recovery()) {
        if (auto r = journal.remove(); !r) return fail(r.error());
        report.journal_removed = true;
    } else {
        report.next_step = jobs::recover_command(state_dir, report.job);
    }
    return report;
}

}  // namespace blockmig::migrate
