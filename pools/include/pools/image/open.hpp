// Opening an image of any supported format by name, with format probing.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "pools/image/image.hpp"

namespace blockmig::pools::image {

// Opens `name` in `pool` as `format`, or probes it when none is given: the
// qcow2 magic, a VMDK header or descriptor, else raw. A forced format is
// never second-guessed (`-f raw` reads a qcow2 file's bytes). A name ending
// in .qcow2 or .vmdk whose first bytes are not that format is a protocol
// error rather than silently raw. not_found if the volume does not exist.
Result<std::unique_ptr<ImageReader>> open_image(Pool& pool, const std::string& name,
                                                std::optional<ImageFormat> format = std::nullopt);

}  // namespace blockmig::pools::image
