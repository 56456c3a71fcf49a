#include "image_lock.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace blockmig::migrate {

namespace {

// block/file-posix.c: RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE; the bits of
// include/block/block-common.h's BlkPermission.
constexpr off_t k_perm_base = 100;
constexpr off_t k_shared_base = 200;
constexpr off_t k_consistent_read = 0;
constexpr off_t k_write = 1;

struct flock at(short type, off_t byte) {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    return fl;
}

Result<void> hold(int fd, off_t byte, const std::string& path) {
    auto fl = at(F_RDLCK, byte);
    if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return {};
    // EAGAIN: someone holds a write lock there; QEMU never does, so it is
    // not a QEMU, but it still says the file is busy.
    return fail(errno == EAGAIN || errno == EACCES ? ErrorCode::invalid_state : ErrorCode::io_error,
                fmt::format("{}: lock byte {}: {}", path, byte, std::strerror(errno)));
}

// Whether another open file holds a lock on `byte` (F_OFD_GETLK ignores our own).
Result<bool> taken(int fd, off_t byte, const std::string& path) {
    auto fl = at(F_WRLCK, byte);
    if (::fcntl(fd, F_OFD_GETLK, &fl) != 0)
        return fail(ErrorCode::io_error,
                    fmt::format("{}: test lock byte {}: {}", path, byte, std::strerror(errno)));
    return fl.l_type != F_UNLCK;
}

std::unexpected<Error> in_use(const std::string& path, const char* what) {
    return fail(ErrorCode::invalid_state,
                fmt::format("{} is in use: another process {} (is its QEMU still running? "
                            "stop it first, or migrate it live with --src-qmp)",
                            path, what));
}

}  // namespace

ImageLock::ImageLock(ImageLock&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}

ImageLock& ImageLock::operator=(ImageLock&& other) noexcept {
    if (this != &other) {
        if (m_fd >= 0) ::close(m_fd);
        m_fd = std::exchange(other.m_fd, -1);
    }
    return *this;
}

// Closing the descriptor drops its OFD locks.
ImageLock::~ImageLock() {
    if (m_fd >= 0) ::close(m_fd);
}

// Lock first, then test, as QEMU does (raw_handle_perm_lock: apply, then
// check): a QEMU that opens the image between the two steps either sees our
// byte 201 and refuses write, or holds byte 101 when we test it.
Result<ImageLock> ImageLock::take(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(errno == ENOENT ? ErrorCode::not_found : ErrorCode::io_error,
                    fmt::format("{}: {}", path, std::strerror(errno)));
    ImageLock lock(fd);
    // Byte 100: we read consistently; byte 201: we share no write. These
    // are the bytes `qemu-img convert` holds on its source.
    for (off_t byte : {k_perm_base + k_consistent_read, k_shared_base + k_write})
        if (auto r = hold(fd, byte, path); !r) return fail(r.error());
    auto writer = taken(fd, k_perm_base + k_write, path);
    if (!writer) return fail(writer.error());
    if (*writer) return in_use(path, "has it open for writing");
    auto denies = taken(fd, k_shared_base + k_consistent_read, path);
    if (!denies) return fail(denies.error());
    if (*denies) return in_use(path, "denies consistent reads of it");
    return lock;
}

}  // namespace blockmig::migrate
