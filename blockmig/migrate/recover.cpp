#include "recover.hpp"

#include <fmt/core.h>

#include <algorithm>

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

// A post-copy that is paused (the link broke) or still running is followed
// to its end first, resumed as often as it breaks: settle() can then finish
// it forward. Anything else is left to settle().
Result<void> drive_postcopy(jobs::Journal& journal, qmp::Client* src, qmp::Client* dst,
                            qmp::Milliseconds timeout, jobs::DiskRecovery& guest) {
    if (!src || !postcopy_requested(journal.job())) return {};
    auto info = qmp::query_migrate(*src, timeout);
    if (!info || (info->status != "postcopy-active" && !postcopy_broken(info->status))) return {};
    RecoveryOptions options{.dst_addr = journal.job().migration->dst_addr,
                            .clock = &system_clock(),
                            .qmp_timeout = timeout,
                            .attempt_timeout = timeout};
    options.deadline = system_clock().now() +
                       std::max<std::chrono::nanoseconds>(std::chrono::minutes(2), 8 * timeout);
    auto r =
        finish_postcopy(journal, *src, dst, options,
                        std::max<std::chrono::milliseconds>(std::chrono::seconds(10), timeout));
    if (!r) return fail(r.error());
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
                                               const std::filesystem::path& state_dir) {
    jobs::RecoveryReport report;
    report.job = journal.job().id;
    jobs::DiskRecovery guest;
    guest.disk = "guest";
    guest.phase = journal.job().migration ? journal.job().migration->phase : "";
    if (auto r = drive_postcopy(journal, src, dst, timeout, guest); !r) return fail(r.error());
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
