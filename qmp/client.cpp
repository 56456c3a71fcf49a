#include "qmp/client.hpp"

#include <fmt/core.h>

#include <algorithm>

#include "json_util.hpp"
#include "qmp/message.hpp"

namespace blockmig::qmp {

namespace {

using nlohmann::json;

// A copy of a command for the log without secrets: the `data` of secret
// objects and any "password" member (secrets never reach logs).
json redact_secrets(const json& value) {
    if (value.is_array()) {
        json out = json::array();
        for (const auto& item : value) out.push_back(redact_secrets(item));
        return out;
    }
    if (!value.is_object()) return value;
    const bool secret = value.value("qom-type", "") == "secret";
    json out = json::object();
    for (const auto& [key, item] : value.items()) {
        const bool hide = key == "password" || (secret && key == "data");
        out[key] = hide ? json("<redacted>") : redact_secrets(item);
    }
    return out;
}

}  // namespace

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

std::string_view to_string(State state) {
    switch (state) {
        case State::idle:
            return "idle";
        case State::connecting:
            return "connecting";
        case State::negotiating:
            return "negotiating";
        case State::running:
            return "running";
        case State::dead:
            return "dead";
    }
    return "unknown";
}

bool Greeting::offers(std::string_view capability) const {
    return std::find(capabilities.begin(), capabilities.end(), capability) != capabilities.end();
}

bool Greeting::at_least(int maj, int min, int mic) const {
    return std::tie(major, minor, micro) >= std::tie(maj, min, mic);
}

bool EventFilter::matches(const Event& event) const {
    if (!names.empty() && std::find(names.begin(), names.end(), event.name) == names.end())
        return false;
    return !predicate || predicate(event);
}

// ---- event fan-out ----------------------------------------------------------

namespace detail {

struct EventQueue {
    EventFilter filter;
    std::deque<Event> events;
};

// Shared by the client and its subscriptions, so a subscription may outlive
// the client (it then reports interrupted).
struct EventHub {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<std::shared_ptr<EventQueue>> queues;
    bool closed = false;
    Error reason;

    void dispatch(const Event& event) {
        {
            std::lock_guard lock(mutex);
            for (auto& q : queues) {
                if (q->filter.matches(event)) q->events.push_back(event);
            }
        }
        changed.notify_all();
    }
    void close(const Error& why) {
        {
            std::lock_guard lock(mutex);
            if (closed) return;
            closed = true;
            reason = why;
        }
        changed.notify_all();
    }
};

}  // namespace detail

EventSubscription::EventSubscription(std::shared_ptr<detail::EventHub> hub,
                                     std::shared_ptr<detail::EventQueue> queue)
    : m_hub(std::move(hub)), m_queue(std::move(queue)) {}

EventSubscription::~EventSubscription() { reset(); }

EventSubscription::EventSubscription(EventSubscription&& other) noexcept
    : m_hub(std::move(other.m_hub)), m_queue(std::move(other.m_queue)) {}

EventSubscription& EventSubscription::operator=(EventSubscription&& other) noexcept {
    if (this != &other) {
        reset();
        m_hub = std::move(other.m_hub);
        m_queue = std::move(other.m_queue);
    }
    return *this;
}

void EventSubscription::reset() {
    if (!m_hub) return;
    {
        std::lock_guard lock(m_hub->mutex);
        std::erase(m_hub->queues, m_queue);
    }
    m_hub.reset();
    m_queue.reset();
}

std::size_t EventSubscription::pending() const {
    if (!m_hub) return 0;
    std::lock_guard lock(m_hub->mutex);
    return m_queue->events.size();
}

Result<Event> EventSubscription::wait(const std::function<bool(const Event&)>& predicate,
                                      std::optional<Milliseconds> timeout) {
    if (!m_hub) return fail(ErrorCode::invalid_state, "qmp: wait on an empty event subscription");
    auto deadline = timeout ? SteadyClock::now() + *timeout : SteadyClock::time_point::max();
    std::unique_lock lock(m_hub->mutex);
    while (true) {
        while (!m_queue->events.empty()) {
            Event event = std::move(m_queue->events.front());
            m_queue->events.pop_front();
            if (!predicate || predicate(event)) return event;
        }
        if (m_hub->closed) {
            return fail(ErrorCode::interrupted,
                        fmt::format("qmp: connection ended while waiting for an event: {}",
                                    m_hub->reason.message));
        }
        if (timeout) {
            if (m_hub->changed.wait_until(lock, deadline) == std::cv_status::timeout &&
                m_queue->events.empty() && !m_hub->closed) {
                return fail(ErrorCode::timeout,
                            fmt::format("qmp: no matching event within {} ms", timeout->count()));
            }
        } else {
            m_hub->changed.wait(lock);
        }
    }
}

// ---- client -----------------------------------------------------------------

struct Client::Pending {
    std::string command;
    bool done = false;
    Result<json> result;
};

Client::Client(std::unique_ptr<Transport> transport, ConnectOptions options)
    : m_transport(std::move(transport)),
      m_options(std::move(options)),
      m_hub(std::make_shared<detail::EventHub>()) {}

Client::~Client() {
    close();
    if (m_reader.joinable()) m_reader.join();
}

Result<std::unique_ptr<Client>> Client::connect(std::string_view address, ConnectOptions options) {
    auto transport = make_transport(address, options.timeout);
    if (!transport) return fail(transport.error());
    return connect(std::move(*transport), std::move(options));
}

Result<std::unique_ptr<Client>> Client::connect(std::unique_ptr<Transport> transport,
                                                ConnectOptions options) {
    if (!transport) return fail(ErrorCode::invalid_argument, "qmp: connect without a transport");
    std::unique_ptr<Client> client(new Client(std::move(transport), std::move(options)));
    {
        std::lock_guard lock(client->m_mutex);
        client->m_state = State::connecting;
    }
    client->m_reader = std::thread([c = client.get()] { c->reader_loop(); });
    if (auto ok = client->negotiate(); !ok) {
        client->close();
        return fail(ok.error().with_context(fmt::format("qmp: connect {}", client->peer())));
    }
    return client;
}

State Client::state() const {
    std::lock_guard lock(m_mutex);
    return m_state;
}

Error Client::dead_reason() const {
    std::lock_guard lock(m_mutex);
    return m_state == State::dead ? m_dead_reason : Error{ErrorCode::io_error, {}, {}};
}

void Client::log(LogLevel level, std::string_view text) const {
    if (m_options.log) m_options.log(level, text);
}

Result<void> Client::negotiate() {
    auto deadline = SteadyClock::now() + m_options.timeout;
    {
        std::unique_lock lock(m_mutex);
        if (!m_changed.wait_until(lock, deadline,
                                  [&] { return m_have_greeting || m_state == State::dead; })) {
            return fail(ErrorCode::timeout,
                        fmt::format("no QMP greeting within {} ms", m_options.timeout.count()));
        }
        if (m_state == State::dead) return fail(m_dead_reason);
    }
    json arguments = json::object();
    if (m_options.enable_oob && m_greeting.offers("oob"))
        arguments["enable"] = json::array({"oob"});
    auto remaining = std::chrono::duration_cast<Milliseconds>(deadline - SteadyClock::now());
    auto reply = call("execute", "qmp_capabilities", arguments, {},
                      std::max(remaining, Milliseconds(1)), true);
    if (!reply) return fail(reply.error());
    std::lock_guard lock(m_mutex);
    if (m_state != State::negotiating) return fail(m_dead_reason);
    m_oob = arguments.contains("enable");
    m_state = State::running;
    return {};
}

Result<json> Client::execute(std::string_view command, const json& arguments,
                             std::optional<Milliseconds> timeout) {
    return call("execute", command, arguments, {}, timeout, false);
}

Result<json> Client::execute_with_fds(std::string_view command, const json& arguments,
                                      std::span<const int> fds,
                                      std::optional<Milliseconds> timeout) {
    if (!fds.empty() && !m_transport->supports_fd_passing()) {
        return fail(ErrorCode::unsupported,
                    fmt::format("{}: passing file descriptors needs a Unix socket (peer {})",
                                command, peer()));
    }
    return call("execute", command, arguments, fds, timeout, false);
}

Result<json> Client::execute_oob(std::string_view command, const json& arguments,
                                 std::optional<Milliseconds> timeout) {
    if (!m_oob)
        return fail(ErrorCode::unsupported,
                    fmt::format("{}: out-of-band execution was not negotiated", command));
    return call("exec-oob", command, arguments, {}, timeout, false);
}

Result<json> Client::call(std::string_view key, std::string_view command, const json& arguments,
                          std::span<const int> fds, std::optional<Milliseconds> timeout,
                          bool internal) {
    if (!arguments.is_null() && !arguments.is_object()) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: arguments must be a JSON object", command));
    }
    if (!timeout) timeout = m_options.default_timeout;
    auto pending = std::make_shared<Pending>();
    pending->command = std::string(command);
    std::string id;
    {
        std::lock_guard lock(m_mutex);
        bool allowed = m_state == State::running || (internal && m_state == State::negotiating);
        if (!allowed) {
            if (m_state == State::dead && !m_closed_by_user) {
                ErrorCode code = m_dead_reason.code == ErrorCode::protocol ? ErrorCode::protocol
                                                                           : ErrorCode::interrupted;
                return fail(code, fmt::format("{}: {}", command, m_dead_reason.message));
            }
            return fail(ErrorCode::invalid_state, fmt::format("{}: QMP client is {}, not running",
                                                              command, to_string(m_state)));
        }
        id = fmt::format("{}{}", k_id_prefix, m_next_id++);
        m_pending.emplace(id, pending);
    }
    json message = {{std::string(key), std::string(command)}, {"id", id}};
    if (arguments.is_object() && !arguments.empty()) message["arguments"] = arguments;
    std::string text = message.dump();
    if (m_options.log) log(LogLevel::debug, fmt::format("-> {}", redact_secrets(message).dump()));
    Result<void> sent;
    {
        std::lock_guard lock(m_send_mutex);
        sent = m_transport->send(text, fds);
    }
    std::unique_lock lock(m_mutex);
    if (!sent && !pending->done) {
        m_pending.erase(id);
        return fail(sent.error().with_context(std::string(command)));
    }
    auto done = [&] { return pending->done; };
    if (timeout) {
        if (!m_changed.wait_for(lock, *timeout, done)) {
            m_pending.erase(id);  // a late reply now has an unknown id and is dropped
            return fail(ErrorCode::timeout,
                        fmt::format("{}: no reply within {} ms", command, timeout->count()));
        }
    } else {
        m_changed.wait(lock, done);
    }
    return std::move(pending->result);
}

namespace {

Result<Greeting> parse_greeting(const json& qmp) {
    Greeting g;
    g.raw = qmp;
    const json* version = qmp.contains("version") ? &qmp["version"] : nullptr;
    if (!version || !version->is_object() || !version->contains("qemu") ||
        !(*version)["qemu"].is_object()) {
        return fail(ErrorCode::protocol, "qmp: greeting without version.qemu");
    }
    const json& q = (*version)["qemu"];
    for (auto [name, field] :
         {std::pair{"major", &g.major}, {"minor", &g.minor}, {"micro", &g.micro}}) {
        if (!q.contains(name) || !q[name].is_number_integer()) {
            return fail(ErrorCode::protocol,
                        fmt::format("qmp: greeting without integer version.qemu.{}", name));
        }
        *field = q[name].get<int>();
    }
    g.package = detail::str(*version, "package");
    if (!qmp.contains("capabilities") || !qmp["capabilities"].is_array()) {
        return fail(ErrorCode::protocol, "qmp: greeting without a capabilities list");
    }
    for (const json& c : qmp["capabilities"]) {
        if (c.is_string()) g.capabilities.push_back(c.get<std::string>());
    }
    return g;
}

Event make_event(json message) {
    Event e;
    e.name = message["event"].get<std::string>();
    if (auto it = message.find("data"); it != message.end() && it->is_object()) e.data = *it;
    if (auto it = message.find("timestamp"); it != message.end() && it->is_object()) {
        e.seconds = detail::integer(*it, "seconds");
        e.microseconds = detail::integer(*it, "microseconds");
    }
    e.raw = std::move(message);
    return e;
}

std::string short_text(const std::string& line) {
    constexpr std::size_t k_max = 2000;
    if (line.size() <= k_max) return line;
    return fmt::format("{}... ({} bytes)", line.substr(0, k_max), line.size());
}

}  // namespace

void Client::reader_loop() {
    while (true) {
        auto line = m_transport->receive_line();
        if (!line) {
            die(line.error());
            return;
        }
        log(LogLevel::debug, fmt::format("<- {}", short_text(*line)));
        auto msg = parse_message(*line);
        if (!msg) {
            die(msg.error());
            return;
        }
        switch (msg->kind) {
            case MessageKind::greeting: {
                auto greeting = parse_greeting(msg->body);
                std::unique_lock lock(m_mutex);
                if (m_have_greeting || !greeting) {
                    lock.unlock();
                    die(greeting ? Error{ErrorCode::protocol, "qmp: unexpected second greeting", {}}
                                 : greeting.error());
                    return;
                }
                m_greeting = std::move(*greeting);
                m_have_greeting = true;
                if (m_state == State::connecting) m_state = State::negotiating;
                lock.unlock();
                m_changed.notify_all();
                break;
            }
            case MessageKind::event:
                m_hub->dispatch(make_event(std::move(msg->body)));
                break;
            case MessageKind::reply:
            case MessageKind::error_reply: {
                if (!msg->has_id && msg->kind == MessageKind::error_reply) {
                    // We always send an id, so QEMU could not parse one of our
                    // commands: the stream is out of step (python/qemu/qmp treats
                    // this as fatal too, ServerParseError).
                    die(Error{ErrorCode::protocol,
                              fmt::format("qmp: error reply without id: {}: {}",
                                          msg->body["class"].get<std::string>(),
                                          msg->body["desc"].get<std::string>()),
                              msg->body["class"].get<std::string>()});
                    return;
                }
                std::unique_lock lock(m_mutex);
                auto it = msg->id ? m_pending.find(*msg->id) : m_pending.end();
                if (it == m_pending.end()) {
                    lock.unlock();
                    log(LogLevel::debug,
                        fmt::format("qmp: dropping reply with unknown id: {}", short_text(*line)));
                    break;
                }
                Pending& p = *it->second;
                if (msg->kind == MessageKind::reply) {
                    p.result = std::move(msg->body);
                } else {
                    std::string cls = msg->body["class"].get<std::string>();
                    p.result =
                        fail(ErrorCode::qmp_command_failed,
                             fmt::format("{}: {}", p.command, msg->body["desc"].get<std::string>()),
                             cls);
                }
                p.done = true;
                m_pending.erase(it);
                lock.unlock();
                m_changed.notify_all();
                break;
            }
        }
    }
}

void Client::die(Error reason) {
    {
        std::lock_guard lock(m_mutex);
        if (m_state == State::dead) return;
        m_state = State::dead;
        // not_found stays: over ssh the stream ends so when sshd cannot open
        // the socket (no QEMU there), which callers must tell from a lost link.
        if (reason.code != ErrorCode::protocol && reason.code != ErrorCode::not_found)
            reason.code = ErrorCode::interrupted;
        m_dead_reason = reason;
        for (auto& [id, p] : m_pending) {
            p->result = fail(reason.code, fmt::format("{}: {}", p->command, reason.message),
                             reason.qmp_class);
            p->done = true;
        }
        m_pending.clear();
    }
    log(LogLevel::info, fmt::format("qmp: connection ended: {}", reason.message));
    m_changed.notify_all();
    m_transport->close();
    m_hub->close(reason);
}

void Client::close() {
    {
        std::lock_guard lock(m_mutex);
        if (m_state == State::dead) return;
        m_closed_by_user = true;
    }
    die(Error{ErrorCode::interrupted, "qmp: client closed", {}});
}

EventSubscription Client::subscribe(EventFilter filter) {
    auto queue = std::make_shared<detail::EventQueue>();
    queue->filter = std::move(filter);
    {
        std::lock_guard lock(m_hub->mutex);
        m_hub->queues.push_back(queue);
    }
    return EventSubscription(m_hub, queue);
}

// ---- job helpers --------------------------------------------------------------

EventFilter job_events(std::string job_id) {
    return EventFilter({}, [id = std::move(job_id)](const Event& e) {
        if (e.name == "JOB_STATUS_CHANGE") return detail::str(e.data, "id") == id;
        if (e.name.starts_with("BLOCK_JOB_")) return detail::str(e.data, "device") == id;
        return false;
    });
}

Result<Event> wait_for_job_status(Client& client, EventSubscription& sub, std::string_view job_id,
                                  std::string_view status, std::optional<Milliseconds> timeout) {
    auto deadline = timeout ? SteadyClock::now() + *timeout : SteadyClock::time_point::max();
    auto is_change = [&](const Event& e) {
        return e.name == "JOB_STATUS_CHANGE" && detail::str(e.data, "id") == job_id;
    };
    while (true) {
        std::optional<Milliseconds> left;
        if (timeout) {
            left =
                std::max(Milliseconds(0),
                         std::chrono::duration_cast<Milliseconds>(deadline - SteadyClock::now()));
        }
        auto event = sub.wait(is_change, left);
        if (!event) {
            return fail(event.error().with_context(
                fmt::format("job {}: waiting for status {}", job_id, status)));
        }
        std::string now = detail::str(event->data, "status");
        if (now == status) return event;
        if (now == "aborting" || now == "concluded" || now == "null") {
            std::string why = "no error reported";
            if (auto jobs = client.execute("query-jobs", json::object(), Milliseconds(5000));
                jobs && jobs->is_array()) {
                for (const json& j : *jobs) {
                    if (detail::str(j, "id") == job_id && detail::opt_str(j, "error"))
                        why = detail::str(j, "error");
                }
            }
            return fail(ErrorCode::io_error,
                        fmt::format("job {}: reached {} before {}: {}", job_id, now, status, why));
        }
    }
}

Result<Event> wait_for_block_job_event(EventSubscription& sub, std::string_view job_id,
                                       std::span<const std::string_view> event_names,
                                       std::optional<Milliseconds> timeout) {
    auto match = [&](const Event& e) {
        return std::find(event_names.begin(), event_names.end(), e.name) != event_names.end() &&
               detail::str(e.data, "device") == job_id;
    };
    auto event = sub.wait(match, timeout);
    if (!event) return fail(event.error().with_context(fmt::format("block job {}", job_id)));
    return event;
}

}  // namespace blockmig::qmp
