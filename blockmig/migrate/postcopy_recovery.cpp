#include "postcopy_recovery.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cstdlib>

#include "qmp/migration.hpp"
#include "release.hpp"

namespace blockmig::migrate {

namespace {

using jobs::EffectKind;
using jobs::RecordState;

bool contains(const Error& e, std::string_view text) {
    return e.message.find(text) != std::string::npos;
}

bool is_one_of(std::string_view s, std::initializer_list<std::string_view> set) {
    return std::find(set.begin(), set.end(), s) != set.end();
}

class Recovery {
  public:
    Recovery(jobs::Journal& journal, qmp::Client& src, qmp::Client* dst,
             const RecoveryOptions& options, const RecoveryNote& note)
        : m_journal(journal), m_src(src), m_dst(dst), m_o(options), m_note(note) {}

    Result<RecoveryResult> run() {
        for (;;) {
            if (m_o.clock->now() >= m_o.deadline)
                return end(RecoveryOutcome::impossible,
                           fmt::format("the link did not come back before the deadline ({} "
                                       "attempt{}{})",
                                       m_result.attempts, m_result.attempts == 1 ? "" : "s",
                                       m_last.empty() ? "" : "; last: " + m_last));
            auto step = attempt();
            if (!step) return fail(step.error());
            if (*step) return **step;
            m_o.clock->sleep_for(m_o.retry_interval);
        }
    }

  private:
    using Step = Result<std::optional<RecoveryResult>>;

    RecoveryResult end(RecoveryOutcome outcome, std::string reason) {
        m_result.outcome = outcome;
        m_result.reason = std::move(reason);
        return m_result;
    }

    // Nothing decided: noted, and the next attempt follows.
    Step again(std::string why) {
        m_last = why;
        if (m_note)
            m_note(fmt::format("post-copy recovery attempt {}: {}", m_result.attempts, why));
        return std::optional<RecoveryResult>{};
    }

    Step attempt() {
        ++m_result.attempts;
        if (m_src.state() != qmp::State::running)
            return end(RecoveryOutcome::impossible,
                       "lost the source's QMP connection (" + m_src.dead_reason().message + ")");
        auto info = qmp::query_migrate(m_src, m_o.qmp_timeout);
        if (!info) return again("source query-migrate: " + info.error().message);
        const std::string& status = info->status;
        if (status == "completed") return end(RecoveryOutcome::completed, "completed");
        if (is_one_of(status, {"failed", "cancelled", "none"}))
            return end(RecoveryOutcome::impossible,
                       fmt::format("the source's migration {}{}", status,
                                   info->error_desc ? ": " + *info->error_desc : ""));
        if (is_one_of(status, {"postcopy-active", "postcopy-recover"})) {
            if (m_resumed && status == "postcopy-active")
                return end(RecoveryOutcome::resumed, "resumed");
            if (m_resumed) return again("the source is still resyncing (postcopy-recover)");
            return pause_both();
        }
        if (status != "postcopy-paused")
            return again("the source's migration is " + status + ", waiting for postcopy-paused");
        return reconnect();
    }

    // QEMU has not noticed the dead link yet (TCP still retransmits): both
    // sides are told to give up their stream, so both become resumable.
    Step pause_both() {
        auto sub = m_src.subscribe("MIGRATION");
        auto r = qmp::migrate_pause(m_src, m_o.qmp_timeout);
        if (auto d = destination(); d && *d) (void)qmp::migrate_pause(**d, m_o.qmp_timeout);
        if (!r) return again("source migrate-pause: " + r.error().message);
        (void)sub.wait(
            [](const qmp::Event& e) { return postcopy_broken(e.data.value("status", "")); },
            m_o.attempt_timeout);
        return again("paused the stalled post-copy stream on both sides");
    }

    Step reconnect() {
        auto d = destination();
        if (!d) return end(RecoveryOutcome::impossible, d.error().message);
        if (!*d) return again(m_dst_error);
        // The destination may still believe in the old stream.
        (void)qmp::migrate_pause(**d, m_o.qmp_timeout);
        auto uri = listen(**d);
        if (!uri) return fail(uri.error());
        if (!*uri) return again(m_listen_error);
        return resume(**uri);
    }

    // The first port of the range the destination can listen on.
    Result<std::optional<std::string>> listen(qmp::Client& dst) {
        const auto ports = recovery_ports(m_o.dst_addr);
        for (std::uint32_t port = ports.first; port <= ports.last; ++port) {
            const std::string uri = recovery_uri(m_o.dst_addr, static_cast<std::uint16_t>(port));
            auto seq = m_journal.intend({.effect = EffectKind::recovery_listening, .name = uri});
            if (!seq) return fail(seq.error());
            auto r = qmp::migrate_recover(dst, uri, m_o.qmp_timeout);
            if (r || is_definite_refusal(r.error()))
                if (auto w = m_journal.outcome(*seq, r ? RecordState::done : RecordState::failed,
                                               r ? "" : r.error().message);
                    !w)
                    return fail(w.error());
            if (r) return uri;
            if (contains(r.error(), "Address already in use")) continue;
            // QEMU < 8 keeps one recovery listener at a time: the last one still listens.
            if (contains(r.error(), "triggered already") && !m_listening.empty())
                return m_listening;
            m_listen_error = "destination migrate-recover " + uri + ": " + r.error().message;
            return std::optional<std::string>{};
        }
        m_listen_error = fmt::format("destination migrate-recover: ports {}-{} are in use",
                                     ports.first, ports.last);
        return std::optional<std::string>{};
    }

    Step resume(const std::string& uri) {
        m_listening = uri;
        auto sub = m_src.subscribe("MIGRATION");
        auto seq = m_journal.intend({.effect = EffectKind::migration_resumed, .name = uri});
        if (!seq) return fail(seq.error());
        auto r = qmp::migrate_resume(m_src, uri, m_o.qmp_timeout);
        if (r || is_definite_refusal(r.error()))
            if (auto w = m_journal.outcome(*seq, r ? RecordState::done : RecordState::failed,
                                           r ? "" : r.error().message);
                !w)
                return fail(w.error());
        if (!r) return again("source migrate resume " + uri + ": " + r.error().message);
        // The connect runs in QEMU's background: its end is a MIGRATION event.
        const auto left = m_o.deadline - m_o.clock->now();
        const auto wait = std::min<std::chrono::nanoseconds>(m_o.attempt_timeout, left);
        (void)sub.wait(
            [](const qmp::Event& e) {
                return is_one_of(e.data.value("status", ""),
                                 {"postcopy-active", "postcopy-paused", "completed", "failed"});
            },
            std::chrono::duration_cast<qmp::Milliseconds>(
                std::max<std::chrono::nanoseconds>(wait, std::chrono::milliseconds(1))));
        auto info = qmp::query_migrate(m_src, m_o.qmp_timeout);
        if (!info) return again("source query-migrate: " + info.error().message);
        if (info->status == "completed") return end(RecoveryOutcome::completed, "completed");
        if (info->status == "postcopy-active") {
            m_resumed = true;
            return end(RecoveryOutcome::resumed, "resumed through " + uri);
        }
        if (info->status == "postcopy-recover") m_resumed = true;
        return again(fmt::format("the source is {} after resuming to {}{}", info->status, uri,
                                 info->error_desc ? " (" + *info->error_desc + ")" : ""));
    }

    // The destination's QMP, connected again when the first connection died.
    // An error: it is proven gone. nullptr: it does not answer (yet).
    Result<qmp::Client*> destination() {
        if (m_dst && m_dst->state() == qmp::State::running) return m_dst;
        const std::string address = m_journal.job().migration->destination.qmp;
        qmp::ConnectOptions options;
        options.enable_oob = true;  // migrate-recover must pass a blocked main thread
        options.timeout = m_o.qmp_timeout;
        options.default_timeout = m_o.qmp_timeout;
        auto c = qmp::Client::connect(address, options);
        if (c) {
            m_fresh = std::move(*c);
            m_dst = m_fresh.get();
            return m_dst;
        }
        if (proves_gone(c.error())) {
            m_result.destination_gone = true;
            return fail(ErrorCode::not_found, fmt::format("the destination QEMU is gone ({}: {})",
                                                          address, c.error().message));
        }
        m_dst_error = "the destination's QMP does not answer: " + c.error().message;
        return static_cast<qmp::Client*>(nullptr);
    }

    jobs::Journal& m_journal;
    qmp::Client& m_src;
    qmp::Client* m_dst;
    std::unique_ptr<qmp::Client> m_fresh;  // the destination's QMP, connected again
    const RecoveryOptions& m_o;
    const RecoveryNote& m_note;
    RecoveryResult m_result;
    bool m_resumed = false;   // a resume was accepted: postcopy-active again is success
    std::string m_listening;  // the URI the destination last listened on
    std::string m_last, m_dst_error, m_listen_error;
};

}  // namespace

PortRange recovery_ports(const std::string& dst_addr) {
    std::uint32_t port = 0;
    // --dst-addr HOST:PORT (or [V6]:PORT): the ports after the migration's own.
    if (const auto colon = dst_addr.rfind(':');
        colon != std::string::npos && dst_addr.back() != ']' &&
        (dst_addr.front() == '[' || dst_addr.find(':') == colon))
        port = static_cast<std::uint32_t>(std::atoi(dst_addr.c_str() + colon + 1));
    if (port == 0 || port + k_nbd_ports > 65535)
        return {static_cast<std::uint16_t>(k_nbd_port + k_nbd_ports),
                static_cast<std::uint16_t>(k_nbd_port + 2 * k_nbd_ports - 1)};
    return {static_cast<std::uint16_t>(port + 1), static_cast<std::uint16_t>(port + k_nbd_ports)};
}

std::string recovery_uri(const std::string& dst_addr, std::uint16_t port) {
    const std::string host = nbd_host(dst_addr);
    if (host.find(':') != std::string::npos) return fmt::format("tcp:[{}]:{}", host, port);
    return fmt::format("tcp:{}:{}", host, port);
}

bool postcopy_broken(std::string_view status) {
    return is_one_of(status, {"postcopy-paused", "postcopy-recover-setup", "postcopy-recover"});
}

Result<RecoveryResult> recover_postcopy(jobs::Journal& journal, qmp::Client& src, qmp::Client* dst,
                                        const RecoveryOptions& options, const RecoveryNote& note) {
    if (!journal.job().migration)
        return fail(ErrorCode::invalid_argument, "post-copy recovery: not a migrate job");
    return Recovery(journal, src, dst, options, note).run();
}

Result<RecoveryResult> finish_postcopy(jobs::Journal& journal, qmp::Client& src, qmp::Client* dst,
                                       const RecoveryOptions& options,
                                       std::chrono::milliseconds stall, const RecoveryNote& note) {
    RecoveryResult out;
    auto last_progress = options.clock->now();
    std::uint64_t transferred = 0;
    for (;;) {
        auto info = qmp::query_migrate(src, options.qmp_timeout);
        if (!info) {
            out.reason = "source query-migrate: " + info.error().message;
            return out;
        }
        if (info->status == "completed") {
            out.outcome = RecoveryOutcome::completed;
            out.reason = "completed";
            return out;
        }
        const bool active = info->status == "postcopy-active";
        if (!active && !postcopy_broken(info->status)) {
            out.reason = fmt::format("the source's migration is {}{}", info->status,
                                     info->error_desc ? ": " + *info->error_desc : "");
            return out;
        }
        if (active && info->ram && info->ram->transferred != transferred) {
            transferred = info->ram->transferred;
            last_progress = options.clock->now();
        }
        if (!active || options.clock->now() - last_progress > stall) {
            auto r = recover_postcopy(journal, src, dst, options, note);
            if (!r) return fail(r.error());
            out.attempts += r->attempts;
            out.destination_gone = r->destination_gone;
            if (r->outcome != RecoveryOutcome::resumed) {
                out.outcome = r->outcome;
                out.reason = r->reason;
                return out;
            }
            last_progress = options.clock->now();
        }
        if (options.clock->now() >= options.deadline) {
            out.outcome = RecoveryOutcome::resumed;
            out.reason = "pages flow, but the migration did not complete before the deadline";
            return out;
        }
        options.clock->sleep_for(std::chrono::seconds(1));
    }
}

}  // namespace blockmig::migrate
