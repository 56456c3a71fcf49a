// Private helpers of pools/ (common.hpp).
#include "common.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <map>

using namespace blockmig;
using namespace blockmig::pools;

namespace {

// A fake file: data in [4096, 8192) and [12288, 16384) of 20000 bytes.
Result<std::optional<std::uint64_t>> fake_seek(std::uint64_t pos, int whence) {
    const std::vector<std::pair<std::uint64_t, std::uint64_t>> data{{4096, 8192}, {12288, 16384}};
    for (auto [start, end] : data) {
        if (whence == SEEK_DATA && pos < end) return std::max(pos, start);
        if (whence == SEEK_HOLE && pos < end && pos >= start) return end;
        if (whence == SEEK_HOLE && pos < start) return pos;
    }
    if (whence == SEEK_HOLE) return std::uint64_t{20000};
    return std::nullopt;
}

TEST(ExtentsBySeek, AlternatesHolesAndDataAndClipsToTheRange) {
    auto extents = detail::extents_by_seek(0, 1 << 20, 20000, fake_seek);
    ASSERT_TRUE(extents);
    std::vector<Extent> want{{0, 4096, false},
                             {4096, 4096, true},
                             {8192, 4096, false},
                             {12288, 4096, true},
                             {16384, 20000 - 16384, false}};
    ASSERT_EQ(extents->size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ((*extents)[i].offset, want[i].offset) << i;
        EXPECT_EQ((*extents)[i].length, want[i].length) << i;
        EXPECT_EQ((*extents)[i].data, want[i].data) << i;
    }
    extents = detail::extents_by_seek(5000, 1000, 20000, fake_seek);
    ASSERT_TRUE(extents);
    ASSERT_EQ(extents->size(), 1u);
    EXPECT_EQ((*extents)[0].offset, 5000u);
    EXPECT_EQ((*extents)[0].length, 1000u);
    EXPECT_TRUE((*extents)[0].data);
}

TEST(ExtentsBySeek, UnsupportedSeekMeansAllData) {
    auto extents = detail::extents_by_seek(
        0, 100, 50, [](std::uint64_t, int) -> Result<std::optional<std::uint64_t>> {
            return fail(ErrorCode::unsupported, "no seek");
        });
    ASSERT_TRUE(extents);
    ASSERT_EQ(extents->size(), 1u);
    EXPECT_EQ((*extents)[0].length, 50u);
    EXPECT_TRUE((*extents)[0].data);
}

TEST(FinishChain, FormatNodeSitsOnProtocolNodeWithLiveMoveOptions) {
    BlockdevChain chain;
    chain.protocol = {{"driver", "file"}, {"filename", "/x"}};
    QemuNodeOptions options;
    options.node_prefix = "tgt7";
    detail::finish_chain(chain, ImageFormat::qcow2, options);
    EXPECT_EQ(chain.protocol_node, "tgt7-proto");
    EXPECT_EQ(chain.format_node, "tgt7-fmt");
    EXPECT_EQ(chain.protocol["node-name"], "tgt7-proto");
    EXPECT_EQ(chain.format["driver"], "qcow2");
    EXPECT_EQ(chain.format["file"], "tgt7-proto");
    EXPECT_EQ(chain.format["detect-zeroes"], "unmap");
    EXPECT_EQ(chain.format["discard"], "unmap");
    EXPECT_EQ(chain.format["cache"]["direct"], true);
    EXPECT_EQ(chain.format["cache"]["no-flush"], false);
}

}  // namespace
