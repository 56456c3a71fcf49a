// blockmig migrate --copy-storage inc between two lab hosts (network
// namespaces joined by a rate-limited veth): a 256 MiB base image full of
// random data on a path both hosts see, a writing guest on host A whose disk
// is its own qcow2 overlay over that base, and a destination QEMU on host B
// (same devices, -incoming defer) whose disk is a fresh qcow2 overlay over
// the same base.
// - success: the guest runs and keeps writing on B; every stamped block
//   verifies on B's overlay; B's overlay holds only what A's overlay held
//   (nothing allocated outside the guest's stamped 32 MiB: the mirror's
//   sync=top copied no base data) while everything else reads through to
//   the base; the base was not written (checksum before/after);
// - B's overlay over another base file (same size, other content): refused
//   with one line before anything is touched: the guest keeps running on
//   A, B still waits, no journal, base and B's overlay unchanged.
#include <gtest/gtest.h>

#include <algorithm>

#include "migrate_test_util.hpp"

using namespace migrate_test;

namespace {

constexpr std::uint64_t k_disk = std::uint64_t{256} << 20;

std::string sha256(const fs::path& file, std::uint64_t skip_mib = 0) {
    auto out =
        blockmig::lab::run_ok({"sh", "-c", "dd if=\"$1\" bs=1M skip=\"$2\" status=none | sha256sum",
                               "sh", file.string(), std::to_string(skip_mib)});
    return out.substr(0, 64);
}

// The two-host rig (migrate_test_util.hpp) with --copy-storage inc: the
// base made first, A's disk its overlay; B's QEMU started by each test over
// an overlay of the base it names.
class MigrateInc : public Rig {
  protected:
    MigrateInc() : Rig("inc") {
        disk = dir / "src.qcow2";
        dst_disk = dir / "dst.qcow2";
        format = "qcow2";
        // A whole first pass: every stamped block is in A's overlay (a block
        // the guest has not stamped yet reads as random base data, which
        // the verifier cannot tell from a corrupted one).
        first_generation = 2;
        destination_in_setup = false;
    }

    void make_disks() override {
        // Real data everywhere in the base: a copy of it into an overlay
        // would show in the overlay's allocation map.
        blockmig::lab::run_ok({"dd", "if=/dev/urandom", "of=" + base.string(), "bs=1M",
                               "count=" + std::to_string(k_disk >> 20), "status=none"});
        base_sum = sha256(base);
        overlay(disk, base);
    }

    static void overlay(const fs::path& file, const fs::path& backing) {
        blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "qcow2", "-b", backing.string(),
                               "-F", "raw", file.string(), std::to_string(k_disk)});
    }

    // B's QEMU over its own fresh overlay of `backing`.
    void start_destination(const fs::path& backing) {
        overlay(dst_disk, backing);
        Rig::start_destination();
    }

    static constexpr std::uint64_t k_stamped = k_blocks * k_block;  // by the guest

    fs::path base = dir / "base.raw";  // both hosts see dir (one file system)
    std::string base_sum;
};

TEST_F(MigrateInc, OnlyTheOverlayMovesAndTheGuestVerifiesOnTheDestination) {
    start_destination(base);
    auto r = blockmig_cli_split(migrate_args({"--output", "json"}), dir.path());
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    const auto events = json_lines(r.out);
    ASSERT_FALSE(events.empty());
    bool saw_mirror_phase = false;
    for (const auto& j : events)
        if (j["event"] == "phase" && j["phase"] == "mirror") saw_mirror_phase = true;
    EXPECT_TRUE(saw_mirror_phase) << r.out;
    EXPECT_EQ(events.back()["event"], "done") << r.out;
    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";

    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "running");
    ASSERT_TRUE(dst->wait_for_ack("vda", 1, 60s)) << dst->console();
    ASSERT_TRUE(guest_keeps_writing(*dst)) << "the guest keeps writing on the destination";
    EXPECT_EQ(jobs_left(state), 0);
    EXPECT_TRUE(qmp_return(*dst, R"({"execute":"query-block-exports"})").empty());

    dst->pause();
    // Every block the guest acknowledged, read through B's overlay.
    auto v =
        blockmig::lab::verify_image(dst_disk.string(), "qcow2", k_blocks, dst->last_ack("vda"));
    EXPECT_TRUE(v.intact()) << v.output;
    // B's overlay holds the guest's writes only: every extent allocated in
    // it (depth 0) lies in the stamped area; sync=full would have written
    // the whole random base into it.
    const json map = json::parse(blockmig::lab::run_ok(
        {"qemu-img", "map", "-U", "--output=json", "-f", "qcow2", dst_disk.string()}));
    std::uint64_t in_overlay = 0, outside = 0;
    std::string first_outside;
    for (const auto& e : map) {
        if (e.value("depth", -1) != 0 || !e.value("present", false)) continue;
        const auto start = e["start"].get<std::uint64_t>();
        const auto length = e["length"].get<std::uint64_t>();
        in_overlay += length;
        if (start + length <= k_stamped) continue;
        outside += start + length - std::max(start, k_stamped);
        if (first_outside.empty()) first_outside = e.dump();
    }
    EXPECT_EQ(outside, 0u) << "base data copied into the overlay, e.g. " << first_outside;
    EXPECT_GT(in_overlay, k_stamped / 2) << map.dump();
    const json info = json::parse(
        blockmig::lab::run_ok({"qemu-img", "info", "-U", "--output=json", dst_disk.string()}));
    const auto overlay_bytes = info["actual-size"].get<std::uint64_t>();
    std::cerr << "destination overlay: " << (in_overlay >> 20) << " MiB allocated, "
              << (overlay_bytes >> 20) << " MiB on disk; base " << (k_disk >> 20) << " MiB\n";
    EXPECT_LT(overlay_bytes, k_disk / 4);
    // Past the stamped area the guest's disk on B is the base, read through.
    const fs::path view = dir / "view.raw";
    blockmig::lab::run_ok({"qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                           dst_disk.string(), view.string()});
    EXPECT_EQ(sha256(view, k_stamped >> 20), sha256(base, k_stamped >> 20));
    dst->resume();
    EXPECT_EQ(sha256(base), base_sum) << "the base image was written";
}

TEST_F(MigrateInc, AnOverlayOverAnotherBaseIsRefusedUntouched) {
    const fs::path other = dir / "other.raw";
    blockmig::lab::run_ok({"truncate", "-s", std::to_string(k_disk), other.string()});
    start_destination(other);
    const std::string dst_sum = sha256(dst_disk);
    auto r = blockmig_cli_split(migrate_args(), dir.path());
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    EXPECT_NE(r.err.find("disk disk0: the source's overlay is over " + base.string() +
                         " but the destination's over " + other.string() + ", a different image"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(lines_of(r.err).size(), 1u) << r.err;
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-status"})")["status"], "running");
    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "inmigrate");
    EXPECT_TRUE(qmp_return(*src, R"({"execute":"query-block-jobs"})").empty());
    EXPECT_TRUE(qmp_return(*dst, R"({"execute":"query-block-exports"})").empty());
    EXPECT_EQ(jobs_left(state), 0);
    ASSERT_TRUE(guest_keeps_writing(*src));
    EXPECT_EQ(sha256(dst_disk), dst_sum) << "the destination's overlay was written";
    EXPECT_EQ(sha256(base), base_sum) << "the base image was written";
}

}  // namespace

namespace {

// blockmig cannot make qcow2 overlays over a base in a pool: one usage line.
TEST(MigrateIncCli, DstLaunchIsRefusedWithOneLine) {
    blockmig::lab::TempDir tmp{"migrate-inc-cli"};
    auto r = blockmig_cli({"migrate", "--src-qmp", (tmp / "none.qmp").string(), "--dst-addr",
                           "127.0.0.1", "--copy-storage", "inc", "--dst-pool", tmp.path().string(),
                           "--dst-launch", "--", "true"});
    EXPECT_EQ(r.status, 2) << r.out;
    EXPECT_EQ(lines_of(r.out).size(), 1u) << r.out;
    expect_one_error_line(r.out,
                          {"with --copy-storage inc create the destination's qcow2 overlays"});
}

}  // namespace
