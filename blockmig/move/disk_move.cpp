#include "disk_move.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "pools/image_format.hpp"
#include "pools/pools.hpp"

namespace blockmig {

namespace {

using namespace std::chrono_literals;

// QEMU node names: a letter first, then letters, digits, '-', '_', '.';
// at most 31 characters, and pools/ appends "-proto" / "-fmt".
std::string node_prefix_for(const std::string& disk) {
    std::string clean;
    for (char c : disk)
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') clean += c;
    return fmt::format("bm{}-{}", getpid() % 100000, clean.substr(0, 12));
}

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
      m_progress(progress),
      m_prefix(node_prefix_for(m_source.id)),
      m_job_id(m_prefix + "-mirror") {}

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
    auto created = m_plan.pool->create(m_plan.volume, m_source.virtual_size, m_plan.format);
    if (!created) return fail(created.error().with_context("create target volume"));
    m_plan.volume = created->name;
    auto* pool = m_plan.pool.get();
    std::string name = m_plan.volume;
    m_undo.emplace_back("volume", [this, pool, name] {
        if (auto r = pool->remove(name); !r)
            m_progress.event("warning", {{"disk", m_source.id}, {"message", r.error().message}},
                             fmt::format("{}: warning: could not delete the new volume {}: {}; "
                                         "remove it by hand",
                                         m_source.id, pool->url_of(name), r.error().message));
    });
    m_state = DiskMoveState::target_created;

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

Result<void> DiskMove::attach_target() {
    pools::QemuNodeOptions node_options;
    node_options.node_prefix = m_prefix;
    auto chain = m_plan.pool->describe_for_qemu(m_plan.volume, node_options);
    if (!chain) return fail(chain.error().with_context("describe target for QEMU"));
    m_chain = *chain;
    m_top_node = m_chain.format_node;
    // A shallow target shares the guest's backing node; naming it here also
    // keeps it across the blockdev-reopen after the pivot.
    if (shallow()) m_chain.format["backing"] = m_source.backing_node;

    nlohmann::json format_node = m_chain.format;
    if (m_plan.network) {
        std::filesystem::path dir = m_options.state_dir / m_prefix;
        auto hop = NbdHop::start(dir, m_chain.protocol, m_chain.secrets, 15s, m_options.qemu_dir);
        if (!hop)
            return fail(
                hop.error().with_context(fmt::format("open {} in a storage daemon", target_url())));
        m_hop.emplace(std::move(*hop));
        m_undo.emplace_back("hop", [this] {
            if (m_hop) m_hop->kill_now();
        });
        m_hop_node = m_prefix + "-hop";
        if (auto r = qmp::blockdev_add(m_client, m_hop->client_node(m_hop_node)); !r)
            return fail(r.error().with_context("blockdev-add NBD hop node"));
        m_undo.emplace_back("node", [this] { (void)qmp::blockdev_del(m_client, m_hop_node); });
        format_node["file"] = m_hop_node;
    } else {
        for (const auto& secret : m_chain.secrets) {
            if (auto r = qmp::object_add(m_client, secret); !r)
                return fail(r.error().with_context("object-add secret"));
            std::string id = secret.value("id", "");
            m_undo.emplace_back("node", [this, id] { (void)qmp::object_del(m_client, id); });
        }
        if (auto r = qmp::blockdev_add(m_client, m_chain.protocol); !r)
            return fail(r.error().with_context("blockdev-add target protocol node"));
        std::string proto = m_chain.protocol_node;
        m_undo.emplace_back("node", [this, proto] { (void)qmp::blockdev_del(m_client, proto); });
    }
    if (auto r = qmp::blockdev_add(m_client, format_node); !r)
        return fail(r.error().with_context("blockdev-add target format node"));
    m_undo.emplace_back("node", [this] { (void)qmp::blockdev_del(m_client, m_top_node); });
    m_state = DiskMoveState::attached;
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
    if (auto r = qmp::blockdev_mirror(m_client, mirror); !r)
        return fail(r.error().with_context("blockdev-mirror"));
    if (m_state != DiskMoveState::copying) push_undo_job();
    m_state = DiskMoveState::copying;
    m_offset = 0;
    m_len = 0;
    m_last_progress = std::chrono::steady_clock::now();
    return {};
}

void DiskMove::push_undo_job() {
    m_undo.emplace_back("job", [this] {
        (void)qmp::block_job_cancel(m_client, m_job_id, true);
        std::optional<std::string> ignored;
        if (!wait_job_gone(10s, &ignored) && m_hop) {
            // The target stopped answering and the job cannot finish
            // cancelling: killing the hop fails its requests at once.
            m_hop->kill_now();
            (void)wait_job_gone(10s, &ignored);
        }
    });
}

Result<std::filesystem::path> DiskMove::leave_ready() {
    nlohmann::json saved{{"job_id", m_job_id},
                         {"prefix", m_prefix},
                         {"disk", m_source.id},
                         {"source_node", m_source.node},
                         {"source_driver", m_source.driver},
                         {"source_location", m_source.location},
                         {"source_filename", m_source.filename},
                         {"source_protocol_nodes", m_source.protocol_nodes},
                         {"virtual_size", m_source.virtual_size},
                         {"target", target_url()},
                         {"target_format", pools::to_string(m_plan.format)},
                         {"top_node", m_top_node},
                         {"hop_node", m_hop_node},
                         {"hop_pid", m_hop ? m_hop->pid() : -1},
                         {"hop_socket", m_hop ? m_hop->socket_path().string() : ""},
                         {"chain",
                          {{"protocol", m_chain.protocol},
                           {"format", m_chain.format},
                           {"protocol_node", m_chain.protocol_node},
                           {"format_node", m_chain.format_node},
                           {"secrets", m_chain.secrets}}}};
    std::filesystem::path dir = m_options.state_dir / "jobs";
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    std::filesystem::path file = dir / (m_job_id + ".json");
    std::ofstream out(file);
    out << saved.dump(2) << "\n";
    if (!out.good())
        return fail(ErrorCode::io_error,
                    fmt::format("save job state {}: write failed", file.string()));
    // The job, its nodes, the volume and the hop now outlive this process.
    m_undo.clear();
    if (m_hop) m_hop->detach();
    m_hop.reset();
    return file;
}

Result<std::unique_ptr<DiskMove>> DiskMove::adopt(qmp::Client& client, const nlohmann::json& saved,
                                                  const MoveOptions& options,
                                                  ProgressSink& progress) {
    SourceDisk source;
    source.id = saved.value("disk", "");
    source.node = saved.value("source_node", "");
    source.driver = saved.value("source_driver", "");
    source.location = saved.value("source_location", "");
    source.filename = saved.value("source_filename", "");
    source.protocol_nodes = saved.value("source_protocol_nodes", std::vector<std::string>{});
    source.virtual_size = saved.value("virtual_size", std::uint64_t{0});
    auto ref = pools::resolve_volume(saved.value("target", ""), options.pools);
    if (!ref) return fail(ref.error().with_context("target of the saved move"));
    TargetPlan plan;
    plan.pool = std::move(ref->pool);
    plan.volume = ref->name;
    auto format = pools::parse_image_format(saved.value("target_format", "raw"));
    plan.format = format ? *format : pools::ImageFormat::raw;
    plan.network = saved.value("hop_pid", -1) > 0;

    auto move =
        std::make_unique<DiskMove>(client, std::move(source), std::move(plan), options, progress);
    DiskMove& m = *move;
    m.m_prefix = saved.value("prefix", "");
    m.m_job_id = saved.value("job_id", "");
    m.m_top_node = saved.value("top_node", "");
    m.m_hop_node = saved.value("hop_node", "");
    const auto& chain = saved["chain"];
    m.m_chain.protocol = chain["protocol"];
    m.m_chain.format = chain["format"];
    m.m_chain.protocol_node = chain.value("protocol_node", "");
    m.m_chain.format_node = chain.value("format_node", "");
    m.m_chain.secrets = chain.value("secrets", std::vector<nlohmann::json>{});
    // Same undo stack a fresh move would have built, in creation order.
    auto* pool = m.m_plan.pool.get();
    std::string name = m.m_plan.volume;
    m.m_undo.emplace_back("volume", [pool, name] { (void)pool->remove(name); });
    if (m.m_plan.network) {
        auto hop = NbdHop::adopt(saved.value("hop_pid", -1), saved.value("hop_socket", ""));
        if (!hop) return fail(hop.error());
        m.m_hop.emplace(std::move(*hop));
        m.m_undo.emplace_back("hop", [&m] {
            if (m.m_hop) m.m_hop->kill_now();
        });
        m.m_undo.emplace_back("node", [&m] { (void)qmp::blockdev_del(m.m_client, m.m_hop_node); });
    } else {
        std::string proto = m.m_chain.protocol_node;
        m.m_undo.emplace_back("node", [&m, proto] { (void)qmp::blockdev_del(m.m_client, proto); });
    }
    m.m_undo.emplace_back("node", [&m] { (void)qmp::blockdev_del(m.m_client, m.m_top_node); });
    m.push_undo_job();
    m.m_state = DiskMoveState::ready;
    return move;
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
        if (job.ready || job.status == "ready") m_state = DiskMoveState::ready;
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
    if (auto r = qmp::block_job_complete(m_client, m_job_id); !r)
        return fail(r.error().with_context("block-job-complete"));
    std::optional<std::string> error;
    if (auto r = wait_job_gone(120s, &error); !r) return fail(r.error().with_context("pivot"));
    if (error) {
        // QEMU switches the device only when completion succeeds: the guest
        // is still on its source, so the ordinary rollback applies.
        return fail(ErrorCode::io_error,
                    fmt::format("pivot to {} failed: {}", target_url(), *error));
    }
    // From here on the target IS the guest's disk: nothing may delete it.
    m_undo.clear();
    m_state = DiskMoveState::pivoted;
    m_progress.event("pivoted",
                     {{"disk", m_source.id}, {"node", m_top_node}, {"target", target_url()}},
                     fmt::format("{}: pivoted to {}", m_source.id, target_url()));

    if (auto r = switch_to_direct(); !r) {
        std::string where =
            m_hop ? fmt::format(" through blockmig's storage daemon (pid kept running, socket {})",
                                m_hop->socket_path().string())
                  : "";
        if (m_hop) m_hop->detach();  // the guest depends on it now: never kill it
        return fail(
            ErrorCode::io_error,
            fmt::format(
                "{}: the guest now runs on {}{}; re-pointing it at a direct node failed: {}. "
                "Its data is safe while that daemon runs; run `blockmig qmp` query-block to "
                "inspect, and move the disk again to leave the daemon",
                m_source.id, target_url(), where, r.error().message));
    }
    release_source_nodes();

    // Confirm through QMP that the device sits on the new node, directly.
    auto disks = list_source_disks(m_client);
    if (!disks) return fail(disks.error().with_context("confirm pivot"));
    auto now = find_source_disk(*disks, m_source.id);
    if (!now) return fail(now.error().with_context("confirm pivot"));
    if (now->node != m_top_node || now->filename.find("nbd") != std::string::npos)
        return fail(
            ErrorCode::invalid_state,
            fmt::format("{}: after the pivot the device is on node {} ({}), expected {} on {}",
                        m_source.id, now->node, now->filename, m_top_node, target_url()));
    if (auto info = m_plan.pool->stat(m_plan.volume); info)
        m_target_allocated = info->allocated_bytes;
    m_state = DiskMoveState::done;
    return {};
}

Result<void> DiskMove::switch_to_direct() {
    if (!m_hop) return {};
    // The guest's format node stays; only its `file` child changes from the
    // NBD hop to a direct protocol node on the same volume (blockdev-reopen
    // takes the node's full option set; unspecified options would reset).
    for (const auto& secret : m_chain.secrets)
        if (auto r = qmp::object_add(m_client, secret); !r)
            return fail(r.error().with_context("object-add secret"));
    if (auto r = qmp::blockdev_add(m_client, m_chain.protocol); !r)
        return fail(r.error().with_context("blockdev-add direct node"));
    auto reopen =
        m_client.execute("blockdev-reopen", {{"options", nlohmann::json::array({m_chain.format})}});
    if (!reopen) {
        (void)qmp::blockdev_del(m_client, m_chain.protocol_node);
        return fail(reopen.error().with_context("blockdev-reopen onto the direct node"));
    }
    if (auto r = qmp::blockdev_del(m_client, m_hop_node); !r)
        return fail(r.error().with_context("remove NBD hop node"));
    m_hop->stop();
    m_hop.reset();
    return {};
}

void DiskMove::release_source_nodes() {
    // Nodes created with -blockdev stay open (monitor-owned) after the
    // pivot; delete them so the old storage is really no longer used.
    // Nodes from -drive are closed by QEMU itself and are already gone.
    std::vector<std::string> names{m_source.node};
    names.insert(names.end(), m_source.protocol_nodes.begin(), m_source.protocol_nodes.end());
    for (const auto& name : names) {
        auto r = qmp::blockdev_del(m_client, name);
        if (!r && r.error().qmp_class != "GenericError")
            m_progress.event("warning", {{"disk", m_source.id}, {"message", r.error().message}},
                             fmt::format("{}: warning: could not release old node {}: {}",
                                         m_source.id, name, r.error().message));
    }
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
    for (auto it = m_undo.rbegin(); it != m_undo.rend(); ++it)
        if (it->first == "node" || it->first == "hop") it->second();
    m_undo.clear();
    if (m_hop) m_hop->stop();
    m_hop.reset();
    if (auto info = m_plan.pool->stat(m_plan.volume); info)
        m_target_allocated = info->allocated_bytes;
    m_state = DiskMoveState::copied;
    return {};
}

void DiskMove::rollback() {
    for (auto it = m_undo.rbegin(); it != m_undo.rend(); ++it) it->second();
    m_undo.clear();
    m_hop.reset();
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
        .bytes_copied = m_copied_by_earlier_jobs + m_offset -
                        std::min(m_guest_bytes_forwarded, m_copied_by_earlier_jobs + m_offset),
        .guest_bytes_forwarded = m_guest_bytes_forwarded};
}

}  // namespace blockmig
