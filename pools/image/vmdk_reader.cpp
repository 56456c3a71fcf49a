// open_vmdk: a VMDK disk (descriptor + extents, or one monolithic sparse or
// stream file) and its parents, as an ImageReader.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "pools/image/vmdk.hpp"
#include "vmdk_descriptor.hpp"
#include "vmdk_extent.hpp"
#include "vmdk_format.hpp"

namespace blockmig::pools::image {

using namespace vmdk;

namespace {

constexpr int k_max_chain = 64;
constexpr std::string_view k_descriptor_magic = "# Disk DescriptorFile";

std::unexpected<Error> bad(const std::string& where, std::string_view field, std::string_view what,
                           ErrorCode code = ErrorCode::protocol) {
    return fail(code, fmt::format("vmdk: {}: {}: {}", where, field, what));
}

class VmdkImage final : public ImageReader {
  public:
    struct Placed {
        std::uint64_t base = 0;
        std::unique_ptr<Extent> extent;
    };

    VmdkImage(ImageInfo info, std::vector<Placed> extents, std::unique_ptr<VmdkImage> parent)
        : m_info(std::move(info)), m_extents(std::move(extents)), m_parent(std::move(parent)) {}

    const ImageInfo& info() const override { return m_info; }
    std::uint32_t cid() const { return m_cid; }
    void set_cid(std::uint32_t cid) { m_cid = cid; }

    Result<std::vector<Range>> map(std::uint64_t offset, std::uint64_t length) override {
        std::vector<Range> out;
        offset = std::min(offset, m_info.virtual_size);
        length = std::min(length, m_info.virtual_size - offset);
        std::vector<Seg> segs;
        if (auto r = status(offset, length, segs); !r) return fail(r.error());
        for (const auto& s : segs) {
            RangeKind kind = s.kind == SegKind::data ? RangeKind::data : RangeKind::zero;
            if (!out.empty() && out.back().kind == kind) {
                out.back().length += s.length;
            } else {
                out.push_back({s.offset, s.length, kind});
            }
        }
        return out;
    }

    Result<void> read(std::span<std::byte> buf, std::uint64_t offset) override {
        if (offset > m_info.virtual_size || buf.size() > m_info.virtual_size - offset)
            return fail(ErrorCode::invalid_argument,
                        fmt::format("vmdk: read of {} bytes at {} is past the end of the disk ({})",
                                    buf.size(), offset, m_info.virtual_size));
        std::size_t done = 0;
        for (auto& p : m_extents) {
            const std::uint64_t end = p.base + p.extent->size();
            const std::uint64_t pos = offset + done;
            if (done == buf.size()) break;
            if (pos >= end) continue;
            const std::size_t n =
                static_cast<std::size_t>(std::min<std::uint64_t>(end - pos, buf.size() - done));
            const std::uint64_t base = p.base;
            ReadBelow below = [this, base](std::span<std::byte> b, std::uint64_t rel) {
                return read_parent(b, base + rel);
            };
            if (auto r = p.extent->read(buf.subspan(done, n), pos - p.base, below); !r) return r;
            done += n;
        }
        return {};
    }

  private:
    // Segments of [offset, offset+length) with unallocated parts resolved
    // through the parent chain.
    Result<void> status(std::uint64_t offset, std::uint64_t length, std::vector<Seg>& out) {
        const std::uint64_t stop = offset + length;
        for (auto& p : m_extents) {
            const std::uint64_t end = p.base + p.extent->size();
            if (end <= offset || p.base >= stop) continue;
            const std::uint64_t from = std::max(offset, p.base);
            const std::uint64_t to = std::min(stop, end);
            std::vector<Seg> local;
            if (auto r = p.extent->status(from - p.base, to - from, local); !r) return r;
            for (auto s : local) {
                s.offset += p.base;
                if (s.kind != SegKind::unallocated) {
                    append_seg(out, s);
                } else if (auto r = parent_status(s.offset, s.length, out); !r) {
                    return r;
                }
            }
        }
        return {};
    }

    Result<void> parent_status(std::uint64_t offset, std::uint64_t length, std::vector<Seg>& out) {
        const std::uint64_t psize = m_parent ? m_parent->m_info.virtual_size : 0;
        if (offset < psize) {
            const std::uint64_t n = std::min(length, psize - offset);
            if (auto r = m_parent->status(offset, n, out); !r) return r;
            offset += n, length -= n;
        }
        append_seg(out, {offset, length, SegKind::zero});
        return {};
    }

    Result<void> read_parent(std::span<std::byte> buf, std::uint64_t offset) {
        const std::uint64_t psize = m_parent ? m_parent->m_info.virtual_size : 0;
        std::size_t n = 0;
        if (offset < psize) {
            n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), psize - offset));
            if (auto r = m_parent->read(buf.first(n), offset); !r) return r;
        }
        std::memset(buf.data() + n, 0, buf.size() - n);
        return {};
    }

    ImageInfo m_info;
    std::vector<Placed> m_extents;
    std::unique_ptr<VmdkImage> m_parent;
    std::uint32_t m_cid = 0xffffffff;
};

// Extent and parent files live next to the descriptor: a name with a
// directory part could reach any file the process can read.
Result<void> check_sibling(const std::string& where, std::string_view field,
                           const std::string& file) {
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
        file.find('\\') != std::string::npos || file.find(':') != std::string::npos)
        return bad(where, field,
                   fmt::format("'{}' is outside the descriptor's directory (only plain file names "
                               "next to it are opened)",
                               file));
    return {};
}

Result<std::unique_ptr<Volume>> open_file(Pool& pool, const std::string& where,
                                          std::string_view field, const std::string& file) {
    auto v = pool.open(file, false);
    if (!v)
        return fail(v.error().with_context(fmt::format("vmdk: {}: {} '{}'", where, field, file)));
    return std::move(*v);
}

bool is_known_create_type(std::string_view t) {
    static constexpr std::string_view known[] = {"monolithicSparse",
                                                 "monolithicFlat",
                                                 "twoGbMaxExtentSparse",
                                                 "twoGbMaxExtentFlat",
                                                 "2GbMaxExtentSparse",
                                                 "2GbMaxExtentFlat",
                                                 "streamOptimized",
                                                 "custom",
                                                 "vmfs",
                                                 "vmfsThin",
                                                 "vmfsPreallocated",
                                                 "vmfsEagerZeroedThick",
                                                 "vmfsSparse",
                                                 "seSparse",
                                                 "vmfsThick"};
    return std::find(std::begin(known), std::end(known), t) != std::end(known);
}

Result<std::unique_ptr<Extent>> open_extent(Pool& pool, const std::string& where,
                                            const ExtentLine& e) {
    const std::string field = fmt::format("descriptor line {} (extent)", e.line);
    const std::uint64_t size = e.sectors * k_sector;
    if (e.access == Access::noaccess)
        return bad(where, field,
                   fmt::format("extent '{}' is NOACCESS: VMware marks its data unreadable, and "
                               "blockmig will not substitute zeroes",
                               e.file),
                   ErrorCode::unsupported);
    if (e.type == "ZERO") return make_zero_extent(size);
    if (e.type == "VMFSRDM" || e.type == "VMFSRAW" || e.type == "VMFSPASSTHROUGHRAW")
        return bad(where, field,
                   fmt::format("{} extent '{}' maps a raw device; blockmig reads only file-backed "
                               "disks (copy the device itself instead)",
                               e.type, e.file),
                   ErrorCode::unsupported);
    if (e.type != "FLAT" && e.type != "VMFS" && e.type != "SPARSE" && e.type != "VMFSSPARSE" &&
        e.type != "SESPARSE")
        return bad(where, field, fmt::format("unknown extent type '{}'", e.type));
    if (auto r = check_sibling(where, field, e.file); !r) return fail(r.error());
    auto volume = open_file(pool, where, field, e.file);
    if (!volume) return fail(volume.error());
    if (e.type == "FLAT" || e.type == "VMFS") {
        if (e.offset > (std::uint64_t{1} << 47)) return bad(where, field, "absurd offset");
        return make_flat_extent(std::move(*volume), e.file, e.offset * k_sector, size);
    }
    if (e.offset != 0) return bad(where, field, "a sparse extent has no offset");
    return make_sparse_extent(std::move(*volume), e.file, size);
}

struct Opened {
    Descriptor descriptor;
    std::vector<VmdkImage::Placed> extents;
};

Result<Opened> open_descriptor_text(Pool& pool, const std::string& text, const std::string& name) {
    auto d = parse_descriptor(text, name);
    if (!d) return fail(d.error());
    Opened o;
    o.descriptor = std::move(*d);
    const auto& type = o.descriptor.create_type;
    if (is_device_create_type(type))
        return bad(name, "createType",
                   fmt::format("'{}' maps a raw device or partition; blockmig reads only "
                               "file-backed disks (copy the device itself instead)",
                               type),
                   ErrorCode::unsupported);
    if (!is_known_create_type(type))
        return bad(name, "createType", fmt::format("unknown type '{}'", type),
                   ErrorCode::unsupported);
    if (o.descriptor.extents.empty()) return bad(name, "descriptor", "no extent lines");
    std::uint64_t base = 0;
    for (const auto& line : o.descriptor.extents) {
        auto extent = open_extent(pool, name, line);
        if (!extent) return fail(extent.error());
        o.extents.push_back({base, std::move(*extent)});
        base += line.sectors * k_sector;
        if (base > k_max_capacity_sectors * k_sector)
            return bad(name, "extents", "total size is absurd");
    }
    return o;
}

Result<std::string> read_text(Volume& volume, const std::string& name, std::uint64_t at,
                              std::uint64_t bytes) {
    if (bytes > k_max_descriptor_bytes)
        return bad(name, "descriptor",
                   fmt::format("{} bytes is too large for a descriptor", bytes));
    if (at + bytes > volume.size())
        return bad(name, "header field descriptorOffset",
                   "embedded descriptor lies outside the file (truncated?)");
    std::string text(bytes, '\0');
    if (auto r = read_full(volume, std::as_writable_bytes(std::span(text)), at); !r)
        return fail(r.error().with_context("vmdk: " + name + ": descriptor"));
    return text;
}

// A binary VMDK file: a hosted sparse or stream file (its embedded
// descriptor, if any, supplies createType, CID and parent), a COWD
// (vmfsSparse) or seSparse extent opened directly. The file itself is the one
// extent; QEMU does the same. A KDMV header of capacity 0 only carries a
// descriptor that lists the extents.
Result<Opened> open_binary(Pool& pool, std::unique_ptr<Volume> volume, const std::string& name,
                           std::span<const std::byte> head) {
    Opened o;
    const std::uint32_t magic = get32(head.data());
    if (magic == k_sparse_magic) {
        if (get64(&head[12]) == 0 && get64(&head[36]) != 0) {
            auto text =
                read_text(*volume, name, get64(&head[28]) * k_sector, get64(&head[36]) * k_sector);
            if (!text) return fail(text.error());
            return open_descriptor_text(pool, *text, name);
        }
        auto h = parse_sparse_header(head, name);
        if (!h) return fail(h.error());
        if (h->descriptor_size != 0) {
            if (h->descriptor_offset == 0)
                return bad(name, "header field descriptorOffset", "0 with a descriptor size");
            auto text = read_text(*volume, name, h->descriptor_offset * k_sector,
                                  h->descriptor_size * k_sector);
            if (!text) return fail(text.error());
            auto d = parse_descriptor(*text, name);
            if (!d) return fail(d.error());
            o.descriptor = std::move(*d);
        } else {
            o.descriptor.create_type =
                (h->flags & k_flag_compressed) ? "streamOptimized" : "monolithicSparse";
        }
    } else {
        o.descriptor.create_type = magic == k_cowd_magic ? "vmfsSparse" : "seSparse";
    }
    auto extent = make_sparse_extent(std::move(volume), name, 0);
    if (!extent) return fail(extent.error());
    o.extents.push_back({0, std::move(*extent)});
    return o;
}

Result<Opened> open_descriptor_file(Pool& pool, Volume& volume, const std::string& name) {
    auto text = read_text(volume, name, 0, volume.size());
    if (!text) return fail(text.error());
    return open_descriptor_text(pool, *text, name);
}

Result<std::unique_ptr<VmdkImage>> open_image(Pool& pool, const std::string& name,
                                              std::set<std::string>& seen) {
    if (seen.size() >= k_max_chain)
        return bad(name, "parentFileNameHint",
                   fmt::format("chain longer than {} disks", k_max_chain));
    if (!seen.insert(name).second)
        return bad(name, "parentFileNameHint", "loop in the parent chain");
    auto volume = pool.open(name, false);
    if (!volume) return fail(volume.error().with_context("vmdk: " + name));
    std::vector<std::byte> head(std::min<std::uint64_t>(k_sector, (*volume)->size()));
    if (auto r = read_full(**volume, head, 0); !r)
        return fail(r.error().with_context("vmdk: " + name));
    if (!looks_like_vmdk(head))
        return bad(name, "magic", "not a VMDK (no KDMV/COWD magic, no descriptor)");
    if (head.size() >= 4 && head.size() < k_sector &&
        (get32(head.data()) == k_sparse_magic || get32(head.data()) == k_cowd_magic))
        return bad(name, "header", "file shorter than one sector (truncated?)");
    const bool binary = head.size() == k_sector && (get32(head.data()) == k_sparse_magic ||
                                                    get32(head.data()) == k_cowd_magic ||
                                                    get64(head.data()) == k_sesparse_magic);
    Result<Opened> opened = binary ? open_binary(pool, std::move(*volume), name, head)
                                   : open_descriptor_file(pool, **volume, name);
    if (!opened) return fail(opened.error());
    const Descriptor& d = opened->descriptor;

    ImageInfo info;
    info.format = ImageFormat::vmdk;
    info.subformat = d.create_type;
    if (auto it = d.ddb.find("adapterType"); it != d.ddb.end()) info.adapter_type = it->second;
    for (const auto& p : opened->extents) {
        info.virtual_size += p.extent->size();
        info.allocated_bytes += p.extent->allocated_bytes();
    }

    std::unique_ptr<VmdkImage> parent;
    if (d.parent_cid != 0xffffffff || !d.parent_hint.empty()) {
        if (d.parent_hint.empty())
            return bad(name, "parentFileNameHint", "missing although parentCID is set");
        if (auto r = check_sibling(name, "parentFileNameHint", d.parent_hint); !r)
            return fail(r.error());
        auto p = open_image(pool, d.parent_hint, seen);
        if (!p) return fail(p.error());
        const std::uint32_t cid = (*p)->cid();
        if (cid != d.parent_cid)
            return bad(name, "parentCID",
                       fmt::format("{:08x}, but parent '{}' has CID {:08x} (the parent changed "
                                   "after this delta was taken)",
                                   d.parent_cid, d.parent_hint, cid));
        info.chain.push_back(d.parent_hint);
        for (const auto& c : (*p)->info().chain) info.chain.push_back(c);
        parent = std::move(*p);
    }
    auto image =
        std::make_unique<VmdkImage>(std::move(info), std::move(opened->extents), std::move(parent));
    image->set_cid(d.cid);
    return image;
}

}  // namespace

bool looks_like_vmdk(std::span<const std::byte> head) {
    if (head.size() >= 4) {
        const std::uint32_t magic = get32(head.data());
        if (magic == k_sparse_magic || magic == k_cowd_magic) return true;
    }
    if (head.size() >= 8 && get64(head.data()) == k_sesparse_magic) return true;
    std::string_view text(reinterpret_cast<const char*>(head.data()), head.size());
    while (!text.empty() && (text.front() == ' ' || text.front() == '\n' || text.front() == '\r'))
        text.remove_prefix(1);
    return text.starts_with(k_descriptor_magic);
}

Result<std::unique_ptr<ImageReader>> open_vmdk(Pool& pool, const std::string& name) {
    std::set<std::string> seen;
    auto image = open_image(pool, name, seen);
    if (!image) return fail(image.error());
    return std::unique_ptr<ImageReader>(std::move(*image));
}

}  // namespace blockmig::pools::image
