// compare_images: content equality of two images, reading only what either
// side has allocated.
#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <future>

#include "blockmig/convert.hpp"
#include "pools/image/open.hpp"

namespace blockmig {

namespace {

using namespace pools;
using namespace pools::image;

constexpr std::uint64_t k_chunk = 1 << 20;

struct Side {
    VolumeRef ref;
    std::unique_ptr<ImageReader> reader;
};

Result<Side> open_side(const std::string& spec, std::optional<ImageFormat> format,
                       const PoolsConfig& pools) {
    auto ref = resolve_volume(spec, pools);
    if (!ref) return fail(ref.error());
    auto reader = open_image(*ref->pool, ref->name, format);
    if (!reader) return fail(reader.error());
    return Side{std::move(*ref), std::move(*reader)};
}

// Whether [offset, offset+length) of `r` is all zeroes by its map.
Result<bool> mapped_zero(ImageReader& r, std::uint64_t offset, std::uint64_t length) {
    auto map = r.map(offset, length);
    if (!map) return fail(map.error());
    return std::all_of(map->begin(), map->end(),
                       [](const Range& x) { return x.kind == RangeKind::zero; });
}

std::optional<std::uint64_t> first_mismatch(std::span<const std::byte> a,
                                            std::span<const std::byte> b) {
    if (std::memcmp(a.data(), b.data(), a.size()) == 0) return std::nullopt;
    auto it = std::mismatch(a.begin(), a.end(), b.begin());
    return static_cast<std::uint64_t>(it.first - a.begin());
}

// Compares [offset, offset+length) of both; the first differing offset, if any.
Result<std::optional<std::uint64_t>> compare_range(ImageReader& a, ImageReader* b,
                                                   std::uint64_t offset, std::uint64_t length) {
    auto za = mapped_zero(a, offset, length);
    if (!za) return fail(za.error());
    bool zb = true;
    if (b) {
        auto z = mapped_zero(*b, offset, length);
        if (!z) return fail(z.error());
        zb = *z;
    }
    if (*za && zb) return std::optional<std::uint64_t>{};
    std::vector<std::byte> ba(length), bb(length);
    // Both sides read at once: they are usually on different storage.
    auto fa = std::async(std::launch::async, [&] { return a.read(ba, offset); });
    Result<void> rb = b ? b->read(bb, offset) : Result<void>{};
    Result<void> ra = fa.get();
    if (!ra) return fail(ra.error());
    if (!rb) return fail(rb.error());
    auto m = first_mismatch(ba, bb);
    if (m) return std::optional<std::uint64_t>{offset + *m};
    return std::optional<std::uint64_t>{};
}

}  // namespace

Result<CompareReport> compare_images(const std::string& a, std::optional<ImageFormat> format_a,
                                     const std::string& b, std::optional<ImageFormat> format_b,
                                     const PoolsConfig& pools, const std::atomic<bool>& cancel) {
    auto sa = open_side(a, format_a, pools);
    if (!sa) return fail(sa.error());
    auto sb = open_side(b, format_b, pools);
    if (!sb) return fail(sb.error());
    CompareReport report;
    report.size_a = sa->reader->virtual_size();
    report.size_b = sb->reader->virtual_size();
    report.format_a = std::string(to_string(sa->reader->info().format));
    report.format_b = std::string(to_string(sb->reader->info().format));
    const std::uint64_t common = std::min(report.size_a, report.size_b);
    const std::uint64_t larger = std::max(report.size_a, report.size_b);
    // The common part compared; past the smaller image, the larger one must read as zeroes.
    ImageReader& big = report.size_a >= report.size_b ? *sa->reader : *sb->reader;
    struct Pass {
        ImageReader& a;
        ImageReader* b;
        std::uint64_t from, to;
    };
    for (const Pass& pass :
         {Pass{*sa->reader, sb->reader.get(), 0, common}, Pass{big, nullptr, common, larger}}) {
        for (std::uint64_t pos = pass.from; pos < pass.to; pos += k_chunk) {
            if (cancel.load()) return fail(ErrorCode::cancelled, "compare: interrupted");
            auto diff = compare_range(pass.a, pass.b, pos, std::min(k_chunk, pass.to - pos));
            if (!diff) return fail(diff.error());
            if (*diff) {
                report.identical = false;
                report.first_difference = **diff;
                return report;
            }
        }
    }
    return report;
}

}  // namespace blockmig
