// Unix and TCP socket transports (the only place qmp/ touches sockets).
#include <fcntl.h>
#include <fmt/core.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "qmp/message.hpp"
#include "qmp/transport.hpp"

namespace blockmig::qmp {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

class SocketTransport final : public Transport {
  public:
    SocketTransport(int fd, std::string peer, bool unix_socket)
        : m_fd(fd), m_peer(std::move(peer)), m_unix(unix_socket) {
        if (m_unix) m_peer_pid = unix_peer_pid(fd);
    }
    ~SocketTransport() override {
        close();
        ::close(m_fd);
    }
    SocketTransport(const SocketTransport&) = delete;
    SocketTransport& operator=(const SocketTransport&) = delete;

    Result<void> send(std::string_view line, std::span<const int> fds) override {
        if (m_closed)
            return fail(ErrorCode::interrupted, fmt::format("qmp: {}: connection closed", m_peer));
        if (!fds.empty() && !m_unix) {
            return fail(ErrorCode::unsupported,
                        fmt::format("qmp: {}: fd passing needs a Unix socket", m_peer));
        }
        std::string data(line);
        data.push_back('\n');
        std::size_t done = 0;
        bool fds_pending = !fds.empty();
        while (done < data.size()) {
            iovec iov{data.data() + done, data.size() - done};
            msghdr msg{};
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            std::vector<char> control;
            if (fds_pending) {
                control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
                msg.msg_control = control.data();
                msg.msg_controllen = control.size();
                cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
                cmsg->cmsg_level = SOL_SOCKET;
                cmsg->cmsg_type = SCM_RIGHTS;
                cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
                std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
            }
            ssize_t n = ::sendmsg(m_fd, &msg, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                int err = errno;
                if (err == EPIPE || err == ECONNRESET || m_closed) {
                    return fail(ErrorCode::interrupted,
                                fmt::format("qmp: {}: connection lost while sending", m_peer));
                }
                return fail(ErrorCode::io_error,
                            fmt::format("qmp: {}: send: {}", m_peer, errno_text(err)));
            }
            fds_pending = false;  // the kernel attached them to the first byte sent
            done += static_cast<std::size_t>(n);
        }
        return {};
    }

    Result<std::string> receive_line() override {
        while (true) {
            if (auto line = m_lines.next_line()) return std::move(*line);
            if (m_closed)
                return fail(ErrorCode::interrupted,
                            fmt::format("qmp: {}: connection closed", m_peer));
            char buf[64 * 1024];
            ssize_t n = ::recv(m_fd, buf, sizeof buf, 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                int err = errno;
                if (err == ECONNRESET || m_closed) {
                    return fail(ErrorCode::interrupted,
                                fmt::format("qmp: {}: connection reset", m_peer));
                }
                return fail(ErrorCode::io_error,
                            fmt::format("qmp: {}: receive: {}", m_peer, errno_text(err)));
            }
            if (n == 0) {
                return fail(ErrorCode::interrupted,
                            fmt::format("qmp: {}: connection closed by QEMU", m_peer));
            }
            if (auto ok = m_lines.append(std::string_view(buf, static_cast<std::size_t>(n))); !ok) {
                return fail(ok.error().with_context(m_peer));
            }
        }
    }

    void close() override {
        // shutdown() (not close()) wakes a reader blocked in recv() without
        // freeing the fd number while that thread may still use it.
        if (!m_closed.exchange(true)) ::shutdown(m_fd, SHUT_RDWR);
    }

    bool supports_fd_passing() const override { return m_unix; }
    std::string peer() const override { return m_peer; }
    std::optional<int> peer_pid() const override { return m_peer_pid; }

  private:
    // Read once at connect time: SO_PEERCRED describes the listener as it was
    // when the connection was made.
    static std::optional<int> unix_peer_pid(int fd) {
        ucred cred{};
        socklen_t len = sizeof cred;
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0)
            return std::nullopt;
        return cred.pid;
    }

    int m_fd;
    std::string m_peer;
    bool m_unix;
    std::optional<int> m_peer_pid;
    std::atomic<bool> m_closed{false};
    LineBuffer m_lines;
};

// Waits for a non-blocking connect() to finish, then makes the socket blocking.
Result<void> finish_connect(int fd, const std::string& peer, std::chrono::milliseconds timeout) {
    pollfd p{fd, POLLOUT, 0};
    int r;
    do {
        r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (r < 0 && errno == EINTR);
    if (r == 0) return fail(ErrorCode::timeout, fmt::format("qmp: connect {}: timed out", peer));
    if (r < 0)
        return fail(ErrorCode::io_error,
                    fmt::format("qmp: connect {}: {}", peer, errno_text(errno)));
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0)
        return fail(ErrorCode::io_error, fmt::format("qmp: connect {}: {}", peer, errno_text(err)));
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return {};
}

Result<void> connect_with_timeout(int fd, const sockaddr* addr, socklen_t len,
                                  const std::string& peer, std::chrono::milliseconds timeout) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (::connect(fd, addr, len) == 0) {
        ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        return {};
    }
    int err = errno;
    if (err != EINPROGRESS && err != EAGAIN) {
        ErrorCode code = err == ENOENT ? ErrorCode::not_found : ErrorCode::io_error;
        return fail(code, fmt::format("qmp: connect {}: {}", peer, errno_text(err)));
    }
    return finish_connect(fd, peer, timeout);
}

}  // namespace

Result<std::unique_ptr<Transport>> make_unix_transport(const std::string& path,
                                                       std::chrono::milliseconds timeout) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("qmp: bad Unix socket path '{}'", path));
    }
    std::memcpy(addr.sun_path, path.data(), path.size());
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail(ErrorCode::io_error, fmt::format("qmp: socket: {}", errno_text(errno)));
    if (auto ok = connect_with_timeout(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr,
                                       path, timeout);
        !ok) {
        ::close(fd);
        return fail(ok.error());
    }
    return std::make_unique<SocketTransport>(fd, path, true);
}

Result<std::unique_ptr<Transport>> make_tcp_transport(const std::string& host, std::uint16_t port,
                                                      std::chrono::milliseconds timeout) {
    std::string peer = fmt::format("tcp:{}:{}", host, port);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string port_text = std::to_string(port);
    if (int r = ::getaddrinfo(host.c_str(), port_text.c_str(), &hints, &res); r != 0) {
        return fail(ErrorCode::not_found,
                    fmt::format("qmp: resolve {}: {}", host, ::gai_strerror(r)));
    }
    Error last{ErrorCode::io_error, fmt::format("qmp: connect {}: no address", peer), {}};
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        if (auto ok = connect_with_timeout(fd, ai->ai_addr, ai->ai_addrlen, peer, timeout); ok) {
            ::freeaddrinfo(res);
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return std::make_unique<SocketTransport>(fd, peer, false);
        } else {
            last = ok.error();
        }
        ::close(fd);
    }
    ::freeaddrinfo(res);
    return fail(last);
}

Result<std::unique_ptr<Transport>> make_transport(std::string_view address,
                                                  std::chrono::milliseconds timeout) {
    auto parsed = parse_address(address);
    if (!parsed) return fail(parsed.error());
    switch (parsed->kind) {
        case Address::Kind::tcp:
            return make_tcp_transport(parsed->host, parsed->port, timeout);
        case Address::Kind::ssh:
            return make_ssh_transport(*parsed, timeout);
        case Address::Kind::unix_socket:
            break;
    }
    return make_unix_transport(parsed->path, timeout);
}

}  // namespace blockmig::qmp
