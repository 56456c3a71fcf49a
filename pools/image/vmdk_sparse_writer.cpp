// The monolithicSparse writer (VMware "Virtual Disk Format 5.0", "Hosted
// Sparse Extents"): header (version 1), embedded descriptor, grain directory
// and all grain tables preallocated after it, then uncompressed 64 KiB grains
// appended in guest order. All-zero grains stay unallocated. Only the grain
// table being filled is in memory; each is written when the guest offset
// moves past it.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "vmdk_format.hpp"
#include "vmdk_write_common.hpp"
#include "vmdk_writers.hpp"

namespace blockmig::pools::image::vmdk {

namespace {

constexpr std::uint64_t k_grain_sectors = 128;
constexpr std::uint64_t k_grain_bytes = k_grain_sectors * k_sector;
constexpr std::uint32_t k_gtes = 512;
constexpr std::uint64_t k_gt_sectors = k_gtes * 4 / k_sector;
constexpr std::uint64_t k_gd_sector = 21;

class SparseWriter final : public ImageWriter {
  public:
    SparseWriter(std::unique_ptr<Volume> volume, std::uint64_t virtual_size,
                 const VmdkWriteOptions& options)
        : m_volume(std::move(volume)), m_size(virtual_size), m_options(options), m_sink(*m_volume) {
        m_header.version = 1;
        m_header.flags = k_flag_newline_test;
        m_header.capacity = virtual_size / k_sector;
        m_header.grain_size = k_grain_sectors;
        m_header.descriptor_offset = 1;
        m_header.descriptor_size = 20;
        m_header.gtes_per_gt = k_gtes;
        m_header.gd_offset = k_gd_sector;
        m_tables = gt_count(m_header);
        m_gd_sectors = (m_tables * 4 + k_sector - 1) / k_sector;
        const std::uint64_t meta_end = k_gd_sector + m_gd_sectors + m_tables * k_gt_sectors;
        m_header.overhead = (meta_end + k_grain_sectors - 1) / k_grain_sectors * k_grain_sectors;
        m_sink.reset(m_header.overhead * k_sector);
        m_gt.assign(k_gtes, 0);
        m_grain.assign(k_grain_bytes, std::byte{0});
    }

    Result<void> start() {
        std::vector<std::byte> head((k_gd_sector + m_gd_sectors) * k_sector);
        encode_sparse_header(m_header, std::span<std::byte, 512>(head.data(), 512));
        const std::string d = make_descriptor("monolithicSparse", m_header.capacity, m_options);
        std::memcpy(head.data() + k_sector, d.data(),
                    std::min<std::size_t>(d.size(), 20 * k_sector));
        for (std::uint64_t t = 0; t < m_tables; ++t)
            put32(head.data() + k_gd_sector * k_sector + 4 * t,
                  static_cast<std::uint32_t>(gt_sector(t)));
        if (auto r = m_volume->pwrite(head, 0); !r)
            return fail(r.error().with_context("vmdk: header"));
        const std::uint64_t gts = gt_sector(0) * k_sector;
        if (auto r = m_volume->write_zeroes(gts, m_header.overhead * k_sector - gts); !r)
            return fail(r.error().with_context("vmdk: grain tables"));
        return {};
    }

    Result<void> write(std::span<const std::byte> data, std::uint64_t offset) override {
        if (auto r = check_order(offset, data.size()); !r) return r;
        while (!data.empty()) {
            const std::uint64_t g = offset / k_grain_bytes, in = offset % k_grain_bytes;
            if (g != m_grain_index)
                if (auto r = complete_grain(g); !r) return r;
            const std::size_t n =
                static_cast<std::size_t>(std::min<std::uint64_t>(k_grain_bytes - in, data.size()));
            std::memcpy(m_grain.data() + in, data.data(), n);
            m_dirty = true;
            offset += n;
            data = data.subspan(n);
        }
        m_next = offset;
        return {};
    }

    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        if (auto r = check_order(offset, length); !r) return r;
        m_next = offset + length;
        return {};
    }

    Result<void> finish() override {
        if (m_finished) return fail(ErrorCode::invalid_state, "vmdk: finish() called twice");
        m_finished = true;
        if (auto r = complete_grain(~std::uint64_t{0}); !r) return r;
        if (auto r = write_table(); !r) return r;
        if (auto r = m_sink.flush(); !r) return r;
        if (m_volume->size() < m_header.overhead * k_sector) {  // no grain at all
            std::vector<std::byte> zero(k_sector);
            if (auto r = m_volume->pwrite(zero, m_header.overhead * k_sector - k_sector); !r)
                return fail(r.error().with_context("vmdk: write"));
        }
        if (auto r = m_volume->flush(); !r) return fail(r.error().with_context("vmdk: flush"));
        return {};
    }

  private:
    std::uint64_t gt_sector(std::uint64_t t) const {
        return k_gd_sector + m_gd_sectors + t * k_gt_sectors;
    }

    Result<void> check_order(std::uint64_t offset, std::uint64_t length) const {
        if (m_finished) return fail(ErrorCode::invalid_state, "vmdk: write after finish()");
        if (offset < m_next || offset % k_sector || length % k_sector || offset + length > m_size)
            return fail(
                ErrorCode::invalid_argument,
                fmt::format("vmdk: write of {} bytes at {}: out of order, unaligned or past "
                            "the end ({})",
                            length, offset, m_size));
        return {};
    }

    Result<void> complete_grain(std::uint64_t next) {
        if (m_dirty && !all_zero(m_grain)) {
            const std::uint64_t table = m_grain_index / k_gtes;
            if (table != m_table)
                if (auto r = write_table(); !r) return r;
            m_table = table;
            const std::uint64_t sector = m_sink.position() / k_sector;
            if (sector > 0xffffffffu)
                return fail(ErrorCode::no_space, "vmdk: sparse file grows past 2 TiB");
            m_gt[m_grain_index % k_gtes] = static_cast<std::uint32_t>(sector);
            m_gt_used = true;
            if (auto r = m_sink.append(m_grain); !r) return r;
            std::fill(m_grain.begin(), m_grain.end(), std::byte{0});
        }
        m_dirty = false;
        m_grain_index = next;
        return {};
    }

    Result<void> write_table() {
        if (!m_gt_used) return {};
        std::vector<std::byte> gt(k_gt_sectors * k_sector);
        for (std::uint32_t i = 0; i < k_gtes; ++i) put32(gt.data() + 4 * i, m_gt[i]);
        if (auto r = m_volume->pwrite(gt, gt_sector(m_table) * k_sector); !r)
            return fail(r.error().with_context("vmdk: grain table"));
        std::fill(m_gt.begin(), m_gt.end(), 0);
        m_gt_used = false;
        return {};
    }

    std::unique_ptr<Volume> m_volume;
    std::uint64_t m_size;
    VmdkWriteOptions m_options;
    Sink m_sink;
    SparseHeader m_header;
    std::uint64_t m_tables = 0;
    std::uint64_t m_gd_sectors = 0;
    std::vector<std::uint32_t> m_gt;
    std::uint64_t m_table = 0;
    bool m_gt_used = false;
    std::vector<std::byte> m_grain;
    std::uint64_t m_grain_index = 0;
    bool m_dirty = false;
    std::uint64_t m_next = 0;
    bool m_finished = false;
};

}  // namespace

Result<std::unique_ptr<ImageWriter>> make_sparse_writer(std::unique_ptr<Volume> volume,
                                                        std::uint64_t virtual_size,
                                                        const VmdkWriteOptions& options) {
    auto w = std::make_unique<SparseWriter>(std::move(volume), virtual_size, options);
    if (auto r = w->start(); !r) return fail(r.error());
    return std::unique_ptr<ImageWriter>(std::move(w));
}

}  // namespace blockmig::pools::image::vmdk
