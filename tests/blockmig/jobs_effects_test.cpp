// A live job's side effects go through the journal; its rollback is the
// same undo executor a recovery replays.
#include <gtest/gtest.h>

#include "jobs/effects.hpp"
#include "jobs/names.hpp"
#include "jobs/recover.hpp"
#include "jobs_test_util.hpp"

using namespace blockmig;
using namespace blockmig::jobs;
using namespace std::chrono_literals;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

class EffectsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(guest.client);
        guest.qemu->devices["disk0"] = "disk0-fmt";
        guest.qemu->nodes = {"disk0-fmt"};
        env.client = guest.client.get();
        env.clock = &clock;
        env.step_timeout = 300ms;
        env.resolve = [this](const std::string& url) -> Result<pools::VolumeRef> {
            return pools::VolumeRef{std::make_unique<jobs_test::BorrowedPool>(*pool),
                                    url.substr(4)};
        };
        Job job;
        job.guest.qmp = "/run/vm1.qmp";
        auto j = Journal::create(dir, job);
        ASSERT_TRUE(j);
        journal.emplace(std::move(*j));
        names = names_for(journal->job().id, "disk0");
        ASSERT_TRUE(journal->update([&](Job& job) {
            JobDisk d;
            d.disk = "disk0";
            d.prefix = names.prefix;
            d.block_job = names.block_job;
            d.source_node = "disk0-fmt";
            d.top_node = names.prefix + "-fmt";
            d.target = "mem:t.qcow2";
            d.phase = "planned";
            job.disks.push_back(d);
        }));
        effects.emplace(*journal, env);
    }
    void TearDown() override {
        effects.reset();
        journal.reset();
        fs::remove_all(dir.parent_path());
    }
    // Creates, attaches and starts the mirror the way a move does.
    void start() {
        ASSERT_TRUE(
            effects->create_volume("disk0", *pool, "t.qcow2", 1 << 20, pools::ImageFormat::qcow2));
        ASSERT_TRUE(effects->add_node(
            "disk0", {{"driver", "file"}, {"node-name", names.prefix + "-proto"}}));
        ASSERT_TRUE(effects->add_node("disk0", {{"driver", "qcow2"},
                                                {"node-name", names.prefix + "-fmt"},
                                                {"file", names.prefix + "-proto"}}));
        qmp::MirrorOptions m;
        m.job_id = names.block_job;
        m.device = "disk0-fmt";
        m.target = names.prefix + "-fmt";
        guest.qemu->respond_mirror = true;
        ASSERT_TRUE(effects->start_mirror("disk0", m));
        ASSERT_TRUE(effects->set_phase("disk0", "ready"));
    }

    jobs_test::FakeGuest guest;
    std::unique_ptr<pools::Pool> pool = pools::make_mem_pool(64 << 20);
    FakeClock clock;
    UndoEnv env;
    DiskNames names;
    fs::path dir = jobs_test::temp_dir("effects") / "state";
    std::optional<Journal> journal;
    std::optional<Effects> effects;
};

TEST_F(EffectsTest, LiveRollbackUndoesEveryEffectThroughTheJournal) {
    start();
    auto report = effects->rollback("disk0");
    ASSERT_TRUE(report) << report.error().message;
    EXPECT_TRUE(report->left_behind.empty());
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_EQ(guest.qemu->nodes, std::set<std::string>{"disk0-fmt"});
    EXPECT_FALSE(pool->stat("t.qcow2"));
    EXPECT_FALSE(journal->job().needs_recovery());
    EXPECT_EQ(journal->job().disks[0].phase, "rolled_back");
}

TEST_F(EffectsTest, RefusedNodeIsNotUndoneAndStopsNothingElse) {
    guest.qemu->refuse_blockdev_add = true;
    ASSERT_TRUE(
        effects->create_volume("disk0", *pool, "t.qcow2", 1 << 20, pools::ImageFormat::qcow2));
    EXPECT_FALSE(effects->add_node("disk0", {{"driver", "file"}, {"node-name", "x"}}));
    auto plan = undo_plan(journal->job(), "disk0");
    ASSERT_TRUE(plan);
    ASSERT_EQ(plan->size(), 1u);  // only the volume: the node was refused
    EXPECT_EQ((*plan)[0].kind, UndoKind::remove_volume);
}

TEST_F(EffectsTest, CompleteWithLostReplyIsUnknownAndBlocksBlindUndo) {
    start();
    guest.qemu->lose_complete_reply = true;
    std::string error;
    auto reply = effects->send_complete("disk0", names.block_job, &error);
    ASSERT_TRUE(reply);
    EXPECT_EQ(*reply, CompleteReply::unknown);
    auto undone = effects->rollback("disk0");
    ASSERT_FALSE(undone);  // never the pre-pivot undo after complete was sent
    EXPECT_TRUE(pool->stat("t.qcow2"));
    // The truth from QMP: the device is on the target, so it goes forward.
    auto out = recover_disk(*journal, "disk0", env, Intent::as_journaled);
    ASSERT_TRUE(out) << out.error().message;
    EXPECT_EQ(out->direction, Direction::forward);
    EXPECT_EQ(guest.qemu->devices["disk0"], names.prefix + "-fmt");
    EXPECT_TRUE(pool->stat("t.qcow2"));
    EXPECT_EQ(journal->job().disks[0].phase, "done");
}

TEST_F(EffectsTest, RefusedCompleteAllowsTheOrdinaryRollback) {
    start();
    guest.qemu->jobs[names.block_job].status = "running";  // not READY: QEMU refuses
    std::string error;
    auto reply = effects->send_complete("disk0", names.block_job, &error);
    ASSERT_TRUE(reply);
    EXPECT_EQ(*reply, CompleteReply::refused);
    auto report = effects->rollback("disk0");
    ASSERT_TRUE(report) << report.error().message;
    EXPECT_FALSE(pool->stat("t.qcow2"));
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
}

TEST_F(EffectsTest, CopyOnlyDetachKeepsTheVolume) {
    start();
    guest.qemu->jobs.clear();  // the soft cancel ended the job
    auto report = effects->detach_keep_volume("disk0");
    ASSERT_TRUE(report);
    EXPECT_TRUE(pool->stat("t.qcow2"));
    EXPECT_EQ(guest.qemu->nodes, std::set<std::string>{"disk0-fmt"});
    EXPECT_FALSE(journal->job().needs_recovery());
}

}  // namespace
