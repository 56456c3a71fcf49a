#include "blockmig/progress.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include <cmath>
#include <map>

namespace blockmig {

namespace {

std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int unit = 0;
    while (bytes >= 1024 && unit < 4) bytes /= 1024, ++unit;
    return unit == 0 ? fmt::format("{:.0f} B", bytes)
                     : fmt::format("{:.1f} {}", bytes, units[unit]);
}

std::string human_eta(double seconds) {
    if (seconds < 0 || !std::isfinite(seconds)) return "--:--";
    auto s = static_cast<long>(seconds + 0.5);
    return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                     : fmt::format("{:02}:{:02}", s / 60, s % 60);
}

class TextProgress : public ProgressSink {
  public:
    TextProgress() : m_tty(isatty(STDERR_FILENO) == 1) {}
    ~TextProgress() override { end_line(); }

    void progress(const ProgressSample& s) override {
        const double pct = s.total ? 100.0 * static_cast<double>(s.bytes) / s.total : 0;
        std::string line =
            fmt::format("{:<8} {:<5} {:5.1f}% {:>10} / {:<10} {:>10}/s  ETA {}", s.item, s.phase,
                        pct, human_bytes(s.bytes), human_bytes(s.total), human_bytes(s.rate),
                        human_eta(s.eta_seconds));
        if (m_tty) {
            // One live line per item, redrawn in place.
            fmt::print(stderr, "\r{:<78}", line);
            m_open_line = true;
        } else {
            // Not a terminal (a log file, CI): one line every few seconds per item.
            auto now = std::chrono::steady_clock::now();
            auto& last = m_last_print[s.item];
            if (now - last < std::chrono::seconds(2)) return;
            last = now;
            fmt::print(stderr, "{}\n", line);
        }
        std::fflush(stderr);
    }

    void event(const std::string&, const nlohmann::json&, const std::string& message) override {
        end_line();
        fmt::print(stderr, "{}\n", message);
        std::fflush(stderr);
    }

  private:
    void end_line() {
        if (m_open_line) fmt::print(stderr, "\n");
        m_open_line = false;
    }

    bool m_tty;
    bool m_open_line = false;
    std::map<std::string, std::chrono::steady_clock::time_point> m_last_print;
};

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

std::unique_ptr<ProgressSink> make_text_progress() { return std::make_unique<TextProgress>(); }
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
