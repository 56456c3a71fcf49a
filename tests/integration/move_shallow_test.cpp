// `move --shallow`: only the top image of a running guest's overlay is
// copied; the target records the same backing file and the guest keeps
// reading unchanged blocks from the shared backing node.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "move_test_util.hpp"

using namespace blockmig::lab;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t k_blocks = 2048;  // 8 MiB written per generation

TEST(MoveShallow, CopiesOnlyTheTopImageAndKeepsTheBackingChain) {
    LAB_REQUIRE();
    TempDir dir("shallow");
    const auto base = dir / "base.qcow2", overlay = dir / "overlay.qcow2",
               target_pool = dir / "pool";
    std::filesystem::create_directories(target_pool);
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", base.string(), "64M"});
    {
        // First life: the guest fills the base image with one full generation.
        Guest writer(GuestConfig{.disks = {{"disk0", base, "qcow2"}}, .stamp_blocks = k_blocks});
        ASSERT_TRUE(writer.wait_for_ack("vda", 2, 90s)) << writer.console();
    }
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base.string(), "-F", "qcow2",
            overlay.string()});

    // Second life on the overlay, base shared read-only as its own node.
    Guest guest(GuestConfig{
        .extra_args =
            {"-blockdev",
             "driver=file,node-name=base-file,filename=" + base.string() + ",read-only=on",
             "-blockdev", "driver=qcow2,node-name=base-fmt,file=base-file,read-only=on",
             "-blockdev",
             "driver=file,node-name=top-file,filename=" + overlay.string() +
                 ",cache.direct=on,aio=native",
             "-blockdev",
             "driver=qcow2,node-name=top-fmt,file=top-file,backing=base-fmt,cache.direct=on",
             "-device", "virtio-blk-pci,drive=top-fmt,id=disk0"},
        .stamp_blocks = k_blocks});
    ASSERT_TRUE(guest.wait_for_ack("vda", 1, 90s)) << guest.console();

    CommandResult r =
        move_test::blockmig_cli({"move", "--qmp", guest.qmp_socket().string(), "--disk", "disk0",
                                 "--to", target_pool.string(), "--shallow", "--verify"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(move_test::jobs_left(), 0) << "the move ends its job";
    EXPECT_NE(r.out.find("verified"), std::string::npos) << r.out;

    const auto target = target_pool / "overlay.qcow2";
    auto info =
        nlohmann::json::parse(run_ok({"qemu-img", "info", "-U", "--output=json", target.string()}));
    EXPECT_EQ(info.value("backing-filename", ""), base.string()) << info.dump();
    EXPECT_EQ(info.value("backing-filename-format", ""), "qcow2") << info.dump();

    // The guest runs on the target, above the very same backing node.
    std::string block = guest.qmp(R"({"execute":"query-block"})");
    EXPECT_NE(block.find(target.string()), std::string::npos) << block;
    EXPECT_NE(block.find(base.string()), std::string::npos) << block;
    EXPECT_EQ(block.find(overlay.string()), std::string::npos)
        << "the old overlay is still in use: " << block;

    // Every block the guest acknowledged reads back through target + base.
    std::this_thread::sleep_for(1s);
    guest.pause();
    VerifyReport v = verify_image(target.string(), "qcow2", k_blocks, guest.last_ack("vda"));
    EXPECT_TRUE(v.intact()) << v.output;
    EXPECT_EQ(v.ok, k_blocks) << v.output;
}

}  // namespace
