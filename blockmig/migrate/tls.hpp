// `migrate --tls-dir DIR`: the NBD exports and the migration stream over
// TLS, each side checking the other's X.509 certificate against the CA.
//
// DIR holds what QEMU's tls-creds-x509 reads (the names libvirt keeps in
// /etc/pki/qemu): ca-cert.pem, server-cert.pem and server-key.pem for the
// destination, ca-cert.pem, client-cert.pem and client-key.pem for the
// source, at the same absolute path on both hosts. Only the path crosses
// QMP: no key ever reaches blockmig's argv, logs or journal.
//
// One tls-creds-x509 object per side (verify-peer on both), journaled under
// k_tls_source / k_tls_destination and removed on every ending after the
// disks' NBD nodes, exports and server that use it (release.hpp).
// nbd-server-start and the source's NBD client nodes name it, and so does
// the migration parameter tls-creds on both sides (tls-hostname on the
// source: the host the destination's certificate must name), restored like
// every other migration parameter.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "jobs/journal.hpp"
#include "qmp/client.hpp"
#include "qmp/features.hpp"
#include "tuning.hpp"

namespace blockmig::migrate {

// The journal's disk keys of each side's credentials object.
inline constexpr const char* k_tls_source = "@tls-src";
inline constexpr const char* k_tls_destination = "@tls-dst";

// The files a side's QEMU reads from DIR: the server's (destination) or the client's.
std::vector<std::string> tls_files(bool server);

// Pre-flight: DIR is absolute (both QEMUs read the same path, each on its
// own host) and, for each side whose QEMU runs on this host, its three
// files are readable regular files. invalid_argument, one line naming the
// file and what the other side needs.
Result<void> check_tls_dir(const std::filesystem::path& dir, bool source_here,
                           bool destination_here);

// Whether the QMP monitor at `address` is on this host (a Unix socket path).
bool is_local_qmp(const std::string& address);

// The id of a job's credentials object (the same name on both sides).
std::string tls_object_id(std::string_view job_id);

// Pure: the object-add arguments of a side's credentials.
nlohmann::json tls_object(const std::string& id, const std::filesystem::path& dir, bool server);

// Pure: what a QEMU's schema lacks for TLS on that side, or nullopt.
// `nbd`: the disks are copied (the server or the client side of NBD).
std::optional<std::string> tls_missing(const qmp::Features& features, bool server, bool nbd);

// Reads both schemas; unsupported naming the side and what it lacks.
Result<void> check_tls_support(qmp::Client& src, qmp::Client& dst, bool nbd,
                               qmp::Milliseconds timeout);

// Journaled object-add on the destination, then on the source.
Result<void> add_tls_objects(jobs::Journal& journal, qmp::Client& src, qmp::Client& dst,
                             const std::filesystem::path& dir, qmp::Milliseconds timeout);

// Pure: tls-creds on both sides, tls-hostname `host` on the source.
void add_tls_parameters(TuningPlan& plan, const std::string& id, const std::string& host);

}  // namespace blockmig::migrate
