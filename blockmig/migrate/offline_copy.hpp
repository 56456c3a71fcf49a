// `migrate --offline`: one disk copied into the volume made for it and
// proven equal. Runs on its own thread (one per disk, all in parallel):
// touches no journal, reports through `progress`.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "offline_plan.hpp"
#include "pools/address.hpp"

namespace blockmig::migrate {

struct DiskCopied {
    std::uint64_t data_bytes = 0;  // allocated bytes read and written (holes skipped)
    std::string digest;            // SHA-256 of the guest-visible contents, equal on both
};

// phase "copy" (bytes of data copied of the allocated total) or "verify"
// (bytes hashed of the virtual size, both sides at once).
using DiskProgress =
    std::function<void(const char* phase, std::uint64_t done, std::uint64_t total)>;

// Copies `source` (opened read-only, in the disk's format: never probed) into
// the fresh volume `target` of `pool` in the same format (a qcow2 backing
// chain flattened), sparse-aware (convert/pipeline), then compares the
// SHA-256 of both. Errors: the copy's or the reader's, with the disk named;
// io_error "digest mismatch" naming both digests; cancelled.
Result<DiskCopied> copy_and_verify(const OfflineDisk& disk, pools::VolumeRef& source,
                                   pools::Pool& pool, const std::string& target, unsigned in_flight,
                                   const DiskProgress& progress, const std::atomic<bool>& cancel);

}  // namespace blockmig::migrate
