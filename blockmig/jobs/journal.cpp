#include "journal.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <utility>

#include "names.hpp"

namespace blockmig::jobs {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view k_format = "blockmig-job/1";

constexpr std::array k_effects{
    std::pair{EffectKind::volume_created, "volume_created"},
    std::pair{EffectKind::secret_added, "secret_added"},
    std::pair{EffectKind::node_added, "node_added"},
    std::pair{EffectKind::daemon_started, "daemon_started"},
    std::pair{EffectKind::mirror_started, "mirror_started"},
    std::pair{EffectKind::complete_sent, "complete_sent"},
    std::pair{EffectKind::node_repointed, "node_repointed"},
    std::pair{EffectKind::source_deleted, "source_deleted"},
    std::pair{EffectKind::migration_configured, "migration_configured"},
    std::pair{EffectKind::incoming_started, "incoming_started"},
    std::pair{EffectKind::migration_started, "migration_started"},
    std::pair{EffectKind::switchover_sent, "switchover_sent"},
    std::pair{EffectKind::postcopy_requested, "postcopy_requested"},
    std::pair{EffectKind::destination_resumed, "destination_resumed"},
    std::pair{EffectKind::recovery_listening, "recovery_listening"},
    std::pair{EffectKind::migration_resumed, "migration_resumed"},
    std::pair{EffectKind::source_quit, "source_quit"},
    std::pair{EffectKind::nbd_server_started, "nbd_server_started"},
    std::pair{EffectKind::export_added, "export_added"},
    std::pair{EffectKind::destination_launched, "destination_launched"},
    std::pair{EffectKind::tls_creds_added, "tls_creds_added"},
};
constexpr std::array k_states{
    std::pair{RecordState::intent, "intent"},           std::pair{RecordState::done, "done"},
    std::pair{RecordState::failed, "failed"},           std::pair{RecordState::undone, "undone"},
    std::pair{RecordState::left_behind, "left_behind"},
};

std::unexpected<Error> io_fail(std::string_view what, const fs::path& path) {
    return fail(ErrorCode::io_error,
                fmt::format("journal: {} {}: {}", what, path.string(), std::strerror(errno)));
}

Result<void> ensure_private_dir(const fs::path& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
        return fail(ErrorCode::io_error,
                    fmt::format("journal: create {}: {}", dir.string(), ec.message()));
    // 0700 even when the directory already existed with a looser mode.
    if (chmod(dir.c_str(), 0700) != 0) return io_fail("chmod", dir);
    return {};
}

Result<void> fsync_dir(const fs::path& dir) {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return io_fail("open directory", dir);
    int rc = fsync(fd);
    ::close(fd);
    if (rc != 0) return io_fail("fsync directory", dir);
    return {};
}

// write + fsync + rename + fsync(dir): after return, a crash leaves either
// the old or the new content, never a torn file.
Result<void> write_durably(const fs::path& path, std::string_view content) {
    fs::path tmp = path;
    tmp += ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return io_fail("create", tmp);
    std::size_t off = 0;
    while (off < content.size()) {
        ssize_t n = ::write(fd, content.data() + off, content.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ::close(fd);
            return io_fail("write", tmp);
        }
        off += static_cast<std::size_t>(n);
    }
    if (fsync(fd) != 0) {
        ::close(fd);
        return io_fail("fsync", tmp);
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) return io_fail("rename", tmp);
    return fsync_dir(path.parent_path());
}

Result<int> lock_file(const fs::path& path, bool create) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (fd < 0) {
        if (errno == ENOENT) return fail(ErrorCode::not_found, "journal: no lock " + path.string());
        return io_fail("open", path);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        ::close(fd);
        if (err == EWOULDBLOCK) return fail(ErrorCode::invalid_state, "locked");
        errno = err;
        return io_fail("lock", path);
    }
    return fd;
}

Result<json> read_json(const fs::path& path) {
    std::ifstream in(path);
    if (!in) return fail(ErrorCode::not_found, fmt::format("journal: no file {}", path.string()));
    std::stringstream text;
    text << in.rdbuf();
    json j = json::parse(text.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return fail(ErrorCode::protocol, fmt::format("journal: {} is not JSON", path.string()));
    return j;
}

}  // namespace

fs::path default_state_dir() {
    if (const char* env = std::getenv("BLOCKMIG_STATE_DIR"); env && *env) return env;
    return "/var/lib/blockmig/jobs";
}

std::string_view to_string(EffectKind kind) {
    for (auto& [k, name] : k_effects)
        if (k == kind) return name;
    return "unknown";
}

Result<EffectKind> parse_effect_kind(std::string_view text) {
    for (auto& [k, name] : k_effects)
        if (text == name) return k;
    return fail(ErrorCode::protocol, fmt::format("journal: unknown effect '{}'", text));
}

std::string_view to_string(RecordState state) {
    for (auto& [s, name] : k_states)
        if (s == state) return name;
    return "unknown";
}

Result<RecordState> parse_record_state(std::string_view text) {
    for (auto& [s, name] : k_states)
        if (text == name) return s;
    return fail(ErrorCode::protocol, fmt::format("journal: unknown record state '{}'", text));
}

std::string_view to_string(Finish finish) {
    switch (finish) {
        case Finish::pivot:
            return "pivot";
        case Finish::no_pivot:
            return "no_pivot";
        case Finish::copy_only:
            return "copy_only";
    }
    return "pivot";
}

json to_json(const Record& r) {
    json j{{"seq", r.seq},
           {"disk", r.disk},
           {"effect", to_string(r.effect)},
           {"name", r.name},
           {"state", to_string(r.state)}};
    if (r.pid > 0) j["pid"] = r.pid;
    if (!r.socket.empty()) j["socket"] = r.socket;
    if (!r.note.empty()) j["note"] = r.note;
    return j;
}

Result<Record> record_from_json(const json& j) {
    if (!j.is_object()) return fail(ErrorCode::protocol, "journal: record is not an object");
    Record r;
    r.seq = j.value("seq", std::uint64_t{0});
    r.disk = j.value("disk", "");
    auto effect = parse_effect_kind(j.value("effect", ""));
    if (!effect) return fail(effect.error());
    r.effect = *effect;
    r.name = j.value("name", "");
    r.pid = j.value("pid", -1);
    r.socket = j.value("socket", "");
    auto state = parse_record_state(j.value("state", ""));
    if (!state) return fail(state.error());
    r.state = *state;
    r.note = j.value("note", "");
    return r;
}

bool GuestIdentity::same_guest(const GuestIdentity& other) const {
    if (!uuid.empty() && uuid == other.uuid) return true;
    // Journals from before `started` match by pid alone.
    const bool same_start = started == 0 || other.started == 0 || started == other.started;
    if (pid > 0 && pid == other.pid && same_start) return true;
    for (const auto& f : files)
        if (std::find(other.files.begin(), other.files.end(), f) != other.files.end()) return true;
    return !qmp.empty() && qmp == other.qmp;
}

std::string GuestIdentity::label() const {
    if (!qmp.empty() || files.empty()) return qmp;
    return fmt::format("not running, files {}", fmt::join(files, ", "));
}

JobDisk* Job::disk(std::string_view id) {
    for (auto& d : disks)
        if (d.disk == id) return &d;
    return nullptr;
}

const JobDisk* Job::disk(std::string_view id) const { return const_cast<Job*>(this)->disk(id); }

std::vector<const Record*> Job::records_of(std::string_view disk) const {
    std::vector<const Record*> out;
    for (const auto& r : records)
        if (disk.empty() || r.disk == disk) out.push_back(&r);
    return out;
}

bool JobDisk::settled(const Job& job) const {
    if (phase == "done" || phase == "copied" || phase == "rolled_back") return true;
    if (phase != "planned") return false;
    for (const Record* r : job.records_of(disk))
        if (r->state == RecordState::intent || r->state == RecordState::done) return false;
    return true;
}

bool Job::needs_recovery() const {
    // What a lost migration left (the paused source, the destination's
    // volumes) is the administrator's to judge: no recovery may touch it.
    if (migration && migration->lost()) return false;
    if (guest_paused) return true;
    for (const auto& r : records)
        if (r.state == RecordState::left_behind) return true;
    for (const auto& d : disks)
        if (!d.settled(*this)) return true;
    if (migration && !migration->settled()) {
        if (migration->phase != "planned") return true;
        for (const auto& r : records)
            if (r.state == RecordState::intent || r.state == RecordState::done) return true;
    }
    return false;
}

json to_json(const Job& job) {
    json disks = json::array();
    for (const auto& d : job.disks)
        disks.push_back({{"disk", d.disk},
                         {"prefix", d.prefix},
                         {"block_job", d.block_job},
                         {"source_node", d.source_node},
                         {"source_protocol_nodes", d.source_protocol_nodes},
                         {"source", d.source},
                         {"target", d.target},
                         {"target_format", d.target_format},
                         {"top_node", d.top_node},
                         {"hop_node", d.hop_node},
                         {"chain", d.chain.is_null() ? json::object() : d.chain},
                         {"phase", d.phase}});
    json records = json::array();
    for (const auto& r : job.records) records.push_back(to_json(r));
    json out = {{"format", k_format},
                {"id", job.id},
                {"kind", job.kind},
                {"created", job.created},
                {"owner_pid", job.owner_pid},
                {"guest",
                 {{"qmp", job.guest.qmp},
                  {"pid", job.guest.pid},
                  {"started", job.guest.started},
                  {"uuid", job.guest.uuid},
                  {"name", job.guest.name}}},
                {"finish", to_string(job.finish)},
                {"next_seq", job.next_seq},
                {"disks", disks},
                {"records", records}};
    if (job.guest_paused) out["guest_paused"] = true;
    if (!job.guest.files.empty()) out["guest"]["files"] = job.guest.files;
    if (const auto& m = job.migration)
        out["migration"] = {{"destination",
                             {{"qmp", m->destination.qmp},
                              {"pid", m->destination.pid},
                              {"started", m->destination.started},
                              {"uuid", m->destination.uuid},
                              {"name", m->destination.name}}},
                            {"dst_addr", m->dst_addr},
                            {"copy_storage", m->copy_storage},
                            {"keep_source", m->keep_source},
                            {"policy", m->policy},
                            {"phase", m->phase},
                            {"source_saved", m->source_saved}};
    return out;
}

Result<Job> job_from_json(const json& j) {
    if (!j.is_object() || j.value("format", "") != k_format)
        return fail(ErrorCode::protocol, "journal: not a blockmig-job/1 journal");
    Job job;
    job.id = j.value("id", "");
    if (!is_job_id(job.id)) return fail(ErrorCode::protocol, "journal: bad job id");
    job.kind = j.value("kind", "move");
    job.created = j.value("created", std::int64_t{0});
    job.owner_pid = j.value("owner_pid", -1);
    const json guest = j.value("guest", json::object());
    job.guest = {guest.value("qmp", ""), guest.value("pid", -1), guest.value("uuid", ""),
                 guest.value("name", "")};
    job.guest.started = guest.value("started", std::uint64_t{0});
    job.guest.files = guest.value("files", std::vector<std::string>{});
    const std::string finish = j.value("finish", "pivot");
    job.finish = finish == "no_pivot"    ? Finish::no_pivot
                 : finish == "copy_only" ? Finish::copy_only
                                         : Finish::pivot;
    job.next_seq = j.value("next_seq", std::uint64_t{1});
    for (const auto& d : j.value("disks", json::array())) {
        JobDisk disk;
        disk.disk = d.value("disk", "");
        disk.prefix = d.value("prefix", "");
        disk.block_job = d.value("block_job", "");
        disk.source_node = d.value("source_node", "");
        disk.source_protocol_nodes = d.value("source_protocol_nodes", std::vector<std::string>{});
        disk.source = d.value("source", "");
        disk.target = d.value("target", "");
        disk.target_format = d.value("target_format", "");
        disk.top_node = d.value("top_node", "");
        disk.hop_node = d.value("hop_node", "");
        disk.chain = d.value("chain", json::object());
        disk.phase = d.value("phase", "planned");
        job.disks.push_back(std::move(disk));
    }
    job.guest_paused = j.value("guest_paused", false);
    if (const auto m = j.find("migration"); m != j.end() && m->is_object()) {
        MigrationFacts facts;
        const json dst = m->value("destination", json::object());
        facts.destination = {dst.value("qmp", ""), dst.value("pid", -1), dst.value("uuid", ""),
                             dst.value("name", "")};
        facts.destination.started = dst.value("started", std::uint64_t{0});
        facts.dst_addr = m->value("dst_addr", "");
        facts.copy_storage = m->value("copy_storage", "none");
        facts.keep_source = m->value("keep_source", false);
        facts.policy = m->value("policy", "minimal-downtime");
        facts.phase = m->value("phase", "planned");
        facts.source_saved = m->value("source_saved", json::object());
        job.migration = std::move(facts);
    }
    for (const auto& r : j.value("records", json::array())) {
        auto record = record_from_json(r);
        if (!record) return fail(record.error());
        job.records.push_back(std::move(*record));
    }
    return job;
}

Result<Journal> Journal::create(const fs::path& state_dir, Job job) {
    if (auto r = ensure_private_dir(state_dir); !r) return fail(r.error());
    Journal journal;
    journal.m_dir = state_dir;
    // A fresh id whose lock we could create exclusively: a collision with
    // another job (of any process) just draws again.
    for (int attempt = 0; attempt < 16; ++attempt) {
        std::string id = new_job_id();
        fs::path lock = state_dir / (id + ".lock");
        int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            if (errno == EEXIST) continue;
            return io_fail("create", lock);
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            ::close(fd);
            return io_fail("lock", lock);
        }
        journal.m_lock_fd = fd;
        job.id = id;
        break;
    }
    if (journal.m_lock_fd < 0)
        return fail(ErrorCode::io_error, "journal: could not draw a unique job id");
    if (job.created == 0) job.created = static_cast<std::int64_t>(std::time(nullptr));
    job.owner_pid = getpid();
    journal.m_job = std::move(job);
    journal.m_path = state_dir / (journal.m_job.id + ".json");
    if (auto r = journal.save(); !r) {
        journal.release();
        return fail(r.error());
    }
    return journal;
}

Result<Journal> Journal::open(const fs::path& state_dir, std::string_view id) {
    if (!is_job_id(id))
        return fail(ErrorCode::invalid_argument,
                    fmt::format("'{}' is not a job id (see `blockmig jobs`)", id));
    Journal journal;
    journal.m_dir = state_dir;
    journal.m_path = state_dir / (std::string(id) + ".json");
    if (!fs::exists(journal.m_path))
        return fail(ErrorCode::not_found, fmt::format("no job {} in {}", id, state_dir.string()));
    auto fd = lock_file(state_dir / (std::string(id) + ".lock"), true);
    if (!fd) {
        if (fd.error().code == ErrorCode::invalid_state)
            return fail(ErrorCode::invalid_state,
                        fmt::format("job {} is still being run by another blockmig process", id));
        return fail(fd.error());
    }
    journal.m_lock_fd = *fd;
    auto j = read_json(journal.m_path);
    if (!j) return fail(j.error());
    auto job = job_from_json(*j);
    if (!job) return fail(job.error().with_context(journal.m_path.string()));
    journal.m_job = std::move(*job);
    journal.m_job.owner_pid = getpid();
    return journal;
}

Journal::Journal(Journal&& other) noexcept
    : m_job(std::move(other.m_job)),
      m_dir(std::move(other.m_dir)),
      m_path(std::move(other.m_path)),
      m_lock_fd(std::exchange(other.m_lock_fd, -1)),
      m_dirty(std::exchange(other.m_dirty, false)) {}

Journal& Journal::operator=(Journal&& other) noexcept {
    if (this != &other) {
        if (m_lock_fd >= 0) (void)flush();
        release();
        m_dirty = std::exchange(other.m_dirty, false);
        m_job = std::move(other.m_job);
        m_dir = std::move(other.m_dir);
        m_path = std::move(other.m_path);
        m_lock_fd = std::exchange(other.m_lock_fd, -1);
    }
    return *this;
}

Journal::~Journal() {
    // Staged facts of a job that ends normally still reach the disk; the
    // lock (held while m_lock_fd is open) says the file is still ours.
    if (m_lock_fd >= 0) (void)flush();
    release();
}

void Journal::release() {
    if (m_lock_fd >= 0) ::close(m_lock_fd);  // closing drops the flock
    m_lock_fd = -1;
}

Result<void> Journal::save() {
    auto r = write_durably(m_path, to_json(m_job).dump(1) + "\n");
    if (r) m_dirty = false;
    return r;
}

Result<std::uint64_t> Journal::intend(Record record) {
    record.seq = m_job.next_seq++;
    record.state = RecordState::intent;
    m_job.records.push_back(std::move(record));
    if (auto r = save(); !r) {
        m_job.records.pop_back();
        return fail(r.error().with_context("record intent"));
    }
    return m_job.records.back().seq;
}

Result<void> Journal::outcome(std::uint64_t seq, RecordState state, std::string note, int pid) {
    for (auto& r : m_job.records) {
        if (r.seq != seq) continue;
        r.state = state;
        if (!note.empty()) r.note = std::move(note);
        if (pid > 0) r.pid = pid;
        if (state == RecordState::done) {
            m_dirty = true;
            return {};
        }
        return save();
    }
    return fail(ErrorCode::invalid_argument, fmt::format("journal: no record {}", seq));
}

Result<void> Journal::remove() {
    std::error_code ec;
    fs::remove(m_path, ec);
    if (ec) return fail(ErrorCode::io_error, "journal: remove " + m_path.string());
    fs::remove(m_dir / (m_job.id + ".lock"), ec);
    m_dirty = false;
    release();
    return fsync_dir(m_dir);
}

Result<std::vector<JobListing>> list_jobs(const fs::path& state_dir) {
    std::vector<JobListing> out;
    std::error_code ec;
    if (!fs::exists(state_dir, ec)) return out;
    for (const auto& entry : fs::directory_iterator(state_dir, ec)) {
        const fs::path& p = entry.path();
        if (p.extension() != ".json" || !is_job_id(p.stem().string())) continue;
        auto j = read_json(p);
        if (!j) return fail(j.error());
        auto job = job_from_json(*j);
        if (!job) return fail(job.error().with_context(p.string()));
        JobListing listing{std::move(*job), false, p};
        // Probe the lock without creating it: a lock we can take is nobody's.
        auto fd = lock_file(state_dir / (listing.job.id + ".lock"), false);
        if (fd)
            ::close(*fd);
        else
            listing.running = fd.error().code == ErrorCode::invalid_state;
        out.push_back(std::move(listing));
    }
    if (ec)
        return fail(ErrorCode::io_error,
                    fmt::format("journal: read {}: {}", state_dir.string(), ec.message()));
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) {
        return std::pair(a.job.created, a.job.id) < std::pair(b.job.created, b.job.id);
    });
    return out;
}

std::vector<std::string> what_exists(const Job& job, std::string_view disk) {
    std::vector<std::string> out;
    for (const Record* r : job.records_of(disk)) {
        if (r->state != RecordState::intent && r->state != RecordState::done &&
            r->state != RecordState::left_behind)
            continue;
        std::string what;
        switch (r->effect) {
            case EffectKind::volume_created:
                what = "volume " + r->name;
                break;
            case EffectKind::secret_added:
                what = "secret object " + r->name;
                break;
            case EffectKind::node_added:
                what = "node " + r->name;
                break;
            case EffectKind::daemon_started:
                what = r->pid > 0 ? fmt::format("storage daemon pid {} ({})", r->pid, r->socket)
                                  : fmt::format("storage daemon ({})", r->socket);
                break;
            case EffectKind::mirror_started:
                what = "mirror job " + r->name;
                break;
            case EffectKind::migration_configured:
                what = "migration settings changed on the " + r->name;
                break;
            case EffectKind::incoming_started:
                what = "destination listening on " + r->name;
                break;
            case EffectKind::migration_started:
                what = "migration to " + r->name;
                break;
            case EffectKind::switchover_sent:
                what = "switchover sent (the destination may run the guest)";
                break;
            case EffectKind::postcopy_requested:
                what =
                    "post-copy requested (after the switchover the destination holds the "
                    "only live copy of the guest)";
                break;
            case EffectKind::recovery_listening:
                what = "destination listening for the post-copy recovery on " + r->name;
                break;
            case EffectKind::migration_resumed:
                what = "post-copy resumed towards " + r->name;
                break;
            case EffectKind::nbd_server_started:
                what = "NBD server on the destination at " + r->name;
                break;
            case EffectKind::export_added:
                what = "NBD export " + r->name + " on the destination";
                break;
            case EffectKind::tls_creds_added:
                what = fmt::format("TLS credentials {} on the {}", r->name,
                                   r->disk == "@tls-dst" ? "destination" : "source");
                break;
            case EffectKind::destination_launched:
                what = r->pid > 0 ? fmt::format("destination QEMU pid {} ({})", r->pid, r->name)
                                  : "destination QEMU (" + r->name + ")";
                break;
            default:
                continue;
        }
        if (r->state == RecordState::intent) what += " (maybe)";
        if (r->state == RecordState::left_behind) what += " (left behind)";
        out.push_back(std::move(what));
    }
    return out;
}

std::string recover_command(const fs::path& state_dir, std::string_view id) {
    if (state_dir == default_state_dir()) return fmt::format("blockmig recover {}", id);
    return fmt::format("blockmig recover --state-dir {} {}", state_dir.string(), id);
}

Result<void> refuse_if_unrecovered(const fs::path& state_dir, const GuestIdentity& guest) {
    auto jobs = list_jobs(state_dir);
    if (!jobs) return fail(jobs.error());
    for (const auto& l : *jobs) {
        const bool ours = l.job.guest.same_guest(guest) ||
                          (l.job.migration && l.job.migration->destination.same_guest(guest));
        if (l.running || !ours || !l.job.needs_recovery()) continue;
        return fail(ErrorCode::invalid_state,
                    fmt::format("guest {} has an unfinished job {} (blockmig was stopped in the "
                                "middle of it); run `{}` first",
                                guest.label(), l.job.id, recover_command(state_dir, l.job.id)));
    }
    return {};
}

}  // namespace blockmig::jobs
