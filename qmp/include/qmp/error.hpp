// The error vocabulary shared by every blockmig library.
//
// It lives in qmp/ because qmp is the bottom layer: pools/ and blockmig/ build
// on it, and qmp/ knows nothing of them (docs/ARCHITECTURE.md). Inside the
// libraries every fallible call returns Result<T>; exceptions never cross a
// library boundary. Messages start with where it failed, e.g.
// "nfs: mount 127.0.0.1:/export: connection refused" (libnbd's convention).
#pragma once

#include <expected>
#include <string>
#include <string_view>
#include <utility>

namespace blockmig {

enum class ErrorCode {
    not_found,
    invalid_argument,
    invalid_state,
    already_exists,
    no_space,
    io_error,
    timeout,
    qmp_command_failed,  // QEMU answered with an error; Error::qmp_class holds its class
    protocol,            // the peer broke the protocol (malformed JSON, missing fields)
    interrupted,         // the connection or operation ended before an answer came
    cancelled,
    unsupported,
};

std::string_view to_string(ErrorCode code);

struct Error {
    ErrorCode code = ErrorCode::io_error;
    std::string message;
    std::string qmp_class;  // e.g. "GenericError", "DeviceNotFound"; empty if not from QEMU

    // Returns a copy whose message is prefixed with `context: `, so callers can
    // say where a lower-level failure happened without losing its code.
    Error with_context(std::string_view context) const;
};

// True when a failed call certainly had no effect: QEMU (or a pool) answered
// with a refusal. A timeout, a lost connection or a garbled reply may hide a
// command that took effect, so a journaled intent must stand for those.
bool is_definite_refusal(const Error& error);

template <typename T>
using Result = std::expected<T, Error>;

// Shorthand for `return fail(ErrorCode::x, "...")` in functions returning Result<T>.
inline std::unexpected<Error> fail(ErrorCode code, std::string message, std::string qmp_class = {}) {
    return std::unexpected<Error>(Error{code, std::move(message), std::move(qmp_class)});
}
inline std::unexpected<Error> fail(Error error) { return std::unexpected<Error>(std::move(error)); }

}  // namespace blockmig
