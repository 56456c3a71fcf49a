// Undo steps as values: an enum and the names they act on, so the same
// executor undoes a live run and a journal replayed after a crash (a
// closure cannot be journaled). Every step has a deadline: a step against a
// dead server ends as "left behind: <what>", never waits forever.
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "journal.hpp"
#include "pools/address.hpp"
#include "qmp/client.hpp"
#include "qmp/clock.hpp"

namespace blockmig::jobs {

enum class UndoKind {
    remove_volume,  // name: volume URL
    object_del,     // name: object id
    blockdev_del,   // name: node name
    stop_daemon,    // name: socket path; pid when known
    cancel_job,     // name: block-job id; pid/socket: the disk's daemon, killed if the job hangs
    // Destination-side (`migrate`, disk "@dst"): run with the destination's UndoEnv.
    export_del,       // name: export id (= NBD export name)
    nbd_server_stop,  // name: the server's address (for messages)
    // `migrate --dst-launch` (disk "@launch"), never after the destination ran the guest:
    stop_launched,  // name: its QMP socket; pid: the process (trusted only if its argv names it)
    // An iSCSI LUN whose claim's create never answered: blockmig never wrote
    // it, so it is not zeroed (it may hold someone's data); only its
    // record ends, which releases the claim.
    release_lun,  // name: the LUN's URL
};
std::string_view to_string(UndoKind kind);

struct UndoStep {
    UndoKind kind = UndoKind::blockdev_del;
    std::string disk;
    std::string name;
    int pid = -1;
    std::string socket;
    // cancel_job: the disk's nodes, yanked when the job hangs on a dead NBD
    // peer and no storage daemon of ours can be killed instead.
    std::vector<std::string> yank_nodes;
    std::uint64_t seq = 0;  // the journal record it undoes (0: none)
    bool operator==(const UndoStep&) const = default;
};
nlohmann::json to_json(const UndoStep& step);
Result<UndoStep> undo_step_from_json(const nlohmann::json& j);

// The undo of one record, or nullopt for effects that are never undone
// (complete_sent, node_repointed, source_deleted).
std::optional<UndoStep> undo_of(const Record& record);

// The steps that undo `disk`'s effects (every disk when empty), newest
// first: records in state intent or done. invalid_state when a
// complete_sent record exists for that disk: after it, only the truth from
// QMP may decide (recover.hpp), never a blind undo.
Result<std::vector<UndoStep>> undo_plan(const Job& job, std::string_view disk);

struct UndoEnv {
    // nullptr: QMP is unreachable; QMP steps are then left behind.
    qmp::Client* client = nullptr;
    // Opens a volume URL's pool; the default is pools::resolve_volume with
    // an empty config (journals hold full URLs).
    std::function<Result<pools::VolumeRef>(const std::string& url)> resolve;
    Clock* clock = &system_clock();
    std::chrono::milliseconds step_timeout{15'000};
    std::chrono::milliseconds poll_interval{50};
};

struct StepOutcome {
    bool done = false;    // false: left behind
    std::string message;  // what was done, or why it was left behind
};

// Runs one step within env.step_timeout (a volume removal runs on its own
// thread so a hung pool call cannot hold the caller). Things already gone
// count as done.
StepOutcome run_undo_step(const UndoStep& step, UndoEnv& env);

struct UndoReport {
    std::vector<std::string> done;
    std::vector<std::string> left_behind;  // "left behind: <what> (<why>)"
};
// Runs `steps` in order and records each outcome in the journal (undone /
// left_behind). Journal write errors are returned; step failures are not
// errors, they are listed in left_behind.
Result<UndoReport> run_undo(Journal& journal, const std::vector<UndoStep>& steps, UndoEnv& env);

// The pid of the qemu-storage-daemon serving `socket`, if one runs
// (a pid from a journal is trusted only if its command line names `socket`).
std::optional<int> find_daemon(int pid_hint, const std::string& socket);

}  // namespace blockmig::jobs
