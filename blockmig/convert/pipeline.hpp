// Private to blockmig/convert/: the copy loop between an ImageReader and an
// ImageWriter (see blockmig/convert.hpp for the design).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "pools/image/image.hpp"

namespace blockmig::convert {

struct CopyOptions {
    std::size_t request_size = 256 << 10;  // a multiple of 4 KiB
    unsigned in_flight = 16;               // requests buffered at once
    unsigned readers = 0;                  // reader threads; 0 = min(in_flight, CPUs + 2)
    std::uint64_t target_size = 0;         // >= the source size, multiple of 512
};

struct CopyStats {
    std::uint64_t data_total = 0;  // allocated bytes the source map announced
    std::uint64_t data_done = 0;
    std::uint64_t zero_bytes = 0;  // bytes handed to write_zeroes
};

// Called from the copying thread after each request is written.
using CopyProgress = std::function<void(const CopyStats&)>;

// Copies every byte of `source` into `writer` in increasing offset order
// (not calling finish()). cancelled if `cancel` turns true; the first read
// or write error otherwise.
Result<CopyStats> copy_image(pools::image::ImageReader& source, pools::image::ImageWriter& writer,
                             const CopyOptions& options, const CopyProgress& progress,
                             const std::atomic<bool>& cancel);

}  // namespace blockmig::convert
