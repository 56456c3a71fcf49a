// Who a job acts on, and whether blockmig may act on it at all.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "journal.hpp"
#include "qmp/client.hpp"

namespace blockmig::jobs {

// A Unix socket path made absolute (and canonical); tcp: and ssh:// addresses
// in their canonical text (qmp::to_string).
std::string canonical_address(std::string_view address);

// The start time of process `pid` (clock ticks since boot, field 22 of
// /proc/PID/stat); 0 when it cannot be read.
std::uint64_t process_start_time(int pid);

// The guest behind `client`: the QMP address made absolute (Unix sockets),
// QEMU's uuid (when not all zeroes) and name. `qemu_pid` (the socket peer,
// when known) is stored with its start time. Errors: those of the QMP calls.
Result<GuestIdentity> identify_guest(qmp::Client& client, std::string_view address, int qemu_pid,
                                     qmp::Milliseconds timeout);

// Why the guest looks managed by libvirt (a pivot behind libvirt's back
// leaves the domain XML on the old image), or nullopt: node names
// "libvirt-*", or a monitor socket under /run/libvirt or /var/run/libvirt.
std::optional<std::string> libvirt_evidence(std::string_view address,
                                            const std::vector<std::string>& node_names);

}  // namespace blockmig::jobs
