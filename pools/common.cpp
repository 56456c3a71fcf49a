#include "common.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace blockmig::pools::detail {

Result<void> check_file_name(std::string_view where, std::string_view name) {
    if (name.empty() || name == "." || name == ".." || name.size() > 255 ||
        name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: invalid volume name '{}' (one path component, not . or ..)",
                                where, name));
    }
    return {};
}

Error errno_error(std::string_view where, std::string_view what, int err) {
    ErrorCode code = ErrorCode::io_error;
    switch (err) {
        case ENOENT:
            code = ErrorCode::not_found;
            break;
        case EEXIST:
            code = ErrorCode::already_exists;
            break;
        case ENOSPC:
        case EDQUOT:
        case EFBIG:
            code = ErrorCode::no_space;
            break;
        case EINVAL:
        case ENOTDIR:
        case EISDIR:
        case ENAMETOOLONG:
            code = ErrorCode::invalid_argument;
            break;
        case EOPNOTSUPP:
            code = ErrorCode::unsupported;
            break;
        case ETIMEDOUT:
            code = ErrorCode::timeout;
            break;
        default:
            break;
    }
    return Error{code, fmt::format("{}: {}: {}", where, what, std::strerror(err)), {}};
}

void append_extent(std::vector<Extent>& extents, Extent extent) {
    if (extent.length == 0) return;
    if (!extents.empty() && extents.back().data == extent.data &&
        extents.back().offset + extents.back().length == extent.offset) {
        extents.back().length += extent.length;
        return;
    }
    extents.push_back(extent);
}

Result<std::vector<Extent>> extents_by_seek(std::uint64_t offset, std::uint64_t length,
                                            std::uint64_t size, const SeekFn& seek) {
    std::vector<Extent> extents;
    if (offset >= size) return extents;
    const std::uint64_t end = std::min(size, offset + length);
    std::uint64_t pos = offset;
    while (pos < end) {
        auto data = seek(pos, SEEK_DATA);
        if (!data) {
            if (data.error().code == ErrorCode::unsupported && extents.empty()) {
                append_extent(extents, {offset, end - offset, true});
                return extents;
            }
            return fail(data.error());
        }
        const std::uint64_t data_start = data->value_or(end);
        if (data_start > pos) append_extent(extents, {pos, std::min(data_start, end) - pos, false});
        if (data_start >= end) break;
        auto hole = seek(data_start, SEEK_HOLE);
        if (!hole) return fail(hole.error());
        const std::uint64_t hole_start = std::min(hole->value_or(end), end);
        if (hole_start <= data_start) {
            // A broken answer; never loop forever: call the rest data.
            append_extent(extents, {data_start, end - data_start, true});
            break;
        }
        append_extent(extents, {data_start, hole_start - data_start, true});
        pos = hole_start;
    }
    return extents;
}

void finish_chain(BlockdevChain& chain, ImageFormat format, const QemuNodeOptions& options) {
    const nlohmann::json cache = {{"direct", options.cache_direct},
                                  {"no-flush", options.cache_no_flush}};
    chain.protocol_node = options.node_prefix + "-proto";
    chain.format_node = options.node_prefix + "-fmt";
    chain.protocol["node-name"] = chain.protocol_node;
    chain.protocol["cache"] = cache;
    chain.protocol["read-only"] = options.read_only;
    if (options.unmap) chain.protocol["discard"] = "unmap";

    std::string driver = format == ImageFormat::qcow2  ? "qcow2"
                         : format == ImageFormat::vmdk ? "vmdk"
                                                       : "raw";
    chain.format = {{"driver", driver},
                    {"node-name", chain.format_node},
                    {"file", chain.protocol_node},
                    {"cache", cache},
                    {"read-only", options.read_only}};
    if (options.unmap) {
        // detect-zeroes=unmap needs discard=unmap on the same node (QEMU
        // rejects it otherwise): guest zero writes then stay holes.
        chain.format["discard"] = "unmap";
        chain.format["detect-zeroes"] = "unmap";
    }
}

}  // namespace blockmig::pools::detail
