// A blockmig-owned qemu-storage-daemon between a guest's QEMU and network
// storage (NFS, iSCSI).
//
// Why: when an NFS server dies mid-mirror and the guest's QEMU talks to it
// directly, the mirror can never finish cancelling (libnfs retries forever;
// QEMU 7.2's nfs driver has no timeout), leaving a stuck node in the guest.
// With this hop the guest mirrors to an `nbd` node on a Unix socket; killing
// the daemon ends the job in milliseconds with EIO, so every failure is
// bounded and clean. After a successful pivot the guest's format node is
// re-pointed at a direct protocol node and the hop is stopped
// (docs/state-machines.md, "move").
#pragma once

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "qmp/error.hpp"

namespace blockmig {

// The QEMU tool to run: `dir`/`tool` when a QEMU directory was chosen
// (`--qemu-dir`, BLOCKMIG_QEMU_DIR), else `tool` looked up in PATH.
inline std::string qemu_program(const std::filesystem::path& dir, const std::string& tool) {
    return dir.empty() ? tool : (dir / tool).string();
}

// Secrets for the daemon without putting them in its argv (readable by any
// user in /proc/PID/cmdline): each object-add argument with `data` (as
// pools' BlockdevChain::secrets carry CHAP passwords) becomes a memfd holding
// the value, and the object names it as `file=/proc/self/fd/N` (QEMU reads a
// secret's file once, when the object is created). Nothing touches disk.
class DaemonSecrets {
  public:
    // Errors: io_error (memfd), invalid_argument (a secret without id).
    static Result<DaemonSecrets> prepare(const std::vector<nlohmann::json>& secrets);
    DaemonSecrets() = default;
    DaemonSecrets(DaemonSecrets&& other) noexcept;
    DaemonSecrets& operator=(DaemonSecrets&& other) noexcept;
    DaemonSecrets(const DaemonSecrets&) = delete;
    DaemonSecrets& operator=(const DaemonSecrets&) = delete;
    ~DaemonSecrets();  // closes the memfds

    // The --object arguments: secrets by file, never by data.
    const std::vector<nlohmann::json>& objects() const { return m_objects; }
    // The fds the daemon must inherit (close-on-exec until the child clears it).
    const std::vector<int>& fds() const { return m_fds; }

  private:
    std::vector<nlohmann::json> m_objects;
    std::vector<int> m_fds;
};

// The daemon's argv (without the program name): secret objects, the
// protocol node, an NBD server on `socket` exporting it writable as "hop".
std::vector<std::string> storage_daemon_arguments(const std::filesystem::path& socket,
                                                  const nlohmann::json& protocol_node,
                                                  const DaemonSecrets& secrets);

class NbdHop {
  public:
    // Starts qemu-storage-daemon with `protocol_node` (a blockdev-add JSON
    // object, plus any secret objects it needs, handed over as DaemonSecrets
    // so no password is in its argv) exported writable over NBD on a Unix
    // socket in `state_dir`. Fails with the daemon's own error line if it
    // exits or does not listen within `timeout`. The daemon is
    // qemu_program(qemu_dir, "qemu-storage-daemon").
    static Result<NbdHop> start(const std::filesystem::path& state_dir,
                                const nlohmann::json& protocol_node,
                                const std::vector<nlohmann::json>& secrets,
                                std::chrono::milliseconds timeout,
                                const std::filesystem::path& qemu_dir = {});

    // Takes over a daemon an earlier blockmig run left serving a READY
    // mirror (`move --no-pivot`). Fails unless `pid` is still that daemon.
    static Result<NbdHop> adopt(int pid, const std::filesystem::path& socket);

    NbdHop(NbdHop&& other) noexcept;
    NbdHop& operator=(NbdHop&& other) noexcept;
    NbdHop(const NbdHop&) = delete;
    NbdHop& operator=(const NbdHop&) = delete;
    ~NbdHop();  // kills the daemon if still running

    // The `blockdev-add` arguments of an nbd client node reaching this hop.
    nlohmann::json client_node(const std::string& node_name) const;
    // Kills the daemon at once (SIGKILL): pending NBD requests fail with EIO.
    void kill_now();
    // Asks the daemon to exit cleanly (SIGTERM, it flushes), then kills it.
    void stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
    bool running() const;
    // Forgets the daemon without stopping it: used when the guest still
    // depends on it after a failure, so that exiting cannot hurt the guest.
    int detach() { return std::exchange(m_pid, -1); }
    int pid() const { return m_pid; }
    const std::filesystem::path& socket_path() const { return m_socket; }
    // The daemon's stderr (its error messages), for error reports.
    std::string log_tail() const;

  private:
    NbdHop() = default;
    // Reaps the daemon: waitpid for our child, polling for an adopted one.
    void wait_gone(std::chrono::milliseconds timeout);

    int m_pid = -1;
    bool m_adopted = false;  // not our child: cannot waitpid
    std::filesystem::path m_socket;
    std::filesystem::path m_log;
    std::filesystem::path m_dir;
};

}  // namespace blockmig
