#include "recover.hpp"

#include <fmt/core.h>

#include <algorithm>

#include "names.hpp"
#include "pools/address.hpp"

namespace blockmig::jobs {

using nlohmann::json;

namespace {

// "/machine/peripheral/disk0/virtio-backend" -> "disk0"
std::string qdev_id(const std::string& qdev) {
    constexpr std::string_view prefix = "/machine/peripheral/";
    if (!qdev.starts_with(prefix)) return qdev;
    auto rest = qdev.substr(prefix.size());
    return rest.substr(0, rest.find('/'));
}

bool live(const Record& r) {
    return r.state == RecordState::intent || r.state == RecordState::done ||
           r.state == RecordState::left_behind;
}

bool has_left_behind(const Job& job, const std::string& disk) {
    for (const Record* r : job.records_of(disk))
        if (r->state == RecordState::left_behind) return true;
    return false;
}

bool before_complete(std::string_view phase) {
    return phase == "planned" || phase == "target_created" || phase == "attached" ||
           phase == "copying" || phase == "ready";
}

Decision wait(std::string reason) { return {Direction::wait, std::move(reason)}; }

// Marks every live record of `disk` with `effect` (and `name`, if given) as `state`.
Result<void> settle_records(Journal& journal, const std::string& disk, EffectKind effect,
                            const std::string& name, RecordState state, const std::string& note) {
    std::vector<std::uint64_t> seqs;
    for (const Record* r : journal.job().records_of(disk))
        if (r->effect == effect && live(*r) && (name.empty() || r->name == name))
            seqs.push_back(r->seq);
    for (auto seq : seqs)
        if (auto r = journal.outcome(seq, state, note); !r) return r;
    return {};
}

Result<void> set_phase(Journal& journal, const std::string& disk, std::string phase) {
    return journal.update([&](Job& job) {
        if (auto* d = job.disk(disk)) d->phase = std::move(phase);
    });
}

class DiskRecoverer {
  public:
    DiskRecoverer(Journal& journal, const JobDisk& disk, UndoEnv& env, DiskRecovery& out)
        : m_journal(journal), m_disk(disk), m_env(env), m_out(out) {}

    Result<void> forward(QemuNow now) {
        const DeviceNow& dev = now.devices[m_disk.disk];
        if (dev.node == m_disk.source_node) {
            if (auto r = complete(); !r) return r;
            if (m_out.direction == Direction::wait) return {};
            auto again = observe_qemu(*m_env.client, m_journal.job(), m_env.step_timeout);
            if (!again) return note_wait("after block-job-complete: " + again.error().message);
            now = std::move(*again);
            if (now.devices[m_disk.disk].node != m_disk.top_node)
                return note_wait(fmt::format("after block-job-complete the device is on node {}",
                                             now.devices[m_disk.disk].node));
        }
        if (auto r = set_phase(m_journal, m_disk.disk, "pivoted"); !r) return r;
        if (auto r = settle_records(m_journal, m_disk.disk, EffectKind::complete_sent, "",
                                    RecordState::done, "QEMU shows the device on the target");
            !r)
            return r;
        m_out.actions.push_back(fmt::format("the guest runs on {}", m_disk.target));
        if (auto r = leave_hop(now); !r) return r;
        if (m_out.direction == Direction::wait) return {};
        release_source(now);
        if (const auto* job = now.job(m_disk.block_job); job && job->status == "concluded")
            (void)qmp::job_dismiss(*m_env.client, m_disk.block_job, m_env.step_timeout);
        if (auto r = set_phase(m_journal, m_disk.disk, "done"); !r) return r;
        m_out.settled = true;
        return {};
    }

    Result<void> undo(bool complete_failed) {
        if (complete_failed) {
            if (auto r = settle_records(m_journal, m_disk.disk, EffectKind::complete_sent, "",
                                        RecordState::failed, "QEMU kept the device on its source");
                !r)
                return r;
        }
        auto plan = undo_plan(m_journal.job(), m_disk.disk);
        if (!plan) return note_wait(plan.error().message);
        auto report = run_undo(m_journal, *plan, m_env);
        if (!report) return fail(report.error());
        m_out.actions.insert(m_out.actions.end(), report->done.begin(), report->done.end());
        m_out.left_behind = report->left_behind;
        if (m_out.left_behind.empty()) {
            if (auto r = set_phase(m_journal, m_disk.disk, "rolled_back"); !r) return r;
            m_out.settled = true;
        }
        return {};
    }

  private:
    Result<void> note_wait(std::string why) {
        m_out.direction = Direction::wait;
        m_out.reason = std::move(why);
        return {};
    }

    // block-job-complete on a READY mirror, journaled, then wait (bounded)
    // for the job to end.
    Result<void> complete() {
        auto seq = m_journal.intend(
            {.disk = m_disk.disk, .effect = EffectKind::complete_sent, .name = m_disk.block_job});
        if (!seq) return fail(seq.error());
        auto r = qmp::block_job_complete(*m_env.client, m_disk.block_job, m_env.step_timeout);
        if (!r) {
            // Refused (or no answer): QEMU decides nothing without the
            // command, but a lost reply is possible, so only a definite
            // refusal counts as failed.
            if (r.error().code == ErrorCode::qmp_command_failed)
                (void)m_journal.outcome(*seq, RecordState::failed, r.error().message);
            return note_wait("block-job-complete: " + r.error().message);
        }
        m_out.actions.push_back(fmt::format("sent block-job-complete to {}", m_disk.block_job));
        const auto deadline = deadline_after(*m_env.clock, m_env.step_timeout * 4);
        for (;;) {
            auto jobs = qmp::query_block_jobs(*m_env.client, m_env.step_timeout);
            if (!jobs) return note_wait("after block-job-complete: " + jobs.error().message);
            auto it = std::find_if(jobs->begin(), jobs->end(),
                                   [&](auto& j) { return j.id == m_disk.block_job; });
            if (it == jobs->end()) return {};
            if (it->status == "concluded") {
                (void)qmp::job_dismiss(*m_env.client, m_disk.block_job, m_env.step_timeout);
                if (it->error) return note_wait("the pivot failed: " + *it->error);
                return {};
            }
            if (m_env.clock->now() >= deadline)
                return note_wait(
                    fmt::format("job {} is still in status {} after "
                                "block-job-complete",
                                m_disk.block_job, it->status));
            m_env.clock->sleep_for(m_env.poll_interval);
        }
    }

    // The guest's format node leaves the NBD hop for a direct node on the
    // same volume; then the hop node and its daemon go.
    Result<void> leave_hop(const QemuNow& now) {
        const json chain = m_disk.chain.is_object() ? m_disk.chain : json::object();
        const std::string proto = chain.value("protocol_node", "");
        if (!m_disk.hop_node.empty() && now.nodes.contains(m_disk.hop_node)) {
            if (proto.empty() || !chain.contains("protocol") || !chain.contains("format"))
                return note_wait("the journal lacks the target's node chain");
            if (!now.nodes.contains(proto)) {
                if (auto r = add_direct_node(chain); !r) return r;
                if (m_out.direction == Direction::wait) return {};
            }
            auto seq = m_journal.intend({.disk = m_disk.disk,
                                         .effect = EffectKind::node_repointed,
                                         .name = m_disk.top_node});
            if (!seq) return fail(seq.error());
            auto reopen = m_env.client->execute("blockdev-reopen",
                                                {{"options", json::array({chain["format"]})}},
                                                m_env.step_timeout);
            if (!reopen) return note_wait("blockdev-reopen: " + reopen.error().message);
            if (auto r = m_journal.outcome(*seq, RecordState::done); !r) return r;
            m_out.actions.push_back(fmt::format("re-pointed {} at {}", m_disk.top_node, proto));
            UndoStep del{
                .kind = UndoKind::blockdev_del, .disk = m_disk.disk, .name = m_disk.hop_node};
            auto out = run_undo_step(del, m_env);
            if (!out.done) return note_wait(out.message);
            m_out.actions.push_back(out.message);
            if (auto r = settle_records(m_journal, m_disk.disk, EffectKind::node_added,
                                        m_disk.hop_node, RecordState::undone, out.message);
                !r)
                return r;
        }
        // The daemon goes once no node of the guest reaches it.
        for (const Record* r : m_journal.job().records_of(m_disk.disk)) {
            if (r->effect != EffectKind::daemon_started || !live(*r)) continue;
            UndoStep stop{.kind = UndoKind::stop_daemon,
                          .disk = m_disk.disk,
                          .name = r->socket,
                          .pid = r->pid,
                          .socket = r->socket,
                          .seq = r->seq};
            auto out = run_undo_step(stop, m_env);
            if (!out.done) {
                m_out.left_behind.push_back(out.message);
                return {};
            }
            m_out.actions.push_back(out.message);
            if (auto w = m_journal.outcome(stop.seq, RecordState::undone, out.message); !w)
                return w;
            remove_hop_log(r->socket);
            break;
        }
        return {};
    }

    // The hop ended with the guest on its target: its log explains nothing
    // anyone needs. A hop that failed or was undone keeps it (the error
    // quotes only its last line; the rest is for whoever debugs it).
    void remove_hop_log(const std::string& socket) {
        std::error_code ec;
        std::filesystem::remove(hop_log_path(socket), ec);
    }

    Result<void> add_direct_node(const json& chain) {
        // Secrets are not journaled: ask the pool for them again.
        if (!chain.value("secret_ids", json::array()).empty()) {
            auto ref = m_env.resolve ? m_env.resolve(m_disk.target)
                                     : pools::resolve_volume(m_disk.target, {});
            if (!ref) return note_wait("target pool: " + ref.error().message);
            pools::QemuNodeOptions options;
            options.node_prefix = m_disk.prefix;
            auto fresh = ref->pool->describe_for_qemu(ref->name, options);
            if (!fresh) return note_wait("target pool: " + fresh.error().message);
            for (const auto& secret : fresh->secrets) {
                auto seq = m_journal.intend({.disk = m_disk.disk,
                                             .effect = EffectKind::secret_added,
                                             .name = secret.value("id", "")});
                if (!seq) return fail(seq.error());
                auto r = qmp::object_add(*m_env.client, secret, m_env.step_timeout);
                if (!r) return note_wait("object-add: " + r.error().message);
                if (auto w = m_journal.outcome(*seq, RecordState::done); !w) return w;
            }
        }
        auto seq = m_journal.intend({.disk = m_disk.disk,
                                     .effect = EffectKind::node_added,
                                     .name = chain.value("protocol_node", "")});
        if (!seq) return fail(seq.error());
        auto r = qmp::blockdev_add(*m_env.client, chain["protocol"], m_env.step_timeout);
        if (!r) return note_wait("blockdev-add direct node: " + r.error().message);
        return m_journal.outcome(*seq, RecordState::done);
    }

    // Nodes made with -blockdev stay open after a pivot; the old storage is
    // only really free once they are deleted. Failures are harmless (a node
    // in use cannot be deleted; -drive nodes are already gone).
    void release_source(const QemuNow& now) {
        std::vector<std::string> names{m_disk.source_node};
        names.insert(names.end(), m_disk.source_protocol_nodes.begin(),
                     m_disk.source_protocol_nodes.end());
        for (const auto& name : names)
            if (now.nodes.contains(name) &&
                qmp::blockdev_del(*m_env.client, name, m_env.step_timeout))
                m_out.actions.push_back(fmt::format("released old node {}", name));
    }

    Journal& m_journal;
    JobDisk m_disk;
    UndoEnv& m_env;
    DiskRecovery& m_out;
};

}  // namespace

const qmp::BlockJobInfo* QemuNow::job(std::string_view id) const {
    for (const auto& j : jobs)
        if (j.id == id) return &j;
    return nullptr;
}

Result<QemuNow> observe_qemu(qmp::Client& client, const Job& job, qmp::Milliseconds timeout) {
    QemuNow now;
    auto blocks = qmp::query_block(client, timeout);
    if (!blocks) return fail(blocks.error().with_context("query-block"));
    auto nodes = qmp::query_named_block_nodes(client, true, timeout);
    if (!nodes) return fail(nodes.error().with_context("query-named-block-nodes"));
    auto jobs = qmp::query_block_jobs(client, timeout);
    if (!jobs) return fail(jobs.error().with_context("query-block-jobs"));
    for (const auto& n : *nodes) now.nodes.insert(n.node_name);
    now.jobs = std::move(*jobs);
    now.qemu_pid = client.peer_pid();
    for (const auto& disk : job.disks) {
        DeviceNow dev;
        for (const auto& b : *blocks) {
            // Any name QEMU gives the device: drive id, qdev id, qdev path.
            const bool match =
                (b.qdev && (qdev_id(*b.qdev) == disk.disk || *b.qdev == disk.disk)) ||
                (!b.device.empty() && b.device == disk.disk) ||
                (b.inserted && b.inserted->node_name == disk.disk);
            if (!match || !b.inserted) continue;
            dev = {true, b.inserted->node_name, b.inserted->file};
        }
        now.devices[disk.disk] = dev;
    }
    return now;
}

std::string_view to_string(Direction direction) {
    switch (direction) {
        case Direction::nothing:
            return "nothing";
        case Direction::forward:
            return "forward";
        case Direction::undo:
            return "undo";
        case Direction::wait:
            return "wait";
    }
    return "wait";
}

std::string journal_phase(const Job& job, const JobDisk& disk) {
    if (disk.phase == "pivoted" || disk.phase == "done") return disk.phase;
    for (const Record* r : job.records_of(disk.disk))
        if (r->effect == EffectKind::complete_sent &&
            (r->state == RecordState::intent || r->state == RecordState::done))
            return "complete_sent";
    return disk.phase;
}

Decision decide(const Job& job, const JobDisk& disk, const QemuNow* now, Intent intent) {
    const std::string phase = journal_phase(job, disk);
    if (disk.settled(job) && !has_left_behind(job, disk.disk))
        return {Direction::nothing, fmt::format("already {}", phase)};
    if (!now)
        return wait("QMP does not answer: nothing is deleted until QEMU can say where the disk is");
    auto it = now->devices.find(disk.disk);
    if (it == now->devices.end() || !it->second.present)
        return wait(fmt::format("the guest has no device {} now: nothing is touched", disk.disk));
    const DeviceNow& dev = it->second;
    const bool on_target = !disk.top_node.empty() && dev.node == disk.top_node;
    const bool on_source = dev.node == disk.source_node;
    const qmp::BlockJobInfo* job_now = now->job(disk.block_job);

    if (phase == "rolled_back" || phase == "copied")
        return {Direction::undo, "retry what was left behind"};
    // Once block-job-complete was sent the target may have become the
    // guest's disk; a QEMU restarted since then started from whatever its
    // command line names, and its node graph says nothing about where the
    // newest data is. Nothing is deleted: a person must look.
    if (!before_complete(phase) && now->restarted(job))
        return wait(fmt::format(
            "QEMU was restarted (pid {} now, {} when the job ran) after block-job-complete "
            "was sent: {} may hold the guest's newest data; nothing is deleted. Check which "
            "image the guest runs from",
            *now->qemu_pid, job.guest.pid, disk.target));
    if (phase == "pivoted" || phase == "done") {
        if (on_target) return {Direction::forward, "the guest runs on the target: finish the move"};
        return wait(fmt::format(
            "the journal says pivoted, but the device is on node {}: left as is", dev.node));
    }
    if (phase == "complete_sent") {
        if (on_target)
            return {Direction::forward,
                    "block-job-complete was sent and QEMU shows the device on the target"};
        if (!on_source)
            return wait(
                fmt::format("the device is on node {}, neither source nor target", dev.node));
        if (!job_now || job_now->status == "concluded")
            return {Direction::undo,
                    "block-job-complete was sent but the job ended with the device on its source"};
        if (job_now->status == "ready" && intent != Intent::abort)
            return {Direction::forward,
                    "the mirror is READY and has not switched yet: complete it"};
        return wait(
            fmt::format("the mirror is in status {} after block-job-complete; run recover "
                        "again once it has ended",
                        job_now->status));
    }
    if (!before_complete(phase)) return wait(fmt::format("unknown phase '{}'", phase));
    if (on_target) return {Direction::forward, "QEMU shows the device on the target already"};
    if (!on_source)
        return wait(
            fmt::format("the device is on node {}, not on its source node {}: nothing is "
                        "undone",
                        dev.node, disk.source_node));
    const bool ready_now = job_now && job_now->status == "ready";
    const bool want_pivot =
        intent == Intent::pivot || (intent == Intent::as_journaled && job.finish == Finish::pivot);
    if (want_pivot && phase == "ready" && ready_now)
        return {Direction::forward, "the mirror is READY and the job was to pivot"};
    if (intent == Intent::pivot)
        return wait(
            fmt::format("the mirror is not READY (status {}): cannot pivot; `blockmig "
                        "recover` undoes the move",
                        job_now ? job_now->status : "gone"));
    return {Direction::undo, "the guest runs on its source: undo the move"};
}

Result<DiskRecovery> recover_disk(Journal& journal, const std::string& disk_id, UndoEnv& env,
                                  Intent intent) {
    DiskRecovery out;
    out.disk = disk_id;
    const JobDisk* found = journal.job().disk(disk_id);
    if (!found)
        return fail(ErrorCode::not_found,
                    fmt::format("job {} has no disk {}", journal.job().id, disk_id));
    const JobDisk disk = *found;
    std::optional<QemuNow> now;
    std::string unreachable = "no QMP connection";
    if (env.client && env.client->state() == qmp::State::running) {
        auto observed = observe_qemu(*env.client, journal.job(), env.step_timeout);
        if (observed)
            now = std::move(*observed);
        else
            unreachable = observed.error().message;
    }
    out.phase = journal_phase(journal.job(), disk);
    Decision d = decide(journal.job(), disk, now ? &*now : nullptr, intent);
    out.direction = d.direction;
    out.reason = d.reason;
    if (!now && d.direction == Direction::wait) out.reason += " (" + unreachable + ")";
    DiskRecoverer r(journal, disk, env, out);
    Result<void> done;
    if (d.direction == Direction::forward)
        done = r.forward(*now);
    else if (d.direction == Direction::undo)
        done = r.undo(out.phase == "complete_sent");
    else if (d.direction == Direction::nothing)
        out.settled = true;
    if (!done) return fail(done.error());
    return out;
}

Result<RecoveryReport> recover_job(Journal& journal, UndoEnv& env, Intent intent,
                                   const std::filesystem::path& state_dir,
                                   const std::vector<std::string>& only_disks) {
    RecoveryReport report;
    report.job = journal.job().id;
    // A guest the job paused (move --verify) whose blockmig died: resume it
    // first, whatever happens to the disks (the pause only guarded a compare).
    if (journal.job().guest_paused && env.client && qmp::cont(*env.client, env.step_timeout))
        if (auto r = journal.update([](Job& j) { j.guest_paused = false; }); !r)
            return fail(r.error());
    std::vector<std::string> disks;
    for (const auto& d : journal.job().disks)
        if (only_disks.empty() ||
            std::find(only_disks.begin(), only_disks.end(), d.disk) != only_disks.end())
            disks.push_back(d.disk);
    // Newest disk first, as a live rollback would.
    for (auto it = disks.rbegin(); it != disks.rend(); ++it) {
        auto out = recover_disk(journal, *it, env, intent);
        if (!out) return fail(out.error());
        report.disks.insert(report.disks.begin(), std::move(*out));
    }
    const bool all_settled = std::all_of(report.disks.begin(), report.disks.end(), [](auto& d) {
        return d.settled && d.left_behind.empty();
    });
    if (all_settled && !journal.job().needs_recovery()) {
        if (auto r = journal.remove(); !r) return fail(r.error());
        report.journal_removed = true;
    } else {
        report.next_step = recover_command(state_dir, report.job);
    }
    return report;
}

}  // namespace blockmig::jobs
