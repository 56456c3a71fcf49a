// Factories for every pool implementation. Callers hold a std::unique_ptr<Pool>
// and never see the classes behind it (nor libnfs / libiscsi types).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "pools/pool.hpp"

namespace blockmig::pools {

// A directory of image files (type "dir"). Volume names are file names (no
// '/', not "." or ".."); raw volumes are sparse files. Capacity is statvfs.
// not_found if `path` is not an existing directory.
Result<std::unique_ptr<Pool>> make_dir_pool(std::string_view path);

// A directory on an NFS server (type "nfs"), reached with libnfs:
// nfs://host/export[/dir][?version=3|4&uid=N&gid=N]. NFSv3 by default, the
// only version QEMU's nfs driver speaks (describe_for_qemu is unsupported for
// version=4; and NFSv4 pools are read-only: libnfs 4.0 cannot encode v4
// WRITEs, so create/remove/resize/writable open answer unsupported). Mounts at once: unreachable
// servers and refused mounts fail here with a message naming the URL. Capacity is FSSTAT (statvfs).
// Block status reports all data (NFSv3 has no SEEK and libnfs 4.0 does not implement SEEK_DATA);
// discard is unsupported; write_zeroes writes zeroes.
Result<std::unique_ptr<Pool>> make_nfs_pool(std::string_view url, const PoolOptions& options = {});

// The disk LUNs of one iSCSI target (type "iscsi"), reached with libiscsi:
// iscsi://[user%password@]host[:port]/iqn. Logs in at once. A lost session
// fails the command it broke (no silent reconnect loop); the next call logs in
// again, so a target that comes back is used again.
// - Volumes are the target's disk LUNs, named "lun<N>" (LUN 0, the
//   controller, is not a volume). A volume's size is its LUN's size.
// - A LUN is *unused* when it holds no data: on a thin LUN (LBPME), GET LBA
//   STATUS reports every block deallocated; otherwise its first MiB reads as
//   zeroes. list_volumes() returns every LUN; capacity() is total = sum of LUN
//   sizes, free = sum of unused LUN sizes.
// - create(name, size, format) claims an unused LUN: `name` is "lun<N>" or
//   empty for the smallest unused LUN of at least `size` bytes that
//   PoolOptions::claim (if set) takes; a refused named LUN is already_exists. already_exists
//   if the named LUN is in use, no_space if it (or every unused LUN) is
//   smaller than `size`. raw writes nothing (the LUN is zero already, so it
//   still counts as unused until written); qcow2 writes an empty qcow2 with
//   virtual size `size` at the start of the LUN.
// - remove() discards the whole LUN (UNMAP) and zeroes its first MiB, so it is
//   unused again. resize() is unsupported.
Result<std::unique_ptr<Pool>> make_iscsi_pool(std::string_view url,
                                              const PoolOptions& options = {});

// Volumes held in memory (type "mem"), for unit tests. `capacity` bytes in
// total; create() reserves a volume's whole virtual size (no_space when it
// does not fit). Block status is tracked per 4 KiB block. QEMU cannot open
// these volumes (describe_for_qemu answers unsupported).
std::unique_ptr<Pool> make_mem_pool(std::uint64_t capacity);

// What a fault-injection pool does to the volumes opened through it.
struct FaultPlan {
    // The Nth pwrite/write_zeroes (1-based, counted across all volumes of the
    // pool) fails with `write_error` instead of reaching the target; 0 = never.
    std::uint64_t fail_write_n = 0;
    ErrorCode write_error = ErrorCode::io_error;
    // When nonzero, every pread returns at most this many bytes.
    std::size_t short_read_max = 0;
    // Every volume I/O call sleeps this long first (simulates a slow server).
    std::chrono::milliseconds stall{0};
    // The pool's create() / remove() fail with this code and touch nothing
    // (a pool that filled up after its capacity was checked; a server that
    // refuses a delete during a rollback); nullopt = forwarded.
    std::optional<ErrorCode> create_error;
    std::optional<ErrorCode> remove_error;
};

// Wraps `target` (a PoolWrapper subclass) and injects the faults of `plan`
// into block I/O, create() and remove(); everything else is forwarded unchanged.
std::unique_ptr<Pool> make_fault_pool(std::unique_ptr<Pool> target, FaultPlan plan);

}  // namespace blockmig::pools
