// blockmig migrate with the destination's monitor reached over ssh://, as an
// admin on host A reaches host B: blockmig runs inside lab host A's network
// namespace, sshd (throw-away keys, tests/lab/sshd.sh) inside host B's, the
// destination QMP socket is a path on B, and only the lab link joins them.
// --copy-storage all: the guest's blocks go over NBD to B's own disk file.
#include <gtest/gtest.h>

#include "move_test_util.hpp"
#include "sshd.hpp"

using namespace move_test;
using blockmig::lab::HostPair;
using blockmig::lab::SshServer;

namespace {

constexpr std::uint64_t k_blocks = 4096;  // 16 MiB stamped

class MigrateSsh : public ::testing::Test {
  protected:
    void SetUp() override {
        LAB_REQUIRE();
        if (auto why = SshServer::missing_prerequisite(); !why.empty()) {
            if (blockmig::lab::running_in_ci()) FAIL() << "lab unavailable in CI: " << why;
            GTEST_SKIP() << "lab unavailable: " << why;
        }
        hosts = std::make_unique<HostPair>("200mbit");
        sshd = std::make_unique<SshServer>(hosts->ns_b(), HostPair::k_addr_b, 2222);
        blockmig::lab::run_ok({"truncate", "-s", "32M", src_disk.string()});
        blockmig::lab::run_ok({"truncate", "-s", "32M", dst_disk.string()});
        GuestConfig config{.disks = {{"disk0", src_disk, "raw"}},
                           .stamp_blocks = k_blocks,
                           .netns = hosts->ns_a()};
        src = std::make_unique<Guest>(config);
        ASSERT_TRUE(src->wait_for_line("GUEST-UP", 120s)) << src->console();
        ASSERT_TRUE(src->wait_for_ack("vda", 1, 120s)) << src->console();
        GuestConfig other = config;
        other.disks[0].path = dst_disk;
        dst = std::make_unique<Guest>(blockmig::lab::incoming_config(other, hosts->ns_b()));
    }

    // blockmig on host A, with the test's ssh identity and known_hosts.
    SplitResult on_host_a(std::vector<std::string> args) {
        std::vector<std::string> argv{
            "ip",          "netns", "exec",
            hosts->ns_a(), "env",   "BLOCKMIG_SSH_CONFIG=" + sshd->client_config().string()};
        argv.insert(argv.end(), BLOCKMIG_BINARY);
        argv.insert(argv.end(), args.begin(), args.end());
        const fs::path err_file = dir / "blockmig.stderr";
        std::vector<std::string> sh{"sh", "-c", "f=$1; shift; exec \"$@\" 2>\"$f\"", "sh",
                                    err_file.string()};
        sh.insert(sh.end(), argv.begin(), argv.end());
        CommandResult r = blockmig::lab::run(sh);
        std::ifstream in(err_file);
        std::stringstream err;
        err << in.rdbuf();
        return {r.status, r.out, err.str()};
    }

    std::string dst_url() const { return sshd->url(dst->qmp_socket()); }

    bool ssh_left_behind() const {
        return !processes_where([&](const std::string& cmdline) {
                    return cmdline.starts_with("ssh ") &&
                           cmdline.find(dst->qmp_socket().string()) != std::string::npos;
                }).empty();
    }

    std::unique_ptr<HostPair> hosts;
    std::unique_ptr<SshServer> sshd;
    blockmig::lab::TempDir dir{"migrate-ssh"};
    fs::path src_disk = dir / "src.raw";
    fs::path dst_disk = dir / "dst.raw";
    fs::path state = dir / "jobs";
    std::unique_ptr<Guest> src, dst;
};

TEST_F(MigrateSsh, QmpOnTheOtherHostAnswersThroughSsh) {
    auto r = on_host_a({"qmp", dst_url(), "query-status"});
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("inmigrate"), std::string::npos) << r.out;
    std::ifstream log(sshd->dir() / "sshd.log");
    std::stringstream l;
    l << log.rdbuf();
    EXPECT_NE(l.str().find(std::string("Accepted publickey for root from ") + HostPair::k_addr_a),
              std::string::npos)
        << "host A logged in to host B's sshd: " << l.str();
    EXPECT_FALSE(ssh_left_behind());
}

TEST_F(MigrateSsh, GuestMovesToTheHostReachedOverSsh) {
    auto r = on_host_a({"--output", "json", "migrate", "--src-qmp", src->qmp_socket().string(),
                        "--dst-qmp", dst_url(), "--dst-addr", HostPair::k_addr_b, "--copy-storage",
                        "all", "--state-dir", state.string()});
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    auto lines = lines_of(r.out);
    ASSERT_FALSE(lines.empty());
    json done = json::parse(lines.back(), nullptr, false);
    EXPECT_EQ(done["event"], "done") << r.out;
    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";
    EXPECT_FALSE(ssh_left_behind()) << "blockmig's ssh ended with it";

    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "running");
    ASSERT_TRUE(dst->wait_for_ack("vda", 1, 60s)) << dst->console();
    ASSERT_TRUE(guest_keeps_writing(*dst)) << "the guest keeps writing on host B";
    auto v = pause_and_verify(*dst, dst_disk.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

}  // namespace
