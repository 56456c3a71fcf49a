#include "recover.hpp"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "launch.hpp"
#include "postcopy_recovery.hpp"
#include "qmp/migration.hpp"
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

bool postcopy_requested(const jobs::Job& job) {
    return std::any_of(job.records.begin(), job.records.end(), [](const jobs::Record& r) {
        return r.effect == jobs::EffectKind::postcopy_requested &&
               (r.state == jobs::RecordState::intent || r.state == jobs::RecordState::done);
    });
}

// The volumes that hold the guest's newest disk data once the destination
// ran it: those --dst-launch made, else the destination's own for each
// copied disk, else (shared storage) the ones both QEMUs opened.
struct Volumes {
    std::string text;
    bool plural = true;
};
Volumes destination_volumes(const jobs::Job& job) {
    std::vector<std::string> made, disks;
    for (const auto& r : job.records) {
        const bool live =
            r.state == jobs::RecordState::intent || r.state == jobs::RecordState::done;
        if (r.disk == k_launched && r.effect == jobs::EffectKind::volume_created && live)
            made.push_back(r.name);
        else if (!r.disk.empty() && !r.disk.starts_with('@') &&
                 std::find(disks.begin(), disks.end(), r.disk) == disks.end())
            disks.push_back(r.disk);
    }
    if (!made.empty())
        return {fmt::format("the destination volume{} {}", made.size() == 1 ? "" : "s",
                            fmt::join(made, ", ")),
                made.size() != 1};
    if (job.migration->copy_storage == "none")
        return {"the shared volumes (both QEMUs opened the same ones)"};
    if (disks.empty()) return {"the destination QEMU's volumes"};
    return {
        fmt::format("the destination QEMU's volume{} of disk{} {}", disks.size() == 1 ? "" : "s",
                    disks.size() == 1 ? "" : "s", fmt::join(disks, ", ")),
        disks.size() != 1};
}

// The one line of a migration lost in post-copy; the same for every recover.
std::string lost_line(const jobs::Job& job) {
    const auto volumes = destination_volumes(job);
    return fmt::format(
        "the guest was lost in post-copy: its destination QEMU ({}) died after the switch, "
        "with part of the guest's RAM only there and the rest only on the paused source, so it "
        "can run nowhere; {} {} its newest disk data and {} kept (restart the guest from {}); "
        "the source QEMU ({}) is left paused for the administrator and never quit ({} stale: "
        "never resume it)",
        job.migration->destination.qmp, volumes.text, volumes.plural ? "hold" : "holds",
        volumes.plural ? "are" : "is", volumes.plural ? "them" : "it", job.guest.qmp,
        job.migration->copy_storage == "none" ? "its RAM is" : "its RAM and disks are");
}

// The destination is proven gone (postcopy_recovery.hpp: no socket, or
// the connection refused) while the source waits in post-copy: an end, not
// a wait. Journaled as phase `lost`; nothing is sent to either QEMU and no
// volume is touched (data integrity: what is left is for a person).
Result<void> end_lost(jobs::Journal& journal) {
    if (auto r = journal.update([](jobs::Job& job) { job.migration->phase = "lost"; }); !r)
        return r;
    return journal.flush();
}

// A post-copy that is paused (the link broke) or still running is followed
// to its end first, resumed as often as it breaks: settle() can then finish
// it forward. Anything else is left to settle(). `lost` is set when the
// destination QEMU is proven gone meanwhile.
Result<void> drive_postcopy(jobs::Journal& journal, qmp::Client* src, qmp::Client* dst,
                            qmp::Milliseconds timeout, Clock& clock, jobs::DiskRecovery& guest,
                            bool& lost) {
    if (!src || !postcopy_requested(journal.job())) return {};
    auto info = qmp::query_migrate(*src, timeout);
    if (!info || (info->status != "postcopy-active" && !postcopy_broken(info->status))) return {};
    RecoveryOptions options{.dst_addr = journal.job().migration->dst_addr,
                            .clock = &clock,
                            .qmp_timeout = timeout,
                            .attempt_timeout = timeout};
    options.deadline =
        clock.now() + std::max<std::chrono::nanoseconds>(std::chrono::minutes(2), 8 * timeout);
    auto r =
        finish_postcopy(journal, *src, dst, options,
                        std::max<std::chrono::milliseconds>(std::chrono::seconds(10), timeout));
    if (!r) return fail(r.error());
    lost = r->outcome == RecoveryOutcome::impossible && r->destination_gone;
    guest.actions.push_back(
        r->outcome == RecoveryOutcome::completed
            ? fmt::format("post-copy {}completed",
                          info->status == "postcopy-active"
                              ? ""
                              : fmt::format("resumed ({} attempt{}) and ", r->attempts,
                                            r->attempts == 1 ? "" : "s"))
            : fmt::format("post-copy not completed ({} resume attempt{}): {}", r->attempts,
                          r->attempts == 1 ? "" : "s", r->reason));
    return {};
}

}  // namespace

Result<jobs::RecoveryReport> recover_migration(jobs::Journal& journal, qmp::Client* src,
                                               qmp::Client* dst, qmp::Milliseconds timeout,
                                               const std::filesystem::path& state_dir,
                                               Clock& clock) {
    jobs::RecoveryReport report;
    report.job = journal.job().id;
    jobs::DiskRecovery guest;
    guest.disk = "guest";
    guest.phase = journal.job().migration ? journal.job().migration->phase : "";
    // A lost guest: the report says so and ends the job, now or again.
    auto lost_report = [&](std::string_view prefix) {
        guest.reason = lost_line(journal.job());
        guest.settled = true;
        report.disks.push_back(guest);
        report.ended = std::string(prefix) + guest.reason;
        return report;
    };
    if (journal.job().migration && journal.job().migration->lost())
        return lost_report("the job has ended: ");
    bool lost = false;
    if (auto r = drive_postcopy(journal, src, dst, timeout, clock, guest, lost); !r)
        return fail(r.error());
    if (lost) {
        if (auto r = end_lost(journal); !r) return fail(r.error());
        return lost_report("");
    }
    auto s = settle(journal, src, dst, timeout);
    if (!s) return fail(s.error());
    guest.direction = direction_of(s->verdict);
    guest.reason = s->reason;
    guest.actions.insert(guest.actions.end(), s->actions.begin(), s->actions.end());
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
