// Named pools (TOML), inline URLs and paths -> opened pools and volume names.
#include "pools/address.hpp"

#include <fmt/core.h>
#include <toml++/toml.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "pools/pools.hpp"

namespace blockmig::pools {

namespace {

namespace fs = std::filesystem;

bool is_reserved(std::string_view name) {
    return name == "nfs" || name == "iscsi" || name == "file";
}

bool valid_pool_name(std::string_view name) {
    if (name.empty() || name.size() > 64) return false;
    for (char c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
            return false;
    }
    return true;
}

// A path the user clearly meant as a path (not a pool name).
bool looks_like_path(std::string_view spec) {
    return spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") ||
           spec.starts_with("~/") || spec == "." || spec == "..";
}

std::string expand_home(std::string_view path) {
    if (path.starts_with("~/")) {
        const char* home = std::getenv("HOME");
        if (home) return std::string(home) + std::string(path.substr(1));
    }
    return std::string(path);
}

Result<std::unique_ptr<Pool>> open_by_type(std::string_view type, std::string_view location,
                                           const PoolOptions& options) {
    if (type == "dir") return make_dir_pool(expand_home(location));
    if (type == "nfs") return make_nfs_pool(location, options);
    if (type == "iscsi") return make_iscsi_pool(location, options);
    return fail(ErrorCode::invalid_argument,
                fmt::format("unknown pool type '{}' (dir, nfs, iscsi)", type));
}

Result<std::unique_ptr<Pool>> open_named(const PoolSpec& spec, const PoolOptions& options) {
    auto pool = open_by_type(spec.type, spec.location, options);
    if (!pool) return fail(pool.error().with_context(fmt::format("pool '{}'", spec.name)));
    return pool;
}

// Splits "a/b/c" at its last '/' (ignoring trailing ones): {"a/b", "c"}.
std::pair<std::string_view, std::string_view> split_last(std::string_view text) {
    while (text.size() > 1 && text.ends_with('/')) text.remove_suffix(1);
    auto slash = text.rfind('/');
    if (slash == std::string_view::npos) return {"", text};
    return {text.substr(0, slash), text.substr(slash + 1)};
}

}  // namespace

Result<PoolsConfig> parse_pools_config(std::string_view text, std::string_view origin) {
    toml::table root;
    try {
        root = toml::parse(text, origin);
    } catch (const toml::parse_error& e) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}:{}: {}", origin, e.source().begin.line, e.description()));
    }
    PoolsConfig config;
    config.source = std::string(origin);
    for (const auto& [key, value] : root) {
        if (key.str() != "pool") {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: unknown top-level key '{}' (expected [pool.NAME] tables)",
                                    origin, key.str()));
        }
    }
    const toml::node_view pools_node = root["pool"];
    if (!pools_node) return config;
    const toml::table* pools = pools_node.as_table();
    if (!pools)
        return fail(ErrorCode::invalid_argument, fmt::format("{}: 'pool' must be a table", origin));
    for (const auto& [key, value] : *pools) {
        const std::string name(key.str());
        const auto where = fmt::format("{}:{}: pool '{}'", origin, key.source().begin.line, name);
        if (!valid_pool_name(name)) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: invalid name (letters, digits, - _ .)", where));
        }
        if (is_reserved(name)) {
            return fail(
                ErrorCode::invalid_argument,
                fmt::format("{}: the names nfs, iscsi and file are reserved for URLs", where));
        }
        const toml::table* table = value.as_table();
        if (!table)
            return fail(ErrorCode::invalid_argument, fmt::format("{}: must be a table", where));
        PoolSpec spec;
        spec.name = name;
        for (const auto& [field, field_value] : *table) {
            if (field.str() != "type" && field.str() != "path" && field.str() != "url") {
                return fail(
                    ErrorCode::invalid_argument,
                    fmt::format("{}: unknown key '{}' (type, path, url)", where, field.str()));
            }
            if (!field_value.is_string()) {
                return fail(ErrorCode::invalid_argument,
                            fmt::format("{}: '{}' must be a string", where, field.str()));
            }
        }
        auto type = (*table)["type"].value<std::string>();
        auto path = (*table)["path"].value<std::string>();
        auto url = (*table)["url"].value<std::string>();
        if (!type)
            return fail(ErrorCode::invalid_argument, fmt::format("{}: missing 'type'", where));
        spec.type = *type;
        if (spec.type == "dir") {
            if (!path || url) {
                return fail(ErrorCode::invalid_argument,
                            fmt::format("{}: type \"dir\" needs 'path' (and no 'url')", where));
            }
            if (path->empty())
                return fail(ErrorCode::invalid_argument, fmt::format("{}: empty 'path'", where));
            spec.location = *path;
        } else if (spec.type == "nfs" || spec.type == "iscsi") {
            if (!url || path) {
                return fail(
                    ErrorCode::invalid_argument,
                    fmt::format("{}: type \"{}\" needs 'url' (and no 'path')", where, spec.type));
            }
            if (!url->starts_with(spec.type + "://")) {
                return fail(ErrorCode::invalid_argument,
                            fmt::format("{}: url must start with {}://", where, spec.type));
            }
            spec.location = *url;
        } else {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: unknown type \"{}\" (dir, nfs, iscsi)", where, spec.type));
        }
        config.pools[name] = spec;
    }
    return config;
}

Result<PoolsConfig> load_pools_config(std::optional<std::string> explicit_path) {
    std::string path;
    bool required = true;
    if (explicit_path) {
        path = *explicit_path;
    } else if (const char* env = std::getenv("BLOCKMIG_POOLS"); env && *env) {
        path = env;
    } else {
        required = false;
        std::vector<std::string> candidates;
        if (const char* home = std::getenv("HOME"); home && *home) {
            candidates.push_back(std::string(home) + "/.config/blockmig/pools.toml");
        }
        candidates.push_back("/etc/blockmig/pools.toml");
        for (const auto& c : candidates) {
            std::error_code ec;
            if (fs::exists(c, ec)) {
                path = c;
                break;
            }
        }
        if (path.empty()) return PoolsConfig{};
    }
    std::ifstream in(path);
    if (!in) {
        return fail(required ? ErrorCode::not_found : ErrorCode::io_error,
                    fmt::format("pools file {}: cannot read it", path));
    }
    std::stringstream text;
    text << in.rdbuf();
    return parse_pools_config(text.str(), path);
}

Result<std::unique_ptr<Pool>> open_pool(std::string_view spec, const PoolsConfig& config) {
    if (spec.empty()) return fail(ErrorCode::invalid_argument, "empty pool name");
    if (spec.starts_with("nfs://")) return make_nfs_pool(spec, config.options);
    if (spec.starts_with("iscsi://")) return make_iscsi_pool(spec, config.options);
    if (spec.starts_with("file:")) return make_dir_pool(expand_home(spec.substr(5)));
    if (spec.find("://") != std::string_view::npos) {
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("pool '{}': unknown URL scheme (nfs://, iscsi://, or a directory path)",
                        spec));
    }
    if (looks_like_path(spec)) return make_dir_pool(expand_home(spec));
    if (auto it = config.pools.find(std::string(spec)); it != config.pools.end())
        return open_named(it->second, config.options);
    return fail(
        ErrorCode::not_found,
        fmt::format("unknown pool '{}' ({}; a directory needs a path like ./{} or /...)", spec,
                    config.source.empty() ? "no pools file found" : "not in " + config.source,
                    spec));
}

Result<VolumeRef> resolve_volume(std::string_view spec, const PoolsConfig& config) {
    if (spec.empty()) return fail(ErrorCode::invalid_argument, "empty volume name");
    auto with_pool = [](Result<std::unique_ptr<Pool>> pool,
                        std::string_view name) -> Result<VolumeRef> {
        if (!pool) return fail(pool.error());
        return VolumeRef{std::move(*pool), std::string(name)};
    };
    if (spec.starts_with("nfs://")) {
        std::string_view query;
        std::string_view body = spec;
        if (auto q = spec.find('?'); q != std::string_view::npos) {
            query = spec.substr(q);
            body = spec.substr(0, q);
        }
        auto [dir, name] = split_last(body);
        if (dir.size() <= 6 || dir.substr(6).find('/') == std::string_view::npos || name.empty()) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("volume '{}': expected nfs://host/export[/dir]/file", spec));
        }
        return with_pool(make_nfs_pool(std::string(dir) + std::string(query), config.options),
                         name);
    }
    if (spec.starts_with("iscsi://")) {
        auto [target, lun] = split_last(spec);
        const bool numeric =
            !lun.empty() && lun.find_first_not_of("0123456789") == std::string_view::npos;
        if (!numeric || target.substr(8).find('/') == std::string_view::npos) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("volume '{}': expected iscsi://host[:port]/iqn/lun", spec));
        }
        return with_pool(make_iscsi_pool(target, config.options), "lun" + std::string(lun));
    }
    std::string_view path = spec;
    if (spec.starts_with("file:")) {
        path = spec.substr(5);
    } else if (auto colon = spec.find(':');
               colon != std::string_view::npos && !looks_like_path(spec)) {
        std::string_view pool = spec.substr(0, colon), name = spec.substr(colon + 1);
        if (spec.find("://") != std::string_view::npos) {
            return fail(
                ErrorCode::invalid_argument,
                fmt::format("volume '{}': unknown URL scheme (nfs://, iscsi://, or a path)", spec));
        }
        if (is_reserved(pool)) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("volume '{}': '{}' is reserved; write {}://... for a URL", spec,
                                    pool, pool));
        }
        if (name.empty())
            return fail(ErrorCode::invalid_argument,
                        fmt::format("volume '{}': missing volume name", spec));
        auto it = config.pools.find(std::string(pool));
        if (it == config.pools.end()) {
            return fail(ErrorCode::not_found,
                        fmt::format("volume '{}': unknown pool '{}' ({})", spec, pool,
                                    config.source.empty() ? "no pools file found"
                                                          : "not in " + config.source));
        }
        return with_pool(open_named(it->second, config.options), name);
    }
    std::string expanded = expand_home(path);
    auto [dir, name] = split_last(expanded);
    if (name.empty() || name == "." || name == "..") {
        return fail(ErrorCode::invalid_argument, fmt::format("volume '{}': not a file path", spec));
    }
    std::string dir_text = dir.empty() ? (expanded.starts_with('/') ? "/" : ".") : std::string(dir);
    return with_pool(make_dir_pool(dir_text), name);
}

}  // namespace blockmig::pools
