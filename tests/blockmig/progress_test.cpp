// Progress for people (plain lines off a terminal, one redrawn bar on a pty)
// and the rate smoothing and ETA behind it.
#include "blockmig/progress.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pty.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

using blockmig::FakeClock;
using blockmig::ProgressSample;
using blockmig::RateMeter;
using namespace std::chrono_literals;

namespace {

// Everything readable on `fd` right now (it is non-blocking).
std::string drain(int fd) {
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) return out;
        out.append(buf, static_cast<std::size_t>(n));
    }
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

// A mirror as move.cpp reports it: no length for the first samples, then
// 64 MiB copied at 8 MiB/s in 250 ms steps, then "ready". `after_each`
// runs after every sample (to drain a pty).
template <typename AfterEach>
void feed_a_copy(blockmig::ProgressSink& sink, FakeClock& clock, AfterEach after_each) {
    RateMeter meter;
    for (int i = 0; i < 3; ++i) {
        sink.progress({.item = "disk0", .phase = "copy"});
        clock.advance(200ms);
        after_each();
    }
    const std::uint64_t total = 64 << 20, step = 2 << 20;
    for (std::uint64_t done = 0; done < total; done += step) {
        meter.add(clock.now(), done);
        sink.progress({.item = "disk0",
                       .phase = "copy",
                       .bytes = done,
                       .total = total,
                       .rate = meter.rate(),
                       .eta_seconds = meter.eta(total - done)});
        clock.advance(250ms);
        after_each();
    }
    meter.add(clock.now(), total);
    sink.progress({.item = "disk0",
                   .phase = "ready",
                   .bytes = total,
                   .total = total,
                   .rate = meter.rate(),
                   .eta_seconds = 0});
    after_each();
}

}  // namespace

TEST(TextProgress, OffATerminalPrintsPlainLinesWithRealNumbers) {
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_NONBLOCK), 0);
    FakeClock clock;
    std::string out;
    {
        auto sink = blockmig::make_text_progress(fds[1], clock);
        sink->event("start", {}, "disk0: mirroring a -> b");
        feed_a_copy(*sink, clock, [&] { out += drain(fds[0]); });
        sink->event("pivoted", {}, "disk0: pivoted to b");
    }
    out += drain(fds[0]);
    close(fds[0]);
    close(fds[1]);

    EXPECT_EQ(out.find('\r'), std::string::npos) << out;
    EXPECT_EQ(out.find("0 B / 0 B"), std::string::npos) << out;
    auto lines = lines_of(out);
    // 8 s of copying: a line every 2 s (at 2, 4 and 6 s), the ready line, two events.
    ASSERT_EQ(lines.size(), 6u) << out;
    EXPECT_EQ(lines.front(), "disk0: mirroring a -> b");
    EXPECT_EQ(lines.back(), "disk0: pivoted to b");
    for (int i : {1, 2, 3}) {
        EXPECT_NE(lines[i].find("disk0    copy"), std::string::npos) << lines[i];
        EXPECT_NE(lines[i].find(" / 64.0 MiB"), std::string::npos) << lines[i];
        EXPECT_NE(lines[i].find("8.0 MiB/s"), std::string::npos) << lines[i];
        EXPECT_EQ(lines[i].find("ETA --:--"), std::string::npos) << lines[i];
    }
    EXPECT_NE(lines[4].find("ready 100.0%  64.0 MiB / 64.0 MiB  8.0 MiB/s"), std::string::npos)
        << lines[4];
}

TEST(TextProgress, OnATerminalRedrawsOneBar) {
    int master = -1, slave = -1;
    ASSERT_EQ(openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
    ASSERT_EQ(fcntl(master, F_SETFL, O_NONBLOCK), 0);
    FakeClock clock;
    std::string out;
    {
        auto sink = blockmig::make_text_progress(slave, clock);
        feed_a_copy(*sink, clock, [&] { out += drain(master); });
        out += drain(master);
        // Nothing but redraws so far: the bar never scrolls the terminal.
        EXPECT_EQ(out.find('\n'), std::string::npos) << out;
        sink->event("pivoted", {}, "disk0: pivoted to b");
    }
    out += drain(master);
    close(master);
    close(slave);

    const auto redraws = std::count(out.begin(), out.end(), '\r');
    EXPECT_GT(redraws, 30) << out;  // one per sample (each 250 ms apart)
    EXPECT_NE(out.find("disk0    copy  starting"), std::string::npos) << out;
    EXPECT_NE(out.find("[##########..........]  50.0%  32.0 MiB / 64.0 MiB"), std::string::npos)
        << out;
    // The event line replaces the bar, which is drawn again below it (complete).
    EXPECT_NE(
        out.find("\r\033[Kdisk0: pivoted to b\r\n\r\033[Kdisk0    ready [####################] "
                 "100.0%"),
        std::string::npos)
        << out;
    EXPECT_EQ(out.find("0 B / 0 B"), std::string::npos) << out;
}

TEST(RateMeter, UnknownEtaBeforeTwoSamples) {
    RateMeter m;
    m.add(std::chrono::steady_clock::time_point{} + 1s, 100);
    EXPECT_LT(m.eta(1000), 0);
}

TEST(RateMeter, SteadyRateGivesEta) {
    RateMeter m;
    auto t = std::chrono::steady_clock::time_point{} + 1s;
    for (int i = 0; i <= 10; ++i) m.add(t + i * 1s, static_cast<std::uint64_t>(i) * (10 << 20));
    EXPECT_NEAR(m.rate(), 10 << 20, 1);
    EXPECT_NEAR(m.eta(50 << 20), 5.0, 0.01);
}
