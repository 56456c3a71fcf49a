// The two-host rig of the migrate_*_test integration tests: hosts A and B
// (network namespaces joined by a rate-limited veth), a guest on A stamping
// its disk, a destination QEMU on B with the same devices and -incoming
// defer, and what a test watches while blockmig runs. QEMU's monitor serves
// one client at a time, so during a run the journal (`blockmig jobs`) and
// blockmig's own JSON lines are the only windows; QMP only before and after.
#pragma once

#include "move_test_util.hpp"

namespace migrate_test {

using namespace move_test;
using blockmig::lab::HostPair;

// Shared storage: both QEMUs open `disk` (one mount namespace).
class SharedRig : public ::testing::Test {
  protected:
    static constexpr std::uint64_t k_blocks = 8192;  // 32 MiB stamped

    void SetUp() override {
        LAB_REQUIRE();
        hosts = std::make_unique<HostPair>("200mbit");
        blockmig::lab::run_ok({"truncate", "-s", "64M", disk.string()});
        config = GuestConfig{
            .disks = {{"disk0", disk, "raw"}}, .stamp_blocks = k_blocks, .netns = hosts->ns_a()};
        src = std::make_unique<Guest>(config);
        ASSERT_TRUE(src->wait_for_line("GUEST-UP", 120s)) << src->console();
        ASSERT_TRUE(src->wait_for_ack("vda", 1, 120s)) << src->console();
        dst = std::make_unique<Guest>(blockmig::lab::incoming_config(config, hosts->ns_b()));
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
                                   "none",
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

    // Waits until the journal names `phase` (blockmig holds both monitors).
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

    // blockmig's --output json lines, each parsed (a line that is not JSON fails the test).
    static std::vector<json> json_lines(const std::string& out) {
        std::vector<json> events;
        for (const auto& l : lines_of(out)) {
            json j = json::parse(l, nullptr, false);
            EXPECT_FALSE(j.is_discarded()) << "not JSON: " << l;
            if (!j.is_discarded()) events.push_back(std::move(j));
        }
        return events;
    }

    // The guest runs and writes on the destination, every stamped block verifies.
    void expect_guest_on_destination() {
        EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "running");
        ASSERT_TRUE(dst->wait_for_ack("vda", 1, 60s)) << dst->console();
        ASSERT_TRUE(guest_keeps_writing(*dst)) << "the guest keeps writing on the destination";
        EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
        auto v = pause_and_verify(*dst, disk.string(), "raw", k_blocks);
        EXPECT_TRUE(v.intact()) << v.output;
    }

    std::unique_ptr<HostPair> hosts;
    blockmig::lab::TempDir dir{"migrate"};
    fs::path disk = dir / "shared.raw";
    fs::path state = dir / "jobs";
    GuestConfig config;
    std::unique_ptr<Guest> src, dst;
};

}  // namespace migrate_test
