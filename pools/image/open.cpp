// Format probing and backing-chain resolution for every image format.
#include "pools/image/open.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "bytes.hpp"
#include "chain.hpp"
#include "pools/address.hpp"
#include "pools/image/qcow2.hpp"
#include "pools/image/raw.hpp"
#include "pools/image/vmdk.hpp"

namespace blockmig::pools::image {

namespace detail {

namespace {

bool ends_with_ci(std::string_view text, std::string_view suffix) {
    if (text.size() < suffix.size()) return false;
    return std::equal(suffix.begin(), suffix.end(),
                      text.end() - static_cast<std::ptrdiff_t>(suffix.size()),
                      [](char a, char b) { return std::tolower(a) == std::tolower(b); });
}

Result<ImageFormat> probe(Pool& pool, const std::string& name) {
    auto volume = pool.open(name, false);
    if (!volume) return fail(volume.error());
    std::array<std::byte, 4096> head{};
    const std::size_t len =
        static_cast<std::size_t>(std::min<std::uint64_t>(head.size(), (*volume)->size()));
    if (auto r = read_at(**volume, std::span(head).first(len), 0); !r)
        return fail(r.error().with_context(pool.url_of(name) + ": probe"));
    const auto first = std::span<const std::byte>(head).first(len);
    ImageFormat format = ImageFormat::raw;
    if (len >= 4 && get_be(head.data(), 4) == 0x514649fb)
        format = ImageFormat::qcow2;
    else if (looks_like_vmdk(first))
        format = ImageFormat::vmdk;
    // A name that promises a format the bytes do not have is corruption or a
    // mistake, never raw data to copy as is.
    if (format == ImageFormat::raw && ends_with_ci(name, ".qcow2"))
        return fail(ErrorCode::protocol,
                    pool.url_of(name) + ": named .qcow2 but has no qcow2 magic");
    if (format == ImageFormat::raw && ends_with_ci(name, ".vmdk"))
        return fail(
            ErrorCode::protocol,
            pool.url_of(name) + ": named .vmdk but has neither a VMDK header nor a descriptor");
    return format;
}

}  // namespace

Result<OpenedBacking> open_backing(Pool& pool, const std::string& image, const std::string& backing,
                                   std::optional<ImageFormat> format, ChainState& chain) {
    OpenedBacking out;
    Pool* where = &pool;
    std::string name = backing;
    const bool absolute = backing.starts_with('/') || backing.find("://") != std::string::npos;
    if (absolute || backing.find('/') != std::string::npos) {
        const std::string spec = absolute ? backing : pool.url() + "/" + backing;
        auto ref = resolve_volume(spec, PoolsConfig{});
        if (!ref)
            return fail(
                ref.error().with_context(fmt::format("{}: backing file {}", image, backing)));
        out.own_pool = std::move(ref->pool);
        where = out.own_pool.get();
        name = ref->name;
    }
    const std::string id = where->url_of(name);
    if (std::find(chain.seen.begin(), chain.seen.end(), id) != chain.seen.end())
        return fail(ErrorCode::protocol,
                    fmt::format("{}: backing chain loops back to {}", image, id));
    if (chain.seen.size() >= k_max_chain_depth)
        return fail(ErrorCode::protocol,
                    fmt::format("{}: backing chain deeper than {}", image, k_max_chain_depth));
    chain.seen.push_back(id);
    auto reader = open_in_chain(*where, name, format, chain);
    if (!reader) return fail(reader.error().with_context(fmt::format("{}: backing file", image)));
    out.reader = std::move(*reader);
    return out;
}

Result<std::unique_ptr<ImageReader>> open_in_chain(Pool& pool, const std::string& name,
                                                   std::optional<ImageFormat> format,
                                                   ChainState& chain) {
    if (!format) {
        auto probed = probe(pool, name);
        if (!probed) return fail(probed.error());
        format = *probed;
    }
    switch (*format) {
        case ImageFormat::qcow2:
            return open_qcow2_in_chain(pool, name, chain);
        case ImageFormat::raw:
            return open_raw(pool, name);
        case ImageFormat::vmdk:
            return open_vmdk(pool, name);
        case ImageFormat::unknown:
            break;
    }
    return fail(ErrorCode::invalid_argument, pool.url_of(name) + ": unknown image format");
}

}  // namespace detail

Result<std::unique_ptr<ImageReader>> open_image(Pool& pool, const std::string& name,
                                                std::optional<ImageFormat> format) {
    detail::ChainState chain;
    chain.seen.push_back(pool.url_of(name));
    return detail::open_in_chain(pool, name, format, chain);
}

}  // namespace blockmig::pools::image
