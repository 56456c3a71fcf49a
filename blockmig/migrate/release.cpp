#include "release.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>

#include "jobs/undo.hpp"
#include "launch.hpp"
#include "qmp/clock.hpp"
#include "qmp/migration.hpp"
#include "tls.hpp"

namespace blockmig::migrate {

namespace {

std::vector<std::string> source_disks(const jobs::Job& job) {
    std::vector<std::string> out;
    for (const auto& r : job.records)
        if (!r.disk.empty() && r.disk != k_destination && r.disk != k_launched &&
            r.disk != k_tls_source && r.disk != k_tls_destination &&
            std::find(out.begin(), out.end(), r.disk) == out.end())
            out.push_back(r.disk);
    return out;
}

// Each disk's undo steps, newest first within a disk.
Result<std::vector<jobs::UndoStep>> plan_of(const jobs::Job& job,
                                            const std::vector<std::string>& disks) {
    std::vector<jobs::UndoStep> steps;
    for (const auto& d : disks) {
        auto plan = jobs::undo_plan(job, d);
        if (!plan) return fail(plan.error());
        steps.insert(steps.end(), plan->begin(), plan->end());
    }
    return steps;
}

// That QEMU is gone: every job, node and export it held ended with it.
Result<void> mark_gone(jobs::Journal& journal, const std::vector<jobs::UndoStep>& steps,
                       const std::string& why, Released& out) {
    for (const auto& s : steps) {
        out.done.push_back(fmt::format("{} {}: {}", jobs::to_string(s.kind), s.name, why));
        if (s.seq == 0) continue;
        if (auto w = journal.outcome(s.seq, jobs::RecordState::undone, why); !w) return w;
    }
    return {};
}

// `before`: run on a reachable QEMU before its steps (may be empty).
using BeforeUndo = std::function<void(qmp::Client&, const std::vector<jobs::UndoStep>&)>;

// What a fresh connection to a side's monitor found; neither member set:
// it did not answer in time.
struct Reached {
    std::unique_ptr<qmp::Client> client;  // it answered
    std::optional<std::string> gone;      // proof that no QEMU serves it any more
};

// Asks until the monitor answers, a refused connection or a missing socket
// proves its QEMU gone, or `timeout` ran out. A QEMU that is exiting (a
// destination whose incoming migration failed does so by default) may still
// accept a connection and close it, or never greet: that proves nothing
// yet, and a moment later the kernel refuses the connection.
Reached reach(const std::string& address, qmp::Milliseconds timeout) {
    using namespace std::chrono_literals;
    Clock& clock = system_clock();
    // Bounded even when `timeout` is 0 (one try): a QEMU that neither
    // answers nor refuses is what the caller reports as left behind.
    const auto deadline = clock.now() + std::max<qmp::Milliseconds>(timeout, 0ms);
    Reached out;
    for (;;) {
        qmp::ConnectOptions options;
        options.enable_oob = true;  // the undo may need a yank (jobs/undo.cpp)
        options.timeout = timeout;
        options.default_timeout = timeout;
        auto c = qmp::Client::connect(address, options);
        if (c) {
            out.client = std::move(*c);
            return out;
        }
        if (proves_gone(c.error())) {
            out.gone = c.error().message;
            return out;
        }
        if (clock.now() + 100ms >= deadline) return out;
        clock.sleep_for(100ms);
    }
}

// Rounds of undo on one side: the caller's connection first; one lost on
// the way is replaced through reach(), at most twice.
constexpr int k_rounds = 3;

Result<Released> release(jobs::Journal& journal, const std::vector<std::string>& disks,
                         qmp::Client* client, const std::string& address, std::string_view side,
                         qmp::Milliseconds timeout, const BeforeUndo& before = {}) {
    Released out;
    std::unique_ptr<qmp::Client> fresh;
    for (int round = 0; round < k_rounds; ++round) {
        auto plan = plan_of(journal.job(), disks);
        if (!plan) {
            out.left_behind.push_back(plan.error().message);
            return out;
        }
        if (plan->empty()) return out;
        if (!client || client->state() != qmp::State::running) {
            auto reached = reach(address, timeout);
            if (reached.gone) {
                const auto why = fmt::format("the {} QEMU is gone ({})", side, *reached.gone);
                if (auto w = mark_gone(journal, *plan, why, out); !w) return fail(w.error());
                return out;
            }
            fresh = std::move(reached.client);
            client = fresh.get();  // nullptr: every QMP step is left behind, named
        }
        if (client && before) before(*client, *plan);
        jobs::UndoEnv env{.client = client, .step_timeout = timeout};
        auto report = jobs::run_undo(journal, *plan, env);
        if (!report) return fail(report.error());
        out.done.insert(out.done.end(), report->done.begin(), report->done.end());
        // Lost on the way: that QEMU may be exiting (its objects go with
        // it) or still there (asked again). A QEMU that answered with an
        // error is still there: what it refused stays left behind.
        const bool lost = client && client->state() != qmp::State::running;
        if (report->left_behind.empty() || !lost || round == k_rounds - 1) {
            out.left_behind = report->left_behind;
            return out;
        }
        client = nullptr;
    }
    return out;
}

// A migration parameter naming a credentials object about to go would
// make that QEMU's next migration fail: it is cleared first (on an undo the
// source's saved settings were restored already, and do not name it).
void clear_tls_parameter(qmp::Client& client, const std::vector<jobs::UndoStep>& steps,
                         qmp::Milliseconds timeout) {
    auto params = qmp::query_migrate_parameters(client, timeout);
    if (!params) return;
    const std::string current = params->value("tls-creds", "");
    for (const auto& s : steps)
        if (!current.empty() && s.name == current)
            (void)qmp::migrate_set_parameters(client, {{"tls-creds", ""}}, timeout);
}

}  // namespace

bool proves_gone(const Error& e) {
    return e.code == ErrorCode::not_found ||
           e.message.find(std::strerror(ECONNREFUSED)) != std::string::npos;
}

Result<Released> release_source_disks(jobs::Journal& journal, qmp::Client* src,
                                      qmp::Milliseconds timeout) {
    const auto disks = source_disks(journal.job());
    if (disks.empty()) return Released{};
    return release(journal, disks, src, journal.job().guest.qmp, "source", timeout);
}

Result<Released> release_destination(jobs::Journal& journal, qmp::Client* dst,
                                     qmp::Milliseconds timeout) {
    if (!journal.job().migration) return Released{};
    return release(journal, {k_destination}, dst, journal.job().migration->destination.qmp,
                   "destination", timeout);
}

Result<Released> release_launched(jobs::Journal& journal, qmp::Client* dst,
                                  qmp::Milliseconds timeout) {
    auto plan = jobs::undo_plan(journal.job(), k_launched);
    if (!plan) return fail(plan.error());
    if (plan->empty()) return Released{};
    // A QEMU on another host is quit through this connection (its monitor
    // serves one client at a time).
    jobs::UndoEnv env{.client = dst, .step_timeout = timeout};
    auto report = jobs::run_undo(journal, *plan, env);
    if (!report) return fail(report.error());
    return Released{report->done, report->left_behind};
}

Result<Released> release_tls(jobs::Journal& journal, qmp::Client* src, qmp::Client* dst,
                             qmp::Milliseconds timeout) {
    const auto clear = [timeout](qmp::Client& c, const std::vector<jobs::UndoStep>& steps) {
        clear_tls_parameter(c, steps, timeout);
    };
    Released out;
    for (bool destination : {true, false}) {
        const char* key = destination ? k_tls_destination : k_tls_source;
        if (!journal.job().migration || journal.job().records_of(key).empty()) continue;
        auto r =
            destination
                ? release(journal, {key}, dst, journal.job().migration->destination.qmp,
                          "destination", timeout, clear)
                : release(journal, {key}, src, journal.job().guest.qmp, "source", timeout, clear);
        if (!r) return fail(r.error());
        out.done.insert(out.done.end(), r->done.begin(), r->done.end());
        out.left_behind.insert(out.left_behind.end(), r->left_behind.begin(), r->left_behind.end());
    }
    return out;
}

}  // namespace blockmig::migrate
