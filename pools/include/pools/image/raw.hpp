// Raw images: the volume's bytes are the disk.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "pools/image/image.hpp"

namespace blockmig::pools::image {

// A raw reader over `name` in `pool`; map() comes from the volume's block
// status (holes on files, unmapped ranges on LUNs). read() is thread-safe.
Result<std::unique_ptr<ImageReader>> open_raw(Pool& pool, const std::string& name);

struct RawWriteOptions {
    // The volume already reads as zeroes (a freshly created sparse file), so
    // zero ranges need no I/O. Otherwise (a LUN, a reused file) they are
    // written as zeroes / unmapped.
    bool target_zeroed = false;
};

// A sparse raw writer. The volume must be empty and growable (a file) or at
// least virtual_size bytes (a LUN): invalid_argument otherwise. finish()
// extends a file to virtual_size and flushes.
Result<std::unique_ptr<ImageWriter>> create_raw_writer(std::unique_ptr<Volume> volume,
                                                       std::uint64_t virtual_size,
                                                       const RawWriteOptions& options);

}  // namespace blockmig::pools::image
