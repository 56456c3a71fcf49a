// Private to pools/image/: qcow2 on-disk constants (QEMU docs/interop/qcow2.txt).
#pragma once

#include <cstdint>

namespace blockmig::pools::image::detail::qcow2 {

constexpr std::uint32_t k_magic = 0x514649fb;  // "QFI\xfb"
constexpr std::uint32_t k_v2_header_length = 72;
constexpr std::uint32_t k_v3_header_length = 104;
constexpr std::uint32_t k_min_cluster_bits = 9;
constexpr std::uint32_t k_max_cluster_bits = 21;
// QEMU's QCOW_MAX_L1_SIZE: 32 MiB of L1 entries.
constexpr std::uint64_t k_max_l1_entries = (32ull << 20) / 8;

// L1 / L2 entry bits.
constexpr std::uint64_t k_offset_mask = 0x00fffffffffffe00ull;  // bits 9..55
constexpr std::uint64_t k_copied = 1ull << 63;
constexpr std::uint64_t k_compressed = 1ull << 62;
constexpr std::uint64_t k_zero = 1;  // v3 standard clusters: reads as zeroes

// Incompatible feature bits.
constexpr std::uint64_t k_incompat_dirty = 1ull << 0;
constexpr std::uint64_t k_incompat_corrupt = 1ull << 1;
constexpr std::uint64_t k_incompat_data_file = 1ull << 2;
constexpr std::uint64_t k_incompat_compression = 1ull << 3;
constexpr std::uint64_t k_incompat_extended_l2 = 1ull << 4;
constexpr std::uint64_t k_incompat_known = 0x1f;
constexpr std::uint64_t k_compat_lazy_refcounts = 1ull << 0;

// Header extension types.
constexpr std::uint32_t k_ext_end = 0;
constexpr std::uint32_t k_ext_backing_format = 0xe2792aca;
constexpr std::uint32_t k_ext_data_file = 0x44415441;

// Header field offsets.
constexpr int k_off_version = 4;
constexpr int k_off_backing_offset = 8;
constexpr int k_off_backing_size = 16;
constexpr int k_off_cluster_bits = 20;
constexpr int k_off_size = 24;
constexpr int k_off_crypt = 32;
constexpr int k_off_l1_size = 36;
constexpr int k_off_l1_offset = 40;
constexpr int k_off_rt_offset = 48;
constexpr int k_off_rt_clusters = 56;
constexpr int k_off_incompat = 72;
constexpr int k_off_compat = 80;
constexpr int k_off_autoclear = 88;
constexpr int k_off_refcount_order = 96;
constexpr int k_off_header_length = 100;
constexpr int k_off_compression_type = 104;

// Compressed cluster descriptor: host offset in bits 0..x-1, additional
// 512-byte sectors in bits x..61, x = 62 - (cluster_bits - 8).
constexpr std::uint32_t csize_shift(std::uint32_t cluster_bits) { return 62 - (cluster_bits - 8); }
constexpr std::uint64_t csize_mask(std::uint32_t cluster_bits) {
    return (1ull << (cluster_bits - 8)) - 1;
}

}  // namespace blockmig::pools::image::detail::qcow2
