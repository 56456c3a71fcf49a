// Rate smoothing and ETA for the progress display.
#include "blockmig/progress.hpp"

#include <gtest/gtest.h>

using blockmig::RateMeter;
using namespace std::chrono_literals;

TEST(RateMeter, UnknownEtaBeforeTwoSamples) {
    RateMeter m;
    m.add(std::chrono::steady_clock::time_point{} + 1s, 100);
    EXPECT_LT(m.eta(1000), 0);
}

TEST(RateMeter, SteadyRateGivesEta) {
    RateMeter m;
    auto t = std::chrono::steady_clock::time_point{} + 1s;
    for (int i = 0; i <= 10; ++i) m.add(t + i * 1s, static_cast<std::uint64_t>(i) * (10 << 20));
    EXPECT_NEAR(m.rate(), 10 << 20, 1);
    EXPECT_NEAR(m.eta(50 << 20), 5.0, 0.01);
}
