// One disk's mirror (blockmig/mirror/) against a fake QEMU behind the
// scripted QMP transport, an in-memory pool and a fake clock: every way it
// ends (pivot, pivot with the reply lost, a pivot QEMU fails, soft cancel,
// abort from each phase), the watchdogs, and waiting on events.
#include "mirror/mirror.hpp"

#include <gtest/gtest.h>

#include <thread>

#include "jobs/effects.hpp"
#include "jobs/journal.hpp"
#include "jobs/names.hpp"
#include "jobs_test_util.hpp"
#include "mirror/group.hpp"

using namespace blockmig;
using namespace std::chrono_literals;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

class MirrorTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(guest.client);
        guest.with_disk0();
        jobs::Job job;
        job.guest.qmp = "/run/vm1.qmp";
        auto j = jobs::Journal::create(dir, job);
        ASSERT_TRUE(j) << j.error().message;
        journal.emplace(std::move(*j));
        names = jobs::names_for(journal->job().id, "disk0");
        ASSERT_TRUE(journal->update([&](jobs::Job& job) {
            jobs::JobDisk d;
            d.disk = "disk0";
            d.source_node = "disk0-fmt";
            d.source_protocol_nodes = {"disk0-proto"};
            d.target = "mem:vm1.qcow2";
            job.disks.push_back(d);
        }));
        env.client = guest.client.get();
        env.clock = &clock;
        env.step_timeout = 300ms;
        env.resolve = [this](const std::string& url) -> Result<pools::VolumeRef> {
            return pools::VolumeRef{std::make_unique<jobs_test::BorrowedPool>(*pool),
                                    url.substr(4)};
        };
        effects.emplace(*journal, env);
        mirror.emplace(
            *guest.client, *effects,
            mirror::MirrorSpec{
                .disk = "disk0",
                .source_node = "disk0-fmt",
                .device_names = {"disk0"},
                .names = names,
                .stall_timeout = 5s},
            clock);
    }
    void TearDown() override {
        EXPECT_TRUE(guest.script->failures().empty()) << guest.script->failures().front();
        fs::remove_all(dir.parent_path());
    }

    // The volume as `move` creates it, and its nodes as pools/ would describe them.
    mirror::Target volume_target() {
        EXPECT_TRUE(effects->create_volume("disk0", *pool, "vm1.qcow2", 1 << 20,
                                           pools::ImageFormat::qcow2));
        pools::BlockdevChain chain;
        chain.protocol_node = names.prefix + "-proto";
        chain.format_node = names.prefix + "-fmt";
        chain.protocol = {{"driver", "file"}, {"node-name", chain.protocol_node}};
        chain.format = {
            {"driver", "qcow2"}, {"node-name", chain.format_node}, {"file", chain.protocol_node}};
        return mirror::Target::volume(chain, "mem:vm1.qcow2");
    }

    void until_ready(mirror::CopyPolicy policy = {.tick = 5ms}) {
        mirror::Group group(*guest.client, clock);
        group.add(*mirror);
        ASSERT_TRUE(mirror->attach(volume_target()));
        ASSERT_TRUE(mirror->start(qmp::CopyMode::background, 0));
        auto r = group.wait_ready(policy, nullptr);
        ASSERT_TRUE(r) << r.error().message;
        ASSERT_EQ(mirror->state(), mirror::MirrorState::ready);
    }

    std::string phase() { return journal->job().disk("disk0")->phase; }
    bool volume_exists() { return pool->stat("vm1.qcow2").has_value(); }
    bool node_exists(const std::string& n) { return guest.qemu->nodes.contains(n); }

    jobs_test::FakeGuest guest;
    std::unique_ptr<pools::Pool> pool = pools::make_mem_pool(64 << 20);
    FakeClock clock;
    jobs::UndoEnv env;
    jobs::DiskNames names;
    fs::path dir = jobs_test::temp_dir("mirror") / "state";
    std::optional<jobs::Journal> journal;
    std::optional<jobs::Effects> effects;
    std::optional<mirror::Mirror> mirror;
};

TEST_F(MirrorTest, PivotPutsTheDeviceOnTheTargetAndReleasesTheSource) {
    until_ready();
    EXPECT_EQ(phase(), "ready");
    auto r = mirror->pivot(dir);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(mirror->state(), mirror::MirrorState::pivoted);
    EXPECT_EQ(guest.qemu->devices["disk0"], names.prefix + "-fmt");
    EXPECT_EQ(phase(), "done");
    EXPECT_TRUE(volume_exists());
    EXPECT_FALSE(node_exists("disk0-proto"));  // the old source node was released
}

TEST_F(MirrorTest, PivotWhoseReplyIsLostIsFinishedForwardNeverUndone) {
    until_ready();
    guest.qemu->lose_complete_reply = true;
    auto r = mirror->pivot(dir);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(mirror->state(), mirror::MirrorState::pivoted);
    EXPECT_EQ(guest.qemu->devices["disk0"], names.prefix + "-fmt");
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(node_exists(names.prefix + "-fmt"));
    EXPECT_EQ(phase(), "done");
}

TEST_F(MirrorTest, PivotThatQemuFailsRollsBackToTheSource) {
    until_ready();
    guest.qemu->complete_fails = true;
    auto r = mirror->pivot(dir);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::io_error);
    EXPECT_NE(r.error().message.find("stays on its source"), std::string::npos)
        << r.error().message;
    EXPECT_EQ(mirror->state(), mirror::MirrorState::rolled_back);
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    EXPECT_FALSE(volume_exists());
    EXPECT_FALSE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(journal->job().needs_recovery());
}

TEST_F(MirrorTest, RefusedCompleteLeavesTheMirrorReadyForAnOrdinaryAbort) {
    until_ready();
    guest.qemu->jobs[names.block_job].status = "running";  // QEMU: "cannot be completed"
    auto r = mirror->pivot(dir);
    ASSERT_FALSE(r);
    EXPECT_EQ(mirror->state(), mirror::MirrorState::ready);
    auto undone = mirror->abort();
    ASSERT_TRUE(undone) << undone.error().message;
    EXPECT_EQ(mirror->state(), mirror::MirrorState::rolled_back);
    EXPECT_FALSE(volume_exists());
    EXPECT_TRUE(guest.qemu->jobs.empty());
}

TEST_F(MirrorTest, CompleteAcceptedButJobNeverEndingDeletesNothingAndNamesRecover) {
    until_ready();
    // QEMU accepts block-job-complete but the job stays "running" (a
    // completion stuck on its target); every query costs a second of the
    // fake clock, so the pivot's deadline passes without real waiting.
    auto& q = *guest.qemu;
    guest.script->set_responder([&](const json& m, auto& s) {
        const std::string cmd = m.value("execute", "");
        if (cmd == "block-job-complete") {
            {
                std::lock_guard lock(q.mutex);
                q.jobs[names.block_job].status = "running";
            }
            s.push({{"return", json::object()}, {"id", m["id"]}});
            return;
        }
        if (cmd == "query-block-jobs") clock.advance(1s);
        q.respond(m, s);
    });
    auto r = mirror->pivot(dir, 5s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_state);
    EXPECT_NE(r.error().message.find("blockmig recover"), std::string::npos) << r.error().message;
    EXPECT_EQ(mirror->state(), mirror::MirrorState::completing);
    // After complete was sent no blind undo: only recover decides.
    auto undone = mirror->abort();
    ASSERT_FALSE(undone);
    EXPECT_EQ(undone.error().code, ErrorCode::invalid_state);
    EXPECT_TRUE(volume_exists());
    EXPECT_TRUE(node_exists(names.prefix + "-fmt"));
    EXPECT_TRUE(journal->job().needs_recovery());
}

TEST_F(MirrorTest, SoftCancelKeepsTheGuestOnItsSourceAndDetachKeepsTheVolume) {
    until_ready();
    ASSERT_TRUE(mirror->soft_cancel());
    EXPECT_EQ(mirror->state(), mirror::MirrorState::synced);
    EXPECT_TRUE(guest.qemu->got("block-job-cancel"));
    EXPECT_FALSE(guest.qemu->got("block-job-cancel", "\"force\":true"));  // soft: final sync
    EXPECT_EQ(guest.qemu->devices["disk0"], "disk0-fmt");
    auto d = mirror->detach();
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ(mirror->state(), mirror::MirrorState::detached);
    EXPECT_FALSE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(node_exists(names.prefix + "-proto"));
    EXPECT_TRUE(volume_exists());
    EXPECT_EQ(phase(), "copied");
}

TEST_F(MirrorTest, AbortWhileCopyingCancelsAndRemovesEverything) {
    guest.qemu->mirror_status = "running";
    ASSERT_TRUE(mirror->attach(volume_target()));
    ASSERT_TRUE(mirror->start(qmp::CopyMode::background, 0));
    EXPECT_EQ(phase(), "copying");
    auto r = mirror->abort();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(r->left_behind.empty());
    EXPECT_TRUE(guest.qemu->jobs.empty());
    EXPECT_FALSE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(volume_exists());
    EXPECT_EQ(phase(), "rolled_back");
}

TEST_F(MirrorTest, AbortAfterAFailedStartRemovesWhatWasAdded) {
    ASSERT_TRUE(mirror->attach(volume_target()));
    guest.qemu->respond_mirror = false;
    EXPECT_FALSE(mirror->start(qmp::CopyMode::background, 0));
    EXPECT_EQ(mirror->state(), mirror::MirrorState::attached);
    auto r = mirror->abort();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(node_exists(names.prefix + "-fmt"));
    EXPECT_FALSE(node_exists(names.prefix + "-proto"));
    EXPECT_FALSE(volume_exists());
}

TEST_F(MirrorTest, NbdTargetIsAClientNodeToTheExport) {
    auto target = mirror::Target::nbd(qmp::SocketAddress::inet("10.0.0.6", 10809), "disk0");
    EXPECT_EQ(target.url, "nbd://10.0.0.6:10809/disk0");
    ASSERT_TRUE(mirror->attach(target));
    EXPECT_EQ(mirror->top_node(), names.prefix + "-nbd");
    EXPECT_TRUE(guest.qemu->got("blockdev-add", "\"driver\":\"nbd\""));
    EXPECT_TRUE(guest.qemu->got("blockdev-add", "\"export\":\"disk0\""));
    EXPECT_TRUE(guest.qemu->got("blockdev-add", "\"host\":\"10.0.0.6\""));
    ASSERT_TRUE(mirror->start(qmp::CopyMode::write_blocking, 0));
    EXPECT_TRUE(guest.qemu->got("blockdev-mirror", "\"target\":\"" + names.prefix + "-nbd\""));
    // No hop: nothing for a recovery to re-point after a pivot.
    EXPECT_EQ(journal->job().disk("disk0")->hop_node, "");
    auto r = mirror->abort();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(node_exists(names.prefix + "-nbd"));
}

TEST_F(MirrorTest, GroupWakesOnTheReadyEventNotOnItsTick) {
    guest.qemu->mirror_status = "running";
    mirror::Group group(*guest.client, clock);
    group.add(*mirror);
    ASSERT_TRUE(mirror->attach(volume_target()));
    ASSERT_TRUE(mirror->start(qmp::CopyMode::background, 0));
    std::thread qemu([&] {
        std::this_thread::sleep_for(200ms);
        {
            std::lock_guard lock(guest.qemu->mutex);
            guest.qemu->jobs[names.block_job].status = "ready";
        }
        guest.script->push_event("BLOCK_JOB_READY", {{"device", names.block_job},
                                                     {"type", "mirror"},
                                                     {"len", 100},
                                                     {"offset", 100},
                                                     {"speed", 0}});
    });
    const auto started = std::chrono::steady_clock::now();
    auto r = group.wait_ready({.tick = 30s}, nullptr);
    const auto took = std::chrono::steady_clock::now() - started;
    qemu.join();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_LT(took, 5s);
    EXPECT_EQ(mirror->state(), mirror::MirrorState::ready);
}

TEST_F(MirrorTest, GroupFailsAStalledCopyNamingTheTarget) {
    guest.qemu->mirror_status = "running";
    mirror::Group group(*guest.client, clock);
    group.add(*mirror);
    ASSERT_TRUE(mirror->attach(volume_target()));
    ASSERT_TRUE(mirror->start(qmp::CopyMode::background, 0));
    {
        std::lock_guard lock(guest.qemu->mutex);
        auto& j = guest.qemu->jobs[names.block_job];
        j.busy = true;  // stuck on its target: busy, offset not moving
        j.offset = 10;
    }
    // Time passes one second per sample, on the fake clock.
    auto r = group.wait_ready({.stall_timeout = 5s, .tick = 1ms}, nullptr,
                              [&](const mirror::Mirror&) { clock.advance(1s); });
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::timeout);
    EXPECT_NE(r.error().message.find("mem:vm1.qcow2"), std::string::npos) << r.error().message;
}

// QEMU declares READY only when nothing is dirty and nothing in flight at
// one instant; under a steady writer a copy can hover a few chunks short of
// it for ever. Where the switch is free (block-job-change), the group
// switches it after hover_window; where it would copy the disk again, only
// after converge_window.
class MirrorHover : public MirrorTest {
  protected:
    // Runs the group until its first copy-mode notice (or `give_up` of fake
    // time); returns the fake time it took, or nullopt without a notice.
    std::optional<std::chrono::nanoseconds> until_switch(bool in_place,
                                                         std::chrono::nanoseconds give_up) {
        start_hovering();
        const auto start = clock.now();
        std::atomic<bool> stop{false};
        std::optional<std::chrono::nanoseconds> took;
        auto on_sample = [&](const mirror::Mirror&) {
            if (clock.now() - start > give_up) stop = true;
            hover_on();
        };
        auto on_notice = [&](const mirror::Mirror&, const mirror::Notice& n) {
            EXPECT_EQ(n.kind, "copy-mode");
            EXPECT_EQ(n.fields.value("how", ""), in_place ? "in-place" : "restart") << n.fields;
            took = clock.now() - start;
            stop = true;
        };
        mirror::CopyPolicy policy{.stall_timeout = 60s, .switch_in_place = in_place, .tick = 1ms};
        auto r = group->wait_ready(policy, &stop, on_sample, on_notice);
        EXPECT_FALSE(r);
        return took;
    }

    void start_hovering() {
        guest.qemu->mirror_status = "running";
        group.emplace(*guest.client, clock);
        group->add(*mirror);
        EXPECT_TRUE(mirror->attach(volume_target()));
        EXPECT_TRUE(mirror->start(qmp::CopyMode::background, 0));
    }
    // A quarter second passes; the copy moves on, 128-384 KiB short of the
    // end, never READY.
    void hover_on() {
        clock.advance(250ms);
        std::lock_guard lock(guest.qemu->mutex);
        auto& j = guest.qemu->jobs[names.block_job];
        j.len = (100u << 20) + (++samples << 20);
        j.offset = j.len - ((samples % 3 + 1) << 17);
        j.busy = true;
    }

    std::optional<mirror::Group> group;
    std::uint64_t samples = 0;
};

TEST_F(MirrorHover, GoOnWhenNearlyDoneEndsTheWaitAfterTwoSecondsWithoutASwitch) {
    start_hovering();
    const auto start = clock.now();
    std::vector<std::string> notices;
    auto r = group->wait_ready(
        {.stall_timeout = 60s, .go_on_when_nearly_done = true, .tick = 1ms}, nullptr,
        [&](const mirror::Mirror&) { hover_on(); },
        [&](const mirror::Mirror&, const mirror::Notice& n) { notices.push_back(n.kind); });
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_GE(clock.now() - start, 2s);
    EXPECT_LT(clock.now() - start, 3s);
    EXPECT_EQ(notices, std::vector<std::string>{"nearly-ready"});
    EXPECT_EQ(mirror->state(), mirror::MirrorState::copying) << "not READY: only nearly";
    EXPECT_FALSE(mirror->switched_to_write_blocking());
    EXPECT_FALSE(guest.qemu->got("block-job-cancel")) << "never restarted";
}

TEST_F(MirrorHover, GoOnWhenNearlyDoneWaitsForACopyThatIsStillFarFromDone) {
    start_hovering();
    std::atomic<bool> stop{false};
    const auto start = clock.now();
    auto r = group->wait_ready(
        {.stall_timeout = 60s, .go_on_when_nearly_done = true, .tick = 1ms}, &stop,
        [&](const mirror::Mirror&) {
            clock.advance(250ms);
            if (clock.now() - start > 20s) stop = true;
            std::lock_guard lock(guest.qemu->mutex);
            auto& j = guest.qemu->jobs[names.block_job];
            j.len = 1u << 30;  // 1 GiB, 1 MiB more each quarter second
            j.offset = std::min<std::uint64_t>(j.offset + (1u << 20), j.len - (64u << 20));
            j.busy = true;
        });
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::cancelled) << "waited until told to stop";
}

TEST_F(MirrorHover, InPlaceSwitchesACopyHoveringShortOfReadyAfterTwoSeconds) {
    auto took = until_switch(true, 20s);
    ASSERT_TRUE(took) << "never switched";
    EXPECT_GE(*took, 2s);
    EXPECT_LT(*took, 3s);
    EXPECT_TRUE(guest.qemu->got("block-job-change", "write-blocking"));
}

TEST_F(MirrorHover, ARestartWaitsTheWholeConvergeWindow) {
    auto took = until_switch(false, 20s);
    ASSERT_TRUE(took) << "never switched";
    EXPECT_GE(*took, 6s) << "a restart copies everything again: not after a short hover";
    EXPECT_LT(*took, 7s);
    EXPECT_FALSE(guest.qemu->got("block-job-change"));
}

TEST_F(MirrorTest, AMirrorStartedWriteBlockingCountsAsSwitchedAndCountsTheGuestsWrites) {
    guest.qemu->written = 1000;
    ASSERT_TRUE(mirror->attach(volume_target()));
    ASSERT_TRUE(mirror->start(qmp::CopyMode::write_blocking, 0));
    EXPECT_TRUE(mirror->switched_to_write_blocking());
    EXPECT_FALSE(mirror->switched_in_place());
    guest.qemu->written = 5096;
    auto jobs = qmp::query_block_jobs(*guest.client);
    ASSERT_TRUE(jobs);
    ASSERT_TRUE(mirror->observe(*jobs, clock.now()));
    ASSERT_TRUE(mirror->soft_cancel(5s));
    EXPECT_EQ(mirror->guest_bytes_forwarded(), 4096u);
}

TEST_F(MirrorTest, GroupStopsWhenCancelled) {
    guest.qemu->mirror_status = "running";
    mirror::Group group(*guest.client, clock);
    group.add(*mirror);
    ASSERT_TRUE(mirror->attach(volume_target()));
    ASSERT_TRUE(mirror->start(qmp::CopyMode::background, 0));
    std::atomic<bool> cancel{true};
    auto r = group.wait_ready({.tick = 1ms}, &cancel);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::cancelled);
}

TEST_F(MirrorTest, WaitInSyncFailsAtOnceWhenTheJobFailedAfterReady) {
    until_ready();
    {
        std::lock_guard lock(guest.qemu->mutex);
        auto& j = guest.qemu->jobs[names.block_job];
        j.status = "concluded";
        j.error = "Input/output error";
    }
    auto r = mirror->wait_in_sync(60s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::io_error);
    EXPECT_NE(r.error().message.find("Input/output error"), std::string::npos);
}

}  // namespace
