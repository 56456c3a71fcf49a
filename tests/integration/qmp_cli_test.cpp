// `blockmig qmp` end to end: the real binary against qemu-storage-daemon.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "lab.hpp"
#include "qmp_daemon.hpp"

using blockmig::testing::QemuProcess;

namespace {

blockmig::lab::CommandResult blockmig_cli(std::vector<std::string> args) {
    args.insert(args.begin(), BLOCKMIG_BINARY);
    return blockmig::lab::run(args);
}

}  // namespace

TEST(QmpCli, PrintsReturnValueAsJson) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto r = blockmig_cli({"--output", "json", "qmp", qsd.socket(), "query-version"});
    ASSERT_EQ(r.status, 0) << r.out;
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    // The lab's QEMU: Debian 12's 7.2, or 10.0 with BLOCKMIG_QEMU=10.
    const char* flavour = std::getenv("BLOCKMIG_QEMU");
    EXPECT_EQ(j["qemu"]["major"], flavour && std::string(flavour) == "10" ? 10 : 7);
}

TEST(QmpCli, PassesArgumentsAndFailsWithQemuErrorLine) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto bad = blockmig_cli({"qmp", qsd.socket(), "no-such-command"});
    EXPECT_EQ(bad.status, 1) << bad.out;
    EXPECT_NE(
        bad.out.find(
            "blockmig: error: CommandNotFound: The command no-such-command has not been found"),
        std::string::npos)
        << bad.out;
    auto del = blockmig_cli({"qmp", qsd.socket(), "blockdev-del", R"({"node-name": "nope"})"});
    EXPECT_EQ(del.status, 1);
    EXPECT_NE(del.out.find("blockmig: error: GenericError: "), std::string::npos) << del.out;
}

TEST(QmpCli, RejectsMalformedArgumentsClearly) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto r = blockmig_cli({"qmp", qsd.socket(), "query-version", "{not json"});
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("must be a JSON object"), std::string::npos) << r.out;
    auto missing = blockmig_cli({"qmp", (qsd.dir() / "absent.sock").string(), "query-version"});
    EXPECT_EQ(missing.status, 1);
    EXPECT_NE(missing.out.find("absent.sock"), std::string::npos) << missing.out;
}

TEST(QmpCli, EventsModeStopsAtTimeout) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto start = std::chrono::steady_clock::now();
    auto r = blockmig_cli({"qmp", qsd.socket(), "--events", "--timeout", "0.5"});
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(450));
}
