// Typed QMP commands: machine/VM control, block devices and nodes, block
// jobs, NBD exports, fds. Migration lives in qmp/migration.hpp, feature
// detection in qmp/features.hpp. Argument names follow QEMU 7.2's qapi/*.json.
//
// Every function runs one command on a running Client and returns its typed
// reply; errors are those of Client::execute() (qmp_command_failed with the
// QEMU class, timeout, interrupted) plus protocol when a reply lacks a field
// the type requires. `timeout` is per command; nullopt = the client default.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qmp/client.hpp"
#include "qmp/error.hpp"

namespace blockmig::qmp {

using Timeout = std::optional<Milliseconds>;

// ---- VM / machine -------------------------------------------------------------

struct VersionInfo {
    int major = 0, minor = 0, micro = 0;
    std::string package;
};
Result<VersionInfo> query_version(Client& client, Timeout timeout = {});

struct StatusInfo {
    std::string status;  // RunState: "running", "paused", "inmigrate", "postmigrate", ...
    bool running = false;
};
Result<StatusInfo> query_status(Client& client, Timeout timeout = {});

Result<void> stop(Client& client, Timeout timeout = {});
Result<void> cont(Client& client, Timeout timeout = {});
// Asks QEMU to exit; QEMU replies before closing the connection.
Result<void> quit(Client& client, Timeout timeout = {});

struct MachineInfo {
    std::string name;
    std::optional<std::string> alias;
    bool is_default = false;
    std::int64_t cpu_max = 0;
    bool deprecated = false;
};
Result<std::vector<MachineInfo>> query_machines(Client& client, Timeout timeout = {});

struct MemorySizeSummary {
    std::uint64_t base_memory = 0;
    std::optional<std::uint64_t> plugged_memory;
};
Result<MemorySizeSummary> query_memory_size_summary(Client& client, Timeout timeout = {});

struct CpuInfo {
    std::int64_t cpu_index = 0;
    std::string qom_path;
    std::int64_t thread_id = 0;
    std::string target;
};
Result<std::vector<CpuInfo>> query_cpus_fast(Client& client, Timeout timeout = {});

// The raw schema (an array of SchemaInfo); see qmp/features.hpp to query it.
Result<nlohmann::json> query_qmp_schema(Client& client, Timeout timeout = {});

// `options` is the whole object-add argument object, e.g.
// {"qom-type": "throttle-group", "id": "tg0", "limits": {...}}.
Result<void> object_add(Client& client, const nlohmann::json& options, Timeout timeout = {});
Result<void> object_del(Client& client, const std::string& id, Timeout timeout = {});

// ---- fds --------------------------------------------------------------------

// Hands `fd` to QEMU under `name` (getfd); the caller still owns its copy.
// Errors also: unsupported on a transport without fd passing.
Result<void> getfd(Client& client, int fd, const std::string& name, Timeout timeout = {});
Result<void> closefd(Client& client, const std::string& name, Timeout timeout = {});
struct AddFdInfo {
    std::int64_t fdset_id = 0;
    std::int64_t fd = 0;  // QEMU's number for it; open it as /dev/fdset/<fdset_id>
};
Result<AddFdInfo> add_fd(Client& client, int fd, std::optional<std::int64_t> fdset_id = {},
                         std::optional<std::string> opaque = {}, Timeout timeout = {});

// ---- block devices and nodes ------------------------------------------------------

// One layer of an image chain.
struct ImageInfo {
    std::string filename;
    std::string format;
    std::uint64_t virtual_size = 0;
    std::optional<std::uint64_t> actual_size;
    std::optional<std::uint64_t> cluster_size;
    std::optional<std::string> backing_filename;
    bool dirty = false;
};

struct BlockNodeInfo {  // BlockDeviceInfo in the QAPI schema
    std::string node_name;
    std::string file;    // filename or JSON pseudo-filename
    std::string driver;  // "drv": qcow2, raw, file, nbd, ...
    bool read_only = false;
    bool encrypted = false;
    std::int64_t backing_file_depth = 0;
    std::optional<std::string> backing_file;
    std::string cache_mode;        // "writeback", "none", "directsync" (from cache.*)
    std::vector<ImageInfo> chain;  // image, then its backing image, and so on
    std::optional<std::uint64_t> write_threshold;
    nlohmann::json raw;
};

struct BlockInfo {
    std::string device;               // legacy drive id ("" for -blockdev)
    std::optional<std::string> qdev;  // qdev id or QOM path of the device
    bool removable = false;
    bool locked = false;
    std::optional<std::string> io_status;
    std::optional<BlockNodeInfo> inserted;  // nullopt: no medium
};
Result<std::vector<BlockInfo>> query_block(Client& client, Timeout timeout = {});
// With flat = true (the default) each node appears once and backing images are
// not nested in `chain` beyond the node's own image.
Result<std::vector<BlockNodeInfo>> query_named_block_nodes(Client& client, bool flat = true,
                                                           Timeout timeout = {});

struct BlockStats {
    std::optional<std::string> device, node_name, qdev;
    std::uint64_t rd_bytes = 0, wr_bytes = 0, rd_operations = 0, wr_operations = 0,
                  flush_operations = 0;
    nlohmann::json raw;
};
Result<std::vector<BlockStats>> query_blockstats(Client& client, bool query_nodes = false,
                                                 Timeout timeout = {});

// `options` is a BlockdevOptions object (driver, node-name, ...), as pools
// produce it.
Result<void> blockdev_add(Client& client, const nlohmann::json& options, Timeout timeout = {});
Result<void> blockdev_del(Client& client, const std::string& node_name, Timeout timeout = {});
// `yank` of one NBD client node (QEMU >= 6.0): its connection is shut down at
// once, so requests stuck on a dead peer fail instead of waiting for TCP.
// Sent out-of-band when the client negotiated it.
// Errors: command_not_found on older QEMUs; a node that is no yank instance.
Result<void> yank_block_node(Client& client, const std::string& node_name, Timeout timeout = {});

// Starts a blockdev-create job (`options` is a BlockdevCreateOptions object).
Result<void> blockdev_create(Client& client, const std::string& job_id,
                             const nlohmann::json& options, Timeout timeout = {});
// Runs blockdev-create to the end: subscribes, starts the job, waits for
// "concluded" (failing with the job's error if it aborted), then dismisses it.
// `timeout` bounds the whole job.
Result<void> create_image(Client& client, const std::string& job_id, const nlohmann::json& options,
                          Timeout timeout = {});

// ---- block jobs ------------------------------------------------------------------

enum class MirrorSync { full, top, none };
enum class CopyMode { background, write_blocking };
enum class OnError { report, ignore, enospc, stop };

struct MirrorOptions {
    std::string job_id;
    std::string device;  // source node-name (or a device name)
    std::string target;  // target node-name (already added with blockdev-add)
    MirrorSync sync = MirrorSync::full;
    std::optional<std::string> replaces;
    std::optional<std::uint64_t> speed;  // bytes/s; 0 = unlimited
    std::optional<std::uint32_t> granularity;
    std::optional<std::uint64_t> buf_size;
    std::optional<OnError> on_source_error, on_target_error;
    std::optional<std::string> filter_node_name;
    std::optional<CopyMode> copy_mode;  // needs QEMU >= 3.0 (Features::mirror_copy_mode)
    std::optional<bool> auto_finalize, auto_dismiss;
};
// The blockdev-mirror arguments object (exposed for logging and tests).
nlohmann::json to_json(const MirrorOptions& options);
Result<void> blockdev_mirror(Client& client, const MirrorOptions& options, Timeout timeout = {});

struct DriveMirrorOptions {
    MirrorOptions mirror;  // target is a file name here
    std::optional<std::string> format;
    bool existing = false;  // mode "existing" instead of "absolute-paths"
};
Result<void> drive_mirror(Client& client, const DriveMirrorOptions& options, Timeout timeout = {});

Result<void> block_job_set_speed(Client& client, const std::string& job_id, std::uint64_t speed,
                                 Timeout timeout = {});
// force = true cancels a READY mirror without a final sync; false after READY
// means "finish copying, do not pivot" (QEMU's soft cancel).
Result<void> block_job_cancel(Client& client, const std::string& job_id, bool force = false,
                              Timeout timeout = {});
Result<void> block_job_complete(Client& client, const std::string& job_id, Timeout timeout = {});
Result<void> block_job_pause(Client& client, const std::string& job_id, Timeout timeout = {});
Result<void> block_job_resume(Client& client, const std::string& job_id, Timeout timeout = {});
// block-job-change (QEMU >= 8.2): `options` besides id/type, e.g.
// {"copy-mode": "write-blocking"}. Errors: qmp_command_failed
// (CommandNotFound) on older QEMU; check Features::block_job_change first.
Result<void> block_job_change(Client& client, const std::string& job_id, const std::string& type,
                              const nlohmann::json& options, Timeout timeout = {});
Result<void> job_dismiss(Client& client, const std::string& job_id, Timeout timeout = {});
Result<void> job_finalize(Client& client, const std::string& job_id, Timeout timeout = {});
Result<void> job_cancel(Client& client, const std::string& job_id, Timeout timeout = {});

struct BlockJobInfo {
    std::string id;      // "device" in the reply: the job id
    std::string type;    // "mirror", "commit", "stream", "backup", ...
    std::string status;  // JobStatus: created running paused ready standby waiting pending aborting
                         // concluded null
    std::uint64_t offset = 0, len = 0;
    std::uint64_t speed = 0;
    bool busy = false, paused = false, ready = false;
    bool auto_finalize = true, auto_dismiss = true;
    std::string io_status;
    std::optional<std::string> error;
    // Mirror jobs, QEMU >= 8.2 (BlockJobInfoMirror): true once a
    // write-blocking mirror is in sync and every guest write reaches both
    // sides before it completes. nullopt when QEMU does not report it.
    std::optional<bool> actively_synced;
};
Result<std::vector<BlockJobInfo>> query_block_jobs(Client& client, Timeout timeout = {});

struct JobInfo {
    std::string id;
    std::string type;  // JobType: "mirror", "create", ...
    std::string status;
    std::uint64_t current_progress = 0, total_progress = 0;
    std::optional<std::string> error;
};
Result<std::vector<JobInfo>> query_jobs(Client& client, Timeout timeout = {});

// ---- NBD server and exports --------------------------------------------------------

struct SocketAddress {
    enum class Kind { inet, unix_socket, fd } kind = Kind::inet;
    std::string host, port;  // inet
    std::string path;        // unix_socket
    std::string fd_name;     // fd (a name given with getfd)
    static SocketAddress inet(std::string host, std::uint16_t port);
    static SocketAddress unix_path(std::string path);
};
// Flat SocketAddress ({"type": "inet", "host", "port"}), as blockdev-add nbd takes it.
nlohmann::json to_json(const SocketAddress& address);
// SocketAddressLegacy ({"type": "inet", "data": {...}}), as nbd-server-start takes it.
nlohmann::json to_legacy_json(const SocketAddress& address);

Result<void> nbd_server_start(Client& client, const SocketAddress& address,
                              std::optional<std::int64_t> max_connections = {},
                              Timeout timeout = {});
// nbd-server-start with TLS: clients must complete STARTTLS with the
// `tls_creds` object (a tls-creds-x509 with endpoint server) first.
Result<void> nbd_server_start_tls(Client& client, const SocketAddress& address,
                                  const std::string& tls_creds, Timeout timeout = {});
Result<void> nbd_server_stop(Client& client, Timeout timeout = {});

struct NbdExport {
    std::string id;  // export id (block-export-add); unused by the fallback
    std::string node_name;
    std::optional<std::string> name;  // NBD export name; defaults to node_name
    bool writable = false;
    std::optional<std::string> description;
};
// block-export-add type=nbd; on a QEMU without it (< 5.2, CommandNotFound)
// falls back to nbd-server-add.
Result<void> block_export_add(Client& client, const NbdExport& export_, Timeout timeout = {});
// block-export-del; falls back to nbd-server-remove (which takes the NBD
// export name, so pass the same NbdExport). force = mode "hard".
Result<void> block_export_del(Client& client, const NbdExport& export_, bool force = false,
                              Timeout timeout = {});

std::string_view to_string(MirrorSync sync);
std::string_view to_string(CopyMode mode);
std::string_view to_string(OnError action);

}  // namespace blockmig::qmp
