#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "jobs/claims.hpp"
#include "jobs/guest.hpp"
#include "jobs/journal.hpp"
#include "jobs/names.hpp"
#include "jobs/undo.hpp"
#include "jobs_test_util.hpp"

using namespace blockmig;
using namespace blockmig::jobs;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

class JournalTest : public ::testing::Test {
  protected:
    void TearDown() override { fs::remove_all(dir); }
    Job sample() {
        Job job;
        job.guest = {"/run/vm1.qmp", 4242, "6f1c2a5e-0000-4000-8000-000000000001", "vm1"};
        job.finish = Finish::no_pivot;
        JobDisk d;
        d.disk = "virtio-disk10";
        d.prefix = "bmx-virtio-disk10";
        d.block_job = d.prefix + "-mirror";
        d.source_node = "disk10-fmt";
        d.target = "/pool/vm1.qcow2";
        d.top_node = d.prefix + "-fmt";
        d.chain = {{"protocol_node", d.prefix + "-proto"}};
        d.phase = "copying";
        job.disks.push_back(d);
        return job;
    }
    static json read(const fs::path& p) {
        std::ifstream in(p);
        return json::parse(in, nullptr, false);
    }
    fs::path dir = jobs_test::temp_dir("journal") / "state";
};

TEST_F(JournalTest, StateDirIsPrivateAndJournalIs0600) {
    auto j = Journal::create(dir, sample());
    ASSERT_TRUE(j) << j.error().message;
    struct stat st {};
    ASSERT_EQ(stat(dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    ASSERT_EQ(stat(j->path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_TRUE(is_job_id(j->job().id));
    EXPECT_EQ(j->path(), dir / (j->job().id + ".json"));
}

TEST_F(JournalTest, IntentIsOnDiskBeforeIntendReturns) {
    auto j = Journal::create(dir, sample());
    ASSERT_TRUE(j);
    auto seq = j->intend(
        {.disk = "virtio-disk10", .effect = EffectKind::volume_created, .name = "/pool/vm1.qcow2"});
    ASSERT_TRUE(seq);
    // What another process would read right now (the writer is "killed" here).
    auto on_disk = job_from_json(read(j->path()));
    ASSERT_TRUE(on_disk) << on_disk.error().message;
    ASSERT_EQ(on_disk->records.size(), 1u);
    EXPECT_EQ(on_disk->records[0].state, RecordState::intent);
    EXPECT_EQ(on_disk->records[0].name, "/pool/vm1.qcow2");
    // "done" is staged: a crash now leaves the intent, which recover
    // treats like done; the next write (or flush) carries it.
    ASSERT_TRUE(j->outcome(*seq, RecordState::done));
    on_disk = job_from_json(read(j->path()));
    EXPECT_EQ(on_disk->records[0].state, RecordState::intent);
    ASSERT_TRUE(j->flush());
    on_disk = job_from_json(read(j->path()));
    EXPECT_EQ(on_disk->records[0].state, RecordState::done);
    EXPECT_FALSE(fs::exists(j->path().string() + ".tmp"));
    // Any other outcome is durable at once.
    auto second =
        j->intend({.disk = "virtio-disk10", .effect = EffectKind::node_added, .name = "n"});
    ASSERT_TRUE(second);
    ASSERT_TRUE(j->outcome(*second, RecordState::failed, "refused"));
    on_disk = job_from_json(read(j->path()));
    EXPECT_EQ(on_disk->records[1].state, RecordState::failed);
}

TEST_F(JournalTest, StagedFactsReachTheDiskWithTheNextIntentOrAtTheEnd) {
    fs::path path;
    {
        auto j = Journal::create(dir, sample());
        ASSERT_TRUE(j);
        path = j->path();
        j->stage([](Job& job) { job.disks[0].phase = "attached"; });
        EXPECT_NE(job_from_json(read(path))->disks[0].phase, "attached");
        ASSERT_TRUE(j->intend({.disk = "virtio-disk10", .effect = EffectKind::mirror_started}));
        EXPECT_EQ(job_from_json(read(path))->disks[0].phase, "attached");
        j->stage([](Job& job) { job.disks[0].phase = "ready"; });
    }  // the owner ends normally: what was staged is written
    EXPECT_EQ(job_from_json(read(path))->disks[0].phase, "ready");
}

TEST_F(JournalTest, JobRoundTripsThroughJson) {
    Job job = sample();
    job.id = "0123abcd";
    job.records.push_back({.seq = 3,
                           .disk = "virtio-disk10",
                           .effect = EffectKind::daemon_started,
                           .name = "/run/s",
                           .pid = 77,
                           .socket = "/run/s",
                           .state = RecordState::left_behind,
                           .note = "left behind: x"});
    auto back = job_from_json(to_json(job));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(to_json(*back), to_json(job));
    EXPECT_EQ(back->finish, Finish::no_pivot);
    EXPECT_EQ(back->guest.uuid, job.guest.uuid);
}

TEST_F(JournalTest, AGuestTheJobPausedNeedsRecoveryUntilResumed) {
    Job job = sample();
    job.id = "0123abce";
    for (auto& d : job.disks) d.phase = "done";
    ASSERT_FALSE(job.needs_recovery());
    job.guest_paused = true;
    EXPECT_TRUE(job.needs_recovery()) << "only recover would resume the guest";
    auto back = job_from_json(to_json(job));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_TRUE(back->guest_paused);
    job.guest_paused = false;
    EXPECT_FALSE(to_json(job).contains("guest_paused"));
    EXPECT_FALSE(job_from_json(to_json(job))->guest_paused);
}

TEST_F(JournalTest, EveryUndoStepKindRoundTrips) {
    for (auto kind : {UndoKind::remove_volume, UndoKind::object_del, UndoKind::blockdev_del,
                      UndoKind::stop_daemon, UndoKind::cancel_job, UndoKind::release_lun}) {
        UndoStep s{.kind = kind, .disk = "d", .name = "n", .pid = 9, .socket = "/s", .seq = 4};
        auto back = undo_step_from_json(to_json(s));
        ASSERT_TRUE(back);
        EXPECT_EQ(*back, s);
    }
    EXPECT_FALSE(undo_step_from_json(json{{"kind", "rm_rf"}}));
}

TEST_F(JournalTest, UndoPlanIsNewestFirstAndSkipsWhatWasUndone) {
    auto j = Journal::create(dir, sample());
    ASSERT_TRUE(j);
    auto add = [&](EffectKind k, std::string name, RecordState s) {
        auto seq = j->intend({.disk = "virtio-disk10", .effect = k, .name = name});
        ASSERT_TRUE(seq);
        if (s != RecordState::intent) {
            ASSERT_TRUE(j->outcome(*seq, s));
        }
    };
    add(EffectKind::volume_created, "/pool/v", RecordState::done);
    add(EffectKind::node_added, "p", RecordState::done);
    add(EffectKind::node_added, "f", RecordState::failed);
    add(EffectKind::mirror_started, "job", RecordState::intent);
    auto plan = undo_plan(j->job(), "virtio-disk10");
    ASSERT_TRUE(plan);
    ASSERT_EQ(plan->size(), 3u);
    EXPECT_EQ((*plan)[0].kind, UndoKind::cancel_job);  // intent only: maybe started
    EXPECT_EQ((*plan)[1].kind, UndoKind::blockdev_del);
    EXPECT_EQ((*plan)[1].name, "p");
    EXPECT_EQ((*plan)[2].kind, UndoKind::remove_volume);
}

TEST_F(JournalTest, ALunWhoseCreateNeverAnsweredIsReleasedNotZeroed) {
    auto j = Journal::create(dir, sample());
    ASSERT_TRUE(j);
    auto add = [&](std::string disk, std::string name, RecordState s) {
        auto seq = j->intend({.disk = disk, .effect = EffectKind::volume_created, .name = name});
        ASSERT_TRUE(seq);
        if (s != RecordState::intent) {
            ASSERT_TRUE(j->outcome(*seq, s));
        }
    };
    add("a", "iscsi://10.0.0.9:3260/iqn.2024-01.test:t/1", RecordState::intent);
    add("b", "iscsi://10.0.0.9:3260/iqn.2024-01.test:t/2", RecordState::done);
    add("c", "/pool/v", RecordState::intent);
    auto kind_of = [&](const std::string& disk) {
        auto plan = undo_plan(j->job(), disk);
        EXPECT_TRUE(plan);
        EXPECT_EQ(plan ? plan->size() : 0u, 1u);
        return plan && !plan->empty() ? plan->front().kind : UndoKind::blockdev_del;
    };
    // Nothing after an unanswered claim ran: nothing of blockmig's is on that LUN.
    EXPECT_EQ(kind_of("a"), UndoKind::release_lun);
    // A LUN blockmig took (all zero) and may have written is zeroed back to unused.
    EXPECT_EQ(kind_of("b"), UndoKind::remove_volume);
    // A file whose create never answered may exist: it is deleted.
    EXPECT_EQ(kind_of("c"), UndoKind::remove_volume);
    UndoEnv env;
    auto plan = undo_plan(j->job(), "a");
    ASSERT_TRUE(plan);
    auto report = run_undo(*j, *plan, env);
    ASSERT_TRUE(report);
    EXPECT_TRUE(report->left_behind.empty());
    auto held = claimed_by_journals(dir);
    ASSERT_TRUE(held);
    EXPECT_FALSE(held->contains("iscsi://10.0.0.9:3260/iqn.2024-01.test:t/1"))
        << "its record ended: the claim is released";
    EXPECT_TRUE(held->contains("iscsi://10.0.0.9:3260/iqn.2024-01.test:t/2"));
}

TEST_F(JournalTest, NoBlindUndoOnceCompleteWasSent) {
    auto j = Journal::create(dir, sample());
    ASSERT_TRUE(j);
    ASSERT_TRUE(j->intend(
        {.disk = "virtio-disk10", .effect = EffectKind::volume_created, .name = "/pool/v"}));
    ASSERT_TRUE(
        j->intend({.disk = "virtio-disk10", .effect = EffectKind::complete_sent, .name = "job"}));
    auto plan = undo_plan(j->job(), "virtio-disk10");
    ASSERT_FALSE(plan);
    EXPECT_EQ(plan.error().code, ErrorCode::invalid_state);
}

TEST_F(JournalTest, OwnerHoldsTheJobAndAbandonedJobsAreListed) {
    std::string id;
    {
        auto j = Journal::create(dir, sample());
        ASSERT_TRUE(j);
        id = j->job().id;
        auto again = Journal::open(dir, id);
        ASSERT_FALSE(again);  // the owner runs it
        EXPECT_EQ(again.error().code, ErrorCode::invalid_state);
        auto listed = list_jobs(dir);
        ASSERT_TRUE(listed);
        ASSERT_EQ(listed->size(), 1u);
        EXPECT_TRUE((*listed)[0].running);
    }  // the owner "dies": its lock goes with it
    auto listed = list_jobs(dir);
    ASSERT_TRUE(listed);
    EXPECT_FALSE((*listed)[0].running);
    EXPECT_TRUE(Journal::open(dir, id));
}

TEST_F(JournalTest, NewJobOnTheGuestIsRefusedWithTheRecoverCommand) {
    std::string id;
    {
        auto j = Journal::create(dir, sample());
        ASSERT_TRUE(j);
        id = j->job().id;
    }
    GuestIdentity same{"/run/vm1.qmp", -1, "", ""};
    auto r = refuse_if_unrecovered(dir, same);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("blockmig recover --state-dir " + dir.string() + " " + id),
              std::string::npos)
        << r.error().message;
    // Same guest by uuid under another socket path.
    GuestIdentity by_uuid{"/other.qmp", -1, "6f1c2a5e-0000-4000-8000-000000000001", ""};
    EXPECT_FALSE(refuse_if_unrecovered(dir, by_uuid));
    EXPECT_TRUE(refuse_if_unrecovered(dir, GuestIdentity{"/run/vm2.qmp", -1, "", ""}));
}

TEST(GuestIdentityTest, APidIsTheSameQemuOnlyWithTheSameStartTime) {
    GuestIdentity dead{"/run/a.qmp", 4242, "", ""};
    dead.started = 1000;
    GuestIdentity reused{"/run/b.qmp", 4242, "", ""};
    reused.started = 9000;  // another QEMU that got the dead one's pid
    EXPECT_FALSE(dead.same_guest(reused));
    GuestIdentity second_monitor{"/run/b.qmp", 4242, "", ""};
    second_monitor.started = 1000;
    EXPECT_TRUE(dead.same_guest(second_monitor));
    GuestIdentity old_journal{"/run/a2.qmp", 4242, "", ""};  // written before `started`
    EXPECT_TRUE(old_journal.same_guest(reused));
}

TEST(GuestIdentityTest, StartTimeIsReadFromProc) {
    EXPECT_GT(process_start_time(getpid()), 0u);
    EXPECT_EQ(process_start_time(getpid()), process_start_time(getpid()));
    EXPECT_EQ(process_start_time(-1), 0u);
}

TEST_F(JournalTest, TheGuestsStartTimeIsJournaled) {
    Job job = sample();
    job.guest.pid = 4242;
    job.guest.started = 123456;
    std::string id;
    {
        auto j = Journal::create(dir, job);
        ASSERT_TRUE(j);
        id = j->job().id;
    }  // its owner is gone: the journal can be opened again
    auto again = Journal::open(dir, id);
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ(again->job().guest.started, 123456u);
}

TEST_F(JournalTest, RemovedJobLeavesNothing) {
    auto j = Journal::create(dir, sample());
    ASSERT_TRUE(j);
    ASSERT_TRUE(j->remove());
    EXPECT_TRUE(fs::is_empty(dir));
}

TEST_F(JournalTest, DefaultStateDirFollowsTheEnvironment) {
    setenv("BLOCKMIG_STATE_DIR", "/tmp/elsewhere", 1);
    EXPECT_EQ(default_state_dir(), "/tmp/elsewhere");
    unsetenv("BLOCKMIG_STATE_DIR");
    EXPECT_EQ(default_state_dir(), "/var/lib/blockmig/jobs");
}

}  // namespace
