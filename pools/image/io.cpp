// Volume I/O helpers for the format code (see bytes.hpp).
#include <algorithm>
#include <cstring>
#include <vector>

#include "bytes.hpp"

namespace blockmig::pools::image::detail {

namespace {

// Reads [offset, offset+buf.size()) where both are block-aligned; zero-fills
// past the end of the volume and reports how much existed.
Result<std::size_t> read_aligned(Volume& volume, std::span<std::byte> buf, std::uint64_t offset,
                                 std::uint64_t size) {
    std::size_t have =
        offset >= size
            ? 0
            : static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - offset));
    std::size_t done = 0;
    while (done < have) {
        auto n = volume.pread(buf.subspan(done, have - done), offset + done);
        if (!n) return fail(n.error());
        if (*n == 0) break;
        done += *n;
    }
    std::fill(buf.begin() + static_cast<std::ptrdiff_t>(done), buf.end(), std::byte{0});
    return done;
}

}  // namespace

Result<void> read_at(Volume& volume, std::span<std::byte> buf, std::uint64_t offset,
                     std::size_t* available, std::optional<std::uint64_t> known_size) {
    const std::uint64_t size = known_size ? *known_size : volume.size();
    const std::uint64_t block = volume.block_size();
    if (block <= 1 || (offset % block == 0 && buf.size() % block == 0)) {
        auto n = read_aligned(volume, buf, offset, size);
        if (!n) return fail(n.error());
        if (available) *available = *n;
        return {};
    }
    const std::uint64_t start = offset / block * block;
    const std::uint64_t end = align_up(offset + buf.size(), block);
    std::vector<std::byte> tmp(end - start);
    auto n = read_aligned(volume, tmp, start, size);
    if (!n) return fail(n.error());
    std::memcpy(buf.data(), tmp.data() + (offset - start), buf.size());
    if (available) {
        const std::uint64_t got_end = start + *n;
        *available =
            got_end <= offset
                ? 0
                : static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), got_end - offset));
    }
    return {};
}

bool is_zero(std::span<const std::byte> data) {
    const std::byte* p = data.data();
    std::size_t n = data.size();
    while (n > 0 && reinterpret_cast<std::uintptr_t>(p) % 8 != 0) {
        if (*p != std::byte{0}) return false;
        ++p, --n;
    }
    const auto* w = reinterpret_cast<const std::uint64_t*>(p);
    std::size_t words = n / 8;
    // Unrolled by four: this runs over every byte the pipeline copies.
    std::size_t i = 0;
    for (; i + 4 <= words; i += 4)
        if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3]) != 0) return false;
    for (; i < words; ++i)
        if (w[i] != 0) return false;
    for (std::size_t j = words * 8; j < n; ++j)
        if (p[j] != std::byte{0}) return false;
    return true;
}

}  // namespace blockmig::pools::image::detail
