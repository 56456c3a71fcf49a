// The iSCSI pool against a real tgtd with thin-provisioned LUNs.
#include <signal.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <set>

#include "pools/address.hpp"
#include "pools/image_format.hpp"
#include "pools/pools.hpp"
#include "pools_test_util.hpp"

using namespace blockmig;
using namespace blockmig::lab;
using namespace blockmig::pools;
using namespace pools_test;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

std::uint64_t allocated_on_disk(const std::filesystem::path& file) {
    struct stat st {};
    if (stat(file.c_str(), &st) != 0) throw std::runtime_error("stat " + file.string());
    return std::uint64_t(st.st_blocks) * 512;
}

TEST(PoolsIscsi, ListsDiskLunsAndCapacityMatchesLunSizes) {
    LAB_REQUIRE();
    IscsiTarget target(48 * k_mib, 2);
    auto pool = open_pool(target.base_url(), {});
    ASSERT_TRUE(pool) << pool.error().message;
    auto list = (*pool)->list_volumes();
    ASSERT_TRUE(list) << list.error().message;
    ASSERT_EQ(list->size(), 2u) << "LUN 0 (the controller) is not a volume";
    EXPECT_EQ((*list)[0].name, "lun1");
    EXPECT_EQ((*list)[1].name, "lun2");
    for (const auto& v : *list) {
        EXPECT_EQ(v.virtual_size, std::filesystem::file_size(target.backing_file(1)));
        EXPECT_EQ(v.allocated_bytes, 0u);
    }
    auto cap = (*pool)->capacity();
    ASSERT_TRUE(cap) << cap.error().message;
    EXPECT_EQ(cap->total, 96 * k_mib);
    EXPECT_EQ(cap->free, 96 * k_mib);
    EXPECT_EQ((*pool)->url_of("lun2"), target.lun_url(2));
}

TEST(PoolsIscsi, PatternWrittenThroughPoolReadsBackThroughQemu) {
    LAB_REQUIRE();
    IscsiTarget target(32 * k_mib);
    TempDir local("pools-iscsi");
    auto pool = open_pool(target.base_url(), {});
    ASSERT_TRUE(pool) << pool.error().message;
    auto info = (*pool)->create("lun1", 32 * k_mib, ImageFormat::raw);
    ASSERT_TRUE(info) << info.error().message;
    auto volume = (*pool)->open("lun1", true);
    ASSERT_TRUE(volume);
    EXPECT_EQ((*volume)->block_size(), 512u);
    auto data = pattern(5 * k_mib, 0x21);
    ASSERT_TRUE((*volume)->pwrite(data, 2 * k_mib));
    ASSERT_TRUE((*volume)->flush());
    std::vector<std::byte> back(data.size());
    ASSERT_TRUE(read_full(**volume, back, 2 * k_mib));
    EXPECT_EQ(back, data);

    write_local_copy(local / "oracle.raw", 32 * k_mib, data, 2 * k_mib);
    run_ok({"qemu-img", "compare", "-f", "raw", "-F", "raw", (local / "oracle.raw").string(),
            target.lun_url(1)});
    auto chain = (*pool)->describe_for_qemu("lun1", {.node_prefix = "i1"});
    ASSERT_TRUE(chain) << chain.error().message;
    EXPECT_EQ(chain->protocol["driver"], "iscsi");
    EXPECT_EQ(chain->protocol["portal"], target.portal());
    EXPECT_EQ(chain->protocol["target"], target.iqn());
    EXPECT_EQ(chain->protocol["lun"], 1);
    run_ok({"qemu-img", "compare", "-F", "raw", json_filename(*chain),
            (local / "oracle.raw").string()});

    // The LUN now holds data: it is in use and no longer free.
    auto again = (*pool)->create("lun1", k_mib, ImageFormat::raw);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::already_exists);
    EXPECT_EQ((*pool)->capacity()->free, 0u);
    EXPECT_EQ((*pool)->create("", k_mib, ImageFormat::raw).error().code, ErrorCode::no_space);
}

TEST(PoolsIscsi, BlockStatusShowsHolesAndDiscardFreesBackingFile) {
    LAB_REQUIRE();
    IscsiTarget target(64 * k_mib);
    auto pool = open_pool(target.base_url(), {});
    ASSERT_TRUE(pool);
    auto volume = (*pool)->open("lun1", true);
    ASSERT_TRUE(volume);
    ASSERT_TRUE((*volume)->pwrite(pattern(16 * k_mib, 5), 16 * k_mib));
    ASSERT_TRUE((*volume)->flush());
    const std::uint64_t before = allocated_on_disk(target.backing_file(1));
    EXPECT_GE(before, 16 * k_mib);

    auto extents = (*volume)->block_status(0, 64 * k_mib);
    ASSERT_TRUE(extents) << extents.error().message;
    ASSERT_EQ(extents->size(), 3u);
    EXPECT_FALSE((*extents)[0].data);
    EXPECT_TRUE((*extents)[1].data);
    EXPECT_EQ((*extents)[1].offset, 16 * k_mib);
    EXPECT_EQ((*extents)[1].length, 16 * k_mib);
    EXPECT_FALSE((*extents)[2].data);
    EXPECT_EQ((*pool)->stat("lun1")->allocated_bytes, 16 * k_mib);

    ASSERT_TRUE((*volume)->discard(16 * k_mib, 8 * k_mib));
    ASSERT_TRUE((*volume)->flush());
    const std::uint64_t after = allocated_on_disk(target.backing_file(1));
    EXPECT_LE(after, before - 8 * k_mib) << "UNMAP must punch a hole in the backing file";

    ASSERT_TRUE((*volume)->write_zeroes(24 * k_mib, 4 * k_mib));
    EXPECT_LE(allocated_on_disk(target.backing_file(1)), before - 12 * k_mib)
        << "WRITE SAME with UNMAP";
    std::vector<std::byte> back(4 * k_mib, std::byte{1});
    ASSERT_TRUE(read_full(**volume, back, 24 * k_mib));
    EXPECT_EQ(back, std::vector<std::byte>(4 * k_mib));

    EXPECT_EQ((*volume)->pwrite(pattern(100, 1), 0).error().code, ErrorCode::invalid_argument)
        << "unaligned";
    EXPECT_EQ((*volume)->pwrite(pattern(512, 1), 64 * k_mib).error().code,
              ErrorCode::invalid_argument)
        << "past the end";
}

TEST(PoolsIscsi, DeleteDiscardsTheWholeLunAndMakesItUnusedAgain) {
    LAB_REQUIRE();
    IscsiTarget target(32 * k_mib, 2);
    auto pool = open_pool(target.base_url(), {});
    ASSERT_TRUE(pool);
    auto volume = (*pool)->open("lun2", true);
    ASSERT_TRUE(volume);
    ASSERT_TRUE((*volume)->pwrite(pattern(8 * k_mib, 8), 0));
    ASSERT_TRUE((*volume)->flush());
    EXPECT_EQ((*pool)->capacity()->free, 32 * k_mib);
    volume->reset();

    ASSERT_TRUE((*pool)->remove("lun2"));
    EXPECT_LT(allocated_on_disk(target.backing_file(2)), k_mib);
    EXPECT_EQ((*pool)->capacity()->free, 64 * k_mib);
    EXPECT_EQ((*pool)->remove("lun9").error().code, ErrorCode::not_found);
}

TEST(PoolsIscsi, Qcow2OnALunPassesQemuImgCheck) {
    LAB_REQUIRE();
    IscsiTarget target(64 * k_mib, 2);
    auto pool = open_pool(target.base_url(), {});
    ASSERT_TRUE(pool);
    auto too_big = (*pool)->create("lun1", 128 * k_mib, ImageFormat::qcow2);
    ASSERT_FALSE(too_big);
    EXPECT_EQ(too_big.error().code, ErrorCode::no_space);

    auto info = (*pool)->create("", 48 * k_mib, ImageFormat::qcow2);
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(info->name, "lun1");
    EXPECT_EQ(info->format, ImageFormat::qcow2);
    EXPECT_EQ(info->virtual_size, 48 * k_mib);
    std::string check = run_ok({"qemu-img", "check", "-f", "qcow2", target.lun_url(1)});
    EXPECT_NE(check.find("No errors were found"), std::string::npos) << check;
    auto chain = (*pool)->describe_for_qemu("lun1", {});
    ASSERT_TRUE(chain);
    EXPECT_EQ(chain->format["driver"], "qcow2");
    run_ok({"qemu-io", "-c", "write -P 0x99 0 1M", json_filename(*chain)});
    run_ok({"qemu-io", "-c", "read -P 0x99 0 1M", json_filename(*chain)});

    // lun1 is taken now; the next anonymous create claims lun2.
    auto next = (*pool)->create("", k_mib, ImageFormat::raw);
    ASSERT_TRUE(next) << next.error().message;
    EXPECT_EQ(next->name, "lun2");
}

TEST(PoolsIscsi, CliListsLunsAndFailsCleanlyOnBadTarget) {
    LAB_REQUIRE();
    IscsiTarget target(16 * k_mib);
    auto list = blockmig_cli({"--output", "json", "vol", "list", target.base_url()});
    ASSERT_EQ(list.status, 0) << list.out;
    EXPECT_NE(list.out.find("\"name\":\"lun1\""), std::string::npos) << list.out;
    auto info = blockmig_cli({"--output", "json", "vol", "info", target.lun_url(1)});
    ASSERT_EQ(info.status, 0) << info.out;
    EXPECT_NE(info.out.find("\"virtual_size\":16777216"), std::string::npos) << info.out;

    auto bad_iqn =
        blockmig_cli({"vol", "list", "iscsi://" + target.portal() + "/iqn.2024-01.no:such"});
    EXPECT_NE(bad_iqn.status, 0);
    EXPECT_NE(bad_iqn.out.find("blockmig: error: iscsi: login to iqn.2024-01.no:such"),
              std::string::npos)
        << bad_iqn.out;
    auto bad_lun = blockmig_cli({"vol", "info", target.base_url() + "/7"});
    EXPECT_NE(bad_lun.status, 0);
    EXPECT_NE(bad_lun.out.find("no disk LUN 7"), std::string::npos) << bad_lun.out;
}

// The measured bug behind these two: tgtd SIGKILLed during a move, and the
// rollback's LUN delete sat in libiscsi's REPORT LUNS forever.
TEST(PoolsIscsi, EveryCallAgainstAKilledTargetFailsWithinTheDeadline) {
    LAB_REQUIRE();
    IscsiTarget target(16 * k_mib, 2);
    PoolWithVolume rig;
    ASSERT_NO_FATAL_FAILURE(
        open_with_deadline(target.base_url(), "lun1", 16 * k_mib, ImageFormat::qcow2, rig));
    ASSERT_EQ(::kill(target.pid(), SIGKILL), 0);
    expect_each_fails_within(every_pool_call(*rig.pool, *rig.volume, "lun1", "lun2"), k_bound);
    expect_reopen_fails_within_bound(target.base_url());
}

TEST(PoolsIscsi, FrozenTargetTimesOutEachCallAndIsUsedAgainOnceItAnswers) {
    LAB_REQUIRE();
    IscsiTarget target(16 * k_mib, 2);
    PoolWithVolume rig;
    ASSERT_NO_FATAL_FAILURE(
        open_with_deadline(target.base_url(), "lun1", 16 * k_mib, ImageFormat::qcow2, rig));
    {
        Frozen frozen(target.pid());
        expect_each_fails_within(every_pool_call(*rig.pool, *rig.volume, "lun1", "lun2"), k_bound,
                                 ErrorCode::timeout);
        expect_reopen_fails_within_bound(target.base_url(), ErrorCode::timeout);
    }
    // The target answers again: the same pool logs in afresh and works.
    auto info = rig.pool->stat("lun1");
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(info->format, ImageFormat::qcow2);
    std::vector<std::byte> head(4096);
    ASSERT_TRUE(rig.volume->pread(head, 0));
    EXPECT_EQ(std::memcmp(head.data(), "QFI\xfb", 4), 0);
}

TEST(PoolsIscsi, ChapTargetAdmitsOnlyItsAccountAndQemuReadsTheSecretFromAFile) {
    LAB_REQUIRE();
    const std::string password = "chap-pw-7f3a91c2";
    IscsiTarget target(16 * k_mib, 1, "bmuser", password);
    const std::string hostpart = target.portal() + "/" + target.iqn();

    auto anonymous = open_pool("iscsi://" + hostpart, {});
    ASSERT_FALSE(anonymous) << "a CHAP target must refuse a login without CHAP";
    auto wrong = open_pool("iscsi://bmuser%not-the-password@" + hostpart, {});
    ASSERT_FALSE(wrong);
    EXPECT_EQ(wrong.error().message.find("not-the-password"), std::string::npos)
        << wrong.error().message;

    auto pool = open_pool("iscsi://bmuser%" + password + "@" + hostpart, {});
    ASSERT_TRUE(pool) << pool.error().message;
    EXPECT_EQ((*pool)->url().find(password), std::string::npos) << (*pool)->url();
    ASSERT_TRUE((*pool)->create("lun1", 16 * k_mib, ImageFormat::raw));
    auto volume = (*pool)->open("lun1", true);
    ASSERT_TRUE(volume);
    std::vector<std::byte> data(k_mib, std::byte{0x5c});
    ASSERT_TRUE((*volume)->pwrite(data, 0));
    ASSERT_TRUE((*volume)->flush());

    auto chain = (*pool)->describe_for_qemu("lun1", {});
    ASSERT_TRUE(chain) << chain.error().message;
    ASSERT_EQ(chain->secrets.size(), 1u);
    EXPECT_EQ(chain->protocol["user"], "bmuser");
    EXPECT_EQ(chain->protocol.dump().find(password), std::string::npos)
        << "the node names the secret, never the password";
    // QEMU logs in with the secret read from a 0600 file, not from argv.
    TempDir dir("chap");
    const auto secret_file = dir / "chap.secret";
    {
        std::ofstream out(secret_file);
        out << chain->secrets[0]["data"].get<std::string>();
    }
    std::filesystem::permissions(
        secret_file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    const std::string object =
        "secret,id=" + chain->secrets[0]["id"].get<std::string>() + ",file=" + secret_file.string();
    run_ok({"qemu-io", "--object", object, "-c", "read -P 0x5c 0 4k", json_filename(*chain)});
}

TEST(PoolsIscsi, ClaimMakesRawCreatesInARowChooseDistinctLuns) {
    LAB_REQUIRE();
    IscsiTarget target(16 * k_mib, 3);
    std::set<std::string> claimed;
    PoolsConfig config;
    config.options.claim = [&](const std::string& url) { return claimed.insert(url).second; };
    auto pool = open_pool(target.base_url(), config);
    ASSERT_TRUE(pool) << pool.error().message;
    // A raw create writes nothing: lun1 still reads as unused afterwards, so
    // only the claim keeps the second create off it.
    auto first = (*pool)->create("", 8 * k_mib, ImageFormat::raw);
    ASSERT_TRUE(first) << first.error().message;
    auto second = (*pool)->create("", 8 * k_mib, ImageFormat::raw);
    ASSERT_TRUE(second) << second.error().message;
    EXPECT_NE(first->name, second->name);
    EXPECT_EQ(claimed.size(), 2u);
    EXPECT_TRUE(claimed.count((*pool)->url_of(first->name)));
    EXPECT_TRUE(claimed.count((*pool)->url_of(second->name)));

    // A named create of a claimed LUN is refused; so is the last one once
    // the claim (say, another process's lock) refuses it.
    auto again = (*pool)->create(first->name, 8 * k_mib, ImageFormat::raw);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::already_exists);
    EXPECT_NE(again.error().message.find("claimed"), std::string::npos) << again.error().message;
    config.options.claim = [](const std::string&) { return false; };
    auto locked = open_pool(target.base_url(), config);
    ASSERT_TRUE(locked);
    auto none = (*locked)->create("", 8 * k_mib, ImageFormat::raw);
    ASSERT_FALSE(none);
    EXPECT_EQ(none.error().code, ErrorCode::no_space);
    EXPECT_NE(none.error().message.find("claimed"), std::string::npos) << none.error().message;
}

}  // namespace
