// How blockmig reads a guest's disks: QEMU's filenames become volume specs pools/
// understands; every name QEMU gives a disk finds it; the cache mode is read
// from the node that touches storage.
#include "move/source_disk.hpp"

#include <gtest/gtest.h>

#include "qmp/testing/scripted_transport.hpp"

using blockmig::location_from_filename;

TEST(SourceDisk, PathsAndNfsUrlsPassThrough) {
    EXPECT_EQ(location_from_filename("/srv/vm1.qcow2"), "/srv/vm1.qcow2");
    EXPECT_EQ(location_from_filename("nfs://10.0.0.5/export/vm1.qcow2"),
              "nfs://10.0.0.5/export/vm1.qcow2");
}

TEST(SourceDisk, IscsiJsonFilenameBecomesLunUrl) {
    EXPECT_EQ(
        location_from_filename(
            R"(json:{"driver": "raw", "file": {"lun": 1, "portal": "127.0.0.1:3260", "driver": "iscsi", )"
            R"("transport": "tcp", "target": "iqn.2024-01.lab:t"}})"),
        "iscsi://127.0.0.1:3260/iqn.2024-01.lab:t/1");
}

TEST(SourceDisk, IscsiJsonFilenameWithTheLunAsAStringBecomesTheSameUrl) {
    EXPECT_EQ(
        location_from_filename(R"(json:{"driver": "iscsi", "lun": "3", "portal": "10.0.0.6:3260", )"
                               R"("target": "iqn.2024-01.lab:t"})"),
        "iscsi://10.0.0.6:3260/iqn.2024-01.lab:t/3");
}

TEST(SourceDisk, UnknownJsonFilenameHasNoLocation) {
    EXPECT_EQ(location_from_filename(R"(json:{"driver": "nbd", "server": {}})"), "");
    EXPECT_EQ(location_from_filename("json:{broken"), "");
}

// ---- names and cache modes, read from scripted query-block replies -----------

namespace {

using blockmig::SourceDisk;
using nlohmann::json;

json cache(bool direct) { return {{"writeback", true}, {"direct", direct}, {"no-flush", false}}; }

json node(const std::string& name, const std::string& drv, const std::string& file, bool direct) {
    return {{"node-name", name},
            {"drv", drv},
            {"file", file},
            {"ro", false},
            {"encrypted", false},
            {"backing_file_depth", 0},
            {"cache", cache(direct)},
            {"image", {{"filename", file}, {"format", drv}, {"virtual-size", 64 << 20}}}};
}

// Runs list_source_disks() against the given query-block and
// query-named-block-nodes replies.
std::vector<SourceDisk> disks_of(const json& blocks, const json& nodes) {
    using namespace blockmig::qmp::testing;
    auto script = std::make_shared<Script>();
    script->push_greeting();
    script->expect("qmp_capabilities").reply(json::object());
    script->expect("query-block").reply(blocks);
    script->expect("query-named-block-nodes").reply(nodes);
    auto client = blockmig::qmp::Client::connect(std::make_unique<ScriptedTransport>(script));
    if (!client) throw std::runtime_error(client.error().message);
    auto disks = blockmig::list_source_disks(**client);
    if (!disks) throw std::runtime_error(disks.error().message);
    EXPECT_TRUE(script->failures().empty());
    return *disks;
}

// `-drive file=/v/vm.qcow2,if=virtio,cache=none`: an anonymous device, a
// drive id, auto-generated node names.
std::vector<SourceDisk> classic_drive_guest() {
    json format = node("#block163", "qcow2", "/v/vm.qcow2", true);
    json blocks = json::array({{{"device", "virtio0"},
                                {"qdev", "/machine/peripheral-anon/device[0]/virtio-backend"},
                                {"locked", false},
                                {"removable", false},
                                {"inserted", format}}});
    return disks_of(blocks, json::array({format, node("#block024", "file", "/v/vm.qcow2", true)}));
}

}  // namespace

TEST(SourceDisk, ClassicDriveIsCalledByItsDriveId) {
    auto disks = classic_drive_guest();
    ASSERT_EQ(disks.size(), 1u);
    EXPECT_EQ(disks[0].id, "virtio0");
    EXPECT_EQ(disks[0].node, "#block163");
    EXPECT_EQ(disks[0].cache_mode, "none");
}

TEST(SourceDisk, EveryNameQemuGivesADiskFindsIt) {
    auto disks = classic_drive_guest();
    for (std::string name : {"virtio0", "/machine/peripheral-anon/device[0]/virtio-backend",
                             "/machine/peripheral-anon/device[0]", "#block163"}) {
        auto found = blockmig::find_source_disk(disks, name);
        ASSERT_TRUE(found) << name << ": " << found.error().message;
        EXPECT_EQ(found->id, "virtio0") << name;
    }
    auto missing = blockmig::find_source_disk(disks, "virtio1");
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("virtio0"), std::string::npos);
}

TEST(SourceDisk, BlockdevDiskIsCalledByItsQdevIdNotItsNodeName) {
    json format = node("fmt0", "qcow2", "/v/vm.qcow2", false);
    json blocks = json::array({{{"device", ""},
                                {"qdev", "/machine/peripheral/disk0/virtio-backend"},
                                {"locked", false},
                                {"removable", false},
                                {"inserted", format}}});
    auto disks =
        disks_of(blocks, json::array({format, node("file0", "file", "/v/vm.qcow2", true)}));
    ASSERT_EQ(disks.size(), 1u);
    EXPECT_EQ(disks[0].id, "disk0");
    for (std::string name :
         {"disk0", "/machine/peripheral/disk0/virtio-backend", "/machine/peripheral/disk0", "fmt0"})
        EXPECT_TRUE(blockmig::find_source_disk(disks, name)) << name;
}

// `-blockdev driver=file,...,cache.direct=on -blockdev driver=raw,...`: the
// raw node shows cache.direct=off, but only the file node touches storage.
TEST(SourceDisk, CacheModeIsThatOfTheNodeTouchingStorage) {
    json format = node("fmt0", "raw", "/v/vm.raw", false);
    json blocks = json::array({{{"device", ""},
                                {"qdev", "/machine/peripheral/disk0/virtio-backend"},
                                {"locked", false},
                                {"removable", false},
                                {"inserted", format}}});
    auto direct = disks_of(blocks, json::array({format, node("file0", "file", "/v/vm.raw", true)}));
    ASSERT_EQ(direct.size(), 1u);
    EXPECT_EQ(direct[0].cache_mode, "none");

    auto cached =
        disks_of(blocks, json::array({format, node("file0", "file", "/v/vm.raw", false)}));
    ASSERT_EQ(cached.size(), 1u);
    EXPECT_EQ(cached[0].cache_mode, "writeback");
}
