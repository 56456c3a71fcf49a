#include "offline_files.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "pools/image/open.hpp"

namespace blockmig::migrate {

namespace {

namespace fs = std::filesystem;

std::unexpected<Error> refuse(std::string text) {
    return fail(ErrorCode::invalid_state, "migrate --offline: " + std::move(text));
}

// Headers of formats qemu-img knows and blockmig does not copy here (VMDK:
// `blockmig convert` first): probed as raw they would be copied as their
// container's bytes, which no guest booted with the right driver could use.
const char* foreign_format(const std::array<char, 72>& head) {
    auto at = [&](std::size_t offset, std::string_view magic) {
        return std::memcmp(head.data() + offset, magic.data(), magic.size()) == 0;
    };
    if (at(0, "KDMV") || at(0, "# Disk DescriptorFile")) return "vmdk";
    if (at(0, "LUKS\xba\xbe")) return "luks";
    if (at(0, "vhdxfile")) return "vhdx";
    if (at(0, "conectix")) return "vpc (VHD)";
    if (at(0, std::string_view("QED\0", 4))) return "qed";
    if (at(64, "\x7f\x10\xda\xbe")) return "vdi";
    return nullptr;
}

Result<void> check_not_foreign(pools::VolumeRef& ref, const std::string& device) {
    auto volume = ref.pool->open(ref.name, false);
    if (!volume) return fail(volume.error());
    std::array<char, 72> head{};
    const auto len = std::min<std::uint64_t>(head.size(), (*volume)->size());
    auto bytes = std::as_writable_bytes(std::span(head)).first(len);
    if (auto r = pools::read_full(**volume, bytes, 0); !r) return fail(r.error());
    if (const char* format = foreign_format(head))
        return refuse(fmt::format("disk {}: {} is a {} image (raw and qcow2 can be copied)", device,
                                  ref.pool->url_of(ref.name), format));
    return {};
}

// A regular local file, as an absolute path with symlinks resolved (the
// journal's identity and what the lock is taken on).
Result<std::string> local_file(const OfflineSourceFile& f) {
    if (f.path.find("://") != std::string::npos)
        return refuse(
            fmt::format("disk {}: {} is not a local file (--src-disk takes a path on "
                        "this host, where blockmig can see a QEMU's lock on it)",
                        f.device, f.path));
    std::error_code ec;
    const fs::path path = fs::canonical(fs::absolute(f.path, ec), ec);
    if (ec) return refuse(fmt::format("disk {}: {}: {}", f.device, f.path, ec.message()));
    if (!fs::is_regular_file(path, ec))
        return refuse(fmt::format("disk {}: {} is not a regular file", f.device, f.path));
    return path.string();
}

Result<OfflineDisk> plan_file(const OfflineSourceFile& f, const auto& open_volume) {
    auto path = local_file(f);
    if (!path) return fail(path.error());
    auto ref = open_volume(*path);
    if (!ref) return refuse(fmt::format("disk {}: {}", f.device, ref.error().message));
    if (!f.format)
        if (auto r = check_not_foreign(*ref, f.device); !r) return fail(r.error());
    auto image = pools::image::open_image(*ref->pool, ref->name, f.format);
    if (!image) return refuse(fmt::format("disk {}: {}", f.device, image.error().message));
    const auto& info = (*image)->info();
    if (info.format != pools::ImageFormat::raw && info.format != pools::ImageFormat::qcow2)
        return refuse(fmt::format("disk {}: {} is a {} image (raw and qcow2 can be copied)",
                                  f.device, *path, pools::to_string(info.format)));
    if (info.virtual_size == 0) return refuse(fmt::format("disk {}: {} is empty", f.device, *path));
    return OfflineDisk{.device = f.device,
                       .source = *path,
                       .format = info.format,
                       .size = info.virtual_size,
                       .volume = fs::path(*path).filename().string(),
                       .format_from = f.format ? "--src-format" : "probed"};
}

Result<void> check_names(const std::vector<OfflineSourceFile>& files,
                         const std::vector<std::string>& only) {
    std::set<std::string> seen;
    for (const auto& f : files) {
        if (f.device.empty()) return refuse(fmt::format("--src-disk ={} names no disk", f.path));
        if (!seen.insert(f.device).second)
            return refuse(fmt::format("disk {} is given twice", f.device));
    }
    for (const auto& name : only)
        if (!seen.contains(name))
            return refuse(fmt::format("--disk {}: no --src-disk {}=PATH (given: {})", name, name,
                                      fmt::join(seen, ", ")));
    if (files.empty()) return refuse("no --src-disk given");
    return {};
}

}  // namespace

Result<std::vector<OfflineDisk>> plan_offline_files(
    const std::vector<OfflineSourceFile>& files, const std::vector<std::string>& only,
    const std::function<Result<pools::VolumeRef>(std::string_view)>& open_volume) {
    if (auto r = check_names(files, only); !r) return fail(r.error());
    std::vector<OfflineDisk> plan;
    std::map<std::string, std::string> by_volume;
    for (const auto& f : files) {
        if (!only.empty() && std::find(only.begin(), only.end(), f.device) == only.end()) continue;
        auto d = plan_file(f, open_volume);
        if (!d) return fail(d.error());
        if (auto r = claim_volume_name(by_volume, *d); !r) return fail(r.error());
        plan.push_back(std::move(*d));
    }
    return plan;
}

}  // namespace blockmig::migrate
