// Block devices, nodes, image creation and NBD exports.
#include <fmt/core.h>

#include "json_util.hpp"
#include "qmp/commands.hpp"

namespace blockmig::qmp {

using nlohmann::json;
using namespace detail;

namespace {

std::uint64_t u64(const json& j, std::string_view key) {
    return static_cast<std::uint64_t>(integer(j, key));
}
std::optional<std::uint64_t> opt_u64(const json& j, std::string_view key) {
    if (auto v = opt_int(j, key)) return static_cast<std::uint64_t>(*v);
    return std::nullopt;
}

ImageInfo parse_image(const json& j) {
    ImageInfo i;
    i.filename = str(j, "filename");
    i.format = str(j, "format");
    i.virtual_size = u64(j, "virtual-size");
    i.actual_size = opt_u64(j, "actual-size");
    i.cluster_size = opt_u64(j, "cluster-size");
    i.backing_filename = opt_str(j, "backing-filename");
    i.dirty = boolean(j, "dirty-flag");
    return i;
}

Result<BlockNodeInfo> parse_node(const json& j, std::string_view command) {
    if (!j.is_object() || !opt_str(j, "drv")) {
        return fail(ErrorCode::protocol, fmt::format("{}: block node without drv", command));
    }
    BlockNodeInfo n;
    n.node_name = str(j, "node-name");
    n.file = str(j, "file");
    n.driver = str(j, "drv");
    n.read_only = boolean(j, "ro");
    n.encrypted = boolean(j, "encrypted");
    n.backing_file_depth = integer(j, "backing_file_depth");
    n.backing_file = opt_str(j, "backing_file");
    n.write_threshold = opt_u64(j, "write_threshold");
    if (const json* cache = member(j, "cache")) {
        if (boolean(*cache, "no-flush")) {
            n.cache_mode = "unsafe";
        } else if (boolean(*cache, "direct")) {
            n.cache_mode = boolean(*cache, "writeback") ? "none" : "directsync";
        } else {
            n.cache_mode = boolean(*cache, "writeback") ? "writeback" : "writethrough";
        }
    }
    // "image" nests "backing-image" recursively; flatten it top-down.
    for (const json* image = member(j, "image"); image && image->is_object();
         image = member(*image, "backing-image")) {
        n.chain.push_back(parse_image(*image));
    }
    n.raw = j;
    return n;
}

}  // namespace

Result<std::vector<BlockInfo>> query_block(Client& client, Timeout timeout) {
    auto r = client.execute("query-block", json::object(), timeout);
    if (!r) return fail(r.error());
    if (!r->is_array()) return fail(ErrorCode::protocol, "query-block: reply is not an array");
    std::vector<BlockInfo> out;
    for (const json& b : *r) {
        BlockInfo info;
        info.device = str(b, "device");
        info.qdev = opt_str(b, "qdev");
        info.removable = boolean(b, "removable");
        info.locked = boolean(b, "locked");
        info.io_status = opt_str(b, "io-status");
        if (const json* inserted = member(b, "inserted")) {
            auto node = parse_node(*inserted, "query-block");
            if (!node) return fail(node.error());
            info.inserted = std::move(*node);
        }
        out.push_back(std::move(info));
    }
    return out;
}

Result<std::vector<BlockNodeInfo>> query_named_block_nodes(Client& client, bool flat,
                                                           Timeout timeout) {
    auto r = client.execute("query-named-block-nodes", {{"flat", flat}}, timeout);
    if (!r) return fail(r.error());
    if (!r->is_array())
        return fail(ErrorCode::protocol, "query-named-block-nodes: reply is not an array");
    std::vector<BlockNodeInfo> out;
    for (const json& j : *r) {
        auto node = parse_node(j, "query-named-block-nodes");
        if (!node) return fail(node.error());
        out.push_back(std::move(*node));
    }
    return out;
}

Result<std::vector<BlockStats>> query_blockstats(Client& client, bool query_nodes,
                                                 Timeout timeout) {
    auto r = client.execute("query-blockstats", {{"query-nodes", query_nodes}}, timeout);
    if (!r) return fail(r.error());
    if (!r->is_array()) return fail(ErrorCode::protocol, "query-blockstats: reply is not an array");
    std::vector<BlockStats> out;
    for (const json& j : *r) {
        const json* stats = member(j, "stats");
        if (!stats) return fail(ErrorCode::protocol, "query-blockstats: entry without stats");
        out.push_back(BlockStats{opt_str(j, "device"), opt_str(j, "node-name"), opt_str(j, "qdev"),
                                 u64(*stats, "rd_bytes"), u64(*stats, "wr_bytes"),
                                 u64(*stats, "rd_operations"), u64(*stats, "wr_operations"),
                                 u64(*stats, "flush_operations"), j});
    }
    return out;
}

Result<void> blockdev_add(Client& client, const json& options, Timeout timeout) {
    if (!options.is_object() || !opt_str(options, "driver")) {
        return fail(ErrorCode::invalid_argument, "blockdev-add: options need a string driver");
    }
    return run(client, "blockdev-add", options, timeout);
}

Result<void> blockdev_del(Client& client, const std::string& node_name, Timeout timeout) {
    return run(client, "blockdev-del", {{"node-name", node_name}}, timeout);
}

Result<void> yank_block_node(Client& client, const std::string& node_name, Timeout timeout) {
    const json instance{{"type", "block-node"}, {"node-name", node_name}};
    const json args{{"instances", json::array({instance})}};
    // Out-of-band when negotiated: the main loop may be stuck on the very
    // connection this shuts down, and in-band commands wait for it.
    auto r = client.oob_enabled() ? client.execute_oob("yank", args, timeout)
                                  : client.execute("yank", args, timeout);
    if (!r) return fail(r.error());
    return {};
}

Result<void> blockdev_create(Client& client, const std::string& job_id, const json& options,
                             Timeout timeout) {
    return run(client, "blockdev-create", {{"job-id", job_id}, {"options", options}}, timeout);
}

Result<void> create_image(Client& client, const std::string& job_id, const json& options,
                          Timeout timeout) {
    auto events = client.subscribe(job_events(job_id));  // before the job starts: no event lost
    if (auto ok = blockdev_create(client, job_id, options, timeout); !ok) return ok;
    auto concluded = wait_for_job_status(client, events, job_id, "concluded", timeout);
    // blockdev-create jobs are never auto-dismissed; a job that failed after
    // "aborting" must still be dismissed once it concludes.
    if (!concluded) {
        if (concluded.error().code != ErrorCode::io_error) return fail(concluded.error());
        if (wait_for_job_status(client, events, job_id, "concluded", Milliseconds(5000))) {
            (void)job_dismiss(client, job_id);
        }
        return fail(concluded.error().with_context("blockdev-create"));
    }
    auto jobs = query_jobs(client, timeout);
    if (!jobs) return fail(jobs.error());
    for (const JobInfo& j : *jobs) {
        if (j.id == job_id && j.error) {
            (void)job_dismiss(client, job_id);
            return fail(ErrorCode::io_error,
                        fmt::format("blockdev-create: job {}: {}", job_id, *j.error));
        }
    }
    return job_dismiss(client, job_id, timeout);
}

SocketAddress SocketAddress::inet(std::string host, std::uint16_t port) {
    SocketAddress a;
    a.kind = Kind::inet;
    a.host = std::move(host);
    a.port = std::to_string(port);
    return a;
}

SocketAddress SocketAddress::unix_path(std::string path) {
    SocketAddress a;
    a.kind = Kind::unix_socket;
    a.path = std::move(path);
    return a;
}

json to_json(const SocketAddress& a) {
    switch (a.kind) {
        case SocketAddress::Kind::inet:
            return {{"type", "inet"}, {"host", a.host}, {"port", a.port}};
        case SocketAddress::Kind::unix_socket:
            return {{"type", "unix"}, {"path", a.path}};
        case SocketAddress::Kind::fd:
            return {{"type", "fd"}, {"str", a.fd_name}};
    }
    return json::object();
}

json to_legacy_json(const SocketAddress& a) {
    json flat = to_json(a);
    std::string type = flat["type"];
    flat.erase("type");
    return {{"type", type}, {"data", flat}};
}

Result<void> nbd_server_start(Client& client, const SocketAddress& address,
                              std::optional<std::int64_t> max_connections, Timeout timeout) {
    json args = {{"addr", to_legacy_json(address)}};
    if (max_connections) args["max-connections"] = *max_connections;
    return run(client, "nbd-server-start", args, timeout);
}

Result<void> nbd_server_start_tls(Client& client, const SocketAddress& address,
                                  const std::string& tls_creds, Timeout timeout) {
    return run(client, "nbd-server-start",
               {{"addr", to_legacy_json(address)}, {"tls-creds", tls_creds}}, timeout);
}

Result<void> nbd_server_stop(Client& client, Timeout timeout) {
    return run(client, "nbd-server-stop", json::object(), timeout);
}

Result<void> block_export_add(Client& client, const NbdExport& e, Timeout timeout) {
    std::string name = e.name.value_or(e.node_name);
    json args = {{"type", "nbd"},
                 {"id", e.id},
                 {"node-name", e.node_name},
                 {"writable", e.writable},
                 {"name", name}};
    if (e.description) args["description"] = *e.description;
    auto r = client.execute("block-export-add", args, timeout);
    if (r) return {};
    if (r.error().qmp_class != "CommandNotFound") return fail(r.error());
    // QEMU < 5.2 (docs/about/removed-features.rst: nbd-server-add was removed in 7.0).
    json legacy = {{"device", e.node_name}, {"name", name}, {"writable", e.writable}};
    if (e.description) legacy["description"] = *e.description;
    return run(client, "nbd-server-add", legacy, timeout);
}

Result<void> block_export_del(Client& client, const NbdExport& e, bool force, Timeout timeout) {
    json args = {{"id", e.id}};
    if (force) args["mode"] = "hard";
    auto r = client.execute("block-export-del", args, timeout);
    if (r) return {};
    if (r.error().qmp_class != "CommandNotFound") return fail(r.error());
    json legacy = {{"name", e.name.value_or(e.node_name)}};
    if (force) legacy["mode"] = "hard";
    return run(client, "nbd-server-remove", legacy, timeout);
}

}  // namespace blockmig::qmp
