// `migrate --copy-storage inc`'s pre-flight per disk (pure): a source
// overlay over a base, the destination's fresh qcow2 overlay over the same.
#include <gtest/gtest.h>

#include "migrate/preflight.hpp"

using namespace blockmig;
using migrate::DiskFacts;
using migrate::FileIdentity;

namespace {

constexpr std::uint64_t k_gib = std::uint64_t{1} << 30;

struct Overlay : ::testing::Test {
    DiskFacts src{"disk0", "/a/vm.qcow2", FileIdentity{1, 10}, "none"};
    DiskFacts dst{"disk0", "/b/vm.qcow2", FileIdentity{1, 20}, "none"};
    void SetUp() override {
        for (auto* d : {&src, &dst}) {
            d->format = "qcow2";
            d->size = k_gib;
            d->backing = "/shared/base.qcow2";
            d->backing_identity = FileIdentity{1, 5};
            d->cluster_size = 65536;
        }
        src.allocated = 300 << 20;  // the source's overlay may hold anything
        dst.allocated = 200704;     // qemu-img's fresh 1 GiB overlay
    }
    std::string refusal() {
        auto r = migrate::check_overlay(src, dst);
        return r ? "" : r.error().message;
    }
};

TEST_F(Overlay, AcceptsAFreshOverlayOverTheSameBase) { EXPECT_EQ(refusal(), ""); }

TEST_F(Overlay, SameBaseByIdentityNotByName) {
    dst.backing = "/mnt/other-mount/base.qcow2";  // another path, the same file
    EXPECT_EQ(refusal(), "");
    dst.backing_identity = FileIdentity{1, 6};
    EXPECT_EQ(refusal(),
              "migrate pre-flight: disk disk0: the source's overlay is over /shared/base.qcow2 "
              "but the destination's over /mnt/other-mount/base.qcow2, a different image; "
              "--copy-storage inc needs both over the same base");
    dst.backing_identity.reset();  // e.g. the destination's QMP is TCP
    EXPECT_NE(refusal().find("cannot prove both overlays are over the same base"),
              std::string::npos)
        << refusal();
}

TEST_F(Overlay, NetworkBasesMatchByUrl) {
    for (auto* d : {&src, &dst}) {
        d->backing = "nfs://10.0.0.5/export/base.qcow2";
        d->backing_identity.reset();
    }
    EXPECT_EQ(refusal(), "");
    dst.backing = "nfs://10.0.0.6/export/base.qcow2";
    EXPECT_NE(refusal().find("a different image"), std::string::npos) << refusal();
}

TEST_F(Overlay, RefusesASourceWithoutBacking) {
    src.backing.clear();
    EXPECT_EQ(refusal(),
              "migrate pre-flight: disk disk0: the source's /a/vm.qcow2 has no backing image; "
              "--copy-storage inc copies only an overlay over a base both hosts share (use "
              "--copy-storage all)");
}

TEST_F(Overlay, RefusesADestinationThatIsNotAQcow2Overlay) {
    dst.format = "raw";
    EXPECT_NE(refusal().find("the destination's /b/vm.qcow2 is a raw node; --copy-storage inc "
                             "needs a qcow2 overlay over /shared/base.qcow2"),
              std::string::npos)
        << refusal();
    dst.format = "qcow2";
    dst.backing.clear();
    EXPECT_NE(refusal().find("the destination's /b/vm.qcow2 has no backing image"),
              std::string::npos)
        << refusal();
}

TEST_F(Overlay, RefusesADestinationOverlayHoldingData) {
    dst.allocated = 8 << 20;
    EXPECT_EQ(refusal(),
              "migrate pre-flight: disk disk0: the destination's overlay /b/vm.qcow2 already "
              "holds data (8192 KiB allocated); --copy-storage inc copies only what the "
              "source's overlay holds, so create a fresh overlay over /shared/base.qcow2");
    dst.allocated.reset();  // not known (QEMU reports no actual-size): not refused
    EXPECT_EQ(refusal(), "");
}

// What `qemu-img create -f qcow2 -b BASE` made on ext4 (qemu-img 7.2), as
// (virtual size, cluster size, host bytes): each one passes as fresh.
TEST(FreshOverlayBound, CoversEveryMeasuredEmptyOverlay) {
    struct Case {
        std::uint64_t size, cluster, empty;
    };
    for (const Case& c :
         {Case{k_gib, 65536, 200704}, Case{64 * k_gib, 65536, 200704},
          Case{10240 * k_gib, 65536, 360448}, Case{k_gib, 512, 266240},
          Case{64 * k_gib, 512, 16850944}, Case{k_gib, 4096, 16384}, Case{64 * k_gib, 4096, 274432},
          Case{k_gib, 2 << 20, 6295552}, Case{10240 * k_gib, 2 << 20, 6295552}})
        EXPECT_GE(migrate::fresh_overlay_bound(c.size, c.cluster), c.empty)
            << c.size << " " << c.cluster;
    // A few MiB of data in a 64 KiB-cluster overlay are over the bound.
    EXPECT_LT(migrate::fresh_overlay_bound(k_gib, 65536), std::uint64_t{2} << 20);
    EXPECT_LT(migrate::fresh_overlay_bound(64 * k_gib, 65536), std::uint64_t{2} << 20);
}

TEST(CopyStorageInc, CheckAppliesTheOverlayRulesToEveryDisk) {
    migrate::SideFacts src, dst;
    for (auto* f : {&src, &dst}) {
        f->run_state = f == &src ? "running" : "inmigrate";
        f->migration_status = "none";
        f->identity.qmp = f == &src ? "/run/a" : "/run/b";
        f->identity.pid = f == &src ? 10 : 20;
        f->capabilities = {"events", "pause-before-switchover"};
    }
    src.disks = {{"disk0", "/a/vm.qcow2", FileIdentity{1, 10}, "none"}};
    dst.disks = {{"disk0", "/b/vm.qcow2", FileIdentity{1, 20}, "none"}};
    for (auto* d : {&src.disks[0], &dst.disks[0]}) {
        d->format = "qcow2";
        d->size = k_gib;
        d->backing = "/shared/base.qcow2";
        d->backing_identity = FileIdentity{1, 5};
    }
    EXPECT_TRUE(migrate::check(src, dst, CopyStorage::inc));
    // --copy-storage all does not care about backings; inc does.
    dst.disks[0].backing_identity = FileIdentity{1, 6};
    EXPECT_TRUE(migrate::check(src, dst, CopyStorage::all));
    auto r = migrate::check(src, dst, CopyStorage::inc);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("a different image"), std::string::npos);
    // The size rule names the mode.
    dst.disks[0].size = 2 * k_gib;
    r = migrate::check(src, dst, CopyStorage::inc);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("--copy-storage inc needs a destination volume of exactly "
                                     "the source's size"),
              std::string::npos)
        << r.error().message;
}

}  // namespace
