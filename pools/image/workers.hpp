// Private to pools/image/: a fixed set of threads that run one batch of
// independent tasks at a time (cluster compression). The caller starts a
// batch and collects it later, so compressing batch N overlaps with the
// caller filling batch N+1 (double buffering, as nbdcopy overlaps requests).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace blockmig::pools::image::detail {

class Workers {
  public:
    // `threads` == 0: one per online CPU.
    explicit Workers(unsigned threads);
    ~Workers();
    Workers(const Workers&) = delete;
    Workers& operator=(const Workers&) = delete;

    unsigned size() const { return static_cast<unsigned>(m_threads.size()); }
    // Starts task(0) .. task(count-1) on the workers. REQUIRES: no batch running.
    void start(std::size_t count, std::function<void(std::size_t)> task);
    // Waits until the running batch (if any) has finished.
    void wait();

  private:
    void loop();

    std::mutex m_mutex;
    std::condition_variable m_wake;
    std::condition_variable m_done_cv;
    std::function<void(std::size_t)> m_task;
    std::size_t m_count = 0;
    std::size_t m_next = 0;
    std::size_t m_done = 0;
    bool m_running = false;
    bool m_stop = false;
    std::vector<std::thread> m_threads;
};

}  // namespace blockmig::pools::image::detail
