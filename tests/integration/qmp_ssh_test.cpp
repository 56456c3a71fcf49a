// QMP over ssh:// against a real sshd (tests/lab/sshd.sh: throw-away host and
// user keys, its own config) in front of a real QEMU monitor: the library
// transport and `blockmig qmp`, and each way it can fail as one clear line.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "lab.hpp"
#include "move_test_util.hpp"
#include "qmp/client.hpp"
#include "qmp_daemon.hpp"
#include "sshd.hpp"

using blockmig::lab::SshServer;
using blockmig::testing::QemuProcess;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// ssh processes this test's transports started (their -L names the socket).
std::vector<int> ssh_forwarding_to(const std::string& socket) {
    return move_test::processes_where([&](const std::string& cmdline) {
        return cmdline.starts_with("ssh ") && cmdline.find("blockmig-ssh-") != std::string::npos &&
               cmdline.find(socket) != std::string::npos;
    });
}

class QmpSsh : public ::testing::Test {
  protected:
    void SetUp() override {
        SSH_REQUIRE();
        qemu = std::make_unique<QemuProcess>(QemuProcess::Kind::system_none);
        sshd = std::make_unique<SshServer>("", "127.0.0.1");
        ::setenv("BLOCKMIG_SSH_CONFIG", sshd->client_config().c_str(), 1);
    }
    void TearDown() override { ::unsetenv("BLOCKMIG_SSH_CONFIG"); }

    blockmig::lab::CommandResult cli(std::vector<std::string> args) {
        return move_test::blockmig_cli(std::move(args));
    }

    // An ssh_config like the server's, with one line changed.
    fs::path config_with(const std::string& from, const std::string& to) {
        std::ifstream in(sshd->client_config());
        std::stringstream s;
        s << in.rdbuf();
        std::string text = s.str();
        text.replace(text.find(from), from.size(), to);
        fs::path out = sshd->dir() / ("variant" + std::to_string(++variants) + ".conf");
        std::ofstream(out) << text;
        return out;
    }

    std::unique_ptr<QemuProcess> qemu;
    std::unique_ptr<SshServer> sshd;
    int variants = 0;
};

TEST_F(QmpSsh, ClientTalksToTheMonitorBehindSshd) {
    auto c = blockmig::qmp::Client::connect(sshd->url(qemu->socket()));
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ((*c)->peer(), sshd->url(qemu->socket()));
    EXPECT_FALSE((*c)->peer_pid()) << "the local peer is ssh, not QEMU: unknown";
    auto status = (*c)->execute("query-status", {}, 10s);
    ASSERT_TRUE(status) << status.error().message;
    EXPECT_EQ(status->value("status", ""), "running") << "-machine none runs";
    EXPECT_EQ(ssh_forwarding_to(qemu->socket()).size(), 1u);
    // sshd saw the key this test made, nothing else.
    std::ifstream log(sshd->dir() / "sshd.log");
    std::stringstream l;
    l << log.rdbuf();
    EXPECT_NE(l.str().find("Accepted publickey for root from 127.0.0.1"), std::string::npos)
        << l.str();
    c->reset();
    EXPECT_TRUE(ssh_forwarding_to(qemu->socket()).empty()) << "the transport's ssh is gone";
}

TEST_F(QmpSsh, FdPassingFailsClearlyOverSsh) {
    auto c = blockmig::qmp::Client::connect(sshd->url(qemu->socket()));
    ASSERT_TRUE(c) << c.error().message;
    int fds[1] = {0};
    auto r = (*c)->execute_with_fds("getfd", {{"fdname", "x"}}, fds, 10s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, blockmig::ErrorCode::unsupported);
    EXPECT_NE(r.error().message.find("ssh://"), std::string::npos) << r.error().message;
    // The connection stays usable.
    EXPECT_TRUE((*c)->execute("query-status", {}, 10s));
}

TEST_F(QmpSsh, CliQueriesTheMonitorAndLeavesNoSshBehind) {
    auto r = cli({"qmp", sshd->url(qemu->socket()), "query-status"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find(R"("status": "running")"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("warning"), std::string::npos) << "ssh is not unauthenticated: " << r.out;
    EXPECT_TRUE(ssh_forwarding_to(qemu->socket()).empty());
}

TEST_F(QmpSsh, NoSuchSocketIsOneClearLine) {
    auto r = cli({"qmp", sshd->url("/run/no-such-dir/qmp.sock"), "query-status"});
    EXPECT_EQ(r.status, 1) << r.out;
    move_test::expect_one_error_line(r.out,
                                     {"sshd on 127.0.0.1 cannot open /run/no-such-dir/qmp.sock"});
}

TEST_F(QmpSsh, UnreachableSshdIsOneClearLine) {
    std::string url = sshd->url(qemu->socket());
    sshd->stop();
    auto r = cli({"qmp", url, "query-status"});
    EXPECT_EQ(r.status, 1) << r.out;
    move_test::expect_one_error_line(r.out, {"cannot reach sshd on 127.0.0.1"});
}

TEST_F(QmpSsh, UnknownKeyIsOneClearLine) {
    blockmig::lab::run_ok({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                           (sshd->dir() / "stranger_key").string()});
    fs::path config = config_with("IdentityFile " + (sshd->dir() / "user_key").string(),
                                  "IdentityFile " + (sshd->dir() / "stranger_key").string());
    ::setenv("BLOCKMIG_SSH_CONFIG", config.c_str(), 1);
    auto r = cli({"qmp", sshd->url(qemu->socket()), "query-status"});
    EXPECT_EQ(r.status, 1) << r.out;
    move_test::expect_one_error_line(r.out, {"authentication failed"});
}

TEST_F(QmpSsh, UntrustedHostKeyIsOneClearLine) {
    std::ofstream(sshd->dir() / "empty_known_hosts").flush();
    fs::path config =
        config_with("UserKnownHostsFile " + (sshd->dir() / "known_hosts").string(),
                    "UserKnownHostsFile " + (sshd->dir() / "empty_known_hosts").string());
    ::setenv("BLOCKMIG_SSH_CONFIG", config.c_str(), 1);
    auto r = cli({"qmp", sshd->url(qemu->socket()), "query-status"});
    EXPECT_EQ(r.status, 1) << r.out;
    move_test::expect_one_error_line(r.out, {"host key of 127.0.0.1 is not trusted"});
}

TEST_F(QmpSsh, TcpAddressWarnsOnceSshDoesNot) {
    auto r = cli({"qmp", "tcp:127.0.0.1:1", "query-status"});
    EXPECT_EQ(r.status, 1) << r.out;
    std::size_t warnings = 0;
    for (std::size_t at = 0; (at = r.out.find("unauthenticated TCP", at)) != std::string::npos;
         ++at)
        ++warnings;
    EXPECT_EQ(warnings, 1u) << r.out;
}

}  // namespace
