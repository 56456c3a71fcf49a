// VM / machine commands and fd passing.
#include <fmt/core.h>

#include "json_util.hpp"
#include "qmp/commands.hpp"

namespace blockmig::qmp {

using nlohmann::json;
using namespace detail;

namespace {


Result<const json*> expect_array(const json& reply, std::string_view command) {
    if (!reply.is_array())
        return fail(ErrorCode::protocol, fmt::format("{}: reply is not an array", command));
    return &reply;
}

}  // namespace

Result<VersionInfo> query_version(Client& client, Timeout timeout) {
    auto r = client.execute("query-version", json::object(), timeout);
    if (!r) return fail(r.error());
    const json* q = member(*r, "qemu");
    if (!q || !opt_int(*q, "major"))
        return fail(ErrorCode::protocol, "query-version: reply without qemu.major");
    return VersionInfo{static_cast<int>(integer(*q, "major")),
                       static_cast<int>(integer(*q, "minor")),
                       static_cast<int>(integer(*q, "micro")), str(*r, "package")};
}

Result<StatusInfo> query_status(Client& client, Timeout timeout) {
    auto r = client.execute("query-status", json::object(), timeout);
    if (!r) return fail(r.error());
    auto status = opt_str(*r, "status");
    if (!status) return fail(ErrorCode::protocol, "query-status: reply without status");
    return StatusInfo{*status, boolean(*r, "running")};
}

Result<void> stop(Client& client, Timeout timeout) {
    return run(client, "stop", json::object(), timeout);
}
Result<void> cont(Client& client, Timeout timeout) {
    return run(client, "cont", json::object(), timeout);
}
Result<void> quit(Client& client, Timeout timeout) {
    return run(client, "quit", json::object(), timeout);
}

Result<std::vector<MachineInfo>> query_machines(Client& client, Timeout timeout) {
    auto r = client.execute("query-machines", json::object(), timeout);
    if (!r) return fail(r.error());
    if (auto a = expect_array(*r, "query-machines"); !a) return fail(a.error());
    std::vector<MachineInfo> out;
    for (const json& m : *r) {
        out.push_back(MachineInfo{str(m, "name"), opt_str(m, "alias"), boolean(m, "is-default"),
                                  integer(m, "cpu-max"), boolean(m, "deprecated")});
    }
    return out;
}

Result<MemorySizeSummary> query_memory_size_summary(Client& client, Timeout timeout) {
    auto r = client.execute("query-memory-size-summary", json::object(), timeout);
    if (!r) return fail(r.error());
    auto base = opt_int(*r, "base-memory");
    if (!base)
        return fail(ErrorCode::protocol, "query-memory-size-summary: reply without base-memory");
    MemorySizeSummary s{static_cast<std::uint64_t>(*base), {}};
    if (auto p = opt_int(*r, "plugged-memory")) s.plugged_memory = static_cast<std::uint64_t>(*p);
    return s;
}

Result<std::vector<CpuInfo>> query_cpus_fast(Client& client, Timeout timeout) {
    auto r = client.execute("query-cpus-fast", json::object(), timeout);
    if (!r) return fail(r.error());
    if (auto a = expect_array(*r, "query-cpus-fast"); !a) return fail(a.error());
    std::vector<CpuInfo> out;
    for (const json& c : *r) {
        out.push_back(CpuInfo{integer(c, "cpu-index"), str(c, "qom-path"), integer(c, "thread-id"),
                              str(c, "target")});
    }
    return out;
}

Result<json> query_qmp_schema(Client& client, Timeout timeout) {
    auto r = client.execute("query-qmp-schema", json::object(), timeout);
    if (!r) return fail(r.error());
    if (!r->is_array()) return fail(ErrorCode::protocol, "query-qmp-schema: reply is not an array");
    return r;
}

Result<void> object_add(Client& client, const json& options, Timeout timeout) {
    if (!options.is_object() || !opt_str(options, "qom-type") || !opt_str(options, "id")) {
        return fail(ErrorCode::invalid_argument, "object-add: options need string qom-type and id");
    }
    return run(client, "object-add", options, timeout);
}

Result<void> object_del(Client& client, const std::string& id, Timeout timeout) {
    return run(client, "object-del", {{"id", id}}, timeout);
}

Result<void> getfd(Client& client, int fd, const std::string& name, Timeout timeout) {
    int fds[] = {fd};
    auto r = client.execute_with_fds("getfd", {{"fdname", name}}, fds, timeout);
    if (!r) return fail(r.error());
    return {};
}

Result<void> closefd(Client& client, const std::string& name, Timeout timeout) {
    return run(client, "closefd", {{"fdname", name}}, timeout);
}

Result<AddFdInfo> add_fd(Client& client, int fd, std::optional<std::int64_t> fdset_id,
                         std::optional<std::string> opaque, Timeout timeout) {
    json args = json::object();
    if (fdset_id) args["fdset-id"] = *fdset_id;
    if (opaque) args["opaque"] = *opaque;
    int fds[] = {fd};
    auto r = client.execute_with_fds("add-fd", args, fds, timeout);
    if (!r) return fail(r.error());
    auto set = opt_int(*r, "fdset-id");
    auto qfd = opt_int(*r, "fd");
    if (!set || !qfd) return fail(ErrorCode::protocol, "add-fd: reply without fdset-id/fd");
    return AddFdInfo{*set, *qfd};
}

}  // namespace blockmig::qmp
