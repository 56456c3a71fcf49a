// libFuzzer target for streamOptimized markers, footers, grain tables and
// compressed grains: the input follows a valid stream header (version 3,
// compressed, markers, gdOffset = GD_AT_END), so the fuzzer spends its time
// on the stream body: grain markers, GT/GD markers, the footer at EOF-1024
// and the end-of-stream marker. Every grain must read or fail cleanly.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "image/vmdk_format.hpp"
#include "pools/image/vmdk.hpp"
#include "pools/pools.hpp"

using namespace blockmig::pools;
namespace v = blockmig::pools::image::vmdk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // A seed made by qemu-img or blockmig is used as is; anything else gets
    // a stream header in front.
    std::vector<std::byte> file;
    if (size >= 512 && v::get32(reinterpret_cast<const std::byte*>(data)) == v::k_sparse_magic) {
        file.assign(reinterpret_cast<const std::byte*>(data),
                    reinterpret_cast<const std::byte*>(data) + size);
    } else {
        v::SparseHeader h;
        h.version = 3;
        h.flags = v::k_flag_newline_test | v::k_flag_compressed | v::k_flag_markers;
        h.capacity = 128 * 512 * 2;  // two grain tables
        h.grain_size = 128;
        h.gtes_per_gt = 512;
        h.gd_offset = v::k_gd_at_end;
        h.overhead = 1;
        h.compress_algorithm = v::k_compress_deflate;
        file.resize(512);
        v::encode_sparse_header(h, std::span<std::byte, 512>(file.data(), 512));
        file.insert(file.end(), reinterpret_cast<const std::byte*>(data),
                    reinterpret_cast<const std::byte*>(data) + size);
    }
    auto pool = make_mem_pool(std::uint64_t{1} << 30);
    if (!pool->create("s.vmdk", 0, ImageFormat::raw)) return 0;
    auto vol = pool->open("s.vmdk", true);
    if (!vol || !(*vol)->pwrite(file, 0)) return 0;
    auto reader = image::open_vmdk(*pool, "s.vmdk");
    if (!reader) return 0;
    auto map = (*reader)->map(0, std::min<std::uint64_t>((*reader)->virtual_size(), 256 << 20));
    if (!map) return 0;
    std::vector<std::byte> grain(65536);
    int reads = 0;
    for (const auto& r : *map) {
        if (r.kind != image::RangeKind::data) continue;
        for (std::uint64_t off = r.offset; off < r.offset + r.length && reads < 64;
             off += grain.size(), ++reads) {
            auto n = std::min<std::uint64_t>(grain.size(), r.offset + r.length - off);
            (void)(*reader)->read(std::span(grain).first(n), off);
        }
    }
    return 0;
}
