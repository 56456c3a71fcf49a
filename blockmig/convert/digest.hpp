// Private to blockmig/: the SHA-256 digest of an image's guest-visible
// contents, sparse-aware like compare.cpp (zero ranges of the map are not
// read, fed to the hash from a zero buffer). For a raw image it equals
// `sha256sum FILE`; for any image `qemu-img convert -O raw IMG - | sha256sum`,
// so a user can check a copy with stock tools.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "pools/image/image.hpp"

namespace blockmig::convert {

// Called after each chunk with the bytes hashed so far.
using DigestProgress = std::function<void(std::uint64_t done)>;

// Lower-case hex SHA-256 of the first `size` bytes of `image`'s contents.
// Errors: the reader's; cancelled when `cancel` turns true.
Result<std::string> image_digest(pools::image::ImageReader& image, std::uint64_t size,
                                 const std::atomic<bool>& cancel,
                                 const DigestProgress& progress = {});

}  // namespace blockmig::convert
