#include "disk_move.hpp"

#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "jobs/recover.hpp"
#include "pools/image_format.hpp"
#include "pools/pools.hpp"

namespace blockmig {

namespace {

using namespace std::chrono_literals;

// Room a qcow2 image may need beyond its virtual size (L2 tables, refcounts,
// header): an NBD export cannot grow, so the hop's file is extended up front
// (sparsely) to this size.
std::uint64_t qcow2_container_size(std::uint64_t virtual_size) {
    return virtual_size + virtual_size / 512 + (16ull << 20);
}

}  // namespace

std::string_view to_string(DiskMoveState state) {
    switch (state) {
        case DiskMoveState::planned:
            return "planned";
        case DiskMoveState::target_created:
            return "target_created";
        case DiskMoveState::attached:
            return "attached";
        case DiskMoveState::copying:
            return "copying";
        case DiskMoveState::ready:
            return "ready";
        case DiskMoveState::completing:
            return "completing";
        case DiskMoveState::pivoted:
            return "pivoted";
        case DiskMoveState::done:
            return "done";
        case DiskMoveState::copied:
            return "copied";
        case DiskMoveState::rolled_back:
            return "rolled_back";
    }
    return "unknown";
}

DiskMove::DiskMove(qmp::Client& client, SourceDisk source, TargetPlan plan,
                   const MoveOptions& options, ProgressSink& progress)
    : m_client(client),
      m_source(std::move(source)),
      m_plan(std::move(plan)),
      m_options(options),
      m_progress(progress) {}

void DiskMove::bind(jobs::Effects& effects, const jobs::DiskNames& names,
                    const std::filesystem::path& hop_dir, const std::filesystem::path& jobs_dir) {
    m_effects = &effects;
    m_prefix = names.prefix;
    m_job_id = names.block_job;
    m_hop_node = m_plan.network ? names.hop_node : "";
    m_hop_dir = hop_dir;
    m_jobs_dir = jobs_dir;
}

jobs::JobDisk DiskMove::journal_entry() const {
    jobs::JobDisk d;
    d.disk = m_source.id;
    d.prefix = m_prefix;
    d.block_job = m_job_id;
    d.source_node = m_source.node;
    d.source_protocol_nodes = m_source.protocol_nodes;
    d.source = m_source.location.empty() ? m_source.filename : m_source.location;
    d.target = m_plan.volume.empty() ? m_plan.pool->url() : target_url();
    d.target_format = std::string(pools::to_string(m_plan.format));
    d.top_node = m_top_node;
    d.hop_node = m_hop_node;
    nlohmann::json ids = nlohmann::json::array();
    for (const auto& secret : m_chain.secrets) ids.push_back(secret.value("id", ""));
    // The secrets themselves are never journaled: recover asks the pool.
    d.chain = {{"protocol", m_chain.protocol},
               {"format", m_chain.format},
               {"protocol_node", m_chain.protocol_node},
               {"secret_ids", ids}};
    d.phase = std::string(to_string(m_state));
    return d;
}

Result<void> DiskMove::phase(std::string_view name) {
    jobs::JobDisk entry = journal_entry();
    entry.phase = std::string(name);
    return m_effects->journal().update([&](jobs::Job& job) {
        if (auto* d = job.disk(m_source.id)) *d = entry;
    });
}

std::string DiskMove::target_url() const { return m_plan.pool->url_of(m_plan.volume); }

Result<void> DiskMove::start(qmp::CopyMode mode, std::uint64_t speed) {
    if (auto r = create_target(); !r) return r;
    if (auto r = attach_target(); !r) return r;
    return start_mirror(mode, speed);
}

Result<void> DiskMove::create_target() {
    // The source's allocation, for the sparseness check after the pivot.
    if (!m_source.location.empty()) {
        if (auto ref = pools::resolve_volume(m_source.location, m_options.pools); ref) {
            if (auto info = ref->pool->stat(ref->name); info)
                m_source_allocated = info->allocated_bytes;
        }
    }
    if (auto r = create_volume(); !r) return r;
    m_state = DiskMoveState::target_created;
    if (auto w = phase("target_created"); !w) return fail(w.error());

    if (shallow()) {
        auto volume = m_plan.pool->open(m_plan.volume, true);
        if (!volume) return fail(volume.error().with_context("open target volume"));
        auto backing_format = pools::parse_image_format(m_source.backing_format);
        if (!backing_format) return fail(backing_format.error().with_context("backing image"));
        if (auto r = pools::set_qcow2_backing(**volume, m_source.backing_filename, *backing_format);
            !r)
            return fail(r.error().with_context("record backing file in target"));
    }
    if (m_plan.network && m_plan.format == pools::ImageFormat::qcow2 &&
        m_plan.pool->type() == "nfs") {
        auto volume = m_plan.pool->open(m_plan.volume, true);
        if (!volume) return fail(volume.error().with_context("open target volume"));
        const std::uint64_t want = qcow2_container_size(m_source.virtual_size);
        const std::uint64_t have = (*volume)->size();
        if (have < want) {
            if (auto r = (*volume)->write_zeroes(have, want - have); !r)
                return fail(r.error().with_context("extend target volume for the NBD hop"));
        }
    }
    return {};
}

// Tries the chosen volume, or each candidate LUN, under a claim: two disks
// of this run or two concurrent runs never land on one volume.
Result<void> DiskMove::create_volume() {
    std::vector<std::string> names =
        m_plan.volume.empty() ? m_plan.candidates : std::vector<std::string>{m_plan.volume};
    Error last{ErrorCode::no_space,
               fmt::format("{}: no unused volume of at least {} MiB in {}", m_source.id,
                           m_source.virtual_size >> 20, m_plan.pool->url())};
    for (const auto& name : names) {
        auto claim = jobs::TargetClaim::take(m_jobs_dir, m_plan.pool->url_of(name));
        if (!claim) {
            last = claim.error();
            if (claim.error().code == ErrorCode::already_exists) continue;
            break;
        }
        auto created = m_effects->create_volume(m_source.id, *m_plan.pool, name,
                                                m_source.virtual_size, m_plan.format);
        if (created) {
            m_plan.volume = created->name;
            m_claim = std::move(*claim);
            return {};
        }
        last = created.error();
        if (created.error().code != ErrorCode::already_exists &&
            created.error().code != ErrorCode::no_space)
            break;
    }
    return fail(last.with_context("create target volume"));
}

Result<void> DiskMove::attach_target() {
    pools::QemuNodeOptions node_options;
    node_options.node_prefix = m_prefix;
    auto chain = m_plan.pool->describe_for_qemu(m_plan.volume, node_options);
    if (!chain) return fail(chain.error().with_context("describe target for QEMU"));
    m_chain = *chain;
    m_top_node = m_chain.format_node;
    // A LUN may be larger than the disk, and a mirror needs equal sizes: the
    // raw node shows exactly the disk's size (QEMU's raw "size" option).
    if (m_plan.format == pools::ImageFormat::raw) m_chain.format["size"] = m_source.virtual_size;
    // A shallow target shares the guest's backing node; naming it here also
    // keeps it across the blockdev-reopen after the pivot.
    if (shallow()) m_chain.format["backing"] = m_source.backing_node;

    // Journal the chain first: recover needs it to re-point the node.
    if (auto w = phase("target_created"); !w) return fail(w.error());
    const std::string& disk = m_source.id;
    nlohmann::json format_node = m_chain.format;
    if (m_plan.network) {
        std::error_code ec;
        std::filesystem::create_directories(m_hop_dir, ec);
        chmod(m_hop_dir.parent_path().c_str(), 0700);
        chmod(m_hop_dir.c_str(), 0700);
        auto seq = m_effects->daemon_starting(disk, (m_hop_dir / "nbd.sock").string());
        if (!seq) return fail(seq.error());
        auto hop =
            NbdHop::start(m_hop_dir, m_chain.protocol, m_chain.secrets, 15s, m_options.qemu_dir);
        if (auto w = m_effects->daemon_outcome(*seq, hop ? hop->pid() : -1,
                                               hop ? "" : hop.error().message);
            !w)
            return fail(w.error());
        if (!hop)
            return fail(
                hop.error().with_context(fmt::format("open {} in a storage daemon", target_url())));
        m_hop.emplace(std::move(*hop));
        if (auto r = m_effects->add_node(disk, m_hop->client_node(m_hop_node)); !r)
            return fail(r.error().with_context("blockdev-add NBD hop node"));
        format_node["file"] = m_hop_node;
    } else {
        for (const auto& secret : m_chain.secrets)
            if (auto r = m_effects->add_secret(disk, secret); !r)
                return fail(r.error().with_context("object-add secret"));
        if (auto r = m_effects->add_node(disk, m_chain.protocol); !r)
            return fail(r.error().with_context("blockdev-add target protocol node"));
    }
    if (auto r = m_effects->add_node(disk, format_node); !r)
        return fail(r.error().with_context("blockdev-add target format node"));
    m_state = DiskMoveState::attached;
    if (auto w = phase("attached"); !w) return fail(w.error());
    return {};
}

Result<void> DiskMove::start_mirror(qmp::CopyMode mode, std::uint64_t speed) {
    qmp::MirrorOptions mirror;
    mirror.job_id = m_job_id;
    mirror.device = m_source.node;
    mirror.target = m_top_node;
    mirror.sync = shallow() ? qmp::MirrorSync::top : qmp::MirrorSync::full;
    mirror.speed = speed;
    mirror.copy_mode = mode;
    // Keep the job after it ends so its error can be read, then dismiss it.
    mirror.auto_dismiss = false;
    if (auto r = m_effects->start_mirror(m_source.id, mirror); !r)
        return fail(r.error().with_context("blockdev-mirror"));
    m_state = DiskMoveState::copying;
    if (auto w = phase("copying"); !w) return fail(w.error());
    m_offset = 0;
    m_len = 0;
    m_last_progress = std::chrono::steady_clock::now();
    return {};
}

Result<void> DiskMove::leave_ready() {
    if (auto w = phase("ready"); !w) return fail(w.error());
    // The job, its nodes, the volume and the hop now outlive this process;
    // the journal describes them.
    if (m_hop) m_hop->detach();
    m_hop.reset();
    return {};
}

Result<void> DiskMove::observe(const std::vector<qmp::BlockJobInfo>& jobs) {
    for (const auto& job : jobs) {
        if (job.id != m_job_id) continue;
        if (job.status == "concluded") {
            std::string why = job.error.value_or("the job ended before it was ready");
            (void)qmp::job_dismiss(m_client, m_job_id);
            return fail(ErrorCode::io_error,
                        fmt::format("mirror to {} failed: {}", target_url(), why));
        }
        // A job that is not busy is sleeping on its rate limit (after a
        // burst of buf-size bytes it may sleep for buf-size / speed): that is
        // throttling, not a stall. A job stuck on a dead target stays busy.
        if (job.offset > m_offset || !job.busy) m_last_progress = std::chrono::steady_clock::now();
        m_offset = job.offset;
        m_len = job.len;
        // A QEMU that cannot report it cannot switch in place either
        // (both arrived in 8.2): then READY is all there is to wait for.
        m_actively_synced = job.actively_synced.value_or(true);
        if ((job.ready || job.status == "ready") && m_state != DiskMoveState::ready) {
            m_state = DiskMoveState::ready;
            if (auto w = phase("ready"); !w) return fail(w.error());
        }
        return {};
    }
    return fail(ErrorCode::invalid_state,
                fmt::format("mirror job {} disappeared from QEMU", m_job_id));
}

Result<void> DiskMove::set_speed(std::uint64_t speed) {
    return qmp::block_job_set_speed(m_client, m_job_id, speed);
}

Result<void> DiskMove::restart_write_blocking(std::uint64_t speed) {
    if (auto r = qmp::block_job_cancel(m_client, m_job_id, true); !r)
        return fail(r.error().with_context("cancel background mirror"));
    std::optional<std::string> error;
    if (auto r = wait_job_gone(10s, &error); !r) {
        kill_hop();  // a mirror that cannot even cancel is stuck on its target
        return fail(ErrorCode::timeout,
                    fmt::format("{} stopped answering while switching copy mode", target_url()));
    }
    if (auto w = m_effects->ended(m_source.id, jobs::EffectKind::mirror_started, m_job_id,
                                  "cancelled to restart in write-blocking mode");
        !w)
        return fail(w.error());
    m_state = DiskMoveState::attached;
    m_copied_by_earlier_jobs += m_offset;
    m_guest_written_at_switch = guest_written();
    if (auto r = start_mirror(qmp::CopyMode::write_blocking, speed); !r) return r;
    m_switched = true;
    return {};
}

Result<void> DiskMove::change_to_write_blocking() {
    // qapi/block-core.json, BlockJobChangeOptionsMirror: only
    // background -> write-blocking is allowed; the job keeps its bitmap and
    // progress, so what was copied stays copied.
    if (auto r =
            qmp::block_job_change(m_client, m_job_id, "mirror", {{"copy-mode", "write-blocking"}});
        !r)
        return fail(r.error().with_context("block-job-change copy-mode=write-blocking"));
    m_guest_written_at_switch = guest_written();
    m_switched = true;
    m_switched_in_place = true;
    m_actively_synced = false;
    return {};
}

std::optional<std::uint64_t> DiskMove::guest_written() const {
    auto stats = qmp::query_blockstats(m_client);
    if (!stats) return std::nullopt;
    auto named = [&](const std::optional<std::string>& name) {
        return name && !name->empty() &&
               std::find(m_source.names.begin(), m_source.names.end(), *name) !=
                   m_source.names.end();
    };
    for (const auto& s : *stats)
        if (named(s.device) || named(s.qdev)) return s.wr_bytes;
    return std::nullopt;
}

void DiskMove::count_forwarded_writes() {
    if (!m_guest_written_at_switch) return;
    if (auto now = guest_written(); now && *now >= *m_guest_written_at_switch)
        m_guest_bytes_forwarded = *now - *m_guest_written_at_switch;
    m_guest_written_at_switch.reset();
}

Result<void> DiskMove::wait_job_gone(std::chrono::milliseconds timeout,
                                     std::optional<std::string>* error) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto jobs = qmp::query_block_jobs(m_client);
        if (!jobs) return fail(jobs.error().with_context("query-block-jobs"));
        bool present = false;
        for (const auto& job : *jobs) {
            if (job.id != m_job_id) continue;
            present = true;
            if (job.status == "concluded") {
                *error = job.error;
                (void)qmp::job_dismiss(m_client, m_job_id);
                return {};
            }
        }
        if (!present) return {};
        if (std::chrono::steady_clock::now() > deadline)
            return fail(
                ErrorCode::timeout,
                fmt::format("job {} did not end within {} s", m_job_id,
                            std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
        std::this_thread::sleep_for(50ms);
    }
}

Result<void> DiskMove::wait_in_sync(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto jobs = qmp::query_block_jobs(m_client);
        if (!jobs) return fail(jobs.error());
        for (const auto& job : *jobs)
            if (job.id == m_job_id && job.ready && job.offset == job.len && !job.busy) return {};
        if (std::chrono::steady_clock::now() > deadline)
            return fail(
                ErrorCode::timeout,
                fmt::format("{}: mirror did not catch up with the paused guest", m_source.id));
        std::this_thread::sleep_for(50ms);
    }
}

Result<void> DiskMove::pivot() {
    count_forwarded_writes();
    std::string error;
    auto reply = m_effects->send_complete(m_source.id, m_job_id, &error);
    if (!reply) return fail(reply.error());
    if (*reply == jobs::CompleteReply::refused)
        // QEMU refused: nothing switched, the ordinary rollback applies.
        return fail(ErrorCode::io_error, "block-job-complete: " + error);
    // From here on nothing is undone until QMP says where the device is.
    m_state = DiskMoveState::completing;
    if (*reply == jobs::CompleteReply::accepted) {
        std::optional<std::string> job_error;
        (void)wait_job_gone(120s, &job_error);
    }
    auto out = jobs::recover_disk(m_effects->journal(), m_source.id, m_effects->env(),
                                  jobs::Intent::as_journaled);
    if (!out) return fail(out.error());
    // recover_disk stopped the hop (or left it running for the guest).
    if (m_hop) m_hop->detach();
    m_hop.reset();
    if (out->direction == jobs::Direction::undo && out->settled) {
        m_state = DiskMoveState::rolled_back;
        return fail(ErrorCode::io_error,
                    fmt::format("pivot to {} failed ({}); the guest stays on its source",
                                target_url(), error.empty() ? out->reason : error));
    }
    if (out->direction != jobs::Direction::forward || !out->settled) {
        std::string left;
        for (const auto& l : out->left_behind) left += "; " + l;
        return fail(
            ErrorCode::invalid_state,
            fmt::format("{}: block-job-complete was sent{}; {}{}. Nothing was deleted; "
                        "run `{}`",
                        m_source.id, error.empty() ? "" : " (" + error + ")", out->reason, left,
                        jobs::recover_command(m_jobs_dir, m_effects->journal().job().id)));
    }
    m_state = DiskMoveState::done;
    m_progress.event("pivoted",
                     {{"disk", m_source.id}, {"node", m_top_node}, {"target", target_url()}},
                     fmt::format("{}: pivoted to {}", m_source.id, target_url()));
    for (const auto& a : out->left_behind)
        m_progress.event("warning", {{"disk", m_source.id}, {"message", a}},
                         fmt::format("{}: warning: {}", m_source.id, a));
    if (auto info = m_plan.pool->stat(m_plan.volume); info)
        m_target_allocated = info->allocated_bytes;
    return {};
}

Result<void> DiskMove::finish_copy_only() {
    count_forwarded_writes();
    // A soft cancel of a READY mirror does a final sync and detaches the
    // target without switching the device: a consistent copy.
    if (auto r = qmp::block_job_cancel(m_client, m_job_id, false); !r)
        return fail(r.error().with_context("block-job-cancel"));
    std::optional<std::string> error;
    if (auto r = wait_job_gone(60s, &error); !r) return r;
    if (error)
        return fail(ErrorCode::io_error,
                    fmt::format("final sync to {} failed: {}", target_url(), *error));
    // Detach the target (closing it flushes qcow2 metadata); keep the volume.
    auto detached = m_effects->detach_keep_volume(m_source.id);
    if (m_hop) m_hop->detach();  // the undo steps stopped it
    m_hop.reset();
    if (!detached) return fail(detached.error());
    for (const auto& l : detached->left_behind)
        m_progress.event("warning", {{"disk", m_source.id}, {"message", l}},
                         fmt::format("{}: warning: {}", m_source.id, l));
    if (auto info = m_plan.pool->stat(m_plan.volume); info)
        m_target_allocated = info->allocated_bytes;
    m_state = DiskMoveState::copied;
    return {};
}

void DiskMove::rollback() {
    if (!m_effects) return;  // never started
    // The same undo steps a `blockmig recover` would replay (jobs/undo.hpp).
    auto report = m_effects->rollback(m_source.id);
    if (m_hop) m_hop->detach();  // stopped by the undo (or left for the guest)
    m_hop.reset();
    if (!report) {
        m_progress.event(
            "warning", {{"disk", m_source.id}, {"message", report.error().message}},
            fmt::format("{}: warning: rollback: {}", m_source.id, report.error().message));
        return;
    }
    for (const auto& l : report->left_behind)
        m_progress.event("warning", {{"disk", m_source.id}, {"message", l}},
                         fmt::format("{}: warning: {}", m_source.id, l));
    m_state = DiskMoveState::rolled_back;
}

DiskMoveReport DiskMove::report() const {
    return DiskMoveReport{
        .disk = m_source.id,
        .source = m_source.location.empty() ? m_source.filename : m_source.location,
        .target = target_url(),
        .target_node = m_top_node,
        .source_allocated = m_source_allocated,
        .target_allocated = m_target_allocated,
        .pivoted = m_state == DiskMoveState::done,
        .verified = false,
        .switched_to_write_blocking = m_switched,
        .switched_in_place = m_switched_in_place,
        .bytes_copied = m_copied_by_earlier_jobs + m_offset,
        .guest_bytes_forwarded = m_guest_bytes_forwarded};
}

}  // namespace blockmig
