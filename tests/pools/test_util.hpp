// Small helpers for pools unit tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

inline std::vector<std::byte> pattern(std::size_t size, std::uint8_t seed) {
    std::vector<std::byte> out(size);
    for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
    return out;
}
