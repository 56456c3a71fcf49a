#include "qmp/message.hpp"

#include <fmt/core.h>

namespace blockmig::qmp {

namespace {

std::string excerpt(std::string_view line) {
    constexpr std::size_t k_max = 120;
    if (line.size() <= k_max) return std::string(line);
    return fmt::format("{}... ({} bytes)", line.substr(0, k_max), line.size());
}

}  // namespace

Result<Message> parse_message(std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) {
        return fail(ErrorCode::protocol,
                    fmt::format("qmp: malformed JSON from server: {}", excerpt(line)));
    }
    if (!j.is_object()) {
        return fail(ErrorCode::protocol,
                    fmt::format("qmp: server message is not a JSON object: {}", excerpt(line)));
    }
    Message msg;
    if (auto it = j.find("id"); it != j.end()) {
        msg.has_id = true;
        if (it->is_string()) msg.id = it->get<std::string>();
    }
    if (auto it = j.find("QMP"); it != j.end()) {
        if (!it->is_object())
            return fail(ErrorCode::protocol, "qmp: greeting's \"QMP\" member is not an object");
        msg.kind = MessageKind::greeting;
        msg.body = std::move(*it);
        return msg;
    }
    if (auto it = j.find("return"); it != j.end()) {
        msg.kind = MessageKind::reply;
        msg.body = std::move(*it);
        return msg;
    }
    if (auto it = j.find("error"); it != j.end()) {
        const nlohmann::json& e = *it;
        if (!e.is_object() || !e.contains("class") || !e["class"].is_string() ||
            !e.contains("desc") || !e["desc"].is_string()) {
            return fail(ErrorCode::protocol,
                        fmt::format("qmp: error reply without class/desc: {}", excerpt(line)));
        }
        msg.kind = MessageKind::error_reply;
        msg.body = std::move(*it);
        return msg;
    }
    if (auto it = j.find("event"); it != j.end()) {
        if (!it->is_string()) return fail(ErrorCode::protocol, "qmp: event name is not a string");
        msg.kind = MessageKind::event;
        msg.body = std::move(j);
        return msg;
    }
    return fail(ErrorCode::protocol,
                fmt::format("qmp: unrecognised server message: {}", excerpt(line)));
}

Result<void> LineBuffer::append(std::string_view bytes) {
    // Compact before growing so a long session does not keep handed-out bytes.
    if (m_start > 0 && m_start == m_buffer.size()) {
        m_buffer.clear();
        m_start = 0;
        m_scanned = 0;
    } else if (m_start > 64 * 1024 && m_start * 2 > m_buffer.size()) {
        m_buffer.erase(0, m_start);
        m_start = 0;
    }
    m_buffer.append(bytes);
    if (pending_bytes() > m_max_line &&
        m_buffer.find('\n', m_start + m_scanned) == std::string::npos) {
        return fail(
            ErrorCode::protocol,
            fmt::format("qmp: server message longer than {} bytes without a newline", m_max_line));
    }
    return {};
}

std::optional<std::string> LineBuffer::next_line() {
    std::size_t nl = m_buffer.find('\n', m_start + m_scanned);
    if (nl == std::string::npos) {
        m_scanned = m_buffer.size() - m_start;
        return std::nullopt;
    }
    std::string line = m_buffer.substr(m_start, nl - m_start);
    m_start = nl + 1;
    m_scanned = 0;
    return line;
}

}  // namespace blockmig::qmp
