// The running (or -no-shutdown) guest of `migrate --offline --src-qmp`:
// its disks are what its QEMU reports, it is shut down over QMP.
#include <fmt/format.h>

#include "move/source_path.hpp"
#include "offline_guest.hpp"
#include "preflight.hpp"
#include "shutdown.hpp"

namespace blockmig::migrate {

namespace {

class QemuGuest final : public OfflineGuest {
  public:
    QemuGuest(qmp::Client& src, const OfflineOptions& o) : m_src(src), m_o(o) {}

    Result<std::vector<OfflineDisk>> plan(const std::vector<std::string>& only) override;
    const jobs::GuestIdentity& identity() const override { return m_facts.identity; }
    Result<std::string> stop(ProgressSink& progress, std::size_t disks,
                             const std::atomic<bool>& cancel) override;
    std::string after_failure(bool stop_called, bool stopped) const override {
        return !stop_called ? "the guest keeps running on the source"
               : !stopped   ? "the guest was asked to power down and may be off"
                            : "the guest stays shut off (start it again on the source)";
    }

  private:
    qmp::Client& m_src;
    const OfflineOptions& m_o;
    SideFacts m_facts;
};

Result<std::vector<OfflineDisk>> QemuGuest::plan(const std::vector<std::string>& only) {
    auto facts = gather(m_src, m_o.src_qmp, "source", m_o.qmp_timeout);
    if (!facts) return fail(facts.error());
    m_facts = std::move(*facts);
    const auto pid = m_src.peer_pid();
    return plan_offline(m_facts, only, [pid](const std::string& filename) {
        // Without QEMU's pid (tcp:, ssh://) a local name may be another
        // host's file, or another file of the same name here: never copy it.
        if (!pid)
            return Result<std::string>(fail(
                ErrorCode::unsupported,
                fmt::format("{}: the guest's QMP is not a local Unix socket, so blockmig cannot "
                            "prove it reads QEMU's file (run it on the guest's host with the "
                            "socket path)",
                            filename)));
        return resolve_source_path(filename, pid);
    });
}

Result<std::string> QemuGuest::stop(ProgressSink& progress, std::size_t disks,
                                    const std::atomic<bool>& cancel) {
    progress.event("shutdown", {{"state", m_facts.run_state}},
                   m_facts.run_state == "running"
                       ? fmt::format("powering the guest down (system_powerdown; quit after {} s)",
                                     m_o.shutdown_timeout.count() / 1000)
                       : "the guest is shut down: quitting its QEMU");
    const auto started = m_o.clock->now();
    auto how = shut_down_guest(
        m_src, m_facts.run_state,
        {.powerdown_timeout = m_o.shutdown_timeout, .exit_timeout = m_o.qmp_timeout}, cancel);
    if (!how) return fail(how.error());
    progress.event("shut_down", {{"how", *how}},
                   fmt::format("the guest {} ({:.1f} s); copying {} disk{}", *how,
                               std::chrono::duration<double>(m_o.clock->now() - started).count(),
                               disks, disks == 1 ? "" : "s"));
    return how;
}

}  // namespace

std::unique_ptr<OfflineGuest> make_qemu_guest(qmp::Client& src, const OfflineOptions& options) {
    return std::make_unique<QemuGuest>(src, options);
}

}  // namespace blockmig::migrate
