// blockmig migrate with the destination's monitor reached over ssh://, as an
// admin on host A reaches host B: blockmig runs inside lab host A's network
// namespace, sshd (throw-away keys, tests/lab/sshd.sh) inside host B's, the
// destination QMP socket is a path on B, and only the lab link joins them.
// --copy-storage all: the guest's blocks go over NBD to B's own disk file.
#include <gtest/gtest.h>

#include "migrate_ssh_rig.hpp"

using namespace migrate_test;

namespace {

class MigrateSsh : public SshRig {
  protected:
    std::string dst_url() const { return sshd->url(dst->qmp_socket()); }

    bool ssh_left_behind() const {
        return !processes_where([&](const std::string& cmdline) {
                    return cmdline.starts_with("ssh ") &&
                           cmdline.find(dst->qmp_socket().string()) != std::string::npos;
                }).empty();
    }
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
