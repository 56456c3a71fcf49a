// qcow2 v2/v3 reader (QEMU docs/interop/qcow2.txt). Every offset taken from
// the file is checked before use, so a corrupt or truncated image gives an
// error naming the file and the field instead of zeroes where data was.
#include <fmt/core.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <list>
#include <mutex>

#include "bytes.hpp"
#include "chain.hpp"
#include "compress.hpp"
#include "pools/image/qcow2.hpp"
#include "qcow2_format.hpp"

namespace blockmig::pools::image {

namespace detail {

namespace {

using namespace qcow2;

struct Header {
    std::uint32_t version = 0;
    std::uint64_t backing_offset = 0;
    std::uint32_t backing_size = 0;
    std::uint32_t cluster_bits = 0;
    std::uint64_t size = 0;
    std::uint32_t crypt = 0;
    std::uint32_t l1_size = 0;
    std::uint64_t l1_offset = 0;
    std::uint64_t incompatible = 0;
    std::uint64_t compatible = 0;
    std::uint32_t refcount_order = 4;
    std::uint32_t header_length = k_v2_header_length;
    std::uint8_t compression_type = 0;
};

// L2 tables by file offset, evicted least recently used past a byte budget
// (8 MiB: 64 tables of 64 KiB clusters, 4 of 2 MiB). Shared pointers let a
// reader thread keep using a table another thread evicts.
class L2Cache {
  public:
    using Table = std::shared_ptr<const std::vector<std::uint64_t>>;
    explicit L2Cache(std::size_t table_bytes)
        : m_capacity(std::max<std::size_t>(2, (8u << 20) / table_bytes)) {}
    Table get(std::uint64_t offset) {
        std::lock_guard lock(m_mutex);
        for (auto it = m_entries.begin(); it != m_entries.end(); ++it) {
            if (it->first != offset) continue;
            m_entries.splice(m_entries.begin(), m_entries, it);
            return it->second;
        }
        return nullptr;
    }
    void put(std::uint64_t offset, Table table) {
        std::lock_guard lock(m_mutex);
        m_entries.emplace_front(offset, std::move(table));
        if (m_entries.size() > m_capacity) m_entries.pop_back();
    }

  private:
    std::mutex m_mutex;
    std::size_t m_capacity;
    std::list<std::pair<std::uint64_t, Table>> m_entries;
};

enum class SegKind { data, zero, backing, compressed };

struct Segment {
    SegKind kind = SegKind::zero;
    std::uint64_t host = 0;    // data: file offset of the first byte; compressed: descriptor
    std::uint64_t length = 0;  // bytes of guest data this segment covers
};

class Qcow2Reader final : public ImageReader {
  public:
    Qcow2Reader(std::string name, std::unique_ptr<Volume> file)
        : m_name(std::move(name)), m_file(std::move(file)), m_file_size(m_file->size()) {}

    Result<void> open(Pool& pool, ChainState& chain);
    const ImageInfo& info() const override { return m_info; }
    Result<std::vector<Range>> map(std::uint64_t offset, std::uint64_t length) override;
    Result<void> read(std::span<std::byte> buf, std::uint64_t offset) override;

  private:
    Error corrupt(std::string what) const {
        return Error{ErrorCode::protocol, fmt::format("{}: qcow2: {}", m_name, what), {}};
    }
    Result<void> parse_header(std::span<const std::byte> head);
    Result<std::optional<ImageFormat>> parse_extensions(std::span<const std::byte> head);
    Result<void> load_l1();
    Result<void> count_allocation();
    Result<L2Cache::Table> l2_table(std::uint64_t l1_index);
    Result<Segment> segment(std::uint64_t offset, std::uint64_t length);
    Result<void> read_compressed(std::uint64_t descriptor, std::uint64_t vcluster,
                                 std::span<std::byte> out, std::uint64_t in_cluster);
    Result<void> read_backing(std::span<std::byte> buf, std::uint64_t offset);

    std::uint64_t cluster_size() const { return 1ull << m_h.cluster_bits; }
    bool extended() const { return (m_h.incompatible & k_incompat_extended_l2) != 0; }
    std::uint64_t l2_entries() const { return cluster_size() / (extended() ? 16 : 8); }

    std::string m_name;
    std::unique_ptr<Volume> m_file;
    std::uint64_t m_file_size = 0;
    Header m_h;
    std::vector<std::uint64_t> m_l1;
    std::unique_ptr<L2Cache> m_cache;
    OpenedBacking m_backing;
    ImageInfo m_info;
};

Result<void> Qcow2Reader::parse_header(std::span<const std::byte> head) {
    const std::byte* p = head.data();
    if (head.size() < k_v2_header_length)
        return fail(corrupt(fmt::format("header truncated (file is {} bytes)", m_file_size)));
    if (get_be(p, 4) != k_magic) return fail(corrupt("bad magic (not a qcow2 image)"));
    m_h.version = static_cast<std::uint32_t>(get_be(p + k_off_version, 4));
    if (m_h.version != 2 && m_h.version != 3)
        return fail(corrupt(fmt::format("unsupported version {}", m_h.version)));
    m_h.backing_offset = get_be(p + k_off_backing_offset, 8);
    m_h.backing_size = static_cast<std::uint32_t>(get_be(p + k_off_backing_size, 4));
    m_h.cluster_bits = static_cast<std::uint32_t>(get_be(p + k_off_cluster_bits, 4));
    if (m_h.cluster_bits < k_min_cluster_bits || m_h.cluster_bits > k_max_cluster_bits)
        return fail(corrupt(fmt::format("cluster_bits {} out of range 9..21", m_h.cluster_bits)));
    m_h.size = get_be(p + k_off_size, 8);
    m_h.crypt = static_cast<std::uint32_t>(get_be(p + k_off_crypt, 4));
    m_h.l1_size = static_cast<std::uint32_t>(get_be(p + k_off_l1_size, 4));
    m_h.l1_offset = get_be(p + k_off_l1_offset, 8);
    if (m_h.version == 3) {
        if (head.size() < k_v3_header_length)
            return fail(
                corrupt(fmt::format("v3 header truncated (file is {} bytes)", m_file_size)));
        m_h.incompatible = get_be(p + k_off_incompat, 8);
        m_h.compatible = get_be(p + k_off_compat, 8);
        m_h.refcount_order = static_cast<std::uint32_t>(get_be(p + k_off_refcount_order, 4));
        m_h.header_length = static_cast<std::uint32_t>(get_be(p + k_off_header_length, 4));
        if (m_h.header_length < k_v3_header_length || m_h.header_length % 8 != 0 ||
            m_h.header_length > cluster_size())
            return fail(corrupt(fmt::format("header_length {} invalid", m_h.header_length)));
        // The header's own length must fit in the file before any optional
        // field past the v3 minimum (compression_type) is read from it.
        if (m_h.header_length > m_file_size)
            return fail(
                corrupt(fmt::format("header_length {} runs past the end of the file ({} bytes)",
                                    m_h.header_length, m_file_size)));
        if (m_h.header_length > k_off_compression_type)
            m_h.compression_type = std::to_integer<std::uint8_t>(p[k_off_compression_type]);
    }
    if (m_h.crypt != 0)
        return fail(ErrorCode::unsupported, m_name + ": qcow2: encrypted images are not supported");
    if (m_h.incompatible & ~k_incompat_known)
        return fail(ErrorCode::unsupported,
                    fmt::format("{}: qcow2: unknown incompatible features 0x{:x}", m_name,
                                m_h.incompatible & ~k_incompat_known));
    if (m_h.incompatible & k_incompat_data_file)
        return fail(ErrorCode::unsupported,
                    m_name + ": qcow2: external data files are not supported");
    if (m_h.compression_type > 1)
        return fail(corrupt(fmt::format("compression_type {} unknown", m_h.compression_type)));
    if (m_h.compression_type != 0 && !(m_h.incompatible & k_incompat_compression))
        return fail(corrupt("compression_type set without its incompatible feature bit"));
    if (m_h.refcount_order > 6)
        return fail(corrupt(fmt::format("refcount_order {} out of range", m_h.refcount_order)));
    if (extended() && m_h.cluster_bits < 14)
        return fail(corrupt("extended_l2 needs clusters of at least 16 KiB"));
    if (m_h.size > (1ull << 61)) return fail(corrupt(fmt::format("size {} absurd", m_h.size)));
    return {};
}

Result<std::optional<ImageFormat>> Qcow2Reader::parse_extensions(std::span<const std::byte> head) {
    std::optional<ImageFormat> backing_format;
    std::uint64_t pos = m_h.version == 3 ? m_h.header_length : k_v2_header_length;
    const std::uint64_t end = std::min<std::uint64_t>(head.size(), cluster_size());
    while (pos + 8 <= end) {
        const auto type = static_cast<std::uint32_t>(get_be(&head[pos], 4));
        const auto len = get_be(&head[pos + 4], 4);
        if (type == k_ext_end) break;
        if (pos + 8 + len > end)
            return fail(corrupt(fmt::format(
                "header extension 0x{:x} at {} overruns the header cluster", type, pos)));
        const std::string_view data(reinterpret_cast<const char*>(&head[pos + 8]), len);
        if (type == k_ext_backing_format) {
            auto f = parse_image_format(data);
            if (!f) return fail(corrupt(fmt::format("backing format \"{}\" unsupported", data)));
            backing_format = *f;
        } else if (type == k_ext_data_file) {
            return fail(ErrorCode::unsupported,
                        m_name + ": qcow2: external data files are not supported");
        }
        pos += 8 + align_up(len, 8);
    }
    return backing_format;
}

Result<void> Qcow2Reader::load_l1() {
    const std::uint64_t per_l1 = cluster_size() * l2_entries();
    const std::uint64_t needed = (m_h.size + per_l1 - 1) / per_l1;
    if (m_h.l1_size > k_max_l1_entries)
        return fail(
            corrupt(fmt::format("l1_size {} exceeds {} entries", m_h.l1_size, k_max_l1_entries)));
    if (m_h.l1_size < needed)
        return fail(corrupt(fmt::format("l1_size {} too small for size {} (needs {})", m_h.l1_size,
                                        m_h.size, needed)));
    if (m_h.l1_size == 0) return {};
    if (m_h.l1_offset % cluster_size() != 0)
        return fail(corrupt(fmt::format("l1_table_offset {} not cluster-aligned", m_h.l1_offset)));
    if (m_h.l1_offset + m_h.l1_size * 8ull > m_file_size)
        return fail(
            corrupt(fmt::format("L1 table (offset {}, {} entries) past end of file ({} bytes)",
                                m_h.l1_offset, m_h.l1_size, m_file_size)));
    std::vector<std::byte> raw(m_h.l1_size * 8ull);
    if (auto r = read_at(*m_file, raw, m_h.l1_offset, nullptr, m_file_size); !r)
        return fail(r.error().with_context(m_name + ": read L1 table"));
    m_l1.resize(m_h.l1_size);
    for (std::size_t i = 0; i < m_l1.size(); ++i) {
        m_l1[i] = get_be(&raw[i * 8], 8);
        const std::uint64_t l2 = m_l1[i] & k_offset_mask;
        if (l2 == 0) continue;
        if (l2 % cluster_size() != 0)
            return fail(corrupt(fmt::format("L1[{}] offset {} not cluster-aligned", i, l2)));
        if (l2 + cluster_size() > m_file_size)
            return fail(corrupt(
                fmt::format("L1[{}] points past end of file (L2 table at {}, file is {} bytes)", i,
                            l2, m_file_size)));
    }
    return {};
}

Result<L2Cache::Table> Qcow2Reader::l2_table(std::uint64_t l1_index) {
    const std::uint64_t offset = m_l1[l1_index] & k_offset_mask;
    if (auto t = m_cache->get(offset)) return t;
    std::vector<std::byte> raw(cluster_size());
    if (auto r = read_at(*m_file, raw, offset, nullptr, m_file_size); !r)
        return fail(r.error().with_context(fmt::format("{}: read L2 table at {}", m_name, offset)));
    auto table = std::make_shared<std::vector<std::uint64_t>>(cluster_size() / 8);
    for (std::size_t i = 0; i < table->size(); ++i) (*table)[i] = get_be(&raw[i * 8], 8);
    m_cache->put(offset, table);
    return table;
}

// The run starting at `offset` (at most `length` bytes) with one state.
Result<Segment> Qcow2Reader::segment(std::uint64_t offset, std::uint64_t length) {
    const std::uint64_t cs = cluster_size();
    const std::uint64_t vcluster = offset >> m_h.cluster_bits;
    const std::uint64_t in_cluster = offset & (cs - 1);
    const std::uint64_t l1_index = vcluster / l2_entries();
    if (l1_index >= m_l1.size() || (m_l1[l1_index] & k_offset_mask) == 0) {
        // A whole unallocated L2 range: one segment up to its end.
        const std::uint64_t range_end = (l1_index + 1) * l2_entries() * cs;
        return Segment{SegKind::backing, 0, std::min(length, range_end - offset)};
    }
    auto table = l2_table(l1_index);
    if (!table) return fail(table.error());
    const std::uint64_t index = vcluster % l2_entries();
    const std::uint64_t entry = (**table)[extended() ? index * 2 : index];
    const std::uint64_t in_len = std::min(length, cs - in_cluster);
    if (entry & k_compressed) return Segment{SegKind::compressed, entry, in_len};
    const std::uint64_t host = entry & k_offset_mask;
    auto check_host = [&]() -> Result<void> {
        if (host % cs != 0)
            return fail(corrupt(
                fmt::format("L2 entry for cluster {} has unaligned offset {}", vcluster, host)));
        if (host >= m_file_size)
            return fail(corrupt(fmt::format(
                "L2 entry for cluster {} points past end of file (offset {}, file is {} bytes)",
                vcluster, host, m_file_size)));
        return {};
    };
    if (!extended()) {
        if (m_h.version >= 3 && (entry & k_zero)) return Segment{SegKind::zero, 0, in_len};
        if (host == 0) return Segment{SegKind::backing, 0, in_len};
        if (auto r = check_host(); !r) return fail(r.error());
        return Segment{SegKind::data, host + in_cluster, in_len};
    }
    // Extended L2: 32 subclusters, allocation bits 0..31, zero bits 32..63.
    const std::uint64_t bitmap = (**table)[index * 2 + 1];
    const std::uint64_t sub = cs / 32;
    auto state = [&](std::uint64_t sc) {
        return ((bitmap >> sc) & 1) | (((bitmap >> (32 + sc)) & 1) << 1);
    };
    const std::uint64_t first = in_cluster / sub;
    const std::uint64_t s = state(first);
    if (s == 3)
        return fail(corrupt(
            fmt::format("cluster {} subcluster {} both allocated and zero", vcluster, first)));
    std::uint64_t last = first;
    while (last + 1 < 32 && (last + 1) * sub < in_cluster + in_len && state(last + 1) == s) ++last;
    const std::uint64_t run = std::min(in_len, (last + 1) * sub - in_cluster);
    if (s == 2) return Segment{SegKind::zero, 0, run};
    if (s == 0) return Segment{SegKind::backing, 0, run};
    if (host == 0)
        return fail(
            corrupt(fmt::format("cluster {} has allocated subclusters but no offset", vcluster)));
    if (auto r = check_host(); !r) return fail(r.error());
    return Segment{SegKind::data, host + in_cluster, run};
}

Result<void> Qcow2Reader::count_allocation() {
    const std::uint64_t cs = cluster_size();
    std::uint64_t bytes = 0;
    for (std::uint64_t i = 0; i < m_l1.size(); ++i) {
        if ((m_l1[i] & k_offset_mask) == 0) continue;
        auto table = l2_table(i);
        if (!table) return fail(table.error());
        for (std::uint64_t j = 0; j < l2_entries(); ++j) {
            const std::uint64_t e = (**table)[extended() ? j * 2 : j];
            if (e & k_compressed) {
                const std::uint64_t sectors =
                    ((e >> csize_shift(m_h.cluster_bits)) & csize_mask(m_h.cluster_bits)) + 1;
                bytes += sectors * 512;
            } else if ((e & k_offset_mask) != 0) {
                if (!extended()) {
                    bytes += (e & k_zero) && m_h.version >= 3 ? 0 : cs;
                } else {
                    bytes += static_cast<std::uint64_t>(
                                 std::popcount((**table)[j * 2 + 1] & 0xffffffffull)) *
                             (cs / 32);
                }
            }
        }
    }
    m_info.allocated_bytes = bytes;
    return {};
}

Result<void> Qcow2Reader::open(Pool& pool, ChainState& chain) {
    std::vector<std::byte> head(
        static_cast<std::size_t>(std::min<std::uint64_t>(m_file_size, 4096)));
    if (auto r = read_at(*m_file, head, 0, nullptr, m_file_size); !r)
        return fail(r.error().with_context(m_name + ": read header"));
    if (auto r = parse_header(head); !r) return fail(r.error());
    // The extensions and the backing file name live in the first cluster.
    head.resize(static_cast<std::size_t>(std::min<std::uint64_t>(m_file_size, cluster_size())));
    if (auto r = read_at(*m_file, head, 0, nullptr, m_file_size); !r)
        return fail(r.error().with_context(m_name + ": read header"));
    auto backing_format = parse_extensions(head);
    if (!backing_format) return fail(backing_format.error());
    m_cache = std::make_unique<L2Cache>(cluster_size());
    if (auto r = load_l1(); !r) return fail(r.error());

    m_info.format = ImageFormat::qcow2;
    m_info.subformat = fmt::format("qcow2 v{}", m_h.version);
    m_info.virtual_size = m_h.size;
    m_info.features.push_back(fmt::format("cluster_size={}", cluster_size()));
    if (m_h.version == 3) {
        m_info.features.push_back(m_h.compression_type == 1 ? "compression=zstd"
                                                            : "compression=zlib");
        m_info.features.push_back(fmt::format("refcount_bits={}", 1u << m_h.refcount_order));
    }
    if (extended()) m_info.features.push_back("extended_l2");
    if (m_h.compatible & k_compat_lazy_refcounts) m_info.features.push_back("lazy_refcounts");
    if (m_h.incompatible & k_incompat_dirty) m_info.features.push_back("dirty");
    if (m_h.incompatible & k_incompat_corrupt) m_info.features.push_back("corrupt");
    if (auto r = count_allocation(); !r) return fail(r.error());

    if (m_h.backing_offset != 0) {
        if (m_h.backing_size == 0 || m_h.backing_size > 1023 ||
            m_h.backing_offset + m_h.backing_size > head.size())
            return fail(corrupt(
                fmt::format("backing file name (offset {}, {} bytes) outside the header cluster",
                            m_h.backing_offset, m_h.backing_size)));
        const std::string backing(reinterpret_cast<const char*>(&head[m_h.backing_offset]),
                                  m_h.backing_size);
        auto opened = open_backing(pool, m_name, backing, *backing_format, chain);
        if (!opened) return fail(opened.error());
        m_backing = std::move(*opened);
        m_info.chain.push_back(backing);
        for (const auto& c : m_backing.reader->info().chain) m_info.chain.push_back(c);
    }
    return {};
}

Result<void> Qcow2Reader::read_backing(std::span<std::byte> buf, std::uint64_t offset) {
    if (!m_backing.reader) {
        std::fill(buf.begin(), buf.end(), std::byte{0});
        return {};
    }
    // A backing image smaller than this one reads as zeroes past its end.
    const std::uint64_t bsize = m_backing.reader->virtual_size();
    const std::size_t have =
        offset >= bsize
            ? 0
            : static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), bsize - offset));
    std::fill(buf.begin() + static_cast<std::ptrdiff_t>(have), buf.end(), std::byte{0});
    if (have == 0) return {};
    return m_backing.reader->read(buf.first(have), offset);
}

Result<void> Qcow2Reader::read_compressed(std::uint64_t descriptor, std::uint64_t vcluster,
                                          std::span<std::byte> out, std::uint64_t in_cluster) {
    const std::uint32_t bits = m_h.cluster_bits;
    const std::uint64_t host = descriptor & ((1ull << csize_shift(bits)) - 1);
    const std::uint64_t sectors = ((descriptor >> csize_shift(bits)) & csize_mask(bits)) + 1;
    const std::uint64_t length = sectors * 512 - (host & 511);
    if (host >= m_file_size)
        return fail(corrupt(fmt::format(
            "compressed cluster {} points past end of file (offset {}, file is {} bytes)", vcluster,
            host, m_file_size)));
    std::vector<std::byte> in(length);
    if (auto r = read_at(*m_file, in, host, nullptr, m_file_size); !r)
        return fail(r.error().with_context(
            fmt::format("{}: read compressed cluster {}", m_name, vcluster)));
    std::vector<std::byte> cluster(cluster_size());
    const Codec codec = m_h.compression_type == 1 ? Codec::zstd : Codec::deflate;
    if (!decompress(codec, in, cluster))
        return fail(corrupt(
            fmt::format("compressed cluster {} (offset {}) does not decompress", vcluster, host)));
    std::memcpy(out.data(), cluster.data() + in_cluster, out.size());
    return {};
}

Result<void> Qcow2Reader::read(std::span<std::byte> buf, std::uint64_t offset) {
    if (offset > m_h.size || buf.size() > m_h.size - offset)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: read of {} bytes at {} past the virtual size {}", m_name,
                                buf.size(), offset, m_h.size));
    // Host-contiguous data segments are merged into one volume read.
    std::uint64_t pend_host = 0, pend_len = 0, pend_pos = 0;
    auto flush = [&]() -> Result<void> {
        if (pend_len == 0) return {};
        auto r = read_at(*m_file, buf.subspan(pend_pos, pend_len), pend_host, nullptr, m_file_size);
        pend_len = 0;
        if (!r)
            return fail(r.error().with_context(
                fmt::format("{}: read cluster data at {}", m_name, pend_host)));
        return {};
    };
    std::uint64_t pos = 0;
    while (pos < buf.size()) {
        auto seg = segment(offset + pos, buf.size() - pos);
        if (!seg) return fail(seg.error());
        auto part = buf.subspan(pos, seg->length);
        if (seg->kind == SegKind::data && pend_len > 0 && pend_host + pend_len == seg->host) {
            pend_len += seg->length;
        } else {
            if (auto r = flush(); !r) return r;
            switch (seg->kind) {
                case SegKind::data:
                    pend_host = seg->host, pend_len = seg->length, pend_pos = pos;
                    break;
                case SegKind::zero:
                    std::fill(part.begin(), part.end(), std::byte{0});
                    break;
                case SegKind::backing:
                    if (auto r = read_backing(part, offset + pos); !r) return r;
                    break;
                case SegKind::compressed:
                    if (auto r = read_compressed(seg->host, (offset + pos) >> m_h.cluster_bits,
                                                 part, (offset + pos) & (cluster_size() - 1));
                        !r)
                        return r;
                    break;
            }
        }
        pos += seg->length;
    }
    return flush();
}

Result<std::vector<Range>> Qcow2Reader::map(std::uint64_t offset, std::uint64_t length) {
    std::vector<Range> out;
    auto add = [&](std::uint64_t off, std::uint64_t len, RangeKind kind) {
        if (len == 0) return;
        if (!out.empty() && out.back().kind == kind && out.back().offset + out.back().length == off)
            out.back().length += len;
        else
            out.push_back(Range{off, len, kind});
    };
    const std::uint64_t end = std::min(m_h.size, offset + length);
    std::uint64_t pos = offset;
    while (pos < end) {
        auto seg = segment(pos, end - pos);
        if (!seg) return fail(seg.error());
        if (seg->kind == SegKind::backing && m_backing.reader) {
            const std::uint64_t bsize = m_backing.reader->virtual_size();
            const std::uint64_t inside = pos >= bsize ? 0 : std::min(seg->length, bsize - pos);
            if (inside > 0) {
                auto sub = m_backing.reader->map(pos, inside);
                if (!sub) return fail(sub.error());
                for (const auto& r : *sub) add(r.offset, r.length, r.kind);
            }
            add(pos + inside, seg->length - inside, RangeKind::zero);
        } else {
            add(pos, seg->length,
                seg->kind == SegKind::data || seg->kind == SegKind::compressed ? RangeKind::data
                                                                               : RangeKind::zero);
        }
        pos += seg->length;
    }
    return out;
}

}  // namespace

Result<std::unique_ptr<ImageReader>> open_qcow2_in_chain(Pool& pool, const std::string& name,
                                                         ChainState& chain) {
    auto volume = pool.open(name, false);
    if (!volume) return fail(volume.error());
    auto reader = std::make_unique<Qcow2Reader>(pool.url_of(name), std::move(*volume));
    if (auto r = reader->open(pool, chain); !r) return fail(r.error());
    return std::unique_ptr<ImageReader>(std::move(reader));
}

}  // namespace detail

Result<std::unique_ptr<ImageReader>> open_qcow2(Pool& pool, const std::string& name) {
    detail::ChainState chain;
    chain.seen.push_back(pool.url_of(name));
    return detail::open_qcow2_in_chain(pool, name, chain);
}

}  // namespace blockmig::pools::image
