// Whole run_move() calls through the job engine, with nothing real behind
// them: a fake QEMU behind the scripted QMP transport, an in-memory pool
// (wrapped in the fault pool) handed in through MoveOptions::pool_opener, a
// fake clock and a temporary journal directory. What a user would check:
// where the disk is, what exists in the pool and in QEMU, what the journal
// says, and what the error names.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <set>

#include "blockmig/move.hpp"
#include "jobs/journal.hpp"
#include "jobs_test_util.hpp"
#include "pools/pools.hpp"

using namespace blockmig;
using namespace std::chrono_literals;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

using jobs_test::k_mib;
const std::string k_volume = "disk0-fmt.qcow2";  // named after the source's file, /f/disk0-fmt
const std::string k_url = "mem:" + k_volume;

class MoveRunTest;

// The pool `move` gets from the opener: the test's fault pool over its
// MemPool, described to (fake) QEMU as a file node, and watching that the
// journal holds the volume's intent before the volume is created.
class TestPool final : public pools::PoolWrapper {
  public:
    TestPool(pools::Pool& pool, std::function<void(const std::string&)> on_create)
        : PoolWrapper(std::make_unique<jobs_test::BorrowedPool>(pool)),
          m_on_create(std::move(on_create)) {}

    Result<pools::VolumeInfo> create(std::string_view name, std::uint64_t size,
                                     pools::ImageFormat format) override {
        m_on_create(url_of(name));
        return PoolWrapper::create(name, size, format);
    }
    // MemPool lives in this process; the scripted QEMU only reads the names.
    Result<pools::BlockdevChain> describe_for_qemu(std::string_view name,
                                                   const pools::QemuNodeOptions& options) override {
        pools::BlockdevChain chain;
        chain.protocol_node = options.node_prefix + "-proto";
        chain.format_node = options.node_prefix + "-fmt";
        chain.protocol = {{"driver", "file"},
                          {"filename", fmt::format("/mem/{}", name)},
                          {"node-name", chain.protocol_node}};
        chain.format = {
            {"driver", "qcow2"}, {"node-name", chain.format_node}, {"file", chain.protocol_node}};
        return chain;
    }

  private:
    std::function<void(const std::string&)> m_on_create;
};

class MoveRunTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(guest.client);
        guest.with_disk0();
        guest.script->set_responder([this](const json& m, auto& s) { respond(m, s); });
    }
    void TearDown() override {
        EXPECT_TRUE(guest.script->failures().empty()) << guest.script->failures().front();
        fs::remove_all(dir);
    }

    // What `move` opens: "testpool" (a POOL spec) and mem:NAME volumes.
    PoolOpener opener() {
        auto watch = [this](const std::string& url) { observe("volume_created", url); };
        return {.open_pool =
                    [this, watch](std::string_view spec) -> Result<std::unique_ptr<pools::Pool>> {
                    if (spec != "testpool")
                        return fail(ErrorCode::not_found, fmt::format("no pool {}", spec));
                    return std::make_unique<TestPool>(*pool.faults, watch);
                },
                .resolve_volume = [this, watch](std::string_view spec) -> Result<pools::VolumeRef> {
                    if (!spec.starts_with("mem:"))
                        return fail(ErrorCode::not_found, fmt::format("no volume {}", spec));
                    return pools::VolumeRef{std::make_unique<TestPool>(*pool.faults, watch),
                                            std::string(spec.substr(4))};
                }};
    }

    Result<MoveReport> move() { return move(options()); }
    Result<MoveReport> move(const MoveOptions& options) {
        auto progress = make_null_progress();
        return run_move(*guest.client, options, *progress, cancel);
    }
    MoveOptions options() {
        MoveOptions options;
        options.disks = {{"disk0", ""}};
        options.default_target = "testpool";
        options.qmp_address = "/run/vm1.qmp";
        options.jobs_dir = dir / "jobs";
        options.state_dir = dir / "run";
        options.qmp_timeout = 2s;
        options.pool_opener = opener();
        options.clock = &clock;
        options.sample_interval = 1ms;  // a quiet tick costs no real time
        return options;
    }
    // `blockmig pivot [--abort]` on what `move --no-pivot` left.
    Result<MoveReport> pivot(bool abort) {
        PivotOptions options{.abort = abort,
                             .state_dir = dir / "run",
                             .qmp_address = "/run/vm1.qmp",
                             .jobs_dir = dir / "jobs",
                             .qmp_timeout = 2s,
                             .pool_opener = opener(),
                             .clock = &clock};
        auto progress = make_null_progress();
        return run_pivot(*guest.client, options, *progress);
    }

    // The QEMU side: the few queries FakeQemu leaves out, a record of the
    // journal as it was on disk when each side effect arrived, then FakeQemu.
    void respond(const json& m, qmp::testing::Script& s) {
        const std::string cmd = m.value("execute", "");
        const json args = m.value("arguments", json::object());
        auto reply = [&](json value) { s.push({{"return", value}, {"id", m["id"]}}); };
        if (cmd == "query-uuid") return reply({{"UUID", "6f1c2a4e-0000-4000-8000-000000000001"}});
        if (cmd == "query-name") return reply({{"name", "vm1"}});
        if (cmd == "query-qmp-schema") return reply(json::array());
        if (cmd == "blockdev-add") observe("node_added", args.value("node-name", ""));
        if (cmd == "blockdev-mirror") observe("mirror_started", args.value("job-id", ""));
        if (cmd == "block-job-complete") observe("complete_sent", args.value("device", ""));
        if (cmd == "query-block-jobs" && on_query_jobs) on_query_jobs();
        guest.qemu->respond(m, s);
    }

    // "<effect> <name>: <state of its record in the journal on disk>".
    void observe(const std::string& effect, const std::string& name) {
        std::string state = "not journaled";
        auto listed = jobs::list_jobs(dir / "jobs");
        if (listed && listed->size() == 1)
            for (const auto& r : listed->front().job.records)
                if (std::string(jobs::to_string(r.effect)) == effect && r.name == name)
                    state = std::string(jobs::to_string(r.state));
        std::lock_guard lock(mutex);
        observed.push_back(effect + " " + name + ": " + state);
    }

    // The mirror job fails on its target once it has started.
    void fail_job_with(const std::string& error) {
        on_query_jobs = [this, error] {
            std::lock_guard lock(guest.qemu->mutex);
            for (auto& [id, j] : guest.qemu->jobs)
                if (j.status == "running") {
                    j.status = "concluded";
                    j.error = error;
                }
        };
        guest.qemu->mirror_status = "running";
    }

    std::size_t journals() {
        auto listed = jobs::list_jobs(dir / "jobs");
        EXPECT_TRUE(listed) << listed.error().message;
        return listed ? listed->size() : 0;
    }
    std::size_t volumes() { return pool.mem->list_volumes()->size(); }
    std::set<std::string> original_nodes() { return {"disk0-fmt", "disk0-proto"}; }

    jobs_test::FakeGuest guest;
    FakeClock clock;
    fs::path dir = jobs_test::temp_dir("move-run");
    jobs_test::FaultedPool pool{64 * k_mib};
    std::function<void()> on_query_jobs;
    std::atomic<bool> cancel{false};
    std::mutex mutex;
    std::vector<std::string> observed;
};

TEST_F(MoveRunTest, PivotsOntoANewVolumeJournalingEachIntentBeforeItsEffect) {
    auto r = move();
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->disks.size(), 1u);
    EXPECT_TRUE(r->disks[0].pivoted);
    EXPECT_EQ(r->disks[0].target, k_url);
    // The guest's disk is now the target's format node, in a volume of the pool.
    const std::string top = r->disks[0].target_node;
    EXPECT_EQ(guest.qemu->devices["disk0"], top);
    EXPECT_TRUE(guest.qemu->got("block-job-complete"));
    auto info = pool.mem->stat(k_volume);
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(info->virtual_size, 1 * k_mib);
    // No job, no journal: nothing is left for `blockmig recover`.
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(journals(), 0u);
    // Each side effect found its intent already on disk, in this order.
    const std::string prefix = top.substr(0, top.size() - 4);
    std::lock_guard lock(mutex);
    ASSERT_EQ(observed.size(), 5u);
    EXPECT_EQ(observed[0], "volume_created " + k_url + ": intent");
    EXPECT_EQ(observed[1], "node_added " + prefix + "-proto: intent");
    EXPECT_EQ(observed[2], "node_added " + prefix + "-fmt: intent");
    EXPECT_TRUE(observed[3].starts_with("mirror_started ")) << observed[3];
    EXPECT_TRUE(observed[3].ends_with(": intent")) << observed[3];
    EXPECT_TRUE(observed[4].starts_with("complete_sent ")) << observed[4];
    EXPECT_TRUE(observed[4].ends_with(": intent")) << observed[4];
}

TEST_F(MoveRunTest, FullPoolFailsTheCreateCleanlyBeforeAnyQemuSideEffect) {
    // The capacity check passed; the pool filled up before the create.
    pool.use_faults({.create_error = ErrorCode::no_space});
    auto r = move();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::no_space);
    EXPECT_NE(r.error().message.find("disk0: create target volume"), std::string::npos)
        << r.error().message;
    EXPECT_EQ(volumes(), 0u);
    EXPECT_FALSE(guest.qemu->got("blockdev-add"));
    EXPECT_FALSE(guest.qemu->got("blockdev-mirror"));
    EXPECT_EQ(guest.qemu->nodes, original_nodes());
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, MirrorFailingAfterTheCreateDeletesTheVolumeAndTheNodes) {
    fail_job_with("No space left on device");
    auto r = move();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("No space left on device"), std::string::npos)
        << r.error().message;
    EXPECT_TRUE(guest.qemu->got("blockdev-mirror"));  // it did get that far
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_EQ(guest.qemu->nodes, original_nodes());
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(volumes(), 0u);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, DeleteRefusedDuringRollbackIsNamedAndTheJournalKept) {
    pool.use_faults({.remove_error = ErrorCode::io_error});
    fail_job_with("Input/output error");
    auto r = move();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("Input/output error"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("left behind: " + k_url), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("blockmig recover"), std::string::npos) << r.error().message;
    // The nodes went; the volume could not, and the journal says so.
    EXPECT_EQ(guest.qemu->nodes, original_nodes());
    EXPECT_TRUE(pool.mem->stat(k_volume));
    auto listed = jobs::list_jobs(dir / "jobs");
    ASSERT_TRUE(listed) << listed.error().message;
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_TRUE(listed->front().job.needs_recovery());
    // What `blockmig jobs` shows: only the volume is left.
    EXPECT_EQ(jobs::what_exists(listed->front().job, "disk0"),
              std::vector<std::string>{"volume " + k_url + " (left behind)"});
}

TEST_F(MoveRunTest, StalledCopyRollsBackAtTheStallTimeoutOnTheFakeClock) {
    guest.qemu->mirror_status = "running";
    // Stuck on its target: busy, offset not moving. Each look costs one
    // second of the fake clock while the job runs.
    on_query_jobs = [this] {
        std::lock_guard lock(guest.qemu->mutex);
        for (auto& [id, j] : guest.qemu->jobs) {
            j.busy = true;
            j.offset = 10;
            if (j.status == "running") clock.advance(1s);
        }
    };
    const auto fake_start = clock.now();
    const auto real_start = std::chrono::steady_clock::now();
    auto r = move();
    const auto fake_took = clock.now() - fake_start;
    const auto real_took = std::chrono::steady_clock::now() - real_start;
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::timeout);
    EXPECT_NE(r.error().message.find("no progress for 15 s writing to " + k_url), std::string::npos)
        << r.error().message;
    // The default stall timeout (15 s) plus a bounded rollback, on the fake
    // clock; in real time no watchdog slept.
    EXPECT_GE(fake_took, 15s);
    EXPECT_LE(fake_took, 20s);
    EXPECT_LT(real_took, 3s);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_EQ(guest.qemu->nodes, original_nodes());
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(volumes(), 0u);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, TargetQemuCannotOpenDeletesTheCreatedVolume) {
    guest.qemu->refuse_blockdev_add = true;
    auto r = move();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("Could not open image"), std::string::npos)
        << r.error().message;
    EXPECT_FALSE(guest.qemu->got("blockdev-mirror"));
    EXPECT_EQ(guest.qemu->nodes, original_nodes());
    EXPECT_EQ(volumes(), 0u);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, InterruptWhileCopyingRollsBackToTheSource) {
    guest.qemu->mirror_status = "running";
    cancel = true;  // Ctrl-C as soon as the copy runs
    auto r = move();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::cancelled);
    EXPECT_TRUE(guest.qemu->got("blockdev-mirror"));
    EXPECT_TRUE(guest.qemu->got("block-job-cancel"));
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_EQ(guest.qemu->nodes, original_nodes());
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(volumes(), 0u);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, PivotWhoseReplyIsLostFinishesForward) {
    guest.qemu->lose_complete_reply = true;
    auto o = options();
    o.qmp_timeout = 300ms;  // the lost reply's wait, in real time
    auto r = move(o);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(r->disks[0].pivoted);
    EXPECT_EQ(guest.qemu->devices["disk0"], r->disks[0].target_node);
    EXPECT_TRUE(pool.mem->stat(k_volume));  // the guest's disk now: never deleted
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, PivotThatQemuFailsLeavesTheGuestOnItsSourceAndNoVolume) {
    guest.qemu->complete_fails = true;
    auto r = move();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("stays on its source"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("Input/output error"), std::string::npos) << r.error().message;
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(volumes(), 0u);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, NoPivotLeavesAJournaledReadyJobThatPivotFinishes) {
    auto o = options();
    o.no_pivot = true;
    auto r = move(o);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(r->disks[0].pivoted);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    ASSERT_EQ(guest.qemu->jobs.size(), 1u);
    EXPECT_EQ(journals(), 1u);
    auto p = pivot(false);
    ASSERT_TRUE(p) << p.error().message;
    ASSERT_EQ(p->disks.size(), 1u);
    EXPECT_TRUE(p->disks[0].pivoted);
    EXPECT_NE(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_TRUE(pool.mem->stat(k_volume));
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MoveRunTest, NoPivotThenPivotAbortDeletesTheVolumeThroughTheSeam) {
    auto o = options();
    o.no_pivot = true;
    ASSERT_TRUE(move(o));
    auto p = pivot(true);
    ASSERT_TRUE(p) << p.error().message;
    EXPECT_FALSE(p->disks[0].pivoted);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_EQ(guest.qemu->nodes, original_nodes());
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(volumes(), 0u);
    EXPECT_EQ(journals(), 0u);
}

}  // namespace
