#include "effects.hpp"

#include <fmt/core.h>

namespace blockmig::jobs {

Result<void> Effects::settle(std::uint64_t seq, const Result<void>& r) {
    if (r) return m_journal.outcome(seq, RecordState::done);
    if (is_definite_refusal(r.error()))
        return m_journal.outcome(seq, RecordState::failed, r.error().message);
    return {};  // no answer: the intent stands for "maybe"
}

Result<pools::VolumeInfo> Effects::create_volume(const std::string& disk, pools::Pool& pool,
                                                 const std::string& name, std::uint64_t size,
                                                 pools::ImageFormat format) {
    if (name.empty())
        return fail(ErrorCode::invalid_argument, "create_volume: no volume name chosen");
    auto seq = m_journal.intend(
        {.disk = disk, .effect = EffectKind::volume_created, .name = pool.url_of(name)});
    if (!seq) return fail(seq.error());
    auto created = pool.create(name, size, format);
    Result<void> r = created ? Result<void>{} : Result<void>(fail(created.error()));
    if (auto w = settle(*seq, r); !w) return fail(w.error());
    if (!created) return fail(created.error());
    return created;
}

Result<void> Effects::add_secret(const std::string& disk, const nlohmann::json& object) {
    auto seq = m_journal.intend(
        {.disk = disk, .effect = EffectKind::secret_added, .name = object.value("id", "")});
    if (!seq) return fail(seq.error());
    auto r = qmp::object_add(*m_env.client, object, m_env.step_timeout);
    if (auto w = settle(*seq, r); !w) return w;
    return r;
}

Result<void> Effects::add_node(const std::string& disk, const nlohmann::json& options) {
    auto seq = m_journal.intend(
        {.disk = disk, .effect = EffectKind::node_added, .name = options.value("node-name", "")});
    if (!seq) return fail(seq.error());
    auto r = qmp::blockdev_add(*m_env.client, options, m_env.step_timeout);
    if (auto w = settle(*seq, r); !w) return w;
    return r;
}

Result<std::uint64_t> Effects::daemon_starting(const std::string& disk, const std::string& socket) {
    return m_journal.intend(
        {.disk = disk, .effect = EffectKind::daemon_started, .name = socket, .socket = socket});
}

Result<void> Effects::daemon_outcome(std::uint64_t seq, int pid, const std::string& note) {
    if (pid > 0) return m_journal.outcome(seq, RecordState::done, note, pid);
    return m_journal.outcome(seq, RecordState::failed, note);
}

Result<void> Effects::start_mirror(const std::string& disk, const qmp::MirrorOptions& options) {
    auto seq = m_journal.intend(
        {.disk = disk, .effect = EffectKind::mirror_started, .name = options.job_id});
    if (!seq) return fail(seq.error());
    auto r = qmp::blockdev_mirror(*m_env.client, options, m_env.step_timeout);
    if (auto w = settle(*seq, r); !w) return w;
    return r;
}

Result<CompleteReply> Effects::send_complete(const std::string& disk, const std::string& job,
                                             std::string* error) {
    auto seq = m_journal.intend({.disk = disk, .effect = EffectKind::complete_sent, .name = job});
    if (!seq) return fail(seq.error());
    if (auto w = set_phase(disk, "complete_sent"); !w) return fail(w.error());
    auto r = qmp::block_job_complete(*m_env.client, job, m_env.step_timeout);
    if (r) return CompleteReply::accepted;  // outcome "done" once QMP shows the device moved
    *error = r.error().message;
    if (!is_definite_refusal(r.error())) return CompleteReply::unknown;
    if (auto w = m_journal.outcome(*seq, RecordState::failed, r.error().message); !w)
        return fail(w.error());
    if (auto w = set_phase(disk, "ready"); !w) return fail(w.error());
    return CompleteReply::refused;
}

Result<void> Effects::repoint(const std::string& disk, const nlohmann::json& format_options) {
    auto seq = m_journal.intend({.disk = disk,
                                 .effect = EffectKind::node_repointed,
                                 .name = format_options.value("node-name", "")});
    if (!seq) return fail(seq.error());
    auto reopen = m_env.client->execute("blockdev-reopen",
                                        {{"options", nlohmann::json::array({format_options})}},
                                        m_env.step_timeout);
    Result<void> r = reopen ? Result<void>{} : Result<void>(fail(reopen.error()));
    if (auto w = settle(*seq, r); !w) return w;
    return r;
}

Result<void> Effects::ended(const std::string& disk, EffectKind effect, const std::string& name,
                            const std::string& note) {
    std::vector<std::uint64_t> seqs;
    for (const Record* r : m_journal.job().records_of(disk))
        if (r->effect == effect && (name.empty() || r->name == name) &&
            (r->state == RecordState::intent || r->state == RecordState::done))
            seqs.push_back(r->seq);
    for (auto seq : seqs)
        if (auto w = m_journal.outcome(seq, RecordState::undone, note); !w) return w;
    return {};
}

Result<void> Effects::set_phase(const std::string& disk, const std::string& phase) {
    return m_journal.update([&](Job& job) {
        if (auto* d = job.disk(disk)) d->phase = phase;
    });
}

Result<UndoReport> Effects::rollback(const std::string& disk) {
    auto plan = undo_plan(m_journal.job(), disk);
    if (!plan) return fail(plan.error());
    auto report = run_undo(m_journal, *plan, m_env);
    if (!report) return report;
    if (report->left_behind.empty())
        if (auto w = set_phase(disk, "rolled_back"); !w) return fail(w.error());
    return report;
}

Result<UndoReport> Effects::detach_keep_volume(const std::string& disk) {
    auto plan = undo_plan(m_journal.job(), disk);
    if (!plan) return fail(plan.error());
    std::erase_if(*plan, [](const UndoStep& s) {
        return s.kind == UndoKind::remove_volume || s.kind == UndoKind::release_lun;
    });
    auto report = run_undo(m_journal, *plan, m_env);
    if (!report) return report;
    if (report->left_behind.empty())
        if (auto w = set_phase(disk, "copied"); !w) return fail(w.error());
    return report;
}

}  // namespace blockmig::jobs
