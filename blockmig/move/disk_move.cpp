#include "disk_move.hpp"

#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "jobs/luns.hpp"
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
                   const MoveOptions& options, ProgressSink& progress, Clock& clock)
    : m_client(client),
      m_source(std::move(source)),
      m_plan(std::move(plan)),
      m_options(options),
      m_progress(progress),
      m_clock(clock) {}

void DiskMove::bind(jobs::Effects& effects, const jobs::DiskNames& names,
                    const std::filesystem::path& hop_dir, const std::filesystem::path& jobs_dir) {
    m_effects = &effects;
    m_names = names;
    m_hop_dir = hop_dir;
    m_jobs_dir = jobs_dir;
    mirror::MirrorSpec spec{.disk = m_source.id,
                            .source_node = m_source.node,
                            .device_names = m_source.names,
                            .names = names,
                            .sync = shallow() ? qmp::MirrorSync::top : qmp::MirrorSync::full,
                            .backing_node = shallow() ? m_source.backing_node : std::string{},
                            .stall_timeout = m_options.stall_timeout};
    m_mirror.emplace(m_client, effects, std::move(spec), m_clock);
}

DiskMoveState DiskMove::state() const {
    if (!m_mirror) return m_state;
    switch (m_mirror->state()) {
        case mirror::MirrorState::idle:
            return m_state;
        case mirror::MirrorState::attached:
            return DiskMoveState::attached;
        case mirror::MirrorState::copying:
            return DiskMoveState::copying;
        case mirror::MirrorState::ready:
            return DiskMoveState::ready;
        case mirror::MirrorState::completing:
            return DiskMoveState::completing;
        case mirror::MirrorState::pivoted:
            return DiskMoveState::done;
        case mirror::MirrorState::synced:
            return DiskMoveState::ready;
        case mirror::MirrorState::detached:
            return DiskMoveState::copied;
        case mirror::MirrorState::rolled_back:
            return DiskMoveState::rolled_back;
    }
    return m_state;
}

jobs::JobDisk DiskMove::journal_entry() const {
    jobs::JobDisk d;
    d.disk = m_source.id;
    d.prefix = m_names.prefix;
    d.block_job = m_names.block_job;
    d.source_node = m_source.node;
    d.source_protocol_nodes = m_source.protocol_nodes;
    d.source = m_source.location.empty() ? m_source.filename : m_source.location;
    d.target = m_plan.volume.empty() ? m_plan.pool->url() : target_url();
    d.target_format = std::string(pools::to_string(m_plan.format));
    if (m_mirror) m_mirror->journal_fields(d);
    d.phase = std::string(to_string(state()));
    return d;
}

void DiskMove::stage_phase(std::string_view name) {
    jobs::JobDisk entry = journal_entry();
    entry.phase = std::string(name);
    m_effects->journal().stage([&](jobs::Job& job) {
        if (auto* d = job.disk(m_source.id)) *d = entry;
    });
}

std::string DiskMove::target_url() const { return m_plan.pool->url_of(m_plan.volume); }

Result<void> DiskMove::start(qmp::CopyMode mode, std::uint64_t speed) {
    if (auto r = create_target(); !r) return r;
    if (auto r = attach_target(); !r) return r;
    return m_mirror->start(mode, speed);
}

Result<void> DiskMove::create_target() {
    // The source's allocation, for the sparseness check after the pivot.
    if (!m_source.location.empty()) {
        if (auto ref = m_options.pool_opener.resolve_volume(m_source.location); ref) {
            if (auto info = ref->pool->stat(ref->name); info)
                m_source_allocated = info->allocated_bytes;
        }
    }
    if (auto r = create_volume(); !r) return r;
    m_state = DiskMoveState::target_created;
    // Durable with the next intent: until then the volume's record alone
    // gets it deleted, in either phase.
    stage_phase("target_created");

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
    auto made = jobs::claim_and_create(*m_effects, m_source.id, *m_plan.pool, names, m_jobs_dir,
                                       m_source.virtual_size, m_plan.format, m_source.id);
    if (!made) return fail(made.error().with_context("create target volume"));
    m_plan.volume = made->info.name;
    m_plan.volume_size = made->info.virtual_size;
    m_claim = std::move(made->claim);
    return {};
}

Result<void> DiskMove::attach_target() {
    pools::QemuNodeOptions node_options;
    node_options.node_prefix = m_names.prefix;
    auto chain = m_plan.pool->describe_for_qemu(m_plan.volume, node_options);
    if (!chain) return fail(chain.error().with_context("describe target for QEMU"));
    // A LUN may be larger than the disk, and a mirror needs equal sizes: the
    // raw node then shows exactly the disk's size (QEMU's raw "size" option).
    // Only then: the option makes QEMU name the image json:{...} instead of
    // its URL or path, which users read and a later move resolves.
    if (m_plan.format == pools::ImageFormat::raw && m_plan.volume_size != m_source.virtual_size)
        chain->format["size"] = m_source.virtual_size;
    auto target = m_plan.network ? mirror::Target::hop(std::move(*chain), target_url(), m_hop_dir,
                                                       m_options.qemu_dir)
                                 : mirror::Target::volume(std::move(*chain), target_url());
    return m_mirror->attach(std::move(target));
}

void DiskMove::warn(const std::vector<std::string>& messages) {
    for (const auto& l : messages)
        m_progress.event("warning", {{"disk", m_source.id}, {"message", l}},
                         fmt::format("{}: warning: {}", m_source.id, l));
}

Result<void> DiskMove::pivot() {
    auto pivoted = m_mirror->pivot(m_jobs_dir);
    if (!pivoted) return fail(pivoted.error());
    m_progress.event(
        "pivoted",
        {{"disk", m_source.id}, {"node", m_mirror->top_node()}, {"target", target_url()}},
        fmt::format("{}: pivoted to {}", m_source.id, target_url()));
    warn(pivoted->warnings);
    if (auto info = m_plan.pool->stat(m_plan.volume); info)
        m_target_allocated = info->allocated_bytes;
    return {};
}

Result<void> DiskMove::finish_copy_only() {
    if (auto r = m_mirror->soft_cancel(); !r) return r;
    // Detach the target (closing it flushes qcow2 metadata); keep the volume.
    auto detached = m_mirror->detach();
    if (!detached) return fail(detached.error());
    warn(detached->left_behind);
    if (auto info = m_plan.pool->stat(m_plan.volume); info)
        m_target_allocated = info->allocated_bytes;
    return {};
}

void DiskMove::rollback() {
    if (!m_mirror) return;  // never started
    auto report = m_mirror->abort();
    if (!report) {
        m_progress.event(
            "warning", {{"disk", m_source.id}, {"message", report.error().message}},
            fmt::format("{}: warning: rollback: {}", m_source.id, report.error().message));
        return;
    }
    warn(report->left_behind);
    if (report->left_behind.empty()) m_state = DiskMoveState::rolled_back;
}

DiskMoveReport DiskMove::report() const {
    return DiskMoveReport{
        .disk = m_source.id,
        .source = m_source.location.empty() ? m_source.filename : m_source.location,
        .target = target_url(),
        .target_node = m_mirror ? m_mirror->top_node() : std::string{},
        .source_allocated = m_source_allocated,
        .target_allocated = m_target_allocated,
        .pivoted = state() == DiskMoveState::done,
        .verified = false,
        .switched_to_write_blocking = m_mirror && m_mirror->switched_to_write_blocking(),
        .switched_in_place = m_mirror && m_mirror->switched_in_place(),
        .bytes_copied = m_mirror ? m_mirror->bytes_copied() : 0,
        .guest_bytes_forwarded = m_mirror ? m_mirror->guest_bytes_forwarded() : 0};
}

}  // namespace blockmig
