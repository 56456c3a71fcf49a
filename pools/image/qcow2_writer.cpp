// The project's one qcow2 writer (QEMU docs/interop/qcow2.txt): qcow2 v3,
// 16-bit refcounts, optional zlib/zstd compression on every core, optional
// metadata preallocation. Also makes the empty images `pool create` and
// `vol create` need, and the overlays of `move --shallow`.
//
// Streaming layout (preallocation off), every cluster written once, in order:
//   cluster 0           header (written last, so a cut-off image never
//                       looks valid)
//   then, as they fill  data clusters (or compressed data packed at byte
//                       granularity), each L2 table once the writes move past
//                       its 512 MiB range, each refcount block once the
//                       allocation moves past the clusters it covers
//   at the end          L1 table, refcount table, the last refcount block
// Memory: one L2 table, one refcount block, a 4 MiB output buffer and two
// compression batches (or, without compression, one partial cluster: whole
// clusters are written straight from the caller's buffer), whatever the
// image size.
//
// Metadata preallocation: header, L1, refcount table, refcount blocks, every
// L2 table, then the data area where virtual cluster v lives at a fixed
// offset (so data goes straight to its place and holes stay sparse).
#include <fmt/core.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>

#include "bytes.hpp"
#include "compress.hpp"
#include "pools/image/buffer.hpp"
#include "pools/image/qcow2.hpp"
#include "pools/image_format.hpp"
#include "qcow2_format.hpp"
#include "workers.hpp"

namespace blockmig::pools {

namespace image {

namespace {

using namespace detail;
using namespace detail::qcow2;

constexpr std::uint32_t k_refcount_order = 4;  // 16-bit refcounts
constexpr std::size_t k_appender_flush = 4u << 20;

// Sequential output that writes whole blocks only (LUNs reject partial ones).
// Small pieces (metadata, compressed clusters) gather in a buffer written
// 4 MiB at a time; runs of whole data clusters go straight from the caller's
// memory (write_through), saving a copy of every data byte.
class Appender {
  public:
    Appender(Volume& volume, std::uint64_t start, std::uint64_t cluster_size)
        : m_volume(volume),
          m_block(std::max<std::uint32_t>(1, volume.block_size())),
          m_start(start),
          m_buf(k_appender_flush + 2 * cluster_size + m_block) {}
    std::uint64_t pos() const { return m_start + m_len; }
    Result<void> append(std::span<const std::byte> data) {
        std::memcpy(m_buf.data() + m_len, data.data(), data.size());
        m_len += data.size();
        return m_len >= k_appender_flush ? flush(false) : Result<void>{};
    }
    Result<void> pad_to(std::uint64_t offset) {
        if (offset > pos()) {
            // The buffer is reused: padding must be written as zeroes.
            std::memset(m_buf.data() + m_len, 0, offset - pos());
            m_len += offset - pos();
        }
        return m_len >= k_appender_flush ? flush(false) : Result<void>{};
    }
    // Writes `data` at `at` (>= pos()) straight from the caller's memory,
    // after what is buffered. REQUIRES: `at` and data.size() whole blocks.
    Result<void> write_through(std::uint64_t at, std::span<const std::byte> data) {
        if (auto r = pad_to(at); !r) return r;
        if (auto r = flush(false); !r) return r;
        if (auto r = m_volume.pwrite(data, at); !r) return r;
        m_start = at + data.size();
        return {};
    }
    // Writes what is buffered; `all` also pads the tail to a whole block.
    Result<void> flush(bool all) {
        if (all) {
            const std::size_t padded = align_up(m_len, m_block);
            std::memset(m_buf.data() + m_len, 0, padded - m_len);
            m_len = padded;
        }
        const std::size_t n = m_len / m_block * m_block;
        if (n == 0) return {};
        if (auto r = m_volume.pwrite(std::span<const std::byte>(m_buf.data(), n), m_start); !r)
            return r;
        std::memmove(m_buf.data(), m_buf.data() + n, m_len - n);
        m_len -= n;
        m_start += n;
        return {};
    }

  private:
    Volume& m_volume;
    std::uint64_t m_block;
    std::uint64_t m_start;
    PageBuffer m_buf;
    std::size_t m_len = 0;
};

// One batch of clusters handed to the compression threads.
struct Batch {
    std::vector<std::uint64_t> vclusters;
    PageBuffer input;
    PageBuffer output;
    std::vector<std::size_t> sizes;  // compressed size, 0 = store uncompressed
};

class Qcow2Writer final : public ImageWriter {
  public:
    Qcow2Writer(Volume& volume, std::unique_ptr<Volume> owned, std::uint64_t size,
                const Qcow2WriteOptions& o)
        : m_volume(volume),
          m_owned(std::move(owned)),
          m_size(size),
          m_options(o),
          m_bits(static_cast<std::uint32_t>(std::countr_zero(o.cluster_size))),
          m_cs(o.cluster_size),
          m_l2_entries(m_cs / 8),
          m_refs_per_block(m_cs / 2),
          m_l1(static_cast<std::size_t>((size + m_cs * m_l2_entries - 1) / (m_cs * m_l2_entries)),
               0),
          m_out(volume, m_cs, m_cs),
          m_direct(m_cs % std::max<std::uint32_t>(1, volume.block_size()) == 0) {
        m_level = o.compression_level != 0 ? o.compression_level
                                           : (o.compression_type == Qcow2Compression::zstd ? 3 : 6);
        m_codec = o.compression_type == Qcow2Compression::zstd ? Codec::zstd : Codec::deflate;
        if (o.compress) {
            m_workers = std::make_unique<Workers>(o.threads);
            const std::size_t slots =
                std::max<std::size_t>(m_workers->size() * 2, (4u << 20) / m_cs);
            for (auto& b : m_batches) {
                b.input = PageBuffer(slots * m_cs);
                b.output = PageBuffer(slots * m_cs);
                b.sizes.resize(slots);
            }
        } else {
            m_partial.resize(m_cs);
        }
        m_window.assign(m_refs_per_block, 0);
        m_l2.assign(m_l2_entries, 0);
        ref(0);  // the header cluster
    }
    ~Qcow2Writer() override {
        if (m_workers) m_workers->wait();
    }

    Result<void> write(std::span<const std::byte> data, std::uint64_t offset) override;
    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override;
    Result<void> finish() override;
    void set_data_start(std::uint64_t offset) { m_data_start = offset; }

  private:
    std::size_t slots() const { return m_batches[0].input.size() / m_cs; }
    Batch& filling() { return m_batches[m_fill]; }
    Result<void> check_order(std::uint64_t offset, std::uint64_t length);
    std::byte* slot_for(std::uint64_t vcluster);
    Result<std::byte*> open_slot(std::uint64_t vcluster);
    Result<void> commit_slot();
    Result<void> dispatch();
    Result<void> emit(Batch& batch);
    Result<void> emit_cluster(std::uint64_t vcluster, std::span<const std::byte> data);
    Result<void> emit_clusters(std::uint64_t vcluster, std::span<const std::byte> data);
    Result<void> emit_compressed(std::uint64_t vcluster, std::span<const std::byte> data);
    Result<void> set_l2(std::uint64_t vcluster, std::uint64_t entry);
    Result<void> flush_l2();
    Result<void> append_cluster(std::span<const std::byte> cluster);
    Result<void> ref(std::uint64_t cluster);
    Result<void> rotate_window();
    std::vector<std::byte> encode_window() const;
    Result<void> finish_streaming();
    Result<void> finish_preallocated();
    Result<void> write_header(std::uint64_t l1_offset, std::uint64_t rt_offset,
                              std::uint64_t rt_clusters);
    Error io(const Error& e, std::string_view what) const {
        return e.with_context(fmt::format("qcow2: {}", what));
    }

    Volume& m_volume;
    std::unique_ptr<Volume> m_owned;
    std::uint64_t m_size;
    Qcow2WriteOptions m_options;
    std::uint32_t m_bits;
    std::uint64_t m_cs;
    std::uint64_t m_l2_entries;
    std::uint64_t m_refs_per_block;
    std::vector<std::uint64_t> m_l1;
    Appender m_out;
    bool m_direct;  // whole clusters are whole volume blocks: write them in place
    int m_level = 6;
    Codec m_codec = Codec::deflate;
    std::unique_ptr<Workers> m_workers;
    Batch m_batches[2];                // compression only
    std::vector<std::byte> m_partial;  // without compression: the cluster being gathered
    std::size_t m_fill = 0;            // the batch being filled
    bool m_in_flight = false;          // the other batch is compressing
    bool m_slot_open = false;  // m_partial / the last slot of filling() holds m_slot_vcluster
    std::uint64_t m_slot_vcluster = 0;
    std::uint64_t m_next_offset = 0;  // writes must not go below this
    std::vector<std::uint64_t> m_l2;
    std::optional<std::uint64_t> m_l2_index;
    std::vector<std::uint16_t> m_window;
    std::uint64_t m_window_start = 0;  // first cluster m_window counts
    std::vector<std::uint64_t> m_refblocks;
    bool m_finished = false;
    // metadata preallocation: where virtual offset 0 lives
    std::uint64_t m_data_start = 0;
};

Result<void> Qcow2Writer::check_order(std::uint64_t offset, std::uint64_t length) {
    if (m_finished) return fail(ErrorCode::invalid_state, "qcow2: write after finish");
    if (offset < m_next_offset || offset + length > m_size || offset % 512 != 0 ||
        length % 512 != 0)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qcow2: write of {} bytes at {} out of order or out of range",
                                length, offset));
    m_next_offset = offset + length;
    return {};
}

// The buffer gathering `vcluster` if it is the open one, else nullptr.
std::byte* Qcow2Writer::slot_for(std::uint64_t vcluster) {
    if (!(m_slot_open && m_slot_vcluster == vcluster)) return nullptr;
    if (!m_workers) return m_partial.data();
    Batch& b = filling();
    return b.input.data() + (b.vclusters.size() - 1) * m_cs;
}

// Opens a zero-filled slot for `vcluster` (after closing the previous one).
Result<std::byte*> Qcow2Writer::open_slot(std::uint64_t vcluster) {
    if (auto r = commit_slot(); !r) return fail(r.error());
    std::byte* slot = m_partial.data();
    if (m_workers) {
        Batch& b = filling();
        b.vclusters.push_back(vcluster);
        slot = b.input.data() + (b.vclusters.size() - 1) * m_cs;
    }
    std::memset(slot, 0, m_cs);
    m_slot_open = true;
    m_slot_vcluster = vcluster;
    return slot;
}

Result<void> Qcow2Writer::write(std::span<const std::byte> data, std::uint64_t offset) {
    if (auto r = check_order(offset, data.size()); !r) return r;
    if (m_options.preallocation == Qcow2Preallocation::metadata) {
        if (auto r = m_volume.pwrite(data, m_data_start + offset); !r)
            return fail(io(r.error(), "write data"));
        return {};
    }
    std::size_t pos = 0;
    while (pos < data.size()) {
        const std::uint64_t at = offset + pos;
        const std::uint64_t vc = at >> m_bits;
        const std::uint64_t in = at & (m_cs - 1);
        // Whole clusters skip the slot when nothing compresses them.
        const std::size_t whole = !m_workers && in == 0 ? (data.size() - pos) / m_cs * m_cs : 0;
        if (whole > 0) {
            if (auto r = commit_slot(); !r) return r;
            if (auto r = emit_clusters(vc, data.subspan(pos, whole)); !r) return r;
            pos += whole;
            continue;
        }
        std::byte* slot = slot_for(vc);
        if (!slot) {
            auto opened = open_slot(vc);
            if (!opened) return fail(opened.error());
            slot = *opened;
        }
        const std::size_t n =
            static_cast<std::size_t>(std::min<std::uint64_t>(data.size() - pos, m_cs - in));
        std::memcpy(slot + in, data.data() + pos, n);
        pos += n;
    }
    return {};
}

Result<void> Qcow2Writer::write_zeroes(std::uint64_t offset, std::uint64_t length) {
    if (auto r = check_order(offset, length); !r) return r;
    // Unwritten clusters read as zeroes (no backing file); a partly written
    // cluster's slot was zero-filled. Preallocated data areas need real zeroes.
    if (m_options.preallocation == Qcow2Preallocation::metadata && length > 0) {
        if (auto r = m_volume.write_zeroes(m_data_start + offset, length); !r)
            return fail(io(r.error(), "write zeroes"));
    }
    return {};
}

// Closes the open slot: an all-zero cluster is dropped (it stays unallocated).
Result<void> Qcow2Writer::commit_slot() {
    if (!m_slot_open) return {};
    m_slot_open = false;
    if (!m_workers) {
        if (is_zero(m_partial)) return {};
        return emit_cluster(m_slot_vcluster, m_partial);
    }
    Batch& b = filling();
    const std::size_t index = b.vclusters.size() - 1;
    if (is_zero(b.input.span().subspan(index * m_cs, m_cs))) {
        b.vclusters.pop_back();
        return {};
    }
    return b.vclusters.size() == slots() ? dispatch() : Result<void>{};
}

// Hands the full batch to the compressors, after emitting the one they were
// working on.
Result<void> Qcow2Writer::dispatch() {
    Batch& b = filling();
    if (m_in_flight) {
        m_workers->wait();
        m_in_flight = false;
        Batch& done = m_batches[1 - m_fill];
        if (auto r = emit(done); !r) return r;
        done.vclusters.clear();
    }
    const std::uint64_t cs = m_cs;
    Batch* batch = &b;
    const Codec codec = m_codec;
    const int level = m_level;
    m_workers->start(b.vclusters.size(), [batch, cs, codec, level](std::size_t i) {
        auto in = std::span<const std::byte>(batch->input.span()).subspan(i * cs, cs);
        // Worth it only if at least one 512-byte sector is saved.
        auto out = batch->output.span().subspan(i * cs, cs - 512);
        auto n = compress(codec, level, in, out);
        batch->sizes[i] = n.value_or(0);
    });
    m_in_flight = true;
    m_fill = 1 - m_fill;
    return {};
}

Result<void> Qcow2Writer::emit(Batch& batch) {
    for (std::size_t i = 0; i < batch.vclusters.size(); ++i) {
        auto in = std::span<const std::byte>(batch.input.span()).subspan(i * m_cs, m_cs);
        Result<void> r = batch.sizes[i] > 0
                             ? emit_compressed(batch.vclusters[i],
                                               std::span<const std::byte>(batch.output.span())
                                                   .subspan(i * m_cs, batch.sizes[i]))
                             : emit_cluster(batch.vclusters[i], in);
        if (!r) return r;
    }
    return {};
}

Result<void> Qcow2Writer::append_cluster(std::span<const std::byte> cluster) {
    if (auto r = m_out.pad_to(align_up(m_out.pos(), m_cs)); !r) return fail(io(r.error(), "write"));
    const std::uint64_t host = m_out.pos();
    if (auto r = m_out.append(cluster); !r) return fail(io(r.error(), "write"));
    return ref(host >> m_bits);
}

Result<void> Qcow2Writer::emit_cluster(std::uint64_t vcluster, std::span<const std::byte> data) {
    // Switching L2 tables writes the old one: do it before choosing the data's place.
    if (auto r = set_l2(vcluster, 0); !r) return r;
    const std::uint64_t host = align_up(m_out.pos(), m_cs);
    if (auto r = set_l2(vcluster, host | k_copied); !r) return r;
    return append_cluster(data);
}

// Whole data clusters for vclusters vcluster.. (no slot, no copy): each run
// of non-zero clusters that lands under one L2 table and one refcount block
// goes out as one write from the caller's memory.
Result<void> Qcow2Writer::emit_clusters(std::uint64_t vcluster, std::span<const std::byte> data) {
    const std::uint64_t count = data.size() / m_cs;
    auto cluster = [&](std::uint64_t k) { return data.subspan(k * m_cs, m_cs); };
    for (std::uint64_t i = 0; i < count;) {
        if (is_zero(cluster(i))) {  // stays unallocated
            ++i;
            continue;
        }
        if (!m_direct) {  // clusters smaller than the volume's blocks
            if (auto r = emit_cluster(vcluster + i, cluster(i)); !r) return r;
            ++i;
            continue;
        }
        // Switching L2 tables and rotating refcount blocks append metadata:
        // both happen before the run's place is chosen.
        if (auto r = set_l2(vcluster + i, 0); !r) return r;
        std::uint64_t host = align_up(m_out.pos(), m_cs);
        while ((host >> m_bits) >= m_window_start + m_refs_per_block) {
            if (auto r = rotate_window(); !r) return r;
            host = align_up(m_out.pos(), m_cs);
        }
        const std::uint64_t table_end = ((vcluster + i) / m_l2_entries + 1) * m_l2_entries;
        const std::uint64_t window_end = m_window_start + m_refs_per_block;
        std::uint64_t n = 1;
        while (i + n < count && vcluster + i + n < table_end && (host >> m_bits) + n < window_end &&
               !is_zero(cluster(i + n)))
            ++n;
        for (std::uint64_t k = 0; k < n; ++k) {
            m_l2[(vcluster + i + k) % m_l2_entries] = (host + k * m_cs) | k_copied;
            ++m_window[(host >> m_bits) + k - m_window_start];
        }
        if (auto r = m_out.write_through(host, data.subspan(i * m_cs, n * m_cs)); !r)
            return fail(io(r.error(), "write"));
        i += n;
    }
    return {};
}

Result<void> Qcow2Writer::emit_compressed(std::uint64_t vcluster, std::span<const std::byte> data) {
    if (auto r = set_l2(vcluster, 0); !r) return r;
    std::uint64_t host = m_out.pos();
    // A 16-bit refcount must not overflow however many tiny clusters share one.
    const std::uint64_t host_cluster = host >> m_bits;
    if (host_cluster < m_window_start + m_refs_per_block &&
        m_window[host_cluster - m_window_start] >= 0xff00)
        host = align_up(host, m_cs);
    const std::uint64_t sectors = ((host + data.size() - 1) >> 9) - (host >> 9) + 1;
    const std::uint64_t entry = k_compressed | (sectors - 1) << csize_shift(m_bits) | host;
    if (auto r = set_l2(vcluster, entry); !r) return r;
    if (auto r = m_out.pad_to(host); !r) return fail(io(r.error(), "write"));
    if (auto r = m_out.append(data); !r) return fail(io(r.error(), "write"));
    // QEMU counts one reference per host cluster the sector range touches.
    const std::uint64_t last = ((host & ~511ull) + sectors * 512 - 1) >> m_bits;
    for (std::uint64_t c = host >> m_bits; c <= last; ++c)
        if (auto r = ref(c); !r) return r;
    return {};
}

Result<void> Qcow2Writer::set_l2(std::uint64_t vcluster, std::uint64_t entry) {
    const std::uint64_t index = vcluster / m_l2_entries;
    if (m_l2_index != index) {
        if (auto r = flush_l2(); !r) return r;
        m_l2_index = index;
    }
    m_l2[vcluster % m_l2_entries] = entry;
    return {};
}

Result<void> Qcow2Writer::flush_l2() {
    if (!m_l2_index) return {};
    std::vector<std::byte> table(m_cs);
    for (std::size_t i = 0; i < m_l2.size(); ++i) put_be(&table[i * 8], m_l2[i], 8);
    const std::uint64_t host = align_up(m_out.pos(), m_cs);
    m_l1[*m_l2_index] = host | k_copied;
    std::fill(m_l2.begin(), m_l2.end(), 0);
    m_l2_index.reset();
    return append_cluster(table);
}

// Counts one reference to `cluster`; once the allocation has moved past the
// clusters the current refcount block covers, that block is written (into
// the next free cluster, counted by the following block).
Result<void> Qcow2Writer::ref(std::uint64_t cluster) {
    while (cluster >= m_window_start + m_refs_per_block)
        if (auto r = rotate_window(); !r) return r;
    ++m_window[cluster - m_window_start];
    return {};
}

std::vector<std::byte> Qcow2Writer::encode_window() const {
    std::vector<std::byte> block(m_cs);
    for (std::size_t i = 0; i < m_window.size(); ++i) put_be(&block[i * 2], m_window[i], 2);
    return block;
}

Result<void> Qcow2Writer::rotate_window() {
    auto block = encode_window();
    m_window_start += m_refs_per_block;
    std::fill(m_window.begin(), m_window.end(), 0);
    m_refblocks.push_back(align_up(m_out.pos(), m_cs));
    return append_cluster(block);
}

Result<void> Qcow2Writer::write_header(std::uint64_t l1_offset, std::uint64_t rt_offset,
                                       std::uint64_t rt_clusters) {
    const bool zstd = m_options.compression_type == Qcow2Compression::zstd;
    // Block devices take whole blocks: write the full header cluster.
    std::vector<std::byte> h(m_cs);
    put_be(&h[0], k_magic, 4);
    put_be(&h[k_off_version], 3, 4);
    put_be(&h[k_off_cluster_bits], m_bits, 4);
    put_be(&h[k_off_size], m_size, 8);
    put_be(&h[k_off_l1_size], m_l1.size(), 4);
    put_be(&h[k_off_l1_offset], l1_offset, 8);
    put_be(&h[k_off_rt_offset], rt_offset, 8);
    put_be(&h[k_off_rt_clusters], rt_clusters, 4);
    put_be(&h[k_off_incompat], zstd ? k_incompat_compression : 0, 8);
    put_be(&h[k_off_refcount_order], k_refcount_order, 4);
    // 104 bytes as QEMU's own v3 images without compression_type; 112 with it.
    put_be(&h[k_off_header_length], zstd ? 112 : k_v3_header_length, 4);
    if (zstd) h[k_off_compression_type] = std::byte{1};
    // The end-of-extensions marker is the zeroes that follow.
    if (auto r = m_volume.pwrite(h, 0); !r) return fail(io(r.error(), "write header"));
    if (auto r = m_volume.flush(); !r) return fail(io(r.error(), "flush"));
    return {};
}

Result<void> Qcow2Writer::finish_streaming() {
    if (auto r = commit_slot(); !r) return r;
    if (!filling().vclusters.empty() || m_in_flight) {
        if (!filling().vclusters.empty()) {
            if (auto r = dispatch(); !r) return r;
        }
        if (m_workers && m_in_flight) {
            m_workers->wait();
            m_in_flight = false;
            Batch& done = m_batches[1 - m_fill];
            if (auto r = emit(done); !r) return r;
            done.vclusters.clear();
        }
    }
    if (auto r = flush_l2(); !r) return r;
    // L1 table, one cluster at a time so the refcount bookkeeping never skips a block.
    const std::uint64_t l1_clusters =
        std::max<std::uint64_t>(1, align_up(m_l1.size() * 8, m_cs) / m_cs);
    const std::uint64_t l1_offset = align_up(m_out.pos(), m_cs);
    for (std::uint64_t c = 0; c < l1_clusters; ++c) {
        std::vector<std::byte> cluster(m_cs);
        for (std::uint64_t i = 0; i < m_l2_entries && c * m_l2_entries + i < m_l1.size(); ++i)
            put_be(&cluster[i * 8], m_l1[c * m_l2_entries + i], 8);
        if (auto r = append_cluster(cluster); !r) return r;
    }
    // Refcount table: big enough for every block, including the ones still to come.
    const std::uint64_t next = align_up(m_out.pos(), m_cs) >> m_bits;
    std::uint64_t rt_clusters = 1;
    while (rt_clusters * (m_cs / 8) * m_refs_per_block < next + rt_clusters + 2) ++rt_clusters;
    const std::uint64_t rt_offset = align_up(m_out.pos(), m_cs);
    for (std::uint64_t c = 0; c < rt_clusters; ++c)
        if (auto r = append_cluster(std::vector<std::byte>(m_cs)); !r) return r;
    // The last refcount block covers itself when it fits in its own window.
    for (;;) {
        const std::uint64_t k = align_up(m_out.pos(), m_cs) >> m_bits;
        if (k >= m_window_start + m_refs_per_block) {
            if (auto r = rotate_window(); !r) return r;
            continue;
        }
        ++m_window[k - m_window_start];
        m_refblocks.push_back(k << m_bits);
        if (auto r = m_out.pad_to(k << m_bits); !r) return fail(io(r.error(), "write"));
        if (auto r = m_out.append(encode_window()); !r) return fail(io(r.error(), "write"));
        break;
    }
    if (m_refblocks.size() > rt_clusters * (m_cs / 8))
        return fail(ErrorCode::invalid_state, "qcow2: refcount table overflow (writer bug)");
    if (auto r = m_out.flush(true); !r) return fail(io(r.error(), "write"));
    std::vector<std::byte> table(rt_clusters * m_cs);
    for (std::size_t i = 0; i < m_refblocks.size(); ++i) put_be(&table[i * 8], m_refblocks[i], 8);
    if (auto r = m_volume.pwrite(table, rt_offset); !r)
        return fail(io(r.error(), "write refcount table"));
    return write_header(l1_offset, rt_offset, rt_clusters);
}

}  // namespace

namespace {

struct PreallocLayout {
    std::uint64_t l1_clusters, rt_clusters, refblocks, l2_tables, data_clusters, meta_clusters;
    std::uint64_t total() const { return meta_clusters + data_clusters; }
};

PreallocLayout prealloc_layout(std::uint64_t size, std::uint64_t cs, std::uint64_t l1_entries) {
    PreallocLayout l{};
    l.l1_clusters = std::max<std::uint64_t>(1, align_up(l1_entries * 8, cs) / cs);
    l.l2_tables = l1_entries;
    l.data_clusters = align_up(size, cs) / cs;
    const std::uint64_t refs_per_block = cs / 2;
    l.refblocks = 1;
    for (;;) {
        l.rt_clusters = std::max<std::uint64_t>(1, align_up(l.refblocks * 8, cs) / cs);
        l.meta_clusters = 1 + l.l1_clusters + l.rt_clusters + l.refblocks + l.l2_tables;
        const std::uint64_t need = align_up(l.total(), refs_per_block) / refs_per_block;
        if (need <= l.refblocks) break;
        l.refblocks = need;
    }
    return l;
}

}  // namespace

Result<void> Qcow2Writer::finish_preallocated() {
    const auto l = prealloc_layout(m_size, m_cs, m_l1.size());
    const std::uint64_t l1_offset = m_cs;
    const std::uint64_t rt_offset = l1_offset + l.l1_clusters * m_cs;
    const std::uint64_t rb_offset = rt_offset + l.rt_clusters * m_cs;
    const std::uint64_t l2_offset = rb_offset + l.refblocks * m_cs;
    auto put_table = [&](std::uint64_t offset, std::uint64_t clusters,
                         auto&& entry) -> Result<void> {
        // One cluster at a time keeps memory flat for huge images.
        const std::uint64_t per = m_cs / 8;
        std::vector<std::byte> buf(m_cs);
        for (std::uint64_t c = 0; c < clusters; ++c) {
            for (std::uint64_t i = 0; i < per; ++i) put_be(&buf[i * 8], entry(c * per + i), 8);
            if (auto r = m_volume.pwrite(buf, offset + c * m_cs); !r)
                return fail(io(r.error(), "write metadata"));
        }
        return {};
    };
    auto l1 = [&](std::uint64_t i) {
        return i < m_l1.size() ? (l2_offset + i * m_cs) | k_copied : 0;
    };
    auto rt = [&](std::uint64_t i) { return i < l.refblocks ? rb_offset + i * m_cs : 0; };
    auto l2 = [&](std::uint64_t v) {
        return v < l.data_clusters ? (m_data_start + v * m_cs) | k_copied : 0;
    };
    if (auto r = put_table(l1_offset, l.l1_clusters, l1); !r) return r;
    if (auto r = put_table(rt_offset, l.rt_clusters, rt); !r) return r;
    if (auto r = put_table(l2_offset, l.l2_tables, l2); !r) return r;
    std::vector<std::byte> block(m_cs);
    for (std::uint64_t b = 0; b < l.refblocks; ++b) {
        for (std::uint64_t i = 0; i < m_refs_per_block; ++i)
            put_be(&block[i * 2], b * m_refs_per_block + i < l.total() ? 1 : 0, 2);
        if (auto r = m_volume.pwrite(block, rb_offset + b * m_cs); !r)
            return fail(io(r.error(), "write refcounts"));
    }
    const std::uint64_t end = l.total() * m_cs;
    if (m_volume.size() < end)
        if (auto r = m_volume.write_zeroes(m_volume.size(), end - m_volume.size()); !r)
            return fail(io(r.error(), "extend"));
    return write_header(l1_offset, rt_offset, l.rt_clusters);
}

Result<void> Qcow2Writer::finish() {
    if (m_finished) return fail(ErrorCode::invalid_state, "qcow2: finish called twice");
    m_finished = true;
    return m_options.preallocation == Qcow2Preallocation::metadata ? finish_preallocated()
                                                                   : finish_streaming();
}

namespace {

Result<void> validate(std::uint64_t size, const Qcow2WriteOptions& o) {
    if (o.cluster_size < 512 || o.cluster_size > (2u << 20) || !std::has_single_bit(o.cluster_size))
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qcow2: cluster size {} must be a power of two from 512 to 2M",
                                o.cluster_size));
    if (size == 0 || size % 512 != 0)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qcow2: virtual size {} must be a nonzero multiple of 512", size));
    const std::uint64_t per_l1 = std::uint64_t{o.cluster_size} * (o.cluster_size / 8);
    if ((size + per_l1 - 1) / per_l1 > k_max_l1_entries || size > (1ull << 61))
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qcow2: virtual size {} too large", size));
    if (o.compress && o.preallocation != Qcow2Preallocation::off)
        return fail(ErrorCode::invalid_argument,
                    "qcow2: compression and preallocation exclude each other");
    return {};
}

Result<std::unique_ptr<Qcow2Writer>> make_writer(Volume& volume, std::unique_ptr<Volume> owned,
                                                 std::uint64_t size, const Qcow2WriteOptions& o) {
    if (auto r = validate(size, o); !r) return fail(r.error());
    auto w = std::make_unique<Qcow2Writer>(volume, std::move(owned), size, o);
    if (o.preallocation == Qcow2Preallocation::metadata) {
        const std::uint64_t per_l1 = std::uint64_t{o.cluster_size} * (o.cluster_size / 8);
        const auto l = prealloc_layout(size, o.cluster_size, (size + per_l1 - 1) / per_l1);
        if (volume.block_size() > 1 && volume.size() < l.total() * o.cluster_size)
            return fail(ErrorCode::no_space,
                        fmt::format("qcow2: the volume ({} bytes) cannot hold the {} byte image",
                                    volume.size(), l.total() * o.cluster_size));
        w->set_data_start(l.meta_clusters * o.cluster_size);
    }
    return w;
}

}  // namespace

Result<std::unique_ptr<ImageWriter>> create_qcow2_writer(std::unique_ptr<Volume> volume,
                                                         std::uint64_t virtual_size,
                                                         const Qcow2WriteOptions& options) {
    Volume& ref = *volume;
    auto w = make_writer(ref, std::move(volume), virtual_size, options);
    if (!w) return fail(w.error());
    return std::unique_ptr<ImageWriter>(std::move(*w));
}

}  // namespace image

// --- the empty images and overlays the pools create -------------------------

std::uint64_t empty_qcow2_file_size(std::uint64_t virtual_size) {
    // header + L1 + refcount table + one refcount block (see finish_streaming).
    const std::uint64_t per_l1 = 65536ull * 8192;
    const std::uint64_t l1_entries = (virtual_size + per_l1 - 1) / per_l1;
    return (3 + std::max<std::uint64_t>(1, (l1_entries * 8 + 65535) / 65536)) * 65536;
}

Result<void> write_empty_qcow2(Volume& volume, std::uint64_t virtual_size) {
    if (virtual_size == 0 || virtual_size % 512 != 0)
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("qcow2: virtual size {} must be a nonzero multiple of 512", virtual_size));
    const std::uint64_t file_size = empty_qcow2_file_size(virtual_size);
    if (volume.block_size() > 1 && volume.size() < file_size)
        return fail(ErrorCode::no_space,
                    fmt::format("qcow2: the volume ({} bytes) cannot hold the {} byte image",
                                volume.size(), file_size));
    auto writer = image::make_writer(volume, nullptr, virtual_size, image::Qcow2WriteOptions{});
    if (!writer) return fail(writer.error());
    return (*writer)->finish();
}

Result<void> set_qcow2_backing(Volume& volume, std::string_view backing,
                               ImageFormat backing_format) {
    using namespace image::detail;
    using namespace image::detail::qcow2;
    constexpr std::uint64_t k_cluster_size = 65536;
    // Cluster 0 of a fresh image: 104-byte header, then the extension area.
    // Layout written here (docs/interop/qcow2.txt, "Header extensions"):
    //   104: backing format extension {type 0xe2792aca, length, name, pad to 8}
    //   then the end-of-extensions marker (8 zero bytes), then the file name.
    const std::string_view format_name = to_string(backing_format);
    if (backing.empty() || backing.size() > 1023)
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("qcow2: backing file name must be 1..1023 bytes, got {}", backing.size()));
    std::vector<std::byte> header(k_cluster_size);
    if (auto r = read_full(volume, header, 0); !r)
        return fail(r.error().with_context("qcow2: read header"));
    if (get_be(&header[0], 4) != k_magic || get_be(&header[k_off_version], 4) != 3 ||
        get_be(&header[k_off_header_length], 4) != k_v3_header_length ||
        get_be(&header[k_off_backing_offset], 8) != 0 ||
        get_be(&header[k_v3_header_length], 8) != 0 || get_be(&header[k_off_cluster_bits], 4) != 16)
        return fail(ErrorCode::invalid_argument, "qcow2: not a fresh image without extensions");
    const std::size_t ext_len = (format_name.size() + 7) / 8 * 8;
    const std::size_t name_offset = k_v3_header_length + 8 + ext_len + 8;
    std::fill(header.begin() + k_v3_header_length, header.end(), std::byte{0});
    put_be(&header[k_v3_header_length], k_ext_backing_format, 4);
    put_be(&header[k_v3_header_length + 4], format_name.size(), 4);
    std::memcpy(&header[k_v3_header_length + 8], format_name.data(), format_name.size());
    std::memcpy(&header[name_offset], backing.data(), backing.size());
    put_be(&header[k_off_backing_offset], name_offset, 8);
    put_be(&header[k_off_backing_size], backing.size(), 4);
    // The whole cluster: block devices (iSCSI LUNs) take only aligned writes.
    if (auto r = volume.pwrite(header, 0); !r)
        return fail(r.error().with_context("qcow2: write header"));
    if (auto r = volume.flush(); !r) return fail(r.error().with_context("qcow2: flush"));
    return {};
}

}  // namespace blockmig::pools
