// migrate/policy.hpp: the --policy controller fed scripted query-migrate
// samples on a fake clock. Each test guards one decision: a shrinking
// pre-copy is left alone, a stalled one escalates per policy (downtime
// step, throttle then pause), post-copy starts at a stall or at
// --postcopy-after, whichever comes first, and only with every disk in sync,
// and the deadline aborts.
#include <gtest/gtest.h>

#include "migrate/policy.hpp"
#include "migrate/tuning.hpp"

using namespace blockmig;
using namespace blockmig::migrate;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

class PolicyTest : public ::testing::Test {
  protected:
    PolicyController make(MigratePolicy policy, std::chrono::seconds timeout = 0s,
                          std::chrono::milliseconds max_downtime = 400ms,
                          std::optional<std::chrono::seconds> postcopy_after = std::nullopt) {
        return PolicyController({.policy = policy,
                                 .max_downtime = max_downtime,
                                 .deadline = deadline_after(clock, timeout),
                                 .timeout = timeout,
                                 .stall_passes = 2,
                                 .ram_started = clock.now(),
                                 .postcopy_after = postcopy_after});
    }

    // One sample a second: pass `passes`, `remaining` MiB left.
    std::optional<PolicyAction> feed(PolicyController& c, std::uint64_t passes,
                                     std::uint64_t remaining_mib, bool in_sync = true,
                                     int throttle = 0) {
        clock.advance(1s);
        return c.decide(clock.now(),
                        RamSample{.remaining = remaining_mib * k_mib,
                                  .transferred = passes * 64 * k_mib,
                                  .passes = passes,
                                  .cpu_throttle = throttle},
                        in_sync);
    }

    // The first pass (sending everything once) then passes 2..`last` each
    // leaving `left` MiB; returns every action, in order.
    std::vector<PolicyAction> stall(PolicyController& c, std::uint64_t first, std::uint64_t last,
                                    std::uint64_t left, bool in_sync = true) {
        std::vector<PolicyAction> actions;
        for (std::uint64_t pass = first; pass <= last; ++pass)
            if (auto a = feed(c, pass, left, in_sync)) actions.push_back(*a);
        return actions;
    }

    FakeClock clock;
};

TEST_F(PolicyTest, MinimalDowntimeStartsAtOneHundredMillisecondsOthersAtTheMaximum) {
    EXPECT_EQ(initial_downtime(MigratePolicy::minimal_downtime, 400ms), 100ms);
    EXPECT_EQ(initial_downtime(MigratePolicy::minimal_downtime, 30ms), 30ms);
    EXPECT_EQ(initial_downtime(MigratePolicy::postcopy, 400ms), 400ms);
    EXPECT_EQ(initial_downtime(MigratePolicy::suspend, 400ms), 400ms);
    EXPECT_EQ(make(MigratePolicy::minimal_downtime).downtime(), 100ms);
}

TEST_F(PolicyTest, TheFirstPassNeverCountsAsAStall) {
    auto c = make(MigratePolicy::minimal_downtime);
    // Many samples within pass 1, remaining barely moving (a slow link).
    for (int i = 0; i < 20; ++i) EXPECT_FALSE(feed(c, 1, 200 - i / 10)) << i;
    EXPECT_FALSE(c.stalled());
}

TEST_F(PolicyTest, ShrinkingRemainingRamTakesNoAction) {
    for (auto policy :
         {MigratePolicy::minimal_downtime, MigratePolicy::postcopy, MigratePolicy::suspend}) {
        auto c = make(policy, 0s, 400ms, /*postcopy_after=*/60s);
        std::uint64_t left = 100;
        for (std::uint64_t pass = 1; pass <= 12; ++pass) {
            EXPECT_FALSE(feed(c, pass, left)) << to_string(policy) << " pass " << pass;
            left = left * 8 / 10;  // each pass leaves 20 % less
        }
        EXPECT_FALSE(c.stalled());
        EXPECT_EQ(c.downtime(), initial_downtime(policy, 400ms));
    }
}

TEST_F(PolicyTest, SamplesWithinOnePassCountOnce) {
    auto c = make(MigratePolicy::minimal_downtime);
    feed(c, 2, 50);
    // Pass 3 seen by five samples: one stalled pass, not five.
    for (int i = 0; i < 5; ++i) EXPECT_FALSE(feed(c, 3, 50));
    EXPECT_FALSE(c.stalled());
    auto a = feed(c, 4, 50);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->step, PolicyStep::set_downtime);
}

TEST_F(PolicyTest, MinimalDowntimeDoublesTheLimitOnEachStallUpToTheMaximum) {
    auto c = make(MigratePolicy::minimal_downtime, 0s, 300ms);
    const auto actions = stall(c, 1, 12, 50);
    ASSERT_EQ(actions.size(), 2u);
    EXPECT_EQ(actions[0].step, PolicyStep::set_downtime);
    EXPECT_EQ(actions[0].downtime, 200ms);
    EXPECT_NE(actions[0].text.find("downtime limit 100 -> 200 ms"), std::string::npos)
        << actions[0].text;
    EXPECT_EQ(actions[1].downtime, 300ms) << "capped at --max-downtime";
    EXPECT_EQ(c.downtime(), 300ms);
}

TEST_F(PolicyTest, MinimalDowntimeStepsOnlyAfterTheStallPasses) {
    auto c = make(MigratePolicy::minimal_downtime);
    EXPECT_FALSE(feed(c, 1, 200));
    EXPECT_FALSE(feed(c, 2, 50));  // the floor
    EXPECT_FALSE(feed(c, 3, 48));  // not 10 % better: one stalled pass
    auto a = feed(c, 4, 49);
    ASSERT_TRUE(a) << "two passes without shrinking";
    EXPECT_EQ(a->downtime, 200ms);
    EXPECT_FALSE(feed(c, 5, 30)) << "a pass that shrank starts the count again";
    EXPECT_FALSE(feed(c, 6, 30));
    a = feed(c, 7, 30);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->downtime, 400ms);
}

TEST_F(PolicyTest, MinimalDowntimeAtTheMaximumWaitsForTheDeadlineThenAborts) {
    auto c = make(MigratePolicy::minimal_downtime, 30s, 200ms);
    auto actions = stall(c, 1, 20, 50);  // 20 s
    ASSERT_EQ(actions.size(), 1u);
    EXPECT_EQ(actions[0].downtime, 200ms);
    EXPECT_TRUE(c.stalled());
    for (int i = 0; i < 9; ++i) EXPECT_FALSE(feed(c, 21 + i, 50)) << "29 s: before the deadline";
    auto a = feed(c, 30, 50);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->step, PolicyStep::abort);
    EXPECT_NE(a->text.find("timed out after 30 s with 50.0 MiB of RAM still to send"),
              std::string::npos)
        << a->text;
    EXPECT_FALSE(feed(c, 31, 50)) << "one abort";
}

TEST_F(PolicyTest, TheDeadlineAbortsEvenWithoutASample) {
    auto c = make(MigratePolicy::suspend, 5s);
    clock.advance(4s);
    EXPECT_FALSE(c.decide(clock.now(), std::nullopt, true));
    clock.advance(1s);
    auto a = c.decide(clock.now(), std::nullopt, true);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->step, PolicyStep::abort);
}

TEST_F(PolicyTest, NoDeadlineNeverAborts) {
    auto c = make(MigratePolicy::minimal_downtime, 0s);
    clock.advance(std::chrono::hours(24 * 365));
    EXPECT_FALSE(c.decide(clock.now(), std::nullopt, true));
}

TEST_F(PolicyTest, PostcopyStartsWhenPreCopyStallsAndNotBefore) {
    auto c = make(MigratePolicy::postcopy, 60s);
    EXPECT_EQ(c.downtime(), 400ms) << "post-copy keeps --max-downtime";
    EXPECT_FALSE(feed(c, 1, 200));
    EXPECT_FALSE(feed(c, 2, 50));
    EXPECT_FALSE(feed(c, 3, 50));
    auto a = feed(c, 4, 50);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->step, PolicyStep::start_postcopy);
    EXPECT_NE(a->text.find("pre-copy stalled"), std::string::npos) << a->text;
    // From the switch on the guest runs on the destination: no abort, ever.
    clock.advance(120s);
    EXPECT_FALSE(feed(c, 5, 50));
}

TEST_F(PolicyTest, WithoutPostcopyAfterAConvergingPreCopyIsNeverSwitched) {
    auto c = make(MigratePolicy::postcopy);
    std::uint64_t left = 1000;
    for (std::uint64_t pass = 1; pass <= 8; ++pass) EXPECT_FALSE(feed(c, pass, left /= 2));
    clock.advance(std::chrono::hours(1));
    EXPECT_FALSE(feed(c, 9, left /= 2)) << "an hour of pre-copy that still shrinks";
}

TEST_F(PolicyTest, PostcopyAfterSwitchesAtItsTimeEvenWhilePreCopyShrinks) {
    auto c = make(MigratePolicy::postcopy, 0s, 400ms, 4s);
    std::uint64_t left = 1000;
    for (std::uint64_t pass = 1; pass < 4; ++pass) EXPECT_FALSE(feed(c, pass, left /= 2));
    clock.advance(999ms);  // 3.999 s: not yet
    EXPECT_FALSE(c.decide(clock.now(), RamSample{.remaining = 10 * k_mib, .passes = 4}, true));
    clock.advance(1ms);
    auto a = c.decide(clock.now(), RamSample{.remaining = 10 * k_mib, .passes = 4}, true);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->step, PolicyStep::start_postcopy);
    EXPECT_NE(a->text.find("pre-copy ran 4 s (--postcopy-after 4)"), std::string::npos) << a->text;
}

TEST_F(PolicyTest, AStallSwitchesBeforePostcopyAfter) {
    auto c = make(MigratePolicy::postcopy, 0s, 400ms, 60s);
    auto actions = stall(c, 1, 4, 50);
    ASSERT_EQ(actions.size(), 1u);
    EXPECT_EQ(actions[0].step, PolicyStep::start_postcopy);
    EXPECT_NE(actions[0].text.find("pre-copy stalled"), std::string::npos) << actions[0].text;
}

TEST_F(PolicyTest, PostcopyAfterZeroStartsAtTheFirstSampleButNeedsOne) {
    auto c = make(MigratePolicy::postcopy, 0s, 400ms, 0s);
    EXPECT_FALSE(c.decide(clock.now(), std::nullopt, true)) << "no sample: RAM not moving yet";
    auto a = c.decide(clock.now(), RamSample{.remaining = 200 * k_mib, .passes = 1}, true);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->step, PolicyStep::start_postcopy);
    EXPECT_FALSE(feed(c, 2, 50)) << "requested once";
}

TEST_F(PolicyTest, PostcopyWaitsWhileADiskIsOutOfSync) {
    auto c = make(MigratePolicy::postcopy);
    auto actions = stall(c, 1, 6, 50, /*in_sync=*/false);
    ASSERT_EQ(actions.size(), 1u) << "said once";
    EXPECT_EQ(actions[0].step, PolicyStep::wait);
    EXPECT_NE(actions[0].text.find("every disk is in sync"), std::string::npos);
    auto a = feed(c, 7, 50, /*in_sync=*/true);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->step, PolicyStep::start_postcopy);
}

TEST_F(PolicyTest, PostcopyAbortsAtTheDeadlineBeforeTheSwitch) {
    auto c = make(MigratePolicy::postcopy, 10s);
    auto actions = stall(c, 1, 10, 50, /*in_sync=*/false);
    ASSERT_FALSE(actions.empty());
    EXPECT_EQ(actions.back().step, PolicyStep::abort);
}

TEST_F(PolicyTest, SuspendThrottlesHarderOnEachStallThenPausesTheGuest) {
    auto c = make(MigratePolicy::suspend, 60s);
    EXPECT_EQ(c.downtime(), 400ms);
    auto actions = stall(c, 1, 12, 50);
    ASSERT_EQ(actions.size(), 3u);
    EXPECT_EQ(actions[0].step, PolicyStep::throttle);
    EXPECT_EQ(actions[0].throttle_increment, 20);
    EXPECT_EQ(actions[1].step, PolicyStep::throttle);
    EXPECT_EQ(actions[1].throttle_increment, 40);
    EXPECT_EQ(actions[2].step, PolicyStep::pause_guest);
    EXPECT_NE(actions[2].text.find("last resort"), std::string::npos);
    EXPECT_EQ(c.downtime(), 400ms) << "suspend never touches the downtime limit";
}

TEST_F(PolicyTest, SuspendDoesNotPauseAGuestTheThrottleTamed) {
    auto c = make(MigratePolicy::suspend);
    auto actions = stall(c, 1, 5, 50);
    ASSERT_EQ(actions.size(), 1u);
    EXPECT_EQ(actions[0].step, PolicyStep::throttle);
    // The throttle works: every pass leaves less.
    std::uint64_t left = 40;
    for (std::uint64_t pass = 6; pass <= 20; ++pass, left = left * 8 / 10)
        EXPECT_FALSE(feed(c, pass, left)) << pass;
}

TEST_F(PolicyTest, SuspendStillAbortsAtTheDeadlineAfterThePause) {
    auto c = make(MigratePolicy::suspend, 30s);
    auto actions = stall(c, 1, 12, 50);
    ASSERT_EQ(actions.back().step, PolicyStep::pause_guest);
    for (std::uint64_t pass = 13; pass < 30; ++pass) EXPECT_FALSE(feed(c, pass, 50));
    auto a = feed(c, 30, 50);
    ASSERT_TRUE(a) << "the caller resumes the guest on the source";
    EXPECT_EQ(a->step, PolicyStep::abort);
}

}  // namespace
