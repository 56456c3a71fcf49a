#include "guest.hpp"

#include <fmt/core.h>

#include <filesystem>

#include "qmp/address.hpp"

namespace blockmig::jobs {

namespace fs = std::filesystem;

std::string canonical_address(std::string_view address) {
    auto parsed = qmp::parse_address(address);
    if (!parsed) return std::string(address);
    if (parsed->kind != qmp::Address::Kind::unix_socket) return qmp::to_string(*parsed);
    std::error_code ec;
    auto absolute = fs::weakly_canonical(fs::absolute(fs::path(address), ec), ec);
    return ec ? std::string(address) : absolute.string();
}

Result<GuestIdentity> identify_guest(qmp::Client& client, std::string_view address, int qemu_pid,
                                     qmp::Milliseconds timeout) {
    GuestIdentity g;
    g.qmp = canonical_address(address);
    g.pid = qemu_pid;
    auto uuid = client.execute("query-uuid", nlohmann::json::object(), timeout);
    if (!uuid) return fail(uuid.error().with_context("query-uuid"));
    const std::string u = uuid->value("UUID", "");
    if (!u.empty() && u != "00000000-0000-0000-0000-000000000000") g.uuid = u;
    auto name = client.execute("query-name", nlohmann::json::object(), timeout);
    if (!name) return fail(name.error().with_context("query-name"));
    g.name = name->value("name", "");
    return g;
}

std::optional<std::string> libvirt_evidence(std::string_view address,
                                            const std::vector<std::string>& node_names) {
    // A socket path on this host, or on the other one (ssh://HOST/PATH).
    auto parsed = qmp::parse_address(address);
    std::string_view path = parsed ? std::string_view(parsed->path) : address;
    for (std::string_view dir : {"/run/libvirt/", "/var/run/libvirt/"})
        if (path.starts_with(dir)) return fmt::format("its QMP socket {} is libvirt's", address);
    for (const auto& n : node_names)
        if (n.starts_with("libvirt-"))
            return fmt::format("its block node {} was named by libvirt", n);
    return std::nullopt;
}

}  // namespace blockmig::jobs
