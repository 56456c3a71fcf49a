// The disk LUNs of one iSCSI target, through libiscsi's synchronous API.
// The pool contract (LUN naming, what "unused" means) is in pools/pools.hpp.
#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "common.hpp"
#include "iscsi_session.hpp"
#include "pools/image_format.hpp"
#include "pools/pools.hpp"

namespace blockmig::pools {

namespace {

constexpr const char* k_initiator = "iqn.2024-01.org.blockmig:pools";
constexpr std::uint64_t k_max_io = 4 << 20;
constexpr std::uint64_t k_unused_probe = 1 << 20;

struct IscsiUrl {
    std::string user, password;
    std::string host;
    int port = 3260;
    std::string iqn;

    std::string portal() const { return fmt::format("{}:{}", host, port); }
    // Never shows the password.
    std::string text() const {
        return fmt::format("iscsi://{}{}/{}", user.empty() ? "" : user + "@", portal(), iqn);
    }
};

Result<IscsiUrl> parse_iscsi_url(std::string_view url) {
    constexpr std::string_view scheme = "iscsi://";
    auto bad = [&](std::string_view why) {
        return fail(ErrorCode::invalid_argument, fmt::format("iscsi: {}: {}", url, why));
    };
    if (!url.starts_with(scheme)) return bad("not an iscsi:// URL");
    std::string_view rest = url.substr(scheme.size());
    IscsiUrl out;
    if (auto at = rest.rfind('@'); at != std::string_view::npos) {
        std::string_view cred = rest.substr(0, at);
        auto pct = cred.find('%');
        if (pct == std::string_view::npos || pct == 0)
            return bad("credentials must be user%password");
        out.user = std::string(cred.substr(0, pct));
        out.password = std::string(cred.substr(pct + 1));
        rest = rest.substr(at + 1);
    }
    auto slash = rest.find('/');
    if (slash == std::string_view::npos) return bad("expected iscsi://host[:port]/iqn");
    std::string_view hostport = rest.substr(0, slash);
    std::string_view iqn = rest.substr(slash + 1);
    while (iqn.ends_with('/')) iqn.remove_suffix(1);
    if (auto colon = hostport.rfind(':'); colon != std::string_view::npos) {
        std::string_view port = hostport.substr(colon + 1);
        auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), out.port);
        if (ec != std::errc() || end != port.data() + port.size() || out.port <= 0 ||
            out.port > 65535) {
            return bad("bad port");
        }
        hostport = hostport.substr(0, colon);
    }
    if (hostport.empty()) return bad("missing host");
    if (iqn.empty() || iqn.find('/') != std::string_view::npos) {
        return bad("expected exactly one target name after the host (iscsi://host[:port]/iqn)");
    }
    out.host = std::string(hostport);
    out.iqn = std::string(iqn);
    return out;
}

using detail::IscsiSession;
using detail::Task;

// Adapts an iscsi_*_task() call to IscsiSession::run():
// task_of(iscsi_read16_task, lun, lba, ...) supplies the callback arguments.
template <typename F, typename... Args>
detail::StartTask task_of(F start, Args... args) {
    return [=](iscsi_context* iscsi, iscsi_command_cb cb, void* data) {
        return start(iscsi, args..., cb, data);
    };
}

struct Lun {
    int lun = 0;
    std::uint32_t block_size = 512;
    std::uint64_t blocks = 0;
    bool lbpme = false;  // thin provisioned: UNMAP and GET LBA STATUS work
    std::uint64_t bytes() const { return blocks * block_size; }
};

struct IscsiShared {
    IscsiShared(IscsiUrl u, std::string w, std::chrono::milliseconds timeout)
        : url(std::move(u)),
          where(std::move(w)),
          session({url.portal(), url.iqn, url.user, url.password, k_initiator}, where, timeout) {}

    IscsiUrl url;
    std::string where;  // "iscsi: iscsi://host:port/iqn"
    IscsiSession session;
    std::function<bool(const std::string&)> claim;  // PoolOptions::claim
};

std::string lun_name(int lun) { return fmt::format("lun{}", lun); }

Result<int> parse_lun_name(std::string_view where, std::string_view name) {
    int lun = -1;
    std::string_view digits = name.starts_with("lun") ? name.substr(3) : name;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), lun);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || lun < 0 ||
        lun > 16383) {
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("{}: invalid volume name '{}' (expected lun<N>, e.g. lun1)", where, name));
    }
    return lun;
}

class IscsiVolume final : public Volume {
  public:
    IscsiVolume(std::shared_ptr<IscsiShared> shared, Lun lun, bool writable)
        : m_shared(std::move(shared)),
          m_lun(lun),
          m_writable(writable),
          m_name(lun_name(lun.lun)) {}

    std::uint64_t size() const override { return m_lun.bytes(); }
    std::uint32_t block_size() const override { return m_lun.block_size; }

    Result<std::size_t> pread(std::span<std::byte> buf, std::uint64_t offset) override {
        if (auto r = check_range(offset, buf.size(), true); !r) return fail(r.error());
        const std::uint64_t want =
            std::min<std::uint64_t>(buf.size(), size() > offset ? size() - offset : 0);
        std::lock_guard lock(m_shared->session.mutex);
        for (std::uint64_t done = 0; done < want;) {
            const auto n = static_cast<std::uint32_t>(std::min(k_max_io, want - done));
            auto task = m_shared->session.run(
                fmt::format("READ(16) {} at {}", m_name, offset + done),
                task_of(iscsi_read16_task, m_lun.lun, (offset + done) / m_lun.block_size, n,
                        static_cast<int>(m_lun.block_size), 0, 0, 0, 0, 0));
            if (!task) return fail(task.error());
            if ((*task)->datain.size < static_cast<int>(n)) {
                return fail(ErrorCode::io_error,
                            fmt::format("{}: READ(16) {}: short data", m_shared->where, m_name));
            }
            std::memcpy(buf.data() + done, (*task)->datain.data, n);
            done += n;
        }
        return static_cast<std::size_t>(want);
    }

    Result<void> pwrite(std::span<const std::byte> buf, std::uint64_t offset) override {
        if (auto r = check_write(offset, buf.size()); !r) return r;
        std::lock_guard lock(m_shared->session.mutex);
        for (std::uint64_t done = 0; done < buf.size();) {
            const auto n =
                static_cast<std::uint32_t>(std::min<std::uint64_t>(k_max_io, buf.size() - done));
            // libiscsi takes a non-const pointer but only reads the buffer.
            auto* data =
                reinterpret_cast<unsigned char*>(const_cast<std::byte*>(buf.data() + done));
            auto task = m_shared->session.run(
                fmt::format("WRITE(16) {} at {}", m_name, offset + done),
                task_of(iscsi_write16_task, m_lun.lun, (offset + done) / m_lun.block_size, data, n,
                        static_cast<int>(m_lun.block_size), 0, 0, 0, 0, 0));
            if (!task) return fail(task.error());
            done += n;
        }
        return {};
    }

    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        if (auto r = check_write(offset, length); !r) return r;
        {
            // WRITE SAME(16) with UNMAP: the target deallocates where it can
            // and the range reads back as zeroes either way (SBC-3 5.45).
            std::lock_guard lock(m_shared->session.mutex);
            std::vector<unsigned char> zero(m_lun.block_size, 0);
            bool ok = true;
            for (std::uint64_t done = 0; done < length && ok;) {
                const auto blocks = static_cast<std::uint32_t>(std::min<std::uint64_t>(
                    (length - done) / m_lun.block_size, (32 << 20) / m_lun.block_size));
                auto task = m_shared->session.run(
                    "WRITE SAME(16)",
                    task_of(iscsi_writesame16_task, m_lun.lun, (offset + done) / m_lun.block_size,
                            zero.data(), m_lun.block_size, blocks, 0, m_lun.lbpme ? 1 : 0, 0, 0));
                if (!task) {
                    if (task.error().code != ErrorCode::unsupported || done != 0)
                        return fail(task.error());
                    ok = false;
                    break;
                }
                done += std::uint64_t(blocks) * m_lun.block_size;
            }
            if (ok) return {};
        }
        // No WRITE SAME: write zero buffers.
        std::vector<std::byte> zeroes(std::min<std::uint64_t>(length, k_max_io));
        for (std::uint64_t done = 0; done < length; done += zeroes.size()) {
            auto n = std::min<std::uint64_t>(zeroes.size(), length - done);
            if (auto r = pwrite(std::span(zeroes).first(n), offset + done); !r) return r;
        }
        return {};
    }

    Result<void> discard(std::uint64_t offset, std::uint64_t length) override {
        if (auto r = check_write(offset, length); !r) return r;
        if (!m_lun.lbpme) {
            return fail(ErrorCode::unsupported,
                        fmt::format("{}: discard {}: LUN is not thin-provisioned (LBPME=0)",
                                    m_shared->where, m_name));
        }
        std::lock_guard lock(m_shared->session.mutex);
        for (std::uint64_t done = 0; done < length;) {
            const std::uint64_t blocks =
                std::min<std::uint64_t>((length - done) / m_lun.block_size, 1u << 22);
            unmap_list list{(offset + done) / m_lun.block_size, static_cast<std::uint32_t>(blocks)};
            auto task = m_shared->session.run(fmt::format("UNMAP {} at {}", m_name, offset + done),
                                              task_of(iscsi_unmap_task, m_lun.lun, 0, 0, &list, 1));
            if (!task) return fail(task.error());
            done += blocks * m_lun.block_size;
        }
        return {};
    }

    Result<void> flush() override {
        std::lock_guard lock(m_shared->session.mutex);
        auto task =
            m_shared->session.run(fmt::format("SYNCHRONIZE CACHE {}", m_name),
                                  task_of(iscsi_synchronizecache10_task, m_lun.lun, 0, 0, 0, 0));
        if (!task) return fail(task.error());
        return {};
    }

    Result<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length) override {
        std::vector<Extent> extents;
        const std::uint64_t end = std::min(size(), offset + length);
        if (offset >= end) return extents;
        if (!m_lun.lbpme) {
            extents.push_back({offset, end - offset, true});
            return extents;
        }
        std::lock_guard lock(m_shared->session.mutex);
        std::uint64_t pos = offset - offset % m_lun.block_size;
        while (pos < end) {
            auto task = m_shared->session.run(
                fmt::format("GET LBA STATUS {} at {}", m_name, pos),
                task_of(iscsi_get_lba_status_task, m_lun.lun, pos / m_lun.block_size, 4096));
            if (!task) return fail(task.error());
            auto* status = static_cast<scsi_get_lba_status*>(scsi_datain_unmarshall(task->get()));
            if (!status || status->num_descriptors == 0) {
                return fail(ErrorCode::protocol, fmt::format("{}: GET LBA STATUS {}: empty answer",
                                                             m_shared->where, m_name));
            }
            const std::uint64_t before = pos;
            for (std::uint32_t i = 0; i < status->num_descriptors && pos < end; ++i) {
                const auto& d = status->descriptors[i];
                const std::uint64_t d_start = d.lba * m_lun.block_size;
                const std::uint64_t d_end =
                    d_start + std::uint64_t(d.num_blocks) * m_lun.block_size;
                if (d_end <= pos) continue;
                const std::uint64_t from = std::max({d_start, pos, offset});
                const std::uint64_t to = std::min(d_end, end);
                if (to > from) {
                    detail::append_extent(
                        extents,
                        {from, to - from, d.provisioning == SCSI_PROVISIONING_TYPE_MAPPED});
                }
                pos = d_end;
            }
            if (pos <= before) {
                return fail(ErrorCode::protocol, fmt::format("{}: GET LBA STATUS {}: no progress",
                                                             m_shared->where, m_name));
            }
        }
        return extents;
    }

  private:
    Result<void> check_range(std::uint64_t offset, std::uint64_t length, bool reading) const {
        if (offset % m_lun.block_size != 0 || length % m_lun.block_size != 0) {
            return fail(
                ErrorCode::invalid_argument,
                fmt::format("{}: {}: offset {} / length {} not a multiple of the {} byte block",
                            m_shared->where, m_name, offset, length, m_lun.block_size));
        }
        if (!reading && offset + length > size()) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: {}: range {}+{} beyond the LUN's {} bytes",
                                    m_shared->where, m_name, offset, length, size()));
        }
        return {};
    }
    Result<void> check_write(std::uint64_t offset, std::uint64_t length) const {
        if (!m_writable)
            return fail(ErrorCode::invalid_state,
                        fmt::format("{}: {} opened read-only", m_shared->where, m_name));
        return check_range(offset, length, false);
    }

    std::shared_ptr<IscsiShared> m_shared;
    Lun m_lun;
    bool m_writable;
    std::string m_name;
};

class IscsiPool final : public Pool {
  public:
    explicit IscsiPool(std::shared_ptr<IscsiShared> shared) : m_shared(std::move(shared)) {}

    std::string_view type() const override { return "iscsi"; }
    std::string url() const override { return m_shared->url.text(); }
    std::string url_of(std::string_view name) const override {
        auto lun = parse_lun_name(m_shared->where, name);
        return fmt::format("{}/{}", url(), lun ? std::to_string(*lun) : std::string(name));
    }

    Result<std::vector<VolumeInfo>> list_volumes() override {
        auto luns = disk_luns();
        if (!luns) return fail(luns.error());
        std::vector<VolumeInfo> out;
        for (const Lun& lun : *luns) {
            auto info = stat_lun(lun);
            if (!info) return fail(info.error());
            out.push_back(*info);
        }
        return out;
    }

    Result<VolumeInfo> stat(std::string_view name) override {
        auto lun = find(name);
        if (!lun) return fail(lun.error());
        return stat_lun(*lun);
    }

    Result<VolumeInfo> create(std::string_view name, std::uint64_t size,
                              ImageFormat format) override {
        if (format != ImageFormat::raw && format != ImageFormat::qcow2) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: cannot create {} volumes (raw or qcow2)", m_shared->where,
                                    to_string(format)));
        }
        auto chosen = name.empty() ? choose_unused(size) : check_named(name, size);
        if (!chosen) return fail(chosen.error());
        if (format == ImageFormat::qcow2) {
            IscsiVolume volume(m_shared, *chosen, true);
            if (auto r = write_empty_qcow2(volume, size); !r) {
                // Leave the LUN as unused as we found it.
                (void)volume.write_zeroes(0, std::min(volume.size(), empty_qcow2_file_size(size)));
                return fail(
                    r.error().with_context(fmt::format("create on {}", lun_name(chosen->lun))));
            }
        }
        return stat_lun(*chosen);
    }

    // The named LUN, if it is unused, large enough and the caller's claim
    // (PoolOptions::claim) takes it.
    Result<Lun> check_named(std::string_view name, std::uint64_t size) {
        auto lun = find(name);
        if (!lun) return fail(lun.error());
        auto unused = is_unused(*lun);
        if (!unused) return fail(unused.error());
        if (!*unused) {
            return fail(ErrorCode::already_exists,
                        fmt::format("{}: {} is in use (it holds data)", m_shared->where,
                                    lun_name(lun->lun)));
        }
        if (lun->bytes() < size) {
            return fail(ErrorCode::no_space,
                        fmt::format("{}: {} holds {} bytes, {} wanted", m_shared->where,
                                    lun_name(lun->lun), lun->bytes(), size));
        }
        if (!claim(*lun)) {
            return fail(ErrorCode::already_exists,
                        fmt::format("{}: {} is claimed by another job", m_shared->where,
                                    lun_name(lun->lun)));
        }
        return *lun;
    }

    // The smallest unused LUN of at least `size` bytes that the claim takes.
    Result<Lun> choose_unused(std::uint64_t size) {
        auto luns = disk_luns();
        if (!luns) return fail(luns.error());
        std::stable_sort(luns->begin(), luns->end(),
                         [](const Lun& a, const Lun& b) { return a.bytes() < b.bytes(); });
        int claimed = 0;
        for (const Lun& lun : *luns) {
            if (lun.bytes() < size) continue;
            auto unused = is_unused(lun);
            if (!unused) return fail(unused.error());
            if (!*unused) continue;
            if (claim(lun)) return lun;
            ++claimed;
        }
        return fail(ErrorCode::no_space,
                    fmt::format("{}: no unused LUN of at least {} bytes{}", m_shared->where, size,
                                claimed ? fmt::format(" ({} unused ones are claimed)", claimed)
                                        : std::string()));
    }

    bool claim(const Lun& lun) {
        return !m_shared->claim || m_shared->claim(url_of(lun_name(lun.lun)));
    }

    Result<void> remove(std::string_view name) override {
        auto lun = find(name);
        if (!lun) return fail(lun.error());
        IscsiVolume volume(m_shared, *lun, true);
        if (lun->lbpme) {
            if (auto r = volume.discard(0, lun->bytes()); !r) return r;
        }
        // Zeroing the head makes the LUN count as unused even without LBPME
        // (and covers targets whose UNMAP does not read back as zeroes).
        return volume.write_zeroes(0, std::min(lun->bytes(), k_unused_probe));
    }

    Result<void> rename(std::string_view from, std::string_view) override {
        return fail(ErrorCode::unsupported,
                    fmt::format("{}: {}: LUNs are numbered by the target and cannot be renamed",
                                m_shared->where, from));
    }

    Result<void> resize(std::string_view name, std::uint64_t) override {
        return fail(ErrorCode::unsupported,
                    fmt::format("{}: {}: LUN sizes are set on the target, not by blockmig",
                                m_shared->where, name));
    }

    Result<Capacity> capacity() override {
        auto luns = disk_luns();
        if (!luns) return fail(luns.error());
        Capacity cap;
        for (const Lun& lun : *luns) {
            cap.total += lun.bytes();
            auto unused = is_unused(lun);
            if (!unused) return fail(unused.error());
            if (*unused) cap.free += lun.bytes();
        }
        return cap;
    }

    Result<std::unique_ptr<Volume>> open(std::string_view name, bool writable) override {
        auto lun = find(name);
        if (!lun) return fail(lun.error());
        return std::make_unique<IscsiVolume>(m_shared, *lun, writable);
    }

    Result<BlockdevChain> describe_for_qemu(std::string_view name,
                                            const QemuNodeOptions& options) override {
        auto info = stat(name);
        if (!info) return fail(info.error());
        auto lun = parse_lun_name(m_shared->where, name);
        BlockdevChain chain;
        // BlockdevOptionsIscsi (qapi/block-core.json, QEMU 7.2).
        chain.protocol = {{"driver", "iscsi"},
                          {"transport", "tcp"},
                          {"portal", m_shared->url.portal()},
                          {"target", m_shared->url.iqn},
                          {"lun", *lun},
                          {"initiator-name", options.initiator_name}};
        if (!m_shared->url.user.empty()) {
            const std::string secret = options.node_prefix + "-chap";
            chain.secrets.push_back(
                {{"qom-type", "secret"}, {"id", secret}, {"data", m_shared->url.password}});
            chain.protocol["user"] = m_shared->url.user;
            chain.protocol["password-secret"] = secret;
        }
        detail::finish_chain(chain, info->format, options);
        return chain;
    }

  private:
    Result<VolumeInfo> stat_lun(const Lun& lun) {
        IscsiVolume volume(m_shared, lun, false);
        auto probed = probe_image(volume);
        if (!probed) return fail(probed.error().with_context(url_of(lun_name(lun.lun))));
        std::uint64_t allocated = lun.bytes();
        if (lun.lbpme) {
            auto extents = volume.block_status(0, lun.bytes());
            if (!extents) return fail(extents.error());
            allocated = 0;
            for (const auto& e : *extents) allocated += e.data ? e.length : 0;
        }
        return VolumeInfo{lun_name(lun.lun), probed->virtual_size, allocated, probed->format};
    }

    Result<bool> is_unused(const Lun& lun) {
        IscsiVolume volume(m_shared, lun, false);
        if (lun.lbpme) {
            auto extents = volume.block_status(0, lun.bytes());
            if (!extents) return fail(extents.error());
            return std::none_of(extents->begin(), extents->end(),
                                [](const Extent& e) { return e.data; });
        }
        std::vector<std::byte> head(std::min(lun.bytes(), k_unused_probe));
        if (auto r = read_full(volume, head, 0); !r) return fail(r.error());
        return std::all_of(head.begin(), head.end(), [](std::byte b) { return b == std::byte{0}; });
    }

    Result<Lun> find(std::string_view name) {
        auto number = parse_lun_name(m_shared->where, name);
        if (!number) return fail(number.error());
        auto luns = disk_luns();
        if (!luns) return fail(luns.error());
        for (const Lun& lun : *luns) {
            if (lun.lun == *number) return lun;
        }
        return fail(ErrorCode::not_found,
                    fmt::format("{}: no disk LUN {}", m_shared->where, *number));
    }

    // REPORT LUNS, then the direct-access (disk) ones with their capacity.
    Result<std::vector<Lun>> disk_luns() {
        std::lock_guard lock(m_shared->session.mutex);
        auto report =
            m_shared->session.run("REPORT LUNS", task_of(iscsi_reportluns_task, 0, 16384));
        if (!report) return fail(report.error());
        auto* list = static_cast<scsi_reportluns_list*>(scsi_datain_unmarshall(report->get()));
        if (!list)
            return fail(ErrorCode::protocol, m_shared->where + ": REPORT LUNS: malformed answer");
        std::vector<Lun> out;
        for (std::uint32_t i = 0; i < list->num; ++i) {
            Lun lun;
            lun.lun = list->luns[i];
            // A fresh session sees one UNIT ATTENTION (power on / reset) per
            // LUN; TEST UNIT READY consumes it before real commands run
            // (what iscsi_full_connect_sync does for its one LUN). IscsiSession::run
            // also retries commands that meet one after a fresh login.
            for (int attempt = 0; attempt < 4; ++attempt) {
                auto tur = m_shared->session.submit("TEST UNIT READY",
                                                    task_of(iscsi_testunitready_task, lun.lun));
                if (!tur) return fail(tur.error());
                if ((*tur)->status != SCSI_STATUS_CHECK_CONDITION ||
                    (*tur)->sense.key != SCSI_SENSE_UNIT_ATTENTION) {
                    break;
                }
            }
            auto inq =
                m_shared->session.run("INQUIRY", task_of(iscsi_inquiry_task, lun.lun, 0, 0, 64));
            if (!inq) return fail(inq.error());
            auto* std_inq = static_cast<scsi_inquiry_standard*>(scsi_datain_unmarshall(inq->get()));
            if (!std_inq ||
                std_inq->device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS)
                continue;
            auto cap = m_shared->session.run(fmt::format("READ CAPACITY(16) LUN {}", lun.lun),
                                             task_of(iscsi_readcapacity16_task, lun.lun));
            if (!cap) return fail(cap.error());
            auto* rc16 = static_cast<scsi_readcapacity16*>(scsi_datain_unmarshall(cap->get()));
            if (!rc16 || rc16->block_length == 0) {
                return fail(ErrorCode::protocol,
                            fmt::format("{}: READ CAPACITY(16) LUN {}: malformed", m_shared->where,
                                        lun.lun));
            }
            lun.block_size = rc16->block_length;
            lun.blocks = rc16->returned_lba + 1;
            lun.lbpme = rc16->lbpme != 0;
            out.push_back(lun);
        }
        std::sort(out.begin(), out.end(), [](const Lun& a, const Lun& b) { return a.lun < b.lun; });
        return out;
    }

    std::shared_ptr<IscsiShared> m_shared;
};

}  // namespace

Result<std::unique_ptr<Pool>> make_iscsi_pool(std::string_view url_text,
                                              const PoolOptions& options) {
    auto url = parse_iscsi_url(url_text);
    if (!url) return fail(url.error());
    auto shared = std::make_shared<IscsiShared>(*url, "iscsi: " + url->text(), options.timeout);
    shared->claim = options.claim;
    std::lock_guard lock(shared->session.mutex);
    if (auto r = shared->session.connect(); !r) return fail(r.error());
    return std::make_unique<IscsiPool>(std::move(shared));
}

}  // namespace blockmig::pools
