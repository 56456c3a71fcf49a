#include "tls.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "qmp/address.hpp"
#include "qmp/commands.hpp"

namespace blockmig::migrate {

namespace {

std::string listed(const std::vector<std::string>& files) {
    return fmt::format("{}, {} and {}", files[0], files[1], files[2]);
}

Result<void> check_side(const std::filesystem::path& dir, bool server) {
    const char* side = server ? "destination" : "source";
    const auto other = tls_files(!server);
    for (const auto& name : tls_files(server)) {
        const auto path = dir / name;
        std::error_code ec;
        std::string why;
        if (!std::filesystem::exists(path, ec))
            why = std::strerror(ENOENT);
        else if (!std::filesystem::is_regular_file(path, ec))
            why = "not a regular file";
        else if (::access(path.c_str(), R_OK) != 0)
            why = std::strerror(errno);
        if (why.empty()) continue;
        return fail(ErrorCode::invalid_argument,
                    fmt::format("migrate: --tls-dir {}: {}: {} (the {} QEMU reads {} there; the "
                                "{} QEMU reads {} from the same path on its host)",
                                dir.string(), name, why, side, listed(tls_files(server)),
                                server ? "source" : "destination", listed(other)));
    }
    return {};
}

Result<void> add_object(jobs::Journal& journal, qmp::Client& client, const char* key,
                        const nlohmann::json& object, const char* side, qmp::Milliseconds timeout) {
    const std::string id = object["id"];
    auto seq =
        journal.intend({.disk = key, .effect = jobs::EffectKind::tls_creds_added, .name = id});
    if (!seq) return fail(seq.error());
    auto r = qmp::object_add(client, object, timeout);
    if (r) return journal.outcome(*seq, jobs::RecordState::done);
    if (is_definite_refusal(r.error()))
        if (auto w = journal.outcome(*seq, jobs::RecordState::failed, r.error().message); !w)
            return w;
    return fail(r.error().with_context(fmt::format("the {} QEMU refused the TLS credentials in {}",
                                                   side, object["dir"].get<std::string>())));
}

}  // namespace

std::vector<std::string> tls_files(bool server) {
    if (server) return {"ca-cert.pem", "server-cert.pem", "server-key.pem"};
    return {"ca-cert.pem", "client-cert.pem", "client-key.pem"};
}

Result<void> check_tls_dir(const std::filesystem::path& dir, bool source_here,
                           bool destination_here) {
    if (!dir.is_absolute())
        return fail(ErrorCode::invalid_argument,
                    fmt::format("migrate: --tls-dir {}: give an absolute path (both QEMUs read it, "
                                "each on its own host)",
                                dir.string()));
    if (source_here)
        if (auto r = check_side(dir, false); !r) return r;
    if (destination_here)
        if (auto r = check_side(dir, true); !r) return r;
    return {};
}

bool is_local_qmp(const std::string& address) {
    auto a = qmp::parse_address(address);
    return a && a->kind == qmp::Address::Kind::unix_socket;
}

std::string tls_object_id(std::string_view job_id) { return fmt::format("bm{}-tls", job_id); }

nlohmann::json tls_object(const std::string& id, const std::filesystem::path& dir, bool server) {
    // verify-peer on the server too: only a client holding a certificate of
    // the same CA may write into the exports or feed the incoming migration.
    return {{"qom-type", "tls-creds-x509"},
            {"id", id},
            {"dir", dir.string()},
            {"endpoint", server ? "server" : "client"},
            {"verify-peer", true}};
}

std::optional<std::string> tls_missing(const qmp::Features& features, bool server, bool nbd) {
    // Before QEMU 6.0 object-add took 'any': its schema names no types.
    const auto types = features.argument_enum_values("object-add", "qom-type");
    if (!types.empty() && std::find(types.begin(), types.end(), "tls-creds-x509") == types.end())
        return "the object type tls-creds-x509 (object-add)";
    if (!features.command_has_argument("migrate-set-parameters", "tls-creds"))
        return "the migration parameter tls-creds";
    if (nbd && server && !features.command_has_argument("nbd-server-start", "tls-creds"))
        return "nbd-server-start's tls-creds";
    if (nbd && !server && !features.command_has_argument("blockdev-add", "tls-creds"))
        return "the NBD client's tls-creds (blockdev-add)";
    return std::nullopt;
}

Result<void> check_tls_support(qmp::Client& src, qmp::Client& dst, bool nbd,
                               qmp::Milliseconds timeout) {
    for (bool server : {false, true}) {
        const char* side = server ? "destination" : "source";
        auto features = qmp::Features::detect(server ? dst : src, timeout);
        if (!features)
            return fail(features.error().with_context(fmt::format("{} query-qmp-schema", side)));
        if (auto missing = tls_missing(*features, server, nbd))
            return fail(ErrorCode::unsupported,
                        fmt::format("migrate: the {} QEMU lacks {}: --tls-dir is not possible",
                                    side, *missing));
    }
    return {};
}

Result<void> add_tls_objects(jobs::Journal& journal, qmp::Client& src, qmp::Client& dst,
                             const std::filesystem::path& dir, qmp::Milliseconds timeout) {
    const auto id = tls_object_id(journal.job().id);
    if (auto r = add_object(journal, dst, k_tls_destination, tls_object(id, dir, true),
                            "destination", timeout);
        !r)
        return r;
    return add_object(journal, src, k_tls_source, tls_object(id, dir, false), "source", timeout);
}

void add_tls_parameters(TuningPlan& plan, const std::string& id, const std::string& host) {
    plan.destination.parameters["tls-creds"] = id;
    plan.source.parameters["tls-creds"] = id;
    // QEMU would take the host from the URI; said explicitly so an earlier
    // setting on the source cannot point the check at another name.
    plan.source.parameters["tls-hostname"] = host;
}

}  // namespace blockmig::migrate
