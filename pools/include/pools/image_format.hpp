// Image formats on any Volume (file, NFS, iSCSI, memory): probing by magic,
// and writing an empty qcow2 without shelling out to qemu-img.
#pragma once

#include <cstdint>

#include "pools/pool.hpp"

namespace blockmig::pools {

struct ProbedImage {
    ImageFormat format = ImageFormat::raw;
    // qcow2: the header's size; vmdk: the capacity of a sparse extent or the
    // sum of a descriptor's extents; raw: the volume size.
    std::uint64_t virtual_size = 0;
};

// Detects qcow2 ("QFI\xfb"), vmdk (sparse extent "KDMV" or a text descriptor)
// or raw (anything else). io_error if the volume cannot be read; protocol if
// a qcow2 header is truncated or has an impossible cluster size.
Result<ProbedImage> probe_image(Volume& volume);

// Writes an empty qcow2 v3 image of `virtual_size` bytes at the start of the
// volume: 64 KiB clusters, 16-bit refcounts, header + refcount table +
// refcount block + zeroed L1 table (qemu-img check finds no errors).
// invalid_argument if virtual_size is 0 or not a multiple of 512, or the
// image would not fit on a fixed-size volume.
Result<void> write_empty_qcow2(Volume& volume, std::uint64_t virtual_size);

// Bytes the empty qcow2 of `virtual_size` occupies.
std::uint64_t empty_qcow2_file_size(std::uint64_t virtual_size);

}  // namespace blockmig::pools
