// QMP wire format: splitting the byte stream into lines and classifying one
// line as a greeting, a command reply, an error reply or an event.
//
// QEMU writes one JSON object per line (docs/interop/qmp-spec.txt, "2.
// Protocol Specification"); a message never contains a raw newline because
// JSON strings escape it. This is the part the fuzz target exercises, so it
// must reject every malformed input with an Error and never throw or crash.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "qmp/error.hpp"

namespace blockmig::qmp {

// query-qmp-schema is ~200 KiB on QEMU 7.2 and grows with each release; a
// line beyond this is treated as a broken peer rather than buffered forever.
inline constexpr std::size_t k_default_max_line = 64 * 1024 * 1024;

enum class MessageKind {
    greeting,     // {"QMP": {...}}; body = the inner object
    reply,        // {"return": ..., "id": ...}; body = the return value
    error_reply,  // {"error": {"class", "desc"}, "id"?}; body = the error object
    event,        // {"event": NAME, "data"?, "timestamp"?}; body = the whole message
};

struct Message {
    MessageKind kind = MessageKind::reply;
    // The command id echoed by QEMU when it is a string (the only kind this
    // client sends); nullopt when absent or of another JSON type.
    std::optional<std::string> id;
    bool has_id = false;  // true if any "id" member was present
    nlohmann::json body;
};

// Parses one line (without its newline; a trailing '\r' is ignored).
// Errors: ErrorCode::protocol for invalid JSON, a non-object, an object that
// is none of the four kinds, or an error object without string class/desc.
Result<Message> parse_message(std::string_view line);

// Accumulates bytes and hands out complete lines. Not thread-safe.
class LineBuffer {
  public:
    explicit LineBuffer(std::size_t max_line = k_default_max_line) : m_max_line(max_line) {}

    // Appends received bytes. Fails with ErrorCode::protocol once an
    // unterminated line exceeds max_line (the buffer is then unusable).
    Result<void> append(std::string_view bytes);
    // The next complete line without its '\n', or nullopt if none is complete.
    std::optional<std::string> next_line();
    // Bytes buffered that do not yet form a complete line.
    std::size_t pending_bytes() const { return m_buffer.size() - m_start; }

  private:
    std::string m_buffer;
    std::size_t m_start = 0;    // first byte not yet handed out
    std::size_t m_scanned = 0;  // bytes from m_start known to hold no '\n'
    std::size_t m_max_line;
};

}  // namespace blockmig::qmp
