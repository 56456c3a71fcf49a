#include "target.hpp"

#include <fmt/core.h>

namespace blockmig::mirror {

std::string_view to_string(TargetKind kind) {
    switch (kind) {
        case TargetKind::volume:
            return "volume";
        case TargetKind::hop:
            return "hop";
        case TargetKind::nbd:
            return "nbd";
    }
    return "volume";
}

Target Target::volume(pools::BlockdevChain chain, std::string url) {
    Target t;
    t.kind = TargetKind::volume;
    t.chain = std::move(chain);
    t.url = std::move(url);
    return t;
}

Target Target::hop(pools::BlockdevChain chain, std::string url, std::filesystem::path hop_dir,
                   std::filesystem::path qemu_dir) {
    Target t = volume(std::move(chain), std::move(url));
    t.kind = TargetKind::hop;
    t.hop_dir = std::move(hop_dir);
    t.qemu_dir = std::move(qemu_dir);
    return t;
}

Target Target::nbd(qmp::SocketAddress server, std::string export_name, std::string export_format) {
    Target t;
    t.kind = TargetKind::nbd;
    t.url = nbd_url(server, export_name);
    t.server = std::move(server);
    t.export_name = std::move(export_name);
    t.export_format = std::move(export_format);
    return t;
}

std::string nbd_url(const qmp::SocketAddress& server, std::string_view export_name) {
    if (server.kind == qmp::SocketAddress::Kind::unix_socket)
        return fmt::format("nbd+unix:///{}?socket={}", export_name, server.path);
    if (server.kind == qmp::SocketAddress::Kind::fd)
        return fmt::format("nbd+fd:{}/{}", server.fd_name, export_name);
    const bool v6 = server.host.find(':') != std::string::npos;
    return fmt::format("nbd://{}{}{}:{}/{}", v6 ? "[" : "", server.host, v6 ? "]" : "", server.port,
                       export_name);
}

nlohmann::json nbd_client_node(const std::string& node_name, const qmp::SocketAddress& server,
                               const std::string& export_name, const std::string& tls_creds) {
    nlohmann::json node{{"driver", "nbd"},
                        {"node-name", node_name},
                        {"server", qmp::to_json(server)},
                        {"export", export_name},
                        // Without it the block layer strips MAY_UNMAP from zero writes and
                        // a thin target gets fully allocated by the mirror's zeroing pass.
                        {"discard", "unmap"}};
    if (!tls_creds.empty()) node["tls-creds"] = tls_creds;
    return node;
}

}  // namespace blockmig::mirror
