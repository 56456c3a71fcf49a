#include "mirror.hpp"

#include <fmt/core.h>
#include <sys/stat.h>

#include <algorithm>

#include "jobs/recover.hpp"

namespace blockmig::mirror {

namespace {

using namespace std::chrono_literals;

}  // namespace

std::string_view to_string(MirrorState state) {
    switch (state) {
        case MirrorState::idle:
            return "idle";
        case MirrorState::attached:
            return "attached";
        case MirrorState::copying:
            return "copying";
        case MirrorState::ready:
            return "ready";
        case MirrorState::completing:
            return "completing";
        case MirrorState::pivoted:
            return "pivoted";
        case MirrorState::synced:
            return "synced";
        case MirrorState::detached:
            return "detached";
        case MirrorState::rolled_back:
            return "rolled_back";
    }
    return "unknown";
}

Mirror::Mirror(qmp::Client& client, jobs::Effects& effects, MirrorSpec spec, Clock& clock)
    : m_client(client),
      m_effects(effects),
      m_spec(std::move(spec)),
      m_clock(clock),
      m_last_progress(clock.now()) {}

void Mirror::journal_fields(jobs::JobDisk& d) const {
    d.prefix = m_spec.names.prefix;
    d.block_job = m_spec.names.block_job;
    d.top_node = m_top_node;
    // Only a hop has a direct node to leave for after a pivot.
    d.hop_node = m_target.kind == TargetKind::hop ? m_hop_node : "";
    nlohmann::json ids = nlohmann::json::array();
    for (const auto& secret : m_target.chain.secrets) ids.push_back(secret.value("id", ""));
    // The secrets themselves are never journaled: recover asks the pool.
    d.chain = {{"protocol", m_target.chain.protocol},
               {"format", m_target.chain.format},
               {"protocol_node", m_target.chain.protocol_node},
               {"secret_ids", ids}};
}

Result<void> Mirror::set_phase(std::string_view phase) {
    return m_effects.journal().update([&](jobs::Job& job) {
        if (auto* d = job.disk(m_spec.disk)) {
            journal_fields(*d);
            d->phase = std::string(phase);
        }
    });
}

void Mirror::stage_fields(std::optional<std::string_view> phase) {
    m_effects.journal().stage([&](jobs::Job& job) {
        if (auto* d = job.disk(m_spec.disk)) {
            journal_fields(*d);
            if (phase) d->phase = std::string(*phase);
        }
    });
}

Result<void> Mirror::attach(Target target) {
    if (m_state != MirrorState::idle)
        return fail(ErrorCode::invalid_state,
                    fmt::format("{}: attach: mirror is {}", m_spec.disk, to_string(m_state)));
    m_target = std::move(target);
    // A shallow target shares the guest's backing node; naming it here also
    // keeps it across the blockdev-reopen after the pivot.
    if (!m_spec.backing_node.empty() && m_target.kind != TargetKind::nbd)
        m_target.chain.format["backing"] = m_spec.backing_node;
    Result<void> r;
    switch (m_target.kind) {
        case TargetKind::volume:
            r = attach_volume();
            break;
        case TargetKind::hop:
            r = attach_hop();
            break;
        case TargetKind::nbd:
            r = attach_nbd();
            break;
    }
    if (!r) return r;
    m_state = MirrorState::attached;
    // Durable with the mirror's intent: a crash before it finds the nodes'
    // records, which are undone the same way in either phase.
    stage_fields("attached");
    return {};
}

Result<void> Mirror::attach_volume() {
    m_top_node = m_target.chain.format_node;
    // Recover needs the chain to re-point the node: it is written with the
    // first node's intent, before the node exists.
    stage_fields(std::nullopt);
    for (const auto& secret : m_target.chain.secrets)
        if (auto r = m_effects.add_secret(m_spec.disk, secret); !r)
            return fail(r.error().with_context("object-add secret"));
    if (auto r = m_effects.add_node(m_spec.disk, m_target.chain.protocol); !r)
        return fail(r.error().with_context("blockdev-add target protocol node"));
    if (auto r = m_effects.add_node(m_spec.disk, m_target.chain.format); !r)
        return fail(r.error().with_context("blockdev-add target format node"));
    return {};
}

Result<void> Mirror::attach_hop() {
    m_top_node = m_target.chain.format_node;
    m_hop_node = m_spec.names.hop_node;
    // Recover needs the chain to re-point the node: it is written with the
    // first node's intent, before the node exists.
    stage_fields(std::nullopt);
    const auto& dir = m_target.hop_dir;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    chmod(dir.parent_path().c_str(), 0700);
    chmod(dir.c_str(), 0700);
    auto seq = m_effects.daemon_starting(m_spec.disk, (dir / "nbd.sock").string());
    if (!seq) return fail(seq.error());
    auto hop = NbdHop::start(dir, m_target.chain.protocol, m_target.chain.secrets,
                             m_spec.daemon_start_timeout, m_target.qemu_dir);
    if (auto w =
            m_effects.daemon_outcome(*seq, hop ? hop->pid() : -1, hop ? "" : hop.error().message);
        !w)
        return fail(w.error());
    if (!hop)
        return fail(
            hop.error().with_context(fmt::format("open {} in a storage daemon", m_target.url)));
    m_hop.emplace(std::move(*hop));
    if (auto r = m_effects.add_node(m_spec.disk, m_hop->client_node(m_hop_node)); !r)
        return fail(r.error().with_context("blockdev-add NBD hop node"));
    nlohmann::json format_node = m_target.chain.format;
    format_node["file"] = m_hop_node;
    if (auto r = m_effects.add_node(m_spec.disk, format_node); !r)
        return fail(r.error().with_context("blockdev-add target format node"));
    return {};
}

Result<void> Mirror::attach_nbd() {
    m_hop_node = m_spec.names.prefix + "-nbd";
    m_top_node = m_target.export_format.empty() ? m_hop_node : m_spec.names.prefix + "-fmt";
    // Recover needs the chain to re-point the node: it is written with the
    // first node's intent, before the node exists.
    stage_fields(std::nullopt);
    if (auto r = m_effects.add_node(
            m_spec.disk,
            nbd_client_node(m_hop_node, m_target.server, m_target.export_name, m_target.tls_creds));
        !r)
        return fail(
            r.error().with_context(fmt::format("blockdev-add nbd node for {}", m_target.url)));
    if (m_target.export_format.empty()) return {};
    nlohmann::json format_node{
        {"driver", m_target.export_format}, {"node-name", m_top_node}, {"file", m_hop_node}};
    if (!m_spec.backing_node.empty()) format_node["backing"] = m_spec.backing_node;
    if (auto r = m_effects.add_node(m_spec.disk, format_node); !r)
        return fail(r.error().with_context("blockdev-add target format node"));
    return {};
}

Result<void> Mirror::start(qmp::CopyMode mode, std::uint64_t speed) {
    if (m_state != MirrorState::attached)
        return fail(ErrorCode::invalid_state,
                    fmt::format("{}: start: mirror is {}", m_spec.disk, to_string(m_state)));
    qmp::MirrorOptions mirror;
    mirror.job_id = job_id();
    mirror.device = m_spec.source_node;
    mirror.target = m_top_node;
    mirror.sync = m_spec.sync;
    mirror.speed = speed;
    mirror.copy_mode = mode;
    // Keep the job after it ends so its error can be read, then dismiss it.
    mirror.auto_dismiss = false;
    // A write-blocking job counts the guest's writes it forwards in its
    // offset: the guest's write counter now tells them apart later.
    const bool write_blocking = mode == qmp::CopyMode::write_blocking;
    if (write_blocking) m_guest_written_at_switch = guest_written();
    if (auto r = m_effects.start_mirror(m_spec.disk, mirror); !r)
        return fail(r.error().with_context("blockdev-mirror"));
    m_state = MirrorState::copying;
    if (write_blocking) m_switched = true;
    if (auto w = set_phase("copying"); !w) return fail(w.error());
    m_offset = 0;
    m_len = 0;
    m_last_progress = m_clock.now();
    return {};
}

Result<void> Mirror::observe(const std::vector<qmp::BlockJobInfo>& jobs, Clock::time_point now) {
    for (const auto& job : jobs) {
        if (job.id != job_id()) continue;
        if (job.status == "concluded") {
            std::string why = job.error.value_or("the job ended before it was ready");
            (void)qmp::job_dismiss(m_client, job_id(), m_effects.env().step_timeout);
            return fail(ErrorCode::io_error,
                        fmt::format("mirror to {} failed: {}", m_target.url, why));
        }
        // A job that is not busy is sleeping on its rate limit (after a
        // burst of buf-size bytes it may sleep for buf-size / speed): that is
        // throttling, not a stall. A job stuck on a dead target stays busy.
        if (job.offset > m_offset || !job.busy) m_last_progress = now;
        m_offset = job.offset;
        m_len = job.len;
        // A QEMU that cannot report it cannot switch in place either
        // (both arrived in 8.2): then READY is all there is to wait for.
        m_actively_synced = job.actively_synced.value_or(true);
        if ((job.ready || job.status == "ready") && m_state == MirrorState::copying) {
            m_state = MirrorState::ready;
            if (auto w = set_phase("ready"); !w) return fail(w.error());
        }
        return {};
    }
    return fail(ErrorCode::invalid_state,
                fmt::format("mirror job {} disappeared from QEMU", job_id()));
}

Result<void> Mirror::set_speed(std::uint64_t speed) {
    return qmp::block_job_set_speed(m_client, job_id(), speed, m_effects.env().step_timeout);
}

Result<void> Mirror::switch_to_write_blocking(bool in_place, std::uint64_t speed) {
    if (in_place) {
        // qapi/block-core.json, BlockJobChangeOptionsMirror: only
        // background -> write-blocking is allowed; the job keeps its bitmap
        // and progress, so what was copied stays copied.
        if (auto r = qmp::block_job_change(m_client, job_id(), "mirror",
                                           {{"copy-mode", "write-blocking"}},
                                           m_effects.env().step_timeout);
            !r)
            return fail(r.error().with_context("block-job-change copy-mode=write-blocking"));
        m_guest_written_at_switch = guest_written();
        m_switched = true;
        m_switched_in_place = true;
        m_actively_synced = false;
        return {};
    }
    // QEMU 7.2 has no block-job-change: cancel, then mirror again onto the
    // same target (the copy starts over).
    auto sub = m_client.subscribe(qmp::job_events(job_id()));
    if (auto r = qmp::block_job_cancel(m_client, job_id(), true, m_effects.env().step_timeout); !r)
        return fail(r.error().with_context("cancel background mirror"));
    std::optional<std::string> error;
    if (auto r = wait_ended(sub, 10s, &error); !r) {
        kill_hop();  // a mirror that cannot even cancel is stuck on its target
        return fail(ErrorCode::timeout,
                    fmt::format("{} stopped answering while switching copy mode", m_target.url));
    }
    if (auto w = m_effects.ended(m_spec.disk, jobs::EffectKind::mirror_started, job_id(),
                                 "cancelled to restart in write-blocking mode");
        !w)
        return fail(w.error());
    m_state = MirrorState::attached;
    m_copied_by_earlier_jobs += m_offset;
    return start(qmp::CopyMode::write_blocking, speed);
}

Result<void> Mirror::wait_in_sync(std::chrono::milliseconds timeout) {
    // A paused guest's mirror catching up sends no event (it is READY
    // already): this is the one poll, and it ends in milliseconds.
    const auto deadline = deadline_after(m_clock, timeout);
    for (;;) {
        auto jobs = qmp::query_block_jobs(m_client, m_effects.env().step_timeout);
        if (!jobs) return fail(jobs.error());
        auto it = std::find_if(jobs->begin(), jobs->end(),
                               [&](const auto& j) { return j.id == job_id(); });
        // Supervised after READY too: a job that failed or vanished ends
        // the wait at once instead of at its deadline.
        if (it == jobs->end())
            return fail(ErrorCode::invalid_state,
                        fmt::format("mirror job {} disappeared from QEMU", job_id()));
        if (it->status == "concluded") {
            (void)qmp::job_dismiss(m_client, job_id(), m_effects.env().step_timeout);
            return fail(ErrorCode::io_error, fmt::format("mirror to {} failed: {}", m_target.url,
                                                         it->error.value_or("the job ended")));
        }
        if (it->ready && it->offset == it->len && !it->busy) return {};
        if (m_clock.now() > deadline)
            return fail(
                ErrorCode::timeout,
                fmt::format("{}: mirror did not catch up with the paused guest", m_spec.disk));
        m_clock.sleep_for(20ms);
    }
}

Result<void> Mirror::wait_ended(qmp::EventSubscription& sub, std::chrono::milliseconds timeout,
                                std::optional<std::string>* error) {
    const auto deadline = deadline_after(m_clock, timeout);
    std::optional<std::uint64_t> last_offset;
    auto last_move = m_clock.now();
    for (;;) {
        auto jobs = qmp::query_block_jobs(m_client, m_effects.env().step_timeout);
        if (!jobs) return fail(jobs.error().with_context("query-block-jobs"));
        auto it = std::find_if(jobs->begin(), jobs->end(),
                               [&](const auto& j) { return j.id == job_id(); });
        if (it == jobs->end()) return {};
        // The last count QEMU gave: bytes_copied() includes the final sync.
        m_offset = std::max(m_offset, it->offset);
        if (it->status == "concluded") {
            *error = it->error;
            (void)qmp::job_dismiss(m_client, job_id(), m_effects.env().step_timeout);
            return {};
        }
        const auto now = m_clock.now();
        // The watchdog: a job still busy on a target that stopped answering
        // (its final sync, or the cancel, never finishes) is ended by
        // killing the hop, so it fails now rather than at the deadline.
        if (!last_offset || it->offset != *last_offset || !it->busy) {
            last_offset = it->offset;
            last_move = now;
        } else if (now - last_move > m_spec.stall_timeout && m_hop && m_hop->running()) {
            kill_hop();
        }
        if (now >= deadline)
            return fail(
                ErrorCode::timeout,
                fmt::format("job {} did not end within {} s (status {})", job_id(),
                            std::chrono::duration_cast<std::chrono::seconds>(timeout).count(),
                            it->status));
        // Woken by the job's next event; the query above also runs at least
        // once a second, a watchdog for an event that never comes.
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
        auto event = sub.wait({}, std::min<std::chrono::milliseconds>(left, 1s));
        if (!event && event.error().code == ErrorCode::interrupted) return fail(event.error());
    }
}

Result<PivotResult> Mirror::pivot(const std::filesystem::path& jobs_dir,
                                  std::chrono::milliseconds timeout) {
    if (m_state != MirrorState::ready)
        return fail(ErrorCode::invalid_state,
                    fmt::format("{}: pivot: mirror is {}", m_spec.disk, to_string(m_state)));
    count_forwarded_writes();
    auto sub = m_client.subscribe(qmp::job_events(job_id()));
    std::string error;
    auto reply = m_effects.send_complete(m_spec.disk, job_id(), &error);
    if (!reply) return fail(reply.error());
    if (*reply == jobs::CompleteReply::refused)
        // QEMU refused: nothing switched, the ordinary rollback applies.
        return fail(ErrorCode::io_error, "block-job-complete: " + error);
    // From here on nothing is undone until QMP says where the device is.
    m_state = MirrorState::completing;
    // Also when the reply was lost: the job may be completing right now.
    std::optional<std::string> job_error;
    if (m_client.state() == qmp::State::running) (void)wait_ended(sub, timeout, &job_error);
    auto out = jobs::recover_disk(m_effects.journal(), m_spec.disk, m_effects.env(),
                                  jobs::Intent::as_journaled);
    if (!out) return fail(out.error());
    forget_hop();  // recover_disk stopped it, or left it running for the guest
    if (out->direction == jobs::Direction::undo && out->settled) {
        m_state = MirrorState::rolled_back;
        std::string why = !error.empty() ? error : job_error ? *job_error : out->reason;
        return fail(ErrorCode::io_error,
                    fmt::format("pivot to {} failed ({}); the guest stays on its source",
                                m_target.url, why));
    }
    if (out->direction != jobs::Direction::forward || !out->settled) {
        std::string left;
        for (const auto& l : out->left_behind) left += "; " + l;
        return fail(
            ErrorCode::invalid_state,
            fmt::format("{}: block-job-complete was sent{}; {}{}. Nothing was deleted; "
                        "run `{}`",
                        m_spec.disk, error.empty() ? "" : " (" + error + ")", out->reason, left,
                        jobs::recover_command(jobs_dir, m_effects.journal().job().id)));
    }
    m_state = MirrorState::pivoted;
    return PivotResult{.warnings = out->left_behind};
}

Result<void> Mirror::soft_cancel(std::chrono::milliseconds timeout) {
    if (m_state != MirrorState::ready)
        return fail(ErrorCode::invalid_state,
                    fmt::format("{}: soft cancel: mirror is {}", m_spec.disk, to_string(m_state)));
    count_forwarded_writes();
    auto sub = m_client.subscribe(qmp::job_events(job_id()));
    // A soft cancel of a READY mirror does a final sync and ends the job
    // without switching the device (qapi/block-core.json, block-job-cancel).
    if (auto r = qmp::block_job_cancel(m_client, job_id(), false, m_effects.env().step_timeout); !r)
        return fail(r.error().with_context("block-job-cancel"));
    std::optional<std::string> error;
    if (auto r = wait_ended(sub, timeout, &error); !r) return r;
    if (error)
        return fail(ErrorCode::io_error,
                    fmt::format("final sync to {} failed: {}", m_target.url, *error));
    m_state = MirrorState::synced;
    return {};
}

Result<jobs::UndoReport> Mirror::detach() {
    if (m_state != MirrorState::synced)
        return fail(ErrorCode::invalid_state,
                    fmt::format("{}: detach: mirror is {}", m_spec.disk, to_string(m_state)));
    auto report = m_effects.detach_keep_volume(m_spec.disk);
    forget_hop();  // the undo steps stopped it
    if (!report) return report;
    m_state = MirrorState::detached;
    return report;
}

Result<jobs::UndoReport> Mirror::abort() {
    if (m_state == MirrorState::completing || m_state == MirrorState::pivoted)
        return fail(
            ErrorCode::invalid_state,
            fmt::format("{}: block-job-complete was sent: only recover decides now", m_spec.disk));
    // The same undo steps a `blockmig recover` would replay (jobs/undo.hpp).
    auto report = m_effects.rollback(m_spec.disk);
    forget_hop();  // stopped by the undo (or left for the guest)
    if (!report) return report;
    if (report->left_behind.empty()) m_state = MirrorState::rolled_back;
    return report;
}

Result<void> Mirror::leave_running() {
    if (auto w = set_phase("ready"); !w) return fail(w.error());
    // The job, its nodes and the hop now outlive this process; the journal
    // describes them.
    forget_hop();
    return {};
}

void Mirror::forget_hop() {
    if (m_hop) m_hop->detach();
    m_hop.reset();
}

std::optional<std::uint64_t> Mirror::guest_written() const {
    auto stats = qmp::query_blockstats(m_client, false, m_effects.env().step_timeout);
    if (!stats) return std::nullopt;
    const auto& names = m_spec.device_names;
    auto named = [&](const std::optional<std::string>& name) {
        return name && !name->empty() &&
               std::find(names.begin(), names.end(), *name) != names.end();
    };
    for (const auto& s : *stats)
        if (named(s.device) || named(s.qdev)) return s.wr_bytes;
    return std::nullopt;
}

void Mirror::count_forwarded_writes() {
    if (!m_guest_written_at_switch) return;
    if (auto now = guest_written(); now && *now >= *m_guest_written_at_switch)
        m_guest_bytes_forwarded = *now - *m_guest_written_at_switch;
    m_guest_written_at_switch.reset();
}

}  // namespace blockmig::mirror
