// `move --no-pivot` leaves the mirror READY (through the NBD hop for an NFS
// target) after blockmig exits; `blockmig pivot --abort` undoes it all and
// `blockmig pivot` later finishes it onto a direct node, and the hop's
// daemon log goes with the hop.
#include <gtest/gtest.h>

#include "move_test_util.hpp"

using namespace move_test;
using blockmig::lab::NfsServer;

namespace {

constexpr std::uint64_t k_blocks = 4096;

TEST(MovePivot, NoPivotThenAbortThenPivotFinishesOnADirectNode) {
    LAB_REQUIRE();
    NfsServer nfs;
    blockmig::lab::TempDir dir("pivot");
    const fs::path source = dir / "vm.qcow2";
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    const std::string qmp = guest->qmp_socket().string();
    const auto nodes_before = node_names(*guest);

    // 1. Left READY: the job keeps mirroring after blockmig exited.
    auto r =
        blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", nfs.url(), "--no-pivot"});
    ASSERT_EQ(r.status, 0) << r.out;
    json jobs = block_jobs(*guest);
    ASSERT_EQ(jobs.size(), 1u) << jobs.dump();
    EXPECT_EQ(jobs[0]["status"], "ready") << jobs.dump();
    EXPECT_TRUE(fs::exists(nfs.export_dir() / "vm.qcow2"));
    EXPECT_NE(device_file(*guest, "disk0").find(source.string()), std::string::npos);
    EXPECT_FALSE(storage_daemons_mentioning("vm.qcow2").empty()) << "the hop must outlive blockmig";

    // 2. Abort: everything blockmig added is gone, the guest never left its source.
    r = blockmig_cli({"pivot", "--qmp", qmp, "--abort"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(block_jobs(*guest).empty());
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_FALSE(fs::exists(nfs.export_dir() / "vm.qcow2"));
    EXPECT_TRUE(storage_daemons_mentioning("vm.qcow2").empty());
    r = blockmig_cli({"pivot", "--qmp", qmp});
    EXPECT_NE(r.status, 0) << "nothing is left to pivot: " << r.out;

    // 3. Again, and this time finish it later with `blockmig pivot`.
    r = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", nfs.url(), "--no-pivot"});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto hops = storage_daemons_mentioning("vm.qcow2");
    ASSERT_FALSE(hops.empty()) << "the hop must outlive blockmig";
    const fs::path hop_log = hop_dir_of_daemon(hops.front()) / "qemu-storage-daemon.log";
    EXPECT_TRUE(fs::exists(hop_log)) << hop_log << ": the running hop logs here";
    std::this_thread::sleep_for(2s);  // the guest keeps writing through the READY mirror
    const auto pivot_started = Clock::now();
    r = blockmig_cli({"pivot", "--qmp", qmp, "--disk", "disk0"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the pivot ends the job";
    EXPECT_TRUE(block_jobs(*guest).empty());
    const std::string file = device_file(*guest, "disk0");
    EXPECT_NE(file.find(nfs.url() + "/vm.qcow2"), std::string::npos) << file;
    EXPECT_FALSE(any_node_mentions(*guest, "nbd")) << named_nodes(*guest).dump();
    EXPECT_TRUE(storage_daemons_mentioning("vm.qcow2").empty());
    EXPECT_FALSE(fs::exists(hop_log)) << hop_log << ": a hop that ended cleanly leaves no log";
    EXPECT_LT(guest->max_heartbeat_gap(pivot_started), 1000ms);
    ASSERT_TRUE(guest_keeps_writing(*guest));
    auto v = pause_and_verify(*guest, nfs.url() + "/vm.qcow2", "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

}  // namespace
