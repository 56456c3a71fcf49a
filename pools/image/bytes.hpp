// Private to pools/image/: byte-order helpers and volume I/O that respects a
// backend's block size, shared by the format readers and writers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "pools/pool.hpp"

namespace blockmig::pools::image::detail {

inline std::uint64_t get_be(const std::byte* p, int bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
    return v;
}

inline void put_be(std::byte* p, std::uint64_t value, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) {
        p[i] = static_cast<std::byte>(value & 0xff);
        value >>= 8;
    }
}

inline std::uint64_t get_le(const std::byte* p, int bytes) {
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
    return v;
}

inline std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
    return (value + alignment - 1) / alignment * alignment;
}

// Reads buf.size() bytes at offset, widening the request to the volume's
// block size when needed (compressed qcow2 clusters sit at byte offsets, and
// LUNs take only whole blocks). Bytes past the end of the volume read as
// zeroes; `*available` (if given) receives how many bytes really existed.
// `size` is the volume's size when the caller knows it (saves an fstat per
// read on files). Thread-safe as Volume::pread is.
Result<void> read_at(Volume& volume, std::span<std::byte> buf, std::uint64_t offset,
                     std::size_t* available = nullptr,
                     std::optional<std::uint64_t> size = std::nullopt);

// True if every byte of `data` is zero (fast path for 8-byte words).
bool is_zero(std::span<const std::byte> data);

}  // namespace blockmig::pools::image::detail
