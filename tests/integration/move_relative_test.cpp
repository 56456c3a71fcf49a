// A guest QEMU started from its own directory with a relative image name, and
// blockmig run from another directory that holds a decoy of the same name:
// `move --delete-source` deletes QEMU's file (the one the guest used), never
// the decoy in blockmig's working directory, and the target holds every
// block the guest acknowledged. Both ways QEMU is told a relative name:
// -blockdev filename=vm.qcow2 and -drive file=vm.qcow2.
#include <sys/stat.h>

#include <fstream>
#include <iterator>

#include "move_test_util.hpp"

using namespace blockmig::lab;
using namespace move_test;

namespace {

constexpr std::uint64_t k_blocks = 4096;

enum class Naming { blockdev, drive };

std::string naming_name(const ::testing::TestParamInfo<Naming>& info) {
    return info.param == Naming::blockdev ? "Blockdev" : "Drive";
}

std::string contents(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct timespec mtime_of(const fs::path& path) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) throw std::runtime_error("stat " + path.string());
    return st.st_mtim;
}

class MoveRelative : public ::testing::TestWithParam<Naming> {};

TEST_P(MoveRelative, DeleteSourceDeletesQemusFileNotTheDecoyInBlockmigsDirectory) {
    LAB_REQUIRE();
    TempDir vmdir("rel-vm"), elsewhere("rel-cwd"), pool("rel-pool");
    const fs::path real = vmdir / "vm.qcow2", decoy = elsewhere / "vm.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", real.string(), "64M"});
    // The decoy is a real image too (with data), so acting on it would "work".
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", decoy.string(), "64M"});
    run_ok({"qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 0 4M", decoy.string()});
    const std::string decoy_before = contents(decoy);
    const auto decoy_mtime = mtime_of(decoy);

    GuestConfig config{.stamp_blocks = k_blocks, .cwd = vmdir.path()};
    if (GetParam() == Naming::blockdev) {
        config.disks = {{"disk0", "vm.qcow2", "qcow2"}};
    } else {
        config.extra_args = {"-drive",
                             "file=vm.qcow2,format=qcow2,if=none,id=drive0,cache=none,aio=native",
                             "-device", "virtio-blk-pci,drive=drive0,id=disk0"};
    }
    Guest guest(config);
    ASSERT_TRUE(guest.wait_for_ack("vda", 1, 120s)) << guest.console();
    ASSERT_EQ(device_file(guest, "disk0"), "vm.qcow2") << "QEMU must hold a relative name";

    auto r = run({"env", "-C", elsewhere.path().string(), BLOCKMIG_BINARY, "move", "--qmp",
                  guest.qmp_socket().string(), "--disk", "disk0", "--to", pool.path().string(),
                  "--delete-source", "--state-dir", (pool / ".jobs").string()});
    ASSERT_EQ(r.status, 0) << r.out;
    const fs::path target = pool / "vm.qcow2";
    EXPECT_NE(device_file(guest, "disk0").find(target.string()), std::string::npos)
        << device_file(guest, "disk0");
    EXPECT_FALSE(fs::exists(real)) << "QEMU's old image must be deleted: " << r.out;
    EXPECT_NE(r.out.find("deleted old volume " + real.string()), std::string::npos) << r.out;
    ASSERT_TRUE(fs::exists(decoy)) << "the decoy in blockmig's directory was deleted: " << r.out;
    EXPECT_EQ(contents(decoy), decoy_before) << "the decoy was changed";
    const auto mtime = mtime_of(decoy);
    EXPECT_TRUE(mtime.tv_sec == decoy_mtime.tv_sec && mtime.tv_nsec == decoy_mtime.tv_nsec)
        << "the decoy was written to";
    for (const auto& n : named_nodes(guest))
        EXPECT_NE(n.value("file", ""), "vm.qcow2") << "the old image is still open: " << n.dump();

    EXPECT_TRUE(block_jobs(guest).empty()) << block_jobs(guest).dump();
    ASSERT_TRUE(guest_keeps_writing(guest)) << guest.console();
    auto v = pause_and_verify(guest, target.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

INSTANTIATE_TEST_SUITE_P(Relative, MoveRelative, ::testing::Values(Naming::blockdev, Naming::drive),
                         naming_name);

}  // namespace
