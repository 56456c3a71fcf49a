#include "qmp/clock.hpp"

#include <thread>

namespace blockmig {

void SystemClock::sleep_for(std::chrono::nanoseconds duration) {
    if (duration.count() > 0) std::this_thread::sleep_for(duration);
}

Clock& system_clock() {
    static SystemClock clock;
    return clock;
}

}  // namespace blockmig
