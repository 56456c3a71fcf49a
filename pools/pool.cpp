#include "pools/pool.hpp"

#include <fmt/core.h>

namespace blockmig::pools {

std::string_view to_string(ImageFormat format) {
    switch (format) {
        case ImageFormat::raw:
            return "raw";
        case ImageFormat::qcow2:
            return "qcow2";
        case ImageFormat::vmdk:
            return "vmdk";
        case ImageFormat::unknown:
            return "unknown";
    }
    return "unknown";
}

Result<ImageFormat> parse_image_format(std::string_view text) {
    if (text == "raw") return ImageFormat::raw;
    if (text == "qcow2") return ImageFormat::qcow2;
    if (text == "vmdk") return ImageFormat::vmdk;
    return fail(ErrorCode::invalid_argument,
                fmt::format("unknown image format '{}' (expected raw, qcow2 or vmdk)", text));
}

Result<void> read_full(Volume& volume, std::span<std::byte> buf, std::uint64_t offset) {
    std::size_t done = 0;
    while (done < buf.size()) {
        auto n = volume.pread(buf.subspan(done), offset + done);
        if (!n) return fail(n.error());
        if (*n == 0) {
            return fail(ErrorCode::io_error, fmt::format("read {} bytes at {}: volume ends at {}",
                                                         buf.size(), offset, offset + done));
        }
        done += *n;
    }
    return {};
}

}  // namespace blockmig::pools
