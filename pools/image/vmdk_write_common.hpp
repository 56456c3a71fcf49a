// Pieces shared by the VMDK writers: option checks, the embedded descriptor,
// and a buffered sequential sink. Private to pools/image/.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pools/image/vmdk.hpp"

namespace blockmig::pools::image::vmdk {

// invalid_argument naming the option if `options` or `virtual_size` is bad.
Result<void> check_write_options(const VmdkWriteOptions& options, std::uint64_t virtual_size);

// The descriptor text of a one-extent monolithic disk (createType, CID,
// extent line, ddb: adapter type, geometry, hardware version, uuid,
// longContentID), as VMware's open-vmdk writes it.
std::string make_descriptor(const std::string& create_type, std::uint64_t capacity_sectors,
                            const VmdkWriteOptions& options);

// True if every byte is zero (word at a time).
bool all_zero(std::span<const std::byte> data);

// Appends bytes to a volume at increasing offsets through a 1 MiB buffer
// (few large writes: NFS and iSCSI targets prefer them).
class Sink {
  public:
    explicit Sink(Volume& volume, std::uint64_t start = 0)
        : m_volume(volume), m_pos(start), m_base(start) {}
    std::uint64_t position() const { return m_pos; }
    // Moves an empty sink to `start`.
    void reset(std::uint64_t start) { m_pos = m_base = start; }
    Result<void> append(std::span<const std::byte> data);
    // Appends zeroes up to the next multiple of 512.
    Result<void> pad_to_sector();
    Result<void> flush();

  private:
    Volume& m_volume;
    std::uint64_t m_pos;
    std::uint64_t m_base;  // file offset of m_buffer[0]
    std::vector<std::byte> m_buffer;
};

}  // namespace blockmig::pools::image::vmdk
