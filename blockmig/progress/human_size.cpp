#include "human_size.hpp"

#include <fmt/core.h>

namespace blockmig {

namespace {

constexpr std::uint64_t k_mib = std::uint64_t{1} << 20;

}  // namespace

std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int unit = 0;
    while (bytes >= 1024 && unit < 4) bytes /= 1024, ++unit;
    return unit == 0 ? fmt::format("{:.0f} B", bytes)
                     : fmt::format("{:.1f} {}", bytes, units[unit]);
}

std::string human_mib(std::uint64_t bytes) {
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / k_mib);
}

std::string whole_mib_rounded_up(std::uint64_t bytes) {
    return fmt::format("{} MiB", (bytes + k_mib - 1) / k_mib);
}

}  // namespace blockmig
