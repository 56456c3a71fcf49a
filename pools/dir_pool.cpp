// A directory of image files.
#include <dirent.h>
#include <fcntl.h>
#include <fmt/core.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>  // renameat2, RENAME_NOREPLACE
#include <filesystem>
#include <mutex>
#include <vector>

#include "common.hpp"
#include "pools/image_format.hpp"
#include "pools/pools.hpp"

namespace blockmig::pools {

namespace {

using detail::errno_error;

// Move-only owner of a file descriptor.
class Fd {
  public:
    explicit Fd(int fd = -1) : m_fd(fd) {}
    ~Fd() {
        if (m_fd >= 0) ::close(m_fd);
    }
    Fd(Fd&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) {
            if (m_fd >= 0) ::close(m_fd);
            m_fd = std::exchange(other.m_fd, -1);
        }
        return *this;
    }
    int get() const { return m_fd; }

  private:
    int m_fd;
};

// Write-back is started every this many bytes written (see FileVolume::pwrite).
constexpr std::uint64_t k_writeback_chunk = 8u << 20;

class FileVolume final : public Volume {
  public:
    FileVolume(Fd fd, std::string path) : m_fd(std::move(fd)), m_path(std::move(path)) {}

    std::uint64_t size() const override {
        struct stat st {};
        if (::fstat(m_fd.get(), &st) != 0) return 0;
        return static_cast<std::uint64_t>(st.st_size);
    }

    Result<std::size_t> pread(std::span<std::byte> buf, std::uint64_t offset) override {
        for (;;) {
            ssize_t n = ::pread(m_fd.get(), buf.data(), buf.size(), static_cast<off_t>(offset));
            if (n >= 0) return static_cast<std::size_t>(n);
            if (errno != EINTR)
                return fail(errno_error(m_path, fmt::format("read at {}", offset), errno));
        }
    }

    Result<void> pwrite(std::span<const std::byte> buf, std::uint64_t offset) override {
        std::size_t done = 0;
        while (done < buf.size()) {
            ssize_t n = ::pwrite(m_fd.get(), buf.data() + done, buf.size() - done,
                                 static_cast<off_t>(offset + done));
            if (n < 0) {
                if (errno == EINTR) continue;
                return fail(errno_error(m_path, fmt::format("write at {}", offset + done), errno));
            }
            done += static_cast<std::size_t>(n);
        }
        start_writeback(offset, buf.size());
        return {};
    }

    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        if (length == 0) return {};
        const std::uint64_t old_size = size();
        if (offset + length > old_size &&
            ::ftruncate(m_fd.get(), static_cast<off_t>(offset + length)) != 0) {
            return fail(errno_error(m_path, "extend", errno));
        }
        if (offset >= old_size) return {};  // the extension reads as zeroes already
        const std::uint64_t inside = std::min(length, old_size - offset);
        if (::fallocate(m_fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        static_cast<off_t>(offset), static_cast<off_t>(inside)) == 0) {
            return {};
        }
        if (errno != EOPNOTSUPP) return fail(errno_error(m_path, "punch hole", errno));
        std::vector<std::byte> zeroes(std::min<std::uint64_t>(inside, 1 << 20));
        for (std::uint64_t pos = 0; pos < inside; pos += zeroes.size()) {
            auto n = std::min<std::uint64_t>(zeroes.size(), inside - pos);
            if (auto r = pwrite(std::span(zeroes).first(n), offset + pos); !r) return r;
        }
        return {};
    }

    Result<void> discard(std::uint64_t offset, std::uint64_t length) override {
        const std::uint64_t sz = size();
        if (offset >= sz) return {};
        length = std::min(length, sz - offset);
        if (::fallocate(m_fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
            return fail(errno_error(m_path, "discard (punch hole)", errno));
        }
        return {};
    }

    Result<void> flush() override {
        if (::fdatasync(m_fd.get()) != 0) return fail(errno_error(m_path, "fdatasync", errno));
        return {};
    }

    Result<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length) override {
        return detail::extents_by_seek(
            offset, length, size(),
            [this](std::uint64_t pos, int whence) -> Result<std::optional<std::uint64_t>> {
                off_t r = ::lseek(m_fd.get(), static_cast<off_t>(pos), whence);
                if (r >= 0) return static_cast<std::uint64_t>(r);
                if (errno == ENXIO) return std::nullopt;
                if (errno == EINVAL || errno == EOPNOTSUPP) {
                    return fail(ErrorCode::unsupported, m_path + ": SEEK_DATA unsupported");
                }
                return fail(errno_error(m_path, "lseek", errno));
            });
    }

  private:
    // A long writer (convert: gigabytes in one go) would otherwise leave
    // everything dirty in the page cache for flush() to push out at the end,
    // with the disk idle during the copy. Starting write-back of each 8 MiB
    // written lets the disk work while the copy goes on, so the final
    // fdatasync finds little left. It only starts I/O and never waits for
    // it: durability still comes from flush(), which also reports any error
    // of this write-back (the kernel records it against the file).
    void start_writeback(std::uint64_t offset, std::uint64_t length) {
        std::lock_guard lock(m_writeback_mutex);
        m_dirty_lo = m_dirty_bytes == 0 ? offset : std::min(m_dirty_lo, offset);
        m_dirty_hi = std::max(m_dirty_hi, offset + length);
        m_dirty_bytes += length;
        if (m_dirty_bytes < k_writeback_chunk) return;
        (void)::sync_file_range(m_fd.get(), static_cast<off_t>(m_dirty_lo),
                                static_cast<off_t>(m_dirty_hi - m_dirty_lo), SYNC_FILE_RANGE_WRITE);
        m_dirty_bytes = 0;
        m_dirty_hi = 0;
    }

    Fd m_fd;
    std::string m_path;
    std::mutex m_writeback_mutex;
    std::uint64_t m_dirty_lo = 0;  // range written since write-back was last started
    std::uint64_t m_dirty_hi = 0;
    std::uint64_t m_dirty_bytes = 0;
};

class DirPool final : public Pool {
  public:
    explicit DirPool(std::string path) : m_path(std::move(path)) {}

    std::string_view type() const override { return "dir"; }
    std::string url() const override { return m_path; }
    std::string url_of(std::string_view name) const override {
        return m_path + "/" + std::string(name);
    }

    Result<std::vector<VolumeInfo>> list_volumes() override {
        std::vector<std::string> names;
        DIR* dir = ::opendir(m_path.c_str());
        if (!dir) return fail(errno_error(m_path, "list", errno));
        while (dirent* entry = ::readdir(dir)) {
            std::string name = entry->d_name;
            if (name.starts_with('.')) continue;  // ., .., hidden and NFS silly-rename files
            struct stat st {};
            if (::fstatat(::dirfd(dir), name.c_str(), &st, 0) == 0 && S_ISREG(st.st_mode)) {
                names.push_back(name);
            }
        }
        ::closedir(dir);
        std::sort(names.begin(), names.end());
        return detail::stat_each(*this, names);
    }

    Result<VolumeInfo> stat(std::string_view name) override {
        if (auto r = detail::check_file_name(m_path, name); !r) return fail(r.error());
        auto volume = open_file(name, false);
        if (!volume) return fail(volume.error());
        struct stat st {};
        if (::stat(url_of(name).c_str(), &st) != 0)
            return fail(errno_error(url_of(name), "stat", errno));
        auto probed = probe_image(**volume);
        if (!probed) return fail(probed.error().with_context(url_of(name)));
        return VolumeInfo{std::string(name), probed->virtual_size,
                          static_cast<std::uint64_t>(st.st_blocks) * 512, probed->format};
    }

    Result<VolumeInfo> create(std::string_view name, std::uint64_t size,
                              ImageFormat format) override {
        if (auto r = detail::check_file_name(m_path, name); !r) return fail(r.error());
        if (format != ImageFormat::raw && format != ImageFormat::qcow2) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: cannot create {} volumes (raw or qcow2)", m_path,
                                    to_string(format)));
        }
        const std::string path = url_of(name);
        auto cap = capacity();
        if (!cap) return fail(cap.error());
        if (size > cap->free) {
            return fail(ErrorCode::no_space,
                        fmt::format("{}: no space for {} bytes ({} free)", path, size, cap->free));
        }
        Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0660));
        if (fd.get() < 0) {
            if (errno == EEXIST) {
                return fail(ErrorCode::already_exists,
                            fmt::format("{}: volume already exists", path));
            }
            return fail(errno_error(path, "create", errno));
        }
        FileVolume volume(std::move(fd), path);
        Result<void> written = format == ImageFormat::raw
                                   ? volume.write_zeroes(0, size)  // sparse extension
                                   : write_empty_qcow2(volume, size);
        if (!written) {
            ::unlink(path.c_str());
            return fail(written.error().with_context(fmt::format("{}: create", path)));
        }
        return stat(name);
    }

    Result<void> remove(std::string_view name) override {
        if (auto r = detail::check_file_name(m_path, name); !r) return fail(r.error());
        if (::unlink(url_of(name).c_str()) != 0)
            return fail(errno_error(url_of(name), "delete", errno));
        return {};
    }

    Result<void> rename(std::string_view from, std::string_view to) override {
        if (auto r = detail::check_file_name(m_path, from); !r) return fail(r.error());
        if (auto r = detail::check_file_name(m_path, to); !r) return fail(r.error());
        const std::string old_path = url_of(from);
        const std::string new_path = url_of(to);
        if (::renameat2(AT_FDCWD, old_path.c_str(), AT_FDCWD, new_path.c_str(), RENAME_NOREPLACE) ==
            0)
            return {};
        if (errno != EINVAL && errno != ENOSYS)
            return fail(errno_error(old_path, fmt::format("rename to {}", to), errno));
        // The filesystem has no RENAME_NOREPLACE: link() refuses an existing
        // name just the same, then the old name goes.
        if (::link(old_path.c_str(), new_path.c_str()) != 0)
            return fail(errno_error(old_path, fmt::format("rename to {}", to), errno));
        if (::unlink(old_path.c_str()) != 0)
            return fail(errno_error(old_path, "unlink after rename", errno));
        return {};
    }

    Result<void> resize(std::string_view name, std::uint64_t size) override {
        auto info = stat(name);
        if (!info) return fail(info.error());
        if (info->format != ImageFormat::raw) {
            return fail(ErrorCode::unsupported,
                        fmt::format("{}: resizing {} images is not supported", url_of(name),
                                    to_string(info->format)));
        }
        if (::truncate(url_of(name).c_str(), static_cast<off_t>(size)) != 0) {
            return fail(errno_error(url_of(name), "resize", errno));
        }
        return {};
    }

    Result<Capacity> capacity() override {
        struct statvfs st {};
        if (::statvfs(m_path.c_str(), &st) != 0) return fail(errno_error(m_path, "statvfs", errno));
        return Capacity{static_cast<std::uint64_t>(st.f_blocks) * st.f_frsize,
                        static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize};
    }

    Result<std::unique_ptr<Volume>> open(std::string_view name, bool writable) override {
        if (auto r = detail::check_file_name(m_path, name); !r) return fail(r.error());
        auto volume = open_file(name, writable);
        if (!volume) return fail(volume.error());
        return std::unique_ptr<Volume>(std::move(*volume));
    }

    Result<BlockdevChain> describe_for_qemu(std::string_view name,
                                            const QemuNodeOptions& options) override {
        auto info = stat(name);
        if (!info) return fail(info.error());
        BlockdevChain chain;
        chain.protocol = {{"driver", "file"}, {"filename", url_of(name)}};
        // aio=native needs O_DIRECT (QEMU refuses it otherwise).
        if (options.cache_direct) chain.protocol["aio"] = "native";
        detail::finish_chain(chain, info->format, options);
        return chain;
    }

  private:
    Result<std::unique_ptr<FileVolume>> open_file(std::string_view name, bool writable) {
        const std::string path = url_of(name);
        Fd fd(::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC));
        if (fd.get() < 0) {
            if (errno == ENOENT)
                return fail(ErrorCode::not_found, fmt::format("{}: volume does not exist", path));
            return fail(errno_error(path, "open", errno));
        }
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0) return fail(errno_error(path, "stat", errno));
        if (!S_ISREG(st.st_mode)) {
            return fail(ErrorCode::invalid_argument, fmt::format("{}: not a regular file", path));
        }
        return std::make_unique<FileVolume>(std::move(fd), path);
    }

    std::string m_path;
};

}  // namespace

Result<std::unique_ptr<Pool>> make_dir_pool(std::string_view path) {
    std::error_code ec;
    std::filesystem::path p = std::filesystem::absolute(std::filesystem::path(path), ec);
    if (ec) return fail(ErrorCode::invalid_argument, fmt::format("{}: {}", path, ec.message()));
    p = p.lexically_normal();
    std::string text = p.string();
    while (text.size() > 1 && text.ends_with('/')) text.pop_back();
    struct stat st {};
    if (::stat(text.c_str(), &st) != 0) {
        if (errno == ENOENT) {
            return fail(ErrorCode::not_found,
                        fmt::format("dir pool {}: directory does not exist", text));
        }
        return fail(errno_error("dir pool " + text, "stat", errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        return fail(ErrorCode::invalid_argument, fmt::format("dir pool {}: not a directory", text));
    }
    return std::make_unique<DirPool>(std::move(text));
}

}  // namespace blockmig::pools
