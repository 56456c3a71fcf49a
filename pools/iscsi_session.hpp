// One iSCSI session in which every step has a deadline (private to pools/).
//
// libiscsi's *_sync calls cannot be bounded: when the target's connection
// drops, its automatic reconnect holds the command and retries forever
// (measured: a rollback's REPORT LUNS sat in iscsi_reportluns_sync() for
// minutes after tgtd was SIGKILLed). So this class drives libiscsi's async
// API with its own poll loop: each command, connect and login must finish
// before its deadline or fails with `timeout`; automatic reconnects are
// off, a broken session fails the command at once, and the next command
// logs in afresh (also bounded), so a target that comes back is used again.
#pragma once

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "qmp/error.hpp"

namespace blockmig::pools::detail {

struct IscsiLogin {
    std::string portal;  // host:port
    std::string iqn;
    std::string user, password;  // CHAP; empty user = none
    std::string initiator;
};

// Owns a completed SCSI task.
struct TaskDeleter {
    void operator()(scsi_task* task) const { scsi_free_scsi_task(task); }
};
using Task = std::unique_ptr<scsi_task, TaskDeleter>;

// Queues one command: an iscsi_*_task() call given the context, callback and
// callback data; returns the task, or nullptr if it could not be queued.
using StartTask = std::function<scsi_task*(iscsi_context*, iscsi_command_cb, void*)>;

class IscsiSession {
  public:
    // `where` prefixes messages ("iscsi: iscsi://host:port/iqn").
    IscsiSession(IscsiLogin login, std::string where, std::chrono::milliseconds timeout);
    // Logs out (bounded) if the session is healthy.
    ~IscsiSession();
    IscsiSession(const IscsiSession&) = delete;
    IscsiSession& operator=(const IscsiSession&) = delete;

    // Connects and logs in. Errors: io_error (refused, login rejected),
    // invalid_argument (CHAP credentials libiscsi refuses), timeout.
    // REQUIRES: `mutex` held (every member below too).
    Result<void> connect();
    // Runs one command (logging in again first if the session broke) and
    // returns its task whatever the SCSI status. Errors: timeout (no answer
    // before the deadline), io_error (session lost, command not queued).
    Result<Task> submit(std::string_view what, const StartTask& start);
    // submit() that also requires SCSI status GOOD: CHECK CONDITION becomes
    // unsupported (ILLEGAL REQUEST) or io_error, naming the sense.
    Result<Task> run(std::string_view what, const StartTask& start);

    const std::string& where() const { return m_where; }
    std::chrono::milliseconds timeout() const { return m_timeout; }

    // libiscsi contexts are not thread-safe: hold this around every call.
    std::mutex mutex;

  private:
    using Clock = std::chrono::steady_clock;
    // Services the context until `done` or the deadline; io_error if the
    // connection fails, timeout at the deadline (the caller cancels).
    Result<void> drive(const bool& done, Clock::time_point deadline, std::string_view what);
    Result<void> connect_until(Clock::time_point deadline);
    void drop();  // destroys the context; callbacks fire (cancelled) now
    std::string last_error() const;

    IscsiLogin m_login;
    std::string m_where;
    std::chrono::milliseconds m_timeout;
    iscsi_context* m_ctx = nullptr;
    bool m_logged_in = false;
};

}  // namespace blockmig::pools::detail
