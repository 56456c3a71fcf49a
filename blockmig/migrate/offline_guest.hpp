// `migrate --offline`: the part of a cold migration that depends on where
// the guest's disks are learned from and how it is stopped. A running (or
// -no-shutdown) QEMU says what its disks are and is shut down over QMP; a
// guest that is not running is described by its files and needs no
// shutdown. The copy, verify and undo (offline.cpp) are the same for both.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "blockmig/offline.hpp"
#include "jobs/journal.hpp"
#include "offline_plan.hpp"

namespace blockmig::migrate {

class OfflineGuest {
  public:
    virtual ~OfflineGuest() = default;
    // The disks to copy (`only`: --disk), or the first refusal; touches
    // nothing. Called once, before identity().
    virtual Result<std::vector<OfflineDisk>> plan(const std::vector<std::string>& only) = 0;
    // Who the job acts on, for its journal (valid after plan()).
    virtual const jobs::GuestIdentity& identity() const = 0;
    // Makes sure nothing writes the disks until the copies are verified.
    // Returns how, for people ("powered down", "was not running").
    // Errors: cancelled, and those of the shutdown.
    virtual Result<std::string> stop(ProgressSink& progress, std::size_t disks,
                                     const std::atomic<bool>& cancel) = 0;
    // The failure line's words on the guest: `stop_called` once stop() was
    // entered, `stopped` once it returned success.
    virtual std::string after_failure(bool stop_called, bool stopped) const = 0;
};

// The guest behind `src` (running, or shut down and kept by -no-shutdown).
std::unique_ptr<OfflineGuest> make_qemu_guest(qmp::Client& src, const OfflineOptions& options);

// The guest whose files options.src_files names, with no QEMU running it:
// each file is locked the way QEMU locks its images for as long as this
// object lives (image_lock.hpp).
std::unique_ptr<OfflineGuest> make_stopped_guest(const OfflineOptions& options);

}  // namespace blockmig::migrate
