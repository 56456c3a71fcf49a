// Addressing pools and volumes: named pools from a TOML file, inline URLs and
// paths, and human-readable sizes.
//
// pools.toml:
//     [pool.nas]
//     type = "nfs"
//     url = "nfs://10.0.0.5/export/vms"
//     [pool.local]
//     type = "dir"
//     path = "/var/lib/blockmig/images"
//     [pool.san]
//     type = "iscsi"
//     url = "iscsi://10.0.0.6:3260/iqn.2024-01.example:storage"
//
// A POOL spec is a named pool, a directory path (absolute, or starting with
// "./", "../" or "~/"), nfs://host/export[/dir] or iscsi://host[:port]/iqn.
// A VOLUME spec is `pool:name`, a file path, nfs://host/export[/dir]/file or
// iscsi://host[:port]/iqn/lun. The pool names nfs, iscsi and file are
// reserved so URLs stay unambiguous; `file:PATH` is a file path.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "pools/pool.hpp"

namespace blockmig::pools {

struct PoolSpec {
    std::string name;
    std::string type;      // "dir", "nfs" or "iscsi"
    std::string location;  // the directory path or the URL
};

struct PoolsConfig {
    std::map<std::string, PoolSpec> pools;
    std::string source;   // the file it came from, or empty
    PoolOptions options;  // used by every pool open_pool / resolve_volume opens
};

// Parses TOML text; `origin` names it in errors ("pools.toml:3: ...").
// invalid_argument for TOML syntax errors, unknown types, missing or
// conflicting path/url keys, reserved or malformed pool names.
Result<PoolsConfig> parse_pools_config(std::string_view text, std::string_view origin);

// Loads the pools file: `explicit_path` if given (not_found if missing), else
// $BLOCKMIG_POOLS (must exist), else ~/.config/blockmig/pools.toml, else
// /etc/blockmig/pools.toml; an empty config if none of the defaults exists.
Result<PoolsConfig> load_pools_config(std::optional<std::string> explicit_path);

// Opens the pool a POOL spec names (connecting to NFS / iSCSI servers).
Result<std::unique_ptr<Pool>> open_pool(std::string_view spec, const PoolsConfig& config);

struct VolumeRef {
    std::unique_ptr<Pool> pool;
    std::string name;
};

// Splits a VOLUME spec into its pool (opened) and the volume's name there.
// The volume need not exist (so `create` can use it).
Result<VolumeRef> resolve_volume(std::string_view spec, const PoolsConfig& config);

// "512", "64K", "10M", "1.5G", "2T", "4KiB", "1GB" (binary units: K = 1024).
// invalid_argument for empty, negative, unknown suffix or overflow.
Result<std::uint64_t> parse_size(std::string_view text);

}  // namespace blockmig::pools
