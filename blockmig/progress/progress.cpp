#include "blockmig/progress.hpp"

#include <fmt/core.h>

#include <cmath>
#include <map>

namespace blockmig {

namespace {

class JsonProgress : public ProgressSink {
  public:
    void progress(const ProgressSample& s) override {
        auto now = std::chrono::steady_clock::now();
        auto& last = m_last_print[s.item];
        if (now - last < std::chrono::milliseconds(500) && s.bytes < s.total) return;
        last = now;
        nlohmann::json j{{"event", "progress"}, {"disk", s.item},   {"phase", s.phase},
                         {"bytes", s.bytes},    {"total", s.total}, {"rate", std::llround(s.rate)}};
        j["eta"] = s.eta_seconds < 0 ? nlohmann::json(nullptr)
                                     : nlohmann::json(std::lround(s.eta_seconds));
        fmt::print("{}\n", j.dump());
        std::fflush(stdout);
    }

    void event(const std::string& name, const nlohmann::json& fields, const std::string&) override {
        nlohmann::json j{{"event", name}};
        for (const auto& [k, v] : fields.items()) j[k] = v;
        fmt::print("{}\n", j.dump());
        std::fflush(stdout);
    }

  private:
    std::map<std::string, std::chrono::steady_clock::time_point> m_last_print;
};

class NullProgress : public ProgressSink {
  public:
    void progress(const ProgressSample&) override {}
    void event(const std::string&, const nlohmann::json&, const std::string&) override {}
};

}  // namespace

std::unique_ptr<ProgressSink> make_json_progress() { return std::make_unique<JsonProgress>(); }
std::unique_ptr<ProgressSink> make_null_progress() { return std::make_unique<NullProgress>(); }

void RateMeter::add(std::chrono::steady_clock::time_point when, std::uint64_t bytes) {
    if (m_have_last && when > m_last_time && bytes >= m_last_bytes) {
        double dt = std::chrono::duration<double>(when - m_last_time).count();
        double instant = static_cast<double>(bytes - m_last_bytes) / dt;
        // Exponential smoothing: mirror progress arrives in bursts of buf-size.
        m_rate = m_rate == 0 ? instant : 0.7 * m_rate + 0.3 * instant;
    }
    m_last_time = when;
    m_last_bytes = bytes;
    m_have_last = true;
}

double RateMeter::eta(std::uint64_t remaining) const {
    if (m_rate <= 0) return -1;
    return static_cast<double>(remaining) / m_rate;
}

}  // namespace blockmig
