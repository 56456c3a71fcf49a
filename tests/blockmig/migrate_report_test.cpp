// The final report of `migrate`: the time series the recorder keeps from
// the live view, its JSON, and the SVG drawn from it (--report FILE.svg).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <vector>

#include "blockmig/migrate.hpp"
#include "migrate/timeline.hpp"

using blockmig::FakeClock;
using blockmig::MigrateReport;
using blockmig::MigrateSample;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr double k_mib = 1 << 20;

// 10 s: a disk copied (64 MiB in the first 4 s), then 100 MiB of RAM sent
// down to 0, the downtime limit raised from 100 to 300 ms at 7 s; the
// guest paused at 8 s and running on the destination at 8.5 s.
MigrateReport synthetic_report() {
    MigrateReport r;
    r.job = "m-test";
    r.total = 8500ms;
    r.downtime_ms = 42;
    r.iterations = 4;
    r.streams = {{"ram", 120 << 20}, {"disk:disk0", 64 << 20}};
    for (int i = 0; i <= 10; ++i) {
        MigrateSample s;
        s.t = i;
        s.disk_remaining["disk0"] = i < 4 ? (4 - i) * 16 * k_mib : 0;
        s.disk_rate = 16 * k_mib;
        if (i >= 4) {
            s.ram_remaining = 100 * k_mib * (10 - i) / 6;
            s.ram_transferred = 20 * k_mib * (i - 4);
            s.ram_rate = 20 * k_mib;
            s.dirty_rate = i >= 5 ? 5 * k_mib : blockmig::k_unknown;
            s.downtime_limit_ms = i >= 7 ? 300 : 100;
        }
        r.timeline.samples.push_back(s);
    }
    r.timeline.paused_at = 8;
    r.timeline.resumed_at = 8.5;
    r.timeline.pause_reason = "switchover";
    return r;
}

// Every element opened is closed, in order (the SVG is well-formed XML as
// far as its tags go); returns the first mismatch, empty when balanced.
std::string unbalanced_tag(const std::string& svg) {
    std::vector<std::string> open;
    std::regex tag(R"(<(/?)([A-Za-z][\w:-]*)[^>]*?(/?)>)");
    for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tag); it != std::sregex_iterator();
         ++it) {
        const auto& m = *it;
        if (m[3] == "/") continue;  // <x/>
        if (m[1] == "/") {
            if (open.empty() || open.back() != m[2]) return "</" + m[2].str() + ">";
            open.pop_back();
        } else {
            open.push_back(m[2]);
        }
    }
    return open.empty() ? "" : "<" + open.back() + "> not closed";
}

// The attribute `name` of the first element matching `selector` (a regex
// on the element's text), as a number.
double attribute(const std::string& svg, const std::string& selector, const std::string& name) {
    std::smatch m;
    if (!std::regex_search(svg, m, std::regex("<[^>]*" + selector + "[^>]*>"))) return -1;
    const std::string element = m[0];
    std::smatch a;
    if (!std::regex_search(element, a, std::regex(" " + name + "=\"([-0-9.e]+)\""))) return -1;
    return std::stod(a[1]);
}

std::vector<std::pair<double, double>> points_of(const std::string& svg, const std::string& id) {
    std::smatch m;
    std::vector<std::pair<double, double>> out;
    if (!std::regex_search(svg, m, std::regex("data-series=\"" + id + "\" points=\"([^\"]*)\"")))
        return out;
    std::istringstream in(m[1].str());
    for (std::string xy; in >> xy;) {
        const auto comma = xy.find(',');
        out.emplace_back(std::stod(xy.substr(0, comma)), std::stod(xy.substr(comma + 1)));
    }
    return out;
}

}  // namespace

TEST(ReportSvg, IsBalancedAndDrawsEverySeries) {
    const auto svg = blockmig::render_report_svg(synthetic_report());
    EXPECT_EQ(unbalanced_tag(svg), "");
    EXPECT_TRUE(svg.starts_with("<?xml"));
    for (const char* id : {"ram-remaining", "disk-remaining-disk0", "dirty-rate", "ram-rate",
                           "disk-rate", "downtime-limit"})
        EXPECT_FALSE(points_of(svg, id).empty()) << id;
    for (const char* text :
         {"time (s)", "bytes remaining (MiB)", "rates (MiB/s)", "downtime limit (ms)",
          "RAM remaining", "guest dirty rate", "QEMU downtime 42 ms"})
        EXPECT_NE(svg.find(text), std::string::npos) << text;
}

TEST(ReportSvg, ScalesTimeAndValuesToThePlotArea) {
    const auto svg = blockmig::render_report_svg(synthetic_report());
    // The first panel: 0..10 s across, 0..100 MiB up.
    const double x0 = attribute(svg, "class=\"plot\"", "x");
    const double width = attribute(svg, "class=\"plot\"", "width");
    const double top = attribute(svg, "class=\"plot\"", "y");
    const double height = attribute(svg, "class=\"plot\"", "height");
    EXPECT_EQ(attribute(svg, "class=\"plot\"", "data-t-max"), 10);
    EXPECT_EQ(attribute(svg, "class=\"plot\"", "data-y-max"), 100);
    const auto ram = points_of(svg, "ram-remaining");
    ASSERT_EQ(ram.size(), 7u);  // 4 s .. 10 s: no point before the RAM moves
    EXPECT_NEAR(ram.front().first, x0 + 0.4 * width, 0.1);
    EXPECT_NEAR(ram.front().second, top, 0.1);  // 100 MiB: the top
    EXPECT_NEAR(ram.back().first, x0 + width, 0.1);
    EXPECT_NEAR(ram.back().second, top + height, 0.1);  // 0: the bottom
    // The dirty rate is unknown at 4 s (QEMU's first pass): no point there.
    EXPECT_NEAR(points_of(svg, "dirty-rate").front().first, x0 + 0.5 * width, 0.1);
}

TEST(ReportSvg, MarksThePauseAtItsTime) {
    const auto svg = blockmig::render_report_svg(synthetic_report());
    const double x0 = attribute(svg, "class=\"plot\"", "x");
    const double width = attribute(svg, "class=\"plot\"", "width");
    EXPECT_NEAR(attribute(svg, "class=\"pause\"", "x"), x0 + 0.8 * width, 0.1);
    EXPECT_NEAR(attribute(svg, "class=\"pause\"", "width"), 0.05 * width, 0.1);
    EXPECT_EQ(svg.find("class=\"postcopy\""), std::string::npos);

    auto r = synthetic_report();
    r.timeline.postcopy_at = 9;
    const auto with_postcopy = blockmig::render_report_svg(r);
    EXPECT_NEAR(attribute(with_postcopy, "class=\"postcopy\"", "x1"), x0 + 0.9 * width, 0.1);
}

TEST(ReportSvg, AnEmptyRunStillRendersWithoutSeries) {
    MigrateReport r;
    const auto svg = blockmig::render_report_svg(r);
    EXPECT_EQ(unbalanced_tag(svg), "");
    EXPECT_EQ(svg.find("<polyline"), std::string::npos);
    EXPECT_EQ(svg.find("class=\"pause\""), std::string::npos);
    EXPECT_NE(svg.find("(no data)"), std::string::npos);
}

// A failed run: the title names the phase and cause, the error line is
// shown, the failure's time is marked, the series drawn up to it.
TEST(ReportSvg, AFailedRunSaysSoAndMarksTheFailure) {
    auto r = synthetic_report();
    r.total = 12000ms;  // failed after the last sample (10 s)
    r.timeline.resumed_at = -1;
    r.downtime_ms = -1;  // QEMU counts no downtime for a migration that did not complete
    r.failure =
        blockmig::MigrateFailure{"ram", "timed out",
                                 "migrate failed in phase ram: timed out; migration cancelled, the "
                                 "guest keeps running on the source & <ok>"};
    const auto svg = blockmig::render_report_svg(r);
    EXPECT_EQ(unbalanced_tag(svg), "");
    EXPECT_NE(svg.find("data-outcome=\"failed\""), std::string::npos);
    EXPECT_NE(svg.find("FAILED in phase ram after 12.0 s: timed out"), std::string::npos) << svg;
    EXPECT_NE(svg.find("keeps running on the source &amp; &lt;ok&gt;"), std::string::npos);
    EXPECT_EQ(svg.find("QEMU downtime"), std::string::npos) << "no completion in a failure";
    const double x0 = attribute(svg, "class=\"plot\"", "x");
    const double width = attribute(svg, "class=\"plot\"", "width");
    EXPECT_EQ(attribute(svg, "class=\"plot\"", "data-t-max"), 20);  // 12 s fits
    EXPECT_EQ(attribute(svg, "class=\"failure\"", "data-t"), 12);
    EXPECT_NEAR(attribute(svg, "class=\"failure\"", "x1"), x0 + 0.6 * width, 0.1);
    EXPECT_FALSE(points_of(svg, "ram-remaining").empty());
    // The panels move down a line: the error line does not cover the first.
    EXPECT_GT(attribute(svg, "class=\"plot\"", "y"),
              attribute(svg, "class=\"failure-message\"", "y"));

    const auto ok = blockmig::render_report_svg(synthetic_report());
    EXPECT_NE(ok.find("data-outcome=\"completed\""), std::string::npos);
    EXPECT_EQ(ok.find("class=\"failure"), std::string::npos);
}

TEST(ReportSvg, IsWrittenWholeWithReadableMode) {
    const fs::path dir = fs::temp_directory_path() / ("report-test-" + std::to_string(getpid()));
    fs::create_directories(dir);
    const fs::path file = dir / "run.svg";
    ASSERT_TRUE(blockmig::write_report_svg(file, synthetic_report()));
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_EQ(text.str(), blockmig::render_report_svg(synthetic_report()));
    struct stat st {};
    ASSERT_EQ(stat(file.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u);
    EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 1)
        << "no temporary file left";
    auto missing = blockmig::write_report_svg(dir / "no-such-dir" / "x.svg", synthetic_report());
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, blockmig::ErrorCode::io_error);
    EXPECT_NE(missing.error().message.find("no-such-dir"), std::string::npos);
    fs::remove_all(dir);
}

TEST(ReportJson, CarriesStreamsAndTheSeriesWithUnknownsAsNull) {
    const auto j = blockmig::report_json(synthetic_report());
    EXPECT_EQ(j["event"], "done");
    EXPECT_EQ(j["outcome"], "completed");
    EXPECT_FALSE(j.contains("phase"));
    EXPECT_EQ(j["total_seconds"], 8.5);
    EXPECT_EQ(j["downtime_ms"], 42);
    ASSERT_EQ(j["streams"].size(), 2u);
    EXPECT_EQ(j["streams"][1]["stream"], "disk:disk0");
    EXPECT_EQ(j["streams"][1]["bytes"], 64 << 20);
    ASSERT_EQ(j["timeline"]["samples"].size(), 11u);
    EXPECT_TRUE(j["timeline"]["samples"][0]["ram_remaining"].is_null());
    EXPECT_EQ(j["timeline"]["samples"][10]["ram_remaining"], 0);
    EXPECT_EQ(j["timeline"]["samples"][0]["disk_remaining"]["disk0"], 64 * k_mib);
    EXPECT_EQ(j["timeline"]["paused_at"], 8);
}

TEST(ReportJson, AFailedRunNamesPhaseCauseAndErrorLine) {
    auto r = synthetic_report();
    r.failure = blockmig::MigrateFailure{"mirror", "NBD export gone",
                                         "migrate failed in phase mirror: NBD export gone; ..."};
    const auto j = blockmig::report_json(r);
    EXPECT_EQ(j["event"], "failed");
    EXPECT_EQ(j["outcome"], "failed");
    EXPECT_EQ(j["phase"], "mirror");
    EXPECT_EQ(j["cause"], "NBD export gone");
    EXPECT_EQ(j["error"], "migrate failed in phase mirror: NBD export gone; ...");
    EXPECT_EQ(j["timeline"]["samples"].size(), 11u);
}

namespace {

struct Captured : blockmig::ProgressSink {
    int samples = 0, events = 0;
    void progress(const blockmig::ProgressSample&) override { ++samples; }
    void event(const std::string&, const nlohmann::json&, const std::string&) override { ++events; }
};

}  // namespace

TEST(TimelineRecorder, KeepsWhatTheLiveViewShowsAndPassesItOn) {
    Captured out;
    FakeClock clock;
    blockmig::migrate::TimelineRecorder rec(out, clock);
    // A mirror sampled every 100 ms for 2 s: kept twice a second.
    for (int i = 0; i <= 20; ++i) {
        rec.progress({.item = "disk0",
                      .phase = "copy",
                      .bytes = static_cast<std::uint64_t>(i) << 20,
                      .total = 20 << 20,
                      .rate = 10 * k_mib});
        clock.advance(100ms);
    }
    EXPECT_EQ(out.samples, 21);
    ASSERT_EQ(rec.timeline().samples.size(), 5u);
    EXPECT_TRUE(std::isnan(rec.timeline().samples[0].ram_remaining));
    rec.event("ram",
              {{"remaining", 1000},
               {"transferred", 5000},
               {"rate", 300},
               {"dirty_rate", 0},
               {"downtime_limit_ms", 100},
               {"expected_downtime_ms", -1}},
              "ram ...");
    rec.event("guest", {{"state", "paused"}, {"reason", "switchover"}}, "paused");
    clock.advance(250ms);
    rec.event("policy", {{"qemu_status", "postcopy-active"}}, "post-copy");
    clock.advance(250ms);
    rec.event("guest", {{"state", "running"}, {"reason", "destination"}}, "running");
    EXPECT_EQ(out.events, 4);
    const auto& tl = rec.timeline();
    ASSERT_EQ(tl.samples.size(), 6u);
    const auto& ram = tl.samples.back();
    EXPECT_NEAR(ram.t, 2.1, 1e-9);
    EXPECT_EQ(ram.ram_remaining, 1000);
    EXPECT_EQ(ram.ram_rate, 300);
    EXPECT_EQ(ram.dirty_rate, 0);
    EXPECT_EQ(ram.downtime_limit_ms, 100);
    EXPECT_EQ(ram.disk_remaining.at("disk0"), 0);
    EXPECT_EQ(ram.disk_rate, 10 * k_mib);
    EXPECT_NEAR(tl.paused_at, 2.1, 1e-9);
    EXPECT_NEAR(tl.postcopy_at, 2.35, 1e-9);
    EXPECT_NEAR(tl.resumed_at, 2.6, 1e-9);
    EXPECT_EQ(tl.pause_reason, "switchover");
}
