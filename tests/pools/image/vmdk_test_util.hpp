// Hand-built VMDK files for the unit tests (independent of blockmig's writers).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "image/vmdk_format.hpp"
#include "pools/pools.hpp"

namespace vmdk_test {

namespace v = blockmig::pools::image::vmdk;

inline std::vector<std::byte> bytes_of(const std::string& s) {
    std::vector<std::byte> out(s.size());
    std::memcpy(out.data(), s.data(), s.size());
    return out;
}

inline std::vector<std::byte> filled(std::size_t n, std::uint8_t seed) {
    std::vector<std::byte> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = std::byte((i * 13 + seed * 7 + (i >> 9)) & 0xff);
    return out;
}

// A hosted sparse (monolithicSparse-style) extent, grains uncompressed.
struct SparseSpec {
    std::uint64_t capacity = 0;  // sectors
    std::uint64_t grain = 8;     // sectors
    std::uint32_t gtes = 128;
    std::uint32_t version = 1;
    std::uint32_t flags = v::k_flag_newline_test;
    std::string descriptor;                                  // embedded if not empty
    std::map<std::uint64_t, std::vector<std::byte>> grains;  // grain index -> data (grain bytes)
    std::set<std::uint64_t> zeroed;                          // GTE = 1
};

inline std::vector<std::byte> build_sparse(const SparseSpec& s) {
    v::SparseHeader h;
    h.version = s.version;
    h.flags = s.flags;
    h.capacity = s.capacity;
    h.grain_size = s.grain;
    h.gtes_per_gt = s.gtes;
    const std::uint64_t nt = v::gt_count(h);
    const std::uint64_t gt_sectors = (std::uint64_t{s.gtes} * 4 + 511) / 512;
    h.descriptor_offset = s.descriptor.empty() ? 0 : 1;
    h.descriptor_size = s.descriptor.empty() ? 0 : 20;
    h.gd_offset = 21;
    const std::uint64_t gd_sectors = (nt * 4 + 511) / 512;
    const std::uint64_t gt0 = h.gd_offset + gd_sectors;
    h.overhead = gt0 + nt * gt_sectors;
    std::vector<std::byte> f(h.overhead * 512);
    v::encode_sparse_header(h, std::span<std::byte, 512>(f.data(), 512));
    std::memcpy(f.data() + 512, s.descriptor.data(), s.descriptor.size());
    for (std::uint64_t t = 0; t < nt; ++t)
        v::put32(&f[h.gd_offset * 512 + 4 * t], static_cast<std::uint32_t>(gt0 + t * gt_sectors));
    auto set_gte = [&](std::uint64_t g, std::uint32_t value) {
        const std::uint64_t t = g / s.gtes, j = g % s.gtes;
        v::put32(&f[(gt0 + t * gt_sectors) * 512 + 4 * j], value);
    };
    for (const auto& [g, data] : s.grains) {
        const std::uint64_t at = f.size() / 512;
        set_gte(g, static_cast<std::uint32_t>(at));
        f.insert(f.end(), data.begin(), data.end());
        f.resize((f.size() + 511) / 512 * 512);
    }
    for (auto g : s.zeroed) set_gte(g, 1);
    return f;
}

inline void put_file(blockmig::pools::Pool& pool, const std::string& name,
                     const std::vector<std::byte>& data) {
    auto info = pool.create(name, 0, blockmig::pools::ImageFormat::raw);
    ASSERT_TRUE(info) << info.error().message;
    auto vol = pool.open(name, true);
    ASSERT_TRUE(vol);
    if (!data.empty()) {
        ASSERT_TRUE((*vol)->pwrite(data, 0));
    }
}

}  // namespace vmdk_test
