// QMP address parsing (qmp/address.hpp).
#include "qmp/address.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <optional>

namespace blockmig::qmp {

namespace {

// sockaddr_un::sun_path holds 108 bytes with the terminating NUL, on both hosts.
constexpr std::size_t k_max_socket_path = 107;

std::unexpected<Error> bad(std::string_view text, std::string_view why) {
    return fail(ErrorCode::invalid_argument,
                fmt::format("qmp: bad address '{}': {} (expected a socket path, tcp:HOST:PORT or "
                            "ssh://[USER@]HOST[:PORT]/PATH)",
                            text, why));
}

bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

// A host or user name that reaches ssh's argv: never an option, never odd bytes.
bool is_plain_name(std::string_view s) {
    return !s.empty() && s.front() != '-' && std::all_of(s.begin(), s.end(), is_name_char);
}

bool is_v6_literal(std::string_view s) {
    return !s.empty() && s.find(':') != std::string_view::npos &&
           std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                      c == ':' || c == '.';
           });
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
    unsigned port = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
    if (text.empty() || ec != std::errc{} || ptr != text.data() + text.size() || port == 0 ||
        port > 65535)
        return std::nullopt;
    return static_cast<std::uint16_t>(port);
}

// "HOST" or "[V6]" -> the host without brackets, or nullopt.
std::optional<std::string> parse_host(std::string_view text) {
    if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
        text = text.substr(1, text.size() - 2);
        if (!is_v6_literal(text)) return std::nullopt;
        return std::string(text);
    }
    if (!is_plain_name(text)) return std::nullopt;
    return std::string(text);
}

// "HOST:PORT" with HOST possibly "[v6]"; the port is after the last ':'.
Result<Address> parse_tcp(std::string_view text, std::string_view rest) {
    std::size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return bad(text, "tcp: needs HOST:PORT");
    auto host = parse_host(rest.substr(0, colon));
    if (!host) return bad(text, "bad host name");
    auto port = parse_port(rest.substr(colon + 1));
    if (!port) return bad(text, "the port must be 1-65535");
    Address a;
    a.kind = Address::Kind::tcp;
    a.host = std::move(*host);
    a.port = *port;
    return a;
}

Result<void> check_remote_path(std::string_view text, std::string_view path) {
    if (path.size() < 2 || path.front() != '/')
        return bad(text, "ssh:// needs the absolute path of the QMP socket on the host");
    if (path.size() > k_max_socket_path)
        return bad(text, fmt::format("the socket path is longer than {} bytes", k_max_socket_path));
    for (char c : path) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f || c == ' ')
            return bad(text, "the socket path holds whitespace or control characters");
        // ssh -L LOCAL:REMOTE splits on ':'; '?' and '#' would be URL syntax.
        if (c == ':' || c == '?' || c == '#')
            return bad(text, fmt::format("the socket path may not hold '{}'", c));
    }
    return {};
}

// "[USER@]HOST[:PORT]/PATH" (after "ssh://").
Result<Address> parse_ssh(std::string_view text, std::string_view rest) {
    std::size_t slash = rest.find('/');
    if (slash == std::string_view::npos)
        return bad(text, "ssh:// needs the absolute path of the QMP socket on the host");
    std::string_view authority = rest.substr(0, slash), path = rest.substr(slash);
    Address a;
    a.kind = Address::Kind::ssh;
    if (std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
        std::string_view user = authority.substr(0, at);
        if (!is_plain_name(user))
            return bad(text, "the user must be letters, digits and .-_ (not starting with '-')");
        a.user = std::string(user);
        authority = authority.substr(at + 1);
    }
    // A port follows the last ':' unless the host is a bare "[v6]".
    std::string_view host = authority;
    if (std::size_t colon = authority.rfind(':');
        colon != std::string_view::npos && !authority.ends_with(']')) {
        host = authority.substr(0, colon);
        auto port = parse_port(authority.substr(colon + 1));
        if (!port) return bad(text, "the port must be 1-65535");
        a.port = *port;
    }
    if (host.empty()) return bad(text, "ssh:// needs a host");
    auto parsed = parse_host(host);
    if (!parsed)
        return bad(text,
                   "the host must be letters, digits and .-_ or [IPv6] (not starting with '-')");
    a.host = std::move(*parsed);
    if (auto ok = check_remote_path(text, path); !ok) return fail(ok.error());
    a.path = std::string(path);
    return a;
}

// "scheme://" at the start, RFC 3986 scheme characters.
bool looks_like_url(std::string_view text) {
    std::size_t sep = text.find("://");
    if (sep == std::string_view::npos || sep == 0) return false;
    return std::all_of(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(sep), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '+' || c == '-' || c == '.';
    });
}

std::string host_text(const std::string& host) {
    return host.find(':') == std::string::npos ? host : "[" + host + "]";
}

}  // namespace

Result<Address> parse_address(std::string_view text) {
    if (text.empty()) return bad(text, "empty");
    if (text.starts_with("tcp:")) return parse_tcp(text, text.substr(4));
    if (text.starts_with("ssh://")) return parse_ssh(text, text.substr(6));
    if (text.starts_with("ssh:"))
        return bad(text, "an ssh address is ssh://[USER@]HOST[:PORT]/PATH");
    if (looks_like_url(text))
        return bad(text, fmt::format("unsupported scheme '{}'", text.substr(0, text.find("://"))));
    Address a;
    a.kind = Address::Kind::unix_socket;
    a.path = std::string(text);
    return a;
}

std::string to_string(const Address& a) {
    switch (a.kind) {
        case Address::Kind::unix_socket:
            return a.path;
        case Address::Kind::tcp:
            return fmt::format("tcp:{}:{}", host_text(a.host), a.port);
        case Address::Kind::ssh:
            return fmt::format("ssh://{}{}{}{}", a.user.empty() ? "" : a.user + "@",
                               host_text(a.host), a.port ? fmt::format(":{}", a.port) : "", a.path);
    }
    return a.path;
}

}  // namespace blockmig::qmp
