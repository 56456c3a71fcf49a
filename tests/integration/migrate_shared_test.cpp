// blockmig migrate --copy-storage none between two lab hosts (network
// namespaces joined by a rate-limited veth): a writing guest on host A, a
// destination QEMU with the same devices and -incoming defer on host B, both
// opening the same disk file (one mount namespace: shared storage).
// - success: the guest runs and keeps writing on B, the source QEMU is gone,
//   every block verifies;
// - the destination QEMU killed during the RAM phase: one clear line, the
//   guest keeps running on A, no journal, the source's settings restored;
// - blockmig SIGKILLed during the RAM phase (--no-guardian): `blockmig jobs`
//   shows it, `blockmig recover` cancels, the guest keeps running on A;
// - the link pulled during the RAM phase: cancelled (at the latest at
//   --timeout), the guest keeps running on A;
// - a destination opening another file: refused before anything is touched.
// QEMU's monitor serves one client at a time, so while blockmig runs the
// test watches the journal (`blockmig jobs`), never QMP.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate_test_util.hpp"

using namespace migrate_test;

namespace {

class MigrateShared : public SharedRig {};

TEST_F(MigrateShared, GuestRunsOnTheDestinationAndEveryBlockVerifies) {
    auto r = blockmig_cli_split(migrate_args({"--output", "json"}), dir.path());
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_TRUE(r.err.empty()) << r.err;
    const auto events = json_lines(r.out);
    ASSERT_FALSE(events.empty());
    bool saw_ram = false;
    for (const auto& j : events)
        if (j["event"] == "ram") {
            saw_ram = true;
            EXPECT_TRUE(j.contains("remaining") && j.contains("iteration")) << j.dump();
        }
    EXPECT_TRUE(saw_ram) << r.out;
    const json& done = events.back();
    EXPECT_EQ(done["event"], "done");
    EXPECT_TRUE(done["source_quit"].get<bool>());
    EXPECT_GT(done["downtime_ms"].get<std::int64_t>(), 0)
        << "QEMU's final count, not the 0 read too early";
    EXPECT_GT(done["ram_transferred"].get<std::uint64_t>(), 0u);

    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";
    // The pause the guest saw: the source's last heartbeat (every 100 ms) to
    // the destination's first, by host arrival time.
    const auto deadline = Clock::now() + 30s;
    while (!dst->first_heartbeat() && Clock::now() < deadline) std::this_thread::sleep_for(50ms);
    ASSERT_TRUE(src->last_heartbeat() && dst->first_heartbeat()) << dst->console();
    const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(*dst->first_heartbeat() -
                                                                           *src->last_heartbeat());
    std::cerr << "guest heartbeat gap across the switchover: " << gap.count()
              << " ms (QEMU's downtime " << done["downtime_ms"] << " ms)\n";
    EXPECT_LT(gap, 5s) << "TCG on a loaded machine; QEMU's limit is 300 ms";
    expect_guest_on_destination();
}

TEST_F(MigrateShared, DestinationKilledDuringRamLeavesTheGuestOnTheSource) {
    // 2 MiB/s: the ~100 MiB of RAM takes long enough to be interrupted.
    BackgroundCli cli(migrate_args({"--bandwidth", "2"}), src->qmp_socket().string());
    ASSERT_TRUE(wait_for_phase("ram", 60s));
    std::this_thread::sleep_for(1s);
    const auto killed = Clock::now();
    kill(dst->pid(), SIGKILL);
    ASSERT_TRUE(cli.wait(60s)) << "blockmig ends after the destination died";
    const auto& r = cli.result();
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_LT(cli.finished() - killed, 20s);
    expect_one_error_line(r.out, {"phase ram", "keeps running on the source"});
    expect_guest_on_source();
}

TEST_F(MigrateShared, LinkDownDuringRamIsCancelled) {
    BackgroundCli cli(migrate_args({"--bandwidth", "2", "--timeout", "20"}),
                      src->qmp_socket().string());
    ASSERT_TRUE(wait_for_phase("ram", 60s));
    std::this_thread::sleep_for(1s);
    hosts->set_link(false);
    const auto cut = Clock::now();
    ASSERT_TRUE(cli.wait(90s)) << "blockmig ends within its timeout plus a bounded cancel";
    const auto& r = cli.result();
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find("blockmig: error: migrate failed in phase ram"), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("keeps running on the source"), std::string::npos) << r.out;
    // At the latest: the rest of --timeout, then a cancel that does not wait on the dead link.
    EXPECT_LT(cli.finished() - cut, 30s) << r.out;
    std::cerr << "link down -> blockmig ended: "
              << std::chrono::duration_cast<std::chrono::milliseconds>(cli.finished() - cut).count()
              << " ms\n"
              << r.out;
    expect_guest_on_source();
}

TEST_F(MigrateShared, DestinationOnAnotherFileIsRefusedUntouched) {
    // A destination whose disk is a copy, not the shared file.
    dst.reset();
    const fs::path copy = dir / "copy.raw";
    blockmig::lab::run_ok({"truncate", "-s", "64M", copy.string()});
    GuestConfig other = config;
    other.disks[0].path = copy;
    dst = std::make_unique<Guest>(blockmig::lab::incoming_config(other, hosts->ns_b()));
    auto r = blockmig_cli(migrate_args());
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find("different files"), std::string::npos) << r.out;
    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "inmigrate");
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-migrate"})").value("status", "none"), "none");
    expect_guest_on_source();
}

TEST_F(MigrateShared, KilledBlockmigIsRecoveredOntoTheSource) {
    pid_t pid = spawn_blockmig(migrate_args({"--bandwidth", "2", "--no-guardian"}));
    const bool in_ram = wait_for_phase("ram", 60s);
    std::this_thread::sleep_for(1s);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    ASSERT_TRUE(in_ram);

    json listing = jobs_listing();
    ASSERT_EQ(listing["jobs"].size(), 1u) << listing.dump();
    const json job = listing["jobs"][0];
    EXPECT_EQ(job["kind"], "migrate");
    EXPECT_EQ(job["state"], "needs-recovery");
    // QEMU migrates on without blockmig: a new migration of this guest is
    // refused with the command that recovers the old one.
    auto refused = blockmig_cli(migrate_args());
    EXPECT_EQ(refused.status, 1);
    EXPECT_NE(refused.out.find("blockmig recover --state-dir " + state.string() + " " +
                               job["id"].get<std::string>()),
              std::string::npos)
        << refused.out;

    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("undo"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("migrate_cancel"), std::string::npos) << r.out;
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-migrate"})")["status"], "cancelled");
    // The destination's incoming migration failed: QEMU exits by itself.
    EXPECT_TRUE(dst->wait_exit(30s)) << dst->console();
    expect_guest_on_source();
}

}  // namespace
