#include "source_disk.hpp"

#include <fmt/core.h>

#include <algorithm>

#include "jobs/luns.hpp"
#include "qmp/commands.hpp"
#include "source_path.hpp"

namespace blockmig {

namespace {

// "/machine/peripheral/disk0/virtio-backend" -> "disk0"; QEMU reports the
// bare id for some devices already. Anonymous devices (-drive if=virtio:
// "/machine/peripheral-anon/device[0]/...") have no id.
std::string qdev_id(const std::string& qdev) {
    constexpr std::string_view prefix = "/machine/peripheral/";
    if (!qdev.starts_with('/')) return qdev;
    if (!qdev.starts_with(prefix)) return {};
    auto rest = qdev.substr(prefix.size());
    return rest.substr(0, rest.find('/'));
}

// The device's names, shortest first; the node name last (it names a node,
// not the disk, and -drive gives auto-generated "#block123" ones).
std::vector<std::string> names_of(const qmp::BlockInfo& b) {
    std::vector<std::string> device_names;
    auto add = [&](const std::string& name) {
        if (!name.empty() &&
            std::find(device_names.begin(), device_names.end(), name) == device_names.end())
            device_names.push_back(name);
    };
    add(b.device);
    if (b.qdev) {
        add(qdev_id(*b.qdev));
        add(*b.qdev);
        // The QOM path of the device itself, without the "/virtio-backend" child.
        if (b.qdev->starts_with('/') && b.qdev->ends_with("-backend"))
            add(b.qdev->substr(0, b.qdev->rfind('/')));
    }
    std::stable_sort(device_names.begin(), device_names.end(),
                     [](const auto& a, const auto& b) { return a.size() < b.size(); });
    const std::string& node = b.inserted->node_name;
    if (!node.empty() &&
        std::find(device_names.begin(), device_names.end(), node) == device_names.end())
        device_names.push_back(node);
    return device_names;
}

bool is_direct(const std::string& cache_mode) {
    return cache_mode == "none" || cache_mode == "directsync";
}

bool is_protocol_driver(const std::string& driver) {
    return driver == "file" || driver == "host_device" || driver == "nfs" || driver == "iscsi" ||
           driver == "nbd";
}

}  // namespace

std::string location_from_filename(std::string_view filename) {
    if (filename.starts_with("json:")) {
        auto j = nlohmann::json::parse(filename.substr(5), nullptr, false);
        if (j.is_discarded()) return {};
        const nlohmann::json* node = &j;
        // Walk down to the protocol node ("file" children).
        while (node->is_object() && node->contains("file") && (*node)["file"].is_object())
            node = &(*node)["file"];
        if (node->value("driver", "") == "iscsi") return jobs::lun_url_of_node(*node);
        if (node->value("driver", "") == "file") return node->value("filename", "");
        return {};
    }
    return std::string(filename);
}

Result<std::vector<SourceDisk>> list_source_disks(qmp::Client& client) {
    auto blocks = qmp::query_block(client);
    if (!blocks) return fail(blocks.error().with_context("query-block"));
    auto nodes = qmp::query_named_block_nodes(client);
    if (!nodes) return fail(nodes.error().with_context("query-named-block-nodes"));
    std::vector<SourceDisk> disks;
    for (const auto& b : *blocks) {
        if (!b.inserted) continue;
        SourceDisk d;
        d.node = b.inserted->node_name;
        d.names = names_of(b);
        d.id = d.names.empty() ? d.node : d.names.front();
        d.driver = b.inserted->driver;
        d.filename = b.inserted->file;
        d.cache_mode = b.inserted->cache_mode;
        d.has_backing = b.inserted->backing_file.has_value();
        if (!b.inserted->chain.empty()) {
            d.virtual_size = b.inserted->chain.front().virtual_size;
            d.filename = b.inserted->chain.front().filename;
        }
        d.location = location_from_filename(d.filename);
        // A local name as QEMU sees it (relative to its cwd), or unknown:
        // then --delete-source is refused and the sparseness check skipped.
        if (is_local_file_name(d.location))
            d.location = resolve_source_path(d.location, client.peer_pid()).value_or("");
        if (b.inserted->chain.size() > 1) {
            d.has_backing = true;
            d.backing_filename = b.inserted->chain[1].filename;
            d.backing_format = b.inserted->chain[1].format;
            for (const auto& n : *nodes)
                if (n.file == d.backing_filename && n.driver == d.backing_format)
                    d.backing_node = n.node_name;
        }
        // Protocol nodes under this format node name the same volume (their
        // filename may differ in form: raw over iSCSI shows json:{...} one
        // level deeper); remember them to release them after a pivot.
        const std::string here = location_from_filename(b.inserted->file);
        std::string protocol_cache;
        for (const auto& n : *nodes) {
            if (n.node_name == d.node) continue;
            const bool same = n.file == b.inserted->file ||
                              (!here.empty() && location_from_filename(n.file) == here);
            if (!same) continue;
            if (is_protocol_driver(n.driver)) {
                d.protocol_nodes.push_back(n.node_name);
                // Data reaches storage through the protocol node: its cache
                // mode is the one that counts (a -blockdev format node keeps
                // cache.direct=off even over a cache.direct=on file node).
                // Any protocol node not bypassing the host cache decides.
                if (protocol_cache.empty() || !is_direct(n.cache_mode))
                    protocol_cache = n.cache_mode;
            }
            // Block jobs insert a filter node above the disk (query-block
            // hides it); it reports the filtered node's filename.
            if (n.driver == "mirror_top" || n.driver == "commit_top" || n.driver == "backup-top" ||
                n.driver == "copy-before-write")
                d.job_filter = n.driver;
        }
        if (!protocol_cache.empty()) d.cache_mode = protocol_cache;
        disks.push_back(std::move(d));
    }
    return disks;
}

Result<SourceDisk> find_source_disk(const std::vector<SourceDisk>& disks, std::string_view id) {
    for (const auto& d : disks)
        if (d.id == id || d.node == id ||
            std::find(d.names.begin(), d.names.end(), id) != d.names.end())
            return d;
    std::string known;
    for (const auto& d : disks) known += (known.empty() ? "" : ", ") + d.id;
    return fail(ErrorCode::not_found, fmt::format("no disk '{}' in this guest (disks: {})", id,
                                                  known.empty() ? "none" : known));
}

}  // namespace blockmig
