// Helpers shared by the pool implementations (private to pools/).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pools/pool.hpp"

namespace blockmig::pools::detail {

// list_volumes() for pools that can only enumerate names: stats each, in order.
inline Result<std::vector<VolumeInfo>> stat_each(Pool& pool,
                                                 const std::vector<std::string>& names) {
    std::vector<VolumeInfo> out;
    for (const auto& name : names) {
        auto info = pool.stat(name);
        if (!info) return fail(info.error());
        out.push_back(*info);
    }
    return out;
}

// Volume names inside file-backed pools: one path component, no NUL, not
// "." or "..", at most 255 bytes. invalid_argument (naming `where`) otherwise.
Result<void> check_file_name(std::string_view where, std::string_view name);

// "<where>: <what>: <strerror(err)>", with a code derived from errno
// (ENOENT -> not_found, EEXIST -> already_exists, ENOSPC/EDQUOT -> no_space...).
Error errno_error(std::string_view where, std::string_view what, int err);

// Builds block-status extents from a SEEK_DATA/SEEK_HOLE primitive.
// `seek(offset, whence)` answers the new offset, std::nullopt for ENXIO (no
// more data), or an error. If the first call fails with `unsupported`, the
// whole range is reported as data.
using SeekFn = std::function<Result<std::optional<std::uint64_t>>(std::uint64_t, int)>;
Result<std::vector<Extent>> extents_by_seek(std::uint64_t offset, std::uint64_t length,
                                            std::uint64_t size, const SeekFn& seek);

// Appends an extent, merging it into the previous one when of the same kind.
void append_extent(std::vector<Extent>& extents, Extent extent);

// The format node on top of `protocol` (node names, cache, discard,
// detect-zeroes from `options`); fills chain.format / format_node and adds
// the shared options to chain.protocol.
void finish_chain(BlockdevChain& chain, ImageFormat format, const QemuNodeOptions& options);

}  // namespace blockmig::pools::detail
