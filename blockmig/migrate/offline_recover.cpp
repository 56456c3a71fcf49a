#include "offline_recover.hpp"

#include <algorithm>

#include "jobs/effects.hpp"

namespace blockmig::migrate {

namespace {

bool all_done(const jobs::Job& job) {
    return std::all_of(job.disks.begin(), job.disks.end(),
                       [](const jobs::JobDisk& d) { return d.phase == "done"; });
}

// The guest was shut down once any disk started copying.
bool guest_shut_down(const jobs::Job& job) {
    return std::any_of(job.disks.begin(), job.disks.end(), [](const jobs::JobDisk& d) {
        return d.phase == "copying" || d.phase == "done";
    });
}

}  // namespace

Result<jobs::RecoveryReport> recover_offline(jobs::Journal& journal, jobs::UndoEnv& env,
                                             const std::filesystem::path& state_dir) {
    jobs::RecoveryReport report;
    report.job = journal.job().id;
    const bool forward = all_done(journal.job());
    const bool off = guest_shut_down(journal.job());
    // --src-disk: no QEMU was ever involved.
    const bool no_qemu = !journal.job().guest.files.empty();
    jobs::Effects effects(journal, env);
    for (const auto disks = journal.job().disks; const auto& d : disks) {
        jobs::DiskRecovery r;
        r.disk = d.disk;
        r.phase = d.phase;
        r.direction = forward ? jobs::Direction::forward : jobs::Direction::undo;
        r.reason = forward   ? "every copy was verified: the copies stay"
                   : no_qemu ? "the offline copy did not finish: the copy is deleted, the source "
                               "files are untouched; the guest was not running"
                   : off     ? "the offline copy did not finish: the copy is deleted, the source "
                               "files are untouched; the guest was shut down (start it again on "
                               "the source)"
                             : "the offline copy never started: the copy is deleted, the guest "
                               "was not shut down by blockmig";
        if (!forward) {
            auto undo = effects.rollback(d.disk);
            if (!undo) return fail(undo.error());
            r.actions = undo->done;
            r.left_behind = undo->left_behind;
        }
        r.settled = r.left_behind.empty();
        report.disks.push_back(std::move(r));
    }
    const bool settled = std::all_of(report.disks.begin(), report.disks.end(),
                                     [](const jobs::DiskRecovery& r) { return r.settled; });
    if (settled) {
        if (auto w = journal.remove(); !w) return fail(w.error());
        report.journal_removed = true;
    } else {
        report.next_step = jobs::recover_command(state_dir, report.job);
    }
    return report;
}

}  // namespace blockmig::migrate
