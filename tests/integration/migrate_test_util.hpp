// The two-host rig of the migrate_*_test integration tests: hosts A and B
// (network namespaces joined by a rate-limited veth), a guest on A stamping
// its disk, a destination QEMU on B with the same devices and -incoming
// defer, and what a test watches while blockmig runs. QEMU's monitor serves
// one client at a time, so during a run the journal (`blockmig jobs`) and
// blockmig's own JSON lines are the only windows; QMP only before and after.
#pragma once

#include "move_test_util.hpp"
#include "qmp_events.hpp"

namespace migrate_test {

using namespace move_test;
using blockmig::lab::HostPair;

// `copy_storage` none (SharedRig): both QEMUs open `disk` (one mount
// namespace), over a 200mbit link. all (CopyRig): B has its own empty
// `dst_disk` of the same size. inc (a rig that overrides make_disks and
// starts the destination itself): qcow2 overlays over a base both see.
// Both copying ones run over a 1 Gbit link (issue 10's "non-shared over a
// 1 Gbit tbf link"; tests/lab/hosts.sh gives tbf a 10 ms bucket: the rate,
// not a bucket too small for it, bounds the link; the CPU of a busy machine
// may bound it more). The tests that must catch a copy or the RAM mid-way
// cap --bandwidth themselves, so the link's rate never decides their timing.
class Rig : public ::testing::Test {
  protected:
    static constexpr std::uint64_t k_blocks = 8192;  // 32 MiB stamped

    explicit Rig(std::string copy_storage)
        : m_copy_storage(std::move(copy_storage)),
          dst_disk(m_copy_storage == "none" ? disk : dir / "dst.raw") {}

    void SetUp() override {
        LAB_REQUIRE();
        hosts = std::make_unique<HostPair>(m_copy_storage == "none" ? "200mbit" : "1gbit");
        make_disks();
        config = GuestConfig{.disks = {{"disk0", disk, format}},
                             .extra_args = QmpEvents::monitor_args(watch),
                             .stamp_blocks = k_blocks,
                             .dirty_mib = dirty_mib,
                             .netns = hosts->ns_a()};
        src = std::make_unique<Guest>(config);
        ASSERT_TRUE(src->wait_for_line("GUEST-UP", 120s)) << src->console();
        ASSERT_TRUE(src->wait_for_ack("vda", first_generation, 240s)) << src->console();
        if (destination_in_setup) start_destination();
    }

    // The disk files before any QEMU starts: 64 MiB raw, B's own unless shared.
    virtual void make_disks() {
        blockmig::lab::run_ok({"truncate", "-s", "64M", disk.string()});
        if (dst_disk != disk) blockmig::lab::run_ok({"truncate", "-s", "64M", dst_disk.string()});
    }

    // B's QEMU: the source's devices on `dst_disk`, -incoming defer.
    void start_destination() {
        GuestConfig other = config;
        other.disks[0].path = dst_disk;
        other.extra_args.clear();  // the watch monitor is the source's
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
                                   m_copy_storage,
                                   "--state-dir",
                                   state.string()};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }

    json jobs_listing() { return move_test::jobs_listing(state); }

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

    // The QEMUs blockmig launched for this test (found by their per-job socket
    // paths under its state dir; the job's guardian names that dir too).
    std::vector<int> launched_qemus() const {
        return processes_where([&](const std::string& cmdline) {
            return cmdline.find(state.string()) != std::string::npos &&
                   cmdline.find("qemu-system") != std::string::npos;
        });
    }

    // `guest.sh run {qmp} DRIVE... -device virtio-blk-pci,... -incoming defer`:
    // the lab guest's QEMU as --dst-launch starts it, disk0 opened by `drive`
    // (its format node named disk0-fmt); `program` replaces guest.sh's path.
    static std::vector<std::string> incoming_guest_words(std::vector<std::string> drive,
                                                         std::string program = "") {
        std::vector<std::string> w{
            program.empty() ? (blockmig::lab::script_dir() / "guest.sh").string() : program,
            "run", "{qmp}"};
        w.insert(w.end(), drive.begin(), drive.end());
        w.insert(w.end(),
                 {"-device", "virtio-blk-pci,drive=disk0-fmt,id=disk0", "-incoming", "defer"});
        return w;
    }

    // A migration that ran to its end: exit 0, the last line the "done" event,
    // the source QEMU quit; `done` and the last write the source acknowledged
    // are filled in. Call it through ASSERT_NO_FATAL_FAILURE.
    void expect_ran_to_done(const SplitResult& r, json& done,
                            std::optional<blockmig::lab::Ack>& ack) {
        ASSERT_EQ(r.status, 0) << r.out << r.err;
        done = json::parse(lines_of(r.out).back(), nullptr, false);
        ASSERT_EQ(done.value("event", ""), "done") << r.out;
        EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";
        ack = src->last_ack("vda");
        ASSERT_TRUE(ack) << "the source guest acknowledged writes";
    }

    // The guest runs and writes on the destination, every stamped block
    // verifies on the destination's disk file.
    void expect_guest_on_destination() {
        EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "running");
        ASSERT_TRUE(dst->wait_for_ack("vda", 1, 60s)) << dst->console();
        ASSERT_TRUE(guest_keeps_writing(*dst)) << "the guest keeps writing on the destination";
        EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
        auto v = pause_and_verify(*dst, dst_disk.string(), "raw", k_blocks);
        EXPECT_TRUE(v.intact()) << v.output;
    }

    // The guest is alive on the source, its migration over, its settings
    // restored, no journal left, and every stamped block verifies there.
    void expect_guest_on_source() {
        EXPECT_EQ(qmp_return(*src, R"({"execute":"query-status"})")["status"], "running");
        const json caps = qmp_return(*src, R"({"execute":"query-migrate-capabilities"})");
        for (const auto& c : caps) {
            if (c["capability"] == "pause-before-switchover") {
                EXPECT_FALSE(c["state"].get<bool>()) << "the source's settings are restored";
            }
        }
        EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
        ASSERT_TRUE(guest_keeps_writing(*src));
        auto v = pause_and_verify(*src, disk.string(), "raw", k_blocks);
        EXPECT_TRUE(v.intact()) << v.output;
    }

  private:
    std::string m_copy_storage;

  protected:
    std::unique_ptr<HostPair> hosts;
    blockmig::lab::TempDir dir{"migrate"};
    fs::path disk = dir / "src.raw";  // the source's disk (both sides' when shared)
    fs::path dst_disk;                // the destination's disk
    std::string format = "raw";       // both disks' (set before SetUp)
    fs::path state = dir / "jobs";
    fs::path watch = dir / "watch.qmp";  // a second monitor on the source, for QmpEvents
    GuestConfig config;
    int dirty_mib = 0;  // MiB of RAM the source guest keeps dirty (set before SetUp)
    // SetUp waits for the guest's first ACK of this generation (2: one whole
    // pass stamped) and starts B's QEMU unless told not to (set before SetUp).
    std::uint64_t first_generation = 1;
    bool destination_in_setup = true;
    std::unique_ptr<Guest> src, dst;
};

class SharedRig : public Rig {
  protected:
    SharedRig() : Rig("none") {}
};

class CopyRig : public Rig {
  protected:
    CopyRig() : Rig("all") {}
};

}  // namespace migrate_test
