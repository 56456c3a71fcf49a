#include <gtest/gtest.h>

#include "pools/image_format.hpp"
#include "pools/pools.hpp"
#include "test_util.hpp"

using namespace blockmig;
using namespace blockmig::pools;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

TEST(MemPool, CreatedRawVolumeIsListedSparseAndZero) {
    auto pool = make_mem_pool(64 * k_mib);
    auto info = pool->create("a", 8 * k_mib, ImageFormat::raw);
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(info->virtual_size, 8 * k_mib);
    EXPECT_EQ(info->allocated_bytes, 0u);
    EXPECT_EQ(info->format, ImageFormat::raw);
    auto list = pool->list_volumes();
    ASSERT_TRUE(list);
    ASSERT_EQ(list->size(), 1u);
    EXPECT_EQ((*list)[0].name, "a");
    auto volume = pool->open("a", false);
    ASSERT_TRUE(volume);
    std::vector<std::byte> buf(4096, std::byte{1});
    ASSERT_TRUE(read_full(**volume, buf, 4 * k_mib));
    EXPECT_EQ(buf, std::vector<std::byte>(4096));
}

TEST(MemPool, RefusesToOverwriteExistingVolume) {
    auto pool = make_mem_pool(64 * k_mib);
    ASSERT_TRUE(pool->create("a", k_mib, ImageFormat::raw));
    auto volume = pool->open("a", true);
    ASSERT_TRUE(volume);
    auto data = pattern(4096, 7);
    ASSERT_TRUE((*volume)->pwrite(data, 0));
    auto again = pool->create("a", 2 * k_mib, ImageFormat::qcow2);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::already_exists);
    std::vector<std::byte> back(4096);
    ASSERT_TRUE(read_full(**volume, back, 0));
    EXPECT_EQ(back, data) << "the existing volume must be untouched";
    EXPECT_EQ(pool->stat("a")->virtual_size, k_mib);
}

TEST(MemPool, CreateBeyondCapacityFailsWithNoSpaceAndCreatesNothing) {
    auto pool = make_mem_pool(10 * k_mib);
    ASSERT_TRUE(pool->create("a", 6 * k_mib, ImageFormat::raw));
    auto r = pool->create("b", 6 * k_mib, ImageFormat::raw);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::no_space);
    EXPECT_EQ(pool->stat("b").error().code, ErrorCode::not_found);
    auto cap = pool->capacity();
    ASSERT_TRUE(cap);
    EXPECT_EQ(cap->total, 10 * k_mib);
    EXPECT_EQ(cap->free, 4 * k_mib);
}

TEST(MemPool, RemoveFreesSpaceAndMissingVolumeIsNotFound) {
    auto pool = make_mem_pool(10 * k_mib);
    ASSERT_TRUE(pool->create("a", 10 * k_mib, ImageFormat::raw));
    ASSERT_TRUE(pool->remove("a"));
    EXPECT_EQ(pool->capacity()->free, 10 * k_mib);
    EXPECT_EQ(pool->remove("a").error().code, ErrorCode::not_found);
    EXPECT_EQ(pool->open("a", false).error().code, ErrorCode::not_found);
}

TEST(MemPool, RenameMovesDataAndNeverReplacesAVolume) {
    auto pool = make_mem_pool(64 * k_mib);
    ASSERT_TRUE(pool->create("a", k_mib, ImageFormat::raw));
    ASSERT_TRUE(pool->create("b", k_mib, ImageFormat::raw));
    auto data = pattern(4096, 3);
    {
        auto volume = pool->open("a", true);
        ASSERT_TRUE(volume);
        ASSERT_TRUE((*volume)->pwrite(data, 0));
    }
    auto clash = pool->rename("a", "b");
    ASSERT_FALSE(clash);
    EXPECT_EQ(clash.error().code, ErrorCode::already_exists);
    EXPECT_TRUE(pool->stat("a"));

    auto moved = pool->rename("a", "c");
    ASSERT_TRUE(moved) << moved.error().message;
    EXPECT_EQ(pool->stat("a").error().code, ErrorCode::not_found);
    auto volume = pool->open("c", false);
    ASSERT_TRUE(volume);
    std::vector<std::byte> back(4096);
    ASSERT_TRUE(read_full(**volume, back, 0));
    EXPECT_EQ(back, data);

    EXPECT_EQ(pool->rename("missing", "d").error().code, ErrorCode::not_found);
    EXPECT_EQ(pool->rename("c", "x/y").error().code, ErrorCode::invalid_argument);
}

TEST(MemPool, BlockStatusTracksWritesAndDiscards) {
    auto pool = make_mem_pool(64 * k_mib);
    ASSERT_TRUE(pool->create("a", k_mib, ImageFormat::raw));
    auto volume = pool->open("a", true);
    ASSERT_TRUE(volume);
    ASSERT_TRUE((*volume)->pwrite(pattern(8192, 1), 65536));
    auto extents = (*volume)->block_status(0, k_mib);
    ASSERT_TRUE(extents);
    ASSERT_EQ(extents->size(), 3u);
    EXPECT_FALSE((*extents)[0].data);
    EXPECT_EQ((*extents)[1].offset, 65536u);
    EXPECT_EQ((*extents)[1].length, 8192u);
    EXPECT_TRUE((*extents)[1].data);
    EXPECT_FALSE((*extents)[2].data);
    EXPECT_EQ((*extents)[2].offset + (*extents)[2].length, k_mib);
    EXPECT_EQ(pool->stat("a")->allocated_bytes, 8192u);

    ASSERT_TRUE((*volume)->discard(65536, 4096));
    extents = (*volume)->block_status(65536, 8192);
    ASSERT_TRUE(extents);
    ASSERT_EQ(extents->size(), 2u);
    EXPECT_FALSE((*extents)[0].data);
    EXPECT_TRUE((*extents)[1].data);
    std::vector<std::byte> back(4096, std::byte{9});
    ASSERT_TRUE(read_full(**volume, back, 65536));
    EXPECT_EQ(back, std::vector<std::byte>(4096)) << "discarded range reads as zeroes";
}

TEST(MemPool, ReadOnlyVolumeRefusesWrites) {
    auto pool = make_mem_pool(64 * k_mib);
    ASSERT_TRUE(pool->create("a", k_mib, ImageFormat::raw));
    auto volume = pool->open("a", false);
    ASSERT_TRUE(volume);
    EXPECT_EQ((*volume)->pwrite(pattern(512, 1), 0).error().code, ErrorCode::invalid_state);
}

TEST(MemPool, Qcow2VolumeReportsItsVirtualSize) {
    auto pool = make_mem_pool(8ull << 30);
    auto info = pool->create("disk.qcow2", 4ull << 30, ImageFormat::qcow2);
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(info->format, ImageFormat::qcow2);
    EXPECT_EQ(info->virtual_size, 4ull << 30);
    EXPECT_EQ(info->allocated_bytes, empty_qcow2_file_size(4ull << 30));
}

TEST(MemPool, RejectsBadNamesAndFormats) {
    auto pool = make_mem_pool(64 * k_mib);
    for (const char* name : {"", ".", "..", "a/b"}) {
        auto r = pool->create(name, k_mib, ImageFormat::raw);
        ASSERT_FALSE(r) << name;
        EXPECT_EQ(r.error().code, ErrorCode::invalid_argument) << name;
    }
    EXPECT_EQ(pool->create("x", k_mib, ImageFormat::vmdk).error().code,
              ErrorCode::invalid_argument);
    EXPECT_TRUE(pool->list_volumes()->empty());
}

TEST(MemPool, CannotBeDescribedForQemu) {
    auto pool = make_mem_pool(64 * k_mib);
    ASSERT_TRUE(pool->create("a", k_mib, ImageFormat::raw));
    EXPECT_EQ(pool->describe_for_qemu("a", {}).error().code, ErrorCode::unsupported);
}

}  // namespace
