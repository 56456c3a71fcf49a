// An empty qcow2 v3 image, laid out as qemu-img lays out a fresh one
// (docs/interop/qcow2.txt in QEMU's tree is the spec):
//   cluster 0  header (104 bytes, v3) + end-of-extensions marker
//   cluster 1  refcount table: one entry -> cluster 2
//   cluster 2  refcount block: 16-bit refcounts, clusters 0..n-1 = 1
//   cluster 3+ L1 table, all zero (no data clusters yet)
// The product must not shell out to qemu-img, so this is written by hand;
// tests check the result with `qemu-img check` and `qemu-img info`.
#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "pools/image_format.hpp"

namespace blockmig::pools {

namespace {

constexpr std::uint32_t k_cluster_bits = 16;
constexpr std::uint64_t k_cluster_size = 1ull << k_cluster_bits;
constexpr std::uint32_t k_refcount_order = 4;  // 16-bit refcounts
constexpr std::uint64_t k_l2_entries = k_cluster_size / 8;
constexpr std::uint64_t k_refcounts_per_block = k_cluster_size * 8 / (1u << k_refcount_order);
constexpr std::uint64_t k_header_length = 104;

void put_be(std::vector<std::byte>& buf, std::size_t offset, std::uint64_t value, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) {
        buf[offset + static_cast<std::size_t>(i)] = static_cast<std::byte>(value & 0xff);
        value >>= 8;
    }
}

std::uint64_t l1_entries(std::uint64_t virtual_size) {
    const std::uint64_t per_l1 = k_cluster_size * k_l2_entries;  // 512 MiB
    return (virtual_size + per_l1 - 1) / per_l1;
}

std::uint64_t l1_clusters(std::uint64_t virtual_size) {
    return std::max<std::uint64_t>(
        1, (l1_entries(virtual_size) * 8 + k_cluster_size - 1) / k_cluster_size);
}

}  // namespace

std::uint64_t empty_qcow2_file_size(std::uint64_t virtual_size) {
    return (3 + l1_clusters(virtual_size)) * k_cluster_size;
}

Result<void> write_empty_qcow2(Volume& volume, std::uint64_t virtual_size) {
    if (virtual_size == 0 || virtual_size % 512 != 0) {
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("qcow2: virtual size {} must be a nonzero multiple of 512", virtual_size));
    }
    const std::uint64_t l1_count = l1_entries(virtual_size);
    if (l1_count > 0xffffffffull / 8) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qcow2: virtual size {} too large", virtual_size));
    }
    const std::uint64_t clusters = 3 + l1_clusters(virtual_size);
    if (clusters > k_refcounts_per_block) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qcow2: virtual size {} too large", virtual_size));
    }
    const std::uint64_t file_size = clusters * k_cluster_size;
    if (volume.block_size() > 1 && volume.size() < file_size) {
        return fail(ErrorCode::no_space,
                    fmt::format("qcow2: the volume ({} bytes) cannot hold the {} byte image",
                                volume.size(), file_size));
    }

    std::vector<std::byte> image(file_size, std::byte{0});
    put_be(image, 0, 0x514649fb, 4);  // "QFI\xfb"
    put_be(image, 4, 3, 4);           // version
    put_be(image, 20, k_cluster_bits, 4);
    put_be(image, 24, virtual_size, 8);
    put_be(image, 36, l1_count, 4);
    put_be(image, 40, 3 * k_cluster_size, 8);  // l1_table_offset
    put_be(image, 48, k_cluster_size, 8);      // refcount_table_offset
    put_be(image, 56, 1, 4);                   // refcount_table_clusters
    put_be(image, 96, k_refcount_order, 4);
    put_be(image, 100, k_header_length, 4);
    // Bytes 104..111 stay zero: the end-of-header-extensions marker.
    put_be(image, k_cluster_size, 2 * k_cluster_size,
           8);  // refcount table[0] -> block at cluster 2
    for (std::uint64_t c = 0; c < clusters; ++c) put_be(image, 2 * k_cluster_size + c * 2, 1, 2);

    // Write the metadata last-to-first so a partial write never leaves a
    // valid-looking header pointing at missing tables.
    if (auto r = volume.pwrite(std::span(image).subspan(k_cluster_size), k_cluster_size); !r) {
        return fail(r.error().with_context("qcow2: write tables"));
    }
    if (auto r = volume.pwrite(std::span(image).first(k_cluster_size), 0); !r) {
        return fail(r.error().with_context("qcow2: write header"));
    }
    if (auto r = volume.flush(); !r) return fail(r.error().with_context("qcow2: flush"));
    return {};
}

Result<void> set_qcow2_backing(Volume& volume, std::string_view backing, ImageFormat backing_format) {
    // Cluster 0 of a fresh image: 104-byte header, then the extension area.
    // Layout written here (docs/interop/qcow2.txt, "Header extensions"):
    //   104: backing format extension {type 0xe2792aca, length, name, pad to 8}
    //   then the end-of-extensions marker (8 zero bytes), then the file name.
    const std::string_view format_name = to_string(backing_format);
    if (backing.empty() || backing.size() > 1023)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qcow2: backing file name must be 1..1023 bytes, got {}", backing.size()));
    std::vector<std::byte> header(k_cluster_size);
    if (auto r = read_full(volume, header, 0); !r) return fail(r.error().with_context("qcow2: read header"));
    auto get_be = [&](std::size_t offset, int bytes) {
        std::uint64_t v = 0;
        for (int i = 0; i < bytes; ++i) v = v << 8 | static_cast<std::uint8_t>(header[offset + i]);
        return v;
    };
    if (get_be(0, 4) != 0x514649fb || get_be(4, 4) != 3 || get_be(100, 4) != k_header_length ||
        get_be(8, 8) != 0 || get_be(k_header_length, 8) != 0)
        return fail(ErrorCode::invalid_argument, "qcow2: not a fresh image without extensions");
    const std::size_t ext_len = (format_name.size() + 7) / 8 * 8;
    const std::size_t name_offset = k_header_length + 8 + ext_len + 8;
    std::fill(header.begin() + k_header_length, header.end(), std::byte{0});
    put_be(header, k_header_length, 0xe2792aca, 4);
    put_be(header, k_header_length + 4, format_name.size(), 4);
    std::memcpy(&header[k_header_length + 8], format_name.data(), format_name.size());
    std::memcpy(&header[name_offset], backing.data(), backing.size());
    put_be(header, 8, name_offset, 8);       // backing_file_offset
    put_be(header, 16, backing.size(), 4);   // backing_file_size
    // The whole cluster: block devices (iSCSI LUNs) take only aligned writes.
    if (auto r = volume.pwrite(header, 0); !r)
        return fail(r.error().with_context("qcow2: write header"));
    if (auto r = volume.flush(); !r) return fail(r.error().with_context("qcow2: flush"));
    return {};
}

}  // namespace blockmig::pools
