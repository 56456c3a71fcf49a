// The byte-level connection under a QMP client: send a line (optionally with
// file descriptors), receive a line, close. Unix and TCP sockets and an
// OpenSSH-forwarded remote Unix socket implement it here;
// qmp/testing/scripted_transport.hpp has the scripted test double.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "qmp/address.hpp"
#include "qmp/error.hpp"

namespace blockmig::qmp {

class Transport {
  public:
    virtual ~Transport() = default;

    // Sends `line` followed by '\n'. `fds` travel with the first byte as
    // SCM_RIGHTS ancillary data; they stay owned by the caller.
    // Errors: unsupported (fds on a transport without fd passing),
    // interrupted (peer gone or closed), io_error.
    // REQUIRES: external synchronization between senders (Client does it).
    virtual Result<void> send(std::string_view line, std::span<const int> fds = {}) = 0;

    // Blocks until one complete line arrives and returns it without '\n'.
    // Errors: interrupted (end of stream or close()), protocol (line longer
    // than the transport's limit), io_error. Called by one reader at a time.
    virtual Result<std::string> receive_line() = 0;

    // Ends the connection: a blocked receive_line() returns interrupted and
    // later calls fail. Idempotent; safe from any thread while others use it.
    virtual void close() = 0;

    virtual bool supports_fd_passing() const = 0;
    // Human-readable peer, e.g. "/run/vm.qmp" or "tcp:127.0.0.1:4444".
    virtual std::string peer() const = 0;
    // The process at the other end when the kernel can tell: on a Unix socket
    // SO_PEERCRED names the process that called listen() on it (QEMU itself,
    // unless another process created the socket and handed it over; callers
    // that act on the answer verify it, see blockmig/move/source_path.hpp).
    // nullopt ("unknown") over TCP, from test doubles, or if the kernel
    // reports no pid.
    virtual std::optional<int> peer_pid() const { return std::nullopt; }
};

// Connects to a QMP Unix socket. Errors: not_found (no such path),
// io_error (refused, not a socket), timeout.
Result<std::unique_ptr<Transport>> make_unix_transport(
    const std::string& path, std::chrono::milliseconds timeout = std::chrono::seconds(10));
// Connects to host:port over TCP (no fd passing). Errors: io_error, timeout.
Result<std::unique_ptr<Transport>> make_tcp_transport(
    const std::string& host, std::uint16_t port,
    std::chrono::milliseconds timeout = std::chrono::seconds(10));
struct SshOptions {
    // An ssh_config file for `ssh -F`. Empty: $BLOCKMIG_SSH_CONFIG when set,
    // else ssh's own (~/.ssh/config, /etc/ssh/ssh_config, ssh-agent).
    std::string config_file;
};

// The Unix socket `address.path` on `address.host`, through the system's
// OpenSSH client: `ssh -N -L` forwards it to a socket in a private 0700
// directory (nothing but sshd needed there). The ssh process is owned by the
// transport (killed and reaped when it is destroyed; SIGTERMed by the kernel
// if the thread that called this exits first). BatchMode (no prompt: keys,
// agent or ssh_config only), ConnectTimeout from `timeout`, and a dead link
// ends the stream within ~15 s. No fd passing; peer_pid() is unknown.
// Errors, one line naming the address and what ssh said: invalid_argument
// (not an ssh address), not_found (no ssh in PATH, unknown host), io_error
// (host unreachable, authentication failed, host key not trusted), timeout
// (no forward by the deadline). A socket sshd cannot open shows on the first
// receive_line(): not_found, "sshd on HOST cannot open PATH ...".
Result<std::unique_ptr<Transport>> make_ssh_transport(
    const Address& address, std::chrono::milliseconds timeout = std::chrono::seconds(10),
    const SshOptions& options = {});

// Any address parse_address() accepts: a socket path, tcp:HOST:PORT or
// ssh://[USER@]HOST[:PORT]/PATH. Errors: those of parse_address() and of the
// transport chosen.
Result<std::unique_ptr<Transport>> make_transport(
    std::string_view address, std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace blockmig::qmp
