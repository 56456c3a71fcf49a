// The lab guest boots, stamps its disk, and the verifier both passes an
// intact disk and catches a corrupted block and a rolled-back block.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <fstream>

#include "lab.hpp"

using namespace blockmig::lab;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t k_blocks = 2048;  // 8 MiB cycle: several generations in seconds under TCG

class LabGuestTest : public ::testing::Test {
  protected:
    void SetUp() override {
        LAB_REQUIRE();
        disk = dir / "disk.raw";
        run_ok({"truncate", "-s", "16M", disk.string()});
        guest.emplace(GuestConfig{.disks = {{"disk0", disk, "raw"}}, .stamp_blocks = k_blocks});
        ASSERT_TRUE(guest->wait_for_line("GUEST-UP", 60s)) << guest->console();
        // Two full generations, so a block of an older generation exists to roll back to.
        ASSERT_TRUE(guest->wait_for_ack("vda", 2, 60s)) << guest->console();
        started = Clock::now();
        std::this_thread::sleep_for(1s);
        guest->pause();
        ack = guest->last_ack("vda");
        ASSERT_TRUE(ack);
    }

    TempDir dir{"guest-test"};
    std::filesystem::path disk;
    std::optional<Guest> guest;
    std::optional<Ack> ack;
    Clock::time_point started;
};

TEST_F(LabGuestTest, WritesAndHeartbeatsWhileRunning) {
    EXPECT_LT(guest->max_heartbeat_gap(started), 1000ms) << "heartbeat stalled while the guest ran";
    EXPECT_GE(ack->gen, 2u);
}

// BLOCKMIG_QEMU=10 must really run QEMU 10 (the guest and the tools), not the system's 7.2.
TEST_F(LabGuestTest, RunsTheChosenQemuFlavour) {
    const char* flavour = std::getenv("BLOCKMIG_QEMU");
    const std::string want = flavour && std::string(flavour).starts_with("10") ? "10" : "7";
    std::string reply = guest->qmp(R"({"execute":"query-version"})");
    EXPECT_NE(reply.find("\"major\": " + want + "}"), std::string::npos) << reply;
    EXPECT_NE(run_ok({"qemu-img", "--version"}).find("version " + want + "."), std::string::npos);
}

TEST_F(LabGuestTest, VerifierPassesIntactDisk) {
    VerifyReport v = verify_raw(disk, k_blocks, ack);
    EXPECT_TRUE(v.intact()) << v.output;
    EXPECT_EQ(v.ok, k_blocks) << v.output;
    EXPECT_GE(v.gen_min, ack->gen - 1);
}

TEST_F(LabGuestTest, VerifierFlagsCorruptedBlockAsBad) {
    guest->stop();
    {
        std::fstream f(disk, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(100 * 4096 + 2000);
        char c = 0;
        f.read(&c, 1);
        f.seekp(100 * 4096 + 2000);
        c = static_cast<char>(c ^ 0x5a);
        f.write(&c, 1);
    }
    VerifyReport v = verify_raw(disk, k_blocks, ack);
    EXPECT_FALSE(v.intact());
    EXPECT_EQ(v.bad, 1u) << v.output;
    EXPECT_NE(v.output.find("BAD b=100"), std::string::npos) << v.output;
}

TEST_F(LabGuestTest, VerifierFlagsRolledBackBlockAsLost) {
    guest->stop();
    // A well-formed block from the generation before the acknowledged one:
    // exactly what a copy that missed the latest writes would contain.
    run_ok(
        {diskstamp_binary().string(), "stamp", disk.string(), "0", std::to_string(ack->gen - 1)});
    VerifyReport v = verify_raw(disk, k_blocks, ack);
    EXPECT_FALSE(v.intact());
    EXPECT_EQ(v.bad, 0u) << v.output;
    EXPECT_EQ(v.lost, 1u) << v.output;
    EXPECT_NE(v.output.find("LOST b=0"), std::string::npos) << v.output;
}

TEST_F(LabGuestTest, VerifierFlagsZeroedBlockAsLost) {
    guest->stop();
    run_ok({"dd", "if=/dev/zero", "of=" + disk.string(), "bs=4096", "seek=7", "count=1",
            "conv=notrunc"});
    VerifyReport v = verify_raw(disk, k_blocks, ack);
    EXPECT_EQ(v.lost, 1u) << v.output;
}

// A QEMU that dies by itself is named as such (how it ended and what it
// printed last), not left to show only as a refused QMP connection.
TEST_F(LabGuestTest, QmpFailureAfterQemuDiedSaysHowItDied) {
    ASSERT_EQ(kill(guest->pid(), SIGABRT), 0);
    const auto deadline = Clock::now() + 10s;
    while (guest->running() && Clock::now() < deadline) std::this_thread::sleep_for(20ms);
    ASSERT_FALSE(guest->running());
    try {
        guest->qmp(R"({"execute":"query-status"})");
        ADD_FAILURE() << "QMP answered after QEMU died";
    } catch (const std::runtime_error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("guest QEMU (pid "), std::string::npos) << what;
        EXPECT_NE(what.find(" died: signal 6 (SIGABRT)"), std::string::npos) << what;
        EXPECT_NE(what.find("GUEST-UP"), std::string::npos) << "its last output: " << what;
    }
}

}  // namespace
