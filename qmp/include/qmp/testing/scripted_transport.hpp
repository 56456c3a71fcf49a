// A scripted QMP peer for unit tests (QEMU's python NullProtocol idea): the
// test queues what the "server" sends and states which commands it expects;
// the Client under test talks to it through an ordinary Transport.
//
//   auto script = std::make_shared<Script>();
//   script->push_greeting();
//   script->expect("qmp_capabilities").reply(json::object());
//   script->expect("query-status").event("STOP").reply({{"status", "paused"}});
//   auto client = Client::connect(std::make_unique<ScriptedTransport>(script));
//
// Inbound data is delivered in the chunks it was pushed in, so a test can
// split a message mid-JSON, insert delays, or disconnect. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "qmp/message.hpp"
#include "qmp/transport.hpp"

namespace blockmig::qmp::testing {

class Script;

// What the server does once an expected command arrives.
class Expectation {
  public:
    // A {"return": value} reply carrying the command's id.
    Expectation& reply(nlohmann::json value);
    // A {"error": {"class", "desc"}} reply carrying the command's id.
    Expectation& error(std::string error_class, std::string desc);
    Expectation& event(std::string name, nlohmann::json data = nlohmann::json::object());
    // Raw bytes; "$ID" is replaced by the command's id (JSON-quoted).
    Expectation& raw(std::string bytes);
    Expectation& delay(std::chrono::milliseconds pause);
    Expectation& disconnect();

  private:
    friend class Script;
    struct Step {
        enum Kind { bytes, pause, eof } kind = bytes;
        std::string text;
        std::chrono::milliseconds delay{0};
    };
    std::string m_command;
    std::optional<nlohmann::json> m_arguments;
    std::vector<Step> m_steps;
};

struct SentMessage {
    nlohmann::json message;           // as parsed from the wire
    std::size_t lines_delivered = 0;  // server lines the client had read when it sent this
    std::size_t fd_count = 0;
};

class Script {
  public:
    // ---- server -> client, in order -----------------------------------------
    void push_raw(std::string bytes);          // exactly these bytes
    void push(const nlohmann::json& message);  // one line
    void push_greeting(int major = 7, int minor = 2, int micro = 0,
                       std::vector<std::string> capabilities = {"oob"});
    void push_event(std::string name, nlohmann::json data = nlohmann::json::object());
    void push_delay(std::chrono::milliseconds pause);
    void push_disconnect();  // end of stream after everything pushed before

    // ---- client -> server ----------------------------------------------------
    // The next command sent must be `command` (and carry exactly `arguments`
    // when given); its steps are queued when it arrives. Expectations are
    // matched in order.
    Expectation& expect(std::string command, std::optional<nlohmann::json> arguments = {});
    // Called (outside the lock) for a command sent when no expectation is
    // left; it may push replies. Without one such a command is a failure.
    void set_responder(
        std::function<void(const nlohmann::json& message, Script& script)> responder);
    // What the transport answers to peer_pid() (default: unknown), so a test
    // can play a local QEMU with a real process's pid.
    void set_peer_pid(std::optional<int> pid);
    std::optional<int> peer_pid() const;

    // ---- inspection ------------------------------------------------------------
    std::vector<SentMessage> sent() const;
    bool wait_for_sent(std::size_t count, std::chrono::milliseconds timeout) const;
    std::vector<std::string> failures() const;  // unexpected or mismatched commands
    std::size_t unmet_expectations() const;
    bool closed() const;

  private:
    friend class ScriptedTransport;
    void push_step(Expectation::Step step);
    Result<void> on_send(std::string_view line, std::size_t fd_count);
    Result<std::string> receive_line();
    void close();

    mutable std::mutex m_mutex;
    mutable std::condition_variable m_changed;
    std::deque<Expectation::Step> m_inbound;
    std::deque<Expectation> m_expectations;
    std::function<void(const nlohmann::json&, Script&)> m_responder;
    std::vector<SentMessage> m_sent;
    std::vector<std::string> m_failures;
    std::size_t m_lines_delivered = 0;
    std::optional<int> m_peer_pid;
    bool m_eof = false;
    bool m_closed = false;
    LineBuffer m_lines;
};

class ScriptedTransport final : public Transport {
  public:
    explicit ScriptedTransport(std::shared_ptr<Script> script, bool fd_passing = true)
        : m_script(std::move(script)), m_fd_passing(fd_passing) {}
    ~ScriptedTransport() override { close(); }

    Result<void> send(std::string_view line, std::span<const int> fds = {}) override;
    Result<std::string> receive_line() override { return m_script->receive_line(); }
    void close() override { m_script->close(); }
    bool supports_fd_passing() const override { return m_fd_passing; }
    std::string peer() const override { return "scripted"; }
    std::optional<int> peer_pid() const override { return m_script->peer_pid(); }

  private:
    std::shared_ptr<Script> m_script;
    bool m_fd_passing;
};

}  // namespace blockmig::qmp::testing
