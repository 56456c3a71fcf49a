// Decoding and encoding of VMDK sparse extent headers (see vmdk_format.hpp).
#include "vmdk_format.hpp"

#include <fmt/format.h>

#include <bit>

namespace blockmig::pools::image::vmdk {

namespace {

std::unexpected<Error> corrupt(const std::string& where, std::string_view field,
                               std::string_view what) {
    return fail(ErrorCode::protocol,
                fmt::format("vmdk: {}: header field {}: {}", where, field, what));
}

bool pow2(std::uint64_t v) { return v != 0 && std::has_single_bit(v); }

}  // namespace

Result<SparseHeader> parse_sparse_header(std::span<const std::byte> s, const std::string& where) {
    if (s.size() < k_sector) return corrupt(where, "magicNumber", "file shorter than one sector");
    if (get32(s.data()) != k_sparse_magic) return corrupt(where, "magicNumber", "not KDMV");
    SparseHeader h;
    h.version = get32(&s[4]);
    h.flags = get32(&s[8]);
    h.capacity = get64(&s[12]);
    h.grain_size = get64(&s[20]);
    h.descriptor_offset = get64(&s[28]);
    h.descriptor_size = get64(&s[36]);
    h.gtes_per_gt = get32(&s[44]);
    h.rgd_offset = get64(&s[48]);
    h.gd_offset = get64(&s[56]);
    h.overhead = get64(&s[64]);
    h.unclean_shutdown = std::to_integer<std::uint8_t>(s[72]);
    h.compress_algorithm = get16(&s[77]);
    if (h.version < 1 || h.version > 3)
        return corrupt(where, "version",
                       fmt::format("{} (blockmig reads versions 1 to 3)", h.version));
    // The spec's newline detector: a descriptor edited or FTPed in text mode
    // garbles these four bytes, and then the binary data too.
    if ((h.flags & k_flag_newline_test) && (s[73] != std::byte{'\n'} || s[74] != std::byte{' '} ||
                                            s[75] != std::byte{'\r'} || s[76] != std::byte{'\n'}))
        return corrupt(where, "singleEndLineChar",
                       "newline detector garbled (text-mode transfer?)");
    const std::uint32_t incompat = h.flags & 0xffff0000u & ~(k_flag_compressed | k_flag_markers);
    if (incompat != 0)
        return fail(ErrorCode::unsupported,
                    fmt::format("vmdk: {}: header field flags: unknown incompatible flags {:#x}",
                                where, incompat));
    if ((h.flags & k_flag_compressed) && h.compress_algorithm != k_compress_deflate)
        return corrupt(where, "compressAlgorithm",
                       fmt::format("{} (only deflate, 1, exists)", h.compress_algorithm));
    if (h.capacity == 0 || h.capacity > k_max_capacity_sectors)
        return corrupt(where, "capacity", fmt::format("{} sectors is absurd", h.capacity));
    if (!pow2(h.grain_size) || h.grain_size > k_max_grain_sectors)
        return corrupt(
            where, "grainSize",
            fmt::format("{} sectors (a power of two up to {})", h.grain_size, k_max_grain_sectors));
    if (!pow2(h.gtes_per_gt) || h.gtes_per_gt < 128 || h.gtes_per_gt > k_max_gtes_per_gt)
        return corrupt(where, "numGTEsPerGT", fmt::format("{} is out of range", h.gtes_per_gt));
    if (h.descriptor_size * k_sector > k_max_descriptor_bytes)
        return corrupt(where, "descriptorSize",
                       fmt::format("{} sectors is absurd", h.descriptor_size));
    return h;
}

void encode_sparse_header(const SparseHeader& h, std::span<std::byte, 512> s) {
    std::memset(s.data(), 0, s.size());
    put32(&s[0], k_sparse_magic);
    put32(&s[4], h.version);
    put32(&s[8], h.flags);
    put64(&s[12], h.capacity);
    put64(&s[20], h.grain_size);
    put64(&s[28], h.descriptor_offset);
    put64(&s[36], h.descriptor_size);
    put32(&s[44], h.gtes_per_gt);
    put64(&s[48], h.rgd_offset);
    put64(&s[56], h.gd_offset);
    put64(&s[64], h.overhead);
    s[72] = std::byte{h.unclean_shutdown};
    s[73] = std::byte{'\n'};
    s[74] = std::byte{' '};
    s[75] = std::byte{'\r'};
    s[76] = std::byte{'\n'};
    put16(&s[77], h.compress_algorithm);
}

Result<CowdHeader> parse_cowd_header(std::span<const std::byte> s, const std::string& where) {
    if (s.size() < k_sector) return corrupt(where, "magicNumber", "file shorter than one sector");
    if (get32(s.data()) != k_cowd_magic) return corrupt(where, "magicNumber", "not COWD");
    CowdHeader h;
    h.version = get32(&s[4]);
    h.flags = get32(&s[8]);
    h.capacity = get32(&s[12]);
    h.grain_size = get32(&s[16]);
    h.gd_offset = get32(&s[20]);
    h.gd_entries = get32(&s[24]);
    h.free_sector = get32(&s[28]);
    if (h.version != 1)
        return corrupt(where, "version", fmt::format("{} (COWD is version 1)", h.version));
    if (h.capacity == 0) return corrupt(where, "numSectors", "0");
    if (!pow2(h.grain_size) || h.grain_size > k_max_grain_sectors)
        return corrupt(where, "grainSize", fmt::format("{} sectors is out of range", h.grain_size));
    const std::uint64_t per_gt = std::uint64_t{k_cowd_gtes_per_gt} * h.grain_size;
    const std::uint64_t needed = (h.capacity + per_gt - 1) / per_gt;
    if (h.gd_entries < needed || h.gd_entries > needed + 1024)
        return corrupt(
            where, "numGDEntries",
            fmt::format("{} does not fit a capacity of {} sectors", h.gd_entries, h.capacity));
    return h;
}

}  // namespace blockmig::pools::image::vmdk
