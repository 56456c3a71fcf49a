// Progress and status reporting for long operations.
//
// Jobs report through a ProgressSink; the CLI picks the implementation:
// one bar redrawn in place on a terminal (bytes, rate, ETA); a plain line
// every few seconds per item, at every phase change and at completion when
// stderr is not a terminal (logs, CI); or JSON lines on stdout
// (`--output json`) for machines. Text sinks never print numbers for a
// sample without a length (total 0). Sinks are called from one thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "qmp/clock.hpp"

namespace blockmig {

struct ProgressSample {
    std::string item;         // e.g. the disk id
    std::string phase;        // "copy", "ready", ...
    std::uint64_t bytes = 0;  // done so far
    std::uint64_t total = 0;  // current estimate of the whole (grows while a guest writes)
    double rate = 0;          // bytes per second, smoothed
    double eta_seconds = -1;  // < 0: unknown
};

class ProgressSink {
  public:
    virtual ~ProgressSink() = default;
    virtual void progress(const ProgressSample& sample) = 0;
    // A one-off event: `name` plus fields, e.g. ("pivoted", {"disk": "disk0", ...}).
    // Text sinks print `message`; JSON sinks print {"event": name, ...fields}.
    virtual void event(const std::string& name, const nlohmann::json& fields,
                       const std::string& message) = 0;
};

std::unique_ptr<ProgressSink> make_text_progress();  // stderr; a bar on a TTY
// Same on `fd` (a bar iff it is a terminal), timed by `clock` (tests pass a
// FakeClock). `clock` must outlive the sink; `fd` stays the caller's.
std::unique_ptr<ProgressSink> make_text_progress(int fd, const Clock& clock);
std::unique_ptr<ProgressSink> make_json_progress();  // stdout, one object per line
std::unique_ptr<ProgressSink> make_null_progress();  // for tests and --quiet

// Smooths a rate from (time, bytes) samples and derives an ETA.
class RateMeter {
  public:
    void add(std::chrono::steady_clock::time_point when, std::uint64_t bytes);
    double rate() const { return m_rate; }
    double eta(std::uint64_t remaining) const;

  private:
    std::chrono::steady_clock::time_point m_last_time{};
    std::uint64_t m_last_bytes = 0;
    bool m_have_last = false;
    double m_rate = 0;
};

}  // namespace blockmig
