// Releasing what `--copy-storage all` set up, from the journal alone: on
// the source every disk's mirror job and NBD client node (records under the
// device id), on the destination the exports and the NBD server (records
// under k_destination). Every ending of a migration goes through it
// (settle.hpp): a failed live run, a completed one, and `blockmig recover`
// after blockmig died, which knows nothing but the journal.
//
// A side whose QMP connection is gone (before or during the undo) is asked
// again on a fresh connection to the address in the journal, retried for up
// to the QMP timeout: a QEMU that is exiting (a destination whose incoming
// migration failed, QEMU's default) may still accept and drop a connection.
// A refused connection or a missing socket proves no QEMU serves that
// monitor any more, and what that QEMU held (jobs, nodes, exports, its NBD
// server, its TLS credentials object) ended with it: recorded undone.
// Anything else (a timeout, a host that does not answer) is left behind for
// the next `blockmig recover`; nothing is guessed. A QEMU that answers and
// refuses a step keeps it: left behind, named.
#pragma once

#include <string>
#include <vector>

#include "jobs/journal.hpp"
#include "qmp/client.hpp"

namespace blockmig::migrate {

// The journal's disk key of destination-side effects (no qdev id has '@').
inline constexpr const char* k_destination = "@dst";

struct Released {
    std::vector<std::string> done;
    std::vector<std::string> left_behind;  // "left behind: <what> (<why>)"
};

// The source's mirror jobs and NBD client nodes, newest first. `src` is
// nullptr when its QMP did not answer. Errors only for journal I/O.
Result<Released> release_source_disks(jobs::Journal& journal, qmp::Client* src,
                                      qmp::Milliseconds timeout);

// The destination's exports, then its NBD server. `dst` as above.
Result<Released> release_destination(jobs::Journal& journal, qmp::Client* dst,
                                     qmp::Milliseconds timeout);

// What `--dst-launch` made (launch.hpp): the QEMU it started, then the
// volumes. Only for an undo: after the destination ran the guest they are
// the guest's.
Result<Released> release_launched(jobs::Journal& journal, qmp::Client* dst,
                                  qmp::Milliseconds timeout);

// The TLS credentials objects (tls.hpp) of both sides, once nothing uses
// them: a migration parameter still naming one is cleared first.
Result<Released> release_tls(jobs::Journal& journal, qmp::Client* src, qmp::Client* dst,
                             qmp::Milliseconds timeout);

// Whether a failed QMP connect proves nothing listens at the address any
// more (no such socket, or the connection refused).
bool proves_gone(const Error& connect_error);

}  // namespace blockmig::migrate
