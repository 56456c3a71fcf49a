// The live run of `blockmig migrate` (blockmig/migrate.hpp): pre-flight,
// then every side effect journaled (intent before, outcome after), events
// waited on with deadlines, and every ending — success, failure, Ctrl-C —
// settled by settle.hpp from what both QEMUs say.
#include "blockmig/migrate.hpp"

#include <fmt/core.h>

#include <cmath>

#include "copy_mode.hpp"
#include "jobs/guardian.hpp"
#include "jobs/journal.hpp"
#include "launch.hpp"
#include "policy.hpp"
#include "postcopy_recovery.hpp"
#include "preflight.hpp"
#include "progress/human_size.hpp"
#include "qmp/commands.hpp"
#include "qmp/migration.hpp"
#include "settle.hpp"
#include "storage.hpp"
#include "timeline.hpp"
#include "tls.hpp"
#include "tuning.hpp"

namespace blockmig {

namespace {

using jobs::EffectKind;
using jobs::RecordState;
using nlohmann::json;

// QEMU's own default max-bandwidth is 128 MiB/s (32 MiB/s before 5.2); an
// unlimited migration says so explicitly with a rate no link reaches.
constexpr std::uint64_t k_unlimited = std::uint64_t{1} << 40;

// A post-copy recovery gets at least this long, even past --timeout: the
// guest cannot be given back to the source, so giving up early saves nothing.
constexpr std::chrono::seconds k_recover_floor{30};

struct Failure {
    std::string phase;
    std::string cause;
};

class Run {
  public:
    // `dst`: nullptr when blockmig launches the destination (options.launch).
    Run(qmp::Client& src, qmp::Client* dst, const MigrateOptions& options, ProgressSink& progress,
        const std::atomic<bool>& cancel, MigrateReport* failed_report)
        : m_src(src),
          m_dst(dst),
          m_o(options),
          m_recorder(progress, *options.clock),
          m_progress(m_recorder),
          m_cancel(cancel),
          m_failed_report(failed_report) {}

    Result<MigrateReport> run() {
        auto r = run_job();
        // Ended here, not killed: whatever is left, the owner settled it as
        // far as it could and said so; the guardian only acts on a death.
        if (m_guardian) m_guardian->owner_finished();
        return r;
    }

  private:
    Result<MigrateReport> run_job() {
        if (!m_o.tls_dir.empty())
            if (auto r = migrate::check_tls_dir(m_o.tls_dir, migrate::is_local_qmp(m_o.src_qmp),
                                                !m_o.launch && migrate::is_local_qmp(m_o.dst_qmp));
                !r)
                return fail(r.error());
        if (m_o.launch) return run_launched();
        auto facts = preflight();
        if (!facts) return fail(facts.error());
        if (auto r = open_journal(facts->first, facts->second); !r) return fail(r.error());
        m_facts = std::move(*facts);
        announce_job();
        if (auto f = drive(); f) return failed(*f);
        return finish();
    }

    void announce_job() {
        m_report.job = m_journal->job().id;
        m_progress.event("job", {{"job", m_report.job}},
                         fmt::format("job {} (recover with `{}` if blockmig dies)", m_report.job,
                                     jobs::recover_command(jobs_dir(), m_report.job)));
    }

    // --dst-launch: the source is checked, the journal opened (its
    // destination is the {qmp} socket), volumes made and the QEMU started,
    // then the full pre-flight; any failure from here on is undone.
    Result<MigrateReport> run_launched() {
        auto src = migrate::gather(m_src, m_o.src_qmp, "source", m_o.qmp_timeout);
        if (!src) return fail(src.error());
        if (auto r = jobs::refuse_if_unrecovered(jobs_dir(), src->identity); !r)
            return fail(r.error());
        std::vector<std::string> disks;
        for (const auto& d : src->disks) disks.push_back(d.device);
        if (auto r = migrate::check_launch(m_o.launch->argv, disks); !r) return fail(r.error());
        // The volumes (an iSCSI pool's LUNs) are chosen before the job
        // exists: a refusal leaves nothing behind, not even a journal.
        auto plan = migrate::plan_launch(*m_o.launch, *src, jobs_dir());
        if (!plan) return fail(plan.error());
        m_launch_plan.emplace(std::move(*plan));
        migrate::SideFacts unknown;
        if (auto r = open_journal(*src, unknown); !r) return fail(r.error());
        announce_job();
        const auto socket = migrate::launch_qmp(*m_o.launch, jobs_dir(), m_report.job).address;
        if (auto w =
                m_journal->update([&](jobs::Job& job) { job.migration->destination.qmp = socket; });
            !w)
            return fail(w.error());
        m_progress.event("phase", {{"phase", "launch"}},
                         fmt::format("creating the destination's volumes in {} and starting it",
                                     m_o.launch->pool));
        auto client = migrate::launch_destination(*m_journal, *m_o.launch, *m_launch_plan,
                                                  jobs_dir(), m_o.qmp_timeout);
        if (!client) return failed(Failure{"launch", client.error().message});
        m_launched = std::move(*client);
        m_dst = m_launched.get();
        // Which volume (which LUN) each disk got: claims are in disk order.
        for (std::size_t i = 0; i < m_launch_plan->claims.size(); ++i) {
            const auto& disk = m_launch_plan->volumes.at(i).device;
            const auto& volume = m_launch_plan->claims[i].url();
            m_progress.event("volume", {{"disk", disk}, {"volume", volume}},
                             fmt::format("{}: destination volume {}", disk, volume));
        }
        auto dst = migrate::gather(*m_dst, socket, "destination", m_o.qmp_timeout);
        if (!dst) return failed(Failure{"launch", dst.error().message});
        if (auto r = migrate::check(*src, *dst, m_o.copy_storage, m_o.unsafe); !r)
            return failed(Failure{"launch", r.error().message});
        if (auto r = plan_tuning(*src, *dst); !r)
            return failed(Failure{"launch", r.error().message});
        if (auto w = m_journal->update([&](jobs::Job& job) {
                job.migration->destination = dst->identity;
                job.migration->destination.qmp = socket;
            });
            !w)
            return fail(w.error());
        m_facts = {std::move(*src), std::move(*dst)};
        if (auto f = drive(); f) return failed(*f);
        return finish();
    }

    std::filesystem::path jobs_dir() const {
        return m_o.jobs_dir.empty() ? jobs::default_state_dir() : m_o.jobs_dir;
    }

    Result<std::pair<migrate::SideFacts, migrate::SideFacts>> preflight() {
        auto src = migrate::gather(m_src, m_o.src_qmp, "source", m_o.qmp_timeout);
        if (!src) return fail(src.error());
        auto dst = migrate::gather(*m_dst, m_o.dst_qmp, "destination", m_o.qmp_timeout);
        if (!dst) return fail(dst.error());
        for (const auto* side : {&*src, &*dst})
            if (auto r = jobs::refuse_if_unrecovered(jobs_dir(), side->identity); !r)
                return fail(r.error());
        if (auto r = migrate::check(*src, *dst, m_o.copy_storage, m_o.unsafe); !r)
            return fail(r.error());
        if (auto r = plan_tuning(*src, *dst); !r) return fail(r.error());
        return std::pair{std::move(*src), std::move(*dst)};
    }

    // The options as QEMU settings on each side (migrate/tuning.hpp) and the
    // deadline; refused here, before anything is touched, when a side lacks one.
    Result<void> plan_tuning(const migrate::SideFacts& src, const migrate::SideFacts& dst) {
        const bool zstd = m_o.compress == MigrateCompress::zstd;
        auto src_support = migrate::detect_support(m_src, "source", zstd, m_o.qmp_timeout);
        if (!src_support) return fail(src_support.error());
        auto dst_support = migrate::detect_support(*m_dst, "destination", zstd, m_o.qmp_timeout);
        if (!dst_support) return fail(dst_support.error());
        m_report.bandwidth = m_o.bandwidth ? m_o.bandwidth : k_unlimited;
        auto plan = migrate::plan_tuning({.policy = m_o.policy,
                                          .compress = m_o.compress,
                                          .parallel = m_o.parallel,
                                          .bandwidth = m_report.bandwidth,
                                          .max_downtime = m_o.max_downtime,
                                          .ram = src.memory},
                                         *src_support, *dst_support);
        if (!plan) return fail(plan.error());
        m_plan = std::move(*plan);
        if (auto r = check_copy_mode(); !r) return r;
        if (!m_o.tls_dir.empty()) {
            if (auto r = migrate::check_tls_support(
                    m_src, *m_dst, m_o.copy_storage != CopyStorage::none, m_o.qmp_timeout);
                !r)
                return fail(r.error());
            m_plan.summary += ", TLS";
        }
        std::uint64_t bytes = src.memory;
        // inc copies the overlays: their host bytes, else (all) whole disks.
        if (m_o.copy_storage != CopyStorage::none)
            for (const auto& d : src.disks)
                bytes +=
                    m_o.copy_storage == CopyStorage::inc ? d.allocated.value_or(d.size) : d.size;
        m_report.timeout = migrate::migration_timeout(m_o.timeout, m_o.timeout_per_gib, bytes);
        (void)dst;
        return {};
    }

    // --copy-mode write-blocking where QEMU cannot have it is refused here,
    // before anything is touched (migrate/copy_mode.hpp). The source's
    // schema is kept for the disk copy: fetching and parsing it again would
    // cost another 30-50 ms before the first byte moves.
    Result<void> check_copy_mode() {
        if (m_o.copy_storage == CopyStorage::none) return {};
        auto features = source_features();
        if (!features) return fail(features.error());
        auto mode = migrate::initial_copy_mode(m_o.copy_mode, **features);
        if (!mode) return fail(mode.error());
        return {};
    }

    Result<const qmp::Features*> source_features() {
        if (!m_src_features) {
            auto features = qmp::Features::detect(m_src, m_o.qmp_timeout);
            if (!features) return fail(features.error().with_context("source query-qmp-schema"));
            m_src_features = std::move(*features);
        }
        return &*m_src_features;
    }

    Result<void> open_journal(const migrate::SideFacts& src, const migrate::SideFacts& dst) {
        jobs::Job job;
        job.kind = "migrate";
        job.guest = src.identity;
        jobs::MigrationFacts facts;
        facts.destination = dst.identity;
        facts.dst_addr = m_o.dst_addr;
        facts.copy_storage = m_o.copy_storage == CopyStorage::all   ? "all"
                             : m_o.copy_storage == CopyStorage::inc ? "inc"
                                                                    : "none";
        facts.keep_source = m_o.keep_source;
        facts.policy = migrate::to_string(m_o.policy);
        job.migration = std::move(facts);
        auto journal = jobs::Journal::create(jobs_dir(), std::move(job));
        if (!journal) return fail(journal.error());
        m_journal.emplace(std::move(*journal));
        return start_guardian();
    }

    // Before the first side effect: from here on QEMU would go on alone if
    // this process died. Nothing is done yet, so a guardian that cannot
    // start ends the job with its journal.
    Result<void> start_guardian() {
        if (m_o.guardian.empty()) return {};
        auto g = jobs::Guardian::start(m_o.guardian, jobs_dir(), m_journal->job().id);
        if (!g) {
            (void)m_journal->remove();
            return fail(g.error().with_context(
                "migrate: the job's guardian (give --no-guardian to run without one)"));
        }
        m_guardian.emplace(std::move(*g));
        return {};
    }

    // Intent, action, outcome. Returns the action's error.
    Result<void> effect(EffectKind kind, const std::string& name,
                        const std::function<Result<void>()>& act) {
        auto seq = m_journal->intend({.effect = kind, .name = name});
        if (!seq) return fail(seq.error());
        auto r = act();
        if (r) {
            if (auto w = m_journal->outcome(*seq, RecordState::done); !w) return w;
        } else if (is_definite_refusal(r.error())) {
            if (auto w = m_journal->outcome(*seq, RecordState::failed, r.error().message); !w)
                return w;
        }
        return r;
    }

    Result<void> phase(const std::string& name, const std::string& message) {
        m_progress.event("phase", {{"phase", name}}, message);
        return m_journal->update([&](jobs::Job& job) { job.migration->phase = name; });
    }

    // The whole run up to a completed migration; a Failure says where it stopped.
    std::optional<Failure> drive() {
        if (auto r = configure(); !r) return Failure{"configure", r.error().message};
        if (m_o.copy_storage != CopyStorage::none) {
            if (auto r = phase("mirror", m_o.copy_storage == CopyStorage::inc
                                             ? "copying every disk's overlay to the destination"
                                             : "copying every disk to the destination");
                !r)
                return Failure{"mirror", r.error().message};
            auto features = source_features();
            if (!features) return Failure{"mirror", features.error().message};
            m_storage.emplace(m_src, *m_dst, *m_journal, m_o, m_progress);
            if (auto r = m_storage->copy(m_facts.first, m_facts.second, **features, m_cancel); !r)
                return Failure{"mirror", r.error().message};
        }
        auto uri = listen();
        if (!uri) return Failure{"listen", uri.error().message};
        if (auto f = migrate_ram(*uri); f) return f;
        return switchover();
    }

    Result<void> configure() {
        if (auto r = phase("configured", "setting migration capabilities and parameters (" +
                                             m_plan.summary + ")");
            !r)
            return r;
        if (!m_o.tls_dir.empty()) {
            if (auto r = migrate::add_tls_objects(*m_journal, m_src, *m_dst, m_o.tls_dir,
                                                  m_o.qmp_timeout);
                !r)
                return r;
            migrate::add_tls_parameters(m_plan, migrate::tls_object_id(m_journal->job().id),
                                        migrate::nbd_host(m_o.dst_addr));
        }
        if (auto r = effect(EffectKind::migration_configured, "destination",
                            [&] { return apply(*m_dst, m_plan.destination, "destination"); });
            !r)
            return r;
        if (auto r = save_source_settings(); !r) return r;
        return effect(EffectKind::migration_configured, "source",
                      [&] { return apply(m_src, m_plan.source, "source"); });
    }

    Result<void> apply(qmp::Client& client, const migrate::SideSettings& settings,
                       const std::string& side) {
        std::string names;
        for (const auto& [name, on] : settings.capabilities)
            names += (names.empty() ? "" : ", ") + name;
        if (auto r = qmp::migrate_set_capabilities(client, settings.capabilities, m_o.qmp_timeout);
            !r)
            return fail(r.error().with_context(
                fmt::format("the {} QEMU refused the capabilities {}", side, names)));
        if (settings.parameters.empty()) return {};
        if (auto r = qmp::migrate_set_parameters(client, settings.parameters, m_o.qmp_timeout); !r)
            return fail(r.error().with_context(fmt::format("the {} QEMU refused the parameters {}",
                                                           side, settings.parameters.dump())));
        return {};
    }

    // What the source had before, journaled before it is changed.
    Result<void> save_source_settings() {
        auto caps = qmp::query_migrate_capabilities(m_src, m_o.qmp_timeout);
        if (!caps) return fail(caps.error().with_context("source capabilities"));
        auto params = qmp::query_migrate_parameters(m_src, m_o.qmp_timeout);
        if (!params) return fail(params.error().with_context("source parameters"));
        json saved{{"capabilities", json::object()}, {"parameters", json::object()}};
        for (const auto& [name, state] : *caps)
            for (const auto& planned : m_plan.source.capabilities)
                if (planned.first == name) saved["capabilities"][name] = state;
        for (auto it = m_plan.source.parameters.begin(); it != m_plan.source.parameters.end(); ++it)
            if (params->contains(it.key())) saved["parameters"][it.key()] = (*params)[it.key()];
        return m_journal->update([&](jobs::Job& job) { job.migration->source_saved = saved; });
    }

    // A destination blockmig launched stays up after a failed incoming
    // migration when its QEMU can (migrate/launch.hpp). A schema that cannot
    // be read leaves QEMU's default: it exits, which release.hpp proves.
    qmp::IncomingOptions incoming_options() {
        if (!m_launched) return {};
        auto features = qmp::Features::detect(*m_dst, m_o.qmp_timeout);
        if (!features) return {};
        return {.exit_on_error = migrate::incoming_exit_on_error(*features, true)};
    }

    // migrate-incoming on the destination; the URI the source must dial.
    Result<std::string> listen() {
        std::string host = m_o.dst_addr, port = "0";
        if (auto colon = host.rfind(':'); colon != std::string::npos && host.back() != ']') {
            port = host.substr(colon + 1);
            host = host.substr(0, colon);
        }
        const std::string uri = fmt::format("tcp:{}:{}", host, port);
        const qmp::IncomingOptions incoming = incoming_options();
        if (auto r = effect(
                EffectKind::incoming_started, uri,
                [&] { return qmp::migrate_incoming(*m_dst, uri, incoming, m_o.qmp_timeout); });
            !r)
            return fail(r.error().with_context("migrate-incoming " + uri));
        if (port != "0") return uri;
        // Port 0: QEMU picked a free one and reports it (socket-address).
        auto info = qmp::query_migrate(*m_dst, m_o.qmp_timeout);
        if (!info) return fail(info.error().with_context("destination query-migrate"));
        if (info->listen_ports.empty())
            return fail(ErrorCode::unsupported,
                        "the destination QEMU does not report its listening port; give "
                        "--dst-addr HOST:PORT");
        return fmt::format("tcp:{}:{}", host, info->listen_ports.front());
    }

    std::optional<Failure> migrate_ram(const std::string& uri) {
        auto sub = m_src.subscribe("MIGRATION");
        if (auto r = phase("ram", fmt::format("migrating RAM to {} at {}", uri,
                                              m_o.bandwidth ? human_mib(m_o.bandwidth) + "/s"
                                                            : std::string("full speed")));
            !r)
            return Failure{"ram", r.error().message};
        m_started = m_o.clock->now();
        if (auto r = effect(EffectKind::migration_started, uri,
                            [&] { return qmp::migrate(m_src, uri, m_o.qmp_timeout); });
            !r)
            return Failure{"ram", "migrate: " + r.error().message};
        m_deadline = deadline_after(*m_o.clock, m_report.timeout);
        migrate::PolicyController policy({.policy = m_o.policy,
                                          .max_downtime = m_o.max_downtime,
                                          .deadline = m_deadline,
                                          .timeout = m_report.timeout,
                                          .ram_started = m_o.clock->now(),
                                          .postcopy_after = m_o.postcopy_after});
        m_downtime_limit = policy.downtime();  // what configure() set on the source
        auto next_sample = m_o.clock->now() + m_o.progress_interval;
        for (;;) {
            if (m_cancel.load()) return Failure{"ram", "interrupted"};
            if (m_dst->state() == qmp::State::dead)
                return Failure{"ram", "lost the destination's QMP connection (" +
                                          m_dst->dead_reason().message + ")"};
            auto ev = sub.next(m_o.progress_interval);
            if (!ev && ev.error().code != ErrorCode::timeout)
                return Failure{"ram",
                               "lost the source's QMP connection (" + ev.error().message + ")"};
            if (ev) {
                const std::string status = ev->data.value("status", "");
                if (status == "pre-switchover") {
                    guest_event("paused", "switchover");
                    return std::nullopt;
                }
                if (status == "failed" || status == "cancelled" || status == "completed")
                    return Failure{"ram", why_ended(status)};
            }
            // A quiet interval, or one full of events: sample either way.
            if (ev && m_o.clock->now() < next_sample) continue;
            next_sample = m_o.clock->now() + m_o.progress_interval;
            if (auto f = steer(policy); f) return f;
        }
    }

    // One query-migrate: the progress line, then what the policy makes of it
    // (migrate/policy.hpp), sent to the source and listed in the report.
    std::optional<Failure> steer(migrate::PolicyController& policy) {
        const auto info = report_progress();
        std::optional<migrate::RamSample> sample;
        if (info && info->ram)
            sample =
                migrate::RamSample{.remaining = info->ram->remaining,
                                   .transferred = info->ram->transferred,
                                   .passes = info->ram->dirty_sync_count,
                                   .dirty_pages_rate = info->ram->dirty_pages_rate,
                                   .cpu_throttle = info->raw.value("cpu-throttle-percentage", 0)};
        const bool in_sync =
            m_o.policy != MigratePolicy::postcopy || !m_storage || m_storage->in_sync();
        const auto decision = policy.decide(m_o.clock->now(), sample, in_sync);
        if (!decision) return std::nullopt;
        const auto& a = *decision;
        Result<void> r;
        switch (a.step) {
            case migrate::PolicyStep::set_downtime:
                r = qmp::migrate_set_parameters(m_src, {{"downtime-limit", a.downtime.count()}},
                                                m_o.qmp_timeout);
                break;
            case migrate::PolicyStep::throttle:
                r = qmp::migrate_set_parameters(
                    m_src, {{"cpu-throttle-increment", a.throttle_increment}}, m_o.qmp_timeout);
                break;
            case migrate::PolicyStep::pause_guest:
                // Undone on any failure before the switchover: settle.hpp
                // resumes a source guest that is not running.
                r = qmp::stop(m_src, m_o.qmp_timeout);
                if (r) guest_event("paused", "suspend");
                break;
            case migrate::PolicyStep::start_postcopy:
                r = request_postcopy();
                break;
            case migrate::PolicyStep::wait:
                break;
            case migrate::PolicyStep::abort:
                action(a.text);
                return Failure{"ram", a.text};
        }
        if (!r) return Failure{"ram", a.text + " failed: " + r.error().message};
        m_downtime_limit = policy.downtime();
        action(a.text);
        return std::nullopt;
    }

    // Journaled before it is sent: once the switchover follows, the source
    // is never resumed (settle.hpp, post-copy).
    Result<void> request_postcopy() {
        if (auto r = effect(EffectKind::postcopy_requested, "migrate-start-postcopy",
                            [&] { return qmp::migrate_start_postcopy(m_src, m_o.qmp_timeout); });
            !r)
            return r;
        return {};
    }

    // `qemu_status`: the MIGRATION status QEMU reported that prompted it.
    void action(const std::string& text, const std::string& qemu_status = "") {
        m_report.actions.push_back(text);
        json fields{{"policy", migrate::to_string(m_o.policy)}, {"action", text}};
        if (!qemu_status.empty()) fields["qemu_status"] = qemu_status;
        m_progress.event("policy", fields, text);
    }

    std::string why_ended(const std::string& status) {
        auto info = qmp::query_migrate(m_src, m_o.qmp_timeout);
        std::string desc = info && info->error_desc ? *info->error_desc : "";
        if (status == "completed")
            return "the migration completed without pausing for the switchover";
        return fmt::format("the migration {}{}", status, desc.empty() ? "" : ": " + desc);
    }

    // The guest stops (pre-switchover, --policy suspend) or runs again on
    // the destination: the pause the report marks.
    void guest_event(const std::string& state, const std::string& reason) {
        m_progress.event("guest", {{"state", state}, {"reason", reason}},
                         state == "paused" ? fmt::format("the guest is paused ({})", reason)
                                           : "the guest runs on the destination");
    }

    // Returns what query-migrate said (nullopt when it failed).
    std::optional<qmp::MigrationInfo> report_progress() {
        if (m_storage) m_storage->sample();
        auto info = qmp::query_migrate(m_src, m_o.qmp_timeout);
        if (!info) return std::nullopt;
        if (info->ram) ram_event(*info);
        return std::move(*info);
    }

    // One RAM sample for the live view and the report. The downtime limit
    // shown is the one blockmig set last (only blockmig changes it while
    // it holds the monitor), so sampling costs one query-migrate, no more.
    void ram_event(const qmp::MigrationInfo& info) {
        const auto& ram = *info.ram;
        // auto-converge (--policy suspend): how much QEMU slows the vCPUs.
        const int throttle = info.raw.value("cpu-throttle-percentage", 0);
        const double rate = ram.mbps * 1e6 / 8;
        // dirty-pages-rate is in pages/s, 0 until QEMU's second pass.
        const double dirty = static_cast<double>(ram.dirty_pages_rate) *
                             static_cast<double>(ram.page_size ? ram.page_size : 4096);
        const std::int64_t limit = m_downtime_limit.count();
        m_progress.event(
            "ram",
            {{"status", info.status},
             {"transferred", ram.transferred},
             {"remaining", ram.remaining},
             {"total", ram.total},
             {"rate", std::llround(rate)},
             {"iteration", ram.dirty_sync_count},
             {"dirty_pages_rate", ram.dirty_pages_rate},
             {"dirty_rate", std::llround(dirty)},
             {"downtime_limit_ms", limit},
             {"cpu_throttle", throttle},
             {"expected_downtime_ms", info.expected_downtime_ms.value_or(-1)}},
            fmt::format("ram: pass {}, {} sent, {} remaining, {}/s, guest dirties {}/s, downtime "
                        "limit {} ms{}",
                        ram.dirty_sync_count, human_mib(ram.transferred), human_mib(ram.remaining),
                        human_mib(static_cast<std::uint64_t>(rate)),
                        human_mib(static_cast<std::uint64_t>(dirty)), limit,
                        throttle ? fmt::format(", vCPUs throttled {} %", throttle) : ""));
    }

    // At pre-switchover the source's vCPUs are stopped: the barrier is
    // journaled, then migrate-continue sends the final state.
    std::optional<Failure> switchover() {
        auto sub = m_src.subscribe("MIGRATION");
        // vCPUs stopped: the final sync of every disk, then the source lets
        // go of the destination's exports before the destination may run.
        if (m_storage)
            if (auto r = m_storage->finish(); !r)
                return Failure{"switchover", "final disk sync: " + r.error().message};
        // The guest is paused from here until the destination runs: only the
        // barrier's intent (one durable write) stands before migrate-continue.
        if (auto r = effect(
                EffectKind::switchover_sent, "migrate-continue",
                [&] { return qmp::migrate_continue(m_src, "pre-switchover", m_o.qmp_timeout); });
            !r)
            return Failure{"switchover", "migrate-continue: " + r.error().message};
        if (auto r = phase("switchover", "switching over"); !r)
            return Failure{"switchover", r.error().message};
        auto status = wait_for_completion(sub);
        if (!status)
            return Failure{"switchover", "waiting for completion: " + status.error().message};
        if (*status != "completed") return Failure{"switchover", why_ended(*status)};
        record_stats();
        return std::nullopt;
    }

    // The migration's final status. Without post-copy the final state moves
    // within switchover_timeout. In post-copy the guest already runs on the
    // destination while the rest of its RAM follows at link speed: the wait
    // lasts as long as pages keep moving. A broken link (QEMU's
    // postcopy-paused, or no page moved for postcopy_stall) is recovered
    // (migrate/postcopy_recovery.hpp), never cancelled.
    Result<std::string> wait_for_completion(qmp::EventSubscription& sub) {
        auto last_progress = m_o.clock->now();
        std::uint64_t transferred = 0;
        for (;;) {
            const auto quiet = m_o.clock->now() - last_progress;
            if (!m_report.postcopy && quiet > m_o.switchover_timeout)
                return fail(ErrorCode::timeout, "timed out");
            if (m_report.postcopy && quiet > m_o.postcopy_stall) {
                const auto stall =
                    std::chrono::duration_cast<std::chrono::seconds>(m_o.postcopy_stall).count();
                auto r = recover_link(sub, fmt::format("no page moved for {} s", stall));
                if (!r) return fail(r.error());
                if (*r) return **r;
                last_progress = m_o.clock->now();
                continue;
            }
            auto ev = sub.next(m_report.postcopy ? m_o.progress_interval : m_o.switchover_timeout);
            if (!ev) {
                if (ev.error().code != ErrorCode::timeout) return fail(ev.error());
                if (!m_report.postcopy) continue;
                auto info = qmp::query_migrate(m_src, m_o.qmp_timeout);
                if (info && info->status == "completed") return info->status;
                // No answer or no RAM figures prove nothing: only a count
                // that stands still is a stall.
                if (!info || !info->ram || info->ram->transferred != transferred) {
                    if (info && info->ram) transferred = info->ram->transferred;
                    last_progress = m_o.clock->now();
                }
                report_progress();
                note_destination_running();
                continue;
            }
            const std::string status = ev->data.value("status", "");
            if (status == "postcopy-active" && !m_report.postcopy) {
                m_report.postcopy = true;
                last_progress = m_o.clock->now();
                action(
                    "switched to post-copy: the guest runs on the destination and the rest "
                    "of its RAM follows; from here the source is never resumed",
                    status);
                if (auto r = phase("postcopy", "post-copy: the guest runs on the destination"); !r)
                    return fail(r.error());
                note_destination_running();
            }
            if (status == "postcopy-paused" && m_report.postcopy) {
                auto r = recover_link(sub, "QEMU paused the post-copy (postcopy-paused)");
                if (!r) return fail(r.error());
                if (*r) return **r;
                last_progress = m_o.clock->now();
                continue;
            }
            if (status == "completed" || status == "failed" || status == "cancelled") return status;
        }
    }

    // The link broke in post-copy: the guest is frozen on the destination
    // until the pages only the source has can flow again. One line, then
    // retries until the link is back or the deadline. nullopt: pages flow
    // again (`sub` renewed, so no stale event of the recovery is read);
    // a status: the migration's end; an error: recovery is impossible.
    Result<std::optional<std::string>> recover_link(qmp::EventSubscription& sub,
                                                    const std::string& symptom) {
        const auto now = m_o.clock->now();
        // The job's deadline, but never less than a short window to try in;
        // without --timeout, postcopy_recover_timeout.
        const auto deadline =
            m_report.timeout.count() > 0
                ? std::max(m_deadline, now + std::min<std::chrono::nanoseconds>(
                                                 m_o.postcopy_recover_timeout, k_recover_floor))
                : now + m_o.postcopy_recover_timeout;
        const auto window = std::chrono::duration_cast<std::chrono::seconds>(deadline - now);
        action(fmt::format("the link broke during post-copy ({}): the guest waits on the "
                           "destination for RAM only the source has; retrying the connection "
                           "(migrate-recover, migrate resume) for up to {} s",
                           symptom, window.count()),
               "postcopy-paused");
        migrate::RecoveryOptions ro{.dst_addr = m_o.dst_addr,
                                    .clock = m_o.clock,
                                    .deadline = deadline,
                                    .qmp_timeout = m_o.qmp_timeout,
                                    .retry_interval = m_o.postcopy_retry_interval,
                                    .attempt_timeout = m_o.switchover_timeout};
        auto r = migrate::recover_postcopy(*m_journal, m_src, m_dst, ro);
        if (!r) return fail(r.error());
        m_destination_gone = r->destination_gone;
        if (r->outcome == migrate::RecoveryOutcome::impossible)
            return fail(ErrorCode::io_error,
                        fmt::format("the link broke during post-copy and the recovery failed: {}",
                                    r->reason));
        const auto took = std::chrono::duration_cast<std::chrono::seconds>(m_o.clock->now() - now);
        action(fmt::format("post-copy recovered after {} attempt{} ({} s): {}", r->attempts,
                           r->attempts == 1 ? "" : "s", took.count(),
                           r->outcome == migrate::RecoveryOutcome::completed
                               ? "the migration completed"
                               : "pages flow again"),
               r->outcome == migrate::RecoveryOutcome::completed ? "completed" : "postcopy-active");
        if (r->outcome == migrate::RecoveryOutcome::completed) return std::string("completed");
        sub = m_src.subscribe("MIGRATION");
        auto info = qmp::query_migrate(m_src, m_o.qmp_timeout);
        if (info && info->status == "completed") return std::string("completed");
        return std::optional<std::string>{};
    }

    // Post-copy: the guest's pause ends when the destination runs it, long
    // before the last page arrives. Asked until it says so (the report's mark).
    void note_destination_running() {
        if (m_destination_running) return;
        auto status = qmp::query_status(*m_dst, m_o.qmp_timeout);
        if (!status || !status->running) return;
        m_destination_running = true;
        guest_event("running", "post-copy");
    }

    void record_stats() {
        auto info = qmp::query_migrate(m_src, m_o.qmp_timeout);
        // QEMU emits MIGRATION "completed" before its migration thread fills
        // in the final times (migration_calculate_complete): a query right
        // after the event can read downtime 0. A short, bounded re-read.
        for (int i = 0;
             i < 10 && info && info->status == "completed" && info->downtime_ms.value_or(0) == 0;
             ++i) {
            m_o.clock->sleep_for(std::chrono::milliseconds(20));
            info = qmp::query_migrate(m_src, m_o.qmp_timeout);
        }
        if (!info) return;
        m_report.downtime_ms = info->downtime_ms.value_or(-1);
        if (const auto bytes =
                info->raw.value("ram", json::object()).value("multifd-bytes", std::int64_t{-1});
            bytes >= 0)
            m_report.multifd_bytes = bytes;
        if (info->ram) {
            m_report.ram_transferred = info->ram->transferred;
            m_report.iterations = info->ram->dirty_sync_count;
            ram_event(*info);  // the last point of the report's series
        }
        fill_streams();
    }

    // Bytes per stream: QEMU's `transferred` counts the multifd channels too.
    void fill_streams() {
        m_report.streams.clear();
        const std::uint64_t multifd =
            m_report.multifd_bytes > 0 ? static_cast<std::uint64_t>(m_report.multifd_bytes) : 0;
        m_report.streams.push_back(
            {"ram", m_report.ram_transferred - std::min(multifd, m_report.ram_transferred)});
        if (m_report.multifd_bytes >= 0 && m_o.parallel > 0)
            m_report.streams.push_back({"multifd", multifd});
        if (m_storage)
            for (auto& s : m_storage->streams()) m_report.streams.push_back(std::move(s));
    }

    // The end of the run as the report sees it: the guest runs on the destination.
    void close_report() {
        if (!m_destination_running) guest_event("running", "destination");
        m_report.total = std::chrono::milliseconds(std::llround(m_recorder.elapsed() * 1000));
        m_report.timeline = m_recorder.timeline();
    }

    // Success: the same forward steps a recovery takes (cont on the
    // destination once its side completed, quit the source).
    Result<MigrateReport> finish() {
        if (auto r =
                phase("completed", "migration completed; starting the guest on the destination");
            !r)
            return fail(r.error());
        // settle() removes the exports before its `cont` (see release_for_forward).
        auto s = migrate::settle(*m_journal, &m_src, m_dst, m_o.qmp_timeout);
        if (!s) return fail(s.error());
        m_report.duration =
            std::chrono::duration_cast<std::chrono::milliseconds>(m_o.clock->now() - m_started);
        if (!s->settled || !s->left_behind.empty() || s->verdict != migrate::Verdict::forward)
            return fail(ErrorCode::invalid_state,
                        fmt::format("migrate: the migration completed but {}; run `{}`",
                                    s->left_behind.empty() ? s->reason : s->left_behind.front(),
                                    jobs::recover_command(jobs_dir(), m_report.job)));
        for (const auto& a : s->actions)
            if (a.starts_with("quit")) m_report.source_quit = true;
        close_report();
        if (auto r = m_journal->remove(); !r) return fail(r.error());
        return m_report;
    }

    // Any failure once the job began: settled, and the report up to here
    // handed to the caller with the failure named (--report, --output json).
    Result<MigrateReport> failed(const Failure& f) {
        auto r = settle_failure(f);
        if (!r && m_failed_report) *m_failed_report = failed_report(f, r.error().message);
        return r;
    }

    // The report up to the failure: QEMU's completion figures stay unknown,
    // the RAM sent is the last the live view showed.
    MigrateReport failed_report(const Failure& f, const std::string& message) {
        m_report.total = std::chrono::milliseconds(std::llround(m_recorder.elapsed() * 1000));
        m_report.timeline = m_recorder.timeline();
        for (const auto& s : m_report.timeline.samples)
            if (!std::isnan(s.ram_transferred))
                m_report.ram_transferred = static_cast<std::uint64_t>(s.ram_transferred);
        fill_streams();
        m_report.failure = MigrateFailure{f.phase, f.cause, message};
        return m_report;
    }

    // Settles a failure from the truth, then one line naming phase and cause.
    Result<MigrateReport> settle_failure(const Failure& f) {
        // settle() also cancels the mirrors and removes the NBD nodes and
        // exports (from the journal, as a recovery would); the source's disks
        // were never switched, so this never touches the guest's data.
        auto s = migrate::settle(*m_journal, &m_src,
                                 !m_dst || m_dst->state() == qmp::State::dead ? nullptr : m_dst,
                                 m_o.qmp_timeout);
        if (!s) return fail(s.error());
        if (s->verdict == migrate::Verdict::forward && s->settled && s->left_behind.empty()) {
            // The migration got through after all (e.g. completed while being cancelled).
            record_stats();
            close_report();
            if (auto r = m_journal->remove(); !r) return fail(r.error());
            return m_report;
        }
        if (s->verdict == migrate::Verdict::undo && s->settled && s->left_behind.empty()) {
            if (auto r = m_journal->remove(); !r) return fail(r.error());
            return fail(ErrorCode::io_error,
                        fmt::format("migrate failed in phase {}: {}; migration cancelled, the "
                                    "guest keeps running on the source",
                                    f.phase, f.cause));
        }
        if (m_report.postcopy) return split(f);
        std::string state = s->left_behind.empty() ? s->reason : s->left_behind.front();
        return fail(
            ErrorCode::invalid_state,
            fmt::format("migrate failed in phase {}: {}; {}; nothing unsafe was done: run "
                        "`{}`",
                        f.phase, f.cause, state, jobs::recover_command(jobs_dir(), m_report.job)));
    }

    // Post-copy failed: the guest's RAM is split between both hosts. One line
    // with what is true and what the admin can do; nothing was stopped.
    Result<MigrateReport> split(const Failure& f) {
        const std::string recover = jobs::recover_command(jobs_dir(), m_report.job);
        return fail(
            ErrorCode::invalid_state,
            fmt::format("migrate failed in phase {}: {}; the guest's state is split between the "
                        "two hosts (it ran on the destination, part of its RAM is only on the "
                        "source), so it cannot be resumed on the source; the source QEMU is kept "
                        "paused, never quit; {}",
                        f.phase, f.cause,
                        m_destination_gone
                            ? std::string("with the destination QEMU gone the guest cannot "
                                          "run anywhere: restart it from its disks (the source "
                                          "QEMU still holds the rest of its RAM)")
                            : fmt::format("`{}` retries the resume once the link and the "
                                          "destination are back",
                                          recover)));
    }

    qmp::Client& m_src;
    qmp::Client* m_dst;
    std::unique_ptr<qmp::Client> m_launched;  // the destination's QMP, when blockmig started it
    std::optional<migrate::LaunchPlan> m_launch_plan;  // its volumes and their claims
    const MigrateOptions& m_o;
    // Passes everything on to the caller's sink and keeps the time series.
    migrate::TimelineRecorder m_recorder;
    ProgressSink& m_progress;
    const std::atomic<bool>& m_cancel;
    MigrateReport* m_failed_report;  // where a failed run's report goes, or nullptr
    std::optional<jobs::Journal> m_journal;
    std::optional<jobs::Guardian> m_guardian;  // recovers the job if this process dies
    std::pair<migrate::SideFacts, migrate::SideFacts> m_facts;
    std::optional<migrate::StorageCopy> m_storage;
    std::optional<qmp::Features> m_src_features;  // copy_storage all/inc: the source's schema
    migrate::TuningPlan m_plan;
    bool m_destination_running = false;  // the guest was seen running there (post-copy)
    // The source's downtime-limit as blockmig last set it (the policy's).
    std::chrono::milliseconds m_downtime_limit{-1};
    bool m_destination_gone = false;                          // a post-copy recovery found it gone
    Clock::time_point m_deadline = Clock::time_point::max();  // --timeout, from `migrate`
    Clock::time_point m_started{};
    MigrateReport m_report;
};

}  // namespace

Result<MigrateReport> run_migrate(qmp::Client& src, qmp::Client& dst, const MigrateOptions& options,
                                  ProgressSink& progress, const std::atomic<bool>& cancel,
                                  MigrateReport* failed_report) {
    return Run(src, &dst, options, progress, cancel, failed_report).run();
}

// The pools make raw volumes only: an inc destination needs qcow2 overlays
// over the shared base, which the user creates (docs/state-machines.md).
Error launch_refusal(CopyStorage copy_storage) {
    return Error{ErrorCode::invalid_argument,
                 copy_storage == CopyStorage::inc
                     ? "migrate --dst-launch: with --copy-storage inc create the destination's "
                       "qcow2 overlays over the shared base yourself (qemu-img create -f qcow2 "
                       "-b BASE -F FMT) and start its QEMU, then give --dst-qmp"
                     : "migrate --dst-launch: needs --copy-storage all"};
}

Result<MigrateReport> run_migrate_launching(qmp::Client& src, const MigrateOptions& options,
                                            ProgressSink& progress, const std::atomic<bool>& cancel,
                                            MigrateReport* failed_report) {
    if (!options.launch)
        return fail(ErrorCode::invalid_argument, "migrate: no destination to launch");
    if (options.copy_storage != CopyStorage::all) return fail(launch_refusal(options.copy_storage));
    return Run(src, nullptr, options, progress, cancel, failed_report).run();
}

}  // namespace blockmig
