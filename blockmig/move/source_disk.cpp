#include "source_disk.hpp"

#include <fmt/core.h>

#include "qmp/commands.hpp"

namespace blockmig {

namespace {

// "/machine/peripheral/disk0/virtio-backend" -> "disk0"
std::string qdev_id(const std::string& qdev) {
    constexpr std::string_view prefix = "/machine/peripheral/";
    if (!qdev.starts_with(prefix)) return qdev;
    auto rest = qdev.substr(prefix.size());
    return rest.substr(0, rest.find('/'));
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
        if (node->value("driver", "") == "iscsi") {
            std::string lun = (*node)["lun"].is_string() ? (*node)["lun"].get<std::string>()
                                                         : (*node)["lun"].dump();
            return fmt::format("iscsi://{}/{}/{}", node->value("portal", ""),
                               node->value("target", ""), lun);
        }
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
        d.id = b.qdev ? qdev_id(*b.qdev) : (!b.device.empty() ? b.device : d.node);
        d.driver = b.inserted->driver;
        d.filename = b.inserted->file;
        d.cache_mode = b.inserted->cache_mode;
        d.has_backing = b.inserted->backing_file.has_value();
        if (!b.inserted->chain.empty()) {
            d.virtual_size = b.inserted->chain.front().virtual_size;
            d.filename = b.inserted->chain.front().filename;
        }
        d.location = location_from_filename(d.filename);
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
        for (const auto& n : *nodes) {
            if (n.node_name == d.node) continue;
            const bool same = n.file == b.inserted->file ||
                              (!here.empty() && location_from_filename(n.file) == here);
            if (!same) continue;
            if (n.driver == "file" || n.driver == "host_device" || n.driver == "nfs" ||
                n.driver == "iscsi" || n.driver == "nbd")
                d.protocol_nodes.push_back(n.node_name);
            // Block jobs insert a filter node above the disk (query-block
            // hides it); it reports the filtered node's filename.
            if (n.driver == "mirror_top" || n.driver == "commit_top" || n.driver == "backup-top" ||
                n.driver == "copy-before-write")
                d.job_filter = n.driver;
        }
        disks.push_back(std::move(d));
    }
    return disks;
}

Result<SourceDisk> find_source_disk(const std::vector<SourceDisk>& disks, std::string_view id) {
    for (const auto& d : disks)
        if (d.id == id || d.node == id) return d;
    std::string known;
    for (const auto& d : disks) known += (known.empty() ? "" : ", ") + d.id;
    return fail(ErrorCode::not_found, fmt::format("no disk '{}' in this guest (disks: {})", id,
                                                  known.empty() ? "none" : known));
}

}  // namespace blockmig
