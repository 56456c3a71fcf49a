// blockmig migrate's RAM tuning between two lab hosts on shared storage (the
// rig of migrate_test_util.hpp: a writing guest on A, -incoming defer on B):
// - --policy postcopy: QEMU reports postcopy-active (blockmig's JSON lines
//   carry the status QEMU sent), the guest runs and writes on B, every
//   block verifies (on QEMU >= 8 or KVM: QEMU 7.2's post-copy under TCG
//   panics the guest, see the test);
// - --policy suspend: the guest sends no heartbeat while its RAM moves and
//   runs on B afterwards;
// - --parallel 2 --compress zstd: both QEMUs report 2 multifd channels with
//   zstd, and the source's own count of bytes sent over multifd is not 0
//   (on QEMU >= 8 or KVM, as post-copy).
#include <gtest/gtest.h>

#include "migrate_test_util.hpp"

using namespace migrate_test;

namespace {

class MigratePolicy : public SharedRig {
  protected:
    // QEMU 7.2 running the guest under TCG (no KVM): its post-copy and
    // multifd hand the destination guest bad memory in this lab.
    bool qemu7_under_tcg() {
        const json version = qmp_return(*src, R"({"execute":"query-version"})");
        const bool kvm = qmp_return(*src, R"({"execute":"query-kvm"})").value("enabled", false);
        return version["qemu"].value("major", 0) < 8 && !kvm;
    }
};

// The first `event` line whose fields satisfy `match`, or null.
template <typename Match>
json find_event(const std::vector<json>& events, const std::string& name, Match match) {
    for (const auto& e : events)
        if (e.value("event", "") == name && match(e)) return e;
    return nullptr;
}

TEST_F(MigratePolicy, PostcopyRunsTheGuestOnTheDestinationWhileItsRamFollows) {
    // Known QEMU defect, not blockmig's: under TCG, QEMU 7.2's post-copy hands
    // the destination guest bad memory (its kernel panicked in the block
    // completion path a few seconds after the switch, twice out of twice, on
    // this rig); QEMU 10.0 passes the same test. KVM hosts are not affected
    // by TCG's path; the lab here has no KVM.
    if (qemu7_under_tcg())
        GTEST_SKIP() << "QEMU 7.2 post-copy under TCG corrupts the guest (QEMU's defect); run "
                        "with BLOCKMIG_QEMU=10";
    // 4 MiB/s and a 1 ms downtime limit: pre-copy cannot converge after the
    // first pass, so the switch to post-copy is certain, not a race.
    auto r = blockmig_cli_split(migrate_args({"--policy", "postcopy", "--bandwidth", "4",
                                              "--max-downtime", "1", "--output", "json"}),
                                dir.path());
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    const auto events = json_lines(r.out);
    ASSERT_FALSE(events.empty());
    const json requested = find_event(events, "policy", [](const json& e) {
        return e.value("action", "").find("requested post-copy") != std::string::npos;
    });
    EXPECT_FALSE(requested.is_null()) << r.out;
    const json switched = find_event(events, "policy", [](const json& e) {
        return e.value("qemu_status", "") == "postcopy-active";
    });
    EXPECT_FALSE(switched.is_null()) << "QEMU's MIGRATION event said postcopy-active\n" << r.out;
    EXPECT_FALSE(find_event(events, "phase", [](const json& e) { return e["phase"] == "postcopy"; })
                     .is_null())
        << "the journal's phase went to postcopy\n"
        << r.out;
    const json& done = events.back();
    EXPECT_EQ(done["event"], "done") << r.out;
    EXPECT_TRUE(done.value("postcopy", false)) << r.out;
    // The report: paused at pre-switchover, then post-copy, running on the
    // destination from then on (not only once the last page arrived).
    const json& tl = done["timeline"];
    EXPECT_GE(tl.value("paused_at", -1.0), 0) << tl.dump();
    EXPECT_GE(tl.value("postcopy_at", -1.0), tl.value("paused_at", -1.0)) << tl.dump();
    EXPECT_GE(tl.value("resumed_at", -1.0), tl.value("postcopy_at", -1.0)) << tl.dump();
    EXPECT_LT(tl.value("resumed_at", -1.0), done.value("total_seconds", 0.0)) << tl.dump();
    EXPECT_TRUE(done.value("source_quit", false));
    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits once every page arrived";
    const json dst_migration = qmp_return(*dst, R"({"execute":"query-migrate"})");
    EXPECT_EQ(dst_migration.value("status", ""), "completed") << dst_migration.dump();
    const json caps = qmp_return(*dst, R"({"execute":"query-migrate-capabilities"})");
    bool postcopy_ram = false;
    for (const auto& c : caps)
        if (c["capability"] == "postcopy-ram") postcopy_ram = c["state"].get<bool>();
    EXPECT_TRUE(postcopy_ram) << "the destination took post-copy too";
    expect_guest_on_destination();
}

TEST_F(MigratePolicy, SuspendPausesTheGuestForTheCopyAndResumesItOnTheDestination) {
    // 4 MiB/s: the copy lasts seconds, long enough to watch the pause.
    BackgroundCli cli(migrate_args({"--policy", "suspend", "--bandwidth", "4", "--output", "json"}),
                      src->qmp_socket().string());
    ASSERT_TRUE(wait_for_phase("ram", 120s));
    std::this_thread::sleep_for(1s);  // the heartbeat in flight lands
    const auto quiet_from = Clock::now();
    std::this_thread::sleep_for(2s);
    const std::size_t beats = src->heartbeats_since(quiet_from);
    ASSERT_TRUE(cli.wait(180s)) << "blockmig ends";
    const auto& r = cli.result();
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(beats, 0u) << "the guest is paused while its RAM moves";
    const auto events = json_lines(r.out.substr(r.out.find('{')));
    EXPECT_FALSE(find_event(events, "policy",
                            [](const json& e) {
                                return e.value("action", "").find("paused the guest") !=
                                       std::string::npos;
                            })
                     .is_null())
        << r.out;
    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";
    // The report marks the pause from the stop to the destination's start.
    const json& tl = events.back()["timeline"];
    EXPECT_EQ(tl.value("pause_reason", ""), "suspend") << tl.dump();
    EXPECT_GT(tl.value("resumed_at", 0.0) - tl.value("paused_at", 0.0), 2) << tl.dump();
    // The guest's pause spans the copy: far longer than a live switchover.
    const auto deadline = Clock::now() + 30s;
    while (!dst->first_heartbeat() && Clock::now() < deadline) std::this_thread::sleep_for(50ms);
    ASSERT_TRUE(src->last_heartbeat() && dst->first_heartbeat()) << dst->console();
    const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(*dst->first_heartbeat() -
                                                                           *src->last_heartbeat());
    std::cerr << "suspend: guest heartbeat gap " << gap.count() << " ms\n";
    EXPECT_GT(gap, 2s);
    expect_guest_on_destination();
}

TEST_F(MigratePolicy, ParallelZstdChannelsOnBothSides) {
    // Same QEMU 7.2 + TCG defect with multifd: in the CI rehearsal of stop 15
    // the destination guest's kernel oopsed (NULL dereference in its timer
    // tick) right after a multifd+zstd switchover, twice in a row; QEMU 10.0
    // passes (docs/known-issues.md).
    if (qemu7_under_tcg())
        GTEST_SKIP() << "QEMU 7.2 multifd under TCG corrupts the guest (QEMU's defect); run "
                        "with BLOCKMIG_QEMU=10";
    auto r = blockmig_cli_split(migrate_args({"--parallel", "2", "--compress", "zstd",
                                              "--keep-source", "--output", "json"}),
                                dir.path());
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    const auto events = json_lines(r.out);
    ASSERT_FALSE(events.empty());
    const json& done = events.back();
    EXPECT_EQ(done["event"], "done") << r.out;
    EXPECT_GT(done.value("multifd_bytes", std::int64_t{-1}), 0) << r.out;
    // What each QEMU says it used, read after the run (blockmig held the monitors).
    for (Guest* side : {src.get(), dst.get()}) {
        const json params = qmp_return(*side, R"({"execute":"query-migrate-parameters"})");
        EXPECT_EQ(params.value("multifd-channels", 0), 2) << params.dump();
        EXPECT_EQ(params.value("multifd-compression", ""), "zstd") << params.dump();
        bool multifd = false;
        for (const auto& c : qmp_return(*side, R"({"execute":"query-migrate-capabilities"})"))
            if (c["capability"] == "multifd") multifd = c["state"].get<bool>();
        EXPECT_TRUE(multifd);
    }
    const json sent = qmp_return(*src, R"({"execute":"query-migrate"})");
    EXPECT_GT(sent["ram"].value("multifd-bytes", std::uint64_t{0}), 0u) << sent.dump();
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-status"})")["status"], "postmigrate")
        << "--keep-source leaves the source paused";
    expect_guest_on_destination();
}

}  // namespace
