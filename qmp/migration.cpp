#include "qmp/migration.hpp"

#include <fmt/core.h>

#include "json_util.hpp"

namespace blockmig::qmp {

using nlohmann::json;
using namespace detail;

Result<void> migrate(Client& client, const std::string& uri, Timeout timeout) {
    return run(client, "migrate", {{"uri", uri}}, timeout);
}

Result<void> migrate_incoming(Client& client, const std::string& uri, Timeout timeout) {
    return migrate_incoming(client, uri, IncomingOptions{}, timeout);
}

Result<void> migrate_incoming(Client& client, const std::string& uri,
                              const IncomingOptions& options, Timeout timeout) {
    json args{{"uri", uri}};
    if (options.exit_on_error) args["exit-on-error"] = *options.exit_on_error;
    return run(client, "migrate-incoming", args, timeout);
}

Result<void> migrate_set_capabilities(Client& client,
                                      const std::vector<std::pair<std::string, bool>>& capabilities,
                                      Timeout timeout) {
    json list = json::array();
    for (const auto& [name, state] : capabilities)
        list.push_back({{"capability", name}, {"state", state}});
    return run(client, "migrate-set-capabilities", {{"capabilities", list}}, timeout);
}

Result<void> migrate_set_parameters(Client& client, const json& parameters, Timeout timeout) {
    if (!parameters.is_object())
        return fail(ErrorCode::invalid_argument, "migrate-set-parameters: not an object");
    return run(client, "migrate-set-parameters", parameters, timeout);
}

Result<std::vector<std::pair<std::string, bool>>> query_migrate_capabilities(Client& client,
                                                                             Timeout timeout) {
    auto r = client.execute("query-migrate-capabilities", json::object(), timeout);
    if (!r) return fail(r.error());
    if (!r->is_array())
        return fail(ErrorCode::protocol, "query-migrate-capabilities: reply is not an array");
    std::vector<std::pair<std::string, bool>> out;
    for (const json& c : *r) out.emplace_back(str(c, "capability"), boolean(c, "state"));
    return out;
}

Result<json> query_migrate_parameters(Client& client, Timeout timeout) {
    return client.execute("query-migrate-parameters", json::object(), timeout);
}

Result<void> migrate_continue(Client& client, const std::string& state, Timeout timeout) {
    return run(client, "migrate-continue", {{"state", state}}, timeout);
}

Result<void> migrate_cancel(Client& client, Timeout timeout) {
    return run(client, "migrate_cancel", json::object(), timeout);
}

Result<void> migrate_start_postcopy(Client& client, Timeout timeout) {
    return run(client, "migrate-start-postcopy", json::object(), timeout);
}

namespace {

Result<void> run_oob_if_possible(Client& client, std::string_view command, const json& args,
                                 Timeout timeout) {
    if (!client.oob_enabled()) return run(client, command, args, timeout);
    auto r = client.execute_oob(command, args, timeout);
    if (!r) return fail(r.error());
    return {};
}

}  // namespace

Result<void> migrate_recover(Client& client, const std::string& uri, Timeout timeout) {
    return run_oob_if_possible(client, "migrate-recover", {{"uri", uri}}, timeout);
}

Result<void> migrate_resume(Client& client, const std::string& uri, Timeout timeout) {
    return run(client, "migrate", {{"uri", uri}, {"resume", true}}, timeout);
}

Result<void> migrate_pause(Client& client, Timeout timeout) {
    return run_oob_if_possible(client, "migrate-pause", json::object(), timeout);
}

Result<MigrationInfo> query_migrate(Client& client, Timeout timeout) {
    auto r = client.execute("query-migrate", json::object(), timeout);
    if (!r) return fail(r.error());
    if (!r->is_object()) return fail(ErrorCode::protocol, "query-migrate: reply is not an object");
    MigrationInfo m;
    m.status = opt_str(*r, "status").value_or("none");
    m.total_time_ms = opt_int(*r, "total-time");
    m.downtime_ms = opt_int(*r, "downtime");
    m.expected_downtime_ms = opt_int(*r, "expected-downtime");
    m.setup_time_ms = opt_int(*r, "setup-time");
    m.error_desc = opt_str(*r, "error-desc");
    if (const json* ram = member(*r, "ram")) {
        auto u = [&](std::string_view k) { return static_cast<std::uint64_t>(integer(*ram, k)); };
        m.ram = MigrationRamStats{
            u("transferred"),      u("remaining"), u("total"),
            u("duplicate"),        u("normal"),    u("dirty-pages-rate"),
            u("dirty-sync-count"), u("page-size"), opt_num(*ram, "mbps").value_or(0)};
    }
    if (const json* addresses = member(*r, "socket-address"); addresses && addresses->is_array())
        for (const json& a : *addresses)
            if (auto port = opt_str(a, "port")) m.listen_ports.push_back(*port);
    m.raw = *r;
    return m;
}

Result<std::string> query_machine_type(Client& client, Timeout timeout) {
    auto r = client.execute("qom-get", {{"path", "/machine"}, {"property", "type"}}, timeout);
    if (!r) return fail(r.error());
    if (!r->is_string()) return fail(ErrorCode::protocol, "qom-get /machine type: not a string");
    return r->get<std::string>();
}

Result<std::vector<QomProperty>> qom_list(Client& client, const std::string& path,
                                          Timeout timeout) {
    auto r = client.execute("qom-list", {{"path", path}}, timeout);
    if (!r) return fail(r.error());
    if (!r->is_array()) return fail(ErrorCode::protocol, "qom-list: reply is not an array");
    std::vector<QomProperty> out;
    for (const json& p : *r) out.push_back({str(p, "name"), str(p, "type")});
    return out;
}

Result<void> calc_dirty_rate(Client& client, std::int64_t seconds,
                             std::optional<std::int64_t> sample_pages,
                             std::optional<std::string> mode, Timeout timeout) {
    if (seconds <= 0)
        return fail(ErrorCode::invalid_argument, "calc-dirty-rate: calc-time must be positive");
    json args = {{"calc-time", seconds}};
    if (sample_pages) args["sample-pages"] = *sample_pages;
    if (mode) args["mode"] = *mode;
    return run(client, "calc-dirty-rate", args, timeout);
}

Result<DirtyRateInfo> query_dirty_rate(Client& client, Timeout timeout) {
    auto r = client.execute("query-dirty-rate", json::object(), timeout);
    if (!r) return fail(r.error());
    auto status = opt_str(*r, "status");
    if (!status) return fail(ErrorCode::protocol, "query-dirty-rate: reply without status");
    return DirtyRateInfo{*status,
                         opt_int(*r, "dirty-rate"),
                         integer(*r, "start-time"),
                         integer(*r, "calc-time"),
                         integer(*r, "sample-pages"),
                         str(*r, "mode")};
}

}  // namespace blockmig::qmp
