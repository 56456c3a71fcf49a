// Block jobs: mirror, control and queries.
#include <fmt/core.h>

#include "json_util.hpp"
#include "qmp/commands.hpp"

namespace blockmig::qmp {

using nlohmann::json;
using namespace detail;

namespace {

Result<void> check_id(std::string_view command, const std::string& job_id) {
    if (job_id.empty())
        return fail(ErrorCode::invalid_argument, fmt::format("{}: empty job id", command));
    return {};
}

}  // namespace

std::string_view to_string(MirrorSync sync) {
    switch (sync) {
        case MirrorSync::full:
            return "full";
        case MirrorSync::top:
            return "top";
        case MirrorSync::none:
            return "none";
    }
    return "full";
}

std::string_view to_string(CopyMode mode) {
    return mode == CopyMode::write_blocking ? "write-blocking" : "background";
}

std::string_view to_string(OnError action) {
    switch (action) {
        case OnError::report:
            return "report";
        case OnError::ignore:
            return "ignore";
        case OnError::enospc:
            return "enospc";
        case OnError::stop:
            return "stop";
    }
    return "report";
}

json to_json(const MirrorOptions& o) {
    json args = {{"device", o.device}, {"target", o.target}, {"sync", to_string(o.sync)}};
    if (!o.job_id.empty()) args["job-id"] = o.job_id;
    if (o.replaces) args["replaces"] = *o.replaces;
    if (o.speed) args["speed"] = *o.speed;
    if (o.granularity) args["granularity"] = *o.granularity;
    if (o.buf_size) args["buf-size"] = *o.buf_size;
    if (o.on_source_error) args["on-source-error"] = to_string(*o.on_source_error);
    if (o.on_target_error) args["on-target-error"] = to_string(*o.on_target_error);
    if (o.filter_node_name) args["filter-node-name"] = *o.filter_node_name;
    if (o.copy_mode) args["copy-mode"] = to_string(*o.copy_mode);
    if (o.auto_finalize) args["auto-finalize"] = *o.auto_finalize;
    if (o.auto_dismiss) args["auto-dismiss"] = *o.auto_dismiss;
    return args;
}

Result<void> blockdev_mirror(Client& client, const MirrorOptions& options, Timeout timeout) {
    if (options.device.empty() || options.target.empty()) {
        return fail(ErrorCode::invalid_argument, "blockdev-mirror: device and target are required");
    }
    if (options.granularity &&
        (*options.granularity < 512 || *options.granularity > 64 * 1024 * 1024 ||
         (*options.granularity & (*options.granularity - 1)) != 0)) {
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("blockdev-mirror: granularity {} is not a power of 2 in 512 B..64 MiB",
                        *options.granularity));
    }
    return run(client, "blockdev-mirror", to_json(options), timeout);
}

Result<void> drive_mirror(Client& client, const DriveMirrorOptions& options, Timeout timeout) {
    if (options.mirror.device.empty() || options.mirror.target.empty()) {
        return fail(ErrorCode::invalid_argument, "drive-mirror: device and target are required");
    }
    json args = to_json(options.mirror);
    args.erase("filter-node-name");  // not a drive-mirror argument
    if (options.format) args["format"] = *options.format;
    args["mode"] = options.existing ? "existing" : "absolute-paths";
    return run(client, "drive-mirror", args, timeout);
}

Result<void> block_job_set_speed(Client& client, const std::string& job_id, std::uint64_t speed,
                                 Timeout timeout) {
    if (auto ok = check_id("block-job-set-speed", job_id); !ok) return ok;
    return run(client, "block-job-set-speed", {{"device", job_id}, {"speed", speed}}, timeout);
}

Result<void> block_job_cancel(Client& client, const std::string& job_id, bool force,
                              Timeout timeout) {
    if (auto ok = check_id("block-job-cancel", job_id); !ok) return ok;
    json args = {{"device", job_id}};
    if (force) args["force"] = true;
    return run(client, "block-job-cancel", args, timeout);
}

Result<void> block_job_complete(Client& client, const std::string& job_id, Timeout timeout) {
    if (auto ok = check_id("block-job-complete", job_id); !ok) return ok;
    return run(client, "block-job-complete", {{"device", job_id}}, timeout);
}

Result<void> block_job_pause(Client& client, const std::string& job_id, Timeout timeout) {
    if (auto ok = check_id("block-job-pause", job_id); !ok) return ok;
    return run(client, "block-job-pause", {{"device", job_id}}, timeout);
}

Result<void> block_job_resume(Client& client, const std::string& job_id, Timeout timeout) {
    if (auto ok = check_id("block-job-resume", job_id); !ok) return ok;
    return run(client, "block-job-resume", {{"device", job_id}}, timeout);
}

Result<void> block_job_change(Client& client, const std::string& job_id, const std::string& type,
                              const json& options, Timeout timeout) {
    if (auto ok = check_id("block-job-change", job_id); !ok) return ok;
    if (!options.is_object())
        return fail(ErrorCode::invalid_argument, "block-job-change: options must be an object");
    json args = options;
    args["id"] = job_id;
    args["type"] = type;
    return run(client, "block-job-change", args, timeout);
}

Result<void> job_dismiss(Client& client, const std::string& job_id, Timeout timeout) {
    if (auto ok = check_id("job-dismiss", job_id); !ok) return ok;
    return run(client, "job-dismiss", {{"id", job_id}}, timeout);
}

Result<void> job_finalize(Client& client, const std::string& job_id, Timeout timeout) {
    if (auto ok = check_id("job-finalize", job_id); !ok) return ok;
    return run(client, "job-finalize", {{"id", job_id}}, timeout);
}

Result<void> job_cancel(Client& client, const std::string& job_id, Timeout timeout) {
    if (auto ok = check_id("job-cancel", job_id); !ok) return ok;
    return run(client, "job-cancel", {{"id", job_id}}, timeout);
}

Result<std::vector<BlockJobInfo>> query_block_jobs(Client& client, Timeout timeout) {
    auto r = client.execute("query-block-jobs", json::object(), timeout);
    if (!r) return fail(r.error());
    if (!r->is_array()) return fail(ErrorCode::protocol, "query-block-jobs: reply is not an array");
    std::vector<BlockJobInfo> out;
    for (const json& j : *r) {
        BlockJobInfo b;
        b.id = str(j, "device");
        b.type = str(j, "type");
        b.status = str(j, "status");
        b.offset = static_cast<std::uint64_t>(integer(j, "offset"));
        b.len = static_cast<std::uint64_t>(integer(j, "len"));
        b.speed = static_cast<std::uint64_t>(integer(j, "speed"));
        b.busy = boolean(j, "busy");
        b.paused = boolean(j, "paused");
        b.ready = boolean(j, "ready");
        b.auto_finalize = opt_bool(j, "auto-finalize").value_or(true);
        b.auto_dismiss = opt_bool(j, "auto-dismiss").value_or(true);
        b.io_status = str(j, "io-status");
        b.error = opt_str(j, "error");
        b.actively_synced = opt_bool(j, "actively-synced");
        if (b.id.empty()) return fail(ErrorCode::protocol, "query-block-jobs: job without device");
        out.push_back(std::move(b));
    }
    return out;
}

Result<std::vector<JobInfo>> query_jobs(Client& client, Timeout timeout) {
    auto r = client.execute("query-jobs", json::object(), timeout);
    if (!r) return fail(r.error());
    if (!r->is_array()) return fail(ErrorCode::protocol, "query-jobs: reply is not an array");
    std::vector<JobInfo> out;
    for (const json& j : *r) {
        JobInfo info{str(j, "id"),
                     str(j, "type"),
                     str(j, "status"),
                     static_cast<std::uint64_t>(integer(j, "current-progress")),
                     static_cast<std::uint64_t>(integer(j, "total-progress")),
                     opt_str(j, "error")};
        if (info.id.empty()) return fail(ErrorCode::protocol, "query-jobs: job without id");
        out.push_back(std::move(info));
    }
    return out;
}

}  // namespace blockmig::qmp
