// blockmig is SIGKILLed the moment QEMU acts on its block-job-complete (the
// job leaves READY), so the reply to it is lost with the process: the
// journal says only "complete sent". `blockmig recover` must ask QEMU where
// the disk really is and finish forward — the guest's disk is now the target
// behind the NBD hop: re-point it at a direct node, stop the daemon, release
// the old source — and never delete the target. Every block verifies.
// And blockmig SIGKILLed while --verify has the guest paused: `recover`
// finishes the job and the guest runs again (nobody else would resume it).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iostream>

#include "move_test_util.hpp"
#include "qmp_events.hpp"

using namespace move_test;
using blockmig::lab::IscsiTarget;

namespace {

constexpr std::uint64_t k_blocks = 4096;

TEST(MoveCompleteLost, KilledRightAfterBlockJobCompleteIsFinishedForwardByRecover) {
    LAB_REQUIRE();
    blockmig::lab::TempDir dir("cplost");
    const fs::path source = dir / "vm.qcow2", state = dir / "jobs";
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    IscsiTarget iscsi(64 * k_mib, 1);
    const fs::path watch_socket = dir / "watch.qmp";
    Guest guest(GuestConfig{.disks = {{"disk0", source, "qcow2"}},
                            .extra_args = QmpEvents::monitor_args(watch_socket),
                            .stamp_blocks = k_blocks});
    ASSERT_TRUE(guest.wait_for_ack("vda", 1, 120s)) << guest.console();
    QmpEvents events(watch_socket);
    const std::string qmp = guest.qmp_socket().string();
    // A failed run must not leave the hop (which outlives blockmig) behind.
    struct HopReaper {
        std::string portal;
        ~HopReaper() {
            for (int pid : storage_daemons_mentioning(portal)) kill(pid, SIGKILL);
        }
    } reaper{iscsi.portal()};

    const auto started = Clock::now();
    pid_t pid = spawn_blockmig({"move", "--qmp", qmp, "--disk", "disk0", "--to", iscsi.base_url(),
                                "--format", "raw", "--state-dir", state.string()});
    // QEMU got block-job-complete once the READY job moves on (waiting,
    // pending, concluded): blockmig dies before it can act on the reply.
    auto completing = events.wait_until(
        [](const json& e) {
            if (e.value("event", "") != "JOB_STATUS_CHANGE") return false;
            const std::string status = e["data"].value("status", "");
            return status == "waiting" || status == "pending" || status == "concluded";
        },
        started, 180s);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(completing) << "the mirror never left READY; events: " << events.names();
    ASSERT_TRUE(WIFSIGNALED(status)) << "blockmig finished before it could be killed";

    // The journal knows only that complete was sent.
    json listing = jobs_listing(state);
    ASSERT_EQ(listing["jobs"].size(), 1u) << listing.dump();
    const json job = listing["jobs"][0];
    EXPECT_EQ(job["state"], "needs-recovery") << job.dump();
    ASSERT_EQ(job["disks"][0]["phase"], "complete_sent") << job.dump();
    // QEMU finishes the switch on its own: the disk is the target's format
    // node, which reads the LUN through the hop.
    std::ifstream journal_file(job["journal"].get<std::string>());
    const json journal = json::parse(journal_file, nullptr, false);
    ASSERT_FALSE(journal.is_discarded());
    const std::string top_node = journal["disks"][0].value("top_node", "");
    ASSERT_FALSE(top_node.empty()) << journal.dump();
    auto node_of_disk = [&] {
        return device_block(guest, "disk0")["inserted"].value("node-name", "");
    };
    const auto deadline = Clock::now() + 60s;
    while (Clock::now() < deadline && node_of_disk() != top_node) std::this_thread::sleep_for(50ms);
    ASSERT_EQ(node_of_disk(), top_node) << device_block(guest, "disk0").dump();
    EXPECT_NE(device_file(guest, "disk0").find("nbd"), std::string::npos)
        << device_block(guest, "disk0").dump();
    ASSERT_FALSE(storage_daemons_mentioning(iscsi.portal()).empty())
        << "the hop the guest now writes through must outlive the killed blockmig";

    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    ASSERT_EQ(r.status, 0) << r.out;
    std::cout << r.out;
    EXPECT_TRUE(block_jobs(guest).empty()) << block_jobs(guest).dump();
    EXPECT_EQ(jobs_listing(state)["jobs"].size(), 0u) << "the job is finished and its journal gone";
    const json inserted = device_block(guest, "disk0")["inserted"];
    EXPECT_EQ(inserted.value("node-name", ""), top_node) << inserted.dump();
    EXPECT_NE(inserted.value("file", "").find(iscsi.iqn()), std::string::npos) << inserted.dump();
    EXPECT_EQ(inserted.dump().find("nbd"), std::string::npos)
        << "the device still goes through the NBD hop: " << inserted.dump();
    for (const auto& n : named_nodes(guest)) {
        EXPECT_NE(n.value("drv", ""), "nbd") << "NBD node left: " << n.dump();
        EXPECT_EQ(n.value("file", "").find(source.string()), std::string::npos)
            << "the old source is still open: " << n.dump();
    }
    EXPECT_TRUE(storage_daemons_mentioning(iscsi.portal()).empty()) << "the hop daemon still runs";
    ASSERT_TRUE(guest_keeps_writing(guest)) << guest.console();
    EXPECT_LT(guest.max_heartbeat_gap(started), 1000ms);
    auto v = pause_and_verify(guest, iscsi.lun_url(1), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(MoveCompleteLost, KilledWhileVerifyPausesTheGuestRecoverLeavesItRunning) {
    LAB_REQUIRE();
    blockmig::lab::TempDir dir("vkill");
    const fs::path source = dir / "vm.qcow2", state = dir / "jobs", pool = dir / "pool";
    fs::create_directories(pool);
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    const fs::path watch_socket = dir / "watch.qmp";
    Guest guest(GuestConfig{.disks = {{"disk0", source, "qcow2"}},
                            .extra_args = QmpEvents::monitor_args(watch_socket),
                            .stamp_blocks = k_blocks});
    ASSERT_TRUE(guest.wait_for_ack("vda", 1, 120s)) << guest.console();
    QmpEvents events(watch_socket);

    const auto started = Clock::now();
    pid_t pid = spawn_blockmig({"move", "--qmp", guest.qmp_socket().string(), "--disk", "disk0",
                                "--to", pool.string(), "--verify", "--state-dir", state.string()});
    auto paused = events.wait_for("STOP", started, 180s);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(paused) << "the guest was never paused for --verify; events: " << events.names();
    ASSERT_TRUE(WIFSIGNALED(status)) << "blockmig finished before it could be killed";
    json listing = jobs_listing(state);
    ASSERT_EQ(listing["jobs"].size(), 1u) << listing.dump();
    EXPECT_EQ(listing["jobs"][0]["state"], "needs-recovery") << listing.dump();

    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    std::cout << r.out;
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(qmp_return(guest, R"({"execute":"query-status"})").value("running", false))
        << "the guest blockmig paused for --verify is still paused after recover";
    EXPECT_TRUE(block_jobs(guest).empty()) << block_jobs(guest).dump();
    EXPECT_EQ(jobs_listing(state)["jobs"].size(), 0u);
    // Wherever recover left the disk (a READY mirror of a move meant to pivot
    // goes forward), it holds every acknowledged block.
    const std::string file = device_file(guest, "disk0");
    const std::string on = file.find(pool.string()) != std::string::npos
                               ? (pool / "vm.qcow2").string()
                               : source.string();
    ASSERT_TRUE(guest_keeps_writing(guest)) << guest.console();
    auto v = pause_and_verify(guest, on, "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << on << ": " << v.output;
}

}  // namespace
