// Format probing by magic, as QEMU's own probes do (block/qcow2.c
// qcow2_probe, block/vmdk.c vmdk_probe).
#include "pools/image_format.hpp"

#include <fmt/core.h>

#include <array>
#include <cstring>
#include <string>

namespace blockmig::pools {

namespace {

std::uint64_t be64(const std::byte* p) {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
    return v;
}

std::uint32_t be32(const std::byte* p) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
    return v;
}

std::uint64_t le64(const std::byte* p) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
    return v;
}

// Sums the sector counts of a VMDK descriptor's extent lines
// ("RW 2097152 SPARSE \"disk-s001.vmdk\"").
std::uint64_t vmdk_descriptor_size(std::string_view text) {
    std::uint64_t sectors = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
        std::size_t eol = text.find('\n', pos);
        std::string_view line = text.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
        pos = eol == std::string_view::npos ? text.size() : eol + 1;
        for (std::string_view access : {"RW ", "RDONLY ", "NOACCESS "}) {
            if (line.starts_with(access)) {
                sectors +=
                    std::strtoull(std::string(line.substr(access.size())).c_str(), nullptr, 10);
            }
        }
    }
    return sectors * 512;
}

}  // namespace

Result<ProbedImage> probe_image(Volume& volume) {
    std::array<std::byte, 4096> head{};
    const std::uint64_t size = volume.size();
    std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(head.size(), size));
    // Fixed-block volumes (LUNs) read whole blocks; 4096 is a multiple of 512 and 4096.
    if (volume.block_size() > 1 && len % volume.block_size() != 0) len = 0;
    if (len > 0) {
        if (auto r = read_full(volume, std::span(head).first(len), 0); !r) {
            return fail(r.error().with_context("probe image format"));
        }
    }
    const std::byte* p = head.data();
    if (len >= 4 && std::memcmp(p, "QFI\xfb", 4) == 0) {
        if (len < 104) return fail(ErrorCode::protocol, "probe: qcow2 header truncated");
        const std::uint32_t cluster_bits = be32(p + 20);
        if (cluster_bits < 9 || cluster_bits > 21) {
            return fail(
                ErrorCode::protocol,
                fmt::format("probe: qcow2 header has invalid cluster_bits {}", cluster_bits));
        }
        return ProbedImage{ImageFormat::qcow2, be64(p + 24)};
    }
    if (len >= 20 && std::memcmp(p, "KDMV", 4) == 0) {
        return ProbedImage{ImageFormat::vmdk, le64(p + 12) * 512};
    }
    const std::string_view text(reinterpret_cast<const char*>(p), len);
    if (text.starts_with("# Disk DescriptorFile")) {
        return ProbedImage{ImageFormat::vmdk, vmdk_descriptor_size(text)};
    }
    return ProbedImage{ImageFormat::raw, size};
}

}  // namespace blockmig::pools
