// What the two `migrate --offline` integration tests share (the running
// guest's disks in migrate_offline_test, the stopped guest's files in
// migrate_offline_stopped_test): the overlay they lay out and how they read
// and check the result.
#pragma once

#include "move_test_util.hpp"

namespace offline_test {

namespace fs = std::filesystem;
using nlohmann::json;

// A raw base of `base_mib` whose `data_mib` from 32 MiB on hold random
// bytes (data past the guest's stamped part), and a qcow2 overlay on it.
inline void make_overlay_on_raw(const fs::path& qcow2, const fs::path& base, int base_mib,
                                int data_mib) {
    blockmig::lab::run_ok({"truncate", "-s", std::to_string(base_mib) + "M", base.string()});
    blockmig::lab::run_ok({"dd", "if=/dev/urandom", "of=" + base.string(), "bs=1M", "seek=32",
                           "count=" + std::to_string(data_mib), "conv=notrunc", "status=none"});
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base.string(), "-F",
                           "raw", qcow2.string()});
}

// sha256sum's digest of `file`: what blockmig's report must match.
inline std::string sha256_of(const fs::path& file) {
    return blockmig::lab::run_ok({"sha256sum", file.string()}).substr(0, 64);
}

// blockmig's `done` event among its JSON lines (an empty object without one).
inline json done_line(const std::string& out) {
    for (const auto& l : move_test::lines_of(out)) {
        json j = json::parse(l, nullptr, false);
        if (!j.is_discarded() && j.value("event", "") == "done") return j;
    }
    return json::object();
}

constexpr std::uint64_t k_blocks = 4096;  // 16 MiB stamped per disk

// A stamping lab guest on the disks a test lays out, in a temporary
// directory holding the job state ("jobs") and the destination pool ("pool").
class OfflineRig : public ::testing::Test {
  protected:
    explicit OfflineRig(const char* tag) : dir(tag) {}
    void SetUp() override { LAB_REQUIRE(); }

    // Returns once the guest has stamped every disk at least once.
    void boot(std::vector<blockmig::lab::GuestDisk> disks) {
        guest = std::make_unique<move_test::Guest>(
            move_test::GuestConfig{.disks = disks, .stamp_blocks = k_blocks});
        ASSERT_TRUE(guest->wait_for_line("GUEST-UP", std::chrono::seconds(120)))
            << guest->console();
        for (std::size_t i = 0; i < disks.size(); ++i)
            ASSERT_TRUE(guest->wait_for_ack(std::string("vd") + char('a' + i), 1,
                                            std::chrono::seconds(120)))
                << guest->console();
    }

    // A 512 MiB raw file in the test's directory with 448 MiB of data behind
    // the stamped part: its copy and digests take seconds.
    fs::path make_big_raw(const std::string& name) {
        const fs::path raw = dir / name;
        blockmig::lab::run_ok({"truncate", "-s", "512M", raw.string()});
        blockmig::lab::run_ok({"dd", "if=/dev/urandom", "of=" + raw.string(), "bs=1M",
                               "seek=64", "count=448", "conv=notrunc", "status=none"});
        return raw;
    }

    // Whether the job's journal shows a disk copying within 60 s.
    bool until_copying() {
        for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
             std::chrono::steady_clock::now() < deadline;) {
            json l = move_test::jobs_listing(state);
            if (!l["jobs"].empty())
                for (const auto& d : l["jobs"][0]["disks"])
                    if (d.value("phase", "") == "copying") return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        return false;
    }

    blockmig::lab::TempDir dir;
    fs::path state = dir / "jobs";
    fs::path pool = dir / "pool";
    std::unique_ptr<move_test::Guest> guest;
};

}  // namespace offline_test
