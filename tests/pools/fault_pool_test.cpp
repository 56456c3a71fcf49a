#include <gtest/gtest.h>

#include <chrono>

#include "pools/pools.hpp"
#include "test_util.hpp"

using namespace blockmig;
using namespace blockmig::pools;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

std::unique_ptr<Pool> faulty(FaultPlan plan) {
    auto pool = make_fault_pool(make_mem_pool(64 * k_mib), plan);
    EXPECT_TRUE(pool->create("a", k_mib, ImageFormat::raw));
    return pool;
}

TEST(FaultPool, FailsExactlyTheNthWriteAndLetsOthersThrough) {
    auto pool = faulty({.fail_write_n = 3, .write_error = ErrorCode::no_space});
    auto volume = pool->open("a", true);
    ASSERT_TRUE(volume);
    auto data = pattern(4096, 3);
    EXPECT_TRUE((*volume)->pwrite(data, 0));
    EXPECT_TRUE((*volume)->write_zeroes(4096, 4096));
    auto third = (*volume)->pwrite(data, 8192);
    ASSERT_FALSE(third);
    EXPECT_EQ(third.error().code, ErrorCode::no_space);
    EXPECT_TRUE((*volume)->pwrite(data, 12288));
    // The failed write never reached the target.
    auto extents = (*volume)->block_status(8192, 4096);
    ASSERT_TRUE(extents);
    ASSERT_EQ(extents->size(), 1u);
    EXPECT_FALSE((*extents)[0].data);
}

TEST(FaultPool, WriteCountIsSharedAcrossVolumes) {
    auto pool = faulty({.fail_write_n = 2});
    ASSERT_TRUE(pool->create("b", k_mib, ImageFormat::raw));
    auto a = pool->open("a", true);
    auto b = pool->open("b", true);
    ASSERT_TRUE(a && b);
    EXPECT_TRUE((*a)->pwrite(pattern(512, 1), 0));
    EXPECT_FALSE((*b)->pwrite(pattern(512, 1), 0));
}

TEST(FaultPool, ShortReadsAreShortButReadFullStillCompletes) {
    auto pool = faulty({.short_read_max = 100});
    auto volume = pool->open("a", true);
    ASSERT_TRUE(volume);
    auto data = pattern(4096, 5);
    ASSERT_TRUE((*volume)->pwrite(data, 0));
    std::vector<std::byte> buf(4096);
    auto n = (*volume)->pread(buf, 0);
    ASSERT_TRUE(n);
    EXPECT_EQ(*n, 100u);
    ASSERT_TRUE(read_full(**volume, buf, 0));
    EXPECT_EQ(buf, data);
}

TEST(FaultPool, StallDelaysEveryCall) {
    auto pool = faulty({.stall = std::chrono::milliseconds(30)});
    auto volume = pool->open("a", false);
    ASSERT_TRUE(volume);
    std::vector<std::byte> buf(512);
    auto start = std::chrono::steady_clock::now();
    ASSERT_TRUE((*volume)->pread(buf, 0));
    ASSERT_TRUE((*volume)->flush());
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(60));
}

TEST(FaultPool, ForwardsPoolCallsUnchanged) {
    auto pool = faulty({});
    EXPECT_EQ(pool->type(), "mem");
    EXPECT_EQ(pool->url_of("a"), "mem:a");
    EXPECT_EQ(pool->stat("a")->virtual_size, k_mib);
    EXPECT_EQ(pool->create("a", 1, ImageFormat::raw).error().code, ErrorCode::already_exists);
    EXPECT_TRUE(pool->remove("a"));
    EXPECT_EQ(pool->capacity()->free, 64 * k_mib);
}

TEST(FaultPool, CreateAndRemoveFailOnDemandAndTouchNothing) {
    auto mem = make_mem_pool(64 * k_mib);
    ASSERT_TRUE(mem->create("a", k_mib, ImageFormat::raw));
    auto pool = make_fault_pool(
        std::move(mem), {.create_error = ErrorCode::no_space, .remove_error = ErrorCode::io_error});
    auto created = pool->create("b", k_mib, ImageFormat::raw);
    ASSERT_FALSE(created);
    EXPECT_EQ(created.error().code, ErrorCode::no_space);
    EXPECT_NE(created.error().message.find("'b'"), std::string::npos) << created.error().message;
    EXPECT_FALSE(pool->stat("b"));
    auto removed = pool->remove("a");
    ASSERT_FALSE(removed);
    EXPECT_EQ(removed.error().code, ErrorCode::io_error);
    EXPECT_TRUE(pool->stat("a"));
}

}  // namespace
