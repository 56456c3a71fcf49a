// The guest of `migrate --offline --src-disk DEV=PATH`: no QEMU runs it.
// Its disks are the files given; "stopping" it is proving no process
// writes them (a running QEMU's locks, image_lock.hpp) and keeping any
// QEMU from starting to until the copies are verified. Only the files
// given are locked, not a qcow2's backing files: a QEMU running that
// overlay holds the overlay's write lock and is refused on it, and QEMU
// writes a backing file only in a block job of such a running QEMU.
#include <fmt/format.h>

#include "image_lock.hpp"
#include "offline_files.hpp"
#include "offline_guest.hpp"

namespace blockmig::migrate {

namespace {

class StoppedGuest final : public OfflineGuest {
  public:
    explicit StoppedGuest(const OfflineOptions& o) : m_o(o) {}

    Result<std::vector<OfflineDisk>> plan(const std::vector<std::string>& only) override;
    const jobs::GuestIdentity& identity() const override { return m_identity; }
    Result<std::string> stop(ProgressSink& progress, std::size_t disks,
                             const std::atomic<bool>&) override {
        progress.event("shutdown", {{"state", "off"}},
                       fmt::format("the guest is not running (no process has its disks open "
                                   "for writing); copying {} disk{}",
                                   disks, disks == 1 ? "" : "s"));
        return std::string("was not running");
    }
    std::string after_failure(bool, bool) const override {
        return "the guest was not running and was not started";
    }

  private:
    const OfflineOptions& m_o;
    jobs::GuestIdentity m_identity;
    // Held from the plan until this guest is destroyed, after the job
    // ended: a QEMU started on a source meanwhile cannot write it.
    std::vector<ImageLock> m_locks;
};

Result<std::vector<OfflineDisk>> StoppedGuest::plan(const std::vector<std::string>& only) {
    auto plan = plan_offline_files(m_o.src_files, only, m_o.pool_opener.resolve_volume);
    if (!plan) return fail(plan.error());
    for (const auto& d : *plan) {
        auto lock = ImageLock::take(d.source);
        if (!lock)
            return fail(ErrorCode::invalid_state, fmt::format("migrate --offline: disk {}: {}",
                                                              d.device, lock.error().message));
        m_locks.push_back(std::move(*lock));
        m_identity.files.push_back(d.source);
    }
    return plan;
}

}  // namespace

std::unique_ptr<OfflineGuest> make_stopped_guest(const OfflineOptions& options) {
    return std::make_unique<StoppedGuest>(options);
}

}  // namespace blockmig::migrate
