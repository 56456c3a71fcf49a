#include "qmp/testing/scripted_transport.hpp"

#include <fmt/core.h>

#include <thread>

namespace blockmig::qmp::testing {

using nlohmann::json;

Expectation& Expectation::reply(json value) {
    return raw(fmt::format(R"({{"return": {}, "id": $ID}})", value.dump()) + "\n");
}

Expectation& Expectation::error(std::string error_class, std::string desc) {
    json e = {{"class", error_class}, {"desc", desc}};
    return raw(fmt::format(R"({{"id": $ID, "error": {}}})", e.dump()) + "\n");
}

Expectation& Expectation::event(std::string name, json data) {
    json e = {
        {"event", name}, {"data", data}, {"timestamp", {{"seconds", 1}, {"microseconds", 2}}}};
    return raw(e.dump() + "\n");
}

Expectation& Expectation::raw(std::string bytes) {
    m_steps.push_back(Step{Step::bytes, std::move(bytes), {}});
    return *this;
}

Expectation& Expectation::delay(std::chrono::milliseconds pause) {
    m_steps.push_back(Step{Step::pause, {}, pause});
    return *this;
}

Expectation& Expectation::disconnect() {
    m_steps.push_back(Step{Step::eof, {}, {}});
    return *this;
}

void Script::push_step(Expectation::Step step) {
    {
        std::lock_guard lock(m_mutex);
        m_inbound.push_back(std::move(step));
    }
    m_changed.notify_all();
}

void Script::push_raw(std::string bytes) {
    push_step({Expectation::Step::bytes, std::move(bytes), {}});
}
void Script::push(const json& message) { push_raw(message.dump() + "\n"); }

void Script::push_greeting(int major, int minor, int micro, std::vector<std::string> capabilities) {
    push({{"QMP",
           {{"version",
             {{"qemu", {{"major", major}, {"minor", minor}, {"micro", micro}}},
              {"package", "scripted"}}},
            {"capabilities", capabilities}}}});
}

void Script::push_event(std::string name, json data) {
    push({{"event", name}, {"data", data}, {"timestamp", {{"seconds", 1}, {"microseconds", 2}}}});
}

void Script::push_delay(std::chrono::milliseconds pause) {
    push_step({Expectation::Step::pause, {}, pause});
}
void Script::push_disconnect() { push_step({Expectation::Step::eof, {}, {}}); }

Expectation& Script::expect(std::string command, std::optional<json> arguments) {
    std::lock_guard lock(m_mutex);
    Expectation& e = m_expectations.emplace_back();
    e.m_command = std::move(command);
    e.m_arguments = std::move(arguments);
    return e;
}

void Script::set_responder(std::function<void(const json&, Script&)> responder) {
    std::lock_guard lock(m_mutex);
    m_responder = std::move(responder);
}

void Script::set_peer_pid(std::optional<int> pid) {
    std::lock_guard lock(m_mutex);
    m_peer_pid = pid;
}

std::optional<int> Script::peer_pid() const {
    std::lock_guard lock(m_mutex);
    return m_peer_pid;
}

std::vector<SentMessage> Script::sent() const {
    std::lock_guard lock(m_mutex);
    return m_sent;
}

bool Script::wait_for_sent(std::size_t count, std::chrono::milliseconds timeout) const {
    std::unique_lock lock(m_mutex);
    return m_changed.wait_for(lock, timeout, [&] { return m_sent.size() >= count; });
}

std::vector<std::string> Script::failures() const {
    std::lock_guard lock(m_mutex);
    return m_failures;
}

std::size_t Script::unmet_expectations() const {
    std::lock_guard lock(m_mutex);
    return m_expectations.size();
}

bool Script::closed() const {
    std::lock_guard lock(m_mutex);
    return m_closed;
}

Result<void> Script::on_send(std::string_view line, std::size_t fd_count) {
    json message = json::parse(line, nullptr, false);
    std::function<void(const json&, Script&)> responder;
    {
        std::unique_lock lock(m_mutex);
        if (m_closed || m_eof) return fail(ErrorCode::interrupted, "scripted: connection closed");
        m_sent.push_back(SentMessage{message, m_lines_delivered, fd_count});
        m_changed.notify_all();
        std::string command;
        if (message.is_object()) {
            for (const char* key : {"execute", "exec-oob"}) {
                if (message.contains(key) && message[key].is_string())
                    command = message[key].get<std::string>();
            }
        }
        if (m_expectations.empty()) {
            if (!m_responder) {
                m_failures.push_back(fmt::format("unexpected command: {}", line));
                return fail(ErrorCode::io_error,
                            fmt::format("scripted: unexpected command {}", line));
            }
            responder = m_responder;
        } else {
            Expectation e = std::move(m_expectations.front());
            m_expectations.pop_front();
            json args = message.is_object() && message.contains("arguments") ? message["arguments"]
                                                                             : json::object();
            if (command != e.m_command || (e.m_arguments && *e.m_arguments != args)) {
                m_failures.push_back(fmt::format("expected {} {}, got {}", e.m_command,
                                                 e.m_arguments ? e.m_arguments->dump() : "", line));
                return fail(ErrorCode::io_error,
                            fmt::format("scripted: expected {}, got {}", e.m_command, line));
            }
            std::string id = message.contains("id") ? message["id"].dump() : "null";
            for (Expectation::Step step : e.m_steps) {
                for (std::size_t pos; (pos = step.text.find("$ID")) != std::string::npos;) {
                    step.text.replace(pos, 3, id);
                }
                m_inbound.push_back(std::move(step));
            }
            m_changed.notify_all();
            return {};
        }
    }
    responder(message, *this);
    return {};
}

Result<std::string> Script::receive_line() {
    std::unique_lock lock(m_mutex);
    while (true) {
        if (auto line = m_lines.next_line()) {
            ++m_lines_delivered;
            m_changed.notify_all();
            return std::move(*line);
        }
        m_changed.wait(lock, [&] { return m_closed || m_eof || !m_inbound.empty(); });
        if (m_closed) return fail(ErrorCode::interrupted, "scripted: connection closed");
        if (m_eof) return fail(ErrorCode::interrupted, "scripted: server disconnected");
        Expectation::Step step = std::move(m_inbound.front());
        m_inbound.pop_front();
        switch (step.kind) {
            case Expectation::Step::bytes:
                if (auto ok = m_lines.append(step.text); !ok) return fail(ok.error());
                break;
            case Expectation::Step::pause:
                lock.unlock();
                std::this_thread::sleep_for(step.delay);
                lock.lock();
                break;
            case Expectation::Step::eof:
                m_eof = true;
                break;
        }
    }
}

void Script::close() {
    {
        std::lock_guard lock(m_mutex);
        m_closed = true;
    }
    m_changed.notify_all();
}

Result<void> ScriptedTransport::send(std::string_view line, std::span<const int> fds) {
    if (!fds.empty() && !m_fd_passing)
        return fail(ErrorCode::unsupported, "scripted: no fd passing");
    return m_script->on_send(line, fds.size());
}

}  // namespace blockmig::qmp::testing
