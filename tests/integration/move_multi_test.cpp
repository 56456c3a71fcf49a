// Several disks of one guest move together under one bandwidth budget, and
// --delete-source removes the old volume only after a confirmed pivot.
#include <gtest/gtest.h>

#include "move_test_util.hpp"

using namespace move_test;

namespace {

constexpr std::uint64_t k_blocks = 4096;  // 16 MiB cycle per disk

TEST(MoveMulti, AllDisksMoveTogetherUnderOneBandwidthBudget) {
    LAB_REQUIRE();
    blockmig::lab::TempDir dir("multi");
    const fs::path pool = dir / "pool";
    fs::create_directories(pool);
    const fs::path a = dir / "a.qcow2", b = dir / "b.raw";
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", a.string(), "64M"});
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "raw", b.string(), "64M"});
    Guest guest(GuestConfig{.disks = {{"disk0", a, "qcow2"}, {"disk1", b, "raw"}},
                            .stamp_blocks = k_blocks});
    ASSERT_TRUE(guest.wait_for_ack("vda", 2, 120s)) << guest.console();
    ASSERT_TRUE(guest.wait_for_ack("vdb", 2, 120s)) << guest.console();

    // 2 × 16 MiB written at 8 MiB/s in total: the copy takes seconds while
    // both disks keep being written.
    const auto started = Clock::now();
    SplitResult r =
        blockmig_cli_split({"move", "--qmp", guest.qmp_socket().string(), "--all-disks", "--to",
                            pool.string(), "--bandwidth", "8", "--output", "json"},
                           dir.path());
    const auto took = Clock::now() - started;
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    EXPECT_GT(took, 2s) << "the shared 8 MiB/s budget was not applied";
    std::set<std::string> pivoted;
    for (const auto& line : lines_of(r.out)) {
        json j = json::parse(line);
        if (j["event"] == "pivoted") pivoted.insert(j["disk"].get<std::string>());
    }
    EXPECT_EQ(pivoted, (std::set<std::string>{"disk0", "disk1"})) << r.out;
    EXPECT_NE(device_file(guest, "disk0").find((pool / "a.qcow2").string()), std::string::npos);
    EXPECT_NE(device_file(guest, "disk1").find((pool / "b.raw").string()), std::string::npos);
    EXPECT_LT(guest.max_heartbeat_gap(started), 1000ms);

    guest.pause();
    for (auto [dev, image, format] :
         {std::tuple{"vda", pool / "a.qcow2", "qcow2"}, std::tuple{"vdb", pool / "b.raw", "raw"}}) {
        auto v = blockmig::lab::verify_image(image.string(), format, k_blocks, guest.last_ack(dev));
        EXPECT_TRUE(v.intact()) << dev << ": " << v.output;
        EXPECT_EQ(v.ok, k_blocks) << dev << ": " << v.output;
    }
}

TEST(MoveMulti, DeleteSourceRemovesOldVolumeAfterPivotOnly) {
    LAB_REQUIRE();
    blockmig::lab::TempDir dir("delsrc");
    const fs::path pool = dir / "pool", old_dir = dir / "old";
    fs::create_directories(pool);
    fs::create_directories(old_dir);
    const fs::path source = old_dir / "vm.qcow2";
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);

    CommandResult r = blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk",
                                    "disk0", "--to", pool.string(), "--delete-source"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    EXPECT_FALSE(fs::exists(source)) << "old volume still there: " << r.out;
    EXPECT_FALSE(any_node_mentions(*guest, source.string())) << named_nodes(*guest).dump();
    ASSERT_TRUE(guest_keeps_writing(*guest));
    auto v = pause_and_verify(*guest, (pool / "vm.qcow2").string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;

    // A refused move never deletes anything: the target now exists.
    guest->resume();
    CommandResult again =
        blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to",
                      (pool / "vm.qcow2").string(), "--delete-source"});
    EXPECT_NE(again.status, 0) << again.out;
    EXPECT_TRUE(fs::exists(pool / "vm.qcow2"));
}

}  // namespace
