#include "pools/address.hpp"

#include <fmt/core.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

using namespace blockmig;
using namespace blockmig::pools;

namespace {

namespace fs = std::filesystem;

constexpr std::string_view k_good = R"(
[pool.nas]
type = "nfs"
url = "nfs://10.0.0.5/export/vms"

[pool.local]
type = "dir"
path = "/var/lib/images"

[pool.san]
type = "iscsi"
url = "iscsi://10.0.0.6:3260/iqn.2024-01.example:storage"
)";

class TempDir {
  public:
    TempDir() {
        char tmpl[] = "/tmp/pools-address-XXXXXX";
        m_path = mkdtemp(tmpl);
    }
    ~TempDir() { fs::remove_all(m_path); }
    const fs::path& path() const { return m_path; }

  private:
    fs::path m_path;
};

TEST(PoolsConfig, ParsesNamedPoolsOfEveryType) {
    auto config = parse_pools_config(k_good, "pools.toml");
    ASSERT_TRUE(config) << config.error().message;
    ASSERT_EQ(config->pools.size(), 3u);
    EXPECT_EQ(config->pools.at("nas").type, "nfs");
    EXPECT_EQ(config->pools.at("nas").location, "nfs://10.0.0.5/export/vms");
    EXPECT_EQ(config->pools.at("local").location, "/var/lib/images");
    EXPECT_EQ(config->pools.at("san").type, "iscsi");
    EXPECT_EQ(config->source, "pools.toml");
}

TEST(PoolsConfig, RejectsBadFilesWithOneLineNamingThePlace) {
    struct Case {
        const char* text;
        const char* needle;
    } cases[] = {
        {"[pool.a\ntype = \"dir\"", "pools.toml:1"},
        {"[pool.a]\ntype = \"ceph\"\nurl = \"x\"", "unknown type"},
        {"[pool.a]\npath = \"/x\"", "missing 'type'"},
        {"[pool.a]\ntype = \"dir\"", "needs 'path'"},
        {"[pool.a]\ntype = \"nfs\"\npath = \"/x\"", "needs 'url'"},
        {"[pool.a]\ntype = \"nfs\"\nurl = \"iscsi://h/iqn\"", "must start with nfs://"},
        {"[pool.nfs]\ntype = \"dir\"\npath = \"/x\"", "reserved"},
        {"[pool.file]\ntype = \"dir\"\npath = \"/x\"", "reserved"},
        {"[pool.a]\ntype = \"dir\"\npath = \"/x\"\ncolour = \"red\"", "unknown key 'colour'"},
        {"[pool.a]\ntype = 3\npath = \"/x\"", "must be a string"},
        {"[pools.a]\ntype = \"dir\"", "unknown top-level key"},
        {"pool = 1", "must be a table"},
    };
    for (const auto& c : cases) {
        auto r = parse_pools_config(c.text, "pools.toml");
        ASSERT_FALSE(r) << c.text;
        EXPECT_EQ(r.error().code, ErrorCode::invalid_argument) << c.text;
        EXPECT_NE(r.error().message.find(c.needle), std::string::npos) << r.error().message;
        EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
    }
}

TEST(PoolsConfig, ExplicitFileMustExistAndEnvironmentIsUsed) {
    auto missing = load_pools_config("/nonexistent/pools.toml");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, ErrorCode::not_found);
    EXPECT_NE(missing.error().message.find("/nonexistent/pools.toml"), std::string::npos);

    TempDir dir;
    const auto file = dir.path() / "p.toml";
    std::ofstream(file) << k_good;
    setenv("BLOCKMIG_POOLS", file.c_str(), 1);
    auto config = load_pools_config(std::nullopt);
    unsetenv("BLOCKMIG_POOLS");
    ASSERT_TRUE(config) << config.error().message;
    EXPECT_EQ(config->source, file.string());
    EXPECT_EQ(config->pools.size(), 3u);
}

TEST(OpenPool, InlineDirectoryAndNamedDirPool) {
    TempDir dir;
    auto inline_pool = open_pool(dir.path().string(), {});
    ASSERT_TRUE(inline_pool) << inline_pool.error().message;
    EXPECT_EQ((*inline_pool)->type(), "dir");
    EXPECT_EQ((*inline_pool)->url(), dir.path().string());

    auto config = parse_pools_config(
        fmt::format("[pool.here]\ntype = \"dir\"\npath = \"{}\"\n", dir.path().string()), "t.toml");
    ASSERT_TRUE(config);
    auto named = open_pool("here", *config);
    ASSERT_TRUE(named);
    EXPECT_EQ((*named)->url(), dir.path().string());
}

TEST(OpenPool, BadSpecsFailClearlyWithoutNetwork) {
    struct Case {
        const char* spec;
        ErrorCode code;
        const char* needle;
    } cases[] = {
        {"nas", ErrorCode::not_found, "unknown pool 'nas'"},
        {"/nonexistent/dir", ErrorCode::not_found, "/nonexistent/dir"},
        {"ftp://h/x", ErrorCode::invalid_argument, "unknown URL scheme"},
        {"nfs://host", ErrorCode::invalid_argument, "missing export path"},
        {"nfs://", ErrorCode::invalid_argument, "nfs://"},
        {"nfs://u@host/export", ErrorCode::invalid_argument, "no user or port"},
        {"nfs://host/export?version=5", ErrorCode::invalid_argument, "version must be 3 or 4"},
        {"nfs://host/export?foo=1", ErrorCode::invalid_argument, "unknown URL parameter 'foo'"},
        {"nfs://host/export?uid=x", ErrorCode::invalid_argument, "bad value for uid"},
        {"iscsi://host", ErrorCode::invalid_argument, "iscsi://host[:port]/iqn"},
        {"iscsi://host:99999/iqn.x", ErrorCode::invalid_argument, "bad port"},
        {"iscsi://host/iqn.x/1", ErrorCode::invalid_argument, "exactly one target name"},
        {"iscsi://nopass@host/iqn.x", ErrorCode::invalid_argument, "user%password"},
    };
    for (const auto& c : cases) {
        auto r = open_pool(c.spec, {});
        ASSERT_FALSE(r) << c.spec;
        EXPECT_EQ(r.error().code, c.code) << c.spec << ": " << r.error().message;
        EXPECT_NE(r.error().message.find(c.needle), std::string::npos) << r.error().message;
    }
}

TEST(ResolveVolume, FilePathSplitsIntoDirectoryPoolAndName) {
    TempDir dir;
    auto ref = resolve_volume((dir.path() / "disk.raw").string(), {});
    ASSERT_TRUE(ref) << ref.error().message;
    EXPECT_EQ(ref->pool->type(), "dir");
    EXPECT_EQ(ref->pool->url(), dir.path().string());
    EXPECT_EQ(ref->name, "disk.raw");

    auto with_scheme = resolve_volume("file:" + (dir.path() / "x").string(), {});
    ASSERT_TRUE(with_scheme);
    EXPECT_EQ(with_scheme->name, "x");
}

TEST(ResolveVolume, PoolColonNameUsesTheNamedPool) {
    TempDir dir;
    auto config = parse_pools_config(
        fmt::format("[pool.here]\ntype = \"dir\"\npath = \"{}\"\n", dir.path().string()), "t.toml");
    ASSERT_TRUE(config);
    auto ref = resolve_volume("here:vm1.qcow2", *config);
    ASSERT_TRUE(ref) << ref.error().message;
    EXPECT_EQ(ref->name, "vm1.qcow2");
    EXPECT_EQ(ref->pool->url_of(ref->name), (dir.path() / "vm1.qcow2").string());
}

TEST(ResolveVolume, BadSpecsFailClearlyWithoutNetwork) {
    struct Case {
        const char* spec;
        ErrorCode code;
        const char* needle;
    } cases[] = {
        {"nas:disk", ErrorCode::not_found, "unknown pool 'nas'"},
        {"nfs:disk", ErrorCode::invalid_argument, "reserved"},
        {"iscsi:disk", ErrorCode::invalid_argument, "reserved"},
        {"here:", ErrorCode::invalid_argument, "missing volume name"},
        {"nfs://host/export", ErrorCode::invalid_argument, "nfs://host/export[/dir]/file"},
        {"iscsi://host/iqn.x", ErrorCode::invalid_argument, "iscsi://host[:port]/iqn/lun"},
        {"iscsi://host/iqn.x/lunx", ErrorCode::invalid_argument, "iscsi://host[:port]/iqn/lun"},
        {"gopher://h/x", ErrorCode::invalid_argument, "unknown URL scheme"},
        {"/nonexistent/dir/disk.raw", ErrorCode::not_found, "/nonexistent/dir"},
        {"", ErrorCode::invalid_argument, "empty"},
    };
    for (const auto& c : cases) {
        auto r = resolve_volume(c.spec, {});
        ASSERT_FALSE(r) << c.spec;
        EXPECT_EQ(r.error().code, c.code) << c.spec << ": " << r.error().message;
        EXPECT_NE(r.error().message.find(c.needle), std::string::npos) << r.error().message;
    }
}

}  // namespace
