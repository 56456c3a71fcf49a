#include "blockmig/move.hpp"

#include <fmt/core.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "disk_move.hpp"
#include "jobs/claims.hpp"
#include "jobs/guest.hpp"
#include "jobs/journal.hpp"
#include "jobs/luns.hpp"
#include "jobs/recover.hpp"
#include "mirror/group.hpp"
#include "pools/pools.hpp"
#include "qmp/commands.hpp"
#include "qmp/features.hpp"

namespace blockmig {

namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

bool has_image_extension(std::string_view spec) {
    for (std::string_view ext : {".qcow2", ".raw", ".img", ".vmdk"})
        if (spec.ends_with(ext)) return true;
    return false;
}

// "pool:name" with a named pool (not a URL scheme, not a path).
bool is_named_volume(std::string_view spec) {
    auto colon = spec.find(':');
    return colon != std::string_view::npos && spec.find("://") == std::string_view::npos &&
           !spec.starts_with('/') && !spec.starts_with('.');
}

std::string stem_of(std::string_view location, std::string_view fallback) {
    auto base = location.substr(location.rfind('/') + 1);
    if (base.empty()) base = fallback;
    std::string name(base);
    for (std::string_view ext : {".qcow2", ".raw", ".img", ".vmdk"})
        if (name.ends_with(ext)) return name.substr(0, name.size() - ext.size());
    return name;
}

// Decides where one disk goes. No side effects: nothing is created here.
Result<TargetPlan> plan_target(const SourceDisk& source, std::string_view spec,
                               const MoveOptions& options) {
    TargetPlan plan;
    auto source_format = pools::parse_image_format(source.driver);
    if (spec.empty())
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: no --to target given", source.id));
    if (is_named_volume(spec) || jobs::is_iscsi_lun(spec) || has_image_extension(spec)) {
        auto ref = options.pool_opener.resolve_volume(spec);
        if (!ref) return fail(ref.error());
        plan.pool = std::move(ref->pool);
        plan.volume = ref->name;
    } else {
        auto pool = options.pool_opener.open_pool(spec);
        if (!pool) return fail(pool.error());
        plan.pool = std::move(*pool);
    }
    plan.network = plan.pool->type() == "nfs" || plan.pool->type() == "iscsi";
    if (options.format) {
        plan.format = *options.format;
    } else if (source_format && (*source_format == pools::ImageFormat::raw ||
                                 *source_format == pools::ImageFormat::qcow2)) {
        plan.format = *source_format;
    } else {
        plan.format = pools::ImageFormat::qcow2;
    }
    if (plan.format != pools::ImageFormat::raw && plan.format != pools::ImageFormat::qcow2)
        return fail(ErrorCode::unsupported,
                    fmt::format("{}: target format {} is not supported (raw or qcow2)", source.id,
                                pools::to_string(plan.format)));
    if (plan.volume.empty() && plan.pool->type() != "iscsi") {
        plan.volume = stem_of(source.location.empty() ? source.id : source.location, source.id) +
                      (plan.format == pools::ImageFormat::qcow2 ? ".qcow2" : ".raw");
    }
    return plan;
}

// Pre-flight: refuse with an explanation before anything is created.
Result<void> preflight(const SourceDisk& source, TargetPlan& plan, const MoveOptions& options,
                       const std::vector<qmp::BlockJobInfo>& jobs) {
    if (source.driver.ends_with("_top") || !source.job_filter.empty())
        return fail(
            ErrorCode::invalid_state,
            fmt::format("{}: disk is already in a block job ({} filter on it); wait for it "
                        "or cancel it",
                        source.id, source.job_filter.empty() ? source.driver : source.job_filter));
    for (const auto& job : jobs)
        if (job.id.find(source.id) != std::string::npos || job.id == source.node)
            return fail(ErrorCode::invalid_state,
                        fmt::format("{}: disk is already in block job {} ({})", source.id, job.id,
                                    job.status));
    if (source.virtual_size == 0)
        return fail(ErrorCode::invalid_state,
                    fmt::format("{}: cannot read the disk's size", source.id));
    if (plan.network && !options.unsafe && source.cache_mode != "none" &&
        source.cache_mode != "directsync")
        return fail(
            ErrorCode::invalid_argument,
            fmt::format(
                "{}: the disk uses cache mode '{}'; on network storage only cache=none keeps "
                "acknowledged writes safe across a host crash (use --unsafe to move anyway)",
                source.id, source.cache_mode.empty() ? "unknown" : source.cache_mode));
    if (options.shallow && source.has_backing) {
        if (plan.format != pools::ImageFormat::qcow2)
            return fail(
                ErrorCode::invalid_argument,
                fmt::format("{}: --shallow keeps the backing chain, so the target must be qcow2",
                            source.id));
        if (source.backing_node.empty())
            return fail(ErrorCode::unsupported,
                        fmt::format("{}: --shallow: the backing image {} has no node name to share",
                                    source.id, source.backing_filename));
    }
    if (options.delete_source && source.location.empty())
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: --delete-source: cannot tell which volume '{}' is", source.id,
                                source.filename));
    // Refused here, before anything is created, rather than after the copy
    // with the guest paused: there is nothing to compare the target with.
    if (options.verify && source.location.empty())
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: --verify: cannot tell which volume '{}' is, so there is "
                                "nothing to compare the copy with",
                                source.id, source.filename));
    if (!plan.volume.empty() && plan.pool->type() != "iscsi") {
        if (plan.pool->stat(plan.volume))
            return fail(ErrorCode::already_exists,
                        fmt::format("{}: target {} already exists", source.id,
                                    plan.pool->url_of(plan.volume)));
    }
    if (!source.location.empty() && plan.pool->url_of(plan.volume) == source.location)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: target is the disk's own volume", source.id));
    return {};
}

// Several disks may land in one pool: their sizes add up.
Result<void> check_capacity(const std::vector<std::unique_ptr<DiskMove>>& moves) {
    std::map<std::string, std::pair<pools::Pool*, std::uint64_t>> need;
    for (const auto& move : moves) {
        auto& slot = need[move->target_pool().url()];
        slot.first = &move->target_pool();
        slot.second += move->source().virtual_size;
    }
    for (const auto& [url, entry] : need) {
        auto capacity = entry.first->capacity();
        if (!capacity)
            return fail(capacity.error().with_context(fmt::format("capacity of {}", url)));
        if (capacity->free < entry.second)
            return fail(ErrorCode::no_space,
                        fmt::format("target pool {} has {} MiB free, the move needs {} MiB", url,
                                    capacity->free >> 20, (entry.second + (1 << 20) - 1) >> 20));
    }
    return {};
}

// `qemu-img compare` answers "are these two images' guest-visible contents
// equal?" across formats; -U because the guest's QEMU holds the images
// (paused and flushed at this point).
Result<bool> images_equal(const std::string& a, std::string_view a_format, const std::string& b,
                          std::string_view b_format, const std::filesystem::path& qemu_dir,
                          SteadyClock::time_point deadline) {
    // A mirror target does not share "consistent read", so even -U cannot
    // open a local target while the job exists: open local files with
    // locking=off (the guest is paused and flushed; nothing writes).
    auto spec = [](const std::string& image, std::string_view format) {
        nlohmann::json file{{"filename", image}};
        if (image.starts_with('/')) {
            file["driver"] = "file";
            file["locking"] = "off";
        }
        return "json:" + nlohmann::json{{"driver", format}, {"file", file}}.dump();
    };
    std::vector<std::string> args{qemu_program(qemu_dir, "qemu-img"),
                                  "compare",
                                  "-U",
                                  "-q",
                                  spec(a, a_format),
                                  spec(b, b_format)};
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) return fail(ErrorCode::io_error, "verify: fork failed");
    if (pid == 0) {
        execvp(argv[0], argv.data());
        _exit(127);
    }
    // The guest is paused while this runs: a compare stuck on dead storage
    // must not keep it paused, so it is killed at the pause's deadline.
    int status = 0;
    for (;;) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) break;
        if (done < 0 && errno != EINTR)
            return fail(ErrorCode::io_error, "verify: lost the qemu-img compare process");
        if (SteadyClock::now() >= deadline) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            return fail(ErrorCode::timeout,
                        fmt::format("verify: qemu-img compare {} {} did not finish within "
                                    "--verify-timeout; the guest is resumed",
                                    a, b));
        }
        std::this_thread::sleep_for(20ms);
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (code == 0) return true;
    if (code == 1) return false;
    return fail(ErrorCode::io_error,
                fmt::format("verify: qemu-img compare {} {} failed (exit {})", a, b, code));
}

class MoveRun {
  public:
    MoveRun(qmp::Client& client, const MoveOptions& options, ProgressSink& progress,
            const std::atomic<bool>& cancel)
        : m_client(client),
          m_options(options),
          m_progress(progress),
          m_cancel(cancel),
          m_clock(*options.clock) {}

    Result<MoveReport> run() {
        if (auto r = plan(); !r) return fail(r.error());
        if (auto r = begin_job(); !r) return fail(r.error());
        if (auto r = copy(); !r) {
            rollback_all();
            return fail(end_job(r.error()));
        }
        auto report = finish();
        if (!report) return fail(end_job(report.error()));
        (void)end_job({});
        return report;
    }

  private:
    // The journal starts before the first side effect (docs/state-machines.md,
    // "Job journal"); a guest with an unrecovered job gets no new one.
    Result<void> begin_job() {
        // QEMU's pid (SO_PEERCRED) lets recover tell a restarted QEMU from this one.
        auto guest = jobs::identify_guest(m_client, m_options.qmp_address,
                                          m_client.peer_pid().value_or(-1), m_options.qmp_timeout);
        if (!guest) return fail(guest.error());
        if (auto r = jobs::refuse_if_unrecovered(m_jobs_dir, *guest); !r) return r;
        jobs::Job job;
        job.guest = *guest;
        job.finish = m_options.copy_only  ? jobs::Finish::copy_only
                     : m_options.no_pivot ? jobs::Finish::no_pivot
                                          : jobs::Finish::pivot;
        auto journal = jobs::Journal::create(m_jobs_dir, std::move(job));
        if (!journal) return fail(journal.error());
        m_journal.emplace(std::move(*journal));
        m_env.client = &m_client;
        m_env.clock = m_options.clock;
        m_env.step_timeout = m_options.qmp_timeout;
        // By value: an abandoned undo thread may outlive this run.
        m_env.resolve = [resolve = m_options.pool_opener.resolve_volume](const std::string& url) {
            return resolve(url);
        };
        m_effects.emplace(*m_journal, m_env);
        const std::string id = m_journal->job().id;
        for (auto& m : m_moves) {
            auto names = jobs::names_for(id, m->source().id);
            m->bind(*m_effects, names, names.hop_dir(m_options.state_dir, id), m_jobs_dir);
        }
        // Durable with the first intent: no disk has done anything before it.
        m_journal->stage([&](jobs::Job& j) {
            for (auto& m : m_moves) j.disks.push_back(m->journal_entry());
        });
        return {};
    }

    // Removes the journal when nothing of the job is left to recover;
    // otherwise names what was left behind and which command finishes the job.
    Error end_job(Error error) {
        if (!m_journal) return error;
        if (!m_journal->job().needs_recovery()) {
            (void)m_journal->remove();
            return error;
        }
        for (const auto& r : m_journal->job().records)
            if (r.state == jobs::RecordState::left_behind && !r.note.empty() &&
                !error.message.empty() && error.message.find(r.note) == std::string::npos)
                error.message += "; " + r.note;
        if (!error.message.empty() && error.message.find("blockmig recover") == std::string::npos)
            error.message += fmt::format(" (job {} is kept: run `{}`)", m_journal->job().id,
                                         jobs::recover_command(m_jobs_dir, m_journal->job().id));
        return error;
    }

    Result<void> plan() {
        m_jobs_dir = m_options.jobs_dir.empty() ? jobs::default_state_dir() : m_options.jobs_dir;
        // Before anything else (the leftovers of that job would fail the
        // pre-flight with a less useful message): by address, no QMP traffic.
        if (auto r = jobs::refuse_if_unrecovered(
                m_jobs_dir, {.qmp = jobs::canonical_address(m_options.qmp_address)});
            !r)
            return r;
        auto disks = list_source_disks(m_client);
        if (!disks) return fail(disks.error());
        if (!m_options.force_unmanaged) {
            std::vector<std::string> nodes;
            for (const auto& d : *disks) {
                nodes.push_back(d.node);
                nodes.insert(nodes.end(), d.protocol_nodes.begin(), d.protocol_nodes.end());
            }
            if (auto why = jobs::libvirt_evidence(m_options.qmp_address, nodes))
                return fail(ErrorCode::invalid_argument,
                            fmt::format("the guest is managed by libvirt ({}); a pivot behind "
                                        "libvirt's back leaves its domain XML on the old image: "
                                        "use `virsh blockcopy`, or --force-unmanaged",
                                        *why));
        }
        auto jobs = qmp::query_block_jobs(m_client);
        if (!jobs) return fail(jobs.error().with_context("query-block-jobs"));

        std::vector<DiskTarget> wanted = m_options.disks;
        if (m_options.all_disks)
            for (const auto& d : *disks)
                if (std::none_of(wanted.begin(), wanted.end(),
                                 [&](auto& w) { return w.disk == d.id; }))
                    wanted.push_back({d.id, ""});
        if (wanted.empty())
            return fail(ErrorCode::invalid_argument,
                        "no disk selected (use --disk DEV or --all-disks)");

        for (const auto& w : wanted) {
            auto source = find_source_disk(*disks, w.disk);
            if (!source) return fail(source.error());
            auto target_plan = plan_target(
                *source, w.target.empty() ? m_options.default_target : w.target, m_options);
            if (!target_plan) return fail(target_plan.error().with_context(source->id));
            if (auto r = preflight(*source, *target_plan, m_options, *jobs); !r) return r;
            if (auto r = choose_target(*source, *target_plan, *disks); !r) return r;
            m_moves.push_back(std::make_unique<DiskMove>(m_client, *source, std::move(*target_plan),
                                                         m_options, m_progress, m_clock));
        }
        if (auto r = check_capacity(m_moves); !r) return r;

        auto features = qmp::Features::detect(m_client);
        if (!features) return fail(features.error().with_context("query-qmp-schema"));
        m_has_copy_mode = features->mirror_copy_mode();
        m_has_job_change = features->mirror_change_copy_mode();
        bool needs_reopen = std::any_of(m_moves.begin(), m_moves.end(), [](auto& m) {
            return m->target_url().find("://") != std::string::npos;
        });
        if (needs_reopen && !m_options.copy_only && !features->blockdev_reopen())
            return fail(ErrorCode::unsupported,
                        "this QEMU lacks blockdev-reopen, needed to leave the NBD hop after a "
                        "pivot to network storage");
        return {};
    }

    // Targets of one run are chosen together: distinct, none held by an
    // unfinished journal, none the guest uses.
    Result<void> choose_target(const SourceDisk& source, TargetPlan& plan,
                               const std::vector<SourceDisk>& guest_disks) {
        if (!m_held) {
            auto held = jobs::claimed_by_journals(m_jobs_dir);
            if (!held) return fail(held.error());
            m_held = std::move(*held);
        }
        if (plan.pool->type() == "iscsi" && plan.volume.empty()) {
            // The pool's create() checks "unused"; a claim keeps the disks of
            // this run (and other runs) apart.
            std::vector<std::string> locations;
            for (const auto& d : guest_disks) locations.push_back(d.location);
            auto candidates = jobs::lun_candidates(*plan.pool, locations, *m_held);
            if (!candidates) return fail(candidates.error().with_context(source.id));
            plan.candidates = std::move(*candidates);
            return {};
        }
        const std::string url = plan.pool->url_of(plan.volume);
        if (m_held->contains(url))
            return fail(ErrorCode::already_exists,
                        fmt::format("{}: target {} belongs to an unfinished job (see `blockmig "
                                    "jobs`)",
                                    source.id, url));
        if (!m_chosen.insert(url).second)
            return fail(ErrorCode::invalid_argument,
                        fmt::format("{}: two disks would land on {}", source.id, url));
        return {};
    }

    qmp::CopyMode initial_mode() const {
        return m_options.copy_mode == CopyModePolicy::write_blocking ? qmp::CopyMode::write_blocking
                                                                     : qmp::CopyMode::background;
    }

    Result<void> copy() {
        if (m_options.copy_mode == CopyModePolicy::write_blocking && !m_has_copy_mode)
            return fail(ErrorCode::unsupported, "this QEMU's blockdev-mirror has no copy-mode");
        // Subscribed before the first mirror starts: no READY is missed.
        mirror::Group group(m_client, m_clock);
        for (auto& m : m_moves) group.add(m->mirror());
        mirror::CopyPolicy policy{.bandwidth = m_options.bandwidth,
                                  .timeout = m_options.timeout,
                                  .stall_timeout = m_options.stall_timeout,
                                  .converge_window = m_options.converge_window,
                                  .auto_switch = m_options.copy_mode == CopyModePolicy::auto_switch,
                                  .can_switch = m_has_copy_mode,
                                  .switch_in_place = m_has_job_change,
                                  .tick = m_options.sample_interval};
        const std::uint64_t initial_speed =
            m_options.bandwidth ? m_options.bandwidth / m_moves.size() : 0;
        m_started = m_clock.now();
        for (auto& m : m_moves) {
            if (auto r = m->start(initial_mode(), initial_speed); !r)
                return fail(r.error().with_context(m->source().id));
            m_progress.event("start", {{"disk", m->source().id}, {"target", m->target_url()}},
                             fmt::format("{}: mirroring {} -> {}", m->source().id,
                                         m->source().location.empty() ? m->source().filename
                                                                      : m->source().location,
                                         m->target_url()));
        }
        std::map<const mirror::Mirror*, RateMeter> meters;
        auto on_sample = [&](const mirror::Mirror& m) {
            auto& meter = meters[&m];
            meter.add(m_clock.now(), m.offset());
            // After an in-place switch READY is not enough: wait until QEMU
            // says every guest write reaches both sides.
            const bool ready = m.ready_to_finish();
            const bool syncing = !ready && m.state() == mirror::MirrorState::ready;
            m_progress.progress({.item = m.spec().disk,
                                 .phase = ready     ? "ready"
                                          : syncing ? "sync"
                                                    : "copy",
                                 .bytes = m.offset(),
                                 .total = m.length(),
                                 .rate = meter.rate(),
                                 .eta_seconds = ready ? 0 : meter.eta(m.remaining())});
        };
        auto on_notice = [&](const mirror::Mirror&, const mirror::Notice& n) {
            m_progress.event(n.kind, n.fields, n.text);
        };
        return group.wait_ready(policy, &m_cancel, on_sample, on_notice);
    }

    // All disks READY: optionally verify (guest paused), then pivot or finish the copy.
    Result<MoveReport> finish() {
        bool paused = false;
        SteadyClock::time_point paused_at;
        auto resume = [&] {
            if (paused) {
                // Once `cont` is heard nothing is left for `recover` to resume.
                if (qmp::cont(m_client))
                    (void)m_journal->update([](jobs::Job& j) { j.guest_paused = false; });
                m_guest_paused += std::chrono::duration_cast<std::chrono::milliseconds>(
                    SteadyClock::now() - paused_at);
            }
            paused = false;
        };
        // The move fails while the guest is paused: a target that stopped
        // answering can hold QEMU's main loop in a drain (`stop` drains and
        // flushes every node), so that not even `cont` is heard. Killing the
        // storage daemons fails their requests at once; the guest is still on
        // its sources, so the targets are disposable.
        auto give_up = [&](Error error) -> Result<MoveReport> {
            for (auto& m : m_moves) m->mirror().kill_hop();
            resume();
            rollback_all();
            return fail(std::move(error));
        };
        if (m_options.verify) {
            settle_before_pause();
            if (auto status = qmp::query_status(m_client); status && status->running) {
                // Journaled first: if blockmig dies during the pause, `recover`
                // resumes the guest (nobody else would).
                if (auto w = m_journal->update([](jobs::Job& j) { j.guest_paused = true; }); !w)
                    return give_up(w.error());
                // Paused from the moment `stop` is sent: its reply may never
                // come (a drain stuck on the target), the pause still ends.
                paused = true;
                paused_at = SteadyClock::now();
                m_pause_deadline = paused_at + m_options.verify_timeout;
                if (auto r = qmp::stop(m_client, pause_left()); !r)
                    return give_up(r.error().with_context("verify: pause guest"));
            }
            for (auto& m : m_moves)
                if (auto r =
                        m->wait_in_sync(std::min<std::chrono::milliseconds>(60s, pause_left()));
                    !r)
                    return give_up(r.error());
            // `stop` on a paused VM still drains and flushes every node,
            // including the targets' qcow2 metadata.
            if (auto r = qmp::stop(m_client, pause_left()); !r)
                return give_up(r.error().with_context("verify: flush the targets"));
            if (!m_options.copy_only) {
                if (auto r = verify_all(); !r) return give_up(r.error());
            }
        }
        MoveReport report;
        if (m_options.no_pivot) {
            resume();
            for (auto& m : m_moves) {
                if (auto saved = m->leave_ready(); !saved) {
                    rollback_all();
                    return fail(saved.error().with_context(m->source().id));
                }
                const std::string id = m_journal->job().id;
                m_progress.event(
                    "ready", {{"disk", m->source().id}, {"job", m->job_id()}, {"journal", id}},
                    fmt::format("{}: READY; mirror job {} keeps {} in sync. Finish with "
                                "`blockmig pivot --qmp {} --disk {}`, or undo with `{}`",
                                m->source().id, m->job_id(), m->target_url(), m_options.qmp_address,
                                m->source().id, jobs::recover_command(m_jobs_dir, id)));
                report.disks.push_back(m->report());
            }
            return timed(std::move(report));
        }
        for (auto& m : m_moves) {
            auto r = m_options.copy_only ? m->finish_copy_only() : m->pivot();
            if (!r) {
                resume();
                // Disks not yet pivoted go back to their sources; a failure
                // after a pivot is reported as is (pivot() says what to do).
                rollback_all();
                return fail(r.error().with_context(m->source().id));
            }
            if (m_options.copy_only)
                m_progress.event(
                    "copied", {{"disk", m->source().id}, {"target", m->target_url()}},
                    fmt::format("{}: consistent copy at {} (guest stays on its source)",
                                m->source().id, m->target_url()));
        }
        if (m_options.verify && m_options.copy_only) {
            auto r = verify_all();
            resume();
            if (!r) return fail(r.error());
        }
        resume();
        for (auto& m : m_moves) {
            DiskMoveReport d = m->report();
            d.verified = m_options.verify;
            // The target must be about as sparse as the source (1.1 × plus
            // metadata); a fat copy is kept, but the source is not deleted.
            const bool sparse_ok =
                !d.source_allocated || !d.target_allocated ||
                d.target_allocated <= d.source_allocated + d.source_allocated / 10 + (16ull << 20);
            if (!m_options.copy_only && !sparse_ok)
                m_progress.event(
                    "warning", {{"disk", d.disk}, {"message", "target less sparse than source"}},
                    fmt::format("{}: warning: target allocates {} MiB, source {} MiB{}", d.disk,
                                d.target_allocated >> 20, d.source_allocated >> 20,
                                m_options.delete_source ? "; the old volume is kept" : ""));
            if (m_options.delete_source && d.pivoted && sparse_ok) {
                auto ref = m_options.pool_opener.resolve_volume(m->source().location);
                auto removed = ref ? ref->pool->remove(ref->name) : Result<void>(fail(ref.error()));
                if (!removed)
                    m_progress.event("warning",
                                     {{"disk", d.disk}, {"message", removed.error().message}},
                                     fmt::format("{}: warning: could not delete the old volume: {}",
                                                 d.disk, removed.error().message));
                else
                    m_progress.event("deleted", {{"disk", d.disk}, {"volume", d.source}},
                                     fmt::format("{}: deleted old volume {}", d.disk, d.source));
            }
            report.disks.push_back(std::move(d));
        }
        return timed(std::move(report));
    }

    // What is left of the guest's --verify pause (at least 1 ms: a timeout of 0 means none).
    std::chrono::milliseconds pause_left() const {
        if (m_pause_deadline == SteadyClock::time_point::max()) return m_options.qmp_timeout;
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(m_pause_deadline -
                                                                          SteadyClock::now());
        return std::max(left, std::chrono::milliseconds(1));
    }

    // Events make READY visible within a millisecond, and a `stop` that
    // drains the nodes that early is a race in QEMU 7.2: if the target then
    // fails (NFS server killed during the pause), the failed mirror's filter
    // node stays in the guest after the job is gone. Until every mirror has
    // left its first post-READY burst (not busy; at most 1 s), the pause waits.
    void settle_before_pause() {
        const auto deadline = SteadyClock::now() + 1s;
        while (SteadyClock::now() < deadline) {
            auto jobs = qmp::query_block_jobs(m_client, m_options.qmp_timeout);
            if (!jobs) return;  // the pause and its checks will say what is wrong
            bool busy = false;
            for (const auto& j : *jobs)
                for (const auto& m : m_moves)
                    if (j.id == m->job_id() && j.busy) busy = true;
            if (!busy) return;
            std::this_thread::sleep_for(20ms);
        }
    }

    MoveReport timed(MoveReport report) const {
        report.duration =
            std::chrono::duration_cast<std::chrono::milliseconds>(m_clock.now() - m_started);
        report.guest_paused = m_guest_paused;
        return report;
    }

    Result<void> verify_all() {
        for (auto& m : m_moves) {
            auto equal = images_equal(m->source().location, m->source().driver, m->target_url(),
                                      pools::to_string(m->target_format()), m_options.qemu_dir,
                                      m_pause_deadline);
            if (!equal) return fail(equal.error().with_context(m->source().id));
            if (!*equal)
                return fail(ErrorCode::io_error,
                            fmt::format("{}: verify: target {} differs from the source",
                                        m->source().id, m->target_url()));
            m_progress.event("verified", {{"disk", m->source().id}, {"equal", true}},
                             fmt::format("{}: verified: target equals source", m->source().id));
        }
        return {};
    }

    void rollback_all() {
        for (auto it = m_moves.rbegin(); it != m_moves.rend(); ++it) {
            auto& m = *it;
            // After block-job-complete only QMP decides (DiskMove::pivot did).
            if (m->state() == DiskMoveState::done || m->state() == DiskMoveState::pivoted ||
                m->state() == DiskMoveState::completing || m->state() == DiskMoveState::copied ||
                m->state() == DiskMoveState::rolled_back || m->state() == DiskMoveState::planned)
                continue;
            m_progress.event(
                "rollback", {{"disk", m->source().id}},
                fmt::format("{}: rolling back: the guest stays on its source", m->source().id));
            m->rollback();
        }
    }

    qmp::Client& m_client;
    const MoveOptions& m_options;
    ProgressSink& m_progress;
    const std::atomic<bool>& m_cancel;
    Clock& m_clock;
    std::vector<std::unique_ptr<DiskMove>> m_moves;
    std::filesystem::path m_jobs_dir;
    std::optional<std::set<std::string>> m_held;  // volumes unfinished journals hold
    std::set<std::string> m_chosen;               // targets chosen by this run
    std::optional<jobs::Journal> m_journal;
    jobs::UndoEnv m_env;
    std::optional<jobs::Effects> m_effects;
    // The guest is paused (--verify) at most until then.
    SteadyClock::time_point m_pause_deadline = SteadyClock::time_point::max();
    bool m_has_copy_mode = false;
    bool m_has_job_change = false;  // block-job-change can switch copy-mode in place
    Clock::time_point m_started = m_clock.now();
    std::chrono::milliseconds m_guest_paused{0};
};

}  // namespace

// `blockmig pivot` is a recovery that asks for "forward" (`--abort`: undo)
// on the jobs `move --no-pivot` left on this guest.
Result<MoveReport> run_pivot(qmp::Client& client, const PivotOptions& options,
                             ProgressSink& progress) {
    const auto dir = options.jobs_dir.empty() ? jobs::default_state_dir() : options.jobs_dir;
    auto guest = jobs::identify_guest(client, options.qmp_address, client.peer_pid().value_or(-1),
                                      options.qmp_timeout);
    if (!guest) return fail(guest.error());
    auto listed = jobs::list_jobs(dir);
    if (!listed) return fail(listed.error());
    MoveReport report;
    bool found = false;
    for (const auto& l : *listed) {
        if (l.running || !l.job.guest.same_guest(*guest) || !l.job.needs_recovery()) continue;
        found = true;
        auto journal = jobs::Journal::open(dir, l.job.id);
        if (!journal) return fail(journal.error());
        jobs::UndoEnv env;
        env.client = &client;
        env.clock = options.clock ? options.clock : &system_clock();
        env.step_timeout = options.qmp_timeout;
        if (options.pool_opener.resolve_volume)
            env.resolve = [resolve = options.pool_opener.resolve_volume](const std::string& url) {
                return resolve(url);
            };
        else
            env.resolve = [config = options.pools](const std::string& url) {
                return pools::resolve_volume(url, config);
            };
        const auto disks = journal->job().disks;
        auto r = jobs::recover_job(*journal, env,
                                   options.abort ? jobs::Intent::abort : jobs::Intent::pivot, dir,
                                   options.disks);
        if (!r) return fail(r.error());
        for (const auto& d : r->disks) {
            const jobs::JobDisk* entry = nullptr;
            for (const auto& e : disks)
                if (e.disk == d.disk) entry = &e;
            const bool forward = d.direction == jobs::Direction::forward && d.settled;
            progress.event(
                options.abort ? "aborted" : "pivot",
                {{"disk", d.disk},
                 {"direction", jobs::to_string(d.direction)},
                 {"reason", d.reason}},
                fmt::format("{}: {} ({})", d.disk, jobs::to_string(d.direction), d.reason));
            if (!d.settled)
                return fail(ErrorCode::invalid_state,
                            fmt::format("{}: {}; run `{}`", d.disk, d.reason,
                                        r->next_step.empty() ? "blockmig jobs" : r->next_step));
            report.disks.push_back({.disk = d.disk,
                                    .source = entry ? entry->source : "",
                                    .target = entry ? entry->target : "",
                                    .target_node = entry ? entry->top_node : "",
                                    .pivoted = forward});
        }
    }
    if (!found)
        return fail(ErrorCode::not_found,
                    "no move left READY by `blockmig move --no-pivot` for this guest (see "
                    "`blockmig jobs`)");
    return report;
}

Result<MoveReport> run_move(qmp::Client& client, const MoveOptions& options, ProgressSink& progress,
                            const std::atomic<bool>& cancel) {
    MoveOptions effective = options;
    if (effective.state_dir.empty()) effective.state_dir = "/run/blockmig";
    if (!effective.clock) effective.clock = &system_clock();
    // The real pools unless a test handed in others (config by value: see PoolOpener).
    if (!effective.pool_opener.open_pool)
        effective.pool_opener.open_pool = [config = effective.pools](std::string_view spec) {
            return pools::open_pool(spec, config);
        };
    if (!effective.pool_opener.resolve_volume)
        effective.pool_opener.resolve_volume = [config = effective.pools](std::string_view spec) {
            return pools::resolve_volume(spec, config);
        };
    MoveRun run(client, effective, progress, cancel);
    return run.run();
}

}  // namespace blockmig
