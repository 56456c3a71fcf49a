// The VMDK writers on a MemPool: round trips through open_vmdk, the
// streamOptimized layout against the spec, option and order errors.
#include <gtest/gtest.h>

#include <cstring>

#include "image/vmdk_format.hpp"
#include "pools/image/vmdk.hpp"
#include "vmdk_test_util.hpp"

using namespace blockmig;
using namespace blockmig::pools;
using namespace blockmig::pools::image;
using namespace vmdk_test;

namespace {

constexpr std::uint64_t k_size = 80ull << 20;  // three grain tables' worth (32 MiB each)

// Guest data: runs at scattered offsets (some crossing grain and grain table
// boundaries), one all-zero run, the rest never written.
struct Run {
    std::uint64_t offset;
    std::vector<std::byte> data;
};
std::vector<Run> runs() {
    std::vector<Run> r;
    r.push_back({0, filled(4096, 1)});
    r.push_back({65536 - 512, filled(1024, 2)});
    r.push_back({(32ull << 20) - 8192, filled(3 * 65536, 3)});
    r.push_back({40ull << 20, std::vector<std::byte>(65536)});  // zeroes: stays sparse
    r.push_back({k_size - 512, filled(512, 4)});
    return r;
}

std::vector<std::byte> expected() {
    std::vector<std::byte> all(k_size);
    for (const auto& run : runs())
        std::memcpy(all.data() + run.offset, run.data.data(), run.data.size());
    return all;
}

void write_image(Pool& pool, const std::string& name, const VmdkWriteOptions& o) {
    ASSERT_TRUE(pool.create(name, 0, ImageFormat::raw));
    auto vol = pool.open(name, true);
    ASSERT_TRUE(vol);
    auto w = create_vmdk_writer(std::move(*vol), k_size, o);
    ASSERT_TRUE(w) << w.error().message;
    std::uint64_t pos = 0;
    for (const auto& run : runs()) {
        if (run.offset > pos) {
            ASSERT_TRUE((*w)->write_zeroes(pos, run.offset - pos));
        }
        auto r = (*w)->write(run.data, run.offset);
        ASSERT_TRUE(r) << r.error().message;
        pos = run.offset + run.data.size();
    }
    auto r = (*w)->finish();
    ASSERT_TRUE(r) << r.error().message;
}

std::vector<std::byte> file_of(Pool& pool, const std::string& name) {
    auto vol = pool.open(name, false);
    std::vector<std::byte> out((*vol)->size());
    EXPECT_TRUE(read_full(**vol, out, 0));
    return out;
}

class VmdkWriterTest : public ::testing::TestWithParam<std::string> {
  protected:
    std::unique_ptr<Pool> pool = make_mem_pool(1 << 30);
};

TEST_P(VmdkWriterTest, RoundTripsThroughTheReader) {
    VmdkWriteOptions o;
    o.subformat = GetParam();
    o.adapter_type = "pvscsi";
    o.threads = 3;
    write_image(*pool, "out.vmdk", o);
    auto r = open_vmdk(*pool, "out.vmdk");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)->info().subformat, GetParam());
    EXPECT_EQ((*r)->info().adapter_type, "pvscsi");
    EXPECT_EQ((*r)->virtual_size(), k_size);
    std::vector<std::byte> all(k_size);
    ASSERT_TRUE((*r)->read(all, 0));
    auto want = expected();
    for (std::uint64_t off = 0; off < k_size; off += 65536)
        ASSERT_EQ(0, std::memcmp(all.data() + off, want.data() + off, 65536)) << "grain at " << off;
    // Allocated: grains 0, 1(partly), the three-grain run spans 4 grains, the last one.
    EXPECT_EQ((*r)->info().allocated_bytes, 7u * 65536);
    // The zero run at 40 MiB was not stored.
    auto map = (*r)->map(40ull << 20, 65536);
    ASSERT_TRUE(map);
    ASSERT_EQ(map->size(), 1u);
    EXPECT_EQ((*map)[0].kind, RangeKind::zero);
}

INSTANTIATE_TEST_SUITE_P(Subformats, VmdkWriterTest,
                         ::testing::Values("streamOptimized", "monolithicSparse"));

namespace v = blockmig::pools::image::vmdk;

TEST(VmdkStreamLayout, MarkersGrainTablesDirectoryFooterAndEndOfStream) {
    auto pool = make_mem_pool(1 << 30);
    write_image(*pool, "s.vmdk", {});
    const auto f = file_of(*pool, "s.vmdk");
    ASSERT_EQ(f.size() % 512, 0u);
    auto head = v::parse_sparse_header(std::span(f).first(512), "s.vmdk");
    ASSERT_TRUE(head) << head.error().message;
    EXPECT_EQ(head->version, 3u);
    EXPECT_EQ(head->flags, v::k_flag_newline_test | v::k_flag_compressed | v::k_flag_markers);
    EXPECT_EQ(head->gd_offset, v::k_gd_at_end);
    EXPECT_EQ(head->grain_size, 128u);
    EXPECT_EQ(head->gtes_per_gt, 512u);
    EXPECT_EQ(head->capacity, k_size / 512);
    EXPECT_EQ(head->compress_algorithm, 1);
    std::string desc(reinterpret_cast<const char*>(&f[512]), 20 * 512);
    EXPECT_NE(desc.find("createType=\"streamOptimized\""), std::string::npos);
    EXPECT_NE(desc.find("ddb.uuid = \""), std::string::npos);
    EXPECT_NE(desc.find("ddb.virtualHWVersion = \"4\""), std::string::npos);
    EXPECT_NE(desc.find("ddb.adapterType = \"lsilogic\""), std::string::npos);

    // Walk the stream from overHead: grains, then GT, GD, footer, EOS.
    std::uint64_t pos = head->overhead * 512;
    std::vector<std::uint64_t> grain_lbas, gt_at;
    std::uint64_t gd_at = 0, footer_at = 0, eos_at = 0;
    while (pos < f.size()) {
        const auto m = v::parse_marker(&f[pos]);
        if (m.size != 0) {
            grain_lbas.push_back(m.val);
            pos += (12 + m.size + 511) / 512 * 512;
            continue;
        }
        for (std::size_t i = 16; i < 512; ++i)
            ASSERT_EQ(f[pos + i], std::byte{0}) << "marker padding";
        if (m.type == v::k_marker_gt) gt_at.push_back(pos / 512 + 1);
        if (m.type == v::k_marker_gd) gd_at = pos / 512 + 1;
        if (m.type == v::k_marker_footer) footer_at = pos + 512;
        if (m.type == v::k_marker_eos) {
            eos_at = pos;
            break;
        }
        pos += 512 + m.val * 512;
    }
    std::vector<std::uint64_t> want_lbas = {0, 128, 65408, 65536, 65664, 65792, 163712};
    EXPECT_EQ(grain_lbas, want_lbas);
    EXPECT_EQ(gt_at.size(), 3u);  // tables 0, 1, 2 hold grains
    EXPECT_EQ(eos_at, f.size() - 512);
    EXPECT_EQ(footer_at, f.size() - 1024);
    auto footer = v::parse_sparse_header(std::span(f).subspan(footer_at, 512), "footer");
    ASSERT_TRUE(footer) << footer.error().message;
    EXPECT_EQ(footer->gd_offset, gd_at);
    // The GD lists the three tables in order.
    for (std::size_t t = 0; t < 3; ++t) EXPECT_EQ(v::get32(&f[gd_at * 512 + 4 * t]), gt_at[t]);
}

TEST(VmdkWriterOptions, BadOptionsAndOrderAreErrors) {
    auto pool = make_mem_pool(1 << 30);
    ASSERT_TRUE(pool->create("o.vmdk", 0, ImageFormat::raw));
    VmdkWriteOptions o;
    o.adapter_type = "scsi";
    auto w = create_vmdk_writer(*pool->open("o.vmdk", true), 1 << 20, o);
    ASSERT_FALSE(w);
    EXPECT_EQ(w.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(w.error().message.find("adapter_type"), std::string::npos);
    o = {};
    o.subformat = "twoGbMaxExtentSparse";
    EXPECT_FALSE(create_vmdk_writer(*pool->open("o.vmdk", true), 1 << 20, o));
    EXPECT_FALSE(create_vmdk_writer(*pool->open("o.vmdk", true), 1000, {}));
    w = create_vmdk_writer(*pool->open("o.vmdk", true), 1 << 20, {});
    ASSERT_TRUE(w);
    auto data = filled(4096, 1);
    ASSERT_TRUE((*w)->write(data, 8192));
    auto r = (*w)->write(data, 0);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
}

}  // namespace

namespace {

TEST(VmdkStreamLayout, TruncatedStreamIsAnErrorNamingTheFooter) {
    auto pool = blockmig::pools::make_mem_pool(1 << 30);
    write_image(*pool, "s.vmdk", {});
    auto f = file_of(*pool, "s.vmdk");
    f.resize(f.size() - 4096);  // the tail (GD, footer, end-of-stream) is gone
    put_file(*pool, "cut.vmdk", f);
    auto r = open_vmdk(*pool, "cut.vmdk");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::protocol);
    EXPECT_NE(r.error().message.find("cut.vmdk: gdOffset"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << r.error().message;
}

}  // namespace
