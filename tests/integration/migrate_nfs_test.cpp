// blockmig migrate --copy-storage none with the disk on the lab's NFS
// server (nfs-ganesha), opened by both QEMUs through QEMU's own nfs driver:
// the pre-flight proves shared storage by the same volume URL, the guest
// runs and keeps writing on the destination, every block verifies on the
// export. The lab's NFS server listens on 127.0.0.1 of the root namespace,
// so both QEMUs run there and the migration stream uses the loopback.
#include <gtest/gtest.h>

#include "move_test_util.hpp"

using namespace move_test;
using blockmig::lab::NfsServer;

namespace {

constexpr std::uint64_t k_blocks = 4096;

GuestConfig nfs_guest(const std::string& path) {
    return GuestConfig{
        .extra_args = {"-blockdev",
                       "driver=nfs,node-name=disk0-nfs,server.type=inet,server.host=127.0.0.1,"
                       "cache.direct=on,path=" +
                           path,
                       "-blockdev", "driver=raw,node-name=disk0-fmt,file=disk0-nfs,cache.direct=on",
                       "-device", "virtio-blk-pci,drive=disk0-fmt,id=disk0"},
        .stamp_blocks = k_blocks};
}

TEST(MigrateNfs, SameVolumeUrlOnBothSidesMigrates) {
    LAB_REQUIRE();
    NfsServer nfs;
    blockmig::lab::TempDir dir("migrate-nfs");
    const fs::path backing = nfs.export_dir() / "vm.raw";
    blockmig::lab::run_ok({"truncate", "-s", "32M", backing.string()});
    Guest src(nfs_guest("/export/vm.raw"));
    ASSERT_TRUE(src.wait_for_line("GUEST-UP", 120s)) << src.console();
    ASSERT_TRUE(src.wait_for_ack("vda", 1, 120s)) << src.console();
    GuestConfig incoming = nfs_guest("/export/vm.raw");
    incoming.extra_args.insert(incoming.extra_args.end(), {"-incoming", "defer"});
    Guest dst(incoming);

    auto r = blockmig_cli({"migrate", "--src-qmp", src.qmp_socket().string(), "--dst-qmp",
                           dst.qmp_socket().string(), "--dst-addr", "127.0.0.1", "--copy-storage",
                           "none", "--state-dir", (dir / "jobs").string()});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(dir / "jobs"), 0) << "the migration ends its job";
    EXPECT_NE(r.out.find("the source QEMU quit"), std::string::npos) << r.out;
    EXPECT_TRUE(src.wait_exit(15s));
    EXPECT_NE(device_file(dst, "disk0").find("nfs://127.0.0.1/export/vm.raw"), std::string::npos)
        << device_file(dst, "disk0");
    ASSERT_TRUE(dst.wait_for_ack("vda", 1, 60s)) << dst.console();
    ASSERT_TRUE(guest_keeps_writing(dst));
    dst.pause();
    auto v = blockmig::lab::verify_raw(backing, k_blocks, dst.last_ack("vda"));
    EXPECT_TRUE(v.intact()) << v.output;
}

}  // namespace
