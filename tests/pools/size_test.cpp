#include <gtest/gtest.h>

#include "pools/address.hpp"

using namespace blockmig;
using namespace blockmig::pools;

namespace {

TEST(ParseSize, AcceptsBinarySuffixes) {
    EXPECT_EQ(parse_size("512").value(), 512u);
    EXPECT_EQ(parse_size("64K").value(), 64u << 10);
    EXPECT_EQ(parse_size("64k").value(), 64u << 10);
    EXPECT_EQ(parse_size("10M").value(), 10u << 20);
    EXPECT_EQ(parse_size("10MiB").value(), 10u << 20);
    EXPECT_EQ(parse_size("2G").value(), 2ull << 30);
    EXPECT_EQ(parse_size("1GB").value(), 1ull << 30);
    EXPECT_EQ(parse_size("3T").value(), 3ull << 40);
    EXPECT_EQ(parse_size("1.5G").value(), 3ull << 29);
}

TEST(ParseSize, RejectsBadInput) {
    for (const char* bad :
         {"", "G", "-1", "1X", "1.2.3", "0.3", "1 G", "99999999999999999999", "20000000T"}) {
        auto r = parse_size(bad);
        EXPECT_FALSE(r) << bad;
        if (!r) {
            EXPECT_EQ(r.error().code, ErrorCode::invalid_argument) << bad;
        }
    }
}

}  // namespace
