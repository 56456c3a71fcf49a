#include <gtest/gtest.h>

#include "jobs/claims.hpp"
#include "jobs/guest.hpp"
#include "jobs/journal.hpp"
#include "jobs_test_util.hpp"

using namespace blockmig;
using namespace blockmig::jobs;
namespace fs = std::filesystem;

namespace {

class ClaimsTest : public ::testing::Test {
  protected:
    void TearDown() override { fs::remove_all(dir.parent_path()); }
    fs::path dir = jobs_test::temp_dir("claims") / "state";
};

TEST_F(ClaimsTest, OneVolumeCanBeClaimedOnceAtATime) {
    auto a = TargetClaim::take(dir, "iscsi://10.0.0.6/iqn.x:t/1");
    ASSERT_TRUE(a) << a.error().message;
    auto b = TargetClaim::take(dir, "iscsi://10.0.0.6/iqn.x:t/1");
    ASSERT_FALSE(b);
    EXPECT_EQ(b.error().code, ErrorCode::already_exists);
    EXPECT_TRUE(TargetClaim::take(dir, "iscsi://10.0.0.6/iqn.x:t/2"));
    *a = TargetClaim{};  // released
    EXPECT_TRUE(TargetClaim::take(dir, "iscsi://10.0.0.6/iqn.x:t/1"));
}

TEST_F(ClaimsTest, VolumesOfUnfinishedJournalsStayTaken) {
    {
        Job job;
        job.guest.qmp = "/run/vm.qmp";
        auto j = Journal::create(dir, job);
        ASSERT_TRUE(j);
        auto seq = j->intend({.disk = "d", .effect = EffectKind::volume_created, .name = "mem:a"});
        ASSERT_TRUE(seq);
        auto undone =
            j->intend({.disk = "d", .effect = EffectKind::volume_created, .name = "mem:b"});
        ASSERT_TRUE(undone);
        ASSERT_TRUE(j->outcome(*undone, RecordState::undone));
    }
    auto taken = claimed_by_journals(dir);
    ASSERT_TRUE(taken);
    EXPECT_TRUE(taken->contains("mem:a"));
    EXPECT_FALSE(taken->contains("mem:b"));
}

TEST(GuestTest, LibvirtGuestsAreRecognised) {
    EXPECT_TRUE(libvirt_evidence("/run/libvirt/qemu/vm1.monitor", {}));
    EXPECT_TRUE(libvirt_evidence("/var/run/libvirt/qemu/vm1.monitor", {}));
    EXPECT_TRUE(libvirt_evidence("/tmp/vm.qmp", {"libvirt-1-format", "x"}));
    EXPECT_FALSE(libvirt_evidence("/tmp/vm.qmp", {"disk0-fmt", "drive-virtio0"}));
}

TEST(GuestTest, IdentityComesFromQemu) {
    jobs_test::FakeGuest guest;
    ASSERT_TRUE(guest.client);
    guest.script->set_responder([](const jobs_test::json& m, auto& s) {
        const std::string cmd = m.value("execute", "");
        jobs_test::json ret =
            cmd == "query-uuid" ? jobs_test::json{{"UUID", "6f1c2a5e-0000-4000-8000-000000000001"}}
                                : jobs_test::json{{"name", "vm1"}};
        s.push({{"return", ret}, {"id", m["id"]}});
    });
    auto id = identify_guest(*guest.client, "relative.qmp", 77, std::chrono::seconds(1));
    ASSERT_TRUE(id) << id.error().message;
    EXPECT_EQ(id->uuid, "6f1c2a5e-0000-4000-8000-000000000001");
    EXPECT_EQ(id->name, "vm1");
    EXPECT_EQ(id->pid, 77);
    EXPECT_TRUE(fs::path(id->qmp).is_absolute());
}

}  // namespace
