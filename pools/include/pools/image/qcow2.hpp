// qcow2 images, read and written natively (QEMU's docs/interop/qcow2.txt is
// the spec). See pools/image/image.hpp for the reader / writer contracts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "pools/image/image.hpp"

namespace blockmig::pools::image {

// Opens `name` in `pool` as qcow2 v2 or v3: zlib and zstd compressed
// clusters, zero clusters, extended L2 (subclusters) and a backing chain
// (relative names resolve next to the image, absolute paths and nfs:// URLs
// through pools/address.hpp; the backing format extension is honoured, else
// the backing file is probed). protocol error naming the file and the field
// for a bad magic, truncated header, absurd sizes, L1/L2 entries past the
// end of the file, a chain loop or a chain deeper than 64; unsupported for
// encryption and external data files. read() is thread-safe; L2 tables are
// cached within a fixed memory bound.
Result<std::unique_ptr<ImageReader>> open_qcow2(Pool& pool, const std::string& name);

enum class Qcow2Compression { zlib, zstd };
enum class Qcow2Preallocation { off, metadata };

struct Qcow2WriteOptions {
    std::uint32_t cluster_size = 65536;  // a power of two, 512 .. 2 MiB
    bool compress = false;               // compress every data cluster that shrinks
    Qcow2Compression compression_type = Qcow2Compression::zlib;
    int compression_level = 0;  // 0: the codec's default
    // metadata: every L2 table and data cluster allocated up front (data
    // clusters stay sparse on files), as `qemu-img create -o preallocation=metadata`.
    Qcow2Preallocation preallocation = Qcow2Preallocation::off;
    unsigned threads = 0;  // compression threads; 0 = one per CPU
};

// A qcow2 v3 writer (16-bit refcounts) on `volume`, which should be empty or
// a LUN whose old contents may be overwritten. Without preallocation the
// image is laid out as a stream: header, then data clusters, L2 tables and
// refcount blocks in the order they fill, then L1 and refcount table; memory
// stays bounded whatever the image size. invalid_argument for bad options
// (compression with preallocation, cluster size) or a virtual size that is 0
// or not a multiple of 512.
Result<std::unique_ptr<ImageWriter>> create_qcow2_writer(std::unique_ptr<Volume> volume,
                                                         std::uint64_t virtual_size,
                                                         const Qcow2WriteOptions& options);

}  // namespace blockmig::pools::image
