// Byte counts for people: the three spellings every message shares.
#include <gtest/gtest.h>

#include <cstdint>

#include "progress/human_size.hpp"

using blockmig::human_bytes;
using blockmig::human_mib;
using blockmig::whole_mib_rounded_up;

namespace {

constexpr std::uint64_t k_mib = std::uint64_t{1} << 20;

TEST(HumanBytes, PicksTheLargestUnitTheValueReaches) {
    EXPECT_EQ(human_bytes(0), "0 B");
    EXPECT_EQ(human_bytes(1023), "1023 B");
    EXPECT_EQ(human_bytes(1536), "1.5 KiB");
    EXPECT_EQ(human_bytes(120.0 * k_mib), "120.0 MiB");
    EXPECT_EQ(human_bytes(2.6 * 1024 * k_mib), "2.6 GiB");
    EXPECT_EQ(human_bytes(2048.0 * 1024 * 1024 * k_mib), "2048.0 TiB");
}

TEST(HumanMib, IsAlwaysMibWithOneDecimal) {
    EXPECT_EQ(human_mib(0), "0.0 MiB");
    EXPECT_EQ(human_mib(k_mib / 2), "0.5 MiB");
    EXPECT_EQ(human_mib(3 * 1024 * k_mib), "3072.0 MiB");
}

TEST(WholeMibRoundedUp, NeverShowsASizeSmallerThanItIs) {
    EXPECT_EQ(whole_mib_rounded_up(0), "0 MiB");
    EXPECT_EQ(whole_mib_rounded_up(1), "1 MiB");
    EXPECT_EQ(whole_mib_rounded_up(64 * k_mib), "64 MiB");
    EXPECT_EQ(whole_mib_rounded_up(64 * k_mib + 1), "65 MiB");
}

}  // namespace
