// qcow2 reader and writer on in-memory volumes: round trips through every
// writer mode, a refcount audit of what the writer lays down, and the
// corrupt inputs the reader must refuse with an error naming the field.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "pools/image/open.hpp"
#include "pools/image/qcow2.hpp"
#include "pools/image/raw.hpp"
#include "pools/image_format.hpp"
#include "pools/pools.hpp"

using namespace blockmig;
using namespace blockmig::pools;
using namespace blockmig::pools::image;

namespace {

std::uint64_t be(const std::vector<std::byte>& b, std::uint64_t off, int n) {
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i)
        v = (v << 8) | std::to_integer<std::uint64_t>(b[off + static_cast<std::uint64_t>(i)]);
    return v;
}

void put(std::vector<std::byte>& b, std::uint64_t off, std::uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i, v >>= 8)
        b[off + static_cast<std::uint64_t>(i)] = static_cast<std::byte>(v & 0xff);
}

// Text-like, compressible content with a per-block signature.
std::vector<std::byte> block_content(std::uint64_t offset, std::size_t size, std::uint32_t seed) {
    std::vector<std::byte> out(size);
    std::mt19937 rng(static_cast<std::uint32_t>(offset / 512) ^ seed);
    const char* words[] = {"lorem ", "ipsum ",    "dolor ", "sit ",
                           "amet ",  "blockmig ", "qcow2 ", "\n"};
    std::size_t i = 0;
    while (i < size) {
        const char* w = words[rng() % 8];
        for (; *w && i < size; ++w) out[i++] = static_cast<std::byte>(*w);
    }
    return out;
}

struct Piece {
    std::uint64_t offset;
    std::uint64_t length;
    bool data;
};

// The guest view the tests write: data runs at scattered, unaligned-to-cluster
// (but 512-aligned) offsets, with zero runs between.
std::vector<Piece> layout(std::uint64_t size) {
    return {{0, 4096, true},
            {4096, 61440, false},
            {65536, 3 * 65536, true},
            {4 * 65536, 512, false},
            {4 * 65536 + 512, 1536, true},
            {4 * 65536 + 2048, (size / 2) - 4 * 65536 - 2048, false},
            {size / 2, 200 * 1024, true},
            {size / 2 + 200 * 1024, size / 2 - 200 * 1024 - 8192, false},
            {size - 8192, 8192, true}};
}

std::vector<std::byte> expected_image(std::uint64_t size) {
    std::vector<std::byte> img(size);
    for (const auto& p : layout(size))
        if (p.data) {
            auto c = block_content(p.offset, p.length, 7);
            std::memcpy(img.data() + p.offset, c.data(), c.size());
        }
    return img;
}

void write_layout(ImageWriter& w, std::uint64_t size, std::uint64_t request = 65536) {
    for (const auto& p : layout(size)) {
        if (p.data) {
            // In requests like the pipeline's, crossing cluster boundaries.
            for (std::uint64_t o = 0; o < p.length; o += request) {
                auto whole = block_content(p.offset, p.length, 7);
                ASSERT_TRUE(w.write(
                    std::span(whole).subspan(o, std::min<std::uint64_t>(request, p.length - o)),
                    p.offset + o));
            }
        } else {
            ASSERT_TRUE(w.write_zeroes(p.offset, p.length));
        }
    }
    ASSERT_TRUE(w.finish());
}

std::vector<std::byte> read_all(ImageReader& r) {
    std::vector<std::byte> out(r.virtual_size());
    EXPECT_TRUE(r.read(out, 0));
    return out;
}

std::vector<std::byte> volume_bytes(Pool& pool, const std::string& name) {
    auto v = pool.open(name, false);
    EXPECT_TRUE(v);
    std::vector<std::byte> b((*v)->size());
    EXPECT_TRUE(read_full(**v, b, 0));
    return b;
}

// Recomputes every refcount from the L1/L2 tables and the refcount
// structures themselves, as `qemu-img check` does, and compares.
void audit_refcounts(const std::vector<std::byte>& img) {
    const std::uint32_t bits = static_cast<std::uint32_t>(be(img, 20, 4));
    const std::uint64_t cs = 1ull << bits;
    ASSERT_EQ(img.size() % cs, 0u) << "file ends mid-cluster";
    std::map<std::uint64_t, std::uint64_t> want;
    auto ref_range = [&](std::uint64_t off, std::uint64_t len) {
        for (std::uint64_t c = off / cs; c <= (off + len - 1) / cs; ++c) ++want[c];
    };
    ref_range(0, cs);
    const std::uint64_t l1_off = be(img, 40, 8), l1_size = be(img, 36, 4);
    ref_range(l1_off, l1_size * 8);
    const std::uint64_t rt_off = be(img, 48, 8), rt_clusters = be(img, 56, 4);
    ref_range(rt_off, rt_clusters * cs);
    const std::uint32_t shift = 62 - (bits - 8);
    for (std::uint64_t i = 0; i < l1_size; ++i) {
        const std::uint64_t l2 = be(img, l1_off + i * 8, 8) & 0x00fffffffffffe00ull;
        if (!l2) continue;
        ref_range(l2, cs);
        for (std::uint64_t j = 0; j < cs / 8; ++j) {
            const std::uint64_t e = be(img, l2 + j * 8, 8);
            if (e & (1ull << 62)) {
                const std::uint64_t host = e & ((1ull << shift) - 1);
                const std::uint64_t sectors = ((e >> shift) & ((1ull << (bits - 8)) - 1)) + 1;
                ref_range(host & ~511ull, sectors * 512);
            } else if (e & 0x00fffffffffffe00ull) {
                ref_range(e & 0x00fffffffffffe00ull, cs);
            }
        }
    }
    std::map<std::uint64_t, std::uint64_t> have;
    for (std::uint64_t i = 0; i < rt_clusters * cs / 8; ++i) {
        const std::uint64_t rb = be(img, rt_off + i * 8, 8);
        if (!rb) continue;
        ref_range(rb, cs);
        for (std::uint64_t k = 0; k < cs / 2; ++k)
            if (auto v = be(img, rb + k * 2, 2)) have[i * (cs / 2) + k] = v;
    }
    EXPECT_EQ(have, want);
    for (const auto& [c, n] : want) EXPECT_LT(c * cs, img.size()) << "cluster " << c << " past EOF";
}

std::unique_ptr<ImageWriter> new_writer(Pool& pool, const std::string& name, std::uint64_t size,
                                        const Qcow2WriteOptions& o) {
    EXPECT_TRUE(pool.create(name, 0, ImageFormat::raw));
    auto v = pool.open(name, true);
    EXPECT_TRUE(v);
    auto w = create_qcow2_writer(std::move(*v), size, o);
    EXPECT_TRUE(w) << w.error().message;
    return std::move(*w);
}

struct Mode {
    const char* name;
    Qcow2WriteOptions options;
    std::uint64_t request = 65536;  // bytes per write() call
};

class Qcow2RoundTrip : public ::testing::TestWithParam<Mode> {};

TEST_P(Qcow2RoundTrip, ReaderSeesWhatTheWriterWasGiven) {
    const std::uint64_t size = 64ull << 20;
    auto pool = make_mem_pool(1ull << 34);
    auto w = new_writer(*pool, "a.qcow2", size, GetParam().options);
    write_layout(*w, size, GetParam().request);
    w.reset();
    auto r = open_image(*pool, "a.qcow2");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)->info().format, ImageFormat::qcow2);
    EXPECT_EQ((*r)->virtual_size(), size);
    EXPECT_TRUE(read_all(**r) == expected_image(size));
    // The map marks the data runs as data and leaves long zero runs out.
    auto map = (*r)->map(0, size);
    ASSERT_TRUE(map);
    std::uint64_t covered = 0, data = 0;
    for (const auto& range : *map) {
        EXPECT_EQ(range.offset, covered);
        covered += range.length;
        if (range.kind == RangeKind::data) data += range.length;
    }
    EXPECT_EQ(covered, size);
    if (GetParam().options.preallocation == Qcow2Preallocation::off) {
        EXPECT_LT(data, 4ull * GetParam().options.cluster_size + (2u << 20));
    }
    audit_refcounts(volume_bytes(*pool, "a.qcow2"));
}

Qcow2WriteOptions opts(std::uint32_t cs, bool compress,
                       Qcow2Compression type = Qcow2Compression::zlib,
                       Qcow2Preallocation prealloc = Qcow2Preallocation::off) {
    Qcow2WriteOptions o;
    o.cluster_size = cs;
    o.compress = compress;
    o.compression_type = type;
    o.preallocation = prealloc;
    o.threads = 2;
    return o;
}

INSTANTIATE_TEST_SUITE_P(
    Modes, Qcow2RoundTrip,
    ::testing::Values(
        Mode{"plain", opts(65536, false)}, Mode{"zlib", opts(65536, true)},
        Mode{"zstd", opts(65536, true, Qcow2Compression::zstd)},
        // 512-byte clusters: a refcount block covers 128 KiB, so many are rotated out.
        Mode{"tiny_clusters", opts(512, false)}, Mode{"tiny_zlib", opts(512, true)},
        // Writes of many whole clusters go out in runs straight from the
        // caller's memory; with 512-byte clusters the runs cross L2 tables
        // (32 KiB each) and refcount blocks (128 KiB) inside one write.
        Mode{"plain_big_writes", opts(65536, false), 1u << 20},
        Mode{"tiny_big_writes", opts(512, false), 1u << 20},
        Mode{"big_clusters", opts(2u << 20, true)},
        Mode{"prealloc", opts(65536, false, Qcow2Compression::zlib, Qcow2Preallocation::metadata)}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Qcow2Writer, WholeZeroClustersInsideAWriteStayUnallocated) {
    const std::uint64_t cs = 65536, size = 1 << 20;
    auto pool = make_mem_pool(1ull << 30);
    auto w = new_writer(*pool, "a.qcow2", size, Qcow2WriteOptions{});
    // Clusters 1..4 in one write: data, zeroes, data, data.
    std::vector<std::byte> data(4 * cs);
    auto content = block_content(0, 4 * cs, 3);
    std::memcpy(data.data(), content.data(), cs);
    std::memcpy(data.data() + 2 * cs, content.data() + 2 * cs, 2 * cs);
    ASSERT_TRUE(w->write(data, cs));
    ASSERT_TRUE(w->finish());
    w.reset();
    auto r = open_image(*pool, "a.qcow2");
    ASSERT_TRUE(r) << r.error().message;
    std::vector<std::byte> want(size);
    std::memcpy(want.data() + cs, data.data(), data.size());
    EXPECT_TRUE(read_all(**r) == want);
    auto map = (*r)->map(0, size);
    ASSERT_TRUE(map);
    std::uint64_t allocated = 0;
    for (const auto& range : *map)
        if (range.kind == RangeKind::data) {
            allocated += range.length;
            EXPECT_TRUE(range.offset + range.length <= 2 * cs || range.offset >= 3 * cs)
                << "zero cluster 2 was allocated";
        }
    EXPECT_EQ(allocated, 3 * cs);
    audit_refcounts(volume_bytes(*pool, "a.qcow2"));
}

TEST(Qcow2Writer, RejectsOutOfOrderWritesAndBadOptions) {
    auto pool = make_mem_pool(1ull << 30);
    auto w = new_writer(*pool, "a.qcow2", 1 << 20, Qcow2WriteOptions{});
    std::vector<std::byte> data(512, std::byte{1});
    ASSERT_TRUE(w->write(data, 4096));
    EXPECT_EQ(w->write(data, 0).error().code, ErrorCode::invalid_argument);
    EXPECT_EQ(w->write(data, 1 << 20).error().code, ErrorCode::invalid_argument);
    ASSERT_TRUE(pool->create("b", 0, ImageFormat::raw));
    auto v = pool->open("b", true);
    EXPECT_FALSE(create_qcow2_writer(std::move(*v), 1 << 20, opts(1000, false)));
    v = pool->open("b", true);
    EXPECT_FALSE(create_qcow2_writer(
        std::move(*v), 1 << 20,
        opts(65536, true, Qcow2Compression::zlib, Qcow2Preallocation::metadata)));
}

// --- reader: corrupt and hostile images ------------------------------------

struct Fixture {
    std::unique_ptr<Pool> pool = make_mem_pool(1ull << 32);
    std::vector<std::byte> img;
    Fixture() {
        auto w = new_writer(*pool, "a.qcow2", 64ull << 20, Qcow2WriteOptions{});
        write_layout(*w, 64ull << 20);
        img = volume_bytes(*pool, "a.qcow2");
    }
    // Rewrites the image with `img` (after the test edited it) and opens it.
    Result<std::unique_ptr<ImageReader>> reopen(std::size_t truncate_to = 0) {
        EXPECT_TRUE(pool->remove("a.qcow2"));
        EXPECT_TRUE(pool->create("a.qcow2", 0, ImageFormat::raw));
        auto v = pool->open("a.qcow2", true);
        EXPECT_TRUE((*v)->pwrite(std::span(img).first(truncate_to ? truncate_to : img.size()), 0));
        return open_qcow2(*pool, "a.qcow2");
    }
};

void expect_error(const Result<std::unique_ptr<ImageReader>>& r, std::string_view needle) {
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("a.qcow2"), std::string::npos) << r.error().message;
}

TEST(Qcow2Reader, RefusesBadMagicAndVersion) {
    Fixture f;
    put(f.img, 0, 0x12345678, 4);
    expect_error(f.reopen(), "bad magic");
    put(f.img, 0, 0x514649fb, 4);
    put(f.img, 4, 4, 4);
    expect_error(f.reopen(), "version 4");
}

TEST(Qcow2Reader, RefusesTruncatedHeader) {
    Fixture f;
    expect_error(f.reopen(60), "header truncated");
}

// Found by qcow2_reader_fuzz: a v3 header whose header_length promises the
// optional compression_type byte in a file that ends before it.
TEST(Qcow2Reader, RefusesAHeaderLengthPastTheEndOfTheFile) {
    Fixture f;
    put(f.img, 100, 112, 4);
    expect_error(f.reopen(104), "header_length 112 runs past the end of the file");
}

TEST(Qcow2Reader, RefusesAbsurdSizes) {
    Fixture f;
    put(f.img, 24, 1ull << 62, 8);
    expect_error(f.reopen(), "absurd");
    put(f.img, 24, 64ull << 20, 8);
    put(f.img, 36, 0x7fffffff, 4);
    expect_error(f.reopen(), "l1_size");
    put(f.img, 36, 1, 4);
    put(f.img, 24, 1ull << 40, 8);
    expect_error(f.reopen(), "too small");
    put(f.img, 24, 64ull << 20, 8);
    put(f.img, 20, 30, 4);
    expect_error(f.reopen(), "cluster_bits");
}

TEST(Qcow2Reader, RefusesTablesPastTheEndOfATruncatedFile) {
    Fixture f;
    // The streaming layout puts L1 and the refcounts last: cutting the file
    // anywhere in the second half loses them or the L2 tables.
    expect_error(f.reopen(f.img.size() / 2), "past end of file");
    const std::uint64_t l1 = be(f.img, 40, 8);
    put(f.img, l1, (f.img.size() + 65536) | (1ull << 63), 8);
    expect_error(f.reopen(), "L1[0] points past end of file");
}

TEST(Qcow2Reader, DataClusterPastEndIsAReadError) {
    Fixture f;
    const std::uint64_t l1 = be(f.img, 40, 8);
    const std::uint64_t l2 = be(f.img, l1, 8) & 0x00fffffffffffe00ull;
    put(f.img, l2, (f.img.size() + (1 << 20)) | (1ull << 63), 8);  // cluster 0 -> far past EOF
    auto r = f.reopen();
    ASSERT_TRUE(r) << r.error().message;
    std::vector<std::byte> buf(4096);
    auto read = (*r)->read(buf, 0);
    ASSERT_FALSE(read);
    EXPECT_EQ(read.error().code, ErrorCode::protocol);
    EXPECT_NE(read.error().message.find("cluster 0 points past end of file"), std::string::npos)
        << read.error().message;
}

TEST(Qcow2Reader, RefusesUnknownIncompatibleFeaturesAndEncryption) {
    Fixture f;
    put(f.img, 72, 1ull << 20, 8);
    EXPECT_EQ(f.reopen().error().code, ErrorCode::unsupported);
    put(f.img, 72, 0, 8);
    put(f.img, 32, 1, 4);
    EXPECT_EQ(f.reopen().error().code, ErrorCode::unsupported);
}

TEST(Qcow2Reader, ZeroFlagAndUnallocatedClustersReadAsZeroes) {
    Fixture f;
    const std::uint64_t l1 = be(f.img, 40, 8);
    const std::uint64_t l2 = be(f.img, l1, 8) & 0x00fffffffffffe00ull;
    put(f.img, l2 + 8, be(f.img, l2 + 8, 8) | 1, 8);  // cluster 1: allocated but "reads as zero"
    auto r = f.reopen();
    ASSERT_TRUE(r);
    auto all = read_all(**r);
    auto want = expected_image(64ull << 20);
    std::memset(want.data() + 65536, 0, 65536);
    EXPECT_TRUE(all == want);
    auto map = (*r)->map(65536, 65536);
    ASSERT_TRUE(map);
    ASSERT_EQ(map->size(), 1u);
    EXPECT_EQ((*map)[0].kind, RangeKind::zero);
}

// --- backing chains ----------------------------------------------------------

TEST(Qcow2Reader, ReadsThroughABackingChain) {
    auto pool = make_mem_pool(1ull << 32);
    // base: raw with data; overlay: empty qcow2 pointing at it, bigger than the base.
    ASSERT_TRUE(pool->create("base.raw", 1 << 20, ImageFormat::raw));
    auto base = pool->open("base.raw", true);
    auto content = block_content(0, 1 << 20, 3);
    ASSERT_TRUE((*base)->pwrite(content, 0));
    ASSERT_TRUE(pool->create("top.qcow2", 2 << 20, ImageFormat::qcow2));
    auto top = pool->open("top.qcow2", true);
    ASSERT_TRUE(set_qcow2_backing(**top, "base.raw", ImageFormat::raw));
    auto r = open_image(*pool, "top.qcow2");
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ((*r)->info().chain.size(), 1u);
    EXPECT_EQ((*r)->info().chain[0], "base.raw");
    auto all = read_all(**r);
    EXPECT_TRUE(std::equal(content.begin(), content.end(), all.begin()));
    EXPECT_TRUE(std::all_of(all.begin() + (1 << 20), all.end(),
                            [](std::byte b) { return b == std::byte{0}; }));
}

TEST(Qcow2Reader, RefusesABackingLoop) {
    auto pool = make_mem_pool(1ull << 32);
    for (const char* n : {"a.qcow2", "b.qcow2"})
        ASSERT_TRUE(pool->create(n, 1 << 20, ImageFormat::qcow2));
    auto a = pool->open("a.qcow2", true);
    auto b = pool->open("b.qcow2", true);
    ASSERT_TRUE(set_qcow2_backing(**a, "b.qcow2", ImageFormat::qcow2));
    ASSERT_TRUE(set_qcow2_backing(**b, "a.qcow2", ImageFormat::qcow2));
    auto r = open_image(*pool, "a.qcow2");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("loops back"), std::string::npos) << r.error().message;
}

// --- probing -----------------------------------------------------------------

TEST(OpenImage, NameThatPromisesAFormatTheBytesLackIsAnError) {
    auto pool = make_mem_pool(1ull << 30);
    for (const char* n : {"disk.qcow2", "disk.vmdk", "disk.img"})
        ASSERT_TRUE(pool->create(n, 1 << 20, ImageFormat::raw));
    EXPECT_EQ(open_image(*pool, "disk.qcow2").error().code, ErrorCode::protocol);
    EXPECT_EQ(open_image(*pool, "disk.vmdk").error().code, ErrorCode::protocol);
    auto raw = open_image(*pool, "disk.img");
    ASSERT_TRUE(raw);
    EXPECT_EQ((*raw)->info().format, ImageFormat::raw);
    // -f raw is never second-guessed.
    auto forced = open_image(*pool, "disk.qcow2", ImageFormat::raw);
    ASSERT_TRUE(forced);
    EXPECT_EQ((*forced)->virtual_size(), 1u << 20);
}

TEST(OpenImage, ForcedRawReadsAQcow2FilesBytes) {
    auto pool = make_mem_pool(1ull << 30);
    ASSERT_TRUE(pool->create("x.qcow2", 1 << 20, ImageFormat::qcow2));
    auto r = open_image(*pool, "x.qcow2", ImageFormat::raw);
    ASSERT_TRUE(r);
    std::vector<std::byte> head(512);
    ASSERT_TRUE((*r)->read(head, 0));
    EXPECT_EQ(be(head, 0, 4), 0x514649fbu);
}

TEST(RawWriter, KeepsZeroesSparseAndExtendsTheFile) {
    auto pool = make_mem_pool(1ull << 30);
    ASSERT_TRUE(pool->create("r", 0, ImageFormat::raw));
    auto v = pool->open("r", true);
    auto w = create_raw_writer(std::move(*v), 8 << 20, RawWriteOptions{true});
    ASSERT_TRUE(w);
    auto c = block_content(4096, 8192, 1);
    ASSERT_TRUE((*w)->write(c, 4096));
    ASSERT_TRUE((*w)->write_zeroes(4096 + 8192, (8 << 20) - 4096 - 8192));
    ASSERT_TRUE((*w)->finish());
    auto r = open_image(*pool, "r");
    ASSERT_TRUE(r);
    EXPECT_EQ((*r)->virtual_size(), 8u << 20);
    auto all = read_all(**r);
    EXPECT_TRUE(std::equal(c.begin(), c.end(), all.begin() + 4096));
}

}  // namespace
