// The VMDK text descriptor ("# Disk DescriptorFile"): parsing and writing.
// Private to pools/image/.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pools/pool.hpp"

namespace blockmig::pools::image::vmdk {

enum class Access { rw, rdonly, noaccess };

struct ExtentLine {
    Access access = Access::rw;
    std::uint64_t sectors = 0;
    std::string type;          // FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE
    std::string file;          // empty for ZERO
    std::uint64_t offset = 0;  // sectors into `file` (flat extents)
    int line = 0;
};

struct Descriptor {
    std::uint32_t cid = 0xffffffff;
    std::uint32_t parent_cid = 0xffffffff;  // ffffffff: no parent
    std::string create_type;
    std::string parent_hint;  // parentFileNameHint
    std::vector<ExtentLine> extents;
    std::map<std::string, std::string> ddb;  // ddb.* keys without the prefix
};

// Parses descriptor text (stops at the first NUL: embedded descriptors are
// padded). protocol error naming `where`, the line and the field otherwise.
Result<Descriptor> parse_descriptor(std::string_view text, const std::string& where);

// True for the createTypes whose data lives on a device, not in files.
bool is_device_create_type(std::string_view create_type);

}  // namespace blockmig::pools::image::vmdk
