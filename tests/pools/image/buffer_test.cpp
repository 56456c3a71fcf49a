// PageBuffer: the pipeline's and the writers' large buffers.
#include "pools/image/buffer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

using blockmig::pools::image::PageBuffer;

namespace {

bool all_zero(const PageBuffer& b) {
    return std::all_of(b.data(), b.data() + b.size(),
                       [](std::byte c) { return c == std::byte{0}; });
}

TEST(PageBuffer, LargeBuffersStartZeroedOnAHugePageBoundary) {
    PageBuffer b(4u << 20);
    ASSERT_NE(b.data(), nullptr);
    EXPECT_EQ(b.size(), 4u << 20);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % (2u << 20), 0u);
    EXPECT_TRUE(all_zero(b));
    b.data()[0] = std::byte{1};
    b.data()[b.size() - 1] = std::byte{2};  // the whole size is writable
    EXPECT_EQ(b.span().back(), std::byte{2});
}

TEST(PageBuffer, SmallBuffersArePageAligned) {
    PageBuffer b(65536 + 512);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % 4096, 0u);
    EXPECT_EQ(b.span().size(), 65536u + 512);
    EXPECT_TRUE(all_zero(b));
}

TEST(PageBuffer, MovingHandsOverTheMemory) {
    PageBuffer a(1u << 20);
    a.data()[7] = std::byte{7};
    std::byte* p = a.data();
    PageBuffer b(std::move(a));
    EXPECT_EQ(b.data(), p);
    EXPECT_EQ(b.data()[7], std::byte{7});
    EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): the contract
    EXPECT_EQ(a.size(), 0u);
    PageBuffer c;
    c = std::move(b);
    EXPECT_EQ(c.data(), p);
    EXPECT_EQ(b.size(), 0u);  // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(PageBuffer(0).data(), nullptr);
}

}  // namespace
