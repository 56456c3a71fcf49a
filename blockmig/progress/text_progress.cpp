// Progress for people: one bar redrawn in place on a terminal; off a terminal
// (a log, CI, the demo) a plain line every few seconds per item, on every
// phase change, and when an item completes. A sample without a length yet
// (a mirror job that just started reports 0 of 0) is never shown as numbers.
#include <fmt/core.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "blockmig/progress.hpp"
#include "human_size.hpp"

namespace blockmig {

namespace {

using namespace std::chrono_literals;

constexpr auto k_line_interval = 2s;       // off a terminal: one line per item this often
constexpr auto k_redraw_interval = 100ms;  // on a terminal: the bar at most this often
constexpr int k_bar_width = 20;

std::string human_eta(double seconds) {
    if (seconds < 0 || !std::isfinite(seconds)) return "--:--";
    auto s = static_cast<long>(seconds + 0.5);
    return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                     : fmt::format("{:02}:{:02}", s / 60, s % 60);
}

bool complete(const ProgressSample& s) { return s.total > 0 && s.bytes >= s.total; }

// "45.2%  1.2 GiB / 2.6 GiB  120.0 MiB/s  ETA 00:12"
std::string numbers(const ProgressSample& s) {
    const double pct = 100.0 * static_cast<double>(std::min(s.bytes, s.total)) / s.total;
    // READY (in sync, guest writes mirrored) has nothing left to estimate.
    const bool open_ended = complete(s) || s.phase == "ready";
    std::string tail = open_ended ? "" : fmt::format("  ETA {}", human_eta(s.eta_seconds));
    return fmt::format("{:5.1f}%  {} / {}  {}/s{}", pct, human_bytes(s.bytes), human_bytes(s.total),
                       human_bytes(s.rate), tail);
}

std::string bar(const ProgressSample& s) {
    const int filled =
        static_cast<int>(k_bar_width * static_cast<double>(std::min(s.bytes, s.total)) / s.total);
    return "[" + std::string(filled, '#') + std::string(k_bar_width - filled, '.') + "]";
}

class TextProgress : public ProgressSink {
  public:
    TextProgress(int fd, const Clock& clock) : m_fd(fd), m_clock(clock), m_tty(isatty(fd) == 1) {}
    ~TextProgress() override { end_bar(); }

    void progress(const ProgressSample& s) override {
        const auto now = m_clock.now();
        auto [it, added] = m_items.try_emplace(s.item);
        if (added) m_order.push_back(s.item);
        Item& item = it->second;
        const bool phase_changed = item.last.phase != s.phase;
        const bool newly_complete = complete(s) && !complete(item.last);
        if (s.total > 0 && item.first_length == Clock::time_point{}) item.first_length = now;
        item.last = s;
        if (m_tty) {
            if (added || phase_changed || newly_complete || now - m_drawn >= k_redraw_interval)
                draw_bar(now);
            return;
        }
        if (s.total == 0) return;  // no length yet: nothing true to say
        // The first line waits one interval, so it shows a measured rate.
        const auto since = item.printed == Clock::time_point{} ? item.first_length : item.printed;
        if (phase_changed || newly_complete || now - since >= k_line_interval) {
            item.printed = now;
            write(fmt::format("{:<8} {:<5} {}\n", s.item, s.phase, numbers(s)));
        }
    }

    void event(const std::string&, const nlohmann::json&, const std::string& message) override {
        if (m_tty && m_bar_open) {
            write("\r\033[K" + message + "\n");
            draw_bar(m_clock.now());
            return;
        }
        write(message + "\n");
    }

  private:
    struct Item {
        ProgressSample last;
        Clock::time_point first_length{};  // first sample that had a length
        Clock::time_point printed{};       // last plain line
    };

    // One line for everything: a single item by name, several summed.
    void draw_bar(Clock::time_point now) {
        m_drawn = now;
        ProgressSample sum;
        double eta = 0;
        std::string phase;
        for (const auto& name : m_order) {
            const auto& s = m_items[name].last;
            sum.bytes += s.bytes;
            sum.total += s.total;
            sum.rate += s.rate;
            // The whole is done when the slowest item is; unknown if any is.
            if (!complete(s))
                eta = (eta < 0 || s.eta_seconds < 0) ? -1 : std::max(eta, s.eta_seconds);
            phase = phase.empty() || phase == s.phase ? s.phase : "mixed";
        }
        sum.eta_seconds = eta;
        const std::string label =
            m_order.size() == 1 ? m_order.front() : fmt::format("{} disks", m_order.size());
        const std::string line =
            sum.total == 0 ? fmt::format("{:<8} {:<5} starting", label, phase)
                           : fmt::format("{:<8} {:<5} {} {}", label, phase, bar(sum), numbers(sum));
        write("\r\033[K" + line);
        m_bar_open = true;
    }

    void end_bar() {
        if (m_bar_open) write("\n");
        m_bar_open = false;
    }

    void write(const std::string& text) {
        std::size_t done = 0;
        while (done < text.size()) {
            ssize_t n = ::write(m_fd, text.data() + done, text.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return;  // progress is best effort; never fail the job over it
            done += static_cast<std::size_t>(n);
        }
    }

    int m_fd;
    const Clock& m_clock;
    bool m_tty;
    bool m_bar_open = false;
    Clock::time_point m_drawn{};
    std::map<std::string, Item> m_items;
    std::vector<std::string> m_order;
};

}  // namespace

std::unique_ptr<ProgressSink> make_text_progress() {
    return make_text_progress(STDERR_FILENO, system_clock());
}

std::unique_ptr<ProgressSink> make_text_progress(int fd, const Clock& clock) {
    return std::make_unique<TextProgress>(fd, clock);
}

}  // namespace blockmig
