// Byte counts as people read them, in one place so that every message of
// blockmig spells a size the same way.
#pragma once

#include <cstdint>
#include <string>

namespace blockmig {

// "512 B", "1.5 KiB", "120.0 MiB", "2.6 GiB": the largest binary unit the
// value reaches (up to TiB), one decimal. For progress, where sizes span
// bytes to terabytes.
std::string human_bytes(double bytes);

// "12.3 MiB": always MiB, one decimal. For amounts printed side by side
// (RAM transferred / remaining, bytes per stream), which compare at a
// glance only in one unit.
std::string human_mib(std::uint64_t bytes);

// "65 MiB": whole MiB, rounded up, so that a size is never shown smaller
// than it is (a disk of 64 MiB + 1 byte does not fit a 64 MiB LUN).
std::string whole_mib_rounded_up(std::uint64_t bytes);

}  // namespace blockmig
