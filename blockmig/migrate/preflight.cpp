#include "preflight.hpp"

#include <fmt/core.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "jobs/guest.hpp"
#include "qmp/commands.hpp"
#include "qmp/migration.hpp"

namespace blockmig::migrate {

namespace {

namespace fs = std::filesystem;

std::string device_id(const qmp::BlockInfo& b) {
    if (b.qdev) {
        // "/machine/peripheral/disk0/virtio-backend" -> "disk0"; a plain id stays.
        const std::string& q = *b.qdev;
        const std::string_view prefix = "/machine/peripheral/";
        if (q.starts_with(prefix)) {
            std::string rest = q.substr(prefix.size());
            return rest.substr(0, rest.find('/'));
        }
        if (q.find('/') == std::string::npos) return q;
    }
    return b.device.empty() ? b.qdev.value_or("") : b.device;
}

Result<void> gather_devices(qmp::Client& client, SideFacts& f, qmp::Milliseconds timeout) {
    for (const char* path : {"/machine/peripheral", "/machine/peripheral-anon"}) {
        auto props = qmp::qom_list(client, path, timeout);
        if (!props) return fail(props.error());
        for (const auto& p : *props)
            if (p.type.starts_with("child<"))
                f.devices.emplace(std::string(path).ends_with("anon") ? "" : p.name, p.type);
    }
    return {};
}

bool is_protocol_driver(std::string_view driver) {
    for (std::string_view d :
         {"file", "host_device", "nfs", "iscsi", "rbd", "nbd", "ssh", "gluster", "http", "https"})
        if (driver == d) return true;
    return false;
}

// Guest data reaches storage through the protocol node: a -blockdev format
// node may say cache.direct=off over a cache.direct=on file node, and the
// other way round. Any protocol node not bypassing the host cache decides.
std::string storage_cache_mode(const qmp::BlockNodeInfo& top,
                               const std::vector<qmp::BlockNodeInfo>& nodes) {
    std::string mode;
    for (const auto& n : nodes) {
        if (n.node_name == top.node_name || n.file != top.file || !is_protocol_driver(n.driver))
            continue;
        if (mode.empty() || (n.cache_mode != "none" && n.cache_mode != "directsync"))
            mode = n.cache_mode;
    }
    return mode.empty() ? top.cache_mode : mode;
}

}  // namespace

// Through the process's root (another mount namespace) and, for a relative
// name, its working directory.
std::optional<FileIdentity> identity_of(std::string_view filename, std::optional<int> pid) {
    if (!pid || filename.empty() || is_network_filename(filename)) return std::nullopt;
    const fs::path proc = fs::path("/proc") / std::to_string(*pid);
    fs::path path = filename.front() == '/' ? proc / "root" / fs::path(filename).relative_path()
                                            : proc / "cwd" / fs::path(filename);
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return FileIdentity{st.st_dev, st.st_ino};
}

Sameness same_volume(std::string_view a, const std::optional<FileIdentity>& a_identity,
                     std::string_view b, const std::optional<FileIdentity>& b_identity) {
    if (is_network_filename(a) || is_network_filename(b))
        return a == b ? Sameness::same : Sameness::different;
    if (!a_identity || !b_identity) return Sameness::unprovable;
    return *a_identity == *b_identity ? Sameness::same : Sameness::different;
}

bool is_network_filename(std::string_view filename) {
    return filename.find("://") != std::string_view::npos || filename.starts_with("json:") ||
           filename.starts_with("nbd:");
}

Result<SideFacts> gather(qmp::Client& client, std::string_view address, std::string_view side,
                         qmp::Milliseconds timeout) {
    auto ctx = [&](const Error& e) { return fail(e.with_context(fmt::format("{} QEMU", side))); };
    SideFacts f;
    f.address = std::string(address);
    auto identity = jobs::identify_guest(client, address, client.peer_pid().value_or(-1), timeout);
    if (!identity) return ctx(identity.error());
    f.identity = *identity;
    auto status = qmp::query_status(client, timeout);
    if (!status) return ctx(status.error());
    f.run_state = status->status;
    auto migration = qmp::query_migrate(client, timeout);
    if (!migration) return ctx(migration.error());
    f.migration_status = migration->status;
    auto machine = qmp::query_machine_type(client, timeout);
    if (!machine) return ctx(machine.error());
    f.machine_type = *machine;
    auto memory = qmp::query_memory_size_summary(client, timeout);
    if (!memory) return ctx(memory.error());
    f.memory = memory->base_memory + memory->plugged_memory.value_or(0);
    if (auto r = gather_devices(client, f, timeout); !r) return ctx(r.error());
    auto blocks = qmp::query_block(client, timeout);
    if (!blocks) return ctx(blocks.error());
    auto nodes = qmp::query_named_block_nodes(client, true, timeout);
    if (!nodes) return ctx(nodes.error());
    for (const auto& b : *blocks) {
        if (!b.inserted) continue;  // an empty drive has nothing to share
        f.disks.push_back({device_id(b), b.inserted->file,
                           identity_of(b.inserted->file, client.peer_pid()),
                           storage_cache_mode(*b.inserted, *nodes)});
        f.disks.back().node = b.inserted->node_name;
        auto& disk = f.disks.back();
        disk.format = b.inserted->driver;
        if (!b.inserted->chain.empty()) {
            disk.size = b.inserted->chain.front().virtual_size;
            disk.allocated = b.inserted->chain.front().actual_size;
            disk.cluster_size = b.inserted->chain.front().cluster_size;
        }
        // The backing image QEMU opened (its resolved filename, not the
        // possibly relative name in the overlay's header).
        if (b.inserted->chain.size() > 1) {
            disk.backing = b.inserted->chain[1].filename;
            disk.backing_identity = identity_of(disk.backing, client.peer_pid());
        }
        for (const auto& name : {b.device, b.qdev.value_or("")})
            if (!name.empty()) f.disks.back().names.push_back(name);
    }
    auto version = qmp::query_version(client, timeout);
    if (!version) return ctx(version.error());
    f.version = version->major * 10000 + version->minor * 100 + version->micro;
    auto jobs = qmp::query_block_jobs(client, timeout);
    if (!jobs) return ctx(jobs.error());
    for (const auto& j : *jobs) f.block_jobs.push_back(j.id);
    auto caps = qmp::query_migrate_capabilities(client, timeout);
    if (!caps) return ctx(caps.error());
    for (const auto& [name, state] : *caps) f.capabilities.insert(name);
    return f;
}

namespace {

std::unexpected<Error> refuse(std::string text) {
    return fail(ErrorCode::invalid_state, "migrate pre-flight: " + std::move(text));
}

std::string version_text(int v) {
    return fmt::format("{}.{}.{}", v / 10000, v / 100 % 100, v % 100);
}

std::string describe(const std::set<std::pair<std::string, std::string>>& devices) {
    std::string out;
    for (const auto& [id, type] : devices)
        out += fmt::format("{}{}{}", out.empty() ? "" : ", ", id.empty() ? "(anonymous)" : id,
                           " " + type);
    return out.empty() ? "none" : out;
}

// "64 MiB", "2 GiB", else exact bytes: a size the user can compare.
std::string size_text(std::uint64_t bytes) {
    if (bytes != 0 && bytes % (std::uint64_t{1} << 30) == 0)
        return fmt::format("{} GiB", bytes >> 30);
    if (bytes != 0 && bytes % (std::uint64_t{1} << 20) == 0)
        return fmt::format("{} MiB", bytes >> 20);
    return fmt::format("{} bytes", bytes);
}

// Both sides open the same volume: same network URL, or the same file.
Result<void> check_same_volume(const DiskFacts& s, const DiskFacts& d) {
    const auto same = same_volume(s.filename, s.identity, d.filename, d.identity);
    if (same == Sameness::same) return {};
    if (is_network_filename(s.filename) || is_network_filename(d.filename))
        return refuse(
            fmt::format("disk {}: the source opens {} but the destination opens {}; with "
                        "--copy-storage none both must open the same volume",
                        s.device, s.filename, d.filename));
    if (same == Sameness::unprovable)
        return refuse(fmt::format(
            "disk {}: cannot prove both QEMUs open the same file ({} / {}): a local file is "
            "compared by identity, which needs both QMP sockets local (Unix sockets) and the "
            "files visible from here; use a network volume URL, or --copy-storage all",
            s.device, s.filename, d.filename));
    return refuse(
        fmt::format("disk {}: the source's {} and the destination's {} are different "
                    "files; with --copy-storage none both must open the same volume",
                    s.device, s.filename, d.filename));
}

Result<void> check_disks(const SideFacts& src, const SideFacts& dst, CopyStorage copy_storage,
                         bool unsafe) {
    for (const auto& s : src.disks) {
        // Shared storage opened by two hosts: a host page cache on either
        // side could hand the destination stale data (libvirt's "unsafe
        // migration" check).
        if (copy_storage == CopyStorage::none && !unsafe)
            for (const auto* side : {&src, &dst})
                for (const auto& d : side->disks)
                    if (d.device == s.device && d.cache_mode != "none" &&
                        d.cache_mode != "directsync")
                        return refuse(fmt::format(
                            "disk {}: the {} opens it with cache mode {}; shared storage needs "
                            "cache=none (cache.direct=on) on both sides, or --unsafe",
                            s.device, side == &src ? "source" : "destination",
                            d.cache_mode.empty() ? "unknown" : d.cache_mode));
        auto it = std::find_if(dst.disks.begin(), dst.disks.end(),
                               [&](const DiskFacts& d) { return d.device == s.device; });
        if (it == dst.disks.end())
            return refuse(
                fmt::format("disk {} has no counterpart in the destination QEMU", s.device));
        if (copy_storage == CopyStorage::none) {
            if (auto r = check_same_volume(s, *it); !r) return r;
        } else if (s.identity && it->identity && *s.identity == *it->identity) {
            return refuse(
                fmt::format("disk {}: both QEMUs open the same file {}; copying it "
                            "onto itself would destroy it (use --copy-storage none)",
                            s.device, s.filename));
        } else if (s.size != it->size) {
            // A smaller volume cannot hold the disk; a larger one would give
            // the guest a disk of another size (and QEMU's mirror refuses it).
            return refuse(fmt::format(
                "disk {}: the destination's volume {} is {} but the source's {} is {}; "
                "--copy-storage {} needs a destination volume of exactly the source's size",
                s.device, it->filename, size_text(it->size), s.filename, size_text(s.size),
                copy_storage == CopyStorage::inc ? "inc" : "all"));
        } else if (copy_storage == CopyStorage::inc) {
            if (auto r = check_overlay(s, *it); !r) return r;
        }
    }
    if (dst.disks.size() != src.disks.size())
        return refuse(fmt::format("the destination has {} disks, the source {}", dst.disks.size(),
                                  src.disks.size()));
    return {};
}

}  // namespace

Result<void> check(const SideFacts& src, const SideFacts& dst, CopyStorage copy_storage,
                   bool unsafe) {
    if (src.identity.same_guest(dst.identity))
        return refuse(fmt::format("{} and {} are the same QEMU", src.address, dst.address));
    if (src.run_state != "running")
        return refuse(fmt::format("the source guest is {}, not running", src.run_state));
    if (dst.run_state != "inmigrate")
        return refuse(fmt::format(
            "the destination QEMU is {}, not waiting for a migration (start it with the same "
            "devices and -incoming defer)",
            dst.run_state));
    for (const auto* side : {&src, &dst}) {
        const std::string_view s = side->migration_status;
        if (s != "none" && s != "completed" && s != "failed" && s != "cancelled")
            return refuse(fmt::format("{} already has a migration in state {}", side->address, s));
    }
    if (!src.block_jobs.empty())
        return refuse(fmt::format("the source has a block job running ({}); wait for it or end it",
                                  src.block_jobs.front()));
    if (dst.version < src.version)
        return refuse(
            fmt::format("the destination QEMU ({}) is older than the source ({}); "
                        "migration only goes to the same or a newer QEMU",
                        version_text(dst.version), version_text(src.version)));
    if (src.machine_type != dst.machine_type)
        return refuse(fmt::format("machine types differ: source {}, destination {}",
                                  src.machine_type, dst.machine_type));
    if (src.memory != dst.memory)
        return refuse(fmt::format("memory sizes differ: source {} MiB, destination {} MiB",
                                  src.memory >> 20, dst.memory >> 20));
    if (src.devices != dst.devices)
        return refuse(fmt::format("device sets differ: source [{}], destination [{}]",
                                  describe(src.devices), describe(dst.devices)));
    for (const char* cap : {"events", "pause-before-switchover"})
        for (const auto* side : {&src, &dst})
            if (!side->capabilities.contains(cap))
                return refuse(
                    fmt::format("{} lacks the migration capability {}", side->address, cap));
    return check_disks(src, dst, copy_storage, unsafe);
}

}  // namespace blockmig::migrate
