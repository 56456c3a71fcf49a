// Records what the live view shows while it passes it on: a ProgressSink
// between the run and the user's sink that keeps a MigrateTimeline
// (migrate_report.hpp) for the final report and `--report FILE.svg`.
//
// It reads the run's own events: "ram" (remaining, transferred, rate,
// dirty_rate, downtime_limit_ms), "guest" (state paused/running, reason),
// "policy" with qemu_status postcopy-active; and every disk's progress
// samples (remaining = total - bytes). One thread, like every sink.
#pragma once

#include <map>
#include <string>

#include "blockmig/migrate_report.hpp"
#include "blockmig/progress.hpp"
#include "qmp/clock.hpp"

namespace blockmig::migrate {

class TimelineRecorder : public ProgressSink {
  public:
    // `out` and `clock` must outlive the recorder; time 0 is now.
    TimelineRecorder(ProgressSink& out, Clock& clock);

    void progress(const ProgressSample& sample) override;
    void event(const std::string& name, const nlohmann::json& fields,
               const std::string& message) override;

    double elapsed() const;  // seconds since time 0
    const MigrateTimeline& timeline() const { return m_timeline; }

  private:
    struct Disk {
        double remaining = 0, rate = 0;
    };
    void record(MigrateSample sample);

    ProgressSink& m_out;
    Clock& m_clock;
    Clock::time_point m_start;
    std::map<std::string, Disk> m_disks;
    bool m_ram_seen = false;
    MigrateTimeline m_timeline;
};

}  // namespace blockmig::migrate
