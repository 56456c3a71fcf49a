// open_vmdk on hand-built images in a MemPool: descriptors qemu-img cannot
// read (vmfsThin, ZERO and RDONLY extents), sparse grains, chains, bad input.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <map>
#include <thread>

#include "pools/image/vmdk.hpp"
#include "vmdk_test_util.hpp"

using namespace blockmig;
using namespace blockmig::pools;
using namespace blockmig::pools::image;
using namespace vmdk_test;

namespace {

std::vector<std::byte> read_all(ImageReader& r) {
    std::vector<std::byte> out(r.virtual_size());
    auto ok = r.read(out, 0);
    EXPECT_TRUE(ok) << (ok ? "" : ok.error().message);
    return out;
}

std::string descriptor(const std::string& type, const std::string& extents,
                       const std::string& extra = "") {
    return "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"" +
           type + "\"\n" + extra + "\n# Extent description\n" + extents +
           "\n# The Disk Data Base\n#DDB\nddb.adapterType = \"lsilogic\"\n";
}

class VmdkReaderTest : public ::testing::Test {
  protected:
    std::unique_ptr<Pool> pool = make_mem_pool(1 << 30);
};

TEST_F(VmdkReaderTest, ReadsVmfsThinWithZeroAndRdonlyExtentsAtTheirOffsets) {
    const auto a = filled(8 * 512, 1);
    const auto b = filled(16 * 512 + 1024, 2);  // the extent starts 2 sectors in
    put_file(*pool, "a-flat.vmdk", a);
    put_file(*pool, "b-flat.vmdk", b);
    put_file(*pool, "d.vmdk",
             bytes_of(descriptor("vmfsThin",
                                 "RW 8 VMFS \"a-flat.vmdk\"\nRDONLY 8 ZERO\nRDONLY 16 FLAT "
                                 "\"b-flat.vmdk\" 2\n")));
    auto r = open_vmdk(*pool, "d.vmdk");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)->virtual_size(), 32u * 512);
    EXPECT_EQ((*r)->info().subformat, "vmfsThin");
    EXPECT_EQ((*r)->info().adapter_type, "lsilogic");
    auto all = read_all(**r);
    EXPECT_EQ(0, std::memcmp(all.data(), a.data(), a.size()));
    for (std::size_t i = 8 * 512; i < 16 * 512; ++i) ASSERT_EQ(all[i], std::byte{0}) << i;
    EXPECT_EQ(0, std::memcmp(all.data() + 16 * 512, b.data() + 1024, 16 * 512));
    auto map = (*r)->map(0, 32 * 512);
    ASSERT_TRUE(map);
    bool zero_found = false;
    for (const auto& range : *map)
        if (range.kind == RangeKind::zero && range.offset <= 8 * 512 &&
            range.offset + range.length >= 16 * 512)
            zero_found = true;
    EXPECT_TRUE(zero_found);
}

TEST_F(VmdkReaderTest, RefusesNoaccessExtentSayingWhy) {
    put_file(*pool, "a-flat.vmdk", filled(4096, 1));
    put_file(*pool, "d.vmdk",
             bytes_of(descriptor("custom", "NOACCESS 8 FLAT \"a-flat.vmdk\" 0\n")));
    auto r = open_vmdk(*pool, "d.vmdk");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unsupported);
    EXPECT_NE(r.error().message.find("NOACCESS"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("d.vmdk"), std::string::npos) << r.error().message;
}

TEST_F(VmdkReaderTest, RefusesDeviceBackedCreateTypes) {
    for (std::string type : {"fullDevice", "partitionedDevice", "vmfsRDM", "vmfsRDMP"}) {
        put_file(*pool, type + ".vmdk",
                 bytes_of(descriptor(type, "RW 8 VMFSRDM \"x-rdm.vmdk\"\n")));
        auto r = open_vmdk(*pool, type + ".vmdk");
        ASSERT_FALSE(r) << type;
        EXPECT_EQ(r.error().code, ErrorCode::unsupported);
        EXPECT_NE(r.error().message.find("device"), std::string::npos) << r.error().message;
    }
}

TEST_F(VmdkReaderTest, RefusesExtentOutsideTheDescriptorsDirectory) {
    put_file(*pool, "d.vmdk",
             bytes_of(descriptor("monolithicFlat", "RW 8 FLAT \"../etc/passwd\" 0\n")));
    auto r = open_vmdk(*pool, "d.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("outside the descriptor's directory"), std::string::npos)
        << r.error().message;
}

TEST_F(VmdkReaderTest, DescriptorSyntaxErrorNamesFileAndLine) {
    put_file(*pool, "d.vmdk", bytes_of("# Disk DescriptorFile\nversion=1\nthis is garbage\n"));
    auto r = open_vmdk(*pool, "d.vmdk");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::protocol);
    EXPECT_NE(r.error().message.find("d.vmdk: descriptor line 3"), std::string::npos)
        << r.error().message;
}

TEST_F(VmdkReaderTest, TruncatedFlatExtentIsAnError) {
    put_file(*pool, "a-flat.vmdk", filled(4 * 512, 1));
    put_file(*pool, "d.vmdk",
             bytes_of(descriptor("monolithicFlat", "RW 8 FLAT \"a-flat.vmdk\" 0\n")));
    auto r = open_vmdk(*pool, "d.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << r.error().message;
}

SparseSpec small_sparse() {
    SparseSpec s;
    s.capacity = 8 * 300;  // 300 grains of 4 KiB: three grain tables of 128
    s.grains[0] = filled(4096, 1);
    s.grains[5] = filled(4096, 2);
    s.grains[6] = filled(4096, 3);
    s.grains[299] = filled(4096, 4);
    return s;
}

TEST_F(VmdkReaderTest, ReadsMonolithicSparseGrainsAndHoles) {
    auto s = small_sparse();
    s.descriptor = descriptor("monolithicSparse", "RW 2400 SPARSE \"m.vmdk\"\n");
    put_file(*pool, "m.vmdk", build_sparse(s));
    auto r = open_vmdk(*pool, "m.vmdk");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)->virtual_size(), 300u * 4096);
    EXPECT_EQ((*r)->info().subformat, "monolithicSparse");
    EXPECT_EQ((*r)->info().allocated_bytes, 4u * 4096);
    auto all = read_all(**r);
    for (std::uint64_t g = 0; g < 300; ++g) {
        auto it = s.grains.find(g);
        std::vector<std::byte> want =
            it == s.grains.end() ? std::vector<std::byte>(4096) : it->second;
        ASSERT_EQ(0, std::memcmp(all.data() + g * 4096, want.data(), 4096)) << "grain " << g;
    }
    // An unaligned read across grains 4..7.
    std::vector<std::byte> part(3 * 4096);
    ASSERT_TRUE((*r)->read(part, 4 * 4096 + 100));
    EXPECT_EQ(0, std::memcmp(part.data(), all.data() + 4 * 4096 + 100, part.size()));
    auto map = (*r)->map(0, 300 * 4096);
    ASSERT_TRUE(map);
    std::vector<Range> want = {{0, 4096, RangeKind::data},
                               {4096, 4 * 4096, RangeKind::zero},
                               {5 * 4096, 2 * 4096, RangeKind::data},
                               {7 * 4096, 292 * 4096, RangeKind::zero},
                               {299 * 4096, 4096, RangeKind::data}};
    ASSERT_EQ(map->size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ((*map)[i].offset, want[i].offset) << i;
        EXPECT_EQ((*map)[i].length, want[i].length) << i;
        EXPECT_EQ((*map)[i].kind, want[i].kind) << i;
    }
}

TEST_F(VmdkReaderTest, ZeroedGrainEntriesReadAsZeroesAndHideTheParent) {
    SparseSpec base;
    base.capacity = 8 * 16;
    base.grains[2] = filled(4096, 9);
    base.grains[3] = filled(4096, 8);
    base.descriptor = descriptor("monolithicSparse", "RW 128 SPARSE \"base.vmdk\"\n");
    put_file(*pool, "base.vmdk", build_sparse(base));
    SparseSpec delta;
    delta.capacity = 8 * 16;
    delta.version = 2;
    delta.flags |= v::k_flag_zeroed_gte;
    delta.zeroed.insert(2);
    delta.grains[5] = filled(4096, 7);
    delta.descriptor =
        "# Disk DescriptorFile\nversion=1\nCID=aaaaaaaa\nparentCID=12345678\n"
        "createType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\n"
        "RW 128 SPARSE \"delta.vmdk\"\n";
    put_file(*pool, "delta.vmdk", build_sparse(delta));
    auto r = open_vmdk(*pool, "delta.vmdk");
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ((*r)->info().chain, std::vector<std::string>{"base.vmdk"});
    auto all = read_all(**r);
    std::vector<std::byte> zero(4096);
    EXPECT_EQ(0, std::memcmp(all.data() + 2 * 4096, zero.data(), 4096));
    EXPECT_EQ(0, std::memcmp(all.data() + 3 * 4096, base.grains[3].data(), 4096));
    EXPECT_EQ(0, std::memcmp(all.data() + 5 * 4096, delta.grains[5].data(), 4096));
}

TEST_F(VmdkReaderTest, ParentCidMismatchIsAnError) {
    SparseSpec base;
    base.capacity = 128;
    base.descriptor = descriptor("monolithicSparse", "RW 128 SPARSE \"base.vmdk\"\n");
    put_file(*pool, "base.vmdk", build_sparse(base));
    put_file(
        *pool, "d.vmdk",
        bytes_of("# Disk DescriptorFile\nCID=1\nparentCID=87654321\ncreateType=\"vmfsSparse\"\n"
                 "parentFileNameHint=\"base.vmdk\"\nRW 128 ZERO\n"));
    auto r = open_vmdk(*pool, "d.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("parentCID"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("12345678"), std::string::npos) << r.error().message;
}

TEST_F(VmdkReaderTest, LoopInTheChainIsAnError) {
    put_file(*pool, "a.vmdk",
             bytes_of("# Disk DescriptorFile\nCID=1\nparentCID=2\ncreateType=\"custom\"\n"
                      "parentFileNameHint=\"b.vmdk\"\nRW 8 ZERO\n"));
    put_file(*pool, "b.vmdk",
             bytes_of("# Disk DescriptorFile\nCID=2\nparentCID=1\ncreateType=\"custom\"\n"
                      "parentFileNameHint=\"a.vmdk\"\nRW 8 ZERO\n"));
    auto r = open_vmdk(*pool, "a.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("loop"), std::string::npos) << r.error().message;
}

TEST_F(VmdkReaderTest, TruncatedSparseFileIsAnErrorNotZeroes) {
    auto s = small_sparse();
    auto file = build_sparse(s);
    file.resize(file.size() - 4096);  // cut the last grain off
    put_file(*pool, "t.vmdk", file);
    auto r = open_vmdk(*pool, "t.vmdk");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::protocol);
    EXPECT_NE(r.error().message.find("t.vmdk: grain table 2 entry 43"), std::string::npos)
        << r.error().message;
}

TEST_F(VmdkReaderTest, BadMagicAndAbsurdHeaderFieldsAreErrors) {
    put_file(*pool, "x.vmdk", std::vector<std::byte>(512, std::byte{'x'}));
    auto r = open_vmdk(*pool, "x.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("not a VMDK"), std::string::npos);

    auto s = small_sparse();
    auto file = build_sparse(s);
    v::put64(&file[12], std::uint64_t{1} << 60);  // capacity
    put_file(*pool, "big.vmdk", file);
    r = open_vmdk(*pool, "big.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("big.vmdk: header field capacity"), std::string::npos)
        << r.error().message;

    file = build_sparse(s);
    v::put32(&file[4], 7);  // version
    put_file(*pool, "v7.vmdk", file);
    r = open_vmdk(*pool, "v7.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("header field version"), std::string::npos);
}

TEST_F(VmdkReaderTest, LooksLikeVmdk) {
    EXPECT_TRUE(looks_like_vmdk(bytes_of("KDMV\x01")));
    EXPECT_TRUE(looks_like_vmdk(bytes_of("COWD")));
    EXPECT_TRUE(looks_like_vmdk(bytes_of("# Disk DescriptorFile\nversion=1\n")));
    EXPECT_FALSE(looks_like_vmdk(bytes_of("QFI\xfb")));
    EXPECT_FALSE(looks_like_vmdk(std::vector<std::byte>(512)));
}

TEST_F(VmdkReaderTest, ConcurrentReadsAgree) {
    auto s = small_sparse();
    put_file(*pool, "m.vmdk", build_sparse(s));
    auto r = open_vmdk(*pool, "m.vmdk");
    ASSERT_TRUE(r) << r.error().message;
    auto want = read_all(**r);
    std::vector<std::thread> threads;
    std::atomic<int> bad{0};
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            std::vector<std::byte> buf(8192);
            for (int i = 0; i < 200; ++i) {
                std::uint64_t off = ((i * 7 + t * 13) % 290) * 4096 + 512 * (t + 1);
                if (!(*r)->read(buf, off) || std::memcmp(buf.data(), want.data() + off, buf.size()))
                    ++bad;
            }
        });
    for (auto& th : threads) th.join();
    EXPECT_EQ(bad, 0);
}

}  // namespace

namespace {

// seSparse, laid out as QEMU's reader expects it: const header (sector 0),
// volatile header (1), grain directory (2), grain tables from 3, grains after.
std::vector<std::byte> build_sesparse(std::uint64_t capacity,
                                      const std::map<std::uint64_t, std::uint64_t>& gtes,
                                      const std::vector<std::vector<std::byte>>& clusters) {
    const std::uint64_t tables = 2;
    std::vector<std::byte> f((3 + tables * 64) * 512);
    auto put = [&](std::uint64_t at, std::uint64_t v) { v::put64(&f[at], v); };
    put(0, 0xcafebabe);
    put(8, 0x200000001);
    put(16, capacity);
    put(24, 8);
    put(32, 64);
    put(80, 1);  // volatile header
    put(88, 1);
    put(128, 2);  // grain directory
    put(136, 1);
    put(144, 3);  // grain tables
    put(152, tables * 64);
    put(192, 3 + tables * 64);  // grains
    put(512, 0xcafecafe);
    // GD: table 0 -> GT #0, table 2 -> GT #1; table 1 absent.
    put(2 * 512 + 0, 0x1000000000000000ULL | 0);
    put(2 * 512 + 16, 0x1000000000000000ULL | 1);
    for (const auto& [g, e] : gtes) {
        const std::uint64_t table = g / 4096 == 0 ? 0 : 1;
        put(3 * 512 + table * 64 * 512 + (g % 4096) * 8, e);
    }
    for (const auto& c : clusters) f.insert(f.end(), c.begin(), c.end());
    return f;
}

std::uint64_t sesparse_allocated(std::uint64_t cluster) {
    return 0x3000000000000000ULL | ((cluster & 0xfff) << 48) | (cluster >> 12);
}

TEST_F(VmdkReaderTest, ReadsSeSparseGrainsZeroesAndAbsentTables) {
    const std::uint64_t capacity = 40 * 2048;  // 40 MiB: three 16 MiB tables
    const auto c0 = filled(4096, 5), c1 = filled(4096, 6);
    std::map<std::uint64_t, std::uint64_t> gtes = {{5, sesparse_allocated(0)},
                                                   {6, 0x2000000000000000ULL},
                                                   {2 * 4096 + 7, sesparse_allocated(1)}};
    put_file(*pool, "se.vmdk", build_sesparse(capacity, gtes, {c0, c1}));
    // A delta over a base full of 0x77: zero grains hide it, unallocated ones show it.
    put_file(*pool, "base-flat.vmdk", std::vector<std::byte>(capacity * 512, std::byte{0x77}));
    put_file(*pool, "base.vmdk",
             bytes_of(descriptor("vmfs", "RW 81920 VMFS \"base-flat.vmdk\"\n")));
    put_file(*pool, "top.vmdk",
             bytes_of("# Disk DescriptorFile\nCID=2\nparentCID=12345678\ncreateType=\"seSparse\"\n"
                      "parentFileNameHint=\"base.vmdk\"\nRW 81920 SESPARSE \"se.vmdk\"\n"));
    auto r = open_vmdk(*pool, "top.vmdk");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)->info().subformat, "seSparse");
    EXPECT_EQ((*r)->info().allocated_bytes, 2u * 4096);
    auto all = read_all(**r);
    EXPECT_EQ(0, std::memcmp(all.data() + 5 * 4096, c0.data(), 4096));
    EXPECT_EQ(0, std::memcmp(all.data() + (2 * 4096 + 7) * 4096, c1.data(), 4096));
    EXPECT_EQ(all[6 * 4096], std::byte{0});
    EXPECT_EQ(all[6 * 4096 + 4095], std::byte{0});
    EXPECT_EQ(all[0], std::byte{0x77});
    EXPECT_EQ(all[20 << 20], std::byte{0x77});  // table 1 absent
}

TEST_F(VmdkReaderTest, SeSparseWithAJournalToReplayIsRefused) {
    auto f = build_sesparse(2048, {}, {});
    v::put64(&f[512 + 24], 1);  // replayJournal
    put_file(*pool, "se.vmdk", f);
    auto r = open_vmdk(*pool, "se.vmdk");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("replayJournal"), std::string::npos) << r.error().message;
}

TEST_F(VmdkReaderTest, ReadsVmfsSparseCowdDelta) {
    // COWD: header, GD at sector 4, one 4096-entry GT (32 sectors) at 8, grains after.
    const std::uint32_t capacity = 4096;  // 2 MiB, grains of 1 sector... use 8-sector grains
    std::vector<std::byte> f(40 * 512);
    v::put32(&f[0], v::k_cowd_magic);
    v::put32(&f[4], 1);
    v::put32(&f[8], 3);
    v::put32(&f[12], capacity);
    v::put32(&f[16], 8);
    v::put32(&f[20], 4);
    v::put32(&f[24], 1);
    v::put32(&f[4 * 512], 8);
    const auto grain = filled(4096, 3);
    v::put32(&f[8 * 512 + 4 * 3], 40);  // grain 3 at sector 40
    f.insert(f.end(), grain.begin(), grain.end());
    put_file(*pool, "d-delta.vmdk", f);
    put_file(*pool, "d.vmdk",
             bytes_of(descriptor("vmfsSparse", "RW 4096 VMFSSPARSE \"d-delta.vmdk\"\n")));
    auto r = open_vmdk(*pool, "d.vmdk");
    ASSERT_TRUE(r) << r.error().message;
    auto all = read_all(**r);
    ASSERT_EQ(all.size(), 4096u * 512);
    EXPECT_EQ(0, std::memcmp(all.data() + 3 * 4096, grain.data(), 4096));
    EXPECT_EQ(all[0], std::byte{0});
    EXPECT_EQ((*r)->info().allocated_bytes, 4096u);
}

}  // namespace
