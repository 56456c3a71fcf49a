#include "settle.hpp"

#include <fmt/core.h>

#include <algorithm>

#include "postcopy_recovery.hpp"
#include "qmp/commands.hpp"
#include "qmp/migration.hpp"
#include "release.hpp"

namespace blockmig::migrate {

namespace {

using jobs::EffectKind;
using jobs::RecordState;

SideNow observe_side(qmp::Client* client, qmp::Milliseconds timeout) {
    SideNow s;
    if (!client) {
        s.error = "not connected";
        return s;
    }
    auto status = qmp::query_status(*client, timeout);
    if (!status) {
        s.error = status.error().message;
        return s;
    }
    auto migration = qmp::query_migrate(*client, timeout);
    if (!migration) {
        s.error = migration.error().message;
        return s;
    }
    s.reachable = true;
    s.run_state = status->status;
    s.migration = migration->status;
    s.error = migration->error_desc.value_or("");
    return s;
}

bool live(const jobs::Record& r) {
    return r.state == RecordState::intent || r.state == RecordState::done;
}

bool switchover_sent(const jobs::Job& job) {
    return std::any_of(job.records.begin(), job.records.end(), [](const jobs::Record& r) {
        return r.effect == EffectKind::switchover_sent && live(r);
    });
}

bool is_one_of(std::string_view s, std::initializer_list<std::string_view> set) {
    return std::find(set.begin(), set.end(), s) != set.end();
}

bool in_postcopy(std::string_view status) { return status.starts_with("postcopy"); }

// migrate-start-postcopy may have been sent and the switchover too: from
// then on the destination may run the guest while part of its RAM is only
// on the source (the point of no return of post-copy).
bool postcopy_past_switch(const jobs::Job& job) {
    const bool requested =
        std::any_of(job.records.begin(), job.records.end(), [](const jobs::Record& r) {
            return r.effect == EffectKind::postcopy_requested && live(r);
        });
    return requested && switchover_sent(job);
}

constexpr std::string_view k_split =
    "post-copy had started: the guest ran on the destination, which holds the only live copy "
    "of it (the source's RAM is stale, resuming it would run the guest twice against the same "
    "disks); the source stays paused and is never resumed";

// Post-copy, decided before anything else may forward or undo: neither
// QEMU may be stopped while pages still move, the source never resumed once
// the destination may have run. nullopt: not a post-copy situation.
std::optional<Decision> decide_postcopy(const jobs::Job& job, const Observation& now) {
    const SideNow& s = now.src;
    const SideNow& d = now.dst;
    // The link broke: QEMU keeps both halves and waits for a recovery
    // (postcopy_recovery.hpp), which nothing here may pre-empt.
    if (s.reachable && postcopy_broken(s.migration))
        return Decision{
            Verdict::wait,
            fmt::format(
                "post-copy is paused (source {}, destination {}): the link between them "
                "broke, the guest waits on the destination for RAM only the source has; "
                "neither QEMU may be stopped; `blockmig recover` resumes it (migrate-recover "
                "on the destination, migrate resume=true on the source)",
                s.migration, d.reachable ? d.migration : d.error)};
    if (s.reachable && in_postcopy(s.migration))
        return Decision{Verdict::again,
                        fmt::format("post-copy is in progress (source {}, destination {}): the "
                                    "guest runs on the destination and part of its RAM is still "
                                    "only on the source, so neither QEMU may be stopped",
                                    s.migration, d.reachable ? d.migration : d.error)};
    if (d.reachable && in_postcopy(d.migration))
        return Decision{
            Verdict::wait,
            fmt::format("post-copy is {} on the destination and the source {}: part "
                        "of the guest's RAM may still be only on the source; neither "
                        "QEMU may be stopped (the source can resume it with `migrate` "
                        "resume=true after `migrate-recover` on the destination)",
                        d.migration, s.reachable ? "says " + s.migration : "does not answer")};
    if (!postcopy_past_switch(job)) return std::nullopt;
    if (s.reachable && !is_one_of(s.migration, {"failed", "cancelled", "none"}))
        return std::nullopt;  // still pre-switchover or completing: the usual rules
    // The destination never ran the guest: its incoming side is still
    // waiting for the device state, so the source's copy is whole.
    if (d.reachable && d.run_state == "inmigrate" && s.reachable) return std::nullopt;
    Decision out{Verdict::wait, fmt::format("{} (source migration {}, destination {})", k_split,
                                            s.reachable ? s.migration : "unknown: " + s.error,
                                            d.reachable ? d.run_state + ", migration " + d.migration
                                                        : "does not answer: " + d.error)};
    // A destination that runs after a failed post-copy may lack pages: it is
    // paused rather than lost, for an operator (or a post-copy recovery) to judge.
    out.pause_destination = d.reachable && d.run_state == "running";
    return out;
}

// Marks every live record of `effect` with `state`.
Result<void> mark(jobs::Journal& journal, EffectKind effect, RecordState state,
                  const std::string& note) {
    std::vector<std::uint64_t> seqs;
    for (const auto& r : journal.job().records)
        if (r.effect == effect && live(r)) seqs.push_back(r.seq);
    for (auto seq : seqs)
        if (auto w = journal.outcome(seq, state, note); !w) return w;
    return {};
}

Result<void> set_phase(jobs::Journal& journal, const std::string& phase) {
    return journal.update([&](jobs::Job& job) {
        if (job.migration) job.migration->phase = phase;
    });
}

}  // namespace

Observation observe(qmp::Client* src, qmp::Client* dst, qmp::Milliseconds timeout) {
    return {observe_side(src, timeout), observe_side(dst, timeout)};
}

std::string_view to_string(Verdict verdict) {
    switch (verdict) {
        case Verdict::forward:
            return "forward";
        case Verdict::undo:
            return "undo";
        case Verdict::cancel_first:
            return "cancel";
        case Verdict::again:
            return "again";
        case Verdict::wait:
            return "wait";
    }
    return "wait";
}

Decision decide(const jobs::Job& job, const Observation& now) {
    const SideNow& s = now.src;
    const SideNow& d = now.dst;
    if (d.reachable && d.migration == "completed")
        return {Verdict::forward,
                fmt::format("the destination has the guest (it is {}, migration completed)",
                            d.run_state)};
    if (auto p = decide_postcopy(job, now)) return *p;
    if (d.reachable && d.run_state == "running")
        return {Verdict::forward, fmt::format("the destination has the guest (it is {}, migration "
                                              "{})",
                                              d.run_state, d.migration)};
    if (!s.reachable)
        return {Verdict::wait,
                fmt::format("the source QEMU does not answer ({}) and the destination does not "
                            "run the guest",
                            s.error)};
    if (s.migration == "completed") return {Verdict::forward, "the source completed the migration"};
    if (is_one_of(s.migration, {"setup", "active", "pre-switchover", "wait-unplug"}))
        return {Verdict::cancel_first, fmt::format("the migration is still {}", s.migration)};
    if (is_one_of(s.migration, {"failed", "cancelled", "none"})) {
        if (switchover_sent(job) && !d.reachable)
            return {Verdict::wait,
                    fmt::format("the migration {} after the switchover was sent and the "
                                "destination does not answer ({}): it cannot be proven that the "
                                "destination did not start the guest",
                                s.migration, d.error)};
        return {Verdict::undo, fmt::format("the migration {}{}",
                                           s.migration == "none" ? "never started" : s.migration,
                                           s.error.empty() ? "" : ": " + s.error)};
    }
    // device, cancelling, postcopy-*, colo: passes on its own.
    return {Verdict::again, fmt::format("the migration is {}", s.migration)};
}

namespace {

class Settler {
  public:
    Settler(jobs::Journal& journal, qmp::Client* src, qmp::Client* dst, qmp::Milliseconds timeout)
        : m_journal(journal), m_src(src), m_dst(dst), m_timeout(timeout) {}

    Result<SettleResult> run() {
        // A bound on the rounds: cancel -> ended -> undo is three; a
        // transient state (device, cancelling) gets a few waits.
        for (int round = 0; round < 8; ++round) {
            Observation now = observe(m_src, m_dst, m_timeout);
            Decision d = decide(m_journal.job(), now);
            m_result.reason = d.reason;
            switch (d.verdict) {
                case Verdict::forward:
                    return finish(forward(now));
                case Verdict::undo:
                    return finish(undo(now));
                case Verdict::wait:
                    m_result.verdict = Verdict::wait;
                    if (d.pause_destination) pause_destination();
                    return m_result;
                case Verdict::cancel_first:
                    cancel();
                    break;
                case Verdict::again:
                    wait_for_end();
                    break;
            }
        }
        m_result.verdict = Verdict::wait;
        m_result.reason += " (it did not end in time)";
        return m_result;
    }

  private:
    void pause_destination() {
        auto r = qmp::stop(*m_dst, m_timeout);
        m_result.actions.push_back(
            r ? "paused the guest on the destination (post-copy did not complete)"
              : "could not pause the guest on the destination: " + r.error().message);
    }

    Result<SettleResult> finish(Result<void> r) {
        if (!r) return fail(r.error());
        return m_result;
    }

    // Subscribed before acting, so the end of the migration is not missed.
    void wait_for_end(qmp::EventSubscription* sub = nullptr) {
        qmp::EventSubscription own;
        if (!sub) {
            own = m_src->subscribe("MIGRATION");
            sub = &own;
            auto info = qmp::query_migrate(*m_src, m_timeout);
            if (!info || is_one_of(info->status, {"completed", "failed", "cancelled"})) return;
        }
        (void)sub->wait(
            [](const qmp::Event& e) {
                return is_one_of(e.data.value("status", ""), {"completed", "failed", "cancelled"});
            },
            m_timeout);
    }

    void cancel() {
        auto sub = m_src->subscribe("MIGRATION");
        auto r = qmp::migrate_cancel(*m_src, m_timeout);
        m_result.actions.push_back(r ? "migrate_cancel on the source"
                                     : "migrate_cancel failed: " + r.error().message);
        if (r) wait_for_end(&sub);
    }

    // Disk copies (`--copy-storage all`) end before `cont` runs the guest on
    // the destination: its exports go first (a hard delete cuts any client
    // off); a destination that cannot prove them gone is not resumed
    // (false). A destination started without -S runs the guest by itself
    // once the RAM is in, before this; the source's NBD client nodes were
    // deleted at pre-switchover, so even then nothing but the guest writes
    // its disks. The source's jobs and nodes follow.
    Result<bool> release_for_forward() {
        auto dst = release_destination(m_journal, m_dst, m_timeout);
        if (!dst) return fail(dst.error());
        take(*dst);
        if (!dst->left_behind.empty()) return false;
        auto src = release_source_disks(m_journal, m_src, m_timeout);
        if (!src) return fail(src.error());
        take(*src);
        return true;
    }

    // Undo: the source's mirrors first (they write into the exports), then
    // the destination's exports and NBD server.
    Result<void> release_for_undo() {
        auto src = release_source_disks(m_journal, m_src, m_timeout);
        if (!src) return fail(src.error());
        take(*src);
        auto dst = release_destination(m_journal, m_dst, m_timeout);
        if (!dst) return fail(dst.error());
        take(*dst);
        if (auto tls = release_tls(m_journal, m_src, m_dst, m_timeout); tls)
            take(*tls);
        else
            return fail(tls.error());
        // A destination blockmig started (--dst-launch) never had the guest.
        auto launched = release_launched(m_journal, m_dst, m_timeout);
        if (!launched) return fail(launched.error());
        take(*launched);
        return {};
    }

    void take(const Released& r) {
        m_result.actions.insert(m_result.actions.end(), r.done.begin(), r.done.end());
        m_result.left_behind.insert(m_result.left_behind.end(), r.left_behind.begin(),
                                    r.left_behind.end());
    }

    Result<void> forward(const Observation& now) {
        m_result.verdict = Verdict::forward;
        const auto& facts = *m_journal.job().migration;
        if (now.dst.reachable) {
            auto released = release_for_forward();
            if (!released) return fail(released.error());
            if (!*released) return {};
        }
        if (now.dst.reachable && now.dst.run_state != "running") {
            // The destination has all of the guest once its incoming side
            // completed; only then may it run (never two running copies).
            if (now.dst.migration != "completed" && now.src.migration == "completed")
                wait_destination();
            auto seq = m_journal.intend(
                {.effect = EffectKind::destination_resumed, .name = facts.destination.qmp});
            if (!seq) return fail(seq.error());
            auto r = qmp::cont(*m_dst, m_timeout);
            if (auto w = m_journal.outcome(*seq, r ? RecordState::done : RecordState::failed,
                                           r ? "" : r.error().message);
                !w)
                return w;
            if (!r) {
                m_result.left_behind.push_back("the destination did not resume: " +
                                               r.error().message);
                return {};
            }
            m_result.actions.push_back("cont on the destination: the guest runs there");
        } else if (!now.dst.reachable) {
            m_result.left_behind.push_back("the destination QEMU does not answer (" +
                                           now.dst.error + "): cannot resume it");
            return {};
        }
        if (m_src && now.src.reachable && !facts.keep_source && now.src.run_state != "running") {
            auto seq = m_journal.intend(
                {.effect = EffectKind::source_quit, .name = m_journal.job().guest.qmp});
            if (!seq) return fail(seq.error());
            auto r = qmp::quit(*m_src, m_timeout);
            // QEMU may close the connection before or after its reply.
            const bool ok = r || r.error().code == ErrorCode::interrupted;
            if (auto w = m_journal.outcome(*seq, ok ? RecordState::done : RecordState::failed); !w)
                return w;
            m_result.actions.push_back(ok ? "quit the source QEMU"
                                          : "the source QEMU did not quit: " + r.error().message);
        }
        // Last: nothing uses the TLS credentials any more (a QEMU that quit took its own).
        if (auto tls = release_tls(m_journal, m_src, m_dst, m_timeout); tls)
            take(*tls);
        else
            return fail(tls.error());
        m_result.settled = true;
        return set_phase(m_journal, "done");
    }

    void wait_destination() {
        auto sub = m_dst->subscribe("MIGRATION");
        auto info = qmp::query_migrate(*m_dst, m_timeout);
        if (!info || info->status == "completed" || info->status == "failed") return;
        (void)sub.wait(
            [](const qmp::Event& e) {
                return is_one_of(e.data.value("status", ""), {"completed", "failed"});
            },
            m_timeout);
    }

    Result<void> undo(const Observation& now) {
        m_result.verdict = Verdict::undo;
        if (auto w = mark(m_journal, EffectKind::switchover_sent, RecordState::failed,
                          "the source kept the guest");
            !w)
            return w;
        if (now.src.run_state != "running") {
            auto r = qmp::cont(*m_src, m_timeout);
            if (!r) {
                m_result.left_behind.push_back("the source guest is " + now.src.run_state +
                                               " and did not resume: " + r.error().message);
                return {};
            }
            m_result.actions.push_back("resumed the guest on the source (it was " +
                                       now.src.run_state + ")");
        }
        restore_settings();
        if (auto r = release_for_undo(); !r) return r;
        for (auto effect : {EffectKind::migration_started, EffectKind::incoming_started,
                            EffectKind::migration_configured})
            if (auto w = mark(m_journal, effect, RecordState::undone, "migration cancelled"); !w)
                return w;
        m_result.settled = true;
        return set_phase(m_journal, "rolled_back");
    }

    // The source's migration capabilities and parameters as they were before
    // the job, so a later migration (by anyone) starts from them.
    void restore_settings() {
        const nlohmann::json& saved = m_journal.job().migration->source_saved;
        std::vector<std::pair<std::string, bool>> caps;
        const nlohmann::json saved_caps = saved.value("capabilities", nlohmann::json::object());
        for (auto it = saved_caps.begin(); it != saved_caps.end(); ++it)
            if (it->is_boolean()) caps.emplace_back(it.key(), it->get<bool>());
        if (!caps.empty()) {
            auto r = qmp::migrate_set_capabilities(*m_src, caps, m_timeout);
            if (!r)
                m_result.left_behind.push_back("source capabilities not restored: " +
                                               r.error().message);
        }
        const auto params = saved.value("parameters", nlohmann::json::object());
        if (!params.empty()) {
            auto r = qmp::migrate_set_parameters(*m_src, params, m_timeout);
            if (!r)
                m_result.left_behind.push_back("source parameters not restored: " +
                                               r.error().message);
        }
        if (!caps.empty() || !params.empty())
            m_result.actions.push_back("restored the source's migration settings");
    }

    jobs::Journal& m_journal;
    qmp::Client* m_src;
    qmp::Client* m_dst;
    qmp::Milliseconds m_timeout;
    SettleResult m_result;
};

}  // namespace

Result<SettleResult> settle(jobs::Journal& journal, qmp::Client* src, qmp::Client* dst,
                            qmp::Milliseconds timeout) {
    if (!journal.job().migration)
        return fail(ErrorCode::invalid_argument, "settle: not a migrate job");
    return Settler(journal, src, dst, timeout).run();
}

}  // namespace blockmig::migrate
