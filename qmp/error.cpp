#include "qmp/error.hpp"

namespace blockmig {

std::string_view to_string(ErrorCode code) {
    switch (code) {
        case ErrorCode::not_found: return "not_found";
        case ErrorCode::invalid_argument: return "invalid_argument";
        case ErrorCode::invalid_state: return "invalid_state";
        case ErrorCode::already_exists: return "already_exists";
        case ErrorCode::no_space: return "no_space";
        case ErrorCode::io_error: return "io_error";
        case ErrorCode::timeout: return "timeout";
        case ErrorCode::qmp_command_failed: return "qmp_command_failed";
        case ErrorCode::protocol: return "protocol";
        case ErrorCode::interrupted: return "interrupted";
        case ErrorCode::cancelled: return "cancelled";
        case ErrorCode::unsupported: return "unsupported";
    }
    return "unknown";
}

Error Error::with_context(std::string_view context) const {
    Error e = *this;
    e.message = std::string(context) + ": " + message;
    return e;
}

bool is_definite_refusal(const Error& error) {
    return error.code != ErrorCode::timeout && error.code != ErrorCode::interrupted &&
           error.code != ErrorCode::protocol;
}

}  // namespace blockmig
