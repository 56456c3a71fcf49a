// `blockmig qmp`: a one-shot QMP shell for debugging a live guest.
//   blockmig qmp SOCKET COMMAND [ARGS-JSON]   prints the command's return value
//   blockmig qmp SOCKET --events [--timeout SEC]   prints events as JSON lines
#include <fmt/core.h>

#include <chrono>
#include <memory>
#include <optional>

#include "commands.hpp"
#include "qmp/client.hpp"

namespace blockmig::cli {

namespace {

struct QmpArgs {
    std::string socket;
    std::string command;
    std::string arguments;
    bool events = false;
    double timeout_s = 0;  // 0 = forever (events) / no limit (command)
};

Result<std::unique_ptr<qmp::Client>> open(const QmpArgs& args, const GlobalOptions& globals) {
    qmp::ConnectOptions options;
    if (globals.verbose) {
        options.log = [](qmp::LogLevel, std::string_view text) {
            fmt::print(stderr, "{}\n", text);
        };
    }
    return connect_qmp(args.socket, std::move(options));
}

std::optional<std::chrono::milliseconds> timeout_of(const QmpArgs& args) {
    if (args.timeout_s <= 0) return std::nullopt;
    return std::chrono::milliseconds(static_cast<std::int64_t>(args.timeout_s * 1000));
}

Result<void> run_command(const QmpArgs& args, const GlobalOptions& globals) {
    nlohmann::json arguments = nlohmann::json::object();
    if (!args.arguments.empty()) {
        arguments = nlohmann::json::parse(args.arguments, nullptr, false);
        if (arguments.is_discarded() || !arguments.is_object()) {
            return fail(ErrorCode::invalid_argument,
                        fmt::format("qmp: arguments for {} must be a JSON object, got: {}",
                                    args.command, args.arguments));
        }
    }
    auto client = open(args, globals);
    if (!client) return fail(client.error());
    auto reply = (*client)->execute(args.command, arguments, timeout_of(args));
    if (!reply) {
        Error e = reply.error();
        // QMP errors print as "<class>: <desc>", as qmp-shell shows them.
        if (e.code == ErrorCode::qmp_command_failed) {
            std::string desc =
                e.message.substr(std::min(e.message.size(), args.command.size() + 2));
            e.message = fmt::format("{}: {}", e.qmp_class, desc);
        }
        return fail(std::move(e));
    }
    fmt::print("{}\n", globals.output == OutputFormat::json ? reply->dump() : reply->dump(2));
    return {};
}

Result<void> run_events(const QmpArgs& args, const GlobalOptions& globals) {
    auto client = open(args, globals);
    if (!client) return fail(client.error());
    auto events = (*client)->subscribe();
    auto timeout = timeout_of(args);
    auto deadline =
        std::chrono::steady_clock::now() + timeout.value_or(std::chrono::milliseconds(0));
    while (true) {
        std::optional<std::chrono::milliseconds> left;
        if (timeout) {
            left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left->count() <= 0) return {};
        }
        auto event = events.next(left);
        if (!event) {
            if (event.error().code == ErrorCode::timeout) return {};
            return fail(event.error());
        }
        fmt::print("{}\n", event->raw.dump());
        std::fflush(stdout);
    }
}

}  // namespace

void add_qmp_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<QmpArgs>();
    CLI::App* qmp = app.add_subcommand("qmp", "send one QMP command to QEMU, or print its events");
    qmp->add_option(
           "socket", args->socket,
           "QMP socket: a Unix socket path, tcp:HOST:PORT or ssh://[USER@]HOST[:PORT]/PATH")
        ->required();
    qmp->add_option("command", args->command, "QMP command, e.g. query-block");
    qmp->add_option("arguments", args->arguments, "command arguments as a JSON object");
    qmp->add_flag("--events", args->events,
                  "print events as JSON lines instead of running a command");
    qmp->add_option("--timeout", args->timeout_s,
                    "seconds to wait (events: stop after; command: reply timeout)")
        ->check(CLI::NonNegativeNumber);
    qmp->callback([args, &dispatch] {
        dispatch.action = [args, &dispatch]() -> Result<void> {
            if (args->events) {
                if (!args->command.empty()) {
                    return fail(ErrorCode::invalid_argument, "qmp: --events takes no COMMAND");
                }
                return run_events(*args, dispatch.globals);
            }
            if (args->command.empty()) {
                return fail(ErrorCode::invalid_argument, "qmp: COMMAND missing (or use --events)");
            }
            return run_command(*args, dispatch.globals);
        };
    });
}

}  // namespace blockmig::cli
