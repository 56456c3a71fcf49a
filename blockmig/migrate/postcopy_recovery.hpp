// Post-copy recovery: once the guest runs on the destination while part of
// its RAM is still only on the source, a broken link freezes it (both QEMUs
// enter postcopy-paused, QEMU >= 3.0). Neither side may be resumed alone or
// quit; the only way forward is to reconnect them: `migrate-recover URI` on
// the destination (it listens again), then `migrate` resume=true to that URI
// on the source (docs/devel/migration/postcopy.rst in QEMU). This retries
// that until the link is back or the deadline passes; it never resumes the
// source's vCPUs, never quits or stops either QEMU, never cancels.
//
// A link that drops packets silently (a pulled cable) is noticed by QEMU only
// when TCP gives up, many minutes later: the caller says when it saw no
// progress, and recovery first forces both sides into postcopy-paused with
// `migrate-pause` (out-of-band on the destination, whose main thread may wait
// for a page that cannot arrive).
//
// Every attempt is journaled before it is sent: `recovery_listening` (the
// destination's new URI; a port in use is recorded failed and the next one of
// the range tried) and `migration_resumed` (the source's reconnect).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "jobs/journal.hpp"
#include "qmp/client.hpp"
#include "qmp/clock.hpp"
#include "storage.hpp"

namespace blockmig::migrate {

// The ports the destination listens on for a recovery: the port after
// --dst-addr's own and the next 15, else the 16 after NBD's range.
PortRange recovery_ports(const std::string& dst_addr);

// tcp:HOST:PORT for --dst-addr's host (an IPv6 address in brackets).
std::string recovery_uri(const std::string& dst_addr, std::uint16_t port);

struct RecoveryOptions {
    std::string dst_addr;  // --dst-addr: the host the destination listens on
    Clock* clock = &system_clock();
    Clock::time_point deadline = Clock::time_point::max();  // give up from here
    qmp::Milliseconds qmp_timeout{30'000};                  // each QMP call
    // Between two attempts (clock->sleep_for).
    std::chrono::milliseconds retry_interval{2'000};
    // How long one reconnect may take before its state is read again.
    std::chrono::milliseconds attempt_timeout{15'000};
};

enum class RecoveryOutcome {
    resumed,     // the source says postcopy-active again: pages flow
    completed,   // the source says completed
    impossible,  // `reason` says why (destination gone, deadline, source failed)
};

struct RecoveryResult {
    RecoveryOutcome outcome = RecoveryOutcome::impossible;
    std::string reason;
    int attempts = 0;
    bool destination_gone = false;
};

// Called with one line per attempt that failed (for a debug log or JSON).
using RecoveryNote = std::function<void(const std::string&)>;

// `dst` may be nullptr or dead: its QMP is connected again at the journal's
// address (a refused connection or a missing socket proves it gone).
// Errors only for journal I/O.
Result<RecoveryResult> recover_postcopy(jobs::Journal& journal, qmp::Client& src, qmp::Client* dst,
                                        const RecoveryOptions& options,
                                        const RecoveryNote& note = {});

// `blockmig recover`: follows a post-copy to its end, recovering it each
// time it is paused or no page moves for `stall`, until completed or the
// deadline. Errors only for journal I/O.
Result<RecoveryResult> finish_postcopy(jobs::Journal& journal, qmp::Client& src, qmp::Client* dst,
                                       const RecoveryOptions& options,
                                       std::chrono::milliseconds stall,
                                       const RecoveryNote& note = {});

// The post-copy states in which QEMU waits for (or runs) a recovery.
bool postcopy_broken(std::string_view migration_status);

}  // namespace blockmig::migrate
