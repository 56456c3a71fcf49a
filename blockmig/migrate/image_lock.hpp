// The byte-range locks QEMU's file-posix driver puts on an image it has
// open, read and taken the way qemu-img does, so blockmig copies a stopped
// guest's file only while no QEMU writes it and none can start to.
//
// QEMU (block/file-posix.c, raw_apply_lock_bytes / raw_check_lock_bytes)
// takes one shared OFD lock per permission it holds at byte 100 + bit and
// one per permission it does not share with others at byte 200 + bit
// (bit 0 consistent read, bit 1 write). A writer therefore holds byte 101;
// `qemu-img info` fails with "Failed to get shared "write" lock / Is another
// process using the image?" when F_OFD_GETLK says byte 101 could not be
// write-locked.
#pragma once

#include <string>

#include "qmp/error.hpp"

namespace blockmig::migrate {

// An open read-only descriptor of the image holding QEMU's locks for
// "I read consistently and share no write" (bytes 100 and 201) until it is
// destroyed: a QEMU started meanwhile fails to open the image writable
// ("Failed to get "write" lock") instead of changing it under the copy.
class ImageLock {
  public:
    ImageLock(ImageLock&& other) noexcept;
    ImageLock& operator=(ImageLock&& other) noexcept;
    ImageLock(const ImageLock&) = delete;
    ImageLock& operator=(const ImageLock&) = delete;
    ~ImageLock();

    // Takes the locks, then checks that no other process holds write on the
    // image (byte 101) or denies consistent reads (byte 200). Errors:
    // not_found (no file), invalid_state "in use" when another open file
    // holds those bytes (a running QEMU; OFD locks name no pid), io_error.
    static Result<ImageLock> take(const std::string& path);

  private:
    explicit ImageLock(int fd) : m_fd(fd) {}
    int m_fd = -1;
};

}  // namespace blockmig::migrate
