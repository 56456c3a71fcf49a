// Shutting a guest down for a cold migration: ACPI power button first (the
// guest flushes and unmounts), QEMU's `quit` after a deadline (what `virsh
// shutdown` + `virsh destroy` and Nova's shutdown_timeout do), and the
// images proven closed: QEMU closes its block devices before its monitor
// (qemu_cleanup: bdrv_close_all, then monitor_cleanup), so the monitor's
// end of stream means no QEMU write can follow.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include "qmp/client.hpp"

namespace blockmig::migrate {

struct ShutdownOptions {
    std::chrono::milliseconds powerdown_timeout{60'000};  // SHUTDOWN after system_powerdown
    std::chrono::milliseconds exit_timeout{30'000};       // quit -> the monitor closes
};

// `run_state` is query-status's: "running" is powered down, "shutdown" (a
// QEMU kept by -no-shutdown) only quit. Returns how it ended, for people:
// "powered down", "quit after N s without SHUTDOWN", "was shut down".
// Errors: cancelled (`cancel` while waiting for SHUTDOWN: the power button
// was pressed, QEMU not quit), timeout (QEMU did not exit after quit), the
// QMP errors of system_powerdown / quit.
Result<std::string> shut_down_guest(qmp::Client& client, const std::string& run_state,
                                    const ShutdownOptions& options,
                                    const std::atomic<bool>& cancel);

}  // namespace blockmig::migrate
