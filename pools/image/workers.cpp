#include "workers.hpp"

namespace blockmig::pools::image::detail {

Workers::Workers(unsigned threads) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < threads; ++i) m_threads.emplace_back([this] { loop(); });
}

Workers::~Workers() {
    wait();
    {
        std::lock_guard lock(m_mutex);
        m_stop = true;
    }
    m_wake.notify_all();
    for (auto& t : m_threads) t.join();
}

void Workers::start(std::size_t count, std::function<void(std::size_t)> task) {
    {
        std::lock_guard lock(m_mutex);
        m_task = std::move(task);
        m_count = count;
        m_next = 0;
        m_done = 0;
        m_running = count > 0;
    }
    m_wake.notify_all();
}

void Workers::wait() {
    std::unique_lock lock(m_mutex);
    m_done_cv.wait(lock, [&] { return !m_running; });
}

void Workers::loop() {
    std::unique_lock lock(m_mutex);
    for (;;) {
        m_wake.wait(lock, [&] { return m_stop || (m_running && m_next < m_count); });
        if (m_stop) return;
        const std::size_t index = m_next++;
        lock.unlock();
        m_task(index);
        lock.lock();
        if (++m_done == m_count) {
            m_running = false;
            m_done_cv.notify_all();
        }
    }
}

}  // namespace blockmig::pools::image::detail
