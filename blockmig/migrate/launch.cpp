#include "launch.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "jobs/effects.hpp"
#include "jobs/luns.hpp"
#include "jobs/names.hpp"
#include "pools/pools.hpp"
#include "progress/human_size.hpp"
#include "qmp/address.hpp"

namespace blockmig::migrate {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr std::string_view k_vol = "{vol:";
constexpr std::string_view k_secret_object = "{secret-object}";

std::size_t secret_objects(const std::vector<std::string>& argv) {
    std::size_t n = 0;
    for (const auto& arg : argv)
        for (auto at = arg.find(k_secret_object); at != std::string::npos;
             at = arg.find(k_secret_object, at + 1))
            ++n;
    return n;
}

// A -drive file= value: QEMU's option parser reads ",," as one ",".
std::string drive_json(const nlohmann::json& j) {
    std::string out = "json:";
    for (char c : j.dump()) out += c == ',' ? std::string(",,") : std::string(1, c);
    return out;
}

// CHAP: QEMU gets the password only through the secret `{secret-object}`
// makes (read from its stdin), so the command must have it exactly once;
// without CHAP there is no secret to give.
Result<void> check_secret_object(const LaunchPlan& plan, const std::vector<std::string>& argv) {
    const auto n = secret_objects(argv);
    if (plan.chap && n == 0)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("--dst-pool {} has CHAP credentials: give the destination QEMU "
                                "-object {} (the secret it reads the password from, on its "
                                "stdin)",
                                plan.pool->url(), k_secret_object));
    if (!plan.chap && n > 0)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("--dst-launch: {}: --dst-pool {} has no CHAP credentials, so "
                                "there is no secret to give",
                                k_secret_object, plan.pool->url()));
    return {};
}

// The LUN's iscsi node as the pool describes it for QEMU, and the password
// its secret holds (the same for every LUN of the pool).
Result<std::string> chap_location(pools::Pool& pool, const pools::VolumeInfo& volume,
                                  std::uint64_t disk_size, std::string& password) {
    auto chain = pool.describe_for_qemu(volume.name, {});
    if (!chain) return fail(chain.error());
    if (chain->secrets.size() != 1 || !chain->secrets[0].contains("data") ||
        !chain->secrets[0]["data"].is_string())
        return fail(ErrorCode::invalid_argument,
                    fmt::format("{}: the pool gave no CHAP secret", pool.url_of(volume.name)));
    password = chain->secrets[0]["data"].get<std::string>();
    return chap_volume_location(chain->protocol, disk_size);
}

// Calls `each(placeholder)` for every "{...}" in `arg`.
template <typename F>
void placeholders(const std::string& arg, F&& each) {
    for (std::size_t at = arg.find('{'); at != std::string::npos; at = arg.find('{', at + 1)) {
        const auto end = arg.find('}', at);
        if (end == std::string::npos) return;
        each(std::string_view(arg).substr(at, end - at + 1));
    }
}

std::string log_tail(const fs::path& log) {
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.size() > 400) text = "..." + text.substr(text.size() - 400);
    std::replace(text.begin(), text.end(), '\n', ' ');
    return text;
}

// The read end of a pipe that already holds `data` and its end of file:
// written before the fork, so the write can neither block (at most
// PIPE_BUF bytes, checked) nor raise SIGPIPE (no reader gone yet), and the
// child reads it all whenever it starts (QEMU: at its -object secret).
Result<int> stdin_holding(const std::string& data) {
    if (data.size() > PIPE_BUF)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("the CHAP password is longer than {} bytes", PIPE_BUF));
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return fail(ErrorCode::io_error, fmt::format("pipe: {}", std::strerror(errno)));
    const bool written = ::write(p[1], data.data(), data.size()) == ssize_t(data.size());
    ::close(p[1]);
    if (!written) {
        ::close(p[0]);
        return fail(ErrorCode::io_error, "cannot write the secret into the command's stdin");
    }
    return p[0];
}

// fork + exec without a shell, in its own session, every fd but stdio
// closed; stdin /dev/null, or `input` (the secret) then end of file. The
// child reports a failed exec through a close-on-exec pipe.
Result<int> spawn(const std::vector<std::string>& argv, const fs::path& log,
                  const std::optional<std::string>& input) {
    int infd = -1;
    if (input) {
        auto in = stdin_holding(*input);
        if (!in) return fail(in.error());
        infd = *in;
    }
    int logfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0) {
        if (infd >= 0) ::close(infd);
        return fail(ErrorCode::io_error,
                    fmt::format("open {}: {}", log.string(), std::strerror(errno)));
    }
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        ::close(logfd);
        if (infd >= 0) ::close(infd);
        return fail(ErrorCode::io_error, fmt::format("pipe: {}", std::strerror(errno)));
    }
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
        setsid();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        dup2(infd >= 0 ? infd : ::open("/dev/null", O_RDONLY), 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        // Nothing of blockmig's (QMP sockets, the journal's lock) leaks into
        // the QEMU that outlives it.
        for (int fd = 3; fd < 4096; ++fd)
            if (fd != report[1]) ::close(fd);
        execvp(cargv[0], cargv.data());
        int err = errno;
        (void)!::write(report[1], &err, sizeof err);
        _exit(127);
    }
    ::close(report[1]);
    ::close(logfd);
    if (infd >= 0) ::close(infd);
    if (pid < 0) {
        ::close(report[0]);
        return fail(ErrorCode::io_error, fmt::format("fork: {}", std::strerror(errno)));
    }
    int err = 0;
    ssize_t n;
    do n = ::read(report[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    ::close(report[0]);
    if (n == sizeof err) {
        waitpid(pid, nullptr, 0);
        return fail(ErrorCode::not_found,
                    fmt::format("cannot run {}: {}", argv.front(), std::strerror(err)));
    }
    return pid;
}

std::string exit_text(int status) {
    return WIFEXITED(status) ? fmt::format("status {}", WEXITSTATUS(status))
                             : fmt::format("signal {}", WTERMSIG(status));
}

Result<std::unique_ptr<qmp::Client>> connect_launched(const std::string& address,
                                                      qmp::Milliseconds qmp_timeout) {
    qmp::ConnectOptions options;
    options.enable_oob = true;  // the undo may need a yank (jobs/undo.cpp)
    options.timeout = std::min<qmp::Milliseconds>(qmp_timeout, 10s);
    options.default_timeout = qmp_timeout;
    return qmp::Client::connect(address, options);
}

// Until the QMP socket answers, CMD fails, or the deadline. A remote CMD
// (ssh) that ends with status 0 left a detached QEMU (-daemonize): its
// socket is still awaited. Over ssh every try is a new ssh connection, and
// "sshd cannot open PATH" (not_found) means not yet.
Result<std::unique_ptr<qmp::Client>> wait_for_qmp(int pid, const LaunchQmp& qmp,
                                                  const fs::path& log,
                                                  const DestinationLaunch& launch,
                                                  qmp::Milliseconds qmp_timeout) {
    const auto deadline = std::chrono::steady_clock::now() + launch.start_timeout;
    Error last{ErrorCode::timeout, "no QMP socket yet", {}};
    bool running = true;
    for (;;) {
        int status = 0;
        if (running && waitpid(pid, &status, WNOHANG) == pid) {
            running = false;
            if (!qmp.remote || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return fail(ErrorCode::io_error,
                            fmt::format("{} exited ({}) before its QMP {} answered: {}",
                                        launch.argv.front(), exit_text(status), qmp.address,
                                        log_tail(log)));
        }
        if (qmp.remote || fs::exists(qmp.path)) {
            auto client = connect_launched(qmp.address, qmp_timeout);
            if (client) return client;
            last = client.error();
        }
        if (std::chrono::steady_clock::now() > deadline)
            return fail(ErrorCode::timeout,
                        fmt::format("the destination QEMU's QMP {} did not answer within {} s "
                                    "({}); its log: {}",
                                    qmp.address, launch.start_timeout.count() / 1000, last.message,
                                    log_tail(log)));
        std::this_thread::sleep_for(qmp.remote ? 250ms : 50ms);
    }
}

// Before anything is made: nothing may answer at a remote PATH yet (a stale
// socket file is fine: QEMU replaces it), so whatever answers after the
// launch is the QEMU blockmig started, and ssh to HOST works.
Result<void> check_remote_free(const LaunchQmp& qmp, qmp::Milliseconds qmp_timeout) {
    auto client = connect_launched(qmp.address, qmp_timeout);
    if (client)
        return fail(ErrorCode::already_exists,
                    fmt::format("--dst-qmp {}: a QEMU already answers there; give the launched "
                                "QEMU a socket path no other QEMU uses",
                                qmp.address));
    if (client.error().code == ErrorCode::not_found) return {};
    return fail(client.error().with_context("--dst-qmp"));
}

bool is_plain_word(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("@%+=:,./_-").find(c) != std::string_view::npos;
}

// The pool type a spec names, without opening it ("" for an unknown name:
// open_pool() reports that).
std::string pool_type(const std::string& spec, const pools::PoolsConfig& config) {
    if (spec.starts_with("nfs://")) return "nfs";
    if (spec.starts_with("iscsi://")) return "iscsi";
    if (auto it = config.pools.find(spec); it != config.pools.end()) return it->second.type;
    const bool path = spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") ||
                      spec.starts_with("~/") || spec == "." || spec == "..";
    return path ? "dir" : "";
}

// The URL of the LUN a source disk is on ("" for a file): QEMU names a
// LUN opened from a URL by that URL, one opened as json:{...} (a raw node
// with a size over it) by the json, which holds the portal, target and LUN.
std::string guest_location(const std::string& filename) {
    if (!filename.starts_with("json:")) return filename;
    auto j = nlohmann::json::parse(filename.substr(5), nullptr, false);
    for (int depth = 0; depth < 4 && j.is_object(); ++depth) {
        if (j.value("driver", "") == "iscsi" && j.contains("lun")) return jobs::lun_url_of_node(j);
        if (j.contains("filename") && j["filename"].is_string())
            return j["filename"].get<std::string>();
        if (!j.contains("file")) break;
        j = j["file"];
    }
    return filename;
}

// A user-given LUN: "lun3" or "3".
std::string lun_name(const std::string& volume) {
    return !volume.empty() && std::all_of(volume.begin(), volume.end(), ::isdigit) ? "lun" + volume
                                                                                   : volume;
}

// --dst-vol DEV=LUN in an iSCSI pool: refused here unless the LUN exists,
// is large enough, is no disk of the source guest and no journal holds it
// (whether it holds data the pool's create() checks, under the claim).
Result<void> check_named_lun(pools::Pool& pool, const LaunchVolume& v,
                             const std::vector<std::string>& guest,
                             const std::set<std::string>& held) {
    const std::string& name = v.names.front();
    auto info = pool.stat(name);
    if (!info)
        return fail(info.error().with_context(fmt::format("--dst-vol {}={}", v.device, name)));
    const std::string url = pool.url_of(name);
    if (info->virtual_size < v.size)
        return fail(ErrorCode::no_space,
                    fmt::format("--dst-vol {}={}: LUN {} is too small: {} for a disk of {}",
                                v.device, name, url, whole_mib_rounded_up(info->virtual_size),
                                whole_mib_rounded_up(v.size)));
    for (const auto& location : guest)
        if (!location.empty() && jobs::lun_tail(location) == jobs::lun_tail(url))
            return fail(ErrorCode::invalid_argument,
                        fmt::format("--dst-vol {}={}: LUN {} is a disk of the source guest",
                                    v.device, name, url));
    if (held.contains(url))
        return fail(ErrorCode::already_exists,
                    fmt::format("--dst-vol {}={}: LUN {} is claimed by another job (see "
                                "`blockmig jobs`)",
                                v.device, name, url));
    return {};
}

// Every disk without a --dst-vol gets its own free LUN: the smallest one
// not already planned for another disk; the others stay candidates in case
// a concurrent run claims it first.
Result<void> choose_luns(LaunchPlan& plan, const std::vector<std::string>& guest,
                         const std::set<std::string>& held) {
    std::set<std::string> planned;
    for (const auto& v : plan.volumes)
        if (!v.names.empty()) planned.insert(v.names.front());
    for (auto& v : plan.volumes) {
        if (!v.names.empty()) continue;
        auto candidates = jobs::lun_candidates(*plan.pool, guest, held, v.size);
        if (!candidates) return fail(candidates.error().with_context("--dst-pool"));
        std::vector<std::string> free;
        for (const auto& c : *candidates)
            if (!planned.contains(c)) free.push_back(c);
        if (free.empty())
            return fail(ErrorCode::no_space,
                        fmt::format("--dst-pool {}: no free LUN of at least {} for disk {} (every "
                                    "other LUN is smaller, the source guest's or another job's{})",
                                    plan.pool->url(), whole_mib_rounded_up(v.size), v.device,
                                    planned.empty() ? "" : ", or planned for another disk"));
        planned.insert(free.front());
        v.names = std::move(free);
    }
    return {};
}

}  // namespace

Result<void> check_launch(const std::vector<std::string>& argv,
                          const std::vector<std::string>& disks) {
    if (argv.empty())
        return fail(ErrorCode::invalid_argument, "--dst-launch: no command given after --");
    bool qmp = false;
    std::string bad;
    for (const auto& arg : argv)
        placeholders(arg, [&](std::string_view p) {
            if (p == "{qmp}") {
                qmp = true;
            } else if (p == k_secret_object) {
                // Checked against the pool by plan_volumes.
            } else if (p.starts_with(k_vol)) {
                const auto dev = p.substr(k_vol.size(), p.size() - k_vol.size() - 1);
                if (bad.empty() && std::find(disks.begin(), disks.end(), dev) == disks.end())
                    bad = fmt::format("--dst-launch: {}: the source has no disk {} (it has: {})", p,
                                      dev, fmt::format("{}", fmt::join(disks, ", ")));
            } else if (bad.empty()) {
                bad = fmt::format(
                    "--dst-launch: unknown placeholder {} (known: {{qmp}}, "
                    "{{vol:DEV}}, {{secret-object}})",
                    p);
            }
        });
    if (bad.empty() && secret_objects(argv) > 1)
        bad = fmt::format("--dst-launch: {} more than once (QEMU reads its stdin once)",
                          k_secret_object);
    if (!bad.empty()) return fail(ErrorCode::invalid_argument, bad);
    if (!qmp)
        return fail(ErrorCode::invalid_argument,
                    "--dst-launch: the command has no {qmp}: blockmig could not reach the QEMU it "
                    "starts (give it e.g. -qmp unix:{qmp},server=on,wait=off)");
    return {};
}

std::vector<std::string> expand_launch(const std::vector<std::string>& argv, const std::string& qmp,
                                       const std::map<std::string, std::string>& volumes) {
    std::vector<std::string> out;
    for (const auto& arg : argv) {
        std::string a = arg;
        auto replace = [&](const std::string& from, const std::string& to) {
            for (auto at = a.find(from); at != std::string::npos; at = a.find(from, at + to.size()))
                a.replace(at, from.size(), to);
        };
        replace("{qmp}", qmp);
        replace(std::string(k_secret_object), launch_secret_object());
        for (const auto& [dev, vol] : volumes) replace(fmt::format("{{vol:{}}}", dev), vol);
        out.push_back(std::move(a));
    }
    return out;
}

std::string launch_secret_object() {
    // format=raw: the bytes as they are (no base64); /dev/stdin: the one
    // channel that reaches QEMU alike on this host, through ip netns exec
    // and through ssh, and shows in no argv or environment. QEMU 7.2 and
    // 10.0 read it to its end when the object is made, which is before any
    // -drive opens whatever the order of the options.
    return fmt::format("secret,id={},file=/dev/stdin,format=raw", k_launch_secret_id);
}

fs::path launch_socket(const fs::path& state_dir, const std::string& job) {
    return state_dir / (job + ".dst.qmp");
}

LaunchQmp launch_qmp(const DestinationLaunch& launch, const fs::path& state_dir,
                     const std::string& job) {
    if (launch.qmp.empty()) {
        const auto socket = launch_socket(state_dir, job).string();
        return {socket, socket, false};
    }
    auto address = qmp::parse_address(launch.qmp);
    if (!address || address->kind != qmp::Address::Kind::ssh)
        return {launch.qmp, launch.qmp, false};  // refused by check_launch_target
    return {qmp::to_string(*address), address->path, true};
}

std::optional<std::size_t> ssh_remote_command(const std::vector<std::string>& argv) {
    if (argv.empty() || (argv[0] != "ssh" && !argv[0].ends_with("/ssh"))) return std::nullopt;
    // ssh's own getopt string: these options take a value.
    constexpr std::string_view with_value = "BbcDEeFIiJLlmOoPpQRSWw";
    for (std::size_t i = 1; i < argv.size(); ++i) {
        const std::string& a = argv[i];
        if (a == "--") return i + 2 < argv.size() ? std::optional(i + 2) : std::nullopt;
        if (a.size() < 2 || a[0] != '-')
            return i + 1 < argv.size() ? std::optional(i + 1) : std::nullopt;
        for (std::size_t c = 1; c < a.size(); ++c)
            if (with_value.find(a[c]) != std::string_view::npos) {
                if (c + 1 == a.size()) ++i;  // "-F cfg": the value is the next word
                break;
            }
    }
    return std::nullopt;
}

Result<std::string> quote_for_remote_shell(std::string_view word) {
    for (char c : word)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            return fail(ErrorCode::invalid_argument,
                        fmt::format("--dst-launch: '{}' holds a control character, which cannot "
                                    "be passed safely through ssh's remote shell",
                                    word));
    if (!word.empty() && std::all_of(word.begin(), word.end(), is_plain_word))
        return std::string(word);
    std::string out = "'";
    for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

Result<void> check_launch_target(const DestinationLaunch& launch) {
    if (launch.qmp.empty()) return {};
    auto address = qmp::parse_address(launch.qmp);
    if (!address) return fail(address.error().with_context("--dst-qmp"));
    if (address->kind != qmp::Address::Kind::ssh)
        return fail(
            ErrorCode::invalid_argument,
            fmt::format("--dst-qmp {} with --dst-launch: only ssh://[USER@]HOST[:PORT]/PATH "
                        "(a QEMU launched on this host gets its own socket, "
                        "<state-dir>/<job>.dst.qmp)",
                        launch.qmp));
    const auto start = ssh_remote_command(launch.argv);
    if (!start)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("--dst-qmp {}: the launch command must be `ssh [OPTIONS] HOST "
                                "CMD...` running the QEMU on {}",
                                launch.qmp, address->host));
    bool qmp = false;
    for (auto i = *start; i < launch.argv.size(); ++i) {
        if (auto q = quote_for_remote_shell(launch.argv[i]); !q) return fail(q.error());
        qmp = qmp || launch.argv[i].find("{qmp}") != std::string::npos;
    }
    if (!qmp)
        return fail(ErrorCode::invalid_argument,
                    fmt::format("--dst-launch: {{qmp}} must be in the command ssh runs on {} "
                                "(e.g. -qmp unix:{{qmp}},server=on,wait=off)",
                                address->host));
    if (pool_type(launch.pool, launch.config) == "dir")
        return fail(ErrorCode::invalid_argument,
                    fmt::format("--dst-pool {} is a directory on this host, which the QEMU on {} "
                                "cannot open: give a pool both hosts reach (nfs://, iscsi://, or "
                                "a named nfs/iscsi pool)",
                                launch.pool, address->host));
    return {};
}

Result<std::vector<std::string>> launch_command(const DestinationLaunch& launch,
                                                const LaunchQmp& qmp,
                                                const std::map<std::string, std::string>& volumes) {
    auto argv = expand_launch(launch.argv, qmp.path, volumes);
    if (!qmp.remote) return argv;
    const auto start = ssh_remote_command(launch.argv);
    if (!start) return fail(ErrorCode::invalid_argument, "--dst-launch: no command for ssh to run");
    for (auto i = *start; i < argv.size(); ++i) {
        auto quoted = quote_for_remote_shell(argv[i]);
        if (!quoted) return fail(quoted.error());
        argv[i] = std::move(*quoted);
    }
    return argv;
}

std::optional<bool> incoming_exit_on_error(const qmp::Features& destination, bool launched) {
    // Asked of the schema, never of the version: a vendor build may carry
    // the argument (or lack it) whatever it calls itself.
    if (!launched || !destination.command_has_argument("migrate-incoming", "exit-on-error"))
        return std::nullopt;
    return false;
}

Result<std::pair<std::string, std::string>> parse_dst_vol(std::string_view text) {
    const auto eq = text.find('=');
    if (eq == std::string_view::npos || eq == 0 || eq + 1 == text.size())
        return fail(ErrorCode::invalid_argument,
                    fmt::format("--dst-vol {}: expected DEV=VOLUME", text));
    return std::pair{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
}

std::string volume_location(const pools::Pool& pool, const pools::VolumeInfo& volume,
                            std::uint64_t disk_size) {
    const std::string url = pool.url_of(volume.name);
    if (pool.type() != "iscsi" || volume.virtual_size == disk_size) return url;
    // QEMU's raw "size" shows the guest exactly its disk's size (what the
    // migration's pre-flight and the mirror need), as move does on a LUN.
    // The iscsi node is spelled out: QEMU reads a URL as a protocol only in
    // a top-level filename, {"filename": URL} inside json: opens a file.
    // iscsi://PORTAL/IQN/N (a pool with credentials: chap_volume_location).
    const std::string rest = url.substr(url.find("://") + 3);
    const auto slash = rest.find('/'), last = rest.rfind('/');
    const nlohmann::json file{{"driver", "iscsi"},
                              {"transport", "tcp"},
                              {"portal", rest.substr(0, slash)},
                              {"target", rest.substr(slash + 1, last - slash - 1)},
                              {"lun", std::stoi(rest.substr(last + 1))}};
    return drive_json({{"driver", "raw"}, {"size", disk_size}, {"file", file}});
}

std::string chap_volume_location(nlohmann::json iscsi_node, std::uint64_t disk_size) {
    // Always json:, even for a LUN of the disk's size: no URL carries a
    // password-secret, and QEMU takes a bare iscsi node under -drive's
    // format=raw for a raw node's missing "file", so the raw node is spelled
    // out too.
    iscsi_node.erase("initiator-name");
    iscsi_node["password-secret"] = k_launch_secret_id;
    return drive_json({{"driver", "raw"}, {"size", disk_size}, {"file", std::move(iscsi_node)}});
}

Result<LaunchPlan> plan_launch(const DestinationLaunch& launch, const SideFacts& src,
                               const fs::path& jobs_dir) {
    std::vector<std::string> devices;
    for (const auto& d : src.disks) devices.push_back(d.device);
    for (const auto& [dev, vol] : launch.volumes)
        if (std::find(devices.begin(), devices.end(), dev) == devices.end())
            return fail(ErrorCode::invalid_argument,
                        fmt::format("--dst-vol {}={}: the source has no disk {} (it has: {})", dev,
                                    vol, dev, fmt::join(devices, ", ")));
    auto pool = pools::open_pool(launch.pool, launch.config);
    if (!pool) return fail(pool.error().with_context("--dst-pool " + launch.pool));
    auto held = jobs::claimed_by_journals(jobs_dir);
    if (!held) return fail(held.error());
    return plan_volumes(std::move(*pool), launch, src, *held);
}

Result<LaunchPlan> plan_volumes(std::unique_ptr<pools::Pool> pool, const DestinationLaunch& launch,
                                const SideFacts& src, const std::set<std::string>& held) {
    std::vector<std::string> guest;
    for (const auto& d : src.disks) guest.push_back(guest_location(d.filename));
    LaunchPlan plan;
    plan.pool = std::move(pool);
    plan.iscsi = plan.pool->type() == "iscsi";
    // The pool's URL shows its CHAP user (never the password).
    plan.chap = plan.iscsi && plan.pool->url().find('@') != std::string::npos;
    if (auto ok = check_secret_object(plan, launch.argv); !ok) return fail(ok.error());
    std::set<std::string> named;
    for (const auto& d : src.disks) {
        LaunchVolume v{.device = d.device, .size = d.size};
        if (auto it = launch.volumes.find(d.device); it != launch.volumes.end()) {
            const std::string name = plan.iscsi ? lun_name(it->second) : it->second;
            if (!named.insert(plan.pool->url_of(name)).second)
                return fail(ErrorCode::invalid_argument,
                            fmt::format("--dst-vol {}={}: two disks would land on {}", d.device,
                                        it->second, plan.pool->url_of(name)));
            v.names = {name};
        }
        plan.volumes.push_back(std::move(v));
    }
    for (const auto& v : plan.volumes) {
        if (v.names.empty()) continue;
        if (plan.iscsi) {
            if (auto r = check_named_lun(*plan.pool, v, guest, held); !r) return fail(r.error());
        } else if (plan.pool->stat(v.names.front())) {
            return fail(ErrorCode::already_exists,
                        fmt::format("--dst-vol {}={}: {} already exists", v.device, v.names.front(),
                                    plan.pool->url_of(v.names.front())));
        }
    }
    if (plan.iscsi)
        if (auto r = choose_luns(plan, guest, held); !r) return fail(r.error());
    return plan;
}

Result<std::unique_ptr<qmp::Client>> launch_destination(jobs::Journal& journal,
                                                        const DestinationLaunch& launch,
                                                        LaunchPlan& plan, const fs::path& state_dir,
                                                        qmp::Milliseconds qmp_timeout) {
    const std::string job = journal.job().id;
    const LaunchQmp qmp = launch_qmp(launch, state_dir, job);
    if (auto ok = check_launch_target(launch); !ok) return fail(ok.error());
    if (qmp.remote)
        if (auto ok = check_remote_free(qmp, qmp_timeout); !ok) return fail(ok.error());
    jobs::UndoEnv env{.step_timeout = qmp_timeout};
    jobs::Effects effects(journal, env);
    auto& pool = *plan.pool;
    std::map<std::string, std::string> volumes;
    std::optional<std::string> password;  // CHAP: the launched QEMU's stdin
    for (const auto& v : plan.volumes) {
        const auto names =
            v.names.empty() ? std::vector{fmt::format("{}-{}.raw", job, jobs::device_tag(v.device))}
                            : v.names;
        auto made = jobs::claim_and_create(effects, k_launched, pool, names, state_dir, v.size,
                                           pools::ImageFormat::raw, "disk " + v.device);
        if (!made)
            return fail(made.error().with_context(fmt::format(
                "disk {}: {} {} in {}", v.device, plan.iscsi ? "claim" : "create",
                names.size() == 1 ? names.front() : std::string("a free LUN"), pool.url())));
        plan.claims.push_back(std::move(made->claim));
        if (!plan.chap) {
            volumes[v.device] = volume_location(pool, made->info, v.size);
            continue;
        }
        auto location = chap_location(pool, made->info, v.size, password.emplace());
        if (!location) return fail(location.error().with_context("disk " + v.device));
        volumes[v.device] = std::move(*location);
    }
    auto argv = launch_command(launch, qmp, volumes);
    if (!argv) return fail(argv.error());
    const fs::path log = state_dir / (job + ".dst.log");
    std::error_code ec;
    if (!qmp.remote) fs::remove(qmp.path, ec);
    auto seq = journal.intend({.disk = k_launched,
                               .effect = jobs::EffectKind::destination_launched,
                               .name = qmp.address});
    if (!seq) return fail(seq.error());
    auto pid = spawn(*argv, log, password);
    if (auto w = journal.outcome(*seq, pid ? jobs::RecordState::done : jobs::RecordState::failed,
                                 pid ? "" : pid.error().message, pid ? *pid : -1);
        !w)
        return fail(w.error());
    // The pid is what a recovery stops: durable now, not with the next write.
    if (auto w = journal.flush(); !w) return fail(w.error());
    if (!pid) return fail(pid.error().with_context("--dst-launch"));
    return wait_for_qmp(*pid, qmp, log, launch, qmp_timeout);
}

}  // namespace blockmig::migrate
