// blockmig dies in the middle of a move (SIGKILL while copying, left at READY
// by --no-pivot, killed just after QEMU switched the disk): `blockmig jobs`
// shows the job and `blockmig recover` leaves the guest on the source (first
// two) or the target (third), with no job, node, daemon or created volume
// left over, and every block the guest acknowledged verifies.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "move_test_util.hpp"

using namespace move_test;

namespace {

constexpr std::uint64_t k_blocks = 4096;

class MoveRecover : public ::testing::Test {
  protected:
    void SetUp() override {
        LAB_REQUIRE();
        fs::create_directories(pool);
        blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
        guest = boot_writing_guest(source, "qcow2", k_blocks);
        qmp = guest->qmp_socket().string();
        nodes_before = node_names(*guest);
    }

    // Starts `blockmig move` without waiting for it.
    pid_t start_move(std::vector<std::string> extra) {
        std::vector<std::string> args{"move", "--qmp",       qmp,           "--disk",      "disk0",
                                      "--to", pool.string(), "--state-dir", state.string()};
        args.insert(args.end(), extra.begin(), extra.end());
        return spawn_blockmig(std::move(args));
    }

    json jobs_listing() { return move_test::jobs_listing(state); }

    void expect_nothing_left() {
        EXPECT_TRUE(block_jobs(*guest).empty()) << block_jobs(*guest).dump();
        EXPECT_TRUE(storage_daemons_mentioning(pool.string()).empty());
        EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    }

    blockmig::lab::TempDir dir{"recover"};
    fs::path source = dir / "vm.qcow2";
    fs::path pool = dir / "pool";
    fs::path state = dir / "jobs";
    std::unique_ptr<Guest> guest;
    std::string qmp;
    std::set<std::string> nodes_before;
};

TEST_F(MoveRecover, KilledWhileCopyingIsUndone) {
    pid_t pid = start_move({"--bandwidth", "1"});  // 1 MiB/s: still copying when killed
    // The guest's QMP takes one client at a time, so watch the journal:
    // the mirror runs once it says "copying".
    const auto deadline = Clock::now() + 60s;
    // A job is listed before its first disk is journaled: read it as "no phase yet".
    auto phase = [&] {
        const json l = jobs_listing();
        const json disk = l.value("/jobs/0/disks/0"_json_pointer, json::object());
        return disk.is_object() ? disk.value("phase", "") : std::string();
    };
    while (phase() != "copying" && Clock::now() < deadline) std::this_thread::sleep_for(50ms);
    std::this_thread::sleep_for(500ms);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    ASSERT_FALSE(block_jobs(*guest).empty()) << "the mirror outlives the killed blockmig";

    json listing = jobs_listing();
    ASSERT_EQ(listing["jobs"].size(), 1u) << listing.dump();
    const json job = listing["jobs"][0];
    EXPECT_EQ(job["state"], "needs-recovery");
    EXPECT_EQ(job["disks"][0]["phase"], "copying") << job.dump();
    // A new move on this guest is refused with the command that recovers it.
    auto refused = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", pool.string(),
                                 "--state-dir", state.string()});
    EXPECT_NE(refused.status, 0);
    EXPECT_NE(refused.out.find("blockmig recover --state-dir " + state.string() + " " +
                               job["id"].get<std::string>()),
              std::string::npos)
        << refused.out;

    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    ASSERT_EQ(r.status, 0) << r.out;
    expect_nothing_left();
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_TRUE(entries_of(pool).empty()) << "the created volume is deleted";
    EXPECT_NE(device_file(*guest, "disk0").find(source.string()), std::string::npos);
    ASSERT_TRUE(guest_keeps_writing(*guest));
    auto v = pause_and_verify(*guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST_F(MoveRecover, LeftReadyIsUndoneByRecover) {
    pid_t pid = start_move({"--no-pivot"});
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_EQ(WEXITSTATUS(status), 0);
    json listing = jobs_listing();
    ASSERT_EQ(listing["jobs"].size(), 1u) << listing.dump();
    EXPECT_EQ(listing["jobs"][0]["disks"][0]["phase"], "ready");
    EXPECT_EQ(block_jobs(*guest)[0]["status"], "ready");

    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    ASSERT_EQ(r.status, 0) << r.out;
    expect_nothing_left();
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_TRUE(entries_of(pool).empty());
    EXPECT_NE(device_file(*guest, "disk0").find(source.string()), std::string::npos);
    auto v = pause_and_verify(*guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST_F(MoveRecover, KilledJustAfterThePivotIsFinishedOnTheTarget) {
    pid_t pid = start_move({"--no-pivot"});
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_EQ(WEXITSTATUS(status), 0);
    // QEMU switches the disk, and blockmig dies before it records anything more.
    const std::string job = block_jobs(*guest)[0]["device"];
    guest->qmp(R"({"execute":"block-job-complete","arguments":{"device":")" + job + R"("}})");
    const auto deadline = Clock::now() + 60s;
    while (!block_jobs(*guest).empty() && Clock::now() < deadline)
        std::this_thread::sleep_for(50ms);
    const fs::path target = pool / "vm.qcow2";
    ASSERT_NE(device_file(*guest, "disk0").find(target.string()), std::string::npos);

    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    ASSERT_EQ(r.status, 0) << r.out;
    expect_nothing_left();
    EXPECT_TRUE(fs::exists(target)) << "the guest's disk now: never deleted";
    EXPECT_NE(device_file(*guest, "disk0").find(target.string()), std::string::npos);
    EXPECT_FALSE(any_node_mentions(*guest, source.string())) << named_nodes(*guest).dump();
    ASSERT_TRUE(guest_keeps_writing(*guest));
    auto v = pause_and_verify(*guest, target.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

}  // namespace
