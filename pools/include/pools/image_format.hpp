// Image formats on any Volume (file, NFS, iSCSI, memory): probing by magic,
// and writing an empty qcow2 without shelling out to qemu-img.
#pragma once

#include <cstdint>
#include <string_view>

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

// Makes an empty qcow2 written by write_empty_qcow2() an overlay: records
// `backing` (a path or URL, at most 1023 bytes) and its format in the header,
// as `qemu-img create -b BACKING -F FORMAT` does. Used for shallow copies.
// Fails with invalid_argument if the image is not such a fresh qcow2.
Result<void> set_qcow2_backing(Volume& volume, std::string_view backing, ImageFormat backing_format);

}  // namespace blockmig::pools
