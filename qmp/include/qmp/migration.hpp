// Typed migration commands (qapi/migration.json). Errors as in
// qmp/commands.hpp: those of Client::execute(), protocol for a malformed reply.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qmp/commands.hpp"

namespace blockmig::qmp {

// uri: "tcp:HOST:PORT", "unix:PATH", "fd:NAME", "exec:..."
Result<void> migrate(Client& client, const std::string& uri, Timeout timeout = {});
// Needs QEMU started with -incoming defer.
Result<void> migrate_incoming(Client& client, const std::string& uri, Timeout timeout = {});
struct IncomingOptions {
    // exit-on-error (QEMU >= 9.1; check Features first): false keeps QEMU
    // alive after a failed incoming migration (status failed). Absent:
    // QEMU's default, it exits.
    std::optional<bool> exit_on_error;
};
Result<void> migrate_incoming(Client& client, const std::string& uri,
                              const IncomingOptions& options, Timeout timeout = {});
// e.g. {{"events", true}, {"pause-before-switchover", true}}
Result<void> migrate_set_capabilities(Client& client,
                                      const std::vector<std::pair<std::string, bool>>& capabilities,
                                      Timeout timeout = {});
// `parameters` is a MigrateSetParameters object, e.g. {"max-bandwidth": 125000000}.
Result<void> migrate_set_parameters(Client& client, const nlohmann::json& parameters,
                                    Timeout timeout = {});
Result<std::vector<std::pair<std::string, bool>>> query_migrate_capabilities(Client& client,
                                                                             Timeout timeout = {});
Result<nlohmann::json> query_migrate_parameters(Client& client, Timeout timeout = {});
// state: the status the migration waits in, e.g. "pre-switchover".
Result<void> migrate_continue(Client& client, const std::string& state, Timeout timeout = {});
Result<void> migrate_cancel(Client& client, Timeout timeout = {});
Result<void> migrate_start_postcopy(Client& client, Timeout timeout = {});

// Post-copy recovery (QEMU >= 3.0; docs/devel/migration/postcopy.rst): after
// a broken link both sides sit in postcopy-paused. The destination listens
// again with migrate-recover, the source reconnects with `migrate` resume=true.
// migrate-recover and migrate-pause are allow-oob: sent out-of-band when the
// client negotiated oob, since the destination's main thread may be blocked
// on a guest page that has not arrived (in-band QMP would wait with it).
Result<void> migrate_recover(Client& client, const std::string& uri, Timeout timeout = {});
Result<void> migrate_resume(Client& client, const std::string& uri, Timeout timeout = {});
// Forces a post-copy migration into postcopy-paused (its socket shut down):
// a link that drops packets silently is otherwise noticed only when TCP
// gives up, many minutes later.
Result<void> migrate_pause(Client& client, Timeout timeout = {});

struct MigrationRamStats {
    std::uint64_t transferred = 0, remaining = 0, total = 0, duplicate = 0, normal = 0;
    std::uint64_t dirty_pages_rate = 0, dirty_sync_count = 0, page_size = 0;
    double mbps = 0;
};

struct MigrationInfo {
    // MigrationStatus: none setup active postcopy-active pre-switchover device
    // completed failed cancelling cancelled wait-unplug ...; "none" before any.
    std::string status = "none";
    std::optional<std::int64_t> total_time_ms, downtime_ms, expected_downtime_ms, setup_time_ms;
    std::optional<MigrationRamStats> ram;
    std::optional<std::string> error_desc;
    // Where an incoming migration listens (QEMU >= 4.0; "socket-address"),
    // e.g. the port QEMU picked for "tcp:HOST:0". Empty when not reported.
    std::vector<std::string> listen_ports;
    nlohmann::json raw;
};
Result<MigrationInfo> query_migrate(Client& client, Timeout timeout = {});

// ---- describing a guest for the migration pre-flight -------------------------

// The QOM type of /machine, e.g. "pc-i440fx-7.2-machine": two QEMUs can
// migrate only between identical machine types.
Result<std::string> query_machine_type(Client& client, Timeout timeout = {});

struct QomProperty {
    std::string name;
    std::string type;  // e.g. "child<virtio-blk-pci>"
};
// qom-list PATH, e.g. "/machine/peripheral" (the devices given an id).
Result<std::vector<QomProperty>> qom_list(Client& client, const std::string& path,
                                          Timeout timeout = {});

// Starts measuring the guest's dirty rate for `seconds`. mode: "page-sampling"
// (default), "dirty-ring", "dirty-bitmap".
Result<void> calc_dirty_rate(Client& client, std::int64_t seconds,
                             std::optional<std::int64_t> sample_pages = {},
                             std::optional<std::string> mode = {}, Timeout timeout = {});

struct DirtyRateInfo {
    std::string status;                               // "unstarted", "measuring", "measured"
    std::optional<std::int64_t> dirty_rate_mb_per_s;  // set once measured
    std::int64_t start_time = 0, calc_time = 0, sample_pages = 0;
    std::string mode;
};
Result<DirtyRateInfo> query_dirty_rate(Client& client, Timeout timeout = {});

}  // namespace blockmig::qmp
