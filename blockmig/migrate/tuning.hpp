// How `migrate --policy/--compress/--parallel/--bandwidth/--max-downtime`
// become QEMU migration capabilities and parameters on each side, and the
// per-GiB timeout. plan_tuning() is pure (unit tested for every option
// combination and refusal); detect_support() asks one QEMU what it has —
// query-migrate-capabilities, query-migrate-parameters and, for
// compression, query-qmp-schema: never its version.
//
// Which side needs what (QEMU's migration/options.c, libvirt's
// qemuMigrationParamsApply): auto-converge, xbzrle, max-bandwidth,
// downtime-limit and max-postcopy-bandwidth act on the sending side only;
// postcopy-ram, multifd, multifd-channels and multifd-compression must
// match on both sides (the destination opens as many channels and
// decompresses the same way).
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "blockmig/migrate.hpp"
#include "qmp/client.hpp"

namespace blockmig::migrate {

// What one QEMU says it can do.
struct Support {
    std::string side;                            // "source" / "destination", for messages
    std::set<std::string> capabilities;          // query-migrate-capabilities
    std::set<std::string> parameters;            // the keys of query-migrate-parameters
    std::set<std::string> multifd_compressions;  // MultiFDCompression values in the schema
};

// Queries only. `compression_methods`: also read query-qmp-schema (big;
// only when --compress zstd asks). Errors: those of the QMP calls.
Result<Support> detect_support(qmp::Client& client, std::string side, bool compression_methods,
                               qmp::Milliseconds timeout);

struct TuningInput {
    MigratePolicy policy = MigratePolicy::minimal_downtime;
    MigrateCompress compress = MigrateCompress::none;
    int parallel = 0;             // multifd channels; 0 = no multifd
    std::uint64_t bandwidth = 0;  // bytes/s, already explicit (never 0)
    std::chrono::milliseconds max_downtime{300};
    std::uint64_t ram = 0;  // guest RAM, bytes (sizes the XBZRLE cache)
};

struct SideSettings {
    std::vector<std::pair<std::string, bool>> capabilities;
    nlohmann::json parameters = nlohmann::json::object();  // MigrateSetParameters
};

struct TuningPlan {
    SideSettings source, destination;
    // postcopy: both sides may switch (migrate/policy.hpp decides when).
    bool start_postcopy = false;
    std::string summary;  // one line for the progress view
};

// multifd-channels when zstd is asked without --parallel (QEMU's own default).
inline constexpr int k_default_multifd_channels = 2;
inline constexpr int k_max_multifd_channels = 255;  // QEMU's limit

// Pure. Errors: invalid_argument for option combinations that make no
// sense (xbzrle with multifd channels, parallel out of range);
// unsupported when a side lacks a capability, parameter or compression
// method the options need (naming the side and the option).
Result<TuningPlan> plan_tuning(const TuningInput& in, const Support& src, const Support& dst);

// Pure. The migration's deadline: `absolute` if set, else `per_gib`
// seconds per GiB of `bytes` (RAM plus the disks to copy; Nova's and
// KubeVirt's completion timeouts), rounded up to a whole second, else 0 = none.
std::chrono::seconds migration_timeout(std::chrono::seconds absolute, double per_gib,
                                       std::uint64_t bytes);

std::string_view to_string(MigratePolicy policy);
std::string_view to_string(MigrateCompress compress);

}  // namespace blockmig::migrate
