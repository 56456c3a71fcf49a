// The NFS pool against a real nfs-ganesha (NFSv3, and v4 where libnfs can).
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

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

TEST(PoolsNfs, CreateWriteListReadBackThroughQemuAndDelete) {
    LAB_REQUIRE();
    NfsServer nfs;
    TempDir local("pools-nfs");
    auto pool = open_pool(nfs.url(), {});
    ASSERT_TRUE(pool) << pool.error().message;
    EXPECT_EQ((*pool)->type(), "nfs");

    auto info = (*pool)->create("a.raw", 16 * k_mib, ImageFormat::raw);
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(info->virtual_size, 16 * k_mib);
    EXPECT_EQ(std::filesystem::file_size(nfs.export_dir() / "a.raw"), 16 * k_mib);

    auto volume = (*pool)->open("a.raw", true);
    ASSERT_TRUE(volume) << volume.error().message;
    auto data = pattern(3 * k_mib + 4096, 0x77);
    ASSERT_TRUE((*volume)->pwrite(data, 5 * k_mib));
    ASSERT_TRUE((*volume)->flush());
    std::vector<std::byte> back(data.size());
    ASSERT_TRUE(read_full(**volume, back, 5 * k_mib));
    EXPECT_EQ(back, data);

    write_local_copy(local / "oracle.raw", 16 * k_mib, data, 5 * k_mib);
    EXPECT_EQ((*pool)->url_of("a.raw"), "nfs://127.0.0.1/export/a.raw");
    run_ok({"qemu-img", "compare", "-f", "raw", "-F", "raw", (local / "oracle.raw").string(),
            (*pool)->url_of("a.raw")});
    // And through the exact blockdev chain a live move would hand QEMU.
    auto chain = (*pool)->describe_for_qemu("a.raw", {.node_prefix = "n1"});
    ASSERT_TRUE(chain) << chain.error().message;
    EXPECT_EQ(chain->protocol["driver"], "nfs");
    EXPECT_EQ(chain->protocol["server"]["host"], "127.0.0.1");
    EXPECT_EQ(chain->protocol["path"], "/export/a.raw");
    run_ok({"qemu-img", "compare", "-F", "raw", json_filename(*chain),
            (local / "oracle.raw").string()});

    auto list = (*pool)->list_volumes();
    ASSERT_TRUE(list) << list.error().message;
    ASSERT_EQ(list->size(), 1u);
    EXPECT_EQ((*list)[0].name, "a.raw");

    auto again = (*pool)->create("a.raw", k_mib, ImageFormat::raw);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::already_exists);
    EXPECT_EQ(std::filesystem::file_size(nfs.export_dir() / "a.raw"), 16 * k_mib);

    volume->reset();
    ASSERT_TRUE((*pool)->remove("a.raw"));
    EXPECT_FALSE(std::filesystem::exists(nfs.export_dir() / "a.raw"));
    EXPECT_EQ((*pool)->stat("a.raw").error().code, ErrorCode::not_found);
}

TEST(PoolsNfs, RenameMovesTheFileAndNeverReplacesOne) {
    LAB_REQUIRE();
    NfsServer nfs;
    auto pool = open_pool(nfs.url(), {});
    ASSERT_TRUE(pool) << pool.error().message;
    ASSERT_TRUE((*pool)->create("a.raw", k_mib, ImageFormat::raw));
    ASSERT_TRUE((*pool)->create("b.raw", 2 * k_mib, ImageFormat::raw));

    auto clash = (*pool)->rename("a.raw", "b.raw");
    ASSERT_FALSE(clash);
    EXPECT_EQ(clash.error().code, ErrorCode::already_exists);
    EXPECT_EQ(std::filesystem::file_size(nfs.export_dir() / "a.raw"), k_mib);
    EXPECT_EQ(std::filesystem::file_size(nfs.export_dir() / "b.raw"), 2 * k_mib);

    auto moved = (*pool)->rename("a.raw", ".c.raw");
    ASSERT_TRUE(moved) << moved.error().message;
    EXPECT_FALSE(std::filesystem::exists(nfs.export_dir() / "a.raw"));
    EXPECT_EQ(std::filesystem::file_size(nfs.export_dir() / ".c.raw"), k_mib);
    EXPECT_EQ((*pool)->rename("a.raw", "d.raw").error().code, ErrorCode::not_found);
}

TEST(PoolsNfs, EmptyQcow2CreatedOverNfsPassesQemuImgCheck) {
    LAB_REQUIRE();
    NfsServer nfs;
    auto pool = open_pool(nfs.url(), {});
    ASSERT_TRUE(pool) << pool.error().message;
    auto info = (*pool)->create("d.qcow2", 20ull << 30, ImageFormat::qcow2);
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(info->format, ImageFormat::qcow2);
    EXPECT_EQ(info->virtual_size, 20ull << 30);
    std::string check = run_ok({"qemu-img", "check", (*pool)->url_of("d.qcow2")});
    EXPECT_NE(check.find("No errors were found"), std::string::npos) << check;
    std::string qinfo = run_ok({"qemu-img", "info", "--output=json", (*pool)->url_of("d.qcow2")});
    EXPECT_NE(qinfo.find("\"virtual-size\": 21474836480"), std::string::npos) << qinfo;

    auto chain = (*pool)->describe_for_qemu("d.qcow2", {});
    ASSERT_TRUE(chain);
    EXPECT_EQ(chain->format["driver"], "qcow2");
    run_ok({"qemu-io", "-c", "write -P 0x42 1M 256k", json_filename(*chain)});
    run_ok({"qemu-io", "-c", "read -P 0x42 1M 256k", json_filename(*chain)});
}

TEST(PoolsNfs, BlockStatusReportsAllDataAndAllocationComesFromTheServer) {
    LAB_REQUIRE();
    NfsServer nfs;
    auto pool = open_pool(nfs.url(), {});
    ASSERT_TRUE(pool);
    ASSERT_TRUE((*pool)->create("s.raw", 32 * k_mib, ImageFormat::raw));
    auto volume = (*pool)->open("s.raw", true);
    ASSERT_TRUE(volume);
    ASSERT_TRUE((*volume)->pwrite(pattern(k_mib, 3), 8 * k_mib));
    ASSERT_TRUE((*volume)->flush());
    // Server side: the file is sparse.
    struct stat st {};
    ASSERT_EQ(stat((nfs.export_dir() / "s.raw").c_str(), &st), 0);
    EXPECT_LT(std::uint64_t(st.st_blocks) * 512, 4 * k_mib);
    EXPECT_LT((*pool)->stat("s.raw")->allocated_bytes, 4 * k_mib)
        << "allocation comes from fattr3.used";

    for (std::string url : {nfs.url(), nfs.url() + "?version=4"}) {
        auto p = open_pool(url, {});
        ASSERT_TRUE(p) << p.error().message;
        auto v = (*p)->open("s.raw", false);
        ASSERT_TRUE(v) << v.error().message;
        auto extents = (*v)->block_status(0, 32 * k_mib);
        ASSERT_TRUE(extents) << extents.error().message;
        ASSERT_FALSE(extents->empty());
        // libnfs cannot see holes: one data extent, never a hole over data.
        ASSERT_EQ(extents->size(), 1u) << url;
        EXPECT_EQ((*extents)[0].offset, 0u);
        EXPECT_EQ((*extents)[0].length, 32 * k_mib);
        EXPECT_TRUE((*extents)[0].data);
    }
}

TEST(PoolsNfs, CapacityMatchesTheExportFilesystem) {
    LAB_REQUIRE();
    NfsServer nfs;
    auto pool = open_pool(nfs.url(), {});
    ASSERT_TRUE(pool);
    auto cap = (*pool)->capacity();
    ASSERT_TRUE(cap) << cap.error().message;
    struct statvfs st {};
    ASSERT_EQ(statvfs(nfs.export_dir().c_str(), &st), 0);
    EXPECT_EQ(cap->total, std::uint64_t(st.f_blocks) * st.f_frsize);
    // Other tests write to the same disk meanwhile: allow some drift.
    EXPECT_NEAR(double(cap->free), double(std::uint64_t(st.f_bavail) * st.f_frsize), 512.0 * k_mib);
}

TEST(PoolsNfs, Nfsv4PoolReadsButRefusesWritesAndQemuDescription) {
    LAB_REQUIRE();
    NfsServer nfs;
    auto v3 = open_pool(nfs.url(), {});
    ASSERT_TRUE(v3) << v3.error().message;
    ASSERT_TRUE((*v3)->create("v4.raw", 4 * k_mib, ImageFormat::raw));
    auto writer = (*v3)->open("v4.raw", true);
    ASSERT_TRUE(writer);
    auto data = pattern(k_mib, 9);
    ASSERT_TRUE((*writer)->pwrite(data, k_mib));
    ASSERT_TRUE((*writer)->flush());

    auto pool = open_pool(nfs.url() + "?version=4", {});
    ASSERT_TRUE(pool) << pool.error().message;
    auto volume = (*pool)->open("v4.raw", false);
    ASSERT_TRUE(volume) << volume.error().message;
    std::vector<std::byte> back(data.size());
    ASSERT_TRUE(read_full(**volume, back, k_mib));
    EXPECT_EQ(back, data);
    auto list = (*pool)->list_volumes();
    ASSERT_TRUE(list) << list.error().message;
    ASSERT_EQ(list->size(), 1u);
    EXPECT_EQ((*list)[0].virtual_size, 4 * k_mib);

    EXPECT_EQ((*pool)->open("v4.raw", true).error().code, ErrorCode::unsupported);
    EXPECT_EQ((*pool)->create("new.raw", k_mib, ImageFormat::raw).error().code,
              ErrorCode::unsupported);
    EXPECT_FALSE(std::filesystem::exists(nfs.export_dir() / "new.raw"));
    EXPECT_EQ((*pool)->describe_for_qemu("v4.raw", {}).error().code, ErrorCode::unsupported);
}

TEST(PoolsNfs, CliWorksAgainstTheServerAndFailsCleanlyWhenItIsGone) {
    LAB_REQUIRE();
    NfsServer nfs;
    auto created = blockmig_cli({"--output", "json", "vol", "create", nfs.url(), "c.raw", "8M"});
    ASSERT_EQ(created.status, 0) << created.out;
    EXPECT_TRUE(std::filesystem::exists(nfs.export_dir() / "c.raw"));
    auto info = blockmig_cli({"--output", "json", "vol", "info", nfs.url() + "/c.raw"});
    ASSERT_EQ(info.status, 0) << info.out;
    EXPECT_NE(info.out.find("\"virtual_size\":8388608"), std::string::npos) << info.out;
    auto pinfo = blockmig_cli({"--output", "json", "pool", "info", nfs.url()});
    ASSERT_EQ(pinfo.status, 0) << pinfo.out;
    EXPECT_NE(pinfo.out.find("\"reachable\":true"), std::string::npos) << pinfo.out;
    auto del = blockmig_cli({"vol", "delete", nfs.url() + "/c.raw"});
    ASSERT_EQ(del.status, 0) << del.out;
    EXPECT_FALSE(std::filesystem::exists(nfs.export_dir() / "c.raw"));

    auto missing_export = blockmig_cli({"vol", "list", "nfs://127.0.0.1/no-such-export"});
    EXPECT_NE(missing_export.status, 0);
    EXPECT_NE(missing_export.out.find("blockmig: error: nfs: mount 127.0.0.1:/no-such-export"),
              std::string::npos)
        << missing_export.out;

    nfs.stop();
    auto gone = blockmig_cli({"vol", "create", nfs.url(), "x.raw", "1M"});
    EXPECT_NE(gone.status, 0);
    EXPECT_NE(gone.out.find("blockmig: error: nfs: mount 127.0.0.1:/export"), std::string::npos)
        << gone.out;
    EXPECT_FALSE(std::filesystem::exists(nfs.export_dir() / "x.raw"));
}

TEST(PoolsNfs, EveryCallAgainstAKilledServerFailsWithinTheDeadline) {
    LAB_REQUIRE();
    NfsServer nfs;
    PoolWithVolume rig;
    ASSERT_NO_FATAL_FAILURE(
        open_with_deadline(nfs.url(), "a.raw", 4 * k_mib, ImageFormat::raw, rig));
    ASSERT_EQ(::kill(nfs.pid(), SIGKILL), 0);
    expect_each_fails_within(every_pool_call(*rig.pool, *rig.volume, "a.raw", "b.raw"), k_bound);
    expect_reopen_fails_within_bound(nfs.url());
}

TEST(PoolsNfs, FrozenServerTimesOutEachCall) {
    LAB_REQUIRE();
    NfsServer nfs;
    PoolWithVolume rig;
    ASSERT_NO_FATAL_FAILURE(
        open_with_deadline(nfs.url(), "a.raw", 4 * k_mib, ImageFormat::raw, rig));
    Frozen frozen(nfs.pid());
    expect_each_fails_within(every_pool_call(*rig.pool, *rig.volume, "a.raw", "b.raw"), k_bound,
                             ErrorCode::timeout);
    expect_reopen_fails_within_bound(nfs.url(), ErrorCode::timeout);
}

}  // namespace
