#include "storage.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <map>

#include "copy_mode.hpp"
#include "qmp/features.hpp"
#include "tls.hpp"

namespace blockmig::migrate {

namespace {

using jobs::EffectKind;
using jobs::RecordState;

// QEMU's bind failure (inet_listen_saddr: "Failed to bind socket: Address
// already in use"): the next port of the range is tried.
bool port_in_use(const Error& e) {
    return e.message.find("Address already in use") != std::string::npos;
}

}  // namespace

PortRange nbd_ports(std::uint16_t port) {
    if (port != 0) return {port, port};
    return {k_nbd_port, static_cast<std::uint16_t>(k_nbd_port + k_nbd_ports - 1)};
}

std::string nbd_host(const std::string& dst_addr) {
    std::string host = dst_addr;
    // "HOST:PORT" and "[V6]:PORT" lose the port; a bare IPv6 address keeps its colons.
    if (auto colon = host.rfind(':'); colon != std::string::npos && host.back() != ']' &&
                                      (host.front() == '[' || host.find(':') == colon))
        host = host.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    return host;
}

StorageCopy::StorageCopy(qmp::Client& src, qmp::Client& dst, jobs::Journal& journal,
                         const MigrateOptions& options, ProgressSink& progress)
    : m_src(src),
      m_dst(dst),
      m_journal(journal),
      m_o(options),
      m_progress(progress),
      m_src_env{.client = &src, .clock = options.clock},
      m_src_effects(journal, m_src_env) {}

Result<void> StorageCopy::dst_effect(EffectKind kind, const std::string& name,
                                     const std::function<Result<void>()>& act) {
    auto seq = m_journal.intend({.disk = k_destination, .effect = kind, .name = name});
    if (!seq) return fail(seq.error());
    auto r = act();
    if (r) return m_journal.outcome(*seq, RecordState::done);
    if (is_definite_refusal(r.error()))
        if (auto w = m_journal.outcome(*seq, RecordState::failed, r.error().message); !w) return w;
    return r;
}

Result<void> StorageCopy::copy(const SideFacts& src, const SideFacts& dst,
                               const qmp::Features& features, const std::atomic<bool>& cancel) {
    m_can_switch = features.mirror_copy_mode();
    m_in_place = features.mirror_change_copy_mode();
    auto mode = initial_copy_mode(m_o.copy_mode, features);
    if (!mode) return fail(mode.error());
    if (auto r = export_disks(src, dst); !r) return r;
    // Subscribed before the first mirror starts: no READY is missed.
    mirror::Group group(m_src, *m_o.clock);
    if (auto r = start_mirrors(src, *mode); !r) return r;
    for (auto& m : m_mirrors) group.add(*m);
    mirror::CopyPolicy policy{.bandwidth = m_o.bandwidth,
                              .timeout = m_o.timeout,
                              .auto_switch = m_can_switch,
                              .can_switch = m_can_switch,
                              .switch_in_place = m_in_place,
                              // Without block-job-change a switch would copy
                              // the disk again (and write-blocking on QEMU 7.2
                              // lost a guest write in 2 of 21 runs here).
                              .go_on_when_nearly_done = !m_in_place};
    std::map<const mirror::Mirror*, RateMeter> meters;
    auto on_sample = [&](const mirror::Mirror& m) {
        auto& meter = meters[&m];
        meter.add(std::chrono::steady_clock::now(), m.offset());
        const bool ready = m.ready_to_finish();
        m_progress.progress({.item = m.spec().disk,
                             .phase = ready ? "ready" : "copy",
                             .bytes = m.offset(),
                             .total = m.length(),
                             .rate = meter.rate(),
                             .eta_seconds = ready ? 0 : meter.eta(m.remaining())});
    };
    auto on_notice = [&](const mirror::Mirror&, const mirror::Notice& n) {
        m_progress.event(n.kind, n.fields, n.text);
    };
    if (auto r = group.wait_ready(policy, &cancel, on_sample, on_notice); !r) return r;
    // Every disk in sync: from here each guest write reaches both sides
    // before it completes (Proxmox does the same on QEMU >= 8.2), so the
    // final sync at the switchover has nothing left to copy. A mirror that
    // started write-blocking (--copy-mode auto here) is switched already.
    if (!m_in_place) return {};
    const auto speed = group.speed_per_job(policy);
    for (auto& m : m_mirrors)
        if (!m->switched_to_write_blocking())
            if (auto r = m->switch_to_write_blocking(true, speed); !r)
                return fail(r.error().with_context(m->spec().disk));
    return group.wait_ready(policy, &cancel, on_sample, on_notice);
}

bool StorageCopy::in_sync() {
    auto jobs = qmp::query_block_jobs(m_src, m_o.qmp_timeout);
    if (!jobs) return false;
    const auto now = m_o.clock->now();
    for (auto& m : m_mirrors) {
        if (!m->observe(*jobs, now) || !m->ready_to_finish()) return false;
        if (!m->switched_to_write_blocking() && m->remaining() > 0) return false;
    }
    return true;
}

Result<void> StorageCopy::start_server() {
    const auto host = nbd_host(m_o.dst_addr);
    const auto ports = nbd_ports(m_o.nbd_port);
    for (std::uint32_t port = ports.first; port <= ports.last; ++port) {
        m_server = qmp::SocketAddress::inet(host, static_cast<std::uint16_t>(port));
        const std::string where = fmt::format("{}:{}", host, port);
        // Each attempt is journaled: a refused one is recorded failed, the
        // one that listens is the one undone.
        auto r = dst_effect(EffectKind::nbd_server_started, where, [&] {
            if (!m_o.tls_dir.empty())
                return qmp::nbd_server_start_tls(m_dst, m_server, tls_object_id(m_journal.job().id),
                                                 m_o.qmp_timeout);
            return qmp::nbd_server_start(m_dst, m_server, {}, m_o.qmp_timeout);
        });
        if (r) return {};
        if (!port_in_use(r.error()) || port == ports.last)
            return fail(r.error().with_context(
                fmt::format("destination nbd-server-start on {}{}", where,
                            ports.first == ports.last
                                ? ""
                                : fmt::format(" (ports {}-{} tried)", ports.first, port))));
    }
    return {};
}

Result<void> StorageCopy::export_disks(const SideFacts& src, const SideFacts& dst) {
    if (auto r = start_server(); !r) return r;
    for (const auto& s : src.disks) {
        auto d = std::find_if(dst.disks.begin(), dst.disks.end(),
                              [&](const DiskFacts& x) { return x.device == s.device; });
        if (d == dst.disks.end())
            return fail(ErrorCode::invalid_state,
                        fmt::format("disk {} has no counterpart in the destination", s.device));
        const auto names = jobs::names_for(m_journal.job().id, s.device);
        qmp::NbdExport e{.id = names.export_name,
                         .node_name = d->node,
                         .name = names.export_name,
                         .writable = true};
        if (auto r = dst_effect(EffectKind::export_added, names.export_name,
                                [&] { return qmp::block_export_add(m_dst, e, m_o.qmp_timeout); });
            !r)
            return fail(r.error().with_context(
                fmt::format("disk {}: destination block-export-add of {}", s.device, d->node)));
    }
    return {};
}

Result<void> StorageCopy::start_mirrors(const SideFacts& src, qmp::CopyMode mode) {
    for (const auto& s : src.disks) {
        mirror::MirrorSpec spec{.disk = s.device,
                                .source_node = s.node,
                                .device_names = s.names,
                                .names = jobs::names_for(m_journal.job().id, s.device)};
        // inc: only what the overlay holds; QEMU neither zeroes the target
        // (that is sync=full's) nor copies what reads through to the base,
        // which the destination's export serves from the same base.
        if (m_o.copy_storage == CopyStorage::inc) spec.sync = qmp::MirrorSync::top;
        auto m = std::make_unique<mirror::Mirror>(m_src, m_src_effects, spec, *m_o.clock);
        const std::string export_name = spec.names.export_name;
        m_mirrors.push_back(std::move(m));
        auto& mirror = *m_mirrors.back();
        auto target = mirror::Target::nbd(m_server, export_name);
        if (!m_o.tls_dir.empty()) target.tls_creds = tls_object_id(m_journal.job().id);
        if (auto r = mirror.attach(target); !r) return fail(r.error().with_context(s.device));
        const std::uint64_t speed = m_o.bandwidth ? m_o.bandwidth / src.disks.size() : 0;
        if (auto r = mirror.start(mode, speed); !r)
            return fail(r.error().with_context(s.device));
        const std::string mode_name{qmp::to_string(mode)};
        m_progress.event("start",
                         {{"disk", s.device},
                          {"target", mirror.target_url()},
                          {"copy_mode", mode_name}},
                         fmt::format("{}: mirroring to {} ({})", s.device, mirror.target_url(),
                                     mode_name));
    }
    return {};
}

Result<void> StorageCopy::catch_up(mirror::Mirror& m) {
    if (auto r = m.wait_in_sync(m_o.qmp_timeout); !r) return r;
    auto jobs = qmp::query_block_jobs(m_src, m_o.qmp_timeout);
    if (!jobs) return fail(jobs.error());
    return m.observe(*jobs, m_o.clock->now());
}

Result<void> StorageCopy::finish() {
    for (auto& m : m_mirrors)
        if (m->state() != mirror::MirrorState::ready)
            if (auto r = catch_up(*m); !r)
                return fail(r.error().with_context(m->spec().disk + ": last chunks"));
    for (auto& m : m_mirrors)
        if (auto r = m->soft_cancel(m_o.qmp_timeout); !r)
            return fail(r.error().with_context(m->spec().disk));
    for (auto& m : m_mirrors) {
        auto report = m->detach();
        if (!report) return fail(report.error().with_context(m->spec().disk));
        if (!report->left_behind.empty())
            return fail(ErrorCode::io_error,
                        fmt::format("{}: {}", m->spec().disk, report->left_behind.front()));
    }
    return {};
}

void StorageCopy::sample() {
    auto jobs = qmp::query_block_jobs(m_src, m_o.qmp_timeout);
    if (!jobs) return;
    const auto now = std::chrono::steady_clock::now();
    for (const auto& m : m_mirrors) {
        auto it = std::find_if(jobs->begin(), jobs->end(),
                               [&](const auto& j) { return j.id == m->job_id(); });
        if (it == jobs->end()) continue;
        auto& meter = m_meters[m->spec().disk];
        meter.add(now, it->offset);
        m_sampled[m->spec().disk] = it->offset;
        m_progress.progress({.item = m->spec().disk,
                             .phase = "sync",
                             .bytes = it->offset,
                             .total = it->len,
                             .rate = meter.rate(),
                             .eta_seconds = 0});
    }
}

std::vector<StreamBytes> StorageCopy::streams() const {
    std::vector<StreamBytes> out;
    for (const auto& m : m_mirrors) {
        auto it = m_sampled.find(m->spec().disk);
        const std::uint64_t sampled = it == m_sampled.end() ? 0 : it->second;
        out.push_back({"disk:" + m->spec().disk, std::max(m->bytes_copied(), sampled)});
    }
    return out;
}

}  // namespace blockmig::migrate
