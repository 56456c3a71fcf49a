// A QMP client shaped like QEMU's python/qemu/qmp: greeting, capability
// negotiation, then commands matched to replies by id, with events fanned out
// to subscribers that each own a queue.
//
// State machine (docs/state-machines.md, "QMP client"):
//   idle -> connecting -> negotiating -> running -> dead
// Client::connect() returns only a running client (or an Error); nothing but
// `qmp_capabilities` is ever sent before negotiation ends. Any disconnect,
// protocol violation or close() moves to dead, which is final.
//
// Thread safety: every public member may be called from several threads at
// once. A private reader thread reads replies and events; event filters and
// the log hook run on it, so they must be quick and must not call the Client.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "qmp/error.hpp"
#include "qmp/transport.hpp"

namespace blockmig::qmp {

using Milliseconds = std::chrono::milliseconds;

enum class State { idle, connecting, negotiating, running, dead };
std::string_view to_string(State state);

enum class LogLevel { debug, info, warning };
// Receives protocol traffic and oddities (e.g. a dropped reply). Never called
// with a lock held that the hook could need; must not call the Client.
using LogHook = std::function<void(LogLevel, std::string_view)>;

struct ConnectOptions {
    // Bounds connecting, reading the greeting and negotiating, together.
    Milliseconds timeout{10'000};
    // Enable out-of-band execution when the server offers "oob".
    bool enable_oob = false;
    // Used by execute() when it is given no timeout; nullopt waits forever.
    std::optional<Milliseconds> default_timeout;
    LogHook log;
};

struct Greeting {
    int major = 0, minor = 0, micro = 0;
    std::string package;                    // e.g. "Debian 1:7.2+dfsg-7"
    std::vector<std::string> capabilities;  // offered, e.g. {"oob"}
    nlohmann::json raw;                     // the inner "QMP" object
    bool offers(std::string_view capability) const;
    // (major, minor, micro) >= the given version.
    bool at_least(int maj, int min, int mic = 0) const;
};

struct Event {
    std::string name;
    nlohmann::json data = nlohmann::json::object();  // {} when QEMU sent none
    std::int64_t seconds = 0, microseconds = 0;      // QEMU's timestamp
    nlohmann::json raw;                              // the whole message
};

// Which events a subscription queues. Empty names = every event; the
// predicate (if set) must also accept it. Both run on the reader thread.
struct EventFilter {
    std::vector<std::string> names;
    std::function<bool(const Event&)> predicate;

    EventFilter() = default;
    EventFilter(std::string name) : names{std::move(name)} {}
    EventFilter(const char* name) : names{name} {}
    EventFilter(std::vector<std::string> event_names, std::function<bool(const Event&)> pred = {})
        : names(std::move(event_names)), predicate(std::move(pred)) {}
    bool matches(const Event& event) const;
};

namespace detail {
struct EventHub;
struct EventQueue;
}  // namespace detail

// A listener with its own queue; events matching its filter are queued from
// the moment subscribe() returns until it is destroyed. Move-only RAII.
// One thread at a time may wait on a subscription.
class EventSubscription {
  public:
    EventSubscription() = default;
    ~EventSubscription();
    EventSubscription(EventSubscription&&) noexcept;
    EventSubscription& operator=(EventSubscription&&) noexcept;
    EventSubscription(const EventSubscription&) = delete;
    EventSubscription& operator=(const EventSubscription&) = delete;

    // Takes queued events in arrival order until one satisfies `predicate`
    // (an empty predicate accepts any); non-matching ones are discarded.
    // Errors: timeout; interrupted once the client is dead and the queue is
    // drained (events queued before the disconnect are still returned);
    // invalid_state on a default-constructed subscription.
    Result<Event> wait(const std::function<bool(const Event&)>& predicate,
                       std::optional<Milliseconds> timeout);
    // The next queued event (wait with no predicate).
    Result<Event> next(std::optional<Milliseconds> timeout) { return wait({}, timeout); }
    // Number of events queued and not yet taken.
    std::size_t pending() const;

  private:
    friend class Client;
    EventSubscription(std::shared_ptr<detail::EventHub> hub,
                      std::shared_ptr<detail::EventQueue> queue);
    void reset();
    std::shared_ptr<detail::EventHub> m_hub;
    std::shared_ptr<detail::EventQueue> m_queue;
};

class Client {
  public:
    // Connects to `address` (any form make_transport() takes: a Unix socket path,
    // "tcp:HOST:PORT", "ssh://[USER@]HOST[:PORT]/PATH"), reads the
    // greeting and negotiates capabilities. Returns a running client.
    // Errors: those of make_transport(); timeout; protocol (no greeting,
    // malformed data); qmp_command_failed (qmp_capabilities refused).
    static Result<std::unique_ptr<Client>> connect(std::string_view address,
                                                   ConnectOptions options = {});
    // Same over an existing transport (tests use a ScriptedTransport).
    static Result<std::unique_ptr<Client>> connect(std::unique_ptr<Transport> transport,
                                                   ConnectOptions options = {});

    // Closes the connection (pending calls fail with interrupted) and joins
    // the reader thread.
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // Runs one command and returns its "return" value.
    // Permitted states: running (else invalid_state, or interrupted when the
    // connection was lost). Errors: qmp_command_failed with
    // Error::qmp_class = QEMU's class and message "<command>: <desc>";
    // timeout (the call is abandoned: a late reply is dropped); interrupted
    // (disconnect before the reply); protocol (the server broke the protocol).
    // `timeout` defaults to ConnectOptions::default_timeout.
    Result<nlohmann::json> execute(std::string_view command,
                                   const nlohmann::json& arguments = nlohmann::json::object(),
                                   std::optional<Milliseconds> timeout = {});
    // Same, passing `fds` with the command (SCM_RIGHTS) for getfd / add-fd.
    // The caller keeps ownership of the fds. Errors as execute(), plus
    // unsupported when the transport cannot pass fds.
    Result<nlohmann::json> execute_with_fds(std::string_view command,
                                            const nlohmann::json& arguments,
                                            std::span<const int> fds,
                                            std::optional<Milliseconds> timeout = {});
    // Runs a command out-of-band ("exec-oob"). Errors: unsupported unless oob
    // was negotiated; otherwise as execute().
    Result<nlohmann::json> execute_oob(std::string_view command,
                                       const nlohmann::json& arguments = nlohmann::json::object(),
                                       std::optional<Milliseconds> timeout = {});

    // Starts queueing events that match `filter`. Subscribe BEFORE sending the
    // command whose consequences you wait for: no event is lost then.
    // On a dead client the subscription reports interrupted once drained.
    EventSubscription subscribe(EventFilter filter = {});

    const Greeting& greeting() const { return m_greeting; }
    State state() const;
    bool oob_enabled() const { return m_oob; }
    // Why the client is dead (empty message while it is not).
    Error dead_reason() const;
    std::string peer() const { return m_transport->peer(); }
    // The QEMU process's pid when the transport can tell (a Unix socket, via
    // SO_PEERCRED), nullopt ("unknown") otherwise; see Transport::peer_pid().
    std::optional<int> peer_pid() const { return m_transport->peer_pid(); }

    // Moves to dead: pending calls fail with interrupted. Idempotent.
    void close();

    // Every command id this client sends starts with this prefix.
    static constexpr std::string_view k_id_prefix = "blockmig-";

  private:
    struct Pending;
    Client(std::unique_ptr<Transport> transport, ConnectOptions options);
    Result<void> negotiate();
    Result<nlohmann::json> call(std::string_view key, std::string_view command,
                                const nlohmann::json& arguments, std::span<const int> fds,
                                std::optional<Milliseconds> timeout, bool internal);
    void reader_loop();
    void die(Error reason);
    void log(LogLevel level, std::string_view text) const;

    std::unique_ptr<Transport> m_transport;
    ConnectOptions m_options;
    Greeting m_greeting;
    bool m_oob = false;

    mutable std::mutex m_mutex;  // guards everything below
    std::condition_variable m_changed;
    State m_state = State::idle;
    bool m_have_greeting = false;
    bool m_closed_by_user = false;
    Error m_dead_reason;
    std::uint64_t m_next_id = 1;
    std::map<std::string, std::shared_ptr<Pending>, std::less<>> m_pending;

    std::mutex m_send_mutex;  // one line on the wire at a time
    std::shared_ptr<detail::EventHub> m_hub;
    std::thread m_reader;
};

// ---- waiting for jobs ---------------------------------------------------------

// Filter for every event about job `job_id`: JOB_STATUS_CHANGE (data.id) and
// BLOCK_JOB_* (data.device, which holds the job id).
EventFilter job_events(std::string job_id);

// Waits until job `job_id` reports JOB_STATUS_CHANGE to `status` (e.g.
// "ready", "concluded"). If the job reaches "aborting", "concluded" or "null"
// first, fails with io_error carrying the job's error from query-jobs when
// QEMU still has it. `sub` must have been created (with job_events() or a
// wider filter) before the job was started. Errors also: timeout, interrupted.
Result<Event> wait_for_job_status(Client& client, EventSubscription& sub, std::string_view job_id,
                                  std::string_view status, std::optional<Milliseconds> timeout);

// Waits for the first of BLOCK_JOB_READY / _COMPLETED / _CANCELLED / _ERROR
// (any names given) whose data.device is `job_id`. Errors: timeout, interrupted.
Result<Event> wait_for_block_job_event(EventSubscription& sub, std::string_view job_id,
                                       std::span<const std::string_view> event_names,
                                       std::optional<Milliseconds> timeout);

}  // namespace blockmig::qmp
