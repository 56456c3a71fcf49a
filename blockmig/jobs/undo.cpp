#include "undo.hpp"

#include <fmt/core.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "luns.hpp"
#include "qmp/address.hpp"
#include "qmp/commands.hpp"

namespace blockmig::jobs {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr std::array k_kinds{
    std::pair{UndoKind::remove_volume, "remove_volume"},
    std::pair{UndoKind::object_del, "object_del"},
    std::pair{UndoKind::blockdev_del, "blockdev_del"},
    std::pair{UndoKind::stop_daemon, "stop_daemon"},
    std::pair{UndoKind::cancel_job, "cancel_job"},
    std::pair{UndoKind::export_del, "export_del"},
    std::pair{UndoKind::nbd_server_stop, "nbd_server_stop"},
    std::pair{UndoKind::stop_launched, "stop_launched"},
    std::pair{UndoKind::release_lun, "release_lun"},
};

std::string cmdline_of(int pid) {
    std::ifstream in(fmt::format("/proc/{}/cmdline", pid), std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (char& c : text)
        if (c == '\0') c = ' ';
    return text;
}

bool is_daemon_for(int pid, const std::string& socket) {
    std::string cmd = cmdline_of(pid);
    return cmd.find("qemu-storage-daemon") != std::string::npos &&
           (socket.empty() || cmd.find(socket) != std::string::npos);
}

bool process_gone(int pid) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return true;  // our child, reaped
    if (kill(pid, 0) != 0) return true;
    // Someone else's zombie (the parent died): it holds nothing any more.
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto close_paren = stat.rfind(')');
    return close_paren != std::string::npos && close_paren + 2 < stat.size() &&
           stat[close_paren + 2] == 'Z';
}

bool before(const UndoEnv& env, Clock::time_point deadline) { return env.clock->now() < deadline; }

StepOutcome left(std::string what, std::string why) {
    return {false, fmt::format("left behind: {} ({})", what, why)};
}

std::optional<qmp::BlockJobInfo> find_job(UndoEnv& env, const std::string& id, std::string* err) {
    auto jobs = qmp::query_block_jobs(*env.client, env.step_timeout);
    if (!jobs) {
        *err = jobs.error().message;
        return std::nullopt;
    }
    err->clear();
    for (auto& j : *jobs)
        if (j.id == id) return j;
    return std::nullopt;
}

// Polls until the job is gone (dismissing it once concluded) or `deadline`.
bool wait_job_gone(UndoEnv& env, const std::string& id, Clock::time_point deadline) {
    for (;;) {
        std::string err;
        auto job = find_job(env, id, &err);
        if (!job && err.empty()) return true;
        if (job && job->status == "concluded") {
            (void)qmp::job_dismiss(*env.client, id, env.step_timeout);
            continue;
        }
        if (!before(env, deadline)) return false;
        env.clock->sleep_for(env.poll_interval);
    }
}

// Yanks each node that is a yank instance (an NBD client); true if any was.
// The others (format nodes, QEMUs before 6.0) answer with an error, ignored.
bool yank_any(const std::vector<std::string>& nodes, UndoEnv& env) {
    bool yanked = false;
    for (const auto& n : nodes)
        yanked |= qmp::yank_block_node(*env.client, n, env.step_timeout).has_value();
    return yanked;
}

StepOutcome cancel_job(const UndoStep& step, UndoEnv& env) {
    const auto deadline = deadline_after(*env.clock, env.step_timeout);
    std::string err;
    auto job = find_job(env, step.name, &err);
    // A main loop stuck in a drain on a dead NBD peer answers nothing
    // in-band: the yank (out-of-band) fails those requests and frees it.
    if (!err.empty() && yank_any(step.yank_nodes, env)) job = find_job(env, step.name, &err);
    if (!err.empty()) return left("block job " + step.name, err);
    if (!job) return {true, fmt::format("block job {} is gone", step.name)};
    if (job->status != "concluded")
        (void)qmp::block_job_cancel(*env.client, step.name, true, env.step_timeout);
    if (wait_job_gone(env, step.name, env.clock->now() + env.step_timeout / 2))
        return {true, fmt::format("cancelled block job {}", step.name)};
    // The target stopped answering and the job cannot finish cancelling:
    // killing the storage daemon fails its requests at once.
    if (auto pid = find_daemon(step.pid, step.socket)) {
        kill(*pid, SIGKILL);
        if (wait_job_gone(env, step.name, deadline))
            return {true, fmt::format("cancelled block job {} (storage daemon killed)", step.name)};
    } else if (yank_any(step.yank_nodes, env) && wait_job_gone(env, step.name, deadline)) {
        return {true, fmt::format("cancelled block job {} (NBD connection yanked)", step.name)};
    }
    return left("block job " + step.name, "it did not end after block-job-cancel");
}

StepOutcome export_del(const UndoStep& step, UndoEnv& env) {
    qmp::NbdExport e{.id = step.name, .node_name = {}, .name = step.name};
    auto r = qmp::block_export_del(*env.client, e, true, env.step_timeout);
    if (r) return {true, fmt::format("deleted export {}", step.name)};
    if (r.error().message.find("not found") != std::string::npos ||
        r.error().message.find("not exist") != std::string::npos)
        return {true, fmt::format("export {} is gone", step.name)};
    return left("export " + step.name, r.error().message);
}

StepOutcome nbd_server_stop(const UndoStep& step, UndoEnv& env) {
    auto r = qmp::nbd_server_stop(*env.client, env.step_timeout);
    if (r) return {true, fmt::format("stopped the NBD server on {}", step.name)};
    if (r.error().message.find("not running") != std::string::npos)
        return {true, fmt::format("the NBD server on {} is not running", step.name)};
    return left("NBD server on " + step.name, r.error().message);
}

StepOutcome blockdev_del(const UndoStep& step, UndoEnv& env) {
    // Never detach a node a guest device sits on (belt and braces: the
    // recover decision already checked where the device is).
    auto block = qmp::query_block(*env.client, env.step_timeout);
    if (!block) return left("node " + step.name, block.error().message);
    for (const auto& b : *block)
        if (b.inserted && b.inserted->node_name == step.name)
            return left("node " + step.name, "a guest device uses it");
    auto r = qmp::blockdev_del(*env.client, step.name, env.step_timeout);
    if (r) return {true, fmt::format("deleted node {}", step.name)};
    auto nodes = qmp::query_named_block_nodes(*env.client, true, env.step_timeout);
    if (nodes && std::none_of(nodes->begin(), nodes->end(),
                              [&](auto& n) { return n.node_name == step.name; }))
        return {true, fmt::format("node {} is gone", step.name)};
    return left("node " + step.name, r.error().message);
}

StepOutcome object_del(const UndoStep& step, UndoEnv& env) {
    auto r = qmp::object_del(*env.client, step.name, env.step_timeout);
    if (r) return {true, fmt::format("deleted object {}", step.name)};
    if (r.error().message.find("not found") != std::string::npos)
        return {true, fmt::format("object {} is gone", step.name)};
    return left("object " + step.name, r.error().message);
}

StepOutcome stop_daemon(const UndoStep& step, UndoEnv& env) {
    auto pid = find_daemon(step.pid, step.socket);
    if (!pid) return {true, fmt::format("storage daemon for {} is not running", step.socket)};
    // SIGTERM first: a daemon still serving a pivoted guest's writes (the
    // forward path) flushes and exits cleanly; one stuck on a dead server
    // gets SIGKILL after a short grace.
    kill(*pid, SIGTERM);
    const auto grace = deadline_after(
        *env.clock,
        std::min<std::chrono::milliseconds>(env.step_timeout / 2, std::chrono::seconds(3)));
    while (!process_gone(*pid) && before(env, grace)) env.clock->sleep_for(env.poll_interval);
    if (!process_gone(*pid)) kill(*pid, SIGKILL);
    const auto deadline = deadline_after(*env.clock, env.step_timeout);
    while (!process_gone(*pid)) {
        if (!before(env, deadline))
            return left(fmt::format("storage daemon {}", *pid), "it did not exit after SIGKILL");
        env.clock->sleep_for(env.poll_interval);
    }
    std::error_code ec;
    fs::remove(step.socket, ec);
    return {true, fmt::format("stopped storage daemon {}", *pid)};
}

// A destination QEMU that `migrate --dst-launch` started: the pid is trusted
// only while that process's command line still names its QMP socket (a
// recycled pid belongs to someone else). SIGTERM, then SIGKILL.
// Without a pid (blockmig died between fork and journaling it), the process
// whose command line names the socket (a per-job path) is the one.
int launched_pid(const UndoStep& step) {
    auto names_socket = [&](int pid) {
        return !step.socket.empty() && cmdline_of(pid).find(step.socket) != std::string::npos;
    };
    if (step.pid > 0) return !process_gone(step.pid) && names_socket(step.pid) ? step.pid : -1;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        const int pid = std::stoi(name);
        if (pid != getpid() && names_socket(pid) && !process_gone(pid)) return pid;
    }
    return -1;
}

// A QEMU `--dst-launch` started on another host (name: its ssh:// address):
// the local process is ssh, not QEMU (none at all once a -daemonize QEMU
// detached), so it is asked to `quit` through its monitor, unless it runs a
// guest (then it is not the never-started QEMU blockmig may stop). The
// local ssh ends with it; one still there is stopped as a local launch.
StepOutcome stop_remote_launched(const UndoStep& step, UndoEnv& env, const qmp::Address& address) {
    // The caller's connection to it if there is one (a QEMU monitor serves
    // one client at a time), else a new one.
    Result<std::unique_ptr<qmp::Client>> own = std::unique_ptr<qmp::Client>();
    qmp::Client* client = env.client;
    if (!client || client->state() != qmp::State::running) {
        qmp::ConnectOptions options;
        options.timeout = std::min<std::chrono::milliseconds>(env.step_timeout, 10s);
        options.default_timeout = env.step_timeout;
        own = qmp::Client::connect(step.socket, options);
        client = own ? own->get() : nullptr;
    }
    std::string done = fmt::format("the destination QEMU on {} is not running", step.socket);
    if (client) {
        auto status = qmp::query_status(*client, env.step_timeout);
        if (status && status->running)
            return left(fmt::format("destination QEMU on {}", step.socket),
                        "it runs a guest, so blockmig does not stop it");
        if (auto q = qmp::quit(*client, env.step_timeout);
            !q && q.error().code != ErrorCode::interrupted)
            return left(fmt::format("destination QEMU on {}", step.socket), q.error().message);
        const auto deadline = deadline_after(*env.clock, env.step_timeout);
        while (client->state() != qmp::State::dead && before(env, deadline))
            env.clock->sleep_for(env.poll_interval);
        done = fmt::format("quit the destination QEMU on {} that blockmig started", step.socket);
    } else if (own.error().code != ErrorCode::not_found) {
        return left(fmt::format("destination QEMU on {}", step.socket),
                    fmt::format("{}; quit it there", own.error().message));
    }
    const bool ours = step.pid > 0 && !process_gone(step.pid) &&
                      cmdline_of(step.pid).find(address.path) != std::string::npos;
    if (ours) {
        const auto grace = deadline_after(
            *env.clock, std::min<std::chrono::milliseconds>(env.step_timeout / 2, 3s));
        while (!process_gone(step.pid) && before(env, grace))
            env.clock->sleep_for(env.poll_interval);
        if (!process_gone(step.pid)) kill(step.pid, SIGTERM);
        const auto deadline = deadline_after(*env.clock, env.step_timeout);
        while (!process_gone(step.pid) && before(env, deadline))
            env.clock->sleep_for(env.poll_interval);
        if (!process_gone(step.pid)) kill(step.pid, SIGKILL);
    }
    return {true, done};
}

StepOutcome stop_launched(const UndoStep& step, UndoEnv& env) {
    if (auto remote = qmp::parse_address(step.socket);
        remote && remote->kind == qmp::Address::Kind::ssh)
        return stop_remote_launched(step, env, *remote);
    const int pid = launched_pid(step);
    if (pid <= 0)
        return {true, fmt::format("the destination QEMU on {} is not running", step.socket)};
    kill(pid, SIGTERM);
    const auto grace = deadline_after(
        *env.clock,
        std::min<std::chrono::milliseconds>(env.step_timeout / 2, std::chrono::seconds(3)));
    while (!process_gone(pid) && before(env, grace)) env.clock->sleep_for(env.poll_interval);
    if (!process_gone(pid)) kill(pid, SIGKILL);
    const auto deadline = deadline_after(*env.clock, env.step_timeout);
    while (!process_gone(pid)) {
        if (!before(env, deadline))
            return left(fmt::format("destination QEMU {}", pid), "it did not exit after SIGKILL");
        env.clock->sleep_for(env.poll_interval);
    }
    std::error_code ec;
    fs::remove(step.socket, ec);
    return {true, fmt::format("stopped the destination QEMU {} that blockmig started", pid)};
}

// The pool call runs on its own thread: libiscsi/libnfs calls against a dead
// server can block far longer than any deadline (issue #8: a LUN delete sat
// in iscsi_reportluns_sync() for minutes). On timeout the thread is
// abandoned (it owns everything it touches) and the volume is left behind.
StepOutcome remove_volume(const UndoStep& step, UndoEnv& env) {
    struct Shared {
        std::mutex mutex;
        std::condition_variable done;
        std::optional<Result<void>> result;
    };
    auto shared = std::make_shared<Shared>();
    std::thread([shared, resolve = env.resolve, url = step.name] {
        Result<void> r;
        auto ref = resolve ? resolve(url) : pools::resolve_volume(url, pools::PoolsConfig{});
        if (!ref)
            r = fail(ref.error());
        else
            r = ref->pool->remove(ref->name);
        std::lock_guard lock(shared->mutex);
        shared->result = std::move(r);
        shared->done.notify_all();
    }).detach();
    std::unique_lock lock(shared->mutex);
    // Real time on purpose: the worker is a real thread (a FakeClock cannot
    // make it finish sooner).
    if (!shared->done.wait_for(lock, env.step_timeout, [&] { return shared->result.has_value(); }))
        return left(step.name, fmt::format("the pool did not answer within {} s",
                                           env.step_timeout.count() / 1000.0));
    const auto& r = *shared->result;
    // A LUN outlives every job: its "removal" zeroes what blockmig wrote
    // (pools.hpp), so it reads unused again; the claim ends with the record.
    if (r && is_iscsi_lun(step.name))
        return {true, fmt::format("released LUN {} (zeroed: it reads unused again)", step.name)};
    if (r) return {true, fmt::format("deleted volume {}", step.name)};
    if (r.error().code == ErrorCode::not_found)
        return {true, fmt::format("volume {} is gone", step.name)};
    return left(step.name, r.error().message);
}

}  // namespace

std::string_view to_string(UndoKind kind) {
    for (auto& [k, name] : k_kinds)
        if (k == kind) return name;
    return "unknown";
}

json to_json(const UndoStep& s) {
    json j{{"kind", to_string(s.kind)}, {"disk", s.disk}, {"name", s.name}, {"seq", s.seq}};
    if (s.pid > 0) j["pid"] = s.pid;
    if (!s.socket.empty()) j["socket"] = s.socket;
    if (!s.yank_nodes.empty()) j["yank_nodes"] = s.yank_nodes;
    return j;
}

Result<UndoStep> undo_step_from_json(const json& j) {
    if (!j.is_object()) return fail(ErrorCode::protocol, "undo step is not an object");
    UndoStep s;
    const std::string kind = j.value("kind", "");
    bool known = false;
    for (auto& [k, name] : k_kinds)
        if (kind == name) {
            s.kind = k;
            known = true;
        }
    if (!known) return fail(ErrorCode::protocol, fmt::format("unknown undo step '{}'", kind));
    s.disk = j.value("disk", "");
    s.name = j.value("name", "");
    s.pid = j.value("pid", -1);
    s.socket = j.value("socket", "");
    s.yank_nodes = j.value("yank_nodes", std::vector<std::string>{});
    s.seq = j.value("seq", std::uint64_t{0});
    return s;
}

std::optional<UndoStep> undo_of(const Record& r) {
    UndoStep s{.disk = r.disk, .name = r.name, .pid = r.pid, .socket = r.socket, .seq = r.seq};
    switch (r.effect) {
        case EffectKind::volume_created:
            // A LUN's create only checks and claims it: with no answer
            // (intent) nothing after it ran, so nothing of blockmig's is on it.
            s.kind = r.state == RecordState::intent && is_iscsi_lun(r.name)
                         ? UndoKind::release_lun
                         : UndoKind::remove_volume;
            return s;
        case EffectKind::secret_added:
        case EffectKind::tls_creds_added:
            s.kind = UndoKind::object_del;
            return s;
        case EffectKind::node_added:
            s.kind = UndoKind::blockdev_del;
            return s;
        case EffectKind::daemon_started:
            s.kind = UndoKind::stop_daemon;
            s.name = r.socket;
            return s;
        case EffectKind::mirror_started:
            s.kind = UndoKind::cancel_job;
            return s;
        case EffectKind::export_added:
            s.kind = UndoKind::export_del;
            return s;
        case EffectKind::nbd_server_started:
            s.kind = UndoKind::nbd_server_stop;
            return s;
        case EffectKind::destination_launched:
            s.kind = UndoKind::stop_launched;
            s.socket = r.name;
            return s;
        case EffectKind::complete_sent:
        case EffectKind::node_repointed:
        case EffectKind::source_deleted:
            return std::nullopt;
        // A migration is settled from what both QEMUs say (blockmig/migrate/),
        // never by replaying steps blindly.
        case EffectKind::migration_configured:
        case EffectKind::incoming_started:
        case EffectKind::migration_started:
        case EffectKind::switchover_sent:
        case EffectKind::postcopy_requested:
        case EffectKind::recovery_listening:
        case EffectKind::migration_resumed:
        case EffectKind::destination_resumed:
        case EffectKind::source_quit:
            return std::nullopt;
    }
    return std::nullopt;
}

Result<std::vector<UndoStep>> undo_plan(const Job& job, std::string_view disk) {
    std::vector<UndoStep> steps;
    const auto records = job.records_of(disk);
    for (auto it = records.rbegin(); it != records.rend(); ++it) {
        const Record& r = **it;
        const bool live = r.state == RecordState::intent || r.state == RecordState::done ||
                          r.state == RecordState::left_behind;
        if (!live) continue;
        if (r.effect == EffectKind::complete_sent)
            return fail(ErrorCode::invalid_state,
                        fmt::format("{}: block-job-complete was sent; only QEMU can say where the "
                                    "disk is now, so nothing is undone blindly",
                                    r.disk));
        auto step = undo_of(r);
        if (!step) continue;
        if (step->kind == UndoKind::cancel_job) {
            // A job that hangs is ended by killing this disk's daemon, or
            // else by yanking its NBD client node.
            for (const Record* d : job.records_of(r.disk)) {
                if (d->effect == EffectKind::daemon_started) {
                    step->pid = d->pid;
                    step->socket = d->socket;
                }
                if (d->effect == EffectKind::node_added) step->yank_nodes.push_back(d->name);
            }
        }
        steps.push_back(std::move(*step));
    }
    return steps;
}

StepOutcome run_undo_step(const UndoStep& step, UndoEnv& env) {
    const bool needs_qmp = step.kind == UndoKind::object_del ||
                           step.kind == UndoKind::blockdev_del ||
                           step.kind == UndoKind::cancel_job || step.kind == UndoKind::export_del ||
                           step.kind == UndoKind::nbd_server_stop;
    if (needs_qmp && (!env.client || env.client->state() != qmp::State::running))
        return left(fmt::format("{} {}", to_string(step.kind), step.name), "QMP is unreachable");
    switch (step.kind) {
        case UndoKind::remove_volume:
            return remove_volume(step, env);
        case UndoKind::object_del:
            return object_del(step, env);
        case UndoKind::blockdev_del:
            return blockdev_del(step, env);
        case UndoKind::stop_daemon:
            return stop_daemon(step, env);
        case UndoKind::cancel_job:
            return cancel_job(step, env);
        case UndoKind::export_del:
            return export_del(step, env);
        case UndoKind::nbd_server_stop:
            return nbd_server_stop(step, env);
        case UndoKind::stop_launched:
            return stop_launched(step, env);
        case UndoKind::release_lun:
            return {true, fmt::format("released LUN {} (never written by blockmig: left as it is)",
                                      step.name)};
    }
    return left(step.name, "unknown step");
}

Result<UndoReport> run_undo(Journal& journal, const std::vector<UndoStep>& steps, UndoEnv& env) {
    UndoReport report;
    for (const auto& step : steps) {
        StepOutcome out = run_undo_step(step, env);
        (out.done ? report.done : report.left_behind).push_back(out.message);
        if (step.seq == 0) continue;
        auto r = journal.outcome(
            step.seq, out.done ? RecordState::undone : RecordState::left_behind, out.message);
        if (!r) return fail(r.error());
    }
    return report;
}

std::optional<int> find_daemon(int pid_hint, const std::string& socket) {
    if (pid_hint > 0 && is_daemon_for(pid_hint, socket)) return pid_hint;
    if (socket.empty()) return std::nullopt;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        int pid = std::stoi(name);
        if (is_daemon_for(pid, socket)) return pid;
    }
    return std::nullopt;
}

}  // namespace blockmig::jobs
