// The convert copy loop against an in-memory source and a recording writer:
// order, zero detection, reads only where the map says data, errors and
// cancellation.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "convert/pipeline.hpp"

using namespace blockmig;
using namespace blockmig::pools::image;

namespace {

class FakeReader : public ImageReader {
  public:
    FakeReader(std::vector<std::byte> data, std::vector<Range> map)
        : m_data(std::move(data)), m_map(std::move(map)) {
        m_info.virtual_size = m_data.size();
    }
    const ImageInfo& info() const override { return m_info; }
    Result<std::vector<Range>> map(std::uint64_t offset, std::uint64_t length) override {
        std::vector<Range> out;
        for (auto r : m_map) {
            const std::uint64_t s = std::max(r.offset, offset),
                                e = std::min(r.offset + r.length, offset + length);
            if (s < e) out.push_back(Range{s, e - s, r.kind});
        }
        return out;
    }
    Result<void> read(std::span<std::byte> buf, std::uint64_t offset) override {
        if (m_fail_at && offset <= *m_fail_at && *m_fail_at < offset + buf.size())
            return fail(ErrorCode::protocol, "fake: grain table past end of file");
        for (const auto& r : m_map)
            if (r.kind == RangeKind::zero && offset < r.offset + r.length &&
                r.offset < offset + buf.size())
                m_zero_reads++;
        std::memcpy(buf.data(), m_data.data() + offset, buf.size());
        return {};
    }
    std::optional<std::uint64_t> m_fail_at;
    std::atomic<int> m_zero_reads{0};

  private:
    std::vector<std::byte> m_data;
    std::vector<Range> m_map;
    ImageInfo m_info;
};

class RecordingWriter : public ImageWriter {
  public:
    explicit RecordingWriter(std::uint64_t size) : m_image(size, std::byte{0x77}) {}
    Result<void> write(std::span<const std::byte> data, std::uint64_t offset) override {
        check(offset, data.size());
        std::memcpy(m_image.data() + offset, data.data(), data.size());
        m_data_bytes += data.size();
        return {};
    }
    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        check(offset, length);
        std::memset(m_image.data() + offset, 0, length);
        m_zero_bytes += length;
        return {};
    }
    Result<void> finish() override { return {}; }
    void check(std::uint64_t offset, std::uint64_t length) {
        EXPECT_EQ(offset, m_next) << "writes must be in order and contiguous";
        EXPECT_EQ(length % 512, 0u);
        m_next = offset + length;
    }
    std::vector<std::byte> m_image;
    std::uint64_t m_next = 0, m_data_bytes = 0, m_zero_bytes = 0;
};

std::vector<std::byte> content(std::size_t size) {
    std::vector<std::byte> out(size);
    for (std::size_t i = 0; i < size; ++i)
        out[i] = static_cast<std::byte>((i * 7 + i / 4096) & 0xff);
    return out;
}

convert::CopyOptions small_requests() {
    convert::CopyOptions o;
    o.request_size = 64 << 10;
    o.in_flight = 4;
    o.readers = 3;
    return o;
}

TEST(ConvertPipeline, CopiesInOrderReadsOnlyDataAndKeepsZeroBlocksSparse) {
    const std::size_t size = 8 << 20;
    auto data = content(size);
    // [0, 3 MiB) data with an all-zero 4 KiB block inside; [3, 7 MiB) zero; tail data.
    std::memset(data.data() + (1 << 20) + 8192, 0, 4096);
    std::memset(data.data() + (3 << 20), 0, 4 << 20);
    FakeReader reader(data, {{0, 3 << 20, RangeKind::data},
                             {3 << 20, 4 << 20, RangeKind::zero},
                             {7 << 20, 1 << 20, RangeKind::data}});
    RecordingWriter writer(size);
    std::atomic<bool> cancel{false};
    std::uint64_t last_done = 0;
    auto stats = convert::copy_image(
        reader, writer, small_requests(),
        [&](const convert::CopyStats& s) {
            EXPECT_GE(s.data_done, last_done);
            last_done = s.data_done;
        },
        cancel);
    ASSERT_TRUE(stats) << stats.error().message;
    EXPECT_TRUE(writer.m_image == data);
    EXPECT_EQ(writer.m_next, size);
    EXPECT_EQ(reader.m_zero_reads.load(), 0) << "zero ranges must not be read";
    EXPECT_EQ(stats->data_total, 4u << 20);
    EXPECT_EQ(stats->data_done, 4u << 20);
    EXPECT_EQ(writer.m_data_bytes, (4u << 20) - 4096)
        << "the zero block inside data is written as zeroes";
    EXPECT_EQ(last_done, 4u << 20);
}

TEST(ConvertPipeline, PadsAnOddSizedImageToWholeSectors) {
    const std::size_t size = (1 << 20) + 100;
    auto data = content(size);
    FakeReader reader(data, {{0, size, RangeKind::data}});
    RecordingWriter writer((1 << 20) + 512);
    std::atomic<bool> cancel{false};
    ASSERT_TRUE(convert::copy_image(reader, writer, small_requests(), nullptr, cancel));
    EXPECT_TRUE(std::equal(data.begin(), data.end(), writer.m_image.begin()));
    EXPECT_TRUE(std::all_of(writer.m_image.begin() + size, writer.m_image.end(),
                            [](auto b) { return b == std::byte{0}; }));
}

TEST(ConvertPipeline, AReadErrorStopsTheCopyWithThatError) {
    const std::size_t size = 4 << 20;
    FakeReader reader(content(size), {{0, size, RangeKind::data}});
    reader.m_fail_at = 2 << 20;
    RecordingWriter writer(size);
    std::atomic<bool> cancel{false};
    auto stats = convert::copy_image(reader, writer, small_requests(), nullptr, cancel);
    ASSERT_FALSE(stats);
    EXPECT_EQ(stats.error().code, ErrorCode::protocol);
    EXPECT_NE(stats.error().message.find("grain table past end"), std::string::npos);
    EXPECT_LE(writer.m_next, 2u << 20) << "nothing after the failed request is written";
}

TEST(ConvertPipeline, CancelStopsTheCopy) {
    const std::size_t size = 4 << 20;
    FakeReader reader(content(size), {{0, size, RangeKind::data}});
    RecordingWriter writer(size);
    std::atomic<bool> cancel{false};
    auto stats = convert::copy_image(
        reader, writer, small_requests(),
        [&](const convert::CopyStats& s) {
            if (s.data_done >= (1 << 20)) cancel = true;
        },
        cancel);
    ASSERT_FALSE(stats);
    EXPECT_EQ(stats.error().code, ErrorCode::cancelled);
    EXPECT_LT(writer.m_next, size);
}

}  // namespace
