#include "luns.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cctype>

namespace blockmig::jobs {

bool is_iscsi_lun(std::string_view spec) {
    if (!spec.starts_with("iscsi://")) return false;
    auto last = spec.substr(spec.rfind('/') + 1);
    auto slashes = std::count(spec.begin() + 8, spec.end(), '/');
    return slashes >= 2 && !last.empty() && std::all_of(last.begin(), last.end(), ::isdigit);
}

std::string lun_url_of_node(const nlohmann::json& iscsi_node) {
    const nlohmann::json lun = iscsi_node.value("lun", nlohmann::json());
    return fmt::format("iscsi://{}/{}/{}", iscsi_node.value("portal", ""),
                       iscsi_node.value("target", ""),
                       lun.is_string() ? lun.get<std::string>() : lun.dump());
}

std::string lun_tail(std::string_view url) {
    auto scheme = url.find("://");
    if (scheme == std::string_view::npos) return std::string(url);
    auto slash = url.find('/', scheme + 3);
    return slash == std::string_view::npos ? std::string(url) : std::string(url.substr(slash + 1));
}

Result<std::vector<std::string>> lun_candidates(pools::Pool& pool,
                                                const std::vector<std::string>& guest_locations,
                                                const std::set<std::string>& held,
                                                std::uint64_t min_size) {
    auto volumes = pool.list_volumes();
    if (!volumes) return fail(volumes.error().with_context(fmt::format("list {}", pool.url())));
    std::stable_sort(volumes->begin(), volumes->end(),
                     [](auto& a, auto& b) { return a.virtual_size < b.virtual_size; });
    std::vector<std::string> out;
    for (const auto& v : *volumes) {
        const std::string url = pool.url_of(v.name);
        if (held.contains(url) || v.virtual_size < min_size) continue;
        const bool guests =
            std::any_of(guest_locations.begin(), guest_locations.end(), [&](auto& location) {
                return !location.empty() && lun_tail(location) == lun_tail(url);
            });
        if (!guests) out.push_back(v.name);
    }
    return out;
}

Result<ClaimedVolume> claim_and_create(Effects& effects, const std::string& disk, pools::Pool& pool,
                                       const std::vector<std::string>& names,
                                       const std::filesystem::path& state_dir, std::uint64_t size,
                                       pools::ImageFormat format, std::string_view who) {
    Error last{ErrorCode::no_space, fmt::format("{}: no unused volume of at least {} MiB in {}",
                                                who, size >> 20, pool.url())};
    for (const auto& name : names) {
        auto claim = TargetClaim::take(state_dir, pool.url_of(name));
        if (!claim) {
            last = claim.error();
            if (claim.error().code == ErrorCode::already_exists) continue;
            break;
        }
        auto created = effects.create_volume(disk, pool, name, size, format);
        if (created) return ClaimedVolume{std::move(*created), std::move(*claim)};
        last = created.error();
        if (created.error().code != ErrorCode::already_exists &&
            created.error().code != ErrorCode::no_space)
            break;
    }
    return fail(last);
}

}  // namespace blockmig::jobs
