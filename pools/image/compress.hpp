// Private to pools/image/: one-cluster compression for qcow2 (raw deflate as
// QEMU's qcow2_zlib_compress writes it, or a zstd frame as
// qcow2_zstd_compress does). libdeflate is several times faster than zlib
// at the same ratio; zstd comes from libzstd. Each thread keeps its own
// (de)compressor state, so all functions are thread-safe.
#pragma once

#include <cstddef>
#include <optional>
#include <span>

namespace blockmig::pools::image::detail {

enum class Codec { deflate, zstd };

// Compresses `in` into `out`; the size written, or nullopt if it does not fit
// (the caller then stores the data uncompressed).
std::optional<std::size_t> compress(Codec codec, int level, std::span<const std::byte> in,
                                    std::span<std::byte> out);

// Decompresses into exactly out.size() bytes. `in` may carry trailing bytes
// after the compressed stream (qcow2 stores sector-rounded lengths). false if
// the data is corrupt or yields fewer bytes.
bool decompress(Codec codec, std::span<const std::byte> in, std::span<std::byte> out);

}  // namespace blockmig::pools::image::detail
