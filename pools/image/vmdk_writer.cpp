// create_vmdk_writer: checks the options and picks the writer.
#include <fmt/format.h>

#include "pools/image/vmdk.hpp"
#include "vmdk_write_common.hpp"
#include "vmdk_writers.hpp"

namespace blockmig::pools::image {

Result<std::unique_ptr<ImageWriter>> create_vmdk_writer(std::unique_ptr<Volume> volume,
                                                        std::uint64_t virtual_size,
                                                        const VmdkWriteOptions& options) {
    if (auto r = vmdk::check_write_options(options, virtual_size); !r) return fail(r.error());
    // The footer of a stream must end the file, and stale bytes past the
    // grains would confuse readers of either subformat: start from empty.
    if (volume->size() != 0)
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("vmdk: the target volume must be empty (it has {} bytes)", volume->size()));
    if (options.subformat == "streamOptimized")
        return vmdk::make_stream_writer(std::move(volume), virtual_size, options);
    return vmdk::make_sparse_writer(std::move(volume), virtual_size, options);
}

}  // namespace blockmig::pools::image
