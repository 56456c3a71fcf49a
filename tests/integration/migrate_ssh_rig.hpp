// CopyRig plus a throw-away sshd (tests/lab/sshd.sh) in host B's network
// namespace: blockmig runs inside host A's, as an admin on A would, and
// reaches B's QMP sockets as ssh://root@B:2222/PATH over the lab link only.
#pragma once

#include "migrate_test_util.hpp"
#include "sshd.hpp"

namespace migrate_test {

class SshRig : public CopyRig {
  protected:
    void SetUp() override {
        SSH_REQUIRE();
        CopyRig::SetUp();
        if (HasFatalFailure()) return;
        sshd = std::make_unique<blockmig::lab::SshServer>(hosts->ns_b(), HostPair::k_addr_b, 2222);
    }

    // blockmig on host A, with the test's ssh identity and known_hosts.
    SplitResult on_host_a(std::vector<std::string> args) {
        std::vector<std::string> argv{
            "ip",           "netns", "exec",
            hosts->ns_a(),  "env",   "BLOCKMIG_SSH_CONFIG=" + sshd->client_config().string(),
            BLOCKMIG_BINARY};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_split(argv, dir.path());
    }

    std::unique_ptr<blockmig::lab::SshServer> sshd;
};

}  // namespace migrate_test
