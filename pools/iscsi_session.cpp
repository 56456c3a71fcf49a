// libiscsi's async API under our own poll loop, so that every step has a
// deadline (see iscsi_session.hpp for why the sync API cannot be used).
#include "iscsi_session.hpp"

#include <fmt/core.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

namespace blockmig::pools::detail {

namespace {

using std::chrono::milliseconds;

// Logging out of a healthy session is a courtesy; never wait long for it.
constexpr milliseconds k_logout_limit{2000};
// libiscsi runs its own timers (login phases, NOP) from iscsi_service().
constexpr milliseconds k_service_tick{100};

struct Completion {
    bool done = false;
    int status = SCSI_STATUS_ERROR;
};

void on_done(iscsi_context*, int status, void*, void* data) {
    auto* c = static_cast<Completion*>(data);
    c->done = true;
    c->status = status;
}

// Statuses libiscsi invents itself (not a SCSI status byte from the
// target): the session, not the command, failed.
bool session_failure(int status) {
    return status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR ||
           status == SCSI_STATUS_TIMEOUT;
}

}  // namespace

IscsiSession::IscsiSession(IscsiLogin login, std::string where, milliseconds timeout)
    : m_login(std::move(login)), m_where(std::move(where)), m_timeout(timeout) {}

IscsiSession::~IscsiSession() {
    if (m_ctx && m_logged_in) {
        Completion logout;
        if (iscsi_logout_async(m_ctx, on_done, &logout) == 0)
            (void)drive(logout.done, Clock::now() + std::min(m_timeout, k_logout_limit), "logout");
        drop();  // while `logout` lives: destroying cancels (calls back) what is pending
    }
    drop();
}

void IscsiSession::drop() {
    if (m_ctx) iscsi_destroy_context(m_ctx);
    m_ctx = nullptr;
    m_logged_in = false;
}

std::string IscsiSession::last_error() const {
    const char* text = m_ctx ? iscsi_get_error(m_ctx) : nullptr;
    std::string error = text && *text ? text : "";
    // With automatic reconnects off, libiscsi words a refused or dropped
    // connection as a failed reconnect: say what happened.
    if (error.empty() || error.find("reconnect") != std::string::npos)
        return "connection refused or closed by the target";
    return error;
}

Result<void> IscsiSession::drive(const bool& done, Clock::time_point deadline,
                                 std::string_view what) {
    while (!done) {
        const auto now = Clock::now();
        if (now >= deadline) {
            return fail(ErrorCode::timeout,
                        fmt::format("{}: {}: no answer from the target within {} ms", m_where, what,
                                    m_timeout.count()));
        }
        const auto left = std::chrono::ceil<milliseconds>(deadline - now);
        const int wait = static_cast<int>(std::min(left, k_service_tick).count());
        pollfd p{iscsi_get_fd(m_ctx), static_cast<short>(iscsi_which_events(m_ctx)), 0};
        int n = 0;
        if (p.fd >= 0 && p.events != 0) {
            n = ::poll(&p, 1, wait);
            if (n < 0 && errno != EINTR) {
                return fail(ErrorCode::io_error,
                            fmt::format("{}: {}: poll: {}", m_where, what, std::strerror(errno)));
            }
        } else {
            // No events wanted right now (libiscsi asks callers to wait).
            std::this_thread::sleep_for(milliseconds(wait));
        }
        if (iscsi_service(m_ctx, n > 0 ? p.revents : 0) < 0) {
            return fail(ErrorCode::io_error,
                        fmt::format("{}: {}: {}", m_where, what, last_error()));
        }
    }
    return {};
}

Result<void> IscsiSession::connect() { return connect_until(Clock::now() + m_timeout); }

Result<void> IscsiSession::connect_until(Clock::time_point deadline) {
    drop();
    m_ctx = iscsi_create_context(m_login.initiator.c_str());
    if (!m_ctx) return fail(ErrorCode::io_error, m_where + ": cannot create libiscsi context");
    iscsi_set_targetname(m_ctx, m_login.iqn.c_str());
    iscsi_set_session_type(m_ctx, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(m_ctx, ISCSI_HEADER_DIGEST_NONE_CRC32C);
    // A lost connection must fail the command, not be retried forever
    // behind our back: the next command logs in again (bounded).
    iscsi_set_noautoreconnect(m_ctx, 1);
    if (!m_login.user.empty() && iscsi_set_initiator_username_pwd(m_ctx, m_login.user.c_str(),
                                                                  m_login.password.c_str()) != 0) {
        Error e{
            ErrorCode::invalid_argument, fmt::format("{}: CHAP: {}", m_where, last_error()), {}};
        drop();
        return fail(e);
    }
    auto step = [&](std::string_view what, auto start) -> Result<void> {
        Completion c;
        Result<void> r;
        if (start(&c) != 0) {
            r = fail(ErrorCode::io_error, fmt::format("{}: {}", what, last_error()));
        } else if (r = drive(c.done, deadline, what); !r) {
            r = fail(r.error().code,
                     fmt::format("{}: {}", what,
                                 r.error().code == ErrorCode::timeout ? "no answer in time"
                                                                      : last_error()));
        } else if (c.status != SCSI_STATUS_GOOD) {
            r = fail(ErrorCode::io_error, fmt::format("{}: {}", what, last_error()));
        }
        if (!r) drop();  // while `c` lives: destroying the context calls back
        return r;
    };
    if (auto r = step(fmt::format("iscsi: connect {}", m_login.portal),
                      [&](Completion* c) {
                          return iscsi_connect_async(m_ctx, m_login.portal.c_str(), on_done, c);
                      });
        !r)
        return r;
    if (auto r = step(fmt::format("iscsi: login to {} at {}", m_login.iqn, m_login.portal),
                      [&](Completion* c) { return iscsi_login_async(m_ctx, on_done, c); });
        !r)
        return r;
    m_logged_in = true;
    return {};
}

Result<Task> IscsiSession::submit(std::string_view what, const StartTask& start) {
    // One deadline for the whole call, a fresh login included.
    const auto deadline = Clock::now() + m_timeout;
    // A session that was idle may have died unnoticed (the target restarted):
    // then the command fails at once and is worth one retry on a new login.
    for (int attempt = 0;; ++attempt) {
        const bool fresh = !m_logged_in;
        if (fresh) {
            if (auto r = connect_until(deadline); !r) return fail(r.error());
        }
        Completion c;
        Task task(start(m_ctx, on_done, &c));
        if (!task) {
            Error e{
                ErrorCode::io_error, fmt::format("{}: {}: {}", m_where, what, last_error()), {}};
            drop();
            return fail(e);
        }
        auto r = drive(c.done, deadline, what);
        if (r && !session_failure(c.status)) return task;
        Error e = r ? Error{ErrorCode::io_error,
                            fmt::format("{}: {}: {}", m_where, what, last_error()),
                            {}}
                    : r.error();
        // Stop waiting: cancel so the callback cannot fire later, and drop
        // the session (the target may still hold the command).
        if (!c.done) iscsi_scsi_cancel_task(m_ctx, task.get());
        drop();
        if (e.code == ErrorCode::timeout || fresh || attempt > 0) return fail(e);
    }
}

Result<Task> IscsiSession::run(std::string_view what, const StartTask& start) {
    auto task = submit(what, start);
    // A new session reports one UNIT ATTENTION (power on / reset) per LUN
    // on its first command there: consumed, the command runs again.
    for (int attempt = 0; task && attempt < 4 && (*task)->status == SCSI_STATUS_CHECK_CONDITION &&
                          (*task)->sense.key == SCSI_SENSE_UNIT_ATTENTION;
         ++attempt) {
        task = submit(what, start);
    }
    if (!task) return task;
    if ((*task)->status != SCSI_STATUS_GOOD) {
        const auto& sense = (*task)->sense;
        ErrorCode code =
            sense.key == SCSI_SENSE_ILLEGAL_REQUEST ? ErrorCode::unsupported : ErrorCode::io_error;
        return fail(code,
                    fmt::format("{}: {}: {} ({})", m_where, what, scsi_sense_key_str(sense.key),
                                scsi_sense_ascq_str(sense.ascq)));
    }
    return task;
}

}  // namespace blockmig::pools::detail
