#include "guest.hpp"

#include <fmt/core.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

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

std::uint64_t process_start_time(int pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Field 22; the command name (field 2) may hold spaces, so count after its ')'.
    auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) return 0;
    std::istringstream fields(stat.substr(close_paren + 1));
    std::string field;
    for (int i = 3; i <= 22 && fields >> field; ++i)
        if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
    return 0;
}

Result<GuestIdentity> identify_guest(qmp::Client& client, std::string_view address, int qemu_pid,
                                     qmp::Milliseconds timeout) {
    GuestIdentity g;
    g.qmp = canonical_address(address);
    g.pid = qemu_pid;
    if (qemu_pid > 0) g.started = process_start_time(qemu_pid);
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
