// `blockmig move` on guests started the ways admins start them, not only the
// way the lab does: a classic `-drive file=...,if=virtio,cache=none` disk is
// moved by the name `query-block` and `info block` show (`virtio0`), and a
// -blockdev disk whose file node bypasses the host cache (cache.direct=on)
// while its raw node does not is not refused as "writeback" on NFS.
// Real QEMU (TCG), nfs-ganesha; every block verified by diskstamp.
#include <iostream>

#include "move_test_util.hpp"

using namespace blockmig::lab;
using namespace move_test;

namespace {

// Boots a guest from raw QEMU arguments and waits until it writes vda.
std::unique_ptr<Guest> boot_with_args(std::vector<std::string> args, std::uint64_t nblocks) {
    auto guest = std::make_unique<Guest>(
        GuestConfig{.extra_args = std::move(args), .stamp_blocks = nblocks});
    if (!guest->wait_for_line("GUEST-UP", 120s))
        throw std::runtime_error("guest did not boot: " + guest->console());
    if (!guest->wait_for_ack("vda", 1, 120s))
        throw std::runtime_error("guest did not write: " + guest->console());
    return guest;
}

}  // namespace

TEST(MoveNames, ClassicDriveMovesByItsDriveId) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-drive");
    const fs::path source = dir / "vm.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    auto guest = boot_with_args(
        {"-drive", "file=" + source.string() + ",if=virtio,cache=none,format=qcow2"}, k_blocks);
    // The premise: QEMU calls this disk virtio0, and its qdev is an anonymous path.
    const json before = device_block(*guest, "virtio0");
    ASSERT_EQ(before.value("device", ""), "virtio0") << before.dump();
    ASSERT_EQ(before.value("qdev", "").find("/machine/peripheral-anon/"), 0u) << before.dump();

    const fs::path target = dir / "moved.qcow2";
    auto r = blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk", "virtio0",
                           "--to", target.string()});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    // Every line names the disk the way QEMU does, never by its qdev path.
    EXPECT_EQ(r.out.find("/machine/"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("virtio0: pivoted to"), std::string::npos) << r.out;
    EXPECT_NE(device_file(*guest, "virtio0").find(target.string()), std::string::npos)
        << device_block(*guest, "virtio0").dump();
    EXPECT_FALSE(any_node_mentions(*guest, source.string())) << named_nodes(*guest).dump();
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
    VerifyReport v = pause_and_verify(*guest, target.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(MoveNames, UnknownDiskNameListsTheNamesQemuUses) {
    LAB_REQUIRE();
    TempDir dir("move-drive-bad");
    const fs::path source = dir / "vm.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    auto guest = boot_with_args(
        {"-drive", "file=" + source.string() + ",if=virtio,cache=none,format=qcow2"}, 1024);
    auto r = blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk", "virtio7",
                           "--to", (dir / "t.qcow2").string()});
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "a refused or failed move leaves no job";
    auto lines = lines_of(r.out);
    ASSERT_EQ(lines.size(), 1u) << r.out;
    EXPECT_NE(lines[0].find("no disk 'virtio7'"), std::string::npos) << r.out;
    EXPECT_NE(lines[0].find("virtio0"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(dir / "t.qcow2"));
}

// issue #8 "Cache-mode pre-flight reads the wrong node": the raw node reports
// cache.direct=off, but the file node below it, the one writing to storage,
// has cache.direct=on: that is cache=none, safe to move onto NFS.
TEST(MoveNames, BlockdevWithDirectFileNodeIsNotRefusedAsWriteback) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-cache");
    const fs::path source = dir / "vm.raw";
    run_ok({"qemu-img", "create", "-q", "-f", "raw", source.string(), "64M"});
    NfsServer nfs;
    auto guest = boot_with_args(
        {"-blockdev",
         "driver=file,node-name=file0,filename=" + source.string() + ",cache.direct=on,aio=native",
         "-blockdev", "driver=raw,node-name=raw0,file=file0", "-device",
         "virtio-blk-pci,drive=raw0,id=disk0"},
        k_blocks);
    // The premise: query-block shows the format node as not direct.
    const json cache = device_block(*guest, "disk0")["inserted"]["cache"];
    ASSERT_FALSE(cache.value("direct", true)) << cache.dump();

    auto r = blockmig_cli(
        {"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to", nfs.url()});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    EXPECT_EQ(r.out.find("cache mode"), std::string::npos) << r.out;
    const fs::path moved = nfs.export_dir() / "vm.raw";
    ASSERT_TRUE(fs::exists(moved)) << r.out;
    EXPECT_NE(device_file(*guest, "disk0").find("nfs://"), std::string::npos)
        << device_block(*guest, "disk0").dump();
    VerifyReport v = pause_and_verify(*guest, moved.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

// The other side of the same check: a file node using the host page cache
// (cache.direct=off everywhere) is still refused for NFS, and nothing is created.
TEST(MoveNames, WritebackFileNodeIsStillRefusedForNfs) {
    LAB_REQUIRE();
    TempDir dir("move-cache-wb");
    const fs::path source = dir / "vm.raw";
    run_ok({"qemu-img", "create", "-q", "-f", "raw", source.string(), "64M"});
    NfsServer nfs;
    auto guest = boot_with_args(
        {"-blockdev", "driver=file,node-name=file0,filename=" + source.string(), "-blockdev",
         "driver=raw,node-name=raw0,file=file0", "-device", "virtio-blk-pci,drive=raw0,id=disk0"},
        1024);
    const auto export_before = entries_of(nfs.export_dir());
    auto r = blockmig_cli(
        {"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to", nfs.url()});
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "a refused or failed move leaves no job";
    EXPECT_NE(r.out.find("cache mode 'writeback'"), std::string::npos) << r.out;
    EXPECT_EQ(entries_of(nfs.export_dir()), export_before);
}
