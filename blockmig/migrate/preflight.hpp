// The migration pre-flight: what each QEMU says about itself, gathered with
// queries only, and the pure comparison that refuses a migration (one
// explained reason) before anything is touched.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "blockmig/migrate.hpp"
#include "jobs/journal.hpp"
#include "qmp/client.hpp"

namespace blockmig::migrate {

struct FileIdentity {
    dev_t dev = 0;
    ino_t ino = 0;
    bool operator==(const FileIdentity&) const = default;
};

struct DiskFacts {
    std::string device;    // qdev id (or drive id)
    std::string filename;  // what QEMU reports for the device's top node
    // The file behind a local filename, as that QEMU process sees it
    // (/proc/PID/root + its cwd); nullopt when not local or not known.
    std::optional<FileIdentity> identity;
    // The host cache mode of the node that touches storage ("none",
    // "directsync", "writeback", ...): the protocol node under the
    // device's node when QEMU lists one with the same filename.
    std::string cache_mode;
    std::string node;        // the device's top node (what a mirror reads / an export serves)
    std::uint64_t size = 0;  // the top node's virtual size in bytes (the guest's disk size)
    std::string format;      // the top node's driver ("raw", "qcow2", ...)
    std::vector<std::string> names;  // every name of the device in query-blockstats
    // --copy-storage inc (migrate/overlay.cpp): the host bytes the top
    // image occupies (QEMU's actual-size), and its backing image as QEMU
    // opened it ("" none) with that file's identity.
    std::optional<std::uint64_t> allocated;
    std::optional<std::uint64_t> cluster_size;  // qcow2's
    std::string backing;
    std::optional<FileIdentity> backing_identity;
};

struct SideFacts {
    std::string address;
    jobs::GuestIdentity identity;
    std::string run_state;                                  // query-status
    std::string migration_status;                           // query-migrate
    std::string machine_type;                               // qom-get /machine type
    std::uint64_t memory = 0;                               // base + plugged
    std::set<std::pair<std::string, std::string>> devices;  // (id, qom type) of named devices
    std::vector<DiskFacts> disks;
    std::vector<std::string> block_jobs;
    std::set<std::string> capabilities;  // migration capabilities this QEMU knows
    int version = 0;                     // major * 10000 + minor * 100 + micro
};

// Queries only. Errors: those of the QMP calls, with the side named.
Result<SideFacts> gather(qmp::Client& client, std::string_view address, std::string_view side,
                         qmp::Milliseconds timeout);

// Whether a local filename names a URL-like (network) volume rather than a
// path on the QEMU host ("nfs://", "iscsi://", "json:{...}", "nbd:...").
bool is_network_filename(std::string_view filename);

// The file `filename` names for process `pid` (through /proc/PID/root and
// its cwd); nullopt for a network filename or one not visible from here.
std::optional<FileIdentity> identity_of(std::string_view filename, std::optional<int> pid);

// Whether two QEMUs' filenames name the same volume: the same network URL,
// or the same local file (identity); unprovable when a local file's
// identity is unknown on either side.
enum class Sameness { same, different, unprovable };
Sameness same_volume(std::string_view a, const std::optional<FileIdentity>& a_identity,
                     std::string_view b, const std::optional<FileIdentity>& b_identity);

// --copy-storage inc, per disk (pure): the source's disk has a backing
// image; the destination's is a qcow2 overlay over the same image (same
// network URL or same file) holding no more than a fresh overlay's metadata.
Result<void> check_overlay(const DiskFacts& src, const DiskFacts& dst);
// The most host bytes an empty qcow2 overlay of `size` with `cluster`-byte
// clusters occupies (its L1 table, header and refcount clusters, slack).
std::uint64_t fresh_overlay_bound(std::uint64_t size, std::uint64_t cluster);

// Pure: the first reason the migration may not start, as one line
// (invalid_state / invalid_argument), or success.
// `unsafe` allows shared disks whose host cache is not bypassed.
Result<void> check(const SideFacts& src, const SideFacts& dst, CopyStorage copy_storage,
                   bool unsafe = false);

}  // namespace blockmig::migrate
