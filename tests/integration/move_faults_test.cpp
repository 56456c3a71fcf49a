// Storage that dies at the worst moment of a live move, with a real guest
// writing and diskstamp verifying every block afterwards:
// - the NFS server freezes (SIGSTOP) or dies (SIGKILL) while --verify has the
//   guest paused: the move fails within --verify-timeout plus a bounded
//   rollback, the guest runs again and its source holds every block;
// - tgtd is SIGKILLed mid-copy: the move ends within its stall timeout plus a
//   bounded rollback, the guest stays on its source, and the LUN it could not
//   clean is named ("left behind: ..."); the dead target is never mistaken
//   for a guest that writes faster than the copy.
#include <signal.h>
#include <unistd.h>

#include <iostream>

#include "frozen.hpp"
#include "move_test_util.hpp"
#include "qmp_events.hpp"

using namespace blockmig::lab;
using namespace move_test;

namespace {

using Seconds = std::chrono::duration<double>;

std::vector<std::string> error_lines(const std::string& out) {
    std::vector<std::string> errors;
    for (const auto& line : lines_of(out))
        if (line.find("blockmig: error: ") != std::string::npos) errors.push_back(line);
    return errors;
}

bool guest_running(Guest& guest) {
    return qmp_return(guest, R"({"execute":"query-status"})").value("running", false);
}

// Over the `window` after `since` heartbeats keep arriving (100 ms apart)
// with no gap of a second: the vCPU runs and the guest lives.
bool heartbeat_steady(Guest& guest, Clock::time_point since, std::chrono::milliseconds window) {
    std::this_thread::sleep_for(window - (Clock::now() - since));  // the observation window
    return guest.heartbeats_since(since) >= static_cast<std::size_t>(window / 400ms) &&
           guest.max_heartbeat_gap(since) < 1000ms;
}

enum class Fault { frozen, killed };

std::string fault_name(const ::testing::TestParamInfo<Fault>& info) {
    return info.param == Fault::frozen ? "Frozen" : "Killed";
}

class MoveVerifyNfsDies : public ::testing::TestWithParam<Fault> {};

// The guest is paused for --verify (QMP announces STOP) and at that moment
// the NFS server holding the target stops answering. Everything the move
// still does (drain, compare, cancel, deleting the volume) hits the dead
// server; none of it may keep the guest paused past --verify-timeout by more
// than the rollback's own bound, or leave it paused at all.
TEST_P(MoveVerifyNfsDies, GuestRunsAgainAndSourceVerifies) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    constexpr auto k_verify_timeout = 20s;
    // The pause ends at --verify-timeout (plus `cont` and scheduling slack);
    // the rollback after it deletes the target on the dead server with a
    // 15 s deadline, the rest is quick once the storage daemon is killed.
    constexpr auto k_pause_bound = k_verify_timeout + 10s;
    constexpr auto k_bound = k_verify_timeout + 45s;
    TempDir dir("faults-verify");
    const std::string name = "vf" + std::to_string(getpid()) + ".qcow2";
    const fs::path source = dir / name;
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    NfsServer nfs;
    const fs::path watch_socket = dir / "watch.qmp";
    Guest guest(GuestConfig{.disks = {{"disk0", source, "qcow2"}},
                            .extra_args = QmpEvents::monitor_args(watch_socket),
                            .stamp_blocks = k_blocks});
    ASSERT_TRUE(guest.wait_for_ack("vda", 1, 120s)) << guest.console();
    QmpEvents events(watch_socket);
    const auto nodes_before = node_names(guest);
    const std::string file_before = device_file(guest, "disk0");
    const std::string qmp = guest.qmp_socket().string();

    BackgroundCli move({"move", "--qmp", qmp, "--disk", "disk0", "--to", nfs.url(), "--verify",
                        "--verify-timeout", std::to_string(k_verify_timeout.count()), "--state-dir",
                        (dir / "jobs").string(), "--timeout", "300"},
                       qmp);
    auto paused = events.wait_for("STOP", move.started(), 180s);
    ASSERT_TRUE(paused) << "the guest was never paused for --verify; events: " << events.names()
                        << "; " << (move.wait(0ms) ? move.result().out : "still running");
    std::optional<Frozen> frozen;
    if (GetParam() == Fault::frozen)
        frozen.emplace(nfs.pid());
    else
        ::kill(nfs.pid(), SIGKILL);
    const auto died = Clock::now();
    std::cout << "[ fault ] NFS server " << (frozen ? "frozen" : "killed") << " "
              << Seconds(died - *paused).count() << " s after the guest paused\n";

    ASSERT_TRUE(move.wait(k_bound + 60s))
        << "blockmig still runs " << Seconds(k_bound + 60s).count()
        << " s after the NFS server died";
    const auto took = move.finished() - died;
    const CommandResult& r = move.result();
    std::cout << "[ fault ] move failed " << Seconds(took).count() << " s after the server died\n"
              << r.out;
    EXPECT_LE(took, k_bound) << r.out;
    EXPECT_EQ(r.status, 1) << r.out;
    const auto errors = error_lines(r.out);
    ASSERT_EQ(errors.size(), 1u) << r.out;
    EXPECT_EQ(r.out.find("verified: target equals source"), std::string::npos) << r.out;

    // The guest runs again, on its source, with nothing of the move left in QEMU.
    EXPECT_TRUE(guest_running(guest)) << r.out;
    const auto after = Clock::now();
    EXPECT_TRUE(heartbeat_steady(guest, after, 4s)) << "no steady heartbeat after the move failed";
    const auto pause = guest.max_heartbeat_gap(*paused - 1s);
    std::cout << "[ fault ] longest heartbeat gap (the guest's pause): " << pause.count()
              << " ms\n";
    EXPECT_LE(pause, k_pause_bound) << "the guest stayed paused too long";
    EXPECT_TRUE(guest_keeps_writing(guest)) << guest.console();
    EXPECT_TRUE(block_jobs(guest).empty()) << block_jobs(guest).dump();
    // QEMU drops the mirror's filter node when the failed job is finalised,
    // which may trail the job's disappearance from query-block-jobs.
    const auto nodes_deadline = Clock::now() + 10s;
    while (node_names(guest) != nodes_before && Clock::now() < nodes_deadline)
        std::this_thread::sleep_for(100ms);
    EXPECT_EQ(node_names(guest), nodes_before) << named_nodes(guest).dump();
    EXPECT_EQ(device_file(guest, "disk0"), file_before);
    EXPECT_TRUE(storage_daemons_mentioning(name).empty()) << "the NBD hop was left running";
    VerifyReport v = pause_and_verify(guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

INSTANTIATE_TEST_SUITE_P(Faults, MoveVerifyNfsDies, ::testing::Values(Fault::frozen, Fault::killed),
                         fault_name);

class MoveIscsiDies : public ::testing::TestWithParam<Fault> {};

// tgtd is SIGKILLed (or SIGSTOPped) while the mirror copies into one of its
// LUNs. The stall timeout is the default (15 s), longer than the 6 s after
// which a copy that stops converging is switched to write-blocking mode: a
// dead target must be told apart from a guest that outruns the copy.
TEST_P(MoveIscsiDies, MidCopyEndsWithinStallPlusRollbackAndNamesTheLun) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 8192;
    constexpr auto k_stall = 15s;
    // After the stall: kill the hop, cancel the job (waits at most 15 s
    // before killing the daemon), delete the nodes, stop the daemon, delete
    // the LUN (refused at once by a dead target, 15 s deadline on a frozen one).
    constexpr auto k_rollback_bound = 60s;
    TempDir dir("faults-iscsi");
    const std::string name = "id" + std::to_string(getpid()) + ".qcow2";
    const fs::path source = dir / name;
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "512M"});
    // 256 MiB of data beyond the stamped area: at 8 MiB/s the copy takes ~40 s.
    run_ok({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 64M 256M", source.string()});
    IscsiTarget iscsi(512 * k_mib, 1);
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    const auto nodes_before = node_names(*guest);
    const std::string file_before = device_file(*guest, "disk0");
    const std::string qmp = guest->qmp_socket().string();

    BackgroundCli move(
        {"--output", "json", "move", "--qmp", qmp, "--disk", "disk0", "--to", iscsi.base_url(),
         "--format", "raw", "--bandwidth", "8", "--stall-timeout", std::to_string(k_stall.count()),
         "--state-dir", (dir / "jobs").string(), "--timeout", "600"},
        qmp);
    // The copy is under way once the LUN's backing file fills.
    const auto deadline = Clock::now() + 90s;
    while (Clock::now() < deadline && !move.wait(0ms) &&
           allocated_bytes(iscsi.backing_file(1)) < 8 * k_mib)
        std::this_thread::sleep_for(100ms);
    ASSERT_FALSE(move.wait(0ms)) << "finished before tgtd was killed: " << move.result().out;
    ASSERT_GE(allocated_bytes(iscsi.backing_file(1)), 8 * k_mib) << "the copy never started";
    std::optional<Frozen> frozen;
    if (GetParam() == Fault::frozen)
        frozen.emplace(iscsi.pid());
    else
        ::kill(iscsi.pid(), SIGKILL);
    const auto died = Clock::now();

    ASSERT_TRUE(move.wait(k_stall + k_rollback_bound + 120s))
        << "blockmig never exits after tgtd died (rollback stuck on the dead target?)";
    const auto took = move.finished() - died;
    const CommandResult& r = move.result();
    std::cout << "[ fault ] move failed " << Seconds(took).count() << " s after tgtd "
              << (frozen ? "froze" : "died") << "\n"
              << r.out;
    EXPECT_LE(took, k_stall + k_rollback_bound) << r.out;
    EXPECT_EQ(r.status, 1) << r.out;
    const auto errors = error_lines(r.out);
    ASSERT_EQ(errors.size(), 1u) << r.out;
    // The LUN the rollback could not delete is named in the final message.
    const std::string lun = iscsi.lun_url(1);
    EXPECT_NE(errors[0].find("left behind"), std::string::npos) << errors[0];
    EXPECT_NE(errors[0].find(lun), std::string::npos) << errors[0];
    // A dead target is a stall, not a guest outrunning the copy: the mirror
    // was never switched (or restarted) into write-blocking mode.
    for (const auto& line : lines_of(r.out)) {
        json j = json::parse(line, nullptr, false);
        if (j.is_object()) {
            EXPECT_NE(j.value("event", ""), "copy-mode") << line;
        }
    }

    EXPECT_TRUE(block_jobs(*guest).empty()) << block_jobs(*guest).dump();
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_EQ(device_file(*guest, "disk0"), file_before);
    EXPECT_TRUE(storage_daemons_mentioning(iscsi.portal()).empty())
        << "the NBD hop was left running";
    // The job stays listed for `blockmig recover` (its LUN is left behind).
    auto jobs = blockmig_cli({"--output", "json", "jobs", "--state-dir", (dir / "jobs").string()});
    EXPECT_NE(jobs.out.find(lun), std::string::npos) << jobs.out;
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
    VerifyReport v = pause_and_verify(*guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

INSTANTIATE_TEST_SUITE_P(Faults, MoveIscsiDies, ::testing::Values(Fault::killed, Fault::frozen),
                         fault_name);

}  // namespace
