// The job journal: one file per job under a state directory, so a job
// survives the death of the process that runs it (SIGKILL, OOM, SSH drop).
//
// Before each side effect (volume created, node added, daemon started,
// mirror started, complete sent, node re-pointed, source deleted) an
// *intent* record is made durable, and its outcome after. Durable means the
// whole file is written to <id>.json.tmp, fsync'd, renamed over <id>.json
// and the directory fsync'd (leveldb's CURRENT). Recovery replays the
// records and decides from what QEMU says now (recover.hpp). Format and the
// recover table: docs/state-machines.md, "Job journal".
//
// The state directory is 0700 and every file in it 0600; secrets are never
// written here (a chain's secret objects keep only their id).
//
// A live owner holds an flock on <id>.lock for as long as it runs the job,
// so `blockmig jobs` tells running jobs from abandoned ones and `recover`
// never fights a live process. SIGKILL drops the lock with the process.
//
// Thread safety: a Journal is used by one thread at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qmp/error.hpp"

namespace blockmig::jobs {

// $BLOCKMIG_STATE_DIR, else /var/lib/blockmig/jobs.
std::filesystem::path default_state_dir();

enum class EffectKind {
    volume_created,  // name: the volume's URL
    secret_added,    // name: the object id
    node_added,      // name: the node name
    daemon_started,  // name: the daemon's socket; pid once known
    mirror_started,  // name: the block-job id
    complete_sent,   // name: the block-job id (a barrier: nothing before it is undone blindly)
    node_repointed,  // name: the format node moved from the hop to a direct node
    source_deleted,  // name: the old volume's URL
    // `migrate` jobs (disk ""; docs/state-machines.md, "Migration"):
    migration_configured,  // name: "source" / "destination" (capabilities, parameters)
    incoming_started,      // name: the URI the destination listens on
    migration_started,     // name: the URI the source sends to
    switchover_sent,       // name: "migrate-continue" (a barrier, like complete_sent)
    // name: "migrate-start-postcopy". With switchover_sent: past the point of
    // no return (the destination runs the guest, part of its RAM on the source).
    postcopy_requested,
    destination_resumed,  // name: the destination's QMP address
    // Post-copy recovery (migrate/postcopy_recovery.hpp), each attempt:
    recovery_listening,  // name: the URI the destination listens on again (migrate-recover)
    migration_resumed,   // name: the URI the source reconnects to (migrate resume=true)
    source_quit,         // name: the source's QMP address
    // `migrate --copy-storage all`, on the DESTINATION QEMU (disk "@dst"):
    nbd_server_started,  // name: HOST:PORT the NBD server listens on
    export_added,        // name: the export's id (= its NBD name)
    // `migrate --dst-launch` (disk "@launch"): the destination QEMU blockmig started.
    destination_launched,  // name: its QMP socket ({qmp}); pid once known
    // `migrate --tls-dir` (disk "@tls-src" / "@tls-dst"): a tls-creds-x509 object.
    tls_creds_added,  // name: the object id
};
std::string_view to_string(EffectKind kind);
Result<EffectKind> parse_effect_kind(std::string_view text);

enum class RecordState { intent, done, failed, undone, left_behind };
std::string_view to_string(RecordState state);
Result<RecordState> parse_record_state(std::string_view text);

struct Record {
    std::uint64_t seq = 0;
    std::string disk;  // device id
    EffectKind effect = EffectKind::volume_created;
    std::string name;
    int pid = -1;        // daemon_started
    std::string socket;  // daemon_started
    RecordState state = RecordState::intent;
    std::string note;  // outcome detail, e.g. why something was left behind
};
nlohmann::json to_json(const Record& record);
Result<Record> record_from_json(const nlohmann::json& j);

// Who the job acts on: a new job on the same guest is refused while an
// unrecovered journal names it.
struct GuestIdentity {
    std::string qmp;   // QMP address (absolute path, tcp:HOST:PORT or ssh://...)
    int pid = -1;      // QEMU's pid when known (SO_PEERCRED)
    std::string uuid;  // query-uuid, when QEMU has one other than all zeroes
    std::string name;  // query-name
    // The QEMU process's start time (clock ticks since boot, /proc/PID/stat)
    // when pid is known, 0 otherwise: pids are reused (pid_max may be 32768),
    // so a pid names a QEMU only together with its start time.
    std::uint64_t started = 0;
    // A guest with no QEMU (migrate --offline --src-disk): its disks' files,
    // absolute paths; the same guest as any identity sharing one of them.
    std::vector<std::string> files;
    bool same_guest(const GuestIdentity& other) const;
    // For people: the QMP address, or "not running, files A, B".
    std::string label() const;
};

// How the job means to end once every mirror is READY.
enum class Finish { pivot, no_pivot, copy_only };
std::string_view to_string(Finish finish);

struct Job;

// What a `migrate` job needs besides its records: the destination QEMU and
// the source's migration settings from before the job (restored on undo).
struct MigrationFacts {
    GuestIdentity destination;
    std::string dst_addr;               // host the destination listens on
    std::string copy_storage = "none";  // "none" / "all" / "inc"
    bool keep_source = false;
    std::string policy = "minimal-downtime";  // --policy
    // planned, configured, ram, switchover, completed, done, rolled_back;
    // lost: the destination QEMU died in post-copy (migrate/recover.hpp),
    // an end no recovery can change: what is left is the administrator's.
    std::string phase = "planned";
    nlohmann::json source_saved = nlohmann::json::object();  // {capabilities: {...}, parameters}
    bool settled() const { return phase == "done" || phase == "rolled_back"; }
    bool lost() const { return phase == "lost"; }
};

// What recovery needs to know about one disk besides the records.
struct JobDisk {
    std::string disk;         // device id, in full
    std::string prefix;       // node-name prefix (names.hpp)
    std::string block_job;    // mirror job id
    std::string source_node;  // the device's node before the move
    std::vector<std::string> source_protocol_nodes;
    std::string source;         // source volume URL/path, or QEMU's filename
    std::string target;         // target volume URL (never with a password)
    std::string target_format;  // "raw" / "qcow2"
    std::string top_node;       // target format node
    std::string hop_node;       // nbd node to the storage daemon ("" = direct)
    nlohmann::json chain =
        nlohmann::json::object();   // {protocol, format, protocol_node, secret_ids}
    std::string phase = "planned";  // the DiskMove state, plus "complete_sent"
    // done, copied, rolled_back, or planned with nothing done yet.
    bool settled(const Job& job) const;
};

struct Job {
    std::string id;
    std::string kind = "move";
    std::int64_t created = 0;  // unix seconds
    int owner_pid = -1;
    GuestIdentity guest;
    Finish finish = Finish::pivot;
    std::vector<JobDisk> disks;
    std::vector<Record> records;
    std::uint64_t next_seq = 1;
    std::optional<MigrationFacts> migration;  // kind "migrate"
    // The job paused the guest (move --verify) and has not resumed it yet:
    // nobody else would, so recovery resumes it.
    bool guest_paused = false;

    JobDisk* disk(std::string_view id);
    const JobDisk* disk(std::string_view id) const;
    // Records of one disk (all disks when empty), in order.
    std::vector<const Record*> records_of(std::string_view disk) const;
    // Some disk is not settled (done, copied, rolled back) or something was
    // left behind: the job needs `blockmig recover` (or `blockmig pivot`).
    // Never for a lost migration: it has ended.
    bool needs_recovery() const;
};
nlohmann::json to_json(const Job& job);
Result<Job> job_from_json(const nlohmann::json& j);

class Journal {
  public:
    // Creates the state directory (0700) if needed and a new journal with a
    // fresh unique id (`job.id` is replaced), locked by this process.
    static Result<Journal> create(const std::filesystem::path& state_dir, Job job);
    // Opens an existing journal and takes its lock. invalid_state when
    // another live process holds it (the job is running), not_found when
    // there is no such job.
    static Result<Journal> open(const std::filesystem::path& state_dir, std::string_view id);

    Journal(Journal&& other) noexcept;
    Journal& operator=(Journal&& other) noexcept;
    Journal(const Journal&) = delete;
    Journal& operator=(const Journal&) = delete;
    ~Journal();  // releases the lock; the file stays unless remove() was called

    const Job& job() const { return m_job; }
    const std::filesystem::path& path() const { return m_path; }

    // Appends an intent record and makes it durable; returns its seq. The
    // caller performs the side effect only if this succeeded.
    Result<std::uint64_t> intend(Record record);
    // Records the outcome of `seq` (done, failed, undone, left_behind);
    // `pid` (>0) fills in a daemon's pid once it is known. Durable at once,
    // except `done`: it is staged (see stage()) — a crash before the next
    // write leaves the record an intent, which recover treats like done.
    Result<void> outcome(std::uint64_t seq, RecordState state, std::string note = {}, int pid = -1);
    // Changes job facts (disk phase, nodes) durably.
    template <typename F>
    Result<void> update(F&& change) {
        change(m_job);
        return save();
    }
    // Changes job facts in memory only: they become durable with the next
    // write (every write holds the whole job, and an intent is always
    // written before its side effect), with flush(), or when the Journal is
    // destroyed. Only for facts whose loss in a crash leaves an older state
    // recover handles safely (e.g. a phase before the next side effect).
    // Each fsync costs milliseconds; a move makes a dozen fewer.
    template <typename F>
    void stage(F&& change) {
        change(m_job);
        m_dirty = true;
    }
    // Writes staged changes, if any.
    Result<void> flush() { return m_dirty ? save() : Result<void>{}; }
    // The job ended and nothing of it is left: deletes journal and lock.
    Result<void> remove();

  private:
    Journal() = default;
    Result<void> save();
    void release();

    Job m_job;
    std::filesystem::path m_dir, m_path;
    int m_lock_fd = -1;
    bool m_dirty = false;  // staged changes not yet written
};

struct JobListing {
    Job job;
    bool running = false;  // a live process holds the job's lock
    std::filesystem::path path;
};
// Every journal in `state_dir` (none if it does not exist), sorted by
// creation time. Unreadable files are reported as errors, not skipped.
Result<std::vector<JobListing>> list_jobs(const std::filesystem::path& state_dir);

// What may still exist of `disk`'s effects, for people: "volume URL",
// "node N", "storage daemon pid P (SOCKET)", "mirror job J"; an
// unconfirmed one (intent only) says "maybe".
std::vector<std::string> what_exists(const Job& job, std::string_view disk);

// invalid_state naming the exact `blockmig recover` command when a journal
// that no live process owns still holds something on `guest`.
Result<void> refuse_if_unrecovered(const std::filesystem::path& state_dir,
                                   const GuestIdentity& guest);

// The command that recovers job `id` in `state_dir`.
std::string recover_command(const std::filesystem::path& state_dir, std::string_view id);

}  // namespace blockmig::jobs
