// A throw-away OpenSSH server for integration tests (tests/lab/sshd.sh): runs
// in a lab host's network namespace with its own host and user keys, so a
// test can reach a QMP socket "on the other host" as ssh://root@ADDR:PORT/...
#pragma once

#include <filesystem>
#include <string>

#include "lab.hpp"

namespace blockmig::lab {

class SshServer {
  public:
    // Starts sshd listening on addr:port inside `netns` (empty: this one;
    // port 0: a free one of this namespace). Throws if it does not accept
    // connections within 5 s.
    SshServer(const std::string& netns, const std::string& addr, int port = 0);
    ~SshServer();
    SshServer(const SshServer&) = delete;
    SshServer& operator=(const SshServer&) = delete;

    // Why no sshd can run here (openssh-server or -client missing), or empty.
    static std::string missing_prerequisite();

    // ssh://USER@ADDR:PORT/SOCKET
    std::string url(const fs::path& socket, const std::string& user = "root") const;
    // Client config for `ssh -F` / BLOCKMIG_SSH_CONFIG: the test's identity
    // and a known_hosts trusting only this server.
    fs::path client_config() const { return m_dir / "ssh" / "ssh_config"; }
    // Its keys, known_hosts and configs (tests write variants next to them).
    fs::path dir() const { return m_dir / "ssh"; }
    const std::string& addr() const { return m_addr; }
    int port() const { return m_port; }
    int pid() const { return m_pid; }
    void stop();

  private:
    TempDir m_dir{"sshd"};
    std::string m_addr;
    int m_port;
    int m_pid = -1;
};

}  // namespace blockmig::lab

// LAB_REQUIRE() plus sshd: skips outside CI when sshd or ssh is missing, fails under CI.
#define SSH_REQUIRE()                                                                       \
    do {                                                                                    \
        LAB_REQUIRE();                                                                      \
        if (auto why = blockmig::lab::SshServer::missing_prerequisite(); !why.empty()) {    \
            if (blockmig::lab::running_in_ci()) FAIL() << "lab unavailable in CI: " << why; \
            GTEST_SKIP() << "lab unavailable: " << why;                                     \
        }                                                                                   \
    } while (0)
