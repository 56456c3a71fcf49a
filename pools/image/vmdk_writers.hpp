// The two VMDK writers behind create_vmdk_writer. Private to pools/image/.
#pragma once

#include "pools/image/vmdk.hpp"

namespace blockmig::pools::image::vmdk {

// Options are checked by the caller (check_write_options).
Result<std::unique_ptr<ImageWriter>> make_stream_writer(std::unique_ptr<Volume> volume,
                                                        std::uint64_t virtual_size,
                                                        const VmdkWriteOptions& options);
Result<std::unique_ptr<ImageWriter>> make_sparse_writer(std::unique_ptr<Volume> volume,
                                                        std::uint64_t virtual_size,
                                                        const VmdkWriteOptions& options);

}  // namespace blockmig::pools::image::vmdk
