// libFuzzer target for the qcow2 reader: arbitrary bytes as an image file
// (header, extensions, L1/L2 tables, compressed cluster descriptors) in an
// in-memory pool. Opening may fail; whatever opens must map and read its
// first MiBs without crashing, UB or unbounded memory.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "pools/image/qcow2.hpp"
#include "pools/pools.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace blockmig::pools;
    auto pool = make_mem_pool(64ull << 20);
    if (!pool->create("f.qcow2", 0, ImageFormat::raw)) return 0;
    {
        auto volume = pool->open("f.qcow2", true);
        if (!volume || size == 0) return 0;
        if (!(*volume)->pwrite({reinterpret_cast<const std::byte*>(data), size}, 0)) return 0;
    }
    auto reader = image::open_qcow2(*pool, "f.qcow2");
    if (!reader) return 0;
    const std::uint64_t span = std::min<std::uint64_t>((*reader)->virtual_size(), 4ull << 20);
    auto map = (*reader)->map(0, span);
    if (map) {
        std::uint64_t covered = 0;
        for (const auto& r : *map) {
            if (r.offset != covered) __builtin_trap();  // the map must be contiguous
            covered += r.length;
        }
        if (covered != span) __builtin_trap();
    }
    std::vector<std::byte> buf(64 << 10);
    for (std::uint64_t off = 0; off + buf.size() <= span; off += buf.size())
        (void)(*reader)->read(buf, off);
    return 0;
}
