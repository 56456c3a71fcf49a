// run_offline_migrate(_stopped): plan, journal, create the copies' volumes
// while the guest runs (if it does), stop it (offline_guest.hpp), copy +
// verify every disk in parallel; undo the volumes on any failure (blockmig/offline.hpp,
// docs/state-machines.md).
#include "blockmig/offline.hpp"

#include <fmt/format.h>

#include <mutex>
#include <thread>

#include "jobs/effects.hpp"
#include "jobs/journal.hpp"
#include "offline_copy.hpp"
#include "offline_guest.hpp"

namespace blockmig {

namespace {

using namespace migrate;
using namespace std::chrono_literals;

// The sink is not thread-safe; the copy threads share it through this.
class LockedSink final : public ProgressSink {
  public:
    explicit LockedSink(ProgressSink& sink) : m_sink(sink) {}
    void progress(const ProgressSample& s) override {
        std::lock_guard lock(m_mutex);
        m_sink.progress(s);
    }
    void event(const std::string& name, const nlohmann::json& fields,
               const std::string& message) override {
        std::lock_guard lock(m_mutex);
        m_sink.event(name, fields, message);
    }

  private:
    ProgressSink& m_sink;
    std::mutex m_mutex;
};

// One disk's samples, at most every 200 ms (and at each phase's end).
class DiskReporter {
  public:
    DiskReporter(ProgressSink& sink, std::string item) : m_sink(sink), m_item(std::move(item)) {}
    void operator()(const char* phase, std::uint64_t done, std::uint64_t total) {
        const auto now = std::chrono::steady_clock::now();
        if (m_phase != phase) m_meter = RateMeter{};
        if (m_phase == phase && done < total && now - m_last < 200ms) return;
        m_phase = phase;
        m_last = now;
        m_meter.add(now, done);
        m_sink.progress({m_item, phase, done, total, m_meter.rate(),
                         m_meter.eta(total - std::min(total, done))});
    }

  private:
    ProgressSink& m_sink;
    std::string m_item;
    std::string m_phase;
    RateMeter m_meter;
    std::chrono::steady_clock::time_point m_last{};
};

class OfflineRun {
  public:
    OfflineRun(OfflineGuest& guest, const OfflineOptions& o, ProgressSink& progress,
               const std::atomic<bool>& cancel)
        : m_guest(guest), m_o(o), m_progress(progress), m_cancel(cancel) {}

    Result<OfflineReport> run();

  private:
    Result<void> prepare();
    Result<void> check_pool();
    Result<void> create_volumes();
    Result<void> shut_down();
    Result<void> copy_all();
    std::unexpected<Error> failed(std::string_view phase, const Error& cause);

    OfflineGuest& m_guest;
    const OfflineOptions& m_o;
    LockedSink m_progress;
    const std::atomic<bool>& m_cancel;
    std::vector<OfflineDisk> m_plan;
    std::unique_ptr<pools::Pool> m_pool;
    std::optional<jobs::Journal> m_journal;
    jobs::UndoEnv m_env;
    bool m_shut_down = false;  // the guest's stop() was entered
    OfflineReport m_report;
};

Result<void> OfflineRun::prepare() {
    auto plan = m_guest.plan(m_o.disks);
    if (!plan) return fail(plan.error());
    m_plan = std::move(*plan);
    for (const auto& d : m_plan)
        m_progress.event("source",
                         {{"disk", d.device},
                          {"source", d.source},
                          {"format", pools::to_string(d.format)},
                          {"format_from", d.format_from}},
                         fmt::format("{}: {} is {} ({})", d.device, d.source,
                                     pools::to_string(d.format), d.format_from));
    if (auto r = jobs::refuse_if_unrecovered(m_o.jobs_dir, m_guest.identity()); !r) return r;
    auto pool = m_o.pool_opener.open_pool(m_o.dst_pool);
    if (!pool) return fail(pool.error().with_context("--dst-pool " + m_o.dst_pool));
    m_pool = std::move(*pool);
    return check_pool();
}

// Refusals that need the pool: nothing is created yet.
Result<void> OfflineRun::check_pool() {
    auto refuse = [](std::string text) {
        return fail(ErrorCode::invalid_state, "migrate --offline: " + std::move(text));
    };
    if (m_pool->type() == "iscsi")
        return refuse("--dst-pool " + m_o.dst_pool +
                      ": an iSCSI pool; offline copies go to a directory or an NFS pool");
    std::uint64_t needed = 0;
    for (const auto& d : m_plan) {
        if (auto info = m_pool->stat(d.volume); info)
            return refuse(fmt::format("disk {}: {} already exists (blockmig never overwrites)",
                                      d.device, m_pool->url_of(d.volume)));
        else if (info.error().code != ErrorCode::not_found)
            return fail(info.error().with_context("--dst-pool " + m_o.dst_pool));
        auto src = m_o.pool_opener.resolve_volume(d.source);
        auto info = src ? src->pool->stat(src->name) : Result<pools::VolumeInfo>(fail(src.error()));
        if (!info) return refuse(fmt::format("disk {}: {}", d.device, info.error().message));
        needed += info->allocated_bytes;
    }
    auto capacity = m_pool->capacity();
    if (capacity && capacity->free < needed)
        return refuse(fmt::format("{} has {} MiB free, the disks hold {} MiB of data",
                                  m_pool->url(), capacity->free >> 20, needed >> 20));
    return {};
}

Result<void> OfflineRun::create_volumes() {
    jobs::Job job;
    job.kind = "offline";
    job.guest = m_guest.identity();
    for (const auto& d : m_plan)
        job.disks.push_back({.disk = d.device,
                             .source = d.source,
                             .target = m_pool->url_of(d.volume),
                             .target_format = std::string(pools::to_string(d.format))});
    auto journal = jobs::Journal::create(m_o.jobs_dir, std::move(job));
    if (!journal) return fail(journal.error());
    m_journal.emplace(std::move(*journal));
    m_report.job = m_journal->job().id;
    m_env.step_timeout = m_o.qmp_timeout;
    m_env.resolve = [this](const std::string& url) { return m_o.pool_opener.resolve_volume(url); };
    jobs::Effects effects(*m_journal, m_env);
    for (const auto& d : m_plan) {
        if (m_cancel.load()) return fail(ErrorCode::cancelled, "interrupted");
        // qcow2: the writer lays the image out from an empty file.
        const std::uint64_t size =
            d.format == pools::ImageFormat::raw ? (d.size + 511) / 512 * 512 : 0;
        auto made =
            effects.create_volume(d.device, *m_pool, d.volume, size, pools::ImageFormat::raw);
        if (!made)
            return fail(made.error().with_context(
                fmt::format("disk {}: create {}", d.device, m_pool->url_of(d.volume))));
        if (auto r = effects.set_phase(d.device, "target_created"); !r) return r;
    }
    return {};
}

Result<void> OfflineRun::shut_down() {
    if (m_cancel.load()) return fail(ErrorCode::cancelled, "interrupted");
    m_shut_down = true;
    auto how = m_guest.stop(m_progress, m_plan.size(), m_cancel);
    if (!how) return fail(how.error());
    m_report.shutdown = *how;
    return {};
}

Result<void> OfflineRun::copy_all() {
    for (const auto& d : m_plan)
        m_journal->stage([&](jobs::Job& j) { j.disk(d.device)->phase = "copying"; });
    if (auto r = m_journal->flush(); !r) return r;
    std::atomic<bool> stop{false};
    std::vector<Result<DiskCopied>> results(m_plan.size(), fail(ErrorCode::cancelled, "not run"));
    std::vector<std::thread> threads;
    std::atomic<std::size_t> running{m_plan.size()};
    for (std::size_t i = 0; i < m_plan.size(); ++i)
        threads.emplace_back([&, i] {
            const auto& d = m_plan[i];
            DiskReporter report(m_progress, d.device);
            auto src = m_o.pool_opener.resolve_volume(d.source);
            results[i] = src ? copy_and_verify(d, *src, *m_pool, d.volume, m_o.in_flight,
                                               std::ref(report), stop)
                             : Result<DiskCopied>(fail(src.error()));
            if (!results[i]) stop.store(true);  // the others end early: the job failed
            --running;
        });
    while (running.load() > 0) {
        if (m_cancel.load()) stop.store(true);
        std::this_thread::sleep_for(20ms);
    }
    for (auto& t : threads) t.join();
    for (std::size_t i = 0; i < m_plan.size(); ++i)
        if (!results[i] && results[i].error().code != ErrorCode::cancelled)
            return fail(results[i].error());
    if (m_cancel.load()) return fail(ErrorCode::cancelled, "interrupted");
    for (std::size_t i = 0; i < m_plan.size(); ++i) {
        if (!results[i]) return fail(results[i].error());
        const auto& d = m_plan[i];
        m_report.disks.push_back({d.device, d.source, m_pool->url_of(d.volume),
                                  std::string(pools::to_string(d.format)), d.format_from, d.size,
                                  results[i]->data_bytes, results[i]->digest});
    }
    return {};
}

// Deletes what the job created and says where everything is, in one line.
std::unexpected<Error> OfflineRun::failed(std::string_view phase, const Error& cause) {
    std::string undone = "nothing was created";
    if (m_journal) {
        jobs::Effects effects(*m_journal, m_env);
        std::vector<std::string> left;
        for (const auto& d : m_plan) {
            auto r = effects.rollback(d.device);
            if (!r)
                left.push_back(r.error().message);
            else
                left.insert(left.end(), r->left_behind.begin(), r->left_behind.end());
        }
        if (left.empty()) {
            (void)m_journal->remove();
            undone = "the destination volumes blockmig created were deleted";
        } else {
            undone = fmt::format("{}; run `{}`", fmt::join(left, "; "),
                                 jobs::recover_command(m_o.jobs_dir, m_journal->job().id));
        }
    }
    const std::string guest = m_guest.after_failure(m_shut_down, !m_report.shutdown.empty());
    Error e = cause;
    e.message = fmt::format(
        "migrate --offline failed in phase {}: {}; {}, the source files are "
        "untouched; {}",
        phase, cause.message, undone, guest);
    return std::unexpected(std::move(e));
}

Result<OfflineReport> OfflineRun::run() {
    if (auto r = prepare(); !r) return fail(r.error());
    if (auto r = create_volumes(); !r) return failed("create", r.error());
    const auto started = m_o.clock->now();
    if (auto r = shut_down(); !r) return failed("shutdown", r.error());
    if (auto r = copy_all(); !r) return failed("copy", r.error());
    for (const auto& d : m_plan)
        m_journal->stage([&](jobs::Job& j) { j.disk(d.device)->phase = "done"; });
    // The copies are the user's now: nothing of the job is left to undo.
    if (auto r = m_journal->remove(); !r) return fail(r.error());
    m_report.seconds = std::chrono::duration<double>(m_o.clock->now() - started).count();
    return m_report;
}

// The real pools unless the caller injected its own.
OfflineOptions with_defaults(const OfflineOptions& options) {
    OfflineOptions o = options;
    if (o.jobs_dir.empty()) o.jobs_dir = jobs::default_state_dir();
    if (!o.clock) o.clock = &system_clock();
    if (!o.pool_opener.open_pool)
        o.pool_opener.open_pool = [config = o.pools](std::string_view spec) {
            return pools::open_pool(spec, config);
        };
    if (!o.pool_opener.resolve_volume)
        o.pool_opener.resolve_volume = [config = o.pools](std::string_view spec) {
            return pools::resolve_volume(spec, config);
        };
    return o;
}

}  // namespace

Result<OfflineReport> run_offline_migrate(qmp::Client& src, const OfflineOptions& options,
                                          ProgressSink& progress, const std::atomic<bool>& cancel) {
    const OfflineOptions o = with_defaults(options);
    auto guest = make_qemu_guest(src, o);
    return OfflineRun(*guest, o, progress, cancel).run();
}

Result<OfflineReport> run_offline_migrate_stopped(const OfflineOptions& options,
                                                  ProgressSink& progress,
                                                  const std::atomic<bool>& cancel) {
    const OfflineOptions o = with_defaults(options);
    auto guest = make_stopped_guest(o);
    return OfflineRun(*guest, o, progress, cancel).run();
}

}  // namespace blockmig
