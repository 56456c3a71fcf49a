// One extent of a VMDK disk (a line of its descriptor), as the reader sees
// it. Private to pools/image/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pools/pool.hpp"

namespace blockmig::pools::image::vmdk {

// What a run of an extent holds; `unallocated` belongs to the parent disk
// (zeroes when there is none).
enum class SegKind { data, zero, unallocated };
struct Seg {
    std::uint64_t offset = 0;  // relative to the extent
    std::uint64_t length = 0;
    SegKind kind = SegKind::data;
};

// Appends a segment, merging it into the previous one of the same kind.
void append_seg(std::vector<Seg>& out, Seg seg);

// Reads `buf` at an extent-relative offset from the layer below (the parent
// disk, or zeroes).
using ReadBelow = std::function<Result<void>(std::span<std::byte>, std::uint64_t)>;

// Thread safety: read() and status() may run concurrently.
class Extent {
  public:
    virtual ~Extent() = default;
    // Bytes of the disk this extent covers (its descriptor size).
    virtual std::uint64_t size() const = 0;
    // Data bytes this extent holds.
    virtual std::uint64_t allocated_bytes() const = 0;
    // Appends segments covering [offset, offset+length) (within size()).
    virtual Result<void> status(std::uint64_t offset, std::uint64_t length,
                                std::vector<Seg>& out) = 0;
    // Reads buf.size() bytes at offset (within size()); unallocated parts come
    // from `below`.
    virtual Result<void> read(std::span<std::byte> buf, std::uint64_t offset,
                              const ReadBelow& below) = 0;
};

// A ZERO extent: reads as zeroes, holds no data.
std::unique_ptr<Extent> make_zero_extent(std::uint64_t size);

// A FLAT / VMFS extent: `size` bytes of `volume` from byte `start`. protocol
// error if the file is shorter than that (a truncated flat file).
Result<std::unique_ptr<Extent>> make_flat_extent(std::unique_ptr<Volume> volume,
                                                 const std::string& name, std::uint64_t start,
                                                 std::uint64_t size);

// A hosted sparse ("KDMV", incl. streamOptimized) or ESX sparse ("COWD")
// extent covering `size` bytes of the disk (0: the capacity in its header).
// Reads and checks every grain table at open: entries past the end of the
// file are an error, not zeroes. protocol error naming `name` and the field.
Result<std::unique_ptr<Extent>> make_sparse_extent(std::unique_ptr<Volume> volume,
                                                   const std::string& name, std::uint64_t size);

}  // namespace blockmig::pools::image::vmdk
