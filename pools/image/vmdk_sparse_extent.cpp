// Grain-based extents: hosted sparse "KDMV" (monolithicSparse, the
// twoGbMaxExtentSparse pieces, streamOptimized) and ESX "COWD" (vmfsSparse).
// Both are a grain directory (GD) of grain table (GT) sector offsets, each GT
// a table of grain sector offsets (0 = unallocated, 1 = zeroed grain when the
// header's flag says so). streamOptimized grains are deflated (zlib format)
// behind a 12-byte marker {lba, size}; its GD may sit at the end of the file,
// found through the footer at EOF-1024 (VMware "Virtual Disk Format 5.0").
#include <fmt/format.h>
#include <libdeflate.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "vmdk_extent.hpp"
#include "vmdk_format.hpp"

namespace blockmig::pools::image::vmdk {

namespace {

// Grain tables kept in memory per extent; beyond this the cache is dropped
// and refilled on demand (bounded memory whatever the disk size).
constexpr std::uint64_t k_gt_cache_bytes = 16 << 20;
// Largest single read while scanning grain tables at open.
constexpr std::uint64_t k_scan_chunk = 1 << 20;

std::atomic<std::uint64_t> g_extent_ids{1};

struct Layout {
    std::uint64_t capacity = 0;  // sectors
    std::uint64_t grain = 0;     // sectors
    std::uint32_t gtes_per_gt = 0;
    std::uint64_t gd_offset = 0;  // sectors
    std::uint64_t gd_entries = 0;
    bool compressed = false;
    bool markers = false;
    bool zeroed_gte = false;
    // seSparse: 64-bit entries with a type nibble; tables and grains are
    // numbered from these bases (sectors).
    bool sesparse = false;
    std::uint64_t grains_base = 0;
    std::uint64_t gt_base = 0;
    std::uint64_t grains() const { return (capacity + grain - 1) / grain; }
    std::uint64_t entry_bytes() const { return sesparse ? 8 : 4; }
    std::uint64_t gt_bytes() const { return std::uint64_t{gtes_per_gt} * entry_bytes(); }
};

struct DecompressorFree {
    void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
};

// The last grain a thread inflated: reads split inside one compressed grain
// inflate it once.
struct GrainMemo {
    std::uint64_t extent_id = 0;
    std::uint64_t grain = ~std::uint64_t{0};
    std::vector<std::byte> data;
    std::vector<std::byte> packed;
    std::unique_ptr<libdeflate_decompressor, DecompressorFree> inflater;
};
thread_local GrainMemo t_memo;

class SparseExtent final : public Extent {
  public:
    SparseExtent(std::unique_ptr<Volume> volume, std::string name, Layout layout,
                 std::vector<std::uint64_t> gd, std::uint64_t size)
        : m_volume(std::move(volume)),
          m_name(std::move(name)),
          m_layout(layout),
          m_gd(std::move(gd)),
          m_size(size),
          m_file_size(m_volume->size()),
          m_id(g_extent_ids++) {}

    std::uint64_t size() const override { return m_size; }
    std::uint64_t allocated_bytes() const override { return m_allocated; }

    // Reads every grain table once, checking each entry against the file
    // size: a truncated file fails here instead of reading as zeroes.
    Result<void> scan() {
        std::vector<std::pair<std::uint64_t, std::uint64_t>> tables;  // (sector, gt index)
        for (std::uint64_t i = 0; i < m_gd.size(); ++i) {
            if (m_gd[i] == 0) continue;
            const std::uint64_t at = m_gd[i] * k_sector;
            if (at + m_layout.gt_bytes() > m_file_size)
                return corrupt(fmt::format("grain directory entry {}", i),
                               fmt::format("grain table at sector {} lies past the end of the file "
                                           "({} bytes; truncated?)",
                                           m_gd[i], m_file_size));
            tables.emplace_back(m_gd[i], i);
        }
        std::sort(tables.begin(), tables.end());
        std::vector<std::byte> chunk;
        for (std::size_t first = 0; first < tables.size();) {
            std::size_t last = first + 1;
            const std::uint64_t gt_sectors = (m_layout.gt_bytes() + k_sector - 1) / k_sector;
            while (last < tables.size() &&
                   tables[last].first == tables[last - 1].first + gt_sectors &&
                   (last - first + 1) * m_layout.gt_bytes() <= k_scan_chunk)
                ++last;
            const std::uint64_t span_bytes =
                (tables[last - 1].first - tables[first].first) * k_sector + m_layout.gt_bytes();
            chunk.resize(span_bytes);
            if (auto r = read_full(*m_volume, chunk, tables[first].first * k_sector); !r)
                return fail(r.error().with_context("vmdk: " + m_name + ": grain table"));
            for (std::size_t t = first; t < last; ++t) {
                const std::byte* p =
                    chunk.data() + (tables[t].first - tables[first].first) * k_sector;
                auto gt = decode_gt(p);
                if (auto r = check_gt(tables[t].second, gt); !r) return r;
                remember(tables[t].second,
                         std::make_shared<const std::vector<std::uint64_t>>(std::move(gt)));
            }
            first = last;
        }
        return {};
    }

    Result<void> status(std::uint64_t offset, std::uint64_t length,
                        std::vector<Seg>& out) override {
        const std::uint64_t gb = grain_bytes();
        std::uint64_t pos = offset;
        const std::uint64_t end = offset + length;
        while (pos < end) {
            const std::uint64_t g = pos / gb;
            const std::uint64_t in = pos % gb;
            std::uint64_t n = std::min(gb - in, end - pos);
            auto entry = lookup(g);
            if (!entry) return fail(entry.error());
            SegKind kind = entry->kind;
            if (entry->whole_table) {  // skip the rest of an absent grain table
                const std::uint64_t table_end =
                    (g / m_layout.gtes_per_gt + 1) * m_layout.gtes_per_gt * gb;
                n = std::min(end, std::max(table_end, pos + n)) - pos;
            }
            append_seg(out, {pos, n, kind});
            pos += n;
        }
        return {};
    }

    Result<void> read(std::span<std::byte> buf, std::uint64_t offset,
                      const ReadBelow& below) override {
        const std::uint64_t gb = grain_bytes();
        std::size_t done = 0;
        // Runs of neighbouring grains are served at once: contiguous
        // uncompressed grains with one pread, zero and unallocated runs with
        // one memset or one read below.
        enum class Run { none, file, zero, below };
        Run run = Run::none;
        std::size_t run_buf = 0;
        std::uint64_t run_file = 0, run_len = 0;
        auto flush_run = [&]() -> Result<void> {
            auto piece = buf.subspan(run_buf, run_len);
            const Run kind = run;
            run = Run::none;
            if (kind == Run::zero) std::memset(piece.data(), 0, piece.size());
            if (kind == Run::below) return below(piece, offset + run_buf);
            if (kind == Run::file) {
                if (auto r = read_full(*m_volume, piece, run_file); !r)
                    return fail(r.error().with_context("vmdk: " + m_name + ": grain"));
            }
            return {};
        };
        while (done < buf.size()) {
            const std::uint64_t pos = offset + done;
            const std::uint64_t g = pos / gb;
            const std::uint64_t in = pos % gb;
            const std::size_t n =
                static_cast<std::size_t>(std::min<std::uint64_t>(gb - in, buf.size() - done));
            auto entry = lookup(g);
            if (!entry) return fail(entry.error());
            Run kind = entry->kind == SegKind::zero          ? Run::zero
                       : entry->kind == SegKind::unallocated ? Run::below
                       : m_layout.compressed                 ? Run::none
                                                             : Run::file;
            const std::uint64_t file = entry->sector * k_sector + in;
            const bool extends = kind != Run::none && kind == run &&
                                 (kind != Run::file || run_file + run_len == file);
            if (extends) {
                run_len += n;
            } else {
                if (run != Run::none)
                    if (auto r = flush_run(); !r) return r;
                if (kind == Run::none) {
                    auto grain = inflate(g, entry->sector);
                    if (!grain) return fail(grain.error());
                    std::memcpy(buf.data() + done, (*grain)->data() + in, n);
                } else {
                    run = kind, run_buf = done, run_file = file, run_len = n;
                }
            }
            done += n;
        }
        if (run != Run::none) return flush_run();
        return {};
    }

  private:
    struct Entry {
        SegKind kind = SegKind::unallocated;
        std::uint64_t sector = 0;
        bool whole_table = false;  // the grain table itself is absent
    };
    using Table = std::shared_ptr<const std::vector<std::uint64_t>>;

    std::uint64_t grain_bytes() const { return m_layout.grain * k_sector; }

    std::unexpected<Error> corrupt(std::string_view field, std::string_view what) const {
        return fail(ErrorCode::protocol, fmt::format("vmdk: {}: {}: {}", m_name, field, what));
    }

    std::vector<std::uint64_t> decode_gt(const std::byte* p) const {
        std::vector<std::uint64_t> gt(m_layout.gtes_per_gt);
        for (std::uint32_t j = 0; j < m_layout.gtes_per_gt; ++j)
            gt[j] = m_layout.sesparse ? get64(p + 8 * j) : get32(p + 4 * j);
        return gt;
    }

    // What a grain table entry means. seSparse (as QEMU's reader decodes
    // it): top nibble 0 unallocated, 1 unmapped and 2 zero (both read as
    // zeroes), 3 allocated with the cluster number split in two fields.
    std::optional<Entry> classify(std::uint64_t e) const {
        if (!m_layout.sesparse) {
            if (e == 0) return Entry{SegKind::unallocated, 0, false};
            if (e == 1 && m_layout.zeroed_gte) return Entry{SegKind::zero, 0, false};
            return Entry{SegKind::data, e, false};
        }
        switch (e >> 60) {
            case 0:
                if (e != 0) return std::nullopt;
                return Entry{SegKind::unallocated, 0, false};
            case 1:
            case 2:
                return Entry{SegKind::zero, 0, false};
            case 3: {
                const std::uint64_t cluster =
                    ((e & 0x0fff000000000000ULL) >> 48) | ((e & 0x0000ffffffffffffULL) << 12);
                if (cluster > (std::uint64_t{1} << 40)) return std::nullopt;
                return Entry{SegKind::data, m_layout.grains_base + cluster * m_layout.grain, false};
            }
            default:
                return std::nullopt;
        }
    }

    Result<void> check_gt(std::uint64_t index, const std::vector<std::uint64_t>& gt) {
        const std::uint64_t file_sectors = m_file_size / k_sector;
        for (std::uint32_t j = 0; j < gt.size(); ++j) {
            const std::uint64_t g = index * m_layout.gtes_per_gt + j;
            if (g >= m_layout.grains()) continue;
            auto entry = classify(gt[j]);
            if (!entry)
                return corrupt(fmt::format("grain table {} entry {}", index, j),
                               fmt::format("invalid entry {:#x}", gt[j]));
            if (entry->kind != SegKind::data) continue;
            const std::uint64_t need =
                m_layout.compressed
                    ? 1
                    : std::min(m_layout.grain, m_layout.capacity - g * m_layout.grain);
            if (entry->sector + need > file_sectors)
                return corrupt(fmt::format("grain table {} entry {}", index, j),
                               fmt::format("grain at sector {} lies past the end of the file ({} "
                                           "bytes; truncated?)",
                                           entry->sector, m_file_size));
            m_allocated +=
                std::min(m_layout.grain, m_layout.capacity - g * m_layout.grain) * k_sector;
        }
        return {};
    }

    void remember(std::uint64_t index, Table table) {
        std::lock_guard lock(m_mutex);
        if ((m_cache.size() + 1) * m_layout.gt_bytes() > k_gt_cache_bytes) m_cache.clear();
        m_cache.emplace(index, std::move(table));
    }

    Result<Table> table(std::uint64_t index) {
        {
            std::lock_guard lock(m_mutex);
            if (auto it = m_cache.find(index); it != m_cache.end()) return it->second;
        }
        std::vector<std::byte> raw(m_layout.gt_bytes());
        if (auto r = read_full(*m_volume, raw, m_gd[index] * k_sector); !r)
            return fail(
                r.error().with_context(fmt::format("vmdk: {}: grain table {}", m_name, index)));
        auto t = std::make_shared<const std::vector<std::uint64_t>>(decode_gt(raw.data()));
        remember(index, t);
        return t;
    }

    Result<Entry> lookup(std::uint64_t g) {
        if (g >= m_layout.grains()) return Entry{SegKind::unallocated, 0, false};
        const std::uint64_t index = g / m_layout.gtes_per_gt;
        if (index >= m_gd.size() || m_gd[index] == 0) return Entry{SegKind::unallocated, 0, true};
        auto t = table(index);
        if (!t) return fail(t.error());
        const std::uint64_t e = (**t)[g % m_layout.gtes_per_gt];
        auto entry = classify(e);
        if (!entry)
            return corrupt(fmt::format("grain {}", g),
                           fmt::format("invalid grain table entry {:#x}", e));
        return *entry;
    }

    // Inflates grain `g` stored at `sector` into the thread's memo.
    Result<const std::vector<std::byte>*> inflate(std::uint64_t g, std::uint64_t sector) {
        GrainMemo& memo = t_memo;
        if (memo.extent_id == m_id && memo.grain == g) return &memo.data;
        memo.extent_id = 0;
        const std::uint64_t gb = grain_bytes();
        const std::uint64_t at = std::uint64_t{sector} * k_sector;
        const std::string field = fmt::format("grain {} at sector {}", g, sector);
        const std::uint64_t head = m_layout.markers ? 12 : 4;
        const std::uint64_t first =
            std::min<std::uint64_t>(4096, m_file_size - std::min(m_file_size, at));
        if (first < head) return corrupt(field, "past the end of the file (truncated?)");
        memo.packed.resize(first);
        if (auto r = read_full(*m_volume, memo.packed, at); !r)
            return fail(r.error().with_context("vmdk: " + m_name + ": " + field));
        std::uint32_t size = 0;
        if (m_layout.markers) {
            const Marker m = parse_marker(memo.packed.data());
            if (m.val != g * m_layout.grain)
                return corrupt(field, fmt::format("marker names LBA {}, the grain table {}", m.val,
                                                  g * m_layout.grain));
            size = m.size;
        } else {
            size = get32(memo.packed.data());
        }
        if (size == 0 || size > 2 * gb + 4096)
            return corrupt(field, fmt::format("compressed size {} is out of range", size));
        if (at + head + size > m_file_size)
            return corrupt(field, fmt::format("compressed data ({} bytes) runs past the end of the "
                                              "file (truncated?)",
                                              size));
        if (head + size > first) {
            memo.packed.resize(head + size);
            auto rest = std::span(memo.packed).subspan(first);
            if (auto r = read_full(*m_volume, rest, at + first); !r)
                return fail(r.error().with_context("vmdk: " + m_name + ": " + field));
        }
        if (!memo.inflater) memo.inflater.reset(libdeflate_alloc_decompressor());
        if (!memo.inflater) return fail(ErrorCode::io_error, "vmdk: out of memory for an inflater");
        memo.data.resize(gb);
        std::size_t out = 0;
        auto rc = libdeflate_zlib_decompress(memo.inflater.get(), memo.packed.data() + head, size,
                                             memo.data.data(), gb, &out);
        if (rc != LIBDEFLATE_SUCCESS)
            return corrupt(field, rc == LIBDEFLATE_INSUFFICIENT_SPACE
                                      ? "inflates to more than a grain"
                                      : "corrupt deflate data");
        const std::uint64_t need =
            std::min(m_layout.grain, m_layout.capacity - g * m_layout.grain) * k_sector;
        if (out < need)
            return corrupt(field,
                           fmt::format("inflates to {} bytes, the grain holds {}", out, need));
        std::memset(memo.data.data() + out, 0, gb - out);
        memo.extent_id = m_id;
        memo.grain = g;
        return &memo.data;
    }

    std::unique_ptr<Volume> m_volume;
    std::string m_name;
    Layout m_layout;
    std::vector<std::uint64_t> m_gd;  // grain table sectors, 0 = none
    std::uint64_t m_size;
    std::uint64_t m_file_size;
    std::uint64_t m_id;
    std::uint64_t m_allocated = 0;
    std::mutex m_mutex;
    std::unordered_map<std::uint64_t, Table> m_cache;
};

std::unexpected<Error> corrupt_at(const std::string& name, std::string_view field,
                                  std::string_view what) {
    return fail(ErrorCode::protocol, fmt::format("vmdk: {}: {}: {}", name, field, what));
}

// streamOptimized keeps its real header in a footer: marker at EOF-1536,
// header copy at EOF-1024, end-of-stream marker at EOF-512.
Result<SparseHeader> read_footer(Volume& volume, const std::string& name) {
    const std::uint64_t size = volume.size();
    auto missing = [&](std::string_view why) {
        return corrupt_at(name, "gdOffset",
                          fmt::format("the grain directory is at the end, but {} (truncated "
                                      "stream?)",
                                      why));
    };
    if (size < 4 * k_sector) return missing("the file is too short for a footer");
    std::vector<std::byte> tail(3 * k_sector);
    if (auto r = read_full(volume, tail, size - tail.size()); !r)
        return fail(r.error().with_context("vmdk: " + name + ": footer"));
    const Marker footer = parse_marker(tail.data());
    const Marker eos = parse_marker(tail.data() + 2 * k_sector);
    if (footer.size != 0 || footer.type != k_marker_footer)
        return missing("no footer marker at EOF-1536");
    if (eos.val != 0 || eos.size != 0 || eos.type != k_marker_eos)
        return missing("no end-of-stream marker at EOF-512");
    auto h = parse_sparse_header(std::span(tail).subspan(k_sector, k_sector), name + " (footer)");
    if (!h) return fail(h.error());
    if (h->gd_offset == k_gd_at_end) return corrupt_at(name, "footer gdOffset", "still GD_AT_END");
    return h;
}

// The grain directory, resolved to grain table sectors (0 = no table).
Result<std::vector<std::uint64_t>> read_gd(Volume& volume, const std::string& name,
                                           const Layout& layout) {
    const std::uint64_t bytes = layout.gd_entries * layout.entry_bytes();
    const std::uint64_t at = layout.gd_offset * k_sector;
    if (layout.gd_offset == 0 || at / k_sector != layout.gd_offset || at + bytes > volume.size())
        return corrupt_at(name, "gdOffset",
                          fmt::format("grain directory at sector {} ({} entries) lies outside the "
                                      "file ({} bytes; truncated?)",
                                      layout.gd_offset, layout.gd_entries, volume.size()));
    std::vector<std::byte> raw(bytes);
    if (auto r = read_full(volume, raw, at); !r)
        return fail(r.error().with_context("vmdk: " + name + ": grain directory"));
    std::vector<std::uint64_t> gd(layout.gd_entries);
    for (std::uint64_t i = 0; i < gd.size(); ++i) {
        if (!layout.sesparse) {
            gd[i] = get32(raw.data() + 4 * i);
            continue;
        }
        // seSparse: 0x1000000000000000 | table number, or 0.
        const std::uint64_t e = get64(raw.data() + 8 * i);
        if (e == 0) continue;
        if ((e & 0xffffffff00000000ULL) != 0x1000000000000000ULL)
            return corrupt_at(name, fmt::format("grain directory entry {}", i),
                              fmt::format("invalid entry {:#x}", e));
        gd[i] = layout.gt_base + (e & 0xffffffffULL) * (layout.gt_bytes() / k_sector);
    }
    return gd;
}

Result<Layout> kdmv_layout(Volume& volume, const std::string& name,
                           std::span<const std::byte> head) {
    auto h = parse_sparse_header(head, name);
    if (!h) return fail(h.error());
    if (h->gd_offset == k_gd_at_end) {
        auto footer = read_footer(volume, name);
        if (!footer) return fail(footer.error());
        if (footer->capacity != h->capacity || footer->grain_size != h->grain_size ||
            footer->gtes_per_gt != h->gtes_per_gt)
            return corrupt_at(name, "footer", "disagrees with the header on the geometry");
        h = footer;
    }
    Layout l;
    l.capacity = h->capacity;
    l.grain = h->grain_size;
    l.gtes_per_gt = h->gtes_per_gt;
    l.gd_offset = h->gd_offset;
    l.gd_entries = gt_count(*h);
    l.compressed = (h->flags & k_flag_compressed) != 0;
    l.markers = (h->flags & k_flag_markers) != 0;
    l.zeroed_gte = (h->flags & k_flag_zeroed_gte) != 0;
    return l;
}

Result<Layout> cowd_layout(const std::string& name, std::span<const std::byte> head) {
    auto h = parse_cowd_header(head, name);
    if (!h) return fail(h.error());
    Layout l;
    l.capacity = h->capacity;
    l.grain = h->grain_size;
    l.gtes_per_gt = k_cowd_gtes_per_gt;
    l.gd_offset = h->gd_offset;
    l.gd_entries = (l.grains() + l.gtes_per_gt - 1) / l.gtes_per_gt;
    return l;
}

// seSparse (ESXi 6.5+ snapshots; layout as QEMU's read-only driver knows
// it): a 512-byte constant header of 64-bit fields, a volatile header that
// says whether a journal must be replayed, 4 KiB grains, 4096-entry tables.
Result<Layout> sesparse_layout(Volume& volume, const std::string& name,
                               std::span<const std::byte> h) {
    auto field = [&](int i) { return get64(h.data() + 8 * i); };
    if (field(1) != 0x0000000200000001ULL)
        return fail(ErrorCode::unsupported, fmt::format("vmdk: {}: seSparse header field version: "
                                                        "{:#x} is not 2.1",
                                                        name, field(1)));
    if (field(3) != 8 || field(4) != 64 || field(5) != 0)
        return fail(ErrorCode::unsupported,
                    fmt::format("vmdk: {}: seSparse header: grain size {}, table size {}, flags "
                                "{:#x} (only 8, 64, 0 exist)",
                                name, field(3), field(4), field(5)));
    Layout l;
    l.sesparse = true;
    l.capacity = field(2);
    l.grain = 8;
    l.gtes_per_gt = 4096;
    l.gd_offset = field(16);
    l.gt_base = field(18);
    l.grains_base = field(24);
    if (l.capacity == 0 || l.capacity > k_max_capacity_sectors)
        return corrupt_at(name, "seSparse header field capacity",
                          fmt::format("{} sectors is absurd", l.capacity));
    const std::uint64_t needed = (l.grains() + l.gtes_per_gt - 1) / l.gtes_per_gt;
    const std::uint64_t gd_entries = field(17) * k_sector / 8;
    if (gd_entries < needed || field(17) > (std::uint64_t{1} << 20))
        return corrupt_at(name, "seSparse header field grainDirSize",
                          fmt::format("{} sectors do not cover the capacity", field(17)));
    l.gd_entries = needed;
    if (l.gt_base == 0 || l.grains_base == 0 || l.gt_base > k_max_capacity_sectors ||
        l.grains_base > k_max_capacity_sectors)
        return corrupt_at(name, "seSparse header", "grain table or grain area offset is absurd");
    // The volatile header: a dirty image needs its journal replayed first.
    std::vector<std::byte> vol(k_sector);
    const std::uint64_t at = field(10) * k_sector;
    if (field(10) == 0 || at / k_sector != field(10) || at + k_sector > volume.size())
        return corrupt_at(name, "seSparse header field volatileHeaderOffset", "outside the file");
    if (auto r = read_full(volume, vol, at); !r)
        return fail(r.error().with_context("vmdk: " + name + ": volatile header"));
    if (get64(vol.data()) != 0x00000000cafecafeULL)
        return corrupt_at(name, "seSparse volatile header magic", "not 0xcafecafe");
    if (get64(vol.data() + 24) != 0)
        return fail(ErrorCode::unsupported,
                    fmt::format("vmdk: {}: seSparse volatile header field replayJournal: the disk "
                                "was not closed cleanly; open it in ESXi once to replay its "
                                "journal",
                                name));
    return l;
}

}  // namespace

Result<std::unique_ptr<Extent>> make_sparse_extent(std::unique_ptr<Volume> volume,
                                                   const std::string& name, std::uint64_t size) {
    std::vector<std::byte> head(k_sector);
    if (volume->size() < k_sector)
        return corrupt_at(name, "header", "file shorter than one sector");
    if (auto r = read_full(*volume, head, 0); !r)
        return fail(r.error().with_context("vmdk: " + name));
    const std::uint32_t magic = get32(head.data());
    Result<Layout> layout = get64(head.data()) == k_sesparse_magic
                                ? sesparse_layout(*volume, name, head)
                            : magic == k_cowd_magic ? cowd_layout(name, head)
                                                    : kdmv_layout(*volume, name, head);
    if (!layout) return fail(layout.error());
    auto gd = read_gd(*volume, name, *layout);
    if (!gd) return fail(gd.error());
    if (size == 0) size = layout->capacity * k_sector;
    auto extent =
        std::make_unique<SparseExtent>(std::move(volume), name, *layout, std::move(*gd), size);
    if (auto r = extent->scan(); !r) return fail(r.error());
    return extent;
}

}  // namespace blockmig::pools::image::vmdk
