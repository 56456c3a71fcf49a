// Watches a guest's QMP events on a second monitor socket while blockmig holds
// the first: a reader thread stamps each event with its host arrival time, so
// a test can act at the moment QEMU announces something (the guest paused for
// --verify, a job created) instead of sleeping and hoping. Events only: while
// QEMU's main loop is stuck (a drain on dead storage) nothing is asked of it.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace move_test {

class QmpEvents {
  public:
    using Clock = std::chrono::steady_clock;

    // The monitor to add to the guest's command line for `socket`.
    static std::vector<std::string> monitor_args(const std::filesystem::path& socket) {
        return {"-qmp", "unix:" + socket.string() + ",server=on,wait=off"};
    }

    explicit QmpEvents(const std::filesystem::path& socket) {
        m_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, socket.c_str(), sizeof a.sun_path - 1);
        if (m_fd < 0 || ::connect(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
            throw std::runtime_error("connect " + socket.string());
        read_line();  // greeting
        const std::string caps = "{\"execute\":\"qmp_capabilities\"}\n";
        if (::write(m_fd, caps.data(), caps.size()) != static_cast<ssize_t>(caps.size()))
            throw std::runtime_error("QMP write failed");
        for (;;) {
            auto j = nlohmann::json::parse(read_line(), nullptr, false);
            if (j.is_object() && j.contains("return")) break;
        }
        m_reader = std::thread([this] { read_events(); });
    }
    ~QmpEvents() {
        ::shutdown(m_fd, SHUT_RDWR);
        m_reader.join();
        ::close(m_fd);
    }
    QmpEvents(const QmpEvents&) = delete;
    QmpEvents& operator=(const QmpEvents&) = delete;

    // Waits until an event named `name` arrived after `since`; its arrival time.
    std::optional<Clock::time_point> wait_for(const std::string& name, Clock::time_point since,
                                              std::chrono::milliseconds timeout) {
        return wait_until([&](const nlohmann::json& e) { return e.value("event", "") == name; },
                          since, timeout);
    }
    // Waits until an event satisfying `match` arrived after `since`; its arrival time.
    template <typename Match>
    std::optional<Clock::time_point> wait_until(Match match, Clock::time_point since,
                                                std::chrono::milliseconds timeout) {
        std::unique_lock lock(m_mutex);
        std::optional<Clock::time_point> at;
        m_changed.wait_for(lock, timeout, [&] {
            for (const auto& [t, e] : m_events)
                if (t >= since && match(e)) return (at = t).has_value();
            return m_closed;
        });
        return at;
    }
    // Names of every event seen, in order (for failure messages).
    std::string names() const {
        std::lock_guard lock(m_mutex);
        std::string out;
        for (const auto& [t, e] : m_events) out += e.value("event", "?") + " ";
        return out;
    }

  private:
    std::string read_line() {
        for (;;) {
            if (auto pos = m_buffer.find('\n'); pos != std::string::npos) {
                std::string out = m_buffer.substr(0, pos);
                m_buffer.erase(0, pos + 1);
                return out;
            }
            char buf[4096];
            ssize_t n = ::read(m_fd, buf, sizeof buf);
            if (n <= 0) throw std::runtime_error("QMP connection closed");
            m_buffer.append(buf, static_cast<std::size_t>(n));
        }
    }
    void read_events() {
        try {
            for (;;) {
                auto j = nlohmann::json::parse(read_line(), nullptr, false);
                if (!j.is_object() || !j.contains("event")) continue;
                std::lock_guard lock(m_mutex);
                m_events.emplace_back(Clock::now(), std::move(j));
                m_changed.notify_all();
            }
        } catch (const std::exception&) {
            std::lock_guard lock(m_mutex);
            m_closed = true;
            m_changed.notify_all();
        }
    }

    int m_fd = -1;
    std::string m_buffer;
    mutable std::mutex m_mutex;
    std::condition_variable m_changed;
    std::vector<std::pair<Clock::time_point, nlohmann::json>> m_events;
    bool m_closed = false;
    std::thread m_reader;
};

}  // namespace move_test
