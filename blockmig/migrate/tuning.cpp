#include "tuning.hpp"

#include <fmt/core.h>

#include <bit>
#include <cmath>

#include "policy.hpp"
#include "qmp/features.hpp"
#include "qmp/migration.hpp"

namespace blockmig::migrate {

namespace {

using nlohmann::json;

// The XBZRLE cache holds recently sent pages to delta-encode their next
// send: a quarter of the RAM, as a power of two (older QEMUs insist), at
// least QEMU's own default of 64 MiB and at most 1 GiB.
std::uint64_t xbzrle_cache_size(std::uint64_t ram) {
    constexpr std::uint64_t k_min = 64ull << 20, k_max = 1ull << 30;
    const std::uint64_t quarter = std::bit_floor(std::max<std::uint64_t>(ram / 4, 1));
    return std::clamp(quarter, k_min, k_max);
}

class Planner {
  public:
    Planner(const TuningInput& in, const Support& src, const Support& dst)
        : m_in(in), m_src(src), m_dst(dst) {}

    Result<TuningPlan> plan() {
        if (m_in.parallel < 0 || m_in.parallel > k_max_multifd_channels)
            return fail(ErrorCode::invalid_argument,
                        fmt::format("migrate: --parallel {} is out of range (1-{})", m_in.parallel,
                                    k_max_multifd_channels));
        if (m_in.compress == MigrateCompress::xbzrle && m_in.parallel > 0)
            return fail(ErrorCode::invalid_argument,
                        "migrate: --compress xbzrle does not combine with --parallel: multifd "
                        "channels send whole pages (use --compress zstd)");
        if (auto r = base(); !r) return fail(r.error());
        if (auto r = policy(); !r) return fail(r.error());
        if (auto r = compression_and_channels(); !r) return fail(r.error());
        m_plan.summary = summary();
        return std::move(m_plan);
    }

  private:
    // What every migration sets: events, the switchover barrier, an explicit
    // bandwidth (never QEMU's 128 MiB/s default by accident), the downtime
    // limit (the source decides when to stop; the destination has no say),
    // where the policy starts it (migrate/policy.hpp steps it up).
    Result<void> base() {
        m_plan.source.capabilities = {{"events", true}, {"pause-before-switchover", true}};
        m_plan.source.parameters = {
            {"max-bandwidth", m_in.bandwidth},
            {"downtime-limit", initial_downtime(m_in.policy, m_in.max_downtime).count()}};
        m_plan.destination.capabilities = {{"events", true}};
        // The destination takes its image locks only at `cont`: until then
        // the source may still be resumed safely (QEMU >= 3.0).
        if (m_dst.capabilities.contains("late-block-activate"))
            m_plan.destination.capabilities.emplace_back("late-block-activate", true);
        return {};
    }

    Result<void> policy() {
        switch (m_in.policy) {
            case MigratePolicy::minimal_downtime:
                // Pre-copy only: the guest is never slowed down; the
                // controller raises the downtime limit, then gives up.
                return {};
            case MigratePolicy::postcopy:
                for (const Support* side : {&m_src, &m_dst})
                    if (auto r = need_capability(*side, "postcopy-ram", "--policy postcopy"); !r)
                        return r;
                m_plan.source.capabilities.emplace_back("postcopy-ram", true);
                m_plan.destination.capabilities.emplace_back("postcopy-ram", true);
                // After the switch the destination pulls pages: the cap the
                // user gave holds there too (0 = QEMU's unlimited default).
                if (m_src.parameters.contains("max-postcopy-bandwidth"))
                    m_plan.source.parameters["max-postcopy-bandwidth"] = m_in.bandwidth;
                m_plan.start_postcopy = true;
                return {};
            case MigratePolicy::suspend:
                // QEMU throttles the vCPUs only while the guest dirties RAM
                // faster than it is sent (throttle-trigger-threshold), so a
                // converging migration is not slowed: libvirt's
                // --auto-converge. The controller steepens the throttle's
                // steps from QEMU's default, then pauses the guest.
                if (auto r = need_capability(m_src, "auto-converge", "--policy suspend"); !r)
                    return r;
                m_plan.source.capabilities.emplace_back("auto-converge", true);
                if (auto r = need_parameter(m_src, "cpu-throttle-increment", "--policy suspend");
                    !r)
                    return r;
                m_plan.source.parameters["cpu-throttle-increment"] = k_start_throttle_increment;
                return {};
        }
        return {};
    }

    Result<void> compression_and_channels() {
        int channels = m_in.parallel;
        if (m_in.compress == MigrateCompress::zstd && channels == 0)
            channels = k_default_multifd_channels;  // zstd is a multifd method
        if (channels > 0) {
            const char* why = m_in.parallel > 0 ? "--parallel" : "--compress zstd";
            for (const Support* side : {&m_src, &m_dst}) {
                if (auto r = need_capability(*side, "multifd", why); !r) return r;
                if (auto r = need_parameter(*side, "multifd-channels", why); !r) return r;
            }
            for (SideSettings* s : {&m_plan.source, &m_plan.destination}) {
                s->capabilities.emplace_back("multifd", true);
                s->parameters["multifd-channels"] = channels;
            }
        }
        if (m_in.compress == MigrateCompress::zstd) {
            for (const Support* side : {&m_src, &m_dst}) {
                if (auto r = need_parameter(*side, "multifd-compression", "--compress zstd"); !r)
                    return r;
                if (!side->multifd_compressions.contains("zstd"))
                    return fail(ErrorCode::unsupported,
                                fmt::format("migrate: the {} QEMU has no zstd multifd compression "
                                            "(built without zstd): --compress zstd is not possible",
                                            side->side));
            }
            for (SideSettings* s : {&m_plan.source, &m_plan.destination})
                s->parameters["multifd-compression"] = "zstd";
        } else if (channels > 0 && m_src.parameters.contains("multifd-compression") &&
                   m_dst.parameters.contains("multifd-compression")) {
            // Both sides must agree; a leftover setting on either would not.
            for (SideSettings* s : {&m_plan.source, &m_plan.destination})
                s->parameters["multifd-compression"] = "none";
        }
        if (m_in.compress == MigrateCompress::xbzrle) {
            // Delta-encoding happens on the sender; the receiver decodes
            // XBZRLE pages whatever its own capability says.
            if (auto r = need_capability(m_src, "xbzrle", "--compress xbzrle"); !r) return r;
            if (auto r = need_parameter(m_src, "xbzrle-cache-size", "--compress xbzrle"); !r)
                return r;
            m_plan.source.capabilities.emplace_back("xbzrle", true);
            m_plan.source.parameters["xbzrle-cache-size"] = xbzrle_cache_size(m_in.ram);
        }
        m_channels = channels;
        return {};
    }

    Result<void> need_capability(const Support& side, const std::string& cap, const char* why) {
        if (side.capabilities.contains(cap)) return {};
        return fail(ErrorCode::unsupported,
                    fmt::format("migrate: the {} QEMU lacks the migration capability {} "
                                "(needed by {})",
                                side.side, cap, why));
    }

    Result<void> need_parameter(const Support& side, const std::string& param, const char* why) {
        if (side.parameters.contains(param)) return {};
        return fail(ErrorCode::unsupported,
                    fmt::format("migrate: the {} QEMU lacks the migration parameter {} "
                                "(needed by {})",
                                side.side, param, why));
    }

    std::string summary() const {
        std::string s = fmt::format("policy {}", to_string(m_in.policy));
        if (m_channels > 0) s += fmt::format(", {} multifd channels", m_channels);
        if (m_in.compress != MigrateCompress::none)
            s += fmt::format(", {} compression", to_string(m_in.compress));
        return s;
    }

    const TuningInput& m_in;
    const Support& m_src;
    const Support& m_dst;
    TuningPlan m_plan;
    int m_channels = 0;
};

}  // namespace

Result<Support> detect_support(qmp::Client& client, std::string side, bool compression_methods,
                               qmp::Milliseconds timeout) {
    Support s;
    s.side = std::move(side);
    auto caps = qmp::query_migrate_capabilities(client, timeout);
    if (!caps) return fail(caps.error().with_context(s.side + " query-migrate-capabilities"));
    for (const auto& [name, state] : *caps) s.capabilities.insert(name);
    auto params = qmp::query_migrate_parameters(client, timeout);
    if (!params) return fail(params.error().with_context(s.side + " query-migrate-parameters"));
    for (auto it = params->begin(); it != params->end(); ++it) s.parameters.insert(it.key());
    if (compression_methods) {
        // Only the methods QEMU was built with are in its schema (the enum
        // values carry 'if': 'CONFIG_ZSTD').
        auto features = qmp::Features::detect(client, timeout);
        if (!features) return fail(features.error().with_context(s.side + " query-qmp-schema"));
        for (auto& v :
             features->argument_enum_values("migrate-set-parameters", "multifd-compression"))
            s.multifd_compressions.insert(std::move(v));
    }
    return s;
}

Result<TuningPlan> plan_tuning(const TuningInput& in, const Support& src, const Support& dst) {
    return Planner(in, src, dst).plan();
}

std::chrono::seconds migration_timeout(std::chrono::seconds absolute, double per_gib,
                                       std::uint64_t bytes) {
    if (absolute.count() > 0) return absolute;
    if (per_gib <= 0) return std::chrono::seconds{0};
    const double gib = static_cast<double>(bytes) / static_cast<double>(1ull << 30);
    return std::chrono::seconds{std::max<std::int64_t>(1, std::llround(std::ceil(per_gib * gib)))};
}

std::string_view to_string(MigratePolicy policy) {
    switch (policy) {
        case MigratePolicy::minimal_downtime:
            return "minimal-downtime";
        case MigratePolicy::postcopy:
            return "postcopy";
        case MigratePolicy::suspend:
            return "suspend";
    }
    return "minimal-downtime";
}

std::string_view to_string(MigrateCompress compress) {
    switch (compress) {
        case MigrateCompress::none:
            return "none";
        case MigrateCompress::zstd:
            return "zstd";
        case MigrateCompress::xbzrle:
            return "xbzrle";
    }
    return "none";
}

}  // namespace blockmig::migrate
