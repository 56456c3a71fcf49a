// The side effects of a live job, each journaled: the intent record is
// durable before the effect, the outcome is recorded after, and every QMP
// call carries env.step_timeout. The undo of a live run is the same
// executor a recovery replays (undo.hpp), so a closure never stands
// between a side effect and its undo.
//
// An effect whose call failed with a definite refusal (QEMU answered an
// error, the pool said no) is recorded `failed`; one whose answer never
// came stays `intent` (it may have happened) and is undone like a done one.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "journal.hpp"
#include "pools/pool.hpp"
#include "qmp/commands.hpp"
#include "undo.hpp"

namespace blockmig::jobs {

enum class CompleteReply { accepted, refused, unknown };

class Effects {
  public:
    Effects(Journal& journal, UndoEnv& env) : m_journal(journal), m_env(env) {}

    Journal& journal() { return m_journal; }
    UndoEnv& env() { return m_env; }

    // Creates volume `name` (never empty: targets are chosen before) in `pool`.
    Result<pools::VolumeInfo> create_volume(const std::string& disk, pools::Pool& pool,
                                            const std::string& name, std::uint64_t size,
                                            pools::ImageFormat format);
    Result<void> add_secret(const std::string& disk, const nlohmann::json& object);
    Result<void> add_node(const std::string& disk, const nlohmann::json& options);
    // A storage daemon is about to be started on `socket`; record its pid
    // (or -1 when it did not start) with daemon_outcome().
    Result<std::uint64_t> daemon_starting(const std::string& disk, const std::string& socket);
    Result<void> daemon_outcome(std::uint64_t seq, int pid, const std::string& note = {});
    Result<void> start_mirror(const std::string& disk, const qmp::MirrorOptions& options);
    // block-job-complete: accepted, refused by QEMU (nothing switched), or
    // unknown (no answer: only QMP's view of the device can tell now).
    // `error` receives the failure text.
    Result<CompleteReply> send_complete(const std::string& disk, const std::string& job,
                                        std::string* error);
    // blockdev-reopen of a format node onto another `file` child.
    Result<void> repoint(const std::string& disk, const nlohmann::json& format_options);
    // An effect ended as part of going forward (e.g. the hop node deleted
    // after re-pointing): marks its live records undone.
    Result<void> ended(const std::string& disk, EffectKind effect, const std::string& name,
                       const std::string& note);
    Result<void> set_phase(const std::string& disk, const std::string& phase);

    // Undoes every effect of `disk` (newest first). invalid_state once
    // complete was sent (recover_disk decides then).
    Result<UndoReport> rollback(const std::string& disk);
    // `--copy-only` after the final sync: detaches everything but keeps the
    // volume (its record stays done: the copy belongs to the user now).
    Result<UndoReport> detach_keep_volume(const std::string& disk);

  private:
    Result<void> settle(std::uint64_t seq, const Result<void>& r);

    Journal& m_journal;
    UndoEnv& m_env;
};

}  // namespace blockmig::jobs
