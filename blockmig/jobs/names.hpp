// Names of everything a job creates, derived from its random id and the
// FULL device id, so nothing collides across disks, guests or processes.
//
// QEMU node names: a letter first, then letters, digits, '-', '_', '.'; at
// most 31 characters (block.c id_wellformed + BLOCK_NODE_NAME_MAX... the
// node-name buffer is 32 bytes). pools/ appends "-proto" / "-fmt" / "-chap"
// to a prefix, the hop adds "-hop", so a prefix is at most 25 characters:
//   "bm" + job id (8) + "-" + device tag (at most 14).
// The device tag is the device id itself when it is short and clean; any
// other id becomes its first 5 clean characters, '.', and 8 hex digits of a
// hash of the whole id. Clean ids never contain '.', so the two forms never
// meet, and "virtio-disk10" / "virtio-disk11" (13 characters) differ in
// their hashes rather than being cut to one common prefix.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace blockmig::jobs {

// A new random job id: 8 lowercase hex digits (getrandom).
std::string new_job_id();
// True for what new_job_id() makes (guards paths built from user input).
bool is_job_id(std::string_view id);

// The short, collision-free form of a device id (see above).
std::string device_tag(std::string_view device_id);

struct DiskNames {
    std::string prefix;       // node-name prefix, <= 25 characters, letter first
    std::string block_job;    // block-job id of the mirror
    std::string hop_node;     // nbd client node reaching the storage daemon
    std::string export_name;  // NBD export name in the storage daemon
    std::string tag;          // device_tag(device id)
    // Directory of the disk's storage-daemon socket and log under `run_dir`.
    std::filesystem::path hop_dir(const std::filesystem::path& run_dir,
                                  std::string_view job_id) const;
};

DiskNames names_for(std::string_view job_id, std::string_view device_id);

// The storage daemon's log: beside its socket, in the hop's directory.
// mirror/nbd_hop.cpp writes it; the journal records only the socket, so
// whoever removes the log finds it from there.
std::filesystem::path hop_log_path(const std::filesystem::path& socket);

}  // namespace blockmig::jobs
