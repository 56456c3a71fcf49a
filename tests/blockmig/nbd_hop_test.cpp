// The storage daemon's command line carries no secret: CHAP passwords travel
// in memfds the daemon inherits.
#include "mirror/nbd_hop.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

using blockmig::DaemonSecrets;
using blockmig::storage_daemon_arguments;
using nlohmann::json;

namespace {

const json k_node = {{"driver", "iscsi"},
                     {"node-name", "bm0-proto"},
                     {"portal", "127.0.0.1:3260"},
                     {"target", "iqn.2024-01.lab:t"},
                     {"lun", 1},
                     {"user", "alice"},
                     {"password-secret", "bm0-chap"}};

TEST(NbdHop, DaemonArgumentsCarrySecretsByFileNotByValue) {
    auto secrets = DaemonSecrets::prepare(
        {{{"qom-type", "secret"}, {"id", "bm0-chap"}, {"data", "s3cr3t-chap-pw"}}});
    ASSERT_TRUE(secrets) << secrets.error().message;
    auto args = storage_daemon_arguments("/run/bm/nbd.sock", k_node, *secrets);
    std::string all;
    for (const auto& a : args) all += a + '\n';
    EXPECT_EQ(all.find("s3cr3t-chap-pw"), std::string::npos) << all;
    ASSERT_EQ(args.at(0), "--object");
    json object = json::parse(args.at(1));
    EXPECT_EQ(object["id"], "bm0-chap");
    EXPECT_FALSE(object.contains("data"));
    // The file it names holds the password (here: readable in this process,
    // as /proc/self/fd/N will be in the daemon that inherits the fd).
    const std::string file = object["file"];
    ASSERT_EQ(secrets->fds().size(), 1u);
    EXPECT_EQ(file, "/proc/self/fd/" + std::to_string(secrets->fds()[0]));
    std::ifstream in(file);
    std::stringstream value;
    value << in.rdbuf();
    EXPECT_EQ(value.str(), "s3cr3t-chap-pw");
    EXPECT_NE(all.find("\"password-secret\":\"bm0-chap\""), std::string::npos) << all;
    EXPECT_NE(all.find("addr.path=/run/bm/nbd.sock"), std::string::npos);
    EXPECT_NE(all.find("node-name=bm0-proto"), std::string::npos);
}

TEST(NbdHop, SecretsWithoutDataPassThroughAndNoFdIsOpened) {
    const json by_file = {{"qom-type", "secret"}, {"id", "k"}, {"file", "/etc/keys/k"}};
    auto secrets = DaemonSecrets::prepare({by_file});
    ASSERT_TRUE(secrets);
    EXPECT_TRUE(secrets->fds().empty());
    ASSERT_EQ(secrets->objects().size(), 1u);
    EXPECT_EQ(secrets->objects()[0], by_file);
}

TEST(NbdHop, SecretWithoutIdIsRefused) {
    auto secrets = DaemonSecrets::prepare({{{"qom-type", "secret"}, {"data", "x"}}});
    ASSERT_FALSE(secrets);
    EXPECT_EQ(secrets.error().code, blockmig::ErrorCode::invalid_argument);
}

}  // namespace
