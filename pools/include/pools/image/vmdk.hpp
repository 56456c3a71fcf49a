// VMDK images read and written natively (VMware "Virtual Disk Format 5.0",
// the technote in github.com/vmware/open-vmdk).
//
// Reading: every file-backed createType (monolithicSparse/Flat,
// twoGbMaxExtentSparse/Flat and the spec spelling 2GbMaxExtent*,
// streamOptimized, custom, vmfs, vmfsThin, vmfsPreallocated,
// vmfsEagerZeroedThick, vmfsSparse "COWD", seSparse) and delta chains
// through parentFileNameHint with the parentCID/CID check. RW and RDONLY
// extents read alike; ZERO extents read as zeroes. Extents and parents are
// opened from the same pool; names with a directory part are refused.
// Device-backed types (fullDevice, partitionedDevice, vmfsRDM, vmfsRDMP) and
// NOACCESS extents fail with an error that says why (unsupported).
//
// Errors name the file and the field: protocol for corrupt or truncated
// input (a grain table past the end of its file, a CID mismatch, a loop in
// the chain, a descriptor syntax error, absurd sizes), unsupported for the
// types above, not_found for a missing extent or parent.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "pools/image/image.hpp"
#include "pools/pool.hpp"

namespace blockmig::pools::image {

// True if the first bytes (>= 512 given when the file has them) look like a
// VMDK: sparse "KDMV", vmfsSparse "COWD", seSparse magic, or a text
// descriptor ("# Disk DescriptorFile").
bool looks_like_vmdk(std::span<const std::byte> head);

// Opens `name` in `pool` (a descriptor or a monolithic sparse/stream file).
// The pool must outlive the reader. read() is thread-safe; grain tables are
// cached with a bounded budget, never the whole image.
Result<std::unique_ptr<ImageReader>> open_vmdk(Pool& pool, const std::string& name);

struct VmdkWriteOptions {
    std::string subformat = "streamOptimized";  // or "monolithicSparse"
    std::string adapter_type = "lsilogic";      // ide, buslogic, lsilogic, legacyESX, pvscsi
    int hw_version = 4;                         // ddb.virtualHWVersion
    int compression_level = 6;                  // streamOptimized deflate level (1..12)
    unsigned threads = 0;                       // 0 = all cores
};

// Writes a VMDK of `virtual_size` bytes (a multiple of 512) onto `volume`
// (an empty file, size 0: the stream's footer must end the file; the
// descriptor is embedded). streamOptimized is written strictly
// sequentially (header, descriptor, grain markers, grain tables, grain
// directory, footer at EOF-1024, end-of-stream marker), its grains deflated
// on `threads` cores; monolithicSparse preallocates its grain tables.
// All-zero grains are left unallocated. invalid_argument for a bad option.
Result<std::unique_ptr<ImageWriter>> create_vmdk_writer(std::unique_ptr<Volume> volume,
                                                        std::uint64_t virtual_size,
                                                        const VmdkWriteOptions& options);

}  // namespace blockmig::pools::image
