// Time behind a seam (leveldb's Env::NowMicros): orchestration code asks a
// Clock for the time and to sleep, so timeout and polling logic is unit-tested
// with FakeClock, without real waiting.
//
// Thread safety: SystemClock is stateless; FakeClock is safe to share between
// threads (one advancing it, others reading).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace blockmig {

class Clock {
  public:
    using time_point = std::chrono::steady_clock::time_point;
    virtual ~Clock() = default;
    virtual time_point now() const = 0;
    // Blocks for `duration` (a FakeClock just advances).
    virtual void sleep_for(std::chrono::nanoseconds duration) = 0;
};

class SystemClock final : public Clock {
  public:
    time_point now() const override { return std::chrono::steady_clock::now(); }
    void sleep_for(std::chrono::nanoseconds duration) override;
};

// The process-wide real clock (stateless, so sharing it is safe).
Clock& system_clock();

// A clock that only moves when told to: sleep_for() and advance() add to it.
class FakeClock final : public Clock {
  public:
    FakeClock() = default;
    time_point now() const override { return time_point(std::chrono::nanoseconds(m_now.load())); }
    void sleep_for(std::chrono::nanoseconds duration) override { advance(duration); }
    void advance(std::chrono::nanoseconds duration) { m_now += duration.count(); }

  private:
    // Starts far from zero so "time_point{}" is never mistaken for now.
    std::atomic<std::int64_t> m_now{std::chrono::nanoseconds(std::chrono::hours(1000)).count()};
};

// When `timeout` from now runs out; a zero timeout means never.
inline Clock::time_point deadline_after(const Clock& clock, std::chrono::nanoseconds timeout) {
    if (timeout.count() <= 0) return Clock::time_point::max();
    return clock.now() + timeout;
}

}  // namespace blockmig
