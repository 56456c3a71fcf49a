// What blockmig knows about one of a guest's disks, read through QMP.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "qmp/client.hpp"

namespace blockmig {

struct SourceDisk {
    std::string id;  // the shortest device name (drive id, qdev id, qdev path), else the node
    // Every name QEMU gives this disk: drive id (query-block `device`), qdev
    // id, qdev path, node name. --disk accepts any of them.
    std::vector<std::string> names;
    std::string node;    // top (format) node the device is attached to
    std::string driver;  // "qcow2", "raw", ... ("mirror_top" while a job runs)
    std::uint64_t virtual_size = 0;
    std::string filename;  // as QEMU shows it: a path, nfs://..., json:{...}
    std::string location;  // a volume spec pools/ understands, or empty
    // "none", "writeback", ...: of the nodes that touch storage (the protocol
    // nodes), since a format node's own cache.direct says nothing about them.
    std::string cache_mode;
    bool has_backing = false;
    std::string job_filter;        // a job's filter node (mirror_top, ...) sits on this disk
    std::string backing_filename;  // first backing image, as QEMU names it
    std::string backing_format;
    std::string backing_node;  // its node name, if it has one (shallow moves share it)
    std::vector<std::string> protocol_nodes;  // named nodes below `node` (to release after a pivot)
};

// Every disk with a medium, in query-block order.
Result<std::vector<SourceDisk>> list_source_disks(qmp::Client& client);

// Finds a disk by any of its names: drive id ("virtio0"), qdev id ("disk0"),
// qdev path, or node name. Errors: not_found, listing every disk's id.
Result<SourceDisk> find_source_disk(const std::vector<SourceDisk>& disks, std::string_view id);

// Turns a QEMU filename into a volume spec for pools/: paths and nfs:// URLs
// pass through; json:{...iscsi...} becomes iscsi://portal/target/lun.
std::string location_from_filename(std::string_view filename);

}  // namespace blockmig
