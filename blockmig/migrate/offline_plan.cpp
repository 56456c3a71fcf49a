#include "offline_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

namespace blockmig::migrate {

namespace {

std::unexpected<Error> refuse(std::string text) {
    return fail(ErrorCode::invalid_state, "migrate --offline: " + std::move(text));
}

bool named(const DiskFacts& d, const std::string& name) {
    return d.device == name || std::find(d.names.begin(), d.names.end(), name) != d.names.end();
}

Result<void> check_guest(const SideFacts& src) {
    if (src.run_state != "running" && src.run_state != "shutdown")
        return refuse(fmt::format(
            "the guest is {}: a running guest is powered down (a shut-down one, kept by "
            "-no-shutdown, just quit); resume it (cont) or shut it down first",
            src.run_state));
    for (std::string_view busy : {"setup", "active", "pre-switchover", "device", "postcopy-active",
                                  "cancelling", "wait-unplug"})
        if (src.migration_status == busy)
            return refuse(fmt::format("a migration is in progress ({})", src.migration_status));
    if (!src.block_jobs.empty())
        return refuse(fmt::format("block job {} is running on the guest: let it end first",
                                  src.block_jobs.front()));
    return {};
}

Result<std::vector<const DiskFacts*>> select(const SideFacts& src,
                                             const std::vector<std::string>& only) {
    std::vector<const DiskFacts*> out;
    std::vector<std::string> all;
    for (const auto& d : src.disks) all.push_back(d.device);
    for (const auto& name : only) {
        auto it = std::find_if(src.disks.begin(), src.disks.end(),
                               [&](const DiskFacts& d) { return named(d, name); });
        if (it == src.disks.end())
            return refuse(
                fmt::format("the guest has no disk {} (it has: {})", name, fmt::join(all, ", ")));
        if (std::find(out.begin(), out.end(), &*it) == out.end()) out.push_back(&*it);
    }
    if (only.empty())
        for (const auto& d : src.disks) out.push_back(&d);
    if (out.empty()) return refuse("the guest has no disk with a medium");
    return out;
}

// The last path component of a file name or URL.
std::string base_name(const std::string& source) {
    auto end = source.find_first_of("?#");
    std::string path = source.substr(0, end);
    return path.substr(path.find_last_of('/') + 1);
}

Result<OfflineDisk> plan_disk(const DiskFacts& d, const PathResolver& resolve_path) {
    auto format = pools::parse_image_format(d.format);
    if (!format || *format == pools::ImageFormat::vmdk)
        return refuse(fmt::format("disk {}: format {} cannot be copied (raw and qcow2 can)",
                                  d.device, d.format));
    if (d.filename.starts_with("json:") || d.filename.starts_with("nbd:"))
        return refuse(fmt::format("disk {}: {} is not a file or a pool volume blockmig can read",
                                  d.device, d.filename));
    if (d.size == 0) return refuse(fmt::format("disk {}: QEMU reports no size", d.device));
    std::string source = d.filename;
    if (!is_network_filename(d.filename)) {
        auto path = resolve_path(d.filename);
        if (!path) return refuse(fmt::format("disk {}: {}", d.device, path.error().message));
        source = *path;
    }
    return OfflineDisk{d.device, source, *format, d.size, base_name(source), "QEMU"};
}

}  // namespace

Result<std::vector<OfflineDisk>> plan_offline(const SideFacts& src,
                                              const std::vector<std::string>& only,
                                              const PathResolver& resolve_path) {
    if (auto r = check_guest(src); !r) return fail(r.error());
    auto disks = select(src, only);
    if (!disks) return fail(disks.error());
    std::vector<OfflineDisk> plan;
    std::map<std::string, std::string> by_volume;
    for (const DiskFacts* d : *disks) {
        auto p = plan_disk(*d, resolve_path);
        if (!p) return fail(p.error());
        if (p->volume.empty())
            return refuse(fmt::format("disk {}: {} names no file", d->device, p->source));
        if (auto r = claim_volume_name(by_volume, *p); !r) return fail(r.error());
        plan.push_back(std::move(*p));
    }
    return plan;
}

Result<void> claim_volume_name(std::map<std::string, std::string>& taken,
                               const OfflineDisk& disk) {
    auto [it, fresh] = taken.emplace(disk.volume, disk.device);
    if (fresh) return {};
    return refuse(fmt::format("disks {} and {} both have a file named {}: the copies "
                              "would collide in the destination pool",
                              it->second, disk.device, disk.volume));
}

}  // namespace blockmig::migrate
