// blockmig migrate --copy-storage all between two lab hosts (network
// namespaces joined by a rate-limited veth): a writing guest on host A with
// its own local disk file, a destination QEMU on host B with the same
// devices, -incoming defer and its own empty disk file of the same size.
// - success: the guest runs and keeps writing on B, the source QEMU is gone,
//   every block verifies on B's disk file;
// - the destination QEMU killed during the mirror phase: one clear line, the
//   guest keeps running on A, no block job and no NBD node left on A.
// QEMU's monitor serves one client at a time, so while blockmig runs the
// test watches the journal (`blockmig jobs`), never QMP.
#include <gtest/gtest.h>
#include <signal.h>

#include "move_test_util.hpp"

using namespace move_test;
using blockmig::lab::HostPair;

namespace {

constexpr std::uint64_t k_blocks = 8192;  // 32 MiB stamped

class MigrateAll : public ::testing::Test {
  protected:
    void SetUp() override {
        LAB_REQUIRE();
        hosts = std::make_unique<HostPair>("200mbit");
        blockmig::lab::run_ok({"truncate", "-s", "64M", src_disk.string()});
        blockmig::lab::run_ok({"truncate", "-s", "64M", dst_disk.string()});
        config = GuestConfig{.disks = {{"disk0", src_disk, "raw"}},
                             .stamp_blocks = k_blocks,
                             .netns = hosts->ns_a()};
        src = std::make_unique<Guest>(config);
        ASSERT_TRUE(src->wait_for_line("GUEST-UP", 120s)) << src->console();
        ASSERT_TRUE(src->wait_for_ack("vda", 1, 120s)) << src->console();
        GuestConfig other = config;
        other.disks[0].path = dst_disk;
        dst = std::make_unique<Guest>(blockmig::lab::incoming_config(other, hosts->ns_b()));
    }

    std::vector<std::string> migrate_args(std::vector<std::string> extra = {}) {
        std::vector<std::string> a{"migrate",
                                   "--src-qmp",
                                   src->qmp_socket().string(),
                                   "--dst-qmp",
                                   dst->qmp_socket().string(),
                                   "--dst-addr",
                                   HostPair::k_addr_b,
                                   "--copy-storage",
                                   "all",
                                   "--state-dir",
                                   state.string()};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }

    json jobs_listing() {
        auto r = blockmig_cli({"--output", "json", "jobs", "--state-dir", state.string()});
        EXPECT_EQ(r.status, 0) << r.out;
        auto j = json::parse(r.out.substr(r.out.find('{')), nullptr, false);
        return j.is_discarded() ? json::object() : j;
    }

    bool wait_for_phase(const std::string& phase, std::chrono::milliseconds timeout) {
        const auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            json l = jobs_listing();
            if (!l["jobs"].empty() && l["jobs"][0].contains("migration") &&
                l["jobs"][0]["migration"].value("phase", "") == phase)
                return true;
            std::this_thread::sleep_for(100ms);
        }
        return false;
    }

    std::unique_ptr<HostPair> hosts;
    blockmig::lab::TempDir dir{"migrate-all"};
    fs::path src_disk = dir / "src.raw";
    fs::path dst_disk = dir / "dst.raw";
    fs::path state = dir / "jobs";
    GuestConfig config;
    std::unique_ptr<Guest> src, dst;
};

TEST_F(MigrateAll, GuestRunsOnTheDestinationAndItsOwnDiskVerifies) {
    auto r = blockmig_cli_split(migrate_args({"--output", "json"}), dir.path());
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    auto lines = lines_of(r.out);
    ASSERT_FALSE(lines.empty());
    bool saw_mirror_phase = false, saw_start = false;
    for (const auto& l : lines) {
        json j = json::parse(l, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << "not JSON: " << l;
        if (j["event"] == "phase" && j["phase"] == "mirror") saw_mirror_phase = true;
        if (j["event"] == "start") saw_start = true;
    }
    EXPECT_TRUE(saw_mirror_phase && saw_start) << r.out;
    json done = json::parse(lines.back());
    EXPECT_EQ(done["event"], "done") << r.out;
    EXPECT_TRUE(done["source_quit"].get<bool>());
    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";

    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "running");
    ASSERT_TRUE(dst->wait_for_ack("vda", 1, 60s)) << dst->console();
    ASSERT_TRUE(guest_keeps_writing(*dst)) << "the guest keeps writing on the destination";
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    // Nothing of the copy is left on the destination: no export, no job.
    EXPECT_TRUE(qmp_return(*dst, R"({"execute":"query-block-jobs"})").empty());
    const json exports = qmp_return(*dst, R"({"execute":"query-block-exports"})");
    EXPECT_TRUE(exports.empty()) << exports.dump();
    // The blocks the guest stamped on the source are on the destination's own file.
    auto v = pause_and_verify(*dst, dst_disk.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST_F(MigrateAll, DestinationKilledDuringTheMirrorLeavesTheGuestOnTheSource) {
    // 1 MiB/s: the 64 MiB copy takes long enough to be interrupted.
    BackgroundCli cli(migrate_args({"--bandwidth", "1"}), src->qmp_socket().string());
    ASSERT_TRUE(wait_for_phase("mirror", 60s));
    std::this_thread::sleep_for(2s);
    kill(dst->pid(), SIGKILL);
    ASSERT_TRUE(cli.wait(60s)) << "blockmig ends after the destination died";
    const auto& r = cli.result();
    EXPECT_EQ(r.status, 1) << r.out;
    std::size_t errors = 0;
    for (const auto& l : lines_of(r.out))
        if (l.starts_with("blockmig: error:")) {
            ++errors;
            EXPECT_NE(l.find("phase mirror"), std::string::npos) << l;
            EXPECT_NE(l.find("keeps running on the source"), std::string::npos) << l;
        }
    EXPECT_EQ(errors, 1u) << r.out;
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-status"})")["status"], "running");
    EXPECT_TRUE(qmp_return(*src, R"({"execute":"query-block-jobs"})").empty());
    const json nodes = qmp_return(*src, R"({"execute":"query-named-block-nodes"})");
    for (const auto& n : nodes)
        EXPECT_NE(n.value("drv", ""), "nbd") << "an NBD client node is left: " << n.dump();
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    ASSERT_TRUE(guest_keeps_writing(*src));
    auto v = pause_and_verify(*src, src_disk.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

}  // namespace
