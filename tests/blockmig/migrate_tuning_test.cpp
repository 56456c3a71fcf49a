// migrate/tuning.hpp: every --policy x --compress x --parallel combination
// as QEMU capabilities and parameters per side, each refusal, the XBZRLE
// cache size and the per-GiB timeout. Pure functions: no QEMU.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "migrate/tuning.hpp"

using namespace blockmig;
using namespace blockmig::migrate;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

Support full(std::string side) {
    return {std::move(side),
            {"events", "pause-before-switchover", "late-block-activate", "auto-converge",
             "postcopy-ram", "multifd", "xbzrle"},
            {"max-bandwidth", "downtime-limit", "max-postcopy-bandwidth", "multifd-channels",
             "multifd-compression", "xbzrle-cache-size", "cpu-throttle-increment"},
            {"none", "zlib", "zstd"}};
}

TuningInput input(MigratePolicy policy, MigrateCompress compress = MigrateCompress::none,
                  int parallel = 0) {
    return {.policy = policy,
            .compress = compress,
            .parallel = parallel,
            .bandwidth = 100 * k_mib,
            .max_downtime = 250ms,
            .ram = 256 * k_mib};
}

bool has(const SideSettings& s, const std::string& cap) {
    return std::any_of(s.capabilities.begin(), s.capabilities.end(),
                       [&](const auto& c) { return c.first == cap && c.second; });
}

std::string refusal(const TuningInput& in, const Support& src, const Support& dst) {
    auto r = plan_tuning(in, src, dst);
    return r ? "" : r.error().message;
}

TEST(MigrateTuning, DefaultIsPreCopyStartingAtAOneHundredMillisecondDowntime) {
    auto p =
        plan_tuning(input(MigratePolicy::minimal_downtime), full("source"), full("destination"));
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_EQ(p->source.capabilities, (std::vector<std::pair<std::string, bool>>{
                                          {"events", true}, {"pause-before-switchover", true}}))
        << "no auto-converge: minimal-downtime never slows the guest";
    EXPECT_EQ(p->destination.capabilities, (std::vector<std::pair<std::string, bool>>{
                                               {"events", true}, {"late-block-activate", true}}));
    EXPECT_EQ(p->source.parameters,
              (nlohmann::json{{"max-bandwidth", 100 * k_mib}, {"downtime-limit", 100}}))
        << "migrate/policy.hpp steps it up to --max-downtime";
    EXPECT_TRUE(p->destination.parameters.empty());
    EXPECT_FALSE(p->start_postcopy);
    EXPECT_EQ(p->summary, "policy minimal-downtime");
}

TEST(MigrateTuning, PostcopyOnBothSidesWithItsOwnBandwidthCap) {
    auto p = plan_tuning(input(MigratePolicy::postcopy), full("source"), full("destination"));
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_TRUE(has(p->source, "postcopy-ram"));
    EXPECT_TRUE(has(p->destination, "postcopy-ram"));
    EXPECT_FALSE(has(p->source, "auto-converge"));
    EXPECT_TRUE(p->start_postcopy);
    EXPECT_EQ(p->source.parameters["downtime-limit"], 250);
    EXPECT_EQ(p->source.parameters["max-postcopy-bandwidth"], 100 * k_mib);
    // An older QEMU without the parameter: not set, not refused.
    Support old = full("source");
    old.parameters.erase("max-postcopy-bandwidth");
    p = plan_tuning(input(MigratePolicy::postcopy), old, full("destination"));
    ASSERT_TRUE(p);
    EXPECT_FALSE(p->source.parameters.contains("max-postcopy-bandwidth"));
}

TEST(MigrateTuning, SuspendThrottlesWithAutoConvergeFromQemusDefaultStep) {
    auto p = plan_tuning(input(MigratePolicy::suspend), full("source"), full("destination"));
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_TRUE(has(p->source, "auto-converge"));
    EXPECT_FALSE(has(p->destination, "auto-converge"));
    EXPECT_EQ(p->source.parameters["cpu-throttle-increment"], 10);
    EXPECT_EQ(p->source.parameters["downtime-limit"], 250);
    EXPECT_FALSE(p->start_postcopy);
    EXPECT_FALSE(has(p->source, "postcopy-ram"));
}

TEST(MigrateTuning, ParallelZstdMatchesOnBothSides) {
    auto p = plan_tuning(input(MigratePolicy::minimal_downtime, MigrateCompress::zstd, 4),
                         full("source"), full("destination"));
    ASSERT_TRUE(p) << p.error().message;
    for (const SideSettings* s : {&p->source, &p->destination}) {
        EXPECT_TRUE(has(*s, "multifd"));
        EXPECT_EQ(s->parameters["multifd-channels"], 4);
        EXPECT_EQ(s->parameters["multifd-compression"], "zstd");
    }
    EXPECT_EQ(p->summary, "policy minimal-downtime, 4 multifd channels, zstd compression");
    // zstd alone is a multifd method: QEMU's default of 2 channels, explicit.
    p = plan_tuning(input(MigratePolicy::suspend, MigrateCompress::zstd), full("source"),
                    full("destination"));
    ASSERT_TRUE(p);
    EXPECT_EQ(p->destination.parameters["multifd-channels"], 2);
}

TEST(MigrateTuning, XbzrleOnTheSenderWithACacheSizedToTheRam) {
    TuningInput in = input(MigratePolicy::minimal_downtime, MigrateCompress::xbzrle);
    auto p = plan_tuning(in, full("source"), full("destination"));
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_TRUE(has(p->source, "xbzrle"));
    EXPECT_FALSE(has(p->destination, "xbzrle"));
    EXPECT_EQ(p->source.parameters["xbzrle-cache-size"], 64 * k_mib) << "QEMU's default is a floor";
    in.ram = 3ull << 30;  // a quarter is 768 MiB: the power of two below
    EXPECT_EQ(plan_tuning(in, full("source"), full("destination"))
                  ->source.parameters["xbzrle-cache-size"],
              512 * k_mib);
    in.ram = 64ull << 30;
    EXPECT_EQ(plan_tuning(in, full("source"), full("destination"))
                  ->source.parameters["xbzrle-cache-size"],
              1024 * k_mib)
        << "at most 1 GiB";
}

// Every combination: each dimension's settings appear exactly when asked,
// and nothing else changes because of another dimension.
TEST(MigrateTuning, EveryCombinationOfPolicyCompressionAndChannels) {
    const MigratePolicy policies[] = {MigratePolicy::minimal_downtime, MigratePolicy::postcopy,
                                      MigratePolicy::suspend};
    const MigrateCompress compressions[] = {MigrateCompress::none, MigrateCompress::zstd,
                                            MigrateCompress::xbzrle};
    int planned = 0, refused = 0;
    for (auto policy : policies)
        for (auto compress : compressions)
            for (int parallel : {0, 1, 8}) {
                SCOPED_TRACE(
                    fmt::format("{} {} {}", to_string(policy), to_string(compress), parallel));
                auto p = plan_tuning(input(policy, compress, parallel), full("source"),
                                     full("destination"));
                if (compress == MigrateCompress::xbzrle && parallel > 0) {
                    ASSERT_FALSE(p);
                    EXPECT_EQ(p.error().code, ErrorCode::invalid_argument);
                    ++refused;
                    continue;
                }
                ASSERT_TRUE(p) << p.error().message;
                ++planned;
                EXPECT_TRUE(has(p->source, "events") && has(p->source, "pause-before-switchover"));
                EXPECT_EQ(p->source.parameters["max-bandwidth"], 100 * k_mib);
                EXPECT_EQ(p->source.parameters["downtime-limit"],
                          policy == MigratePolicy::minimal_downtime ? 100 : 250);
                EXPECT_EQ(has(p->source, "auto-converge"), policy == MigratePolicy::suspend);
                EXPECT_FALSE(has(p->destination, "auto-converge"));
                for (const SideSettings* s : {&p->source, &p->destination})
                    EXPECT_EQ(has(*s, "postcopy-ram"), policy == MigratePolicy::postcopy);
                EXPECT_EQ(p->start_postcopy, policy == MigratePolicy::postcopy);
                const int channels =
                    parallel > 0 ? parallel : (compress == MigrateCompress::zstd ? 2 : 0);
                for (const SideSettings* s : {&p->source, &p->destination}) {
                    EXPECT_EQ(has(*s, "multifd"), channels > 0);
                    if (channels > 0) {
                        EXPECT_EQ(s->parameters["multifd-channels"], channels);
                        EXPECT_EQ(s->parameters["multifd-compression"],
                                  compress == MigrateCompress::zstd ? "zstd" : "none");
                    } else {
                        EXPECT_FALSE(s->parameters.contains("multifd-channels"));
                        EXPECT_FALSE(s->parameters.contains("multifd-compression"));
                    }
                }
                EXPECT_EQ(has(p->source, "xbzrle"), compress == MigrateCompress::xbzrle);
                EXPECT_EQ(p->source.parameters.contains("xbzrle-cache-size"),
                          compress == MigrateCompress::xbzrle);
            }
    EXPECT_EQ(planned, 21);
    EXPECT_EQ(refused, 6);  // xbzrle with 1 or 8 channels, under each policy
}

TEST(MigrateTuning, RefusesWhatASideLacksNamingTheSideAndTheOption) {
    struct Case {
        TuningInput in;
        bool on_source;  // else the destination lacks it
        std::string capability, parameter, compression;
        std::string expected;
    };
    const Case cases[] = {
        {input(MigratePolicy::suspend), true, "auto-converge", "", "",
         "the source QEMU lacks the migration capability auto-converge (needed by --policy "
         "suspend)"},
        {input(MigratePolicy::suspend), true, "", "cpu-throttle-increment", "",
         "the source QEMU lacks the migration parameter cpu-throttle-increment (needed by "
         "--policy suspend)"},
        {input(MigratePolicy::postcopy), true, "postcopy-ram", "", "",
         "the source QEMU lacks the migration capability postcopy-ram (needed by --policy "
         "postcopy)"},
        {input(MigratePolicy::postcopy), false, "postcopy-ram", "", "",
         "the destination QEMU lacks the migration capability postcopy-ram"},
        {input(MigratePolicy::suspend, MigrateCompress::none, 2), false, "multifd", "", "",
         "the destination QEMU lacks the migration capability multifd (needed by --parallel)"},
        {input(MigratePolicy::suspend, MigrateCompress::zstd), true, "multifd", "", "",
         "the source QEMU lacks the migration capability multifd (needed by --compress zstd)"},
        {input(MigratePolicy::suspend, MigrateCompress::none, 2), true, "", "multifd-channels", "",
         "the source QEMU lacks the migration parameter multifd-channels"},
        {input(MigratePolicy::suspend, MigrateCompress::zstd, 2), false, "", "multifd-compression",
         "", "the destination QEMU lacks the migration parameter multifd-compression"},
        {input(MigratePolicy::suspend, MigrateCompress::zstd, 2), false, "", "", "zstd",
         "the destination QEMU has no zstd multifd compression"},
        {input(MigratePolicy::suspend, MigrateCompress::xbzrle), true, "xbzrle", "", "",
         "the source QEMU lacks the migration capability xbzrle (needed by --compress xbzrle)"},
        {input(MigratePolicy::suspend, MigrateCompress::xbzrle), true, "", "xbzrle-cache-size", "",
         "the source QEMU lacks the migration parameter xbzrle-cache-size"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.expected);
        Support src = full("source"), dst = full("destination");
        Support& lacking = c.on_source ? src : dst;
        lacking.capabilities.erase(c.capability);
        lacking.parameters.erase(c.parameter);
        lacking.multifd_compressions.erase(c.compression);
        auto p = plan_tuning(c.in, src, dst);
        ASSERT_FALSE(p);
        EXPECT_EQ(p.error().code, ErrorCode::unsupported);
        EXPECT_NE(p.error().message.find(c.expected), std::string::npos) << p.error().message;
    }
}

TEST(MigrateTuning, WhatOnlyTheSenderUsesIsNotAskedOfTheDestination) {
    Support dst = full("destination");
    for (const char* c : {"auto-converge", "xbzrle", "late-block-activate"})
        dst.capabilities.erase(c);
    dst.parameters.erase("xbzrle-cache-size");
    auto p =
        plan_tuning(input(MigratePolicy::suspend, MigrateCompress::xbzrle), full("source"), dst);
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_EQ(p->destination.capabilities,
              (std::vector<std::pair<std::string, bool>>{{"events", true}}));
}

TEST(MigrateTuning, RefusesMeaninglessCombinations) {
    EXPECT_NE(refusal(input(MigratePolicy::minimal_downtime, MigrateCompress::xbzrle, 2),
                      full("source"), full("destination"))
                  .find("--compress xbzrle does not combine with --parallel"),
              std::string::npos);
    EXPECT_NE(refusal(input(MigratePolicy::minimal_downtime, MigrateCompress::none, 256),
                      full("source"), full("destination"))
                  .find("--parallel 256 is out of range"),
              std::string::npos);
    EXPECT_EQ(refusal(input(MigratePolicy::minimal_downtime, MigrateCompress::none, 255),
                      full("source"), full("destination")),
              "");
}

TEST(MigrateTuning, TimeoutIsAbsoluteOrScalesWithTheBytesToCopy) {
    EXPECT_EQ(migration_timeout(0s, 0, 1ull << 30), 0s);
    EXPECT_EQ(migration_timeout(90s, 150, 8ull << 30), 90s) << "--timeout wins (CLI excludes both)";
    EXPECT_EQ(migration_timeout(0s, 150, 1ull << 30), 150s);
    EXPECT_EQ(migration_timeout(0s, 150, 256 * k_mib), 38s) << "37.5 s rounded up";
    EXPECT_EQ(migration_timeout(0s, 800, (256 + 64) * k_mib), 250s);
    EXPECT_EQ(migration_timeout(0s, 0.001, 4096), 1s) << "never below a second";
}

}  // namespace
