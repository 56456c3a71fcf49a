// Targets of one run are chosen together: two disks moved into one iSCSI
// pool land on two LUNs, as raw (a raw target writes nothing before the
// mirror, so both LUNs read as unused when they are chosen) and as qcow2
// (through the NBD hop), and device ids that share a long prefix
// (virtio-disk10 / virtio-disk11) get distinct nodes and jobs.
#include <gtest/gtest.h>

#include <regex>

#include "move_test_util.hpp"

using namespace move_test;
using blockmig::lab::IscsiTarget;

namespace {

constexpr std::uint64_t k_blocks = 2048;

int lun_of(const std::string& file) {
    std::smatch m;
    static const std::regex lun(R"re(\\?"lun\\?"\s*:\s*\\?"?(\d+))re");
    return std::regex_search(file, m, lun) ? std::stoi(m[1]) : -1;
}

class MoveDistinct : public ::testing::TestWithParam<std::string> {};

TEST_P(MoveDistinct, TwoDisksIntoOneIscsiPoolLandOnTwoLuns) {
    LAB_REQUIRE();
    const std::string format = GetParam();
    blockmig::lab::TempDir dir("distinct");
    // Room for a qcow2 target's metadata beyond the 64 MiB disk.
    IscsiTarget iscsi(80 * k_mib, 2);
    const fs::path a = dir / "a.raw", b = dir / "b.raw";
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "raw", a.string(), "64M"});
    blockmig::lab::run_ok({"qemu-img", "create", "-q", "-f", "raw", b.string(), "64M"});
    Guest guest(GuestConfig{.disks = {{"virtio-disk10", a, "raw"}, {"virtio-disk11", b, "raw"}},
                            .stamp_blocks = k_blocks});
    ASSERT_TRUE(guest.wait_for_ack("vda", 1, 120s)) << guest.console();
    ASSERT_TRUE(guest.wait_for_ack("vdb", 1, 120s)) << guest.console();

    auto r = blockmig_cli({"move", "--qmp", guest.qmp_socket().string(), "--all-disks", "--to",
                           iscsi.base_url(), "--format", format, "--state-dir",
                           (dir / "jobs").string(), "--timeout", "200"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    const std::string f10 = device_file(guest, "virtio-disk10");
    const std::string f11 = device_file(guest, "virtio-disk11");
    EXPECT_NE(f10.find(iscsi.iqn()), std::string::npos) << f10;
    EXPECT_NE(f11.find(iscsi.iqn()), std::string::npos) << f11;
    const int l10 = lun_of(f10), l11 = lun_of(f11);
    ASSERT_GT(l10, 0) << f10;
    ASSERT_GT(l11, 0) << f11;
    EXPECT_NE(l10, l11) << "two guest disks on one LUN: " << f10 << " / " << f11;

    guest.pause();
    for (auto [dev, lun] : {std::pair{"vda", l10}, std::pair{"vdb", l11}}) {
        auto v =
            blockmig::lab::verify_image(iscsi.lun_url(lun), format, k_blocks, guest.last_ack(dev));
        EXPECT_TRUE(v.intact()) << dev << ": " << v.output;
    }
    guest.resume();
}

INSTANTIATE_TEST_SUITE_P(Formats, MoveDistinct, ::testing::Values("raw", "qcow2"),
                         [](const auto& info) { return info.param; });

}  // namespace
