// A directory on an NFS server, through libnfs's synchronous API.
#include <fcntl.h>
#include <fmt/core.h>
#include <nfsc/libnfs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <mutex>
#include <vector>

#include "common.hpp"
#include "pools/image_format.hpp"
#include "pools/pools.hpp"

namespace blockmig::pools {

namespace {

constexpr int k_nf3reg = 1;  // NF3REG from libnfs-raw-nfs.h (nfsdirent::type)
constexpr std::uint64_t k_max_io = 1 << 20;

struct NfsUrl {
    std::string host;
    std::string path;  // "/export/dir", no trailing '/'
    int version = 3;
    std::optional<int> uid, gid;

    std::string text() const {
        std::string out = fmt::format("nfs://{}{}", host, path);
        std::string sep = "?";
        if (version != 3) out += sep + "version=" + std::to_string(version), sep = "&";
        if (uid) out += sep + "uid=" + std::to_string(*uid), sep = "&";
        if (gid) out += sep + "gid=" + std::to_string(*gid);
        return out;
    }
};

Result<int> parse_int(std::string_view url, std::string_view key, std::string_view value) {
    int v = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc() || end != value.data() + value.size() || v < 0) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("nfs: {}: bad value for {}: '{}'", url, key, value));
    }
    return v;
}

Result<NfsUrl> parse_nfs_url(std::string_view url) {
    constexpr std::string_view scheme = "nfs://";
    if (!url.starts_with(scheme)) {
        return fail(ErrorCode::invalid_argument, fmt::format("nfs: {}: not an nfs:// URL", url));
    }
    std::string_view rest = url.substr(scheme.size());
    std::string_view query;
    if (auto q = rest.find('?'); q != std::string_view::npos) {
        query = rest.substr(q + 1);
        rest = rest.substr(0, q);
    }
    auto slash = rest.find('/');
    NfsUrl out;
    out.host = std::string(rest.substr(0, slash));
    if (out.host.empty() || out.host.find_first_of("@:") != std::string::npos) {
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("nfs: {}: expected nfs://host/export[/dir] (no user or port)", url));
    }
    if (slash == std::string_view::npos || rest.size() == slash + 1) {
        return fail(ErrorCode::invalid_argument, fmt::format("nfs: {}: missing export path", url));
    }
    out.path = std::string(rest.substr(slash));
    while (out.path.size() > 1 && out.path.ends_with('/')) out.path.pop_back();
    while (!query.empty()) {
        auto amp = query.find('&');
        std::string_view item = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        auto eq = item.find('=');
        std::string_view key = item.substr(0, eq),
                         value = eq == std::string_view::npos ? "" : item.substr(eq + 1);
        auto number = parse_int(url, key, value);
        if (!number) return fail(number.error());
        if (key == "version") {
            if (*number != 3 && *number != 4) {
                return fail(ErrorCode::invalid_argument,
                            fmt::format("nfs: {}: version must be 3 or 4", url));
            }
            out.version = *number;
        } else if (key == "uid") {
            out.uid = *number;
        } else if (key == "gid") {
            out.gid = *number;
        } else {
            return fail(
                ErrorCode::invalid_argument,
                fmt::format("nfs: {}: unknown URL parameter '{}' (version, uid, gid)", url, key));
        }
    }
    return out;
}

// Owns one libnfs context (and its mount); libnfs contexts are not
// thread-safe, so every call holds `mutex`.
class NfsContext {
  public:
    NfsContext() : m_nfs(nfs_init_context()) {}
    ~NfsContext() {
        if (!m_nfs) return;
        if (lost) {
            abandon();
            return;
        }
        nfs_destroy_context(m_nfs);  // also closes the TCP connection
    }
    NfsContext(const NfsContext&) = delete;
    NfsContext& operator=(const NfsContext&) = delete;

    nfs_context* get() const { return m_nfs; }
    std::string error() const { return m_nfs ? nfs_get_error(m_nfs) : "out of memory"; }

    std::mutex mutex;
    // Set once a sync call gave up on a dead connection ("nfs_service
    // failed"): libnfs 5.0's sync wrappers then return with their request
    // still queued and its callback data on a stack frame that is gone.
    // Any later nfs_service() or nfs_destroy_context() runs those callbacks
    // and writes through dangling pointers (a segfault seen in CI), so a
    // lost context is never touched again.
    mutable bool lost = false;

  private:
    // Closes the socket but keeps the context's memory: freeing it would
    // run the stale callbacks. Kept reachable so leak checkers stay quiet.
    void abandon() {
        if (int fd = nfs_get_fd(m_nfs); fd >= 0) ::close(fd);
        static std::mutex guard;
        static std::vector<nfs_context*> abandoned;
        std::lock_guard lock(guard);
        abandoned.push_back(m_nfs);
    }

    nfs_context* m_nfs;
};

struct NfsShared {
    NfsContext context;
    NfsUrl url;
    std::string where;  // "nfs: nfs://host/export"
    std::uint64_t read_chunk = k_max_io, write_chunk = k_max_io;

    Error failure(std::string_view what, int rc) const {
        Error e = detail::errno_error(where, what, -rc);
        std::string detail = nfs_get_error(context.get()) ? nfs_get_error(context.get()) : "";
        // libnfs words a lost connection (autoreconnect is off) this way.
        if (detail == "nfs_service failed" || detail == "Poll failed") {
            detail = "connection to the server lost";
            context.lost = true;
        }
        if (!detail.empty()) e.message = fmt::format("{}: {}: {}", where, what, detail);
        // libnfs reports an RPC that hit nfs_set_timeout() as -EINTR with
        // "... timed out" (check_nfs3_error in libnfs 4.0's nfs_v3.c).
        if (rc == -EINTR || detail.find("timed out") != std::string::npos)
            e.code = ErrorCode::timeout;
        return e;
    }

    // The context, locked for one call; refused once the connection is lost.
    Result<std::unique_lock<std::mutex>> session(std::string_view what) {
        std::unique_lock lock(context.mutex);
        if (context.lost) {
            return fail(ErrorCode::io_error,
                        fmt::format("{}: {}: connection to the server lost", where, what));
        }
        return lock;
    }
};

class NfsVolume final : public Volume {
  public:
    NfsVolume(std::shared_ptr<NfsShared> shared, nfsfh* fh, std::string name, std::uint64_t size)
        : m_shared(std::move(shared)), m_fh(fh), m_name(std::move(name)), m_size(size) {}
    ~NfsVolume() override {
        std::lock_guard lock(m_shared->context.mutex);
        if (m_shared->context.lost) return;
        nfs_close(m_shared->context.get(), m_fh);
    }

    std::uint64_t size() const override {
        std::lock_guard lock(m_shared->context.mutex);
        return m_size;
    }

    Result<std::size_t> pread(std::span<std::byte> buf, std::uint64_t offset) override {
        auto lock = m_shared->session("read " + m_name);
        if (!lock) return fail(lock.error());
        if (offset >= m_size) return 0;
        const std::uint64_t want = std::min<std::uint64_t>(buf.size(), m_size - offset);
        std::uint64_t done = 0;
        while (done < want) {
            const std::uint64_t n = std::min(m_shared->read_chunk, want - done);
            int rc = nfs_pread(ctx(), m_fh, offset + done, n, buf.data() + done);
            if (rc < 0)
                return fail(
                    m_shared->failure(fmt::format("read {} at {}", m_name, offset + done), rc));
            if (rc == 0) break;
            done += static_cast<std::uint64_t>(rc);
        }
        return static_cast<std::size_t>(done);
    }

    Result<void> pwrite(std::span<const std::byte> buf, std::uint64_t offset) override {
        auto lock = m_shared->session("write " + m_name);
        if (!lock) return fail(lock.error());
        return write_locked(buf, offset);
    }

    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        // NFSv3 has no ALLOCATE/DEALLOCATE: zero the overlap by writing,
        // extend with SETATTR (the extension reads as zeroes, sparse).
        auto lock = m_shared->session("write " + m_name);
        if (!lock) return fail(lock.error());
        const std::uint64_t end = offset + length;
        if (end > m_size) {
            int rc = nfs_ftruncate(ctx(), m_fh, end);
            if (rc < 0) return fail(m_shared->failure(fmt::format("extend {}", m_name), rc));
        }
        const std::uint64_t old_end = std::min(end, m_size);
        m_size = std::max(m_size, end);
        std::vector<std::byte> zeroes(
            std::min<std::uint64_t>(k_max_io, std::max<std::uint64_t>(length, 1)));
        for (std::uint64_t pos = offset; pos < old_end; pos += zeroes.size()) {
            auto n = std::min<std::uint64_t>(zeroes.size(), old_end - pos);
            if (auto r = write_locked(std::span(zeroes).first(n), pos); !r) return r;
        }
        return {};
    }

    Result<void> discard(std::uint64_t, std::uint64_t) override {
        return fail(ErrorCode::unsupported, fmt::format("{}: discard {}: NFSv3 cannot deallocate",
                                                        m_shared->where, m_name));
    }

    Result<void> flush() override {
        auto lock = m_shared->session("fsync " + m_name);
        if (!lock) return fail(lock.error());
        int rc = nfs_fsync(ctx(), m_fh);
        if (rc < 0) return fail(m_shared->failure(fmt::format("fsync {}", m_name), rc));
        return {};
    }

    Result<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length) override {
        // NFSv3 has no SEEK, and libnfs 4.0's nfs_lseek does not implement
        // SEEK_DATA / SEEK_HOLE (measured: it answers with a bogus offset
        // instead of EINVAL), so trusting it would report written data as a
        // hole. The honest answer is "all data".
        std::lock_guard lock(m_shared->context.mutex);
        std::vector<Extent> extents;
        if (offset < m_size)
            extents.push_back({offset, std::min(m_size, offset + length) - offset, true});
        return extents;
    }

  private:
    nfs_context* ctx() const { return m_shared->context.get(); }

    Result<void> write_locked(std::span<const std::byte> buf, std::uint64_t offset) {
        std::uint64_t done = 0;
        while (done < buf.size()) {
            const std::uint64_t n =
                std::min<std::uint64_t>(m_shared->write_chunk, buf.size() - done);
            int rc = nfs_pwrite(ctx(), m_fh, offset + done, n, buf.data() + done);
            if (rc < 0)
                return fail(
                    m_shared->failure(fmt::format("write {} at {}", m_name, offset + done), rc));
            if (rc == 0)
                return fail(ErrorCode::io_error,
                            fmt::format("{}: write {}: no progress", m_shared->where, m_name));
            done += static_cast<std::uint64_t>(rc);
        }
        m_size = std::max(m_size, offset + buf.size());
        return {};
    }

    std::shared_ptr<NfsShared> m_shared;
    nfsfh* m_fh;
    std::string m_name;
    std::uint64_t m_size;
};

class NfsPool final : public Pool {
  public:
    explicit NfsPool(std::shared_ptr<NfsShared> shared) : m_shared(std::move(shared)) {}

    std::string_view type() const override { return "nfs"; }
    std::string url() const override { return m_shared->url.text(); }
    std::string url_of(std::string_view name) const override {
        NfsUrl u = m_shared->url;
        u.path += "/" + std::string(name);
        return u.text();
    }

    Result<std::vector<VolumeInfo>> list_volumes() override {
        std::vector<std::string> names;
        {
            auto lock = m_shared->session("list");
            if (!lock) return fail(lock.error());
            nfsdir* dir = nullptr;
            int rc = nfs_opendir(ctx(), "/", &dir);
            if (rc < 0) return fail(m_shared->failure("list", rc));
            while (nfsdirent* entry = nfs_readdir(ctx(), dir)) {
                std::string name = entry->name;
                if (name.starts_with('.')) continue;
                if (static_cast<int>(entry->type) == k_nf3reg) names.push_back(name);
            }
            nfs_closedir(ctx(), dir);
        }
        std::sort(names.begin(), names.end());
        return detail::stat_each(*this, names);
    }

    Result<VolumeInfo> stat(std::string_view name) override {
        auto st = stat_file(name);
        if (!st) return fail(st.error());
        auto volume = open(name, false);
        if (!volume) return fail(volume.error());
        auto probed = probe_image(**volume);
        if (!probed) return fail(probed.error().with_context(url_of(name)));
        // fattr3.used is what the server's disk holds for the file.
        std::uint64_t allocated = st->nfs_used != 0 ? st->nfs_used : st->nfs_blocks * 512;
        return VolumeInfo{std::string(name), probed->virtual_size, allocated, probed->format};
    }

    Result<VolumeInfo> create(std::string_view name, std::uint64_t size,
                              ImageFormat format) override {
        if (auto r = check_writable(); !r) return fail(r.error());
        if (auto r = detail::check_file_name(m_shared->where, name); !r) return fail(r.error());
        if (format != ImageFormat::raw && format != ImageFormat::qcow2) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: cannot create {} volumes (raw or qcow2)", m_shared->where,
                                    to_string(format)));
        }
        if (auto st = stat_file(name); st) {
            return fail(ErrorCode::already_exists,
                        fmt::format("{}: volume already exists", url_of(name)));
        } else if (st.error().code != ErrorCode::not_found) {
            return fail(st.error());
        }
        auto cap = capacity();
        if (!cap) return fail(cap.error());
        if (size > cap->free) {
            return fail(ErrorCode::no_space, fmt::format("{}: no space for {} bytes ({} free)",
                                                         url_of(name), size, cap->free));
        }
        nfsfh* fh = nullptr;
        {
            auto lock = m_shared->session(fmt::format("create {}", name));
            if (!lock) return fail(lock.error());
            int rc = nfs_create(ctx(), path_of(name).c_str(), O_RDWR | O_EXCL, 0660, &fh);
            if (rc < 0) {
                if (rc == -EEXIST) {
                    return fail(ErrorCode::already_exists,
                                fmt::format("{}: volume already exists", url_of(name)));
                }
                return fail(m_shared->failure(fmt::format("create {}", name), rc));
            }
        }
        Result<void> written;
        {
            NfsVolume volume(m_shared, fh, std::string(name), 0);
            written = format == ImageFormat::raw ? volume.write_zeroes(0, size)
                                                 : write_empty_qcow2(volume, size);
        }
        if (!written) {
            if (auto lock = m_shared->session("delete partial " + std::string(name)); lock) {
                nfs_unlink(ctx(), path_of(name).c_str());
            }
            return fail(written.error().with_context(fmt::format("create {}", url_of(name))));
        }
        return stat(name);
    }

    Result<void> remove(std::string_view name) override {
        if (auto r = check_writable(); !r) return r;
        if (auto r = detail::check_file_name(m_shared->where, name); !r) return fail(r.error());
        auto lock = m_shared->session(fmt::format("delete {}", name));
        if (!lock) return fail(lock.error());
        int rc = nfs_unlink(ctx(), path_of(name).c_str());
        if (rc < 0) return fail(m_shared->failure(fmt::format("delete {}", name), rc));
        return {};
    }

    Result<void> rename(std::string_view from, std::string_view to) override {
        if (auto r = check_writable(); !r) return r;
        if (auto r = detail::check_file_name(m_shared->where, from); !r) return fail(r.error());
        if (auto r = detail::check_file_name(m_shared->where, to); !r) return fail(r.error());
        // NFSv3 RENAME replaces an existing target; look first so a volume
        // is never overwritten (two calls: another client could race us).
        if (auto st = stat_file(to); st) {
            return fail(ErrorCode::already_exists,
                        fmt::format("{}: volume already exists", url_of(to)));
        } else if (st.error().code != ErrorCode::not_found) {
            return fail(st.error());
        }
        auto lock = m_shared->session(fmt::format("rename {} to {}", from, to));
        if (!lock) return fail(lock.error());
        int rc = nfs_rename(ctx(), path_of(from).c_str(), path_of(to).c_str());
        if (rc < 0) return fail(m_shared->failure(fmt::format("rename {} to {}", from, to), rc));
        return {};
    }

    Result<void> resize(std::string_view name, std::uint64_t size) override {
        if (auto r = check_writable(); !r) return r;
        auto info = stat(name);
        if (!info) return fail(info.error());
        if (info->format != ImageFormat::raw) {
            return fail(ErrorCode::unsupported,
                        fmt::format("{}: resizing {} images is not supported", url_of(name),
                                    to_string(info->format)));
        }
        auto lock = m_shared->session(fmt::format("resize {}", name));
        if (!lock) return fail(lock.error());
        int rc = nfs_truncate(ctx(), path_of(name).c_str(), size);
        if (rc < 0) return fail(m_shared->failure(fmt::format("resize {}", name), rc));
        return {};
    }

    Result<Capacity> capacity() override {
        auto lock = m_shared->session("statvfs");
        if (!lock) return fail(lock.error());
        nfs_statvfs_64 st{};
        int rc = nfs_statvfs64(ctx(), "/", &st);
        if (rc < 0) return fail(m_shared->failure("statvfs", rc));
        return Capacity{st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize};
    }

    Result<std::unique_ptr<Volume>> open(std::string_view name, bool writable) override {
        if (writable) {
            if (auto r = check_writable(); !r) return fail(r.error());
        }
        if (auto r = detail::check_file_name(m_shared->where, name); !r) return fail(r.error());
        auto st = stat_file(name);
        if (!st) return fail(st.error());
        auto lock = m_shared->session(fmt::format("open {}", name));
        if (!lock) return fail(lock.error());
        nfsfh* fh = nullptr;
        int rc = nfs_open(ctx(), path_of(name).c_str(), writable ? O_RDWR : O_RDONLY, &fh);
        if (rc < 0) return fail(m_shared->failure(fmt::format("open {}", name), rc));
        return std::make_unique<NfsVolume>(m_shared, fh, std::string(name), st->nfs_size);
    }

    Result<BlockdevChain> describe_for_qemu(std::string_view name,
                                            const QemuNodeOptions& options) override {
        if (m_shared->url.version != 3) {
            return fail(ErrorCode::unsupported,
                        fmt::format("{}: QEMU's nfs driver speaks only NFSv3; use a version=3 URL",
                                    url_of(name)));
        }
        auto info = stat(name);
        if (!info) return fail(info.error());
        BlockdevChain chain;
        // BlockdevOptionsNfs (qapi/block-core.json, QEMU 7.2).
        chain.protocol = {{"driver", "nfs"},
                          {"server", {{"type", "inet"}, {"host", m_shared->url.host}}},
                          {"path", m_shared->url.path + "/" + std::string(name)}};
        if (m_shared->url.uid) chain.protocol["user"] = *m_shared->url.uid;
        if (m_shared->url.gid) chain.protocol["group"] = *m_shared->url.gid;
        detail::finish_chain(chain, info->format, options);
        return chain;
    }

  private:
    nfs_context* ctx() const { return m_shared->context.get(); }
    // libnfs 4.0's NFSv4 WRITE fails to encode ("ZDR error: Failed to encode
    // COMPOUND4args", measured against nfs-ganesha 4.3 at 4 KiB..1 MiB), so
    // NFSv4 pools are read-only until libnfs can write.
    Result<void> check_writable() const {
        if (m_shared->url.version == 3) return {};
        return fail(
            ErrorCode::unsupported,
            fmt::format(
                "{}: NFSv4 pools are read-only (libnfs 4.0 cannot write over v4); use NFSv3",
                m_shared->where));
    }
    static std::string path_of(std::string_view name) { return "/" + std::string(name); }

    Result<nfs_stat_64> stat_file(std::string_view name) {
        if (auto r = detail::check_file_name(m_shared->where, name); !r) return fail(r.error());
        auto lock = m_shared->session(fmt::format("stat {}", name));
        if (!lock) return fail(lock.error());
        nfs_stat_64 st{};
        int rc = nfs_stat64(ctx(), path_of(name).c_str(), &st);
        if (rc == -ENOENT)
            return fail(ErrorCode::not_found,
                        fmt::format("{}: volume does not exist", url_of(name)));
        if (rc < 0) return fail(m_shared->failure(fmt::format("stat {}", name), rc));
        if ((st.nfs_mode & S_IFMT) != 0 && !S_ISREG(st.nfs_mode)) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: not a regular file", url_of(name)));
        }
        return st;
    }

    std::shared_ptr<NfsShared> m_shared;
};

}  // namespace

Result<std::unique_ptr<Pool>> make_nfs_pool(std::string_view url_text, const PoolOptions& options) {
    auto url = parse_nfs_url(url_text);
    if (!url) return fail(url.error());
    auto shared = std::make_shared<NfsShared>();
    shared->url = *url;
    shared->where = "nfs: " + url->text();
    nfs_context* nfs = shared->context.get();
    if (!nfs) return fail(ErrorCode::io_error, shared->where + ": cannot create libnfs context");
    if (nfs_set_version(nfs, url->version) != 0) {
        return fail(ErrorCode::unsupported,
                    fmt::format("{}: libnfs cannot speak NFSv{}", shared->where, url->version));
    }
    if (url->uid) nfs_set_uid(nfs, *url->uid);
    if (url->gid) nfs_set_gid(nfs, *url->gid);
    // A CLI must not hang on a dead server: bound every sync call (libnfs
    // counts whole seconds), and do not reconnect forever (libnfs's default).
    const auto seconds =
        std::max<std::int64_t>(1, std::chrono::ceil<std::chrono::seconds>(options.timeout).count());
    nfs_set_timeout(nfs, static_cast<int>(seconds * 1000));
    nfs_set_autoreconnect(nfs, 0);
    nfs_set_dircache(nfs, 0);  // other clients create volumes too
    int rc = nfs_mount(nfs, url->host.c_str(), url->path.c_str());
    if (rc < 0) {
        Error e = shared->failure("mount", rc);
        return fail(
            e.code == ErrorCode::timeout ? e.code : ErrorCode::io_error,
            fmt::format("nfs: mount {}:{}: {}", url->host, url->path, shared->context.error()));
    }
    // One RPC per chunk, at most what the server negotiated (libnfs 4.0's
    // NFSv4 encoder fails on WRITEs larger than that instead of splitting).
    if (auto m = nfs_get_readmax(nfs); m > 0) shared->read_chunk = std::min(k_max_io, m);
    if (auto m = nfs_get_writemax(nfs); m > 0) shared->write_chunk = std::min(k_max_io, m);
    return std::make_unique<NfsPool>(std::move(shared));
}

}  // namespace blockmig::pools
