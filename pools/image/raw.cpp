// Raw images: reader over block status, sparse writer.
#include "pools/image/raw.hpp"

#include <fmt/core.h>

#include <algorithm>

#include "bytes.hpp"

namespace blockmig::pools::image {

namespace {

class RawReader final : public ImageReader {
  public:
    RawReader(std::string name, std::unique_ptr<Volume> volume)
        : m_name(std::move(name)), m_volume(std::move(volume)) {
        m_info.format = ImageFormat::raw;
        m_info.subformat = "raw";
        m_info.virtual_size = m_volume->size();
    }
    Result<void> count_allocation() {
        auto extents = m_volume->block_status(0, m_info.virtual_size);
        if (!extents) return fail(extents.error().with_context(m_name));
        for (const auto& e : *extents)
            if (e.data) m_info.allocated_bytes += e.length;
        return {};
    }
    const ImageInfo& info() const override { return m_info; }
    Result<std::vector<Range>> map(std::uint64_t offset, std::uint64_t length) override {
        auto extents = m_volume->block_status(offset, length);
        if (!extents) return fail(extents.error().with_context(m_name + ": block status"));
        std::vector<Range> out;
        for (const auto& e : *extents)
            out.push_back(Range{e.offset, e.length, e.data ? RangeKind::data : RangeKind::zero});
        return out;
    }
    Result<void> read(std::span<std::byte> buf, std::uint64_t offset) override {
        if (offset > m_info.virtual_size || buf.size() > m_info.virtual_size - offset)
            return fail(ErrorCode::invalid_argument, fmt::format("{}: read past the end", m_name));
        if (auto r = detail::read_at(*m_volume, buf, offset, nullptr, m_info.virtual_size); !r)
            return fail(r.error().with_context(m_name));
        return {};
    }

  private:
    std::string m_name;
    std::unique_ptr<Volume> m_volume;
    ImageInfo m_info;
};

class RawWriter final : public ImageWriter {
  public:
    RawWriter(std::unique_ptr<Volume> volume, std::uint64_t size, RawWriteOptions options)
        : m_volume(std::move(volume)), m_size(size), m_options(options) {}
    Result<void> write(std::span<const std::byte> data, std::uint64_t offset) override {
        if (offset + data.size() > m_size)
            return fail(ErrorCode::invalid_argument, "raw: write past the virtual size");
        return m_volume->pwrite(data, offset);
    }
    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        if (m_options.target_zeroed || length == 0) return {};
        return m_volume->write_zeroes(offset, length);
    }
    Result<void> finish() override {
        if (m_volume->size() < m_size) {
            // A file whose tail is zero: extend it sparsely.
            if (auto r = m_volume->write_zeroes(m_volume->size(), m_size - m_volume->size()); !r)
                return r;
        }
        return m_volume->flush();
    }

  private:
    std::unique_ptr<Volume> m_volume;
    std::uint64_t m_size;
    RawWriteOptions m_options;
};

}  // namespace

Result<std::unique_ptr<ImageReader>> open_raw(Pool& pool, const std::string& name) {
    auto volume = pool.open(name, false);
    if (!volume) return fail(volume.error());
    auto reader = std::make_unique<RawReader>(pool.url_of(name), std::move(*volume));
    if (auto r = reader->count_allocation(); !r) return fail(r.error());
    return std::unique_ptr<ImageReader>(std::move(reader));
}

Result<std::unique_ptr<ImageWriter>> create_raw_writer(std::unique_ptr<Volume> volume,
                                                       std::uint64_t virtual_size,
                                                       const RawWriteOptions& options) {
    if (volume->block_size() > 1 && volume->size() < virtual_size)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("raw: the target ({} bytes) is smaller than the image ({} bytes)",
                                volume->size(), virtual_size));
    if (volume->block_size() > 1 && virtual_size % volume->block_size() != 0)
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("raw: the image size {} is not a multiple of the target's {} byte blocks",
                        virtual_size, volume->block_size()));
    return std::unique_ptr<ImageWriter>(
        std::make_unique<RawWriter>(std::move(volume), virtual_size, options));
}

}  // namespace blockmig::pools::image
