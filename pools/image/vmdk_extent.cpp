// ZERO and FLAT extents (see vmdk_extent.hpp).
#include "vmdk_extent.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace blockmig::pools::image::vmdk {

void append_seg(std::vector<Seg>& out, Seg seg) {
    if (seg.length == 0) return;
    if (!out.empty() && out.back().kind == seg.kind &&
        out.back().offset + out.back().length == seg.offset) {
        out.back().length += seg.length;
        return;
    }
    out.push_back(seg);
}

namespace {

class ZeroExtent final : public Extent {
  public:
    explicit ZeroExtent(std::uint64_t size) : m_size(size) {}
    std::uint64_t size() const override { return m_size; }
    std::uint64_t allocated_bytes() const override { return 0; }
    Result<void> status(std::uint64_t offset, std::uint64_t length,
                        std::vector<Seg>& out) override {
        append_seg(out, {offset, length, SegKind::zero});
        return {};
    }
    Result<void> read(std::span<std::byte> buf, std::uint64_t, const ReadBelow&) override {
        std::memset(buf.data(), 0, buf.size());
        return {};
    }

  private:
    std::uint64_t m_size;
};

class FlatExtent final : public Extent {
  public:
    FlatExtent(std::unique_ptr<Volume> volume, std::string name, std::uint64_t start,
               std::uint64_t size)
        : m_volume(std::move(volume)), m_name(std::move(name)), m_start(start), m_size(size) {}
    std::uint64_t size() const override { return m_size; }
    std::uint64_t allocated_bytes() const override { return m_size; }

    // Holes of the flat file read as zeroes: report them, so a thin flat
    // file stays thin in the copy.
    Result<void> status(std::uint64_t offset, std::uint64_t length,
                        std::vector<Seg>& out) override {
        auto extents = m_volume->block_status(m_start + offset, length);
        if (!extents) return fail(extents.error().with_context("vmdk: " + m_name));
        std::uint64_t pos = offset;
        for (const auto& e : *extents) {
            std::uint64_t rel = e.offset - m_start;
            if (rel != pos || e.length == 0) break;
            std::uint64_t len = std::min(e.length, offset + length - pos);
            append_seg(out, {pos, len, e.data ? SegKind::data : SegKind::zero});
            pos += len;
        }
        if (pos < offset + length) append_seg(out, {pos, offset + length - pos, SegKind::data});
        return {};
    }

    Result<void> read(std::span<std::byte> buf, std::uint64_t offset, const ReadBelow&) override {
        auto r = read_full(*m_volume, buf, m_start + offset);
        if (!r) return fail(r.error().with_context("vmdk: " + m_name));
        return {};
    }

  private:
    std::unique_ptr<Volume> m_volume;
    std::string m_name;
    std::uint64_t m_start;
    std::uint64_t m_size;
};

}  // namespace

std::unique_ptr<Extent> make_zero_extent(std::uint64_t size) {
    return std::make_unique<ZeroExtent>(size);
}

Result<std::unique_ptr<Extent>> make_flat_extent(std::unique_ptr<Volume> volume,
                                                 const std::string& name, std::uint64_t start,
                                                 std::uint64_t size) {
    const std::uint64_t have = volume->size();
    if (start + size < start || have < start + size)
        return fail(ErrorCode::protocol,
                    fmt::format("vmdk: {}: flat extent needs {} bytes from offset {}, the file has "
                                "{} (truncated?)",
                                name, size, start, have));
    return std::make_unique<FlatExtent>(std::move(volume), name, start, size);
}

}  // namespace blockmig::pools::image::vmdk
