// open_vmdk against images qemu-img makes: every subformat it can create,
// random data at scattered offsets; the oracle is `qemu-img convert -O raw`.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include "lab.hpp"
#include "pools/image/vmdk.hpp"
#include "pools/pools.hpp"

using namespace blockmig;
using namespace blockmig::lab;
using namespace blockmig::pools;
using namespace blockmig::pools::image;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

// A sparse raw file with random runs at `offsets`.
void make_raw(const fs::path& path, std::uint64_t size, const std::vector<std::uint64_t>& offsets) {
    run_ok({"truncate", "-s", std::to_string(size), path.string()});
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    std::mt19937_64 rng(size ^ offsets.size());
    for (auto off : offsets) {
        std::vector<char> run(96 * 1024 + 512);
        for (auto& c : run) c = static_cast<char>(rng());
        f.seekp(static_cast<std::streamoff>(off));
        f.write(run.data(), static_cast<std::streamsize>(run.size()));
    }
}

// Reads the whole disk through `reader` and compares it with the raw file.
void expect_same_as_raw(ImageReader& reader, const fs::path& raw) {
    std::ifstream f(raw, std::ios::binary);
    ASSERT_EQ(reader.virtual_size(), fs::file_size(raw));
    std::vector<std::byte> got(4 * k_mib), want(4 * k_mib);
    for (std::uint64_t off = 0; off < reader.virtual_size(); off += got.size()) {
        const std::size_t n = std::min<std::uint64_t>(got.size(), reader.virtual_size() - off);
        auto r = reader.read(std::span(got).first(n), off);
        ASSERT_TRUE(r) << r.error().message;
        f.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(n));
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), n)) << "differs in the MiB at " << off;
    }
    // The map must cover the disk and mark data wherever the raw has data.
    auto map = reader.map(0, reader.virtual_size());
    ASSERT_TRUE(map) << map.error().message;
    std::uint64_t pos = 0;
    for (const auto& r : *map) {
        ASSERT_EQ(r.offset, pos);
        pos += r.length;
    }
    EXPECT_EQ(pos, reader.virtual_size());
}

struct Case {
    std::string subformat;
    std::uint64_t size;
};

class VmdkFromQemu : public ::testing::TestWithParam<Case> {};

TEST_P(VmdkFromQemu, ContentEqualsQemuImgConvertToRaw) {
    LAB_REQUIRE();
    const auto& c = GetParam();
    TempDir dir("vmdk");
    std::vector<std::uint64_t> offsets = {0, k_mib + 512, 32 * k_mib - 4096, 40 * k_mib + 3 * 512,
                                          c.size - 200 * 1024};
    if (c.size > 2048 * k_mib) offsets.push_back(2048 * k_mib - 8192);  // across the 2 GB split
    make_raw(dir / "src.raw", c.size, offsets);
    run_ok({"qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=" + c.subformat,
            (dir / "src.raw").string(), (dir / "d.vmdk").string()});
    run_ok({"qemu-img", "convert", "-f", "vmdk", "-O", "raw", (dir / "d.vmdk").string(),
            (dir / "oracle.raw").string()});
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool);
    auto reader = open_vmdk(**pool, "d.vmdk");
    ASSERT_TRUE(reader) << reader.error().message;
    EXPECT_EQ(reader->get()->info().subformat, c.subformat);
    expect_same_as_raw(**reader, dir / "oracle.raw");
    if (c.subformat.find("Flat") == std::string::npos) {
        EXPECT_GE(reader->get()->info().allocated_bytes, 5 * 96 * 1024u);
    }
}

INSTANTIATE_TEST_SUITE_P(Subformats, VmdkFromQemu,
                         ::testing::Values(Case{"monolithicSparse", 64 * k_mib},
                                           Case{"streamOptimized", 64 * k_mib},
                                           Case{"monolithicFlat", 64 * k_mib},
                                           Case{"twoGbMaxExtentSparse", 2048 * k_mib + 64 * k_mib},
                                           Case{"twoGbMaxExtentFlat", 2048 * k_mib + 64 * k_mib}),
                         [](const auto& info) { return info.param.subformat; });

TEST(VmdkFromQemuChain, DeltaReadsThroughItsParent) {
    LAB_REQUIRE();
    TempDir dir("vmdk");
    make_raw(dir / "src.raw", 64 * k_mib, {0, 8 * k_mib});
    run_ok({"qemu-img", "convert", "-f", "raw", "-O", "vmdk", (dir / "src.raw").string(),
            (dir / "base.vmdk").string()});
    run_ok({"qemu-img", "create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk",
            (dir / "top.vmdk").string()});
    run_ok({"qemu-io", "-f", "vmdk", "-c", "write -P 0x5c 8M 64k", "-c", "write -P 0x11 20M 4k",
            (dir / "top.vmdk").string()});
    run_ok({"qemu-img", "convert", "-f", "vmdk", "-O", "raw", (dir / "top.vmdk").string(),
            (dir / "oracle.raw").string()});
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool);
    auto reader = open_vmdk(**pool, "top.vmdk");
    ASSERT_TRUE(reader) << reader.error().message;
    EXPECT_EQ(reader->get()->info().chain, std::vector<std::string>{"base.vmdk"});
    expect_same_as_raw(**reader, dir / "oracle.raw");

    // Rewriting the parent changes its CID: the delta must now be refused.
    run_ok({"qemu-io", "-f", "vmdk", "-c", "write -P 0x22 0 4k", (dir / "base.vmdk").string()});
    reader = open_vmdk(**pool, "top.vmdk");
    ASSERT_FALSE(reader);
    EXPECT_NE(reader.error().message.find("parentCID"), std::string::npos)
        << reader.error().message;
}

TEST(VmdkFromQemuTruncated, HalfAMonolithicSparseIsAnError) {
    LAB_REQUIRE();
    TempDir dir("vmdk");
    make_raw(dir / "src.raw", 64 * k_mib, {0, 16 * k_mib, 40 * k_mib, 60 * k_mib});
    run_ok({"qemu-img", "convert", "-f", "raw", "-O", "vmdk", (dir / "src.raw").string(),
            (dir / "d.vmdk").string()});
    for (std::string sub : {"d.vmdk", "s.vmdk"}) {
        if (sub == "s.vmdk")
            run_ok({"qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", (dir / "src.raw").string(), (dir / sub).string()});
        const auto size = fs::file_size(dir / sub);
        fs::resize_file(dir / sub, size / 2);
        auto pool = make_dir_pool(dir.path().string());
        ASSERT_TRUE(pool);
        auto reader = open_vmdk(**pool, sub);
        ASSERT_FALSE(reader) << sub << " opened although cut in half";
        EXPECT_EQ(reader.error().code, ErrorCode::protocol);
        EXPECT_NE(reader.error().message.find(sub), std::string::npos) << reader.error().message;
        EXPECT_NE(reader.error().message.find("truncated"), std::string::npos)
            << reader.error().message;
    }
}

}  // namespace
