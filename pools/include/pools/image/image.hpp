// Disk image formats read and written natively (no qemu-img): the seam between
// the format code (pools/image/) and the conversion pipeline.
//
// An ImageReader presents the guest-visible contents of an image (VMDK of any
// file-backed createType, qcow2 with its backing chain, raw) as a flat byte
// range; an ImageWriter lays such contents into a target format on a Volume.
// Both sit on pools::Volume, so the same code works on local files, NFS and
// iSCSI LUNs.
//
// Thread safety: a reader's read() may be called from several threads at once
// (the pipeline reads in parallel); map() and the metadata calls are not
// concurrent with anything else. A writer is driven by one thread, in
// increasing offset order (see ImageWriter).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pools/pool.hpp"

namespace blockmig::pools::image {

// What a run of guest-visible bytes holds.
enum class RangeKind {
    data,   // allocated: read it
    zero,   // reads as zeroes (hole, zero cluster/grain, ZERO extent)
};

struct Range {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    RangeKind kind = RangeKind::data;
};

// Facts `blockmig info` shows; also how a writer learns defaults (adapter type).
struct ImageInfo {
    ImageFormat format = ImageFormat::raw;
    std::string subformat;              // vmdk createType, "qcow2 v3", "raw"
    std::uint64_t virtual_size = 0;
    std::uint64_t allocated_bytes = 0;  // data bytes in this image (not its chain)
    std::vector<std::string> chain;     // backing / parent files, nearest first
    std::string adapter_type;           // vmdk ddb.adapterType, else empty
    std::vector<std::string> features;  // qcow2: "compression=zstd", "extended_l2", ...
};

class ImageReader {
  public:
    virtual ~ImageReader() = default;
    virtual const ImageInfo& info() const = 0;
    std::uint64_t virtual_size() const { return info().virtual_size; }
    // The allocation map of [offset, offset+length): sorted, contiguous ranges
    // covering it (clipped to virtual_size). Zero ranges need not be read.
    virtual Result<std::vector<Range>> map(std::uint64_t offset, std::uint64_t length) = 0;
    // Reads exactly buf.size() bytes of guest-visible data at offset (zeroes
    // where the map says zero). protocol error if the image is corrupt there
    // (e.g. a grain table pointing past the end of its file).
    virtual Result<void> read(std::span<std::byte> buf, std::uint64_t offset) = 0;
};

// Writes one image. Calls come in increasing, non-overlapping offset order;
// regions never written read as zeroes in the result. finish() writes the
// metadata that can only be known at the end (VMDK footer, qcow2 refcounts)
// and flushes; a writer dropped without finish() leaves an invalid image.
class ImageWriter {
  public:
    virtual ~ImageWriter() = default;
    // A data block; `data.size()` is a multiple of 512. The writer may still
    // detect all-zero blocks and keep them sparse.
    virtual Result<void> write(std::span<const std::byte> data, std::uint64_t offset) = 0;
    // A range known to read as zeroes (no data follows).
    virtual Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) = 0;
    virtual Result<void> finish() = 0;
};

}  // namespace blockmig::pools::image
