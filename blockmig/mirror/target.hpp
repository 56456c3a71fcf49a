// Where one disk's mirror writes (blockmig/mirror/mirror.hpp attaches it).
//
// Three kinds:
// - volume: a pool volume the guest's QEMU opens itself (local file, or an
//   NFS/iSCSI volume when no hop is wanted): the pool's protocol + format
//   nodes, added with blockdev-add.
// - hop: a pool volume behind a blockmig-owned qemu-storage-daemon
//   (nbd_hop.hpp): the daemon opens the protocol node, the guest adds an
//   `nbd` client node to it and the format node on top, so a dead server
//   ends the job in bounded time (kill the daemon).
// - nbd: an NBD export someone else serves (a destination host's QEMU
//   running `nbd-server-start` + `block-export-add`, for `migrate`): an
//   `nbd` client node (inet or Unix server, export name), with a format
//   node on top only when the export carries an image format rather than
//   the disk's contents.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "pools/pool.hpp"
#include "qmp/commands.hpp"

namespace blockmig::mirror {

enum class TargetKind { volume, hop, nbd };
std::string_view to_string(TargetKind kind);

struct Target {
    TargetKind kind = TargetKind::volume;
    // What messages and the journal call the target (never with a password).
    std::string url;
    // volume / hop: the volume as pools/ describes it for QEMU, made with
    // the mirror's node prefix (DiskNames::prefix) as node_prefix.
    pools::BlockdevChain chain;
    // hop: where the daemon's socket and log go, and which QEMU tools run.
    std::filesystem::path hop_dir;
    std::filesystem::path qemu_dir;
    // nbd: the server and the export's name.
    qmp::SocketAddress server;
    std::string export_name;
    // nbd: an image format layered over the export ("qcow2"); empty = the
    // export holds the disk's contents (raw), the mirror writes to it as is.
    std::string export_format;
    // nbd: the id of a tls-creds-x509 object (endpoint client) in the
    // guest's QEMU; empty = plain NBD. The server's certificate is checked
    // against the server's host name or address.
    std::string tls_creds;

    static Target volume(pools::BlockdevChain chain, std::string url);
    static Target hop(pools::BlockdevChain chain, std::string url, std::filesystem::path hop_dir,
                      std::filesystem::path qemu_dir = {});
    static Target nbd(qmp::SocketAddress server, std::string export_name,
                      std::string export_format = {});
};

// nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH (the qemu-nbd URI forms).
std::string nbd_url(const qmp::SocketAddress& server, std::string_view export_name);

// The blockdev-add arguments of an `nbd` client node `node_name` reaching
// `export_name` on `server` (over TLS with `tls_creds` when not empty).
nlohmann::json nbd_client_node(const std::string& node_name, const qmp::SocketAddress& server,
                               const std::string& export_name, const std::string& tls_creds = {});

}  // namespace blockmig::mirror
