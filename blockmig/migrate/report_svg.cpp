// `blockmig migrate --report FILE.svg`: the run's time series drawn as
// plain SVG text (no library): three panels over one time axis — bytes
// remaining (RAM, each disk), rates (the guest's dirty rate, RAM and disk
// throughput), QEMU's downtime limit — with the guest's pause shaded over
// all of them and the switch to post-copy as a vertical line.
//
// Each panel's plot area is a <rect class="plot"> carrying its value range
// (data-y-max) and the time range (data-t-max), each series a <polyline
// class="series" data-series="...">, so the file is checkable as text.
#include <fcntl.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "blockmig/migrate.hpp"
#include "progress/human_size.hpp"

namespace blockmig {

namespace {

constexpr double k_width = 960, k_left = 90, k_plot_width = 640;
constexpr double k_top = 60, k_panel_height = 170, k_panel_gap = 50, k_line = 18;
constexpr double k_mib = 1 << 20;
constexpr const char* k_colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                    "#9467bd", "#8c564b", "#e377c2", "#17becf"};

struct Series {
    std::string id, label;
    std::function<double(const MigrateSample&)> value;  // NaN: no point
};

struct Panel {
    std::string title, unit;
    std::vector<Series> series;
};

// The smallest of 1, 2, 2.5, 5 x 10^k at or above `v` (an axis end).
double nice_ceiling(double v) {
    if (!(v > 0)) return 1;
    const double base = std::pow(10, std::floor(std::log10(v)));
    for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
        if (m * base >= v * (1 - 1e-9)) return m * base;
    return 10 * base;
}

std::string escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '&')
            out += "&amp;";
        else if (c == '<')
            out += "&lt;";
        else if (c == '>')
            out += "&gt;";
        else if (c == '"')
            out += "&quot;";
        else
            out += c;
    }
    return out;
}

std::string tick_label(double v) {
    return v == std::floor(v) ? fmt::format("{:.0f}", v) : fmt::format("{:g}", v);
}

std::vector<Panel> panels(const MigrateTimeline& tl) {
    std::vector<std::string> disks;
    for (const auto& s : tl.samples)
        for (const auto& [disk, _] : s.disk_remaining)
            if (std::find(disks.begin(), disks.end(), disk) == disks.end()) disks.push_back(disk);
    Panel remaining{"bytes remaining", "MiB", {}};
    remaining.series.push_back({"ram-remaining", "RAM remaining",
                                [](const MigrateSample& s) { return s.ram_remaining / k_mib; }});
    for (const auto& disk : disks)
        remaining.series.push_back(
            {"disk-remaining-" + disk, disk + " remaining", [disk](const MigrateSample& s) {
                 auto it = s.disk_remaining.find(disk);
                 return it == s.disk_remaining.end() ? k_unknown : it->second / k_mib;
             }});
    Panel rates{"rates", "MiB/s", {}};
    rates.series = {
        {"dirty-rate", "guest dirty rate",
         [](const MigrateSample& s) { return s.dirty_rate / k_mib; }},
        {"ram-rate", "RAM throughput", [](const MigrateSample& s) { return s.ram_rate / k_mib; }},
        {"disk-rate", "disk throughput",
         [](const MigrateSample& s) { return s.disk_rate / k_mib; }}};
    Panel limit{"downtime limit", "ms", {}};
    limit.series = {{"downtime-limit", "downtime limit",
                     [](const MigrateSample& s) { return s.downtime_limit_ms; }}};
    return {remaining, rates, limit};
}

class Drawing {
  public:
    Drawing(const MigrateReport& r) : m_r(r), m_tl(r.timeline) {
        m_t_max = 0;
        for (const auto& s : m_tl.samples) m_t_max = std::max(m_t_max, s.t);
        m_t_max = std::max({m_t_max, m_tl.resumed_at, m_tl.paused_at, m_tl.postcopy_at});
        if (r.failure) m_t_max = std::max(m_t_max, r.total.count() / 1000.0);
        m_t_max = nice_ceiling(std::max(m_t_max, 1.0));
    }

    std::string render() {
        const auto ps = panels(m_tl);
        // A failed run's error line takes a line of its own above the panels.
        const double top = k_top + (m_r.failure ? k_line : 0);
        const double height = top + ps.size() * (k_panel_height + k_panel_gap) + 20;
        out(R"(<?xml version="1.0" encoding="UTF-8"?>)"
            "\n");
        out(fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{:.0f}" )"
                        R"(viewBox="0 0 {} {:.0f}" font-family="sans-serif" font-size="12" )"
                        R"(data-outcome="{}">)"
                        "\n",
                        k_width, height, k_width, height, m_r.failure ? "failed" : "completed"));
        out(fmt::format(R"(<rect x="0" y="0" width="{}" height="{:.0f}" fill="white"/>)"
                        "\n",
                        k_width, height));
        out(fmt::format(R"(<text x="{}" y="24" font-size="16">{}</text>)"
                        "\n",
                        k_left, escape(title())));
        out(fmt::format(R"(<text x="{}" y="42">{}</text>)"
                        "\n",
                        k_left, escape(subtitle())));
        if (m_r.failure)
            out(fmt::format(
                R"(<text class="failure-message" x="{}" y="{}" fill="#d62728">{}</text>)"
                "\n",
                k_left, 42 + k_line, escape(m_r.failure->message)));
        for (std::size_t i = 0; i < ps.size(); ++i)
            panel(ps[i], top + i * (k_panel_height + k_panel_gap));
        marks(top, ps.size() * (k_panel_height + k_panel_gap) - k_panel_gap);
        out("</svg>\n");
        return std::move(m_out);
    }

  private:
    std::string title() const {
        if (m_r.failure)
            return fmt::format("blockmig migrate {}: FAILED in phase {} after {:.1f} s: {}",
                               m_r.job, m_r.failure->phase, m_r.total.count() / 1000.0,
                               m_r.failure->cause);
        return fmt::format(
            "blockmig migrate {}: {:.1f} s total, QEMU downtime {}", m_r.job,
            m_r.total.count() / 1000.0,
            m_r.downtime_ms < 0 ? std::string("unknown") : fmt::format("{} ms", m_r.downtime_ms));
    }

    std::string subtitle() const {
        std::string s =
            fmt::format("{} RAM pass{}", m_r.iterations, m_r.iterations == 1 ? "" : "es");
        for (const auto& st : m_r.streams)
            s += fmt::format("; {} {}", st.stream, human_mib(st.bytes));
        return s;
    }

    double x(double t) const { return k_left + t / m_t_max * k_plot_width; }

    void panel(const Panel& p, double top) {
        double y_max = 0;
        for (const auto& series : p.series)
            for (const auto& s : m_tl.samples)
                if (double v = series.value(s); !std::isnan(v)) y_max = std::max(y_max, v);
        y_max = nice_ceiling(y_max);
        const double bottom = top + k_panel_height;
        auto y = [&](double v) { return bottom - v / y_max * k_panel_height; };
        out(fmt::format(R"(<g class="panel" data-title="{}">)"
                        "\n",
                        escape(p.title)));
        out(fmt::format(R"(<rect class="plot" x="{}" y="{}" width="{}" height="{}" )"
                        R"(data-t-max="{}" data-y-max="{}" fill="none" stroke="#888"/>)"
                        "\n",
                        k_left, top, k_plot_width, k_panel_height, m_t_max, y_max));
        out(fmt::format(R"(<text x="{}" y="{}" text-anchor="middle" )"
                        R"~(transform="rotate(-90 {} {})">{} ({})</text>)~"
                        "\n",
                        20, top + k_panel_height / 2, 20, top + k_panel_height / 2, escape(p.title),
                        p.unit));
        for (int i = 0; i <= 4; ++i) {
            const double v = y_max * i / 4;
            out(fmt::format(R"(<line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="#ddd"/>)"
                            R"(<text x="{}" y="{:.1f}" text-anchor="end">{}</text>)"
                            "\n",
                            k_left, y(v), k_left + k_plot_width, y(v), k_left - 6, y(v) + 4,
                            tick_label(v)));
        }
        time_axis(bottom);
        for (std::size_t i = 0; i < p.series.size(); ++i) {
            const char* color = k_colors[i % std::size(k_colors)];
            std::string points;
            for (const auto& s : m_tl.samples)
                if (double v = p.series[i].value(s); !std::isnan(v))
                    points +=
                        fmt::format("{}{:.1f},{:.1f}", points.empty() ? "" : " ", x(s.t), y(v));
            if (!points.empty())
                out(fmt::format(R"(<polyline class="series" data-series="{}" points="{}" )"
                                R"(fill="none" stroke="{}" stroke-width="1.5"/>)"
                                "\n",
                                escape(p.series[i].id), points, color));
            const double ly = top + 14 + 18 * i;
            out(fmt::format(
                R"(<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="3"/>)"
                R"(<text x="{}" y="{}">{}{}</text>)"
                "\n",
                k_left + k_plot_width + 15, ly - 4, k_left + k_plot_width + 35, ly - 4, color,
                k_left + k_plot_width + 40, ly, escape(p.series[i].label),
                points.empty() ? " (no data)" : ""));
        }
        out("</g>\n");
    }

    void time_axis(double bottom) {
        for (int i = 0; i <= 5; ++i) {
            const double t = m_t_max * i / 5;
            out(fmt::format(R"(<line x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" stroke="#888"/>)"
                            R"(<text x="{:.1f}" y="{}" text-anchor="middle">{}</text>)"
                            "\n",
                            x(t), bottom, x(t), bottom + 5, x(t), bottom + 18, tick_label(t)));
        }
        out(fmt::format(R"(<text x="{}" y="{}" text-anchor="middle">time (s)</text>)"
                        "\n",
                        k_left + k_plot_width / 2, bottom + 34));
    }

    // The guest's pause over every panel; post-copy's switch as a line.
    void marks(double top, double height) {
        if (m_r.failure) {
            const double t = m_r.total.count() / 1000.0;
            out(fmt::format(R"(<line class="failure" x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" )"
                            R"(data-t="{}" stroke="#d62728" stroke-width="2"/>)"
                            R"(<text x="{:.1f}" y="{}" fill="#d62728">failed</text>)"
                            "\n",
                            x(t), top, x(t), top + height, t, x(t) + 3, top + 26));
        }
        if (m_tl.paused_at >= 0) {
            const double end = m_tl.resumed_at >= 0 ? m_tl.resumed_at : m_t_max;
            // A pause of a few ms is still drawn visibly (1 px at least).
            const double w = std::max(x(end) - x(m_tl.paused_at), 1.0);
            out(fmt::format(R"(<rect class="pause" x="{:.1f}" y="{}" width="{:.1f}" height="{}" )"
                            R"(data-t0="{}" data-t1="{}" fill="#d62728" fill-opacity="0.18"/>)"
                            "\n",
                            x(m_tl.paused_at), top, w, height, m_tl.paused_at, end));
            out(fmt::format(R"(<text class="pause-label" x="{:.1f}" y="{}" fill="#d62728">)"
                            R"(guest paused ({}){}</text>)"
                            "\n",
                            x(m_tl.paused_at), top - 4,
                            m_tl.pause_reason.empty() ? "switchover" : m_tl.pause_reason,
                            m_r.downtime_ms < 0
                                ? std::string()
                                : fmt::format(", QEMU downtime {} ms", m_r.downtime_ms)));
        }
        if (m_tl.postcopy_at >= 0)
            out(fmt::format(R"(<line class="postcopy" x1="{:.1f}" y1="{}" x2="{:.1f}" y2="{}" )"
                            R"(stroke="#9467bd" stroke-dasharray="4 3"/>)"
                            R"(<text x="{:.1f}" y="{}" fill="#9467bd">post-copy</text>)"
                            "\n",
                            x(m_tl.postcopy_at), top, x(m_tl.postcopy_at), top + height,
                            x(m_tl.postcopy_at) + 3, top + 12));
    }

    void out(const std::string& s) { m_out += s; }

    const MigrateReport& m_r;
    const MigrateTimeline& m_tl;
    double m_t_max = 1;
    std::string m_out;
};

Result<void> io_fail(const std::string& what, const std::filesystem::path& path) {
    return fail(ErrorCode::io_error,
                fmt::format("report: {} {}: {}", what, path.string(), std::strerror(errno)));
}

}  // namespace

std::string render_report_svg(const MigrateReport& report) { return Drawing(report).render(); }

Result<void> write_report_svg(const std::filesystem::path& path, const MigrateReport& report) {
    const std::string text = render_report_svg(report);
    // A temporary name in the same directory, renamed over: a reader never
    // sees half a file, and a failed write leaves no torn report behind.
    std::string tmpl =
        (path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path()) /
        ("." + path.filename().string() + ".XXXXXX");
    int fd = ::mkstemp(tmpl.data());
    if (fd < 0) return io_fail("create a temporary file next to", path);
    std::size_t off = 0;
    bool ok = ::fchmod(fd, 0644) == 0;  // a report the user asked for, readable like any output
    while (ok && off < text.size()) {
        ssize_t n = ::write(fd, text.data() + off, text.size() - off);
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0;
        if (ok) off += static_cast<std::size_t>(n);
    }
    ok = ok && ::fsync(fd) == 0;
    const int saved = errno;
    ::close(fd);
    if (!ok || ::rename(tmpl.c_str(), path.c_str()) != 0) {
        const int err = ok ? errno : saved;
        ::unlink(tmpl.c_str());
        errno = err;
        return io_fail("write", path);
    }
    return {};
}

}  // namespace blockmig
