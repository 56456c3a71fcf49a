// Private to pools/image/: opening the next image of a backing chain, with
// loop and depth checks shared by every format that has backing files.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pools/image/image.hpp"

namespace blockmig::pools::image::detail {

constexpr std::size_t k_max_chain_depth = 64;

// The images opened so far in this chain (their url_of), nearest last.
struct ChainState {
    std::vector<std::string> seen;
};

// An opened backing image and the pool it lives in when that is not the
// parent's pool (declared first, so it outlives the reader).
struct OpenedBacking {
    std::unique_ptr<Pool> own_pool;
    std::unique_ptr<ImageReader> reader;
};

// Opens `backing` as named inside `image` (of `pool`): a plain name lives in
// the same pool; a relative path resolves next to the image; an absolute
// path or URL through resolve_volume. protocol error for a loop or a chain
// deeper than k_max_chain_depth.
Result<OpenedBacking> open_backing(Pool& pool, const std::string& image, const std::string& backing,
                                   std::optional<ImageFormat> format, ChainState& chain);

// open_image with the chain bookkeeping (the public open_image starts a chain).
Result<std::unique_ptr<ImageReader>> open_in_chain(Pool& pool, const std::string& name,
                                                   std::optional<ImageFormat> format,
                                                   ChainState& chain);

// The qcow2 reader within a chain.
Result<std::unique_ptr<ImageReader>> open_qcow2_in_chain(Pool& pool, const std::string& name,
                                                         ChainState& chain);

}  // namespace blockmig::pools::image::detail
