#include "shutdown.hpp"

#include <fmt/core.h>

namespace blockmig::migrate {

namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// Waits for SHUTDOWN (or the monitor's end: QEMU exited by itself) until the
// deadline, in slices so Ctrl-C is seen. true: the guest shut down.
Result<bool> wait_for_shutdown(qmp::EventSubscription& sub, std::chrono::milliseconds timeout,
                               const std::atomic<bool>& cancel) {
    const auto deadline = SteadyClock::now() + timeout;
    while (SteadyClock::now() < deadline) {
        if (cancel.load())
            return fail(ErrorCode::cancelled,
                        "interrupted while the guest powers down (it may still shut down)");
        auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
        auto e = sub.next(std::min<std::chrono::milliseconds>(left, 200ms));
        if (e) return true;
        if (e.error().code == ErrorCode::interrupted) return true;
        if (e.error().code != ErrorCode::timeout) return fail(e.error());
    }
    return false;
}

// After quit: the monitor's end of stream, i.e. the images are closed.
Result<void> wait_for_exit(qmp::EventSubscription& sub, std::chrono::milliseconds timeout) {
    const auto deadline = SteadyClock::now() + timeout;
    for (;;) {
        auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
        if (left <= 0ms)
            return fail(ErrorCode::timeout,
                        fmt::format("the source QEMU did not exit within {} s of quit",
                                    timeout.count() / 1000));
        auto e = sub.next(left);
        if (!e && e.error().code == ErrorCode::interrupted) return {};
    }
}

}  // namespace

Result<std::string> shut_down_guest(qmp::Client& client, const std::string& run_state,
                                    const ShutdownOptions& options,
                                    const std::atomic<bool>& cancel) {
    // SHUTDOWN ends the first wait (not POWERDOWN, which only says the button
    // was pressed), the end of stream (interrupted) the second.
    qmp::EventFilter filter;
    filter.names = {"SHUTDOWN"};
    auto sub = client.subscribe(filter);
    std::string how = "was shut down";
    if (run_state == "running") {
        if (auto r = client.execute("system_powerdown"); !r) return fail(r.error());
        auto down = wait_for_shutdown(sub, options.powerdown_timeout, cancel);
        if (!down) return fail(down.error());
        how = *down ? "powered down"
                    : fmt::format(
                          "quit after {} s without SHUTDOWN (the guest ignored the "
                          "power button)",
                          options.powerdown_timeout.count() / 1000);
    }
    // QEMU may be gone already (no -no-shutdown): its monitor then answers
    // nothing, which is the end we wait for anyway.
    if (client.state() != qmp::State::dead) {
        auto q = client.execute("quit");
        if (!q && q.error().code != ErrorCode::interrupted && client.state() != qmp::State::dead)
            return fail(q.error().with_context("quit"));
    }
    if (auto r = wait_for_exit(sub, options.exit_timeout); !r) return fail(r.error());
    return how;
}

}  // namespace blockmig::migrate
