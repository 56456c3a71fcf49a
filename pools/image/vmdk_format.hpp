// On-disk structures of VMDK sparse extents (VMware "Virtual Disk Format
// 5.0", sections "Hosted Sparse Extent Header", "Stream-Optimized Compressed
// Sparse Extents" and "ESX Server Sparse Extent Header"). Private to
// pools/image/; shared by the reader, the writers and the fuzz targets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "pools/pool.hpp"

namespace blockmig::pools::image::vmdk {

inline constexpr std::uint64_t k_sector = 512;
inline constexpr std::uint32_t k_sparse_magic = 0x564d444b;  // "KDMV" on disk
inline constexpr std::uint32_t k_cowd_magic = 0x44574f43;    // "COWD" on disk
inline constexpr std::uint64_t k_sesparse_magic = 0x00000000cafebabeULL;
inline constexpr std::uint64_t k_gd_at_end = ~std::uint64_t{0};

// Header flags.
inline constexpr std::uint32_t k_flag_newline_test = 1u << 0;
inline constexpr std::uint32_t k_flag_redundant_gd = 1u << 1;
inline constexpr std::uint32_t k_flag_zeroed_gte = 1u << 2;
inline constexpr std::uint32_t k_flag_compressed = 1u << 16;
inline constexpr std::uint32_t k_flag_markers = 1u << 17;
inline constexpr std::uint16_t k_compress_deflate = 1;

// Metadata marker types (streamOptimized).
inline constexpr std::uint32_t k_marker_eos = 0;
inline constexpr std::uint32_t k_marker_gt = 1;
inline constexpr std::uint32_t k_marker_gd = 2;
inline constexpr std::uint32_t k_marker_footer = 3;

// Bounds that keep memory use sane on hostile input.
inline constexpr std::uint64_t k_max_capacity_sectors = std::uint64_t{1} << 47;  // 64 PiB
inline constexpr std::uint64_t k_max_grain_sectors = 2048;                       // 1 MiB
inline constexpr std::uint32_t k_max_gtes_per_gt = 4096;
inline constexpr std::uint64_t k_max_descriptor_bytes = 1 << 20;

inline std::uint16_t get16(const std::byte* p) {
    return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) |
                                      std::to_integer<unsigned>(p[1]) << 8);
}
inline std::uint32_t get32(const std::byte* p) {
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = v << 8 | std::to_integer<std::uint32_t>(p[i]);
    return v;
}
inline std::uint64_t get64(const std::byte* p) {
    return std::uint64_t{get32(p)} | std::uint64_t{get32(p + 4)} << 32;
}
inline void put16(std::byte* p, std::uint16_t v) {
    p[0] = std::byte(v & 0xff);
    p[1] = std::byte(v >> 8);
}
inline void put32(std::byte* p, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = std::byte((v >> (8 * i)) & 0xff);
}
inline void put64(std::byte* p, std::uint64_t v) {
    put32(p, static_cast<std::uint32_t>(v));
    put32(p + 4, static_cast<std::uint32_t>(v >> 32));
}

// SparseExtentHeader (512 bytes, packed, little endian).
struct SparseHeader {
    std::uint32_t version = 1;
    std::uint32_t flags = 0;
    std::uint64_t capacity = 0;  // sectors
    std::uint64_t grain_size = 128;
    std::uint64_t descriptor_offset = 0;
    std::uint64_t descriptor_size = 0;
    std::uint32_t gtes_per_gt = 512;
    std::uint64_t rgd_offset = 0;
    std::uint64_t gd_offset = 0;
    std::uint64_t overhead = 0;
    std::uint8_t unclean_shutdown = 0;
    std::uint16_t compress_algorithm = 0;
};

// Decodes a header; `where` names the file in errors. Checks the magic,
// version (1..3), newline detector, and that sizes are sane. Does not check
// offsets against the file size (the caller knows it).
Result<SparseHeader> parse_sparse_header(std::span<const std::byte> sector,
                                         const std::string& where);
// Encodes a header into 512 bytes.
void encode_sparse_header(const SparseHeader& header, std::span<std::byte, 512> out);

// Number of grain table entries / grain tables of a sparse extent.
inline std::uint64_t grain_count(const SparseHeader& h) {
    return (h.capacity + h.grain_size - 1) / h.grain_size;
}
inline std::uint64_t gt_count(const SparseHeader& h) {
    return (grain_count(h) + h.gtes_per_gt - 1) / h.gtes_per_gt;
}

// ESX Server sparse extent (vmfsSparse, "COWD") header fields blockmig uses.
struct CowdHeader {
    std::uint32_t version = 0;
    std::uint32_t flags = 0;
    std::uint32_t capacity = 0;  // sectors
    std::uint32_t grain_size = 0;
    std::uint32_t gd_offset = 0;
    std::uint32_t gd_entries = 0;
    std::uint32_t free_sector = 0;
};
inline constexpr std::uint32_t k_cowd_gtes_per_gt = 4096;
Result<CowdHeader> parse_cowd_header(std::span<const std::byte> sector, const std::string& where);

// A streamOptimized marker: {val u64, size u32, type u32}. size != 0: a
// compressed grain at LBA val whose `size` bytes start at byte 12.
struct Marker {
    std::uint64_t val = 0;
    std::uint32_t size = 0;
    std::uint32_t type = 0;
};
inline Marker parse_marker(const std::byte* p) { return {get64(p), get32(p + 8), get32(p + 12)}; }

}  // namespace blockmig::pools::image::vmdk
