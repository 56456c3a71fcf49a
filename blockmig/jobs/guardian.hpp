// The guardian of a `migrate` job: a process of its own that recovers the
// job when the blockmig process running it dies (SIGKILL, OOM, an SSH drop).
//
// Why: with pause-before-switchover QEMU migrates on after blockmig died,
// reaches pre-switchover, stops the guest and waits for a migrate-continue
// nobody sends. libvirt recovers such jobs when its daemon restarts;
// blockmig has no daemon, so each live `migrate` starts a guardian.
//
// Protocol: the owner holds the only write end of a socket pair (close-on-
// exec everywhere, so no child inherits it); the guardian blocks reading the
// other end. One byte k_finished = the owner ended normally (the guardian
// exits, touching nothing). EOF without it = the owner died: the guardian
// then waits for the job's lock (journal.hpp: the owner held it, SIGKILL
// dropped it; a human's `blockmig recover` may hold it now) and, if the
// journal still exists, runs the code `blockmig recover JOB` runs, which
// decides from what both QEMUs say now. The guardian never holds the lock
// while it waits, so `blockmig jobs` still tells a running job (its owner
// holds the lock) from an abandoned one.
//
// A socket pair rather than a pipe only so the owner's byte is sent with
// MSG_NOSIGNAL: a guardian that is already gone must not SIGPIPE blockmig.
#pragma once

#include <filesystem>
#include <functional>
#include <string_view>

#include "journal.hpp"
#include "qmp/error.hpp"

namespace blockmig::jobs {

constexpr char k_owner_finished = 'F';

// Owner side: the write end of the channel. Move-only.
class Guardian {
  public:
    // Starts `exe _guard --state-dir DIR --fd N JOB` (fork twice + exec, no
    // shell; its own session, so a terminal's Ctrl-C or a kill of the
    // owner's process group does not reach it; stdio on /dev/null; every fd
    // closed but its end of the channel) and returns once exec succeeded.
    // The guardian is reparented at once: nobody has to reap it.
    // Errors: io_error (socketpair, fork), not_found (exec failed).
    static Result<Guardian> start(const std::filesystem::path& exe,
                                  const std::filesystem::path& state_dir, std::string_view id);

    // Takes the owner's end of a channel (start() makes one; tests make their own).
    explicit Guardian(int owner_fd) : m_fd(owner_fd) {}
    Guardian(Guardian&& other) noexcept;
    Guardian& operator=(Guardian&& other) noexcept;
    Guardian(const Guardian&) = delete;
    Guardian& operator=(const Guardian&) = delete;
    // Closes the channel; without owner_finished() first the guardian takes
    // that for the owner's death (and recovers the job if its journal is left).
    ~Guardian();

    // The owner ended normally (the job is done, undone, or left to a human
    // with the recover command printed): the guardian exits without acting.
    void owner_finished();

  private:
    void close();
    int m_fd = -1;
};

// Guardian side.
enum class OwnerEnd { finished, died };
// Blocks until the owner's end closes; `finished` only after k_owner_finished.
OwnerEnd wait_for_owner(int fd);

// Runs `blockmig recover` on a journal the caller holds locked.
using RecoverLocked = std::function<Result<void>(Journal& journal)>;

// After the owner died: waits until nobody holds job `id`'s lock, then opens
// the journal (taking the lock) and hands it to `recover`; if someone took
// the lock in between it waits again. Returns true when `recover` ran,
// false when the journal is gone (the owner or a human finished the job).
// Errors: those of Journal::open other than not_found / invalid_state, and
// those of `recover`.
Result<bool> recover_abandoned(const std::filesystem::path& state_dir, std::string_view id,
                               const RecoverLocked& recover);

}  // namespace blockmig::jobs
