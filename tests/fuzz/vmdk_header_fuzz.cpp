// libFuzzer target for the VMDK header and descriptor parsers: the input is
// up to four files (split at "%%FILE%%"), named d.vmdk, 1.vmdk, 2.vmdk and
// 3.vmdk, so descriptors can name extents and parents. open_vmdk must answer
// a clean Result; when it opens, the map must tile the disk and reads of the
// first data must work or fail cleanly. A crash, a leak or UB is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "image/vmdk_descriptor.hpp"
#include "pools/image/vmdk.hpp"
#include "pools/pools.hpp"

using namespace blockmig::pools;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    (void)image::vmdk::parse_descriptor(input, "fuzz");
    (void)image::looks_like_vmdk(std::as_bytes(std::span(data, size)));

    auto pool = make_mem_pool(std::uint64_t{1} << 30);
    static const char* names[] = {"d.vmdk", "1.vmdk", "2.vmdk", "3.vmdk"};
    for (int i = 0; i < 4 && !input.empty(); ++i) {
        auto cut = input.find("%%FILE%%");
        auto part = input.substr(0, cut);
        input = cut == std::string_view::npos ? std::string_view{} : input.substr(cut + 8);
        if (!pool->create(names[i], 0, ImageFormat::raw)) return 0;
        auto vol = pool->open(names[i], true);
        if (!vol || (!part.empty() && !(*vol)->pwrite(std::as_bytes(std::span(part)), 0))) return 0;
    }
    auto reader = image::open_vmdk(*pool, "d.vmdk");
    if (!reader) return 0;
    const std::uint64_t vsize = (*reader)->virtual_size();
    auto map = (*reader)->map(0, std::min<std::uint64_t>(vsize, 64 << 20));
    if (!map) return 0;
    std::uint64_t pos = 0;
    std::vector<std::byte> buf;
    for (const auto& r : *map) {
        if (r.offset != pos || r.length == 0) __builtin_trap();
        pos += r.length;
        if (r.kind == image::RangeKind::data && buf.size() < (1 << 20)) {
            buf.resize(std::min<std::uint64_t>(r.length, 256 * 1024));
            (void)(*reader)->read(buf, r.offset);
        }
    }
    if (pos != std::min<std::uint64_t>(vsize, 64 << 20)) __builtin_trap();
    return 0;
}
