// Recovery from every phase of a move, against a fake QEMU behind the
// scripted QMP transport, an in-memory pool and a fake clock.
#include <gtest/gtest.h>

#include <condition_variable>
#include <fstream>

#include "jobs/journal.hpp"
#include "jobs/names.hpp"
#include "jobs/recover.hpp"
#include "jobs/undo.hpp"
#include "jobs_test_util.hpp"

using namespace blockmig;
using namespace blockmig::jobs;
using namespace std::chrono_literals;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

// A pool whose remove() blocks until released (an iSCSI target that died).
class HangingPool final : public pools::PoolWrapper {
  public:
    HangingPool(std::unique_ptr<pools::Pool> p, std::shared_ptr<std::atomic<bool>> hang)
        : PoolWrapper(std::move(p)), m_hang(std::move(hang)) {}
    Result<void> remove(std::string_view name) override {
        while (m_hang->load()) std::this_thread::sleep_for(5ms);
        return PoolWrapper::remove(name);
    }

  private:
    std::shared_ptr<std::atomic<bool>> m_hang;
};

class RecoverTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(guest.client);
        ASSERT_TRUE(pool->create("vm1.qcow2", 1 << 20, pools::ImageFormat::qcow2));
        names = names_for("0123abcd", "disk0");
        auto& q = *guest.qemu;
        q.devices["disk0"] = "disk0-fmt";
        q.nodes = {"disk0-fmt", "disk0-proto"};
        env.client = guest.client.get();
        env.clock = &clock;
        env.step_timeout = 300ms;
        env.resolve = [this](const std::string& url) -> Result<pools::VolumeRef> {
            if (hang->load())
                return pools::VolumeRef{std::make_unique<HangingPool>(
                                            std::make_unique<jobs_test::BorrowedPool>(*pool), hang),
                                        url.substr(4)};
            return pools::VolumeRef{std::make_unique<jobs_test::BorrowedPool>(*pool),
                                    url.substr(4)};
        };
    }
    void TearDown() override {
        hang->store(false);
        EXPECT_TRUE(guest.script->failures().empty()) << guest.script->failures().front();
        fs::remove_all(dir.parent_path());
    }

    // A journal as a killed `move` leaves it, with QEMU in the matching state.
    // `hop`: the target sits behind a storage daemon.
    std::string make_job(std::string phase, Finish finish, const std::string& job_status,
                         bool hop = false) {
        Job job;
        job.guest.qmp = "/run/vm1.qmp";
        job.finish = finish;
        JobDisk d;
        d.disk = "disk0";
        d.prefix = names.prefix;
        d.block_job = names.block_job;
        d.source_node = "disk0-fmt";
        d.source_protocol_nodes = {"disk0-proto"};
        d.source = "/v/vm1.qcow2";
        d.target = "mem:vm1.qcow2";
        d.target_format = "qcow2";
        d.top_node = names.prefix + "-fmt";
        d.hop_node = hop ? names.hop_node : "";
        d.chain = {{"protocol_node", names.prefix + "-proto"},
                   {"protocol", {{"driver", "file"}, {"node-name", names.prefix + "-proto"}}},
                   {"format",
                    {{"driver", "qcow2"},
                     {"node-name", names.prefix + "-fmt"},
                     {"file", names.prefix + "-proto"}}},
                   {"secret_ids", json::array()}};
        d.phase = phase;
        job.disks.push_back(d);
        auto journal = Journal::create(dir, job);
        EXPECT_TRUE(journal);
        auto done = [&](EffectKind k, std::string name, std::string socket = {}) {
            auto seq =
                journal->intend({.disk = "disk0", .effect = k, .name = name, .socket = socket});
            EXPECT_TRUE(seq);
            EXPECT_TRUE(journal->outcome(*seq, RecordState::done));
        };
        auto& q = *guest.qemu;
        done(EffectKind::volume_created, "mem:vm1.qcow2");
        if (hop) {
            done(EffectKind::daemon_started, hop_socket.string(), hop_socket.string());
            done(EffectKind::node_added, names.hop_node);
            q.nodes.insert(names.hop_node);
        } else {
            done(EffectKind::node_added, names.prefix + "-proto");
            q.nodes.insert(names.prefix + "-proto");
        }
        done(EffectKind::node_added, names.prefix + "-fmt");
        q.nodes.insert(names.prefix + "-fmt");
        done(EffectKind::mirror_started, names.block_job);
        if (!job_status.empty())
            q.jobs[names.block_job] = {job_status, "", "disk0", names.prefix + "-fmt"};
        return journal->job().id;
    }

    // "Kills" the owner after block-job-complete was sent (reply lost).
    void complete_sent(const std::string& id) {
        auto journal = Journal::open(dir, id);
        ASSERT_TRUE(journal);
        ASSERT_TRUE(journal->intend(
            {.disk = "disk0", .effect = EffectKind::complete_sent, .name = names.block_job}));
    }

    RecoveryReport recover(const std::string& id, Intent intent = Intent::as_journaled) {
        auto journal = Journal::open(dir, id);
        EXPECT_TRUE(journal) << journal.error().message;
        auto report = recover_job(*journal, env, intent, dir);
        EXPECT_TRUE(report) << report.error().message;
        return *report;
    }

    // The daemon's log where the hop writes it, beside `hop_socket`, which
    // moves to a real directory first.
    fs::path write_hop_log() {
        hop_socket = dir.parent_path() / "hop" / "nbd.sock";
        fs::create_directories(hop_socket.parent_path());
        const fs::path log = hop_socket.parent_path() / "qemu-storage-daemon.log";
        std::ofstream(log) << "qemu-storage-daemon: a line worth keeping after a failure\n";
        return log;
    }

    bool volume_exists() { return pool->stat("vm1.qcow2").has_value(); }
    bool journal_exists(const std::string& id) { return fs::exists(dir / (id + ".json")); }
    bool node_exists(const std::string& n) { return guest.qemu->nodes.contains(n); }

    jobs_test::FakeGuest guest;
    std::unique_ptr<pools::Pool> pool = pools::make_mem_pool(64 << 20);
    std::shared_ptr<std::atomic<bool>> hang = std::make_shared<std::atomic<bool>>(false);
    FakeClock clock;
    UndoEnv env;
    DiskNames names;
    fs::path dir = jobs_test::temp_dir("recover") / "state";
    fs::path hop_socket = "/nonexistent/hop.sock";  // no daemon is ever found there
};

TEST_F(RecoverTest, KilledWhileCopyingUndoesEverything) {
    auto id = make_job("copying", Finish::pivot, "running");
    auto report = recover(id);
    ASSERT_EQ(report.disks.size(), 1u);
    EXPECT_EQ(report.disks[0].direction, Direction::undo);
    EXPECT_TRUE(report.journal_removed);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_FALSE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(node_exists(names.prefix + "-proto"));
    EXPECT_TRUE(node_exists("disk0-fmt"));
    EXPECT_FALSE(volume_exists());
    EXPECT_FALSE(journal_exists(id));
    EXPECT_FALSE(guest.qemu->got("block-job-complete"));
}

TEST_F(RecoverTest, KilledWhileCopyingUndoesEvenIfTheMirrorIsReadyByNow) {
    // The journal never saw READY, so the job's own intent (pivot) is not
    // taken up: the safe direction for "copying" is back to the source.
    auto id = make_job("copying", Finish::pivot, "ready");
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::undo);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_FALSE(volume_exists());
}

TEST_F(RecoverTest, KilledAfterCreatingTheVolumeOnlyDeletesIt) {
    Job job;
    job.guest.qmp = "/run/vm1.qmp";
    JobDisk d;
    d.disk = "disk0";
    d.source_node = "disk0-fmt";
    d.phase = "planned";
    job.disks.push_back(d);
    std::string id;
    {
        auto journal = Journal::create(dir, job);
        ASSERT_TRUE(journal);
        // Intent written, then killed before the outcome: maybe created.
        ASSERT_TRUE(journal->intend(
            {.disk = "disk0", .effect = EffectKind::volume_created, .name = "mem:vm1.qcow2"}));
        id = journal->job().id;
    }
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::undo);
    EXPECT_FALSE(volume_exists());
    EXPECT_TRUE(report.journal_removed);
}

TEST_F(RecoverTest, ReadyAndMeantToPivotIsFinishedForward) {
    auto id = make_job("ready", Finish::pivot, "ready");
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::forward);
    EXPECT_TRUE(report.journal_removed);
    EXPECT_EQ(guest.qemu->devices["disk0"], names.prefix + "-fmt");
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(node_exists("disk0-fmt"));  // old source released
    EXPECT_FALSE(node_exists("disk0-proto"));
}

TEST_F(RecoverTest, NoPivotJobIsAbortedByRecover) {
    auto id = make_job("ready", Finish::no_pivot, "ready");
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::undo);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_FALSE(volume_exists());
    EXPECT_FALSE(guest.qemu->got("block-job-complete"));
}

TEST_F(RecoverTest, NoPivotJobIsFinishedByPivot) {
    auto id = make_job("ready", Finish::no_pivot, "ready");
    auto report = recover(id, Intent::pivot);
    EXPECT_EQ(report.disks[0].direction, Direction::forward);
    EXPECT_EQ(guest.qemu->devices["disk0"], names.prefix + "-fmt");
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(report.journal_removed);
}

TEST_F(RecoverTest, PivotRefusesAMirrorThatIsNotReadyAndTouchesNothing) {
    auto id = make_job("copying", Finish::no_pivot, "running");
    auto report = recover(id, Intent::pivot);
    EXPECT_EQ(report.disks[0].direction, Direction::wait);
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(report.journal_removed);
}

TEST_F(RecoverTest, CompleteSentReplyLostDeviceOnTargetIsFinishedNeverUndone) {
    auto id = make_job("ready", Finish::pivot, "");
    complete_sent(id);
    guest.qemu->devices["disk0"] = names.prefix + "-fmt";  // QEMU did switch
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].phase, "complete_sent");
    EXPECT_EQ(report.disks[0].direction, Direction::forward);
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(guest.qemu->got("block-job-cancel"));
    EXPECT_FALSE(guest.qemu->got("blockdev-del", names.prefix));
    EXPECT_TRUE(report.journal_removed);
}

TEST_F(RecoverTest, CompleteSentButQemuKeptTheSourceIsUndone) {
    auto id = make_job("ready", Finish::pivot, "concluded");
    guest.qemu->jobs[names.block_job].error = "Input/output error";
    complete_sent(id);
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::undo);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_FALSE(volume_exists());
    EXPECT_TRUE(report.journal_removed);
}

TEST_F(RecoverTest, CompleteSentWhileStillReadyIsCompletedAgain) {
    auto id = make_job("ready", Finish::pivot, "ready");
    complete_sent(id);
    auto report = recover(id, Intent::abort);  // even --abort may not cancel now
    EXPECT_EQ(report.disks[0].direction, Direction::wait);
    EXPECT_TRUE(volume_exists());
    EXPECT_FALSE(guest.qemu->got("block-job-cancel"));
    report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::forward);
    EXPECT_EQ(guest.qemu->devices["disk0"], names.prefix + "-fmt");
    EXPECT_TRUE(volume_exists());
}

TEST_F(RecoverTest, QmpUnreachableDeletesNothingAndSaysWhatToRun) {
    auto id = make_job("copying", Finish::pivot, "running");
    env.client = nullptr;
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::wait);
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(journal_exists(id));
    EXPECT_NE(report.next_step.find("blockmig recover --state-dir " + dir.string() + " " + id),
              std::string::npos);
    EXPECT_TRUE(guest.qemu->commands.empty());
}

TEST_F(RecoverTest, CompleteReplyLostDuringRecoveryIsFinishedByTheNextRun) {
    auto id = make_job("ready", Finish::pivot, "ready");
    guest.qemu->lose_complete_reply = true;
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::wait);  // no answer: nothing undone
    EXPECT_TRUE(volume_exists());
    EXPECT_FALSE(report.journal_removed);
    report = recover(id);
    EXPECT_EQ(report.disks[0].phase, "complete_sent");
    EXPECT_EQ(report.disks[0].direction, Direction::forward);
    EXPECT_EQ(guest.qemu->devices["disk0"], names.prefix + "-fmt");
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(report.journal_removed);
}

TEST_F(RecoverTest, PivotedThroughTheHopEndsOnADirectNode) {
    auto id = make_job("ready", Finish::pivot, "", true);
    complete_sent(id);
    guest.qemu->devices["disk0"] = names.prefix + "-fmt";
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::forward);
    EXPECT_TRUE(guest.qemu->got("blockdev-add", names.prefix + "-proto"));
    EXPECT_TRUE(guest.qemu->got("blockdev-reopen", names.prefix + "-fmt"));
    EXPECT_FALSE(node_exists(names.hop_node));
    EXPECT_TRUE(node_exists(names.prefix + "-proto"));
    EXPECT_TRUE(report.journal_removed);
}

TEST_F(RecoverTest, PivotedThroughTheHopRemovesTheDaemonLog) {
    const fs::path log = write_hop_log();
    auto id = make_job("ready", Finish::pivot, "", true);
    complete_sent(id);
    guest.qemu->devices["disk0"] = names.prefix + "-fmt";
    auto report = recover(id);
    ASSERT_EQ(report.disks[0].direction, Direction::forward);
    ASSERT_TRUE(report.disks[0].settled);
    EXPECT_FALSE(fs::exists(log)) << "the guest runs on its target: the hop's log has no use";
}

TEST_F(RecoverTest, UndoneHopKeepsTheDaemonLog) {
    const fs::path log = write_hop_log();
    auto id = make_job("copying", Finish::pivot, "running", true);
    auto report = recover(id);
    ASSERT_EQ(report.disks[0].direction, Direction::undo);
    ASSERT_TRUE(report.disks[0].settled);
    EXPECT_TRUE(fs::exists(log)) << "the log of a hop that did not end on the target is evidence";
}

TEST_F(RecoverTest, DeadPoolLeavesTheVolumeBehindWithinTheDeadlineAndNamesIt) {
    auto id = make_job("copying", Finish::pivot, "running");
    hang->store(true);
    const auto t0 = std::chrono::steady_clock::now();
    auto report = recover(id);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    ASSERT_EQ(report.disks[0].left_behind.size(), 1u);
    EXPECT_NE(report.disks[0].left_behind[0].find("left behind: mem:vm1.qcow2"), std::string::npos);
    EXPECT_FALSE(report.journal_removed);
    auto listed = list_jobs(dir);
    ASSERT_TRUE(listed);
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_TRUE((*listed)[0].job.needs_recovery());
    // The server is back: the next recover finishes the undo.
    hang->store(false);
    std::this_thread::sleep_for(50ms);  // the abandoned worker may finish first
    report = recover(id);
    EXPECT_TRUE(report.journal_removed);
    EXPECT_FALSE(volume_exists());
}

TEST_F(RecoverTest, JobThatNeverEndsIsLeftBehindOnTheFakeClock) {
    auto id = make_job("copying", Finish::pivot, "running");
    guest.qemu->cancel_hangs = true;
    env.step_timeout = 300ms;
    auto report = recover(id);
    ASSERT_FALSE(report.disks[0].left_behind.empty());
    EXPECT_NE(report.disks[0].left_behind[0].find("block job " + names.block_job),
              std::string::npos);
    // The journal stays so that the next run retries.
    EXPECT_FALSE(report.journal_removed);
}

TEST_F(RecoverTest, UndoNeverDeletesANodeAGuestDeviceUses) {
    UndoStep step{.kind = UndoKind::blockdev_del, .disk = "disk0", .name = "disk0-fmt"};
    auto out = run_undo_step(step, env);
    EXPECT_FALSE(out.done);
    EXPECT_TRUE(node_exists("disk0-fmt"));
    EXPECT_FALSE(guest.qemu->got("blockdev-del"));
}

}  // namespace

namespace {

void set_guest_pid(const fs::path& dir, const std::string& id, int pid) {
    auto journal = Journal::open(dir, id);
    ASSERT_TRUE(journal);
    ASSERT_TRUE(journal->update([&](Job& j) { j.guest.pid = pid; }));
}

}  // namespace

TEST_F(RecoverTest, QemuRestartedAfterCompleteSentDeletesNothing) {
    // The guest may have run on the target before QEMU was restarted from
    // its old command line (on the source): the target may hold the newest
    // data, so recover must not treat "on the source, job gone" as a
    // refused pivot.
    auto id = make_job("ready", Finish::pivot, "");
    complete_sent(id);
    set_guest_pid(dir, id, 1111);
    guest.script->set_peer_pid(2222);
    guest.qemu->nodes.erase(names.prefix + "-fmt");
    guest.qemu->nodes.erase(names.prefix + "-proto");
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::wait);
    EXPECT_NE(report.disks[0].reason.find("restarted"), std::string::npos)
        << report.disks[0].reason;
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(journal_exists(id));
}

TEST_F(RecoverTest, SameQemuAfterCompleteSentOnTheSourceIsUndone) {
    // The control: the journal's QEMU still answers, the job is gone and
    // the device on its source: QEMU refused the pivot, the undo is safe.
    auto id = make_job("ready", Finish::pivot, "");
    complete_sent(id);
    set_guest_pid(dir, id, 1111);
    guest.script->set_peer_pid(1111);
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::undo);
    EXPECT_FALSE(volume_exists());
}

TEST_F(RecoverTest, QemuRestartedWhileCopyingIsUndone) {
    // Before block-job-complete the target never was the guest's disk.
    auto id = make_job("copying", Finish::pivot, "");
    set_guest_pid(dir, id, 1111);
    guest.script->set_peer_pid(2222);
    guest.qemu->nodes.erase(names.prefix + "-fmt");
    guest.qemu->nodes.erase(names.prefix + "-proto");
    auto report = recover(id);
    EXPECT_EQ(report.disks[0].direction, Direction::undo);
    EXPECT_FALSE(volume_exists());
    EXPECT_FALSE(journal_exists(id));
}
