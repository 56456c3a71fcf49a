// The dir pool against real files and the real QEMU tools.
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

TEST(PoolsDir, PatternWrittenThroughPoolReadsBackThroughQemuChain) {
    LAB_REQUIRE();
    TempDir dir("pools");
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool) << pool.error().message;
    ASSERT_TRUE((*pool)->create("a.raw", 16 * k_mib, ImageFormat::raw));
    auto volume = (*pool)->open("a.raw", true);
    ASSERT_TRUE(volume);
    auto data = pattern(3 * k_mib, 0x5a);
    ASSERT_TRUE((*volume)->pwrite(data, 4 * k_mib));
    ASSERT_TRUE((*volume)->flush());

    write_local_copy(dir / "oracle.raw", 16 * k_mib, data, 4 * k_mib);
    run_ok({"qemu-img", "compare", "-f", "raw", "-F", "raw", (dir / "oracle.raw").string(),
            (*pool)->url_of("a.raw")});

    auto chain = (*pool)->describe_for_qemu("a.raw", {.node_prefix = "t1"});
    ASSERT_TRUE(chain) << chain.error().message;
    EXPECT_EQ(chain->protocol["aio"], "native");
    EXPECT_EQ(chain->format_node, "t1-fmt");
    run_ok(
        {"qemu-img", "compare", "-F", "raw", json_filename(*chain), (dir / "oracle.raw").string()});
}

TEST(PoolsDir, RenameMovesTheFileAndNeverReplacesOne) {
    LAB_REQUIRE();
    TempDir dir("pools");
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool) << pool.error().message;
    ASSERT_TRUE((*pool)->create("a.raw", k_mib, ImageFormat::raw));
    ASSERT_TRUE((*pool)->create("b.raw", 2 * k_mib, ImageFormat::raw));

    auto clash = (*pool)->rename("a.raw", "b.raw");
    ASSERT_FALSE(clash);
    EXPECT_EQ(clash.error().code, ErrorCode::already_exists);
    EXPECT_EQ(std::filesystem::file_size(dir / "a.raw"), k_mib);
    EXPECT_EQ(std::filesystem::file_size(dir / "b.raw"), 2 * k_mib);

    auto moved = (*pool)->rename("a.raw", "c.raw");
    ASSERT_TRUE(moved) << moved.error().message;
    EXPECT_FALSE(std::filesystem::exists(dir / "a.raw"));
    EXPECT_EQ(std::filesystem::file_size(dir / "c.raw"), k_mib);
    EXPECT_EQ((*pool)->rename("a.raw", "d.raw").error().code, ErrorCode::not_found);
    EXPECT_EQ((*pool)->rename("c.raw", "../d.raw").error().code, ErrorCode::invalid_argument);
}

TEST(PoolsDir, SparseVolumeReportsHolesAndDiscardFreesBlocks) {
    LAB_REQUIRE();
    TempDir dir("pools");
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool);
    ASSERT_TRUE((*pool)->create("s.raw", 64 * k_mib, ImageFormat::raw));
    auto volume = (*pool)->open("s.raw", true);
    ASSERT_TRUE(volume);
    ASSERT_TRUE((*volume)->pwrite(pattern(2 * k_mib, 1), 8 * k_mib));
    ASSERT_TRUE((*volume)->flush());
    auto extents = (*volume)->block_status(0, 64 * k_mib);
    ASSERT_TRUE(extents);
    ASSERT_EQ(extents->size(), 3u);
    EXPECT_FALSE((*extents)[0].data);
    EXPECT_TRUE((*extents)[1].data);
    EXPECT_EQ((*extents)[1].offset, 8 * k_mib);
    EXPECT_EQ((*extents)[1].length, 2 * k_mib);
    EXPECT_FALSE((*extents)[2].data);
    EXPECT_EQ((*pool)->stat("s.raw")->allocated_bytes, 2 * k_mib);

    ASSERT_TRUE((*volume)->discard(8 * k_mib, 2 * k_mib));
    EXPECT_EQ((*pool)->stat("s.raw")->allocated_bytes, 0u);
}

TEST(PoolsDir, EmptyQcow2PassesQemuImgCheckAndInfo) {
    LAB_REQUIRE();
    TempDir dir("pools");
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool);
    for (std::uint64_t size : {std::uint64_t{k_mib}, std::uint64_t{2} << 30}) {
        const std::string name = "e" + std::to_string(size) + ".qcow2";
        auto info = (*pool)->create(name, size, ImageFormat::qcow2);
        ASSERT_TRUE(info) << info.error().message;
        EXPECT_EQ(info->format, ImageFormat::qcow2);
        EXPECT_EQ(info->virtual_size, size);
        std::string check = run_ok({"qemu-img", "check", (*pool)->url_of(name)});
        EXPECT_NE(check.find("No errors were found"), std::string::npos) << check;
        std::string qinfo = run_ok({"qemu-img", "info", "--output=json", (*pool)->url_of(name)});
        EXPECT_NE(qinfo.find("\"virtual-size\": " + std::to_string(size)), std::string::npos)
            << qinfo;
        EXPECT_NE(qinfo.find("\"format\": \"qcow2\""), std::string::npos) << qinfo;
    }
    // QEMU can write to it through the described chain and the probe still agrees.
    auto chain = (*pool)->describe_for_qemu("e1048576.qcow2", {});
    ASSERT_TRUE(chain);
    EXPECT_EQ(chain->format["driver"], "qcow2");
    run_ok({"qemu-io", "-c", "write -P 0x33 0 64k", json_filename(*chain)});
    run_ok({"qemu-io", "-c", "read -P 0x33 0 64k", json_filename(*chain)});
    EXPECT_NE(run_ok({"qemu-img", "check", (*pool)->url_of("e1048576.qcow2")}).find("No errors"),
              std::string::npos);

    // Beyond 4 TiB the L1 table spans several clusters (create() itself
    // refuses sizes above the free space, so write onto an empty volume).
    ASSERT_TRUE((*pool)->create("huge.qcow2", 0, ImageFormat::raw));
    auto volume = (*pool)->open("huge.qcow2", true);
    ASSERT_TRUE(volume);
    ASSERT_TRUE(write_empty_qcow2(**volume, 9ull << 40));
    EXPECT_EQ((*volume)->size(), 6u * 65536);
    std::string check = run_ok({"qemu-img", "check", (*pool)->url_of("huge.qcow2")});
    EXPECT_NE(check.find("No errors were found"), std::string::npos) << check;
    EXPECT_EQ((*pool)->stat("huge.qcow2")->virtual_size, 9ull << 40);
}

TEST(PoolsDir, ProbeRecognisesImagesQemuImgMade) {
    LAB_REQUIRE();
    TempDir dir("pools");
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", (dir / "q").string(), "5G"});
    run_ok({"qemu-img", "create", "-q", "-f", "vmdk", (dir / "v").string(), "2G"});
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool);
    auto q = (*pool)->stat("q");
    auto v = (*pool)->stat("v");
    ASSERT_TRUE(q && v);
    EXPECT_EQ(q->format, ImageFormat::qcow2);
    EXPECT_EQ(q->virtual_size, 5ull << 30);
    EXPECT_EQ(v->format, ImageFormat::vmdk);
    EXPECT_EQ(v->virtual_size, 2ull << 30);
}

TEST(PoolsDir, CapacityMatchesStatvfs) {
    LAB_REQUIRE();
    TempDir dir("pools");
    auto pool = make_dir_pool(dir.path().string());
    ASSERT_TRUE(pool);
    auto cap = (*pool)->capacity();
    ASSERT_TRUE(cap);
    struct statvfs st {};
    ASSERT_EQ(statvfs(dir.path().c_str(), &st), 0);
    EXPECT_EQ(cap->total, std::uint64_t(st.f_blocks) * st.f_frsize);
    EXPECT_NEAR(double(cap->free), double(std::uint64_t(st.f_bavail) * st.f_frsize), 256.0 * k_mib);
}

TEST(PoolsDir, CliCreatesListsAndDeletesAndRefusesOverwrite) {
    LAB_REQUIRE();
    TempDir dir("pools");
    const std::string pools_file = (dir / "pools.toml").string();
    std::ofstream(pools_file) << "[pool.here]\ntype = \"dir\"\npath = \"" << (dir / "vols").string()
                              << "\"\n";
    std::filesystem::create_directory(dir / "vols");

    auto created = blockmig_cli({"--output", "json", "vol", "create", "here", "d.qcow2", "1G",
                                 "--format", "qcow2", "--pools", pools_file});
    ASSERT_EQ(created.status, 0) << created.out;
    auto record = nlohmann::json::parse(created.out, nullptr, false);
    ASSERT_FALSE(record.is_discarded()) << created.out;
    EXPECT_EQ(record["format"], "qcow2");
    EXPECT_EQ(record["virtual_size"], 1ull << 30);
    EXPECT_NE(run_ok({"qemu-img", "check", (dir / "vols" / "d.qcow2").string()}).find("No errors"),
              std::string::npos);

    auto again = blockmig_cli({"vol", "create", "here", "d.qcow2", "2G", "--pools", pools_file});
    EXPECT_NE(again.status, 0);
    EXPECT_NE(again.out.find("already exists"), std::string::npos) << again.out;
    EXPECT_EQ(std::filesystem::file_size(dir / "vols" / "d.qcow2"),
              empty_qcow2_file_size(1ull << 30));

    auto list = blockmig_cli({"--output", "json", "vol", "list", "here", "--pools", pools_file});
    ASSERT_EQ(list.status, 0) << list.out;
    EXPECT_NE(list.out.find("\"name\":\"d.qcow2\""), std::string::npos) << list.out;

    auto pools = blockmig_cli({"--output", "json", "pool", "list", "--pools", pools_file});
    ASSERT_EQ(pools.status, 0) << pools.out;
    EXPECT_NE(pools.out.find("\"name\":\"here\""), std::string::npos) << pools.out;

    auto info =
        blockmig_cli({"--output", "json", "vol", "info", "here:d.qcow2", "--pools", pools_file});
    ASSERT_EQ(info.status, 0) << info.out;
    EXPECT_NE(info.out.find("\"format\":\"qcow2\""), std::string::npos) << info.out;

    auto del = blockmig_cli({"vol", "delete", "here:d.qcow2", "--pools", pools_file});
    ASSERT_EQ(del.status, 0) << del.out;
    EXPECT_FALSE(std::filesystem::exists(dir / "vols" / "d.qcow2"));
}

TEST(PoolsDir, CliBadInputGivesOneErrorLineAndCreatesNothing) {
    LAB_REQUIRE();
    TempDir dir("pools");
    struct Case {
        std::vector<std::string> args;
        std::string needle;
    } cases[] = {
        {{"vol", "create", dir.path().string(), "x", "12Q"}, "size '12Q'"},
        {{"vol", "create", (dir / "missing").string(), "x", "1M"}, "does not exist"},
        {{"vol", "create", "nopool", "x", "1M"}, "unknown pool 'nopool'"},
        {{"vol", "list", "nfs://"}, "nfs://"},
        {{"vol", "info", "iscsi://127.0.0.1:1/iqn.x/1"}, "iscsi: connect 127.0.0.1:1"},
        {{"pool", "info", "nfs://127.0.0.1/export?version=9"}, "version must be 3 or 4"},
        {{"vol", "list", "/x", "--pools", (dir / "none.toml").string()}, "none.toml"},
    };
    for (const auto& c : cases) {
        auto r = blockmig_cli(c.args);
        EXPECT_NE(r.status, 0) << c.args[1];
        EXPECT_NE(r.out.find("blockmig: error: "), std::string::npos) << r.out;
        EXPECT_NE(r.out.find(c.needle), std::string::npos) << r.out;
    }
    EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "nothing may be created";
}

}  // namespace
