// blockmig migrate's RAM policies and tuning between two lab hosts on
// shared storage (the rig of migrate_test_util.hpp: a writing guest on A,
// -incoming defer on B). The policy tests run a guest that also keeps
// 16 MiB of RAM dirty (`diskstamp dirty`) behind an 8 MiB/s cap: every pass
// leaves those 16 MiB, far more than a 300 ms downtime can send, so
// pre-copy never converges by itself:
// - minimal-downtime: the downtime limit steps 100 -> 200 -> 300 ms, then
//   the migration is cancelled at --timeout: one error line, the guest keeps
//   running and writing on A, every block verifies;
// - postcopy: switches to post-copy once pre-copy stalls (QEMU reports
//   postcopy-active), the guest runs and writes on B, every block verifies
//   (on QEMU >= 8 or KVM: QEMU 7.2's post-copy under TCG panics the guest);
// - suspend: auto-converge throttles the vCPUs, its step raised at each
//   stall, then the guest is paused as last resort and the migration
//   completes: the guest runs on B, every block verifies;
// - --parallel 2 --compress zstd: both QEMUs report 2 multifd channels with
//   zstd, and the source's own count of bytes sent over multifd is not 0
//   (on QEMU >= 8 or KVM, as post-copy).
#include <gtest/gtest.h>

#include "migrate_test_util.hpp"

using namespace migrate_test;

namespace {

class MigratePolicy : public SharedRig {};

// The first `event` line whose fields satisfy `match`, or null.
template <typename Match>
json find_event(const std::vector<json>& events, const std::string& name, Match match) {
    for (const auto& e : events)
        if (e.value("event", "") == name && match(e)) return e;
    return nullptr;
}

// The source guest keeps 16 MiB of RAM dirty; blockmig runs with an 8 MiB/s
// cap and a 300 ms downtime limit (2.4 MiB per switchover at most).
class MigrateDirtyGuest : public MigratePolicy {
  protected:
    MigrateDirtyGuest() { dirty_mib = 16; }

    void SetUp() override {
        MigratePolicy::SetUp();
        if (HasFatalFailure() || IsSkipped()) return;
        ASSERT_TRUE(src->wait_for_line("DIRTY-UP", 60s)) << src->console();
    }

    std::vector<std::string> policy_args(const std::string& policy, const std::string& timeout) {
        return migrate_args({"--policy", policy, "--bandwidth", "8", "--max-downtime", "300",
                             "--timeout", timeout, "--output", "json"});
    }

    // The `policy` events' actions, in order.
    static std::vector<std::string> actions(const std::vector<json>& events) {
        std::vector<std::string> out;
        for (const auto& e : events)
            if (e.value("event", "") == "policy") out.push_back(e.value("action", ""));
        return out;
    }

    static std::size_t index_of(const std::vector<std::string>& actions,
                                const std::string& needle) {
        for (std::size_t i = 0; i < actions.size(); ++i)
            if (actions[i].find(needle) != std::string::npos) return i;
        return actions.size();
    }

    struct PolicyRun {
        std::string out;  // stdout: JSON lines
        std::vector<json> events;
        std::vector<std::string> actions;
    };

    // blockmig under `policy` (timeout 120 s) run to success. Call through
    // ASSERT_NO_FATAL_FAILURE.
    void run_to_completion(const std::string& policy, PolicyRun& run) {
        auto r = blockmig_cli_split(policy_args(policy, "120"), dir.path());
        ASSERT_EQ(r.status, 0) << r.out << r.err;
        run.out = r.out;
        run.events = json_lines(r.out);
        ASSERT_FALSE(run.events.empty());
        run.actions = actions(run.events);
    }

    static std::string joined(const std::vector<std::string>& lines) {
        std::string s;
        for (const auto& l : lines) s += l + "\n";
        return s;
    }
};

TEST_F(MigrateDirtyGuest, MinimalDowntimeStepsTheLimitThenAbortsCleanlyAtTheTimeout) {
    const auto started = Clock::now();
    auto r = blockmig_cli_split(policy_args("minimal-downtime", "40"), dir.path());
    const auto took = Clock::now() - started;
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    std::vector<std::string> errors;
    for (const auto& l : lines_of(r.err))
        if (l.starts_with("blockmig: error:")) errors.push_back(l);
    ASSERT_EQ(errors.size(), 1u) << "one clear line\n" << r.err;
    EXPECT_NE(errors[0].find("migrate failed in phase ram: timed out after 40 s"),
              std::string::npos)
        << errors[0];
    EXPECT_NE(errors[0].find("still to send"), std::string::npos) << errors[0];
    EXPECT_NE(errors[0].find("the guest keeps running on the source"), std::string::npos)
        << errors[0];
    EXPECT_LT(took, 70s) << "the timeout, then a bounded cancel";
    const auto a = actions(json_lines(r.out));
    const auto step1 = index_of(a, "downtime limit 100 -> 200 ms");
    const auto step2 = index_of(a, "downtime limit 200 -> 300 ms");
    const auto abort = index_of(a, "timed out after 40 s");
    EXPECT_LT(step1, step2) << joined(a);
    EXPECT_LT(step2, abort) << joined(a);
    EXPECT_LT(abort, a.size()) << joined(a);
    EXPECT_EQ(index_of(a, "paused"), a.size()) << "minimal-downtime never pauses\n" << joined(a);
    std::cerr << "minimal-downtime actions:\n" << joined(a) << errors[0] << "\n";
    expect_guest_on_source();
}

TEST_F(MigrateDirtyGuest, PostcopySwitchesWhenPreCopyStallsAndTheGuestRunsOnTheDestination) {
    // Known QEMU defect, not blockmig's: under TCG, QEMU 7.2's post-copy hands
    // the destination guest bad memory (its kernel panicked in the block
    // completion path a few seconds after the switch, twice out of twice, on
    // this rig); QEMU 10.0 passes the same test. KVM hosts are not affected
    // by TCG's path; the lab here has no KVM (docs/known-issues.md).
    SKIP_ON_QEMU7_TCG(*src, "post-copy");
    PolicyRun run;
    ASSERT_NO_FATAL_FAILURE(run_to_completion("postcopy", run));
    const auto& [out, events, a] = run;
    const auto requested = index_of(a, "requested post-copy");
    ASSERT_LT(requested, a.size()) << joined(a);
    EXPECT_NE(a[requested].find("pre-copy stalled"), std::string::npos) << a[requested];
    // It waited for the stall: passes after the first one went by.
    std::uint64_t passes = 0;
    for (const auto& e : events)
        if (e.value("event", "") == "ram" && e.value("status", "") == "active")
            passes = std::max<std::uint64_t>(passes, e.value("iteration", 0));
    EXPECT_GE(passes, 3u) << out;
    const json switched = find_event(events, "policy", [](const json& e) {
        return e.value("qemu_status", "") == "postcopy-active";
    });
    EXPECT_FALSE(switched.is_null()) << "QEMU's MIGRATION event said postcopy-active\n" << out;
    const json& done = events.back();
    EXPECT_EQ(done["event"], "done") << out;
    EXPECT_TRUE(done.value("postcopy", false)) << out;
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
    std::cerr << "postcopy actions:\n" << joined(a);
    expect_guest_on_destination();
}

TEST_F(MigrateDirtyGuest, SuspendThrottlesThenPausesTheGuestAndCompletes) {
    PolicyRun run;
    ASSERT_NO_FATAL_FAILURE(run_to_completion("suspend", run));
    const auto& [out, events, a] = run;
    const auto throttle1 = index_of(a, "throttle step 10 -> 20 %");
    const auto throttle2 = index_of(a, "throttle step 20 -> 40 %");
    const auto paused = index_of(a, "paused the guest on the source");
    EXPECT_LT(throttle1, throttle2) << joined(a);
    EXPECT_LT(throttle2, paused) << joined(a);
    ASSERT_LT(paused, a.size()) << "the last resort\n" << joined(a);
    // QEMU's auto-converge did throttle the vCPUs before the pause.
    int throttled = 0;
    for (const auto& e : events)
        if (e.value("event", "") == "ram")
            throttled = std::max(throttled, e.value("cpu_throttle", 0));
    EXPECT_GT(throttled, 0) << out;
    const json& done = events.back();
    EXPECT_EQ(done["event"], "done") << out;
    EXPECT_FALSE(done.value("postcopy", true));
    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";
    // The report marks the pause from the stop to the destination's start.
    const json& tl = done["timeline"];
    EXPECT_EQ(tl.value("pause_reason", ""), "suspend") << tl.dump();
    EXPECT_GT(tl.value("resumed_at", 0.0), tl.value("paused_at", 0.0)) << tl.dump();
    // Paused, the guest waits for what it dirtied in the last pass (up to
    // 16 MiB at 8 MiB/s): longer than a live switchover.
    const auto deadline = Clock::now() + 30s;
    while (!dst->first_heartbeat() && Clock::now() < deadline) std::this_thread::sleep_for(50ms);
    ASSERT_TRUE(src->last_heartbeat() && dst->first_heartbeat()) << dst->console();
    const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(*dst->first_heartbeat() -
                                                                           *src->last_heartbeat());
    std::cerr << "suspend actions (vCPUs throttled up to " << throttled
              << " %), guest heartbeat gap " << gap.count() << " ms, report pause "
              << tl.value("resumed_at", 0.0) - tl.value("paused_at", 0.0) << " s:\n"
              << joined(a);
    EXPECT_GT(gap, 1s);
    expect_guest_on_destination();
}

TEST_F(MigratePolicy, ParallelZstdChannelsOnBothSides) {
    // Same QEMU 7.2 + TCG defect with multifd: in the CI rehearsal of stop 15
    // the destination guest's kernel oopsed (NULL dereference in its timer
    // tick) right after a multifd+zstd switchover, twice in a row; QEMU 10.0
    // passes (docs/known-issues.md).
    SKIP_ON_QEMU7_TCG(*src, "multifd");
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
