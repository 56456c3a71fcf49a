// Where a QMP monitor is: the address forms every blockmig command accepts
// (`--qmp`, `--src-qmp`, `--dst-qmp`, and the addresses journals record).
//
//   /run/vm.qmp                          a Unix socket on this host
//   tcp:HOST:PORT                        TCP, unauthenticated (HOST may be [v6])
//   ssh://[USER@]HOST[:PORT]/PATH        the Unix socket PATH on another host,
//                                        reached through the OpenSSH client
//
// Parsing only: nothing is resolved or connected here (make_transport does).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "qmp/error.hpp"

namespace blockmig::qmp {

struct Address {
    enum class Kind { unix_socket, tcp, ssh };
    Kind kind = Kind::unix_socket;
    std::string path;        // unix_socket: local path; ssh: the socket's path on HOST
    std::string host;        // tcp, ssh: without [] around an IPv6 address
    std::uint16_t port = 0;  // tcp: always set; ssh: 0 = ssh's own choice (22 or ssh_config)
    std::string user;        // ssh: empty = ssh's own choice (ssh_config, else the local user)

    // Anyone who reaches it controls the QEMU (no authentication, no encryption).
    bool unauthenticated() const { return kind == Kind::tcp; }
    // SCM_RIGHTS needs a Unix socket to the QEMU process itself.
    bool can_pass_fds() const { return kind == Kind::unix_socket; }
};

// Parses an address. A string that is neither tcp: nor a URL is a Unix socket
// path. Errors (invalid_argument, one line naming the address and what is
// wrong): empty; tcp: without a valid host and port 1-65535; a URL scheme
// other than ssh:// (e.g. "qemu+ssh://", "unix://"); an ssh:// URL without
// host or absolute path, with a port outside 1-65535, a host or user that is
// empty, starts with '-' (it would reach ssh as an option) or holds other
// characters than letters, digits and ".-_" (hosts also "[v6]"), or a path
// with ':' (ssh's forwarding syntax), whitespace, control characters,
// '?' or '#', or longer than a Unix socket path can be.
Result<Address> parse_address(std::string_view text);

// The canonical text of `address` (what parse_address reads back to the same
// Address): "/path", "tcp:HOST:PORT", "ssh://[USER@]HOST[:PORT]/PATH".
std::string to_string(const Address& address);

}  // namespace blockmig::qmp
