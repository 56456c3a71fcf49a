// `migrate --offline`: which disks are copied, from where, in which format,
// under which name — decided from what the guest's QEMU says (preflight's
// SideFacts) before anything is touched. Pure but for the path resolver.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "pools/pool.hpp"
#include "preflight.hpp"

namespace blockmig::migrate {

struct OfflineDisk {
    std::string device;
    std::string source;         // the file in blockmig's view (absolute path), or a URL
    pools::ImageFormat format;  // QEMU's driver for the disk: never probed (a raw disk
                                // whose guest wrote a qcow2 header stays raw)
    std::uint64_t size = 0;     // virtual size
    std::string volume;         // name of the copy in the destination pool
    std::string format_from;    // who said the format: "QEMU", "probed", "--src-format"
};

// A local filename as QEMU reports it -> the same file for blockmig
// (move/source_path.hpp's resolve_source_path with QEMU's pid).
using PathResolver = std::function<Result<std::string>(const std::string& filename)>;

// The disks to copy (`only`: --disk names, any name QEMU gives the disk;
// empty = all), or the first reason not to, as one line: the guest neither
// running nor shut down, a migration or block job in progress, an unknown
// --disk, a format other than raw / qcow2, a json: filename, a file that
// cannot be found, two disks whose files have the same name.
// One copy per file name in the destination pool: records `disk`'s volume
// in `taken` (volume -> device), or refuses the second disk that would
// take a name (both disks named, one line).
Result<void> claim_volume_name(std::map<std::string, std::string>& taken,
                               const OfflineDisk& disk);

Result<std::vector<OfflineDisk>> plan_offline(const SideFacts& src,
                                              const std::vector<std::string>& only,
                                              const PathResolver& resolve_path);

}  // namespace blockmig::migrate
