#include "pools/image_format.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "pools/pools.hpp"

using namespace blockmig;
using namespace blockmig::pools;

namespace {

std::unique_ptr<Volume> fresh_volume(Pool& pool, std::uint64_t size = 0) {
    EXPECT_TRUE(pool.create("v", size, ImageFormat::raw));
    auto volume = pool.open("v", true);
    EXPECT_TRUE(volume);
    return std::move(*volume);
}

std::uint64_t be(const std::vector<std::byte>& b, std::size_t off, int n) {
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i)
        v = (v << 8) | std::to_integer<std::uint64_t>(b[off + static_cast<std::size_t>(i)]);
    return v;
}

TEST(Qcow2Writer, ProbeReadsBackFormatAndVirtualSize) {
    for (std::uint64_t size : {1ull << 20, 10ull << 30, (1ull << 40) + 512}) {
        auto pool = make_mem_pool(1ull << 50);
        auto volume = fresh_volume(*pool);
        ASSERT_TRUE(write_empty_qcow2(*volume, size));
        auto probed = probe_image(*volume);
        ASSERT_TRUE(probed);
        EXPECT_EQ(probed->format, ImageFormat::qcow2);
        EXPECT_EQ(probed->virtual_size, size);
        EXPECT_EQ(volume->size(), empty_qcow2_file_size(size));
    }
}

TEST(Qcow2Writer, HeaderAndRefcountsDescribeTheLayout) {
    auto pool = make_mem_pool(1ull << 40);
    auto volume = fresh_volume(*pool);
    const std::uint64_t size = 3ull << 30;  // 6 L1 entries of 512 MiB
    ASSERT_TRUE(write_empty_qcow2(*volume, size));
    std::vector<std::byte> img(volume->size());
    ASSERT_TRUE(read_full(*volume, img, 0));
    // Streaming layout: header, L1, refcount table, refcount block.
    EXPECT_EQ(be(img, 4, 4), 3u);                  // version
    EXPECT_EQ(be(img, 20, 4), 16u);                // cluster_bits
    EXPECT_EQ(be(img, 36, 4), 6u);                 // l1_size
    EXPECT_EQ(be(img, 40, 8), 65536u);             // l1_table_offset
    EXPECT_EQ(be(img, 48, 8), 2u * 65536);         // refcount_table_offset
    EXPECT_EQ(be(img, 56, 4), 1u);                 // refcount_table_clusters
    EXPECT_EQ(be(img, 96, 4), 4u);                 // refcount_order
    EXPECT_EQ(be(img, 100, 4), 104u);              // header_length
    EXPECT_EQ(be(img, 2 * 65536, 8), 3u * 65536);  // refcount table -> block
    for (std::size_t c = 0; c < 4; ++c) EXPECT_EQ(be(img, 3 * 65536 + c * 2, 2), 1u) << c;
    EXPECT_EQ(be(img, 3 * 65536 + 8, 2), 0u);
    for (std::size_t i = 65536; i < 2 * 65536; ++i)
        ASSERT_EQ(img[i], std::byte{0}) << i;  // empty L1
}

TEST(Qcow2Writer, RejectsBadSizes) {
    auto pool = make_mem_pool(1ull << 30);
    auto volume = fresh_volume(*pool);
    EXPECT_EQ(write_empty_qcow2(*volume, 0).error().code, ErrorCode::invalid_argument);
    EXPECT_EQ(write_empty_qcow2(*volume, 1000).error().code, ErrorCode::invalid_argument);
    EXPECT_EQ(volume->size(), 0u) << "nothing written on failure";
}

TEST(ProbeImage, RawVmdkAndEmpty) {
    auto pool = make_mem_pool(1ull << 30);
    auto volume = fresh_volume(*pool, 1 << 20);
    auto probed = probe_image(*volume);
    ASSERT_TRUE(probed);
    EXPECT_EQ(probed->format, ImageFormat::raw);
    EXPECT_EQ(probed->virtual_size, 1u << 20);

    std::vector<std::byte> sparse(512);
    std::memcpy(sparse.data(), "KDMV", 4);
    sparse[12] = std::byte{0x00};
    sparse[13] = std::byte{0x08};  // capacity 2048 sectors, little endian
    ASSERT_TRUE(volume->pwrite(sparse, 0));
    probed = probe_image(*volume);
    ASSERT_TRUE(probed);
    EXPECT_EQ(probed->format, ImageFormat::vmdk);
    EXPECT_EQ(probed->virtual_size, 2048u * 512);

    const std::string descriptor =
        "# Disk DescriptorFile\nversion=1\nRW 4096 SPARSE \"a.vmdk\"\nRW 2048 FLAT \"b.vmdk\" 0\n";
    std::vector<std::byte> text(512);
    std::memcpy(text.data(), descriptor.data(), descriptor.size());
    ASSERT_TRUE(volume->pwrite(text, 0));
    probed = probe_image(*volume);
    ASSERT_TRUE(probed);
    EXPECT_EQ(probed->format, ImageFormat::vmdk);
    EXPECT_EQ(probed->virtual_size, 6144u * 512);

    auto empty_pool = make_mem_pool(1ull << 30);
    auto empty = fresh_volume(*empty_pool, 0);
    probed = probe_image(*empty);
    ASSERT_TRUE(probed);
    EXPECT_EQ(probed->format, ImageFormat::raw);
    EXPECT_EQ(probed->virtual_size, 0u);
}

TEST(ProbeImage, TruncatedQcow2HeaderIsAProtocolError) {
    auto pool = make_mem_pool(1ull << 30);
    auto volume = fresh_volume(*pool);
    std::vector<std::byte> head(50);
    std::memcpy(head.data(), "QFI\xfb", 4);
    ASSERT_TRUE(volume->pwrite(head, 0));
    EXPECT_EQ(probe_image(*volume).error().code, ErrorCode::protocol);
}

}  // namespace

TEST(Qcow2Backing, RecordsBackingFileAndFormatInHeader) {
    auto pool = blockmig::pools::make_mem_pool(64ull << 20);
    ASSERT_TRUE(pool->create("overlay.qcow2", 16ull << 20, blockmig::pools::ImageFormat::qcow2));
    auto volume = pool->open("overlay.qcow2", true);
    ASSERT_TRUE(volume);
    ASSERT_TRUE(blockmig::pools::set_qcow2_backing(**volume, "/srv/base.qcow2",
                                                   blockmig::pools::ImageFormat::qcow2));
    std::vector<std::byte> header(4096);
    ASSERT_TRUE(blockmig::pools::read_full(**volume, header, 0));
    auto be = [&](std::size_t off, int n) {
        std::uint64_t v = 0;
        for (int i = 0; i < n; ++i) v = v << 8 | static_cast<std::uint8_t>(header[off + i]);
        return v;
    };
    const std::uint64_t name_offset = be(8, 8);
    ASSERT_EQ(be(16, 4), std::string("/srv/base.qcow2").size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(&header[name_offset]), 15),
              "/srv/base.qcow2");
    EXPECT_EQ(be(104, 4), 0xe2792acau);  // backing format extension
    EXPECT_EQ(be(108, 4), 5u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(&header[112]), 5), "qcow2");
    // A second call must refuse: the image is no longer a fresh one.
    EXPECT_FALSE(
        blockmig::pools::set_qcow2_backing(**volume, "/x", blockmig::pools::ImageFormat::raw));
}
