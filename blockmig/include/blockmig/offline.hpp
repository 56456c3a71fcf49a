// `migrate --offline`: cold migration of a guest's disks into another pool
// (Nova's cold migrate / resize, `virsh migrate --offline --copy-storage-all`).
//
// Sequence (docs/state-machines.md, "Offline migration"): what the running
// guest's QEMU says about its disks (device, file, format, size) is read
// and checked first, nothing touched on a refusal; the job is journaled
// (kind "offline"); one volume per disk is created in the destination pool
// while the guest still runs (a full pool fails here and the guest keeps
// running); the guest is shut down cleanly (system_powerdown, SHUTDOWN
// awaited with a deadline, then quit, then the monitor's close awaited:
// QEMU closes its images before its monitor); every disk is copied in
// parallel, sparse-aware (convert's pipeline), each in its source's format
// (raw stays raw; qcow2 stays qcow2, a backing chain flattened into one
// standalone image), then the SHA-256 of the guest-visible contents of
// source and copy are compared; success only when every pair is equal.
//
// A guest that is not running (no QEMU: `--src-disk DEV=PATH`) is described
// by its files instead: each format probed like qemu-img (the qcow2 magic,
// else raw) unless forced, each file refused while a process holds QEMU's
// write lock on it and locked against a QEMU starting until the job ends;
// no shutdown, the same copy, verify and undo.
//
// Failure (copy error, full pool, digest mismatch, Ctrl-C, blockmig killed
// -> `blockmig recover`): every destination volume blockmig created is
// deleted; the source files are never written, moved or deleted. A guest
// already shut down stays shut down (its files are intact: start it again
// where it was); the error line says so.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "blockmig/move.hpp"
#include "blockmig/progress.hpp"
#include "pools/address.hpp"
#include "qmp/client.hpp"

namespace blockmig {

// `--src-disk DEV=PATH[,format]` of a guest that is not running.
struct OfflineSourceFile {
    std::string device;                        // the disk's name: reports, --disk
    std::string path;                          // a local file
    std::optional<pools::ImageFormat> format;  // --src-format; nullopt = probe
};

struct OfflineOptions {
    std::string src_qmp;  // the guest's QMP address (its identity in the journal)
    // Or, for run_offline_migrate_stopped: the guest's files (its identity).
    std::vector<OfflineSourceFile> src_files;
    std::vector<std::string> disks;  // --disk: only these (any QEMU name); empty = every disk
    std::string dst_pool;            // POOL spec: a directory or an NFS export
    pools::PoolsConfig pools;
    // system_powerdown -> SHUTDOWN; after this the guest is stopped with `quit`
    // (Nova's shutdown_timeout is 60 s too).
    std::chrono::milliseconds shutdown_timeout{60'000};
    std::chrono::milliseconds qmp_timeout{30'000};  // each QMP call, and quit -> monitor closed
    std::filesystem::path jobs_dir;                 // journals; default jobs::default_state_dir()
    unsigned in_flight = 16;                        // copy requests in flight per disk
    // Pools and volumes are opened only through this (default: the real
    // pools with `pools`); the undo of a created volume uses it too.
    PoolOpener pool_opener;
    Clock* clock = &system_clock();
};

struct OfflineDiskReport {
    std::string device;
    std::string source;       // path or URL, never touched
    std::string target;       // the new volume's URL
    std::string format;       // "raw" / "qcow2"
    std::string format_from;  // "QEMU" (its driver), "probed", "--src-format"
    std::uint64_t size = 0;
    std::uint64_t data_bytes = 0;  // allocated bytes copied (holes are not)
    std::string digest;            // SHA-256 of the guest-visible contents (source == copy)
};

struct OfflineReport {
    std::string job;
    // "powered down" / "quit after N s without SHUTDOWN" / "was shut down" /
    // "was not running"
    std::string shutdown;
    std::vector<OfflineDiskReport> disks;
    double seconds = 0;  // shutdown to verified
};

// Cold-migrates the guest behind `src` (running, or shut down and kept by
// -no-shutdown). Blocks until done. `cancel` (SIGINT) aborts with the undo.
// Errors: one line naming the phase and the cause, what was undone and the
// state of the guest.
Result<OfflineReport> run_offline_migrate(qmp::Client& src, const OfflineOptions& options,
                                          ProgressSink& progress, const std::atomic<bool>& cancel);

// Cold-migrates the guest whose disks are options.src_files, with no QEMU
// running it. Refusals as above, and: a file that does not exist, is not
// raw / qcow2, shares its disk name or file name with another, or is open
// for writing by another process (a running QEMU's lock).
Result<OfflineReport> run_offline_migrate_stopped(const OfflineOptions& options,
                                                  ProgressSink& progress,
                                                  const std::atomic<bool>& cancel);

}  // namespace blockmig
