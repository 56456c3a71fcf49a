// Shared by the move_*_test integration tests: a lab guest that stamps its
// disk while `blockmig move` runs, and the QMP / file-system observations the
// tests make before and after a move. Everything is observed from outside the
// product: the lab's own QMP client, the file system, diskstamp.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "lab.hpp"

namespace move_test {

namespace fs = std::filesystem;
using blockmig::lab::Ack;
using blockmig::lab::Clock;
using blockmig::lab::CommandResult;
using blockmig::lab::Guest;
using blockmig::lab::GuestConfig;
using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr std::uint64_t k_mib = 1 << 20;
constexpr std::uint64_t k_block = 4096;  // diskstamp's block size

// The job journals of the running test: a directory of its own, made at
// its first use in each test (the previous test's is removed then). Every
// run through the helpers below gets it as --state-dir unless the test
// names one, so no test leaves its jobs in the machine's default
// /var/lib/blockmig/jobs, where needs-recovery jobs of killed or failed
// runs used to pile up.
inline fs::path test_state_dir() {
    static std::mutex mutex;
    static std::string owner;
    static std::unique_ptr<blockmig::lab::TempDir> dir;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string test =
        info ? std::string(info->test_suite_name()) + "." + info->name() : std::string();
    std::lock_guard lock(mutex);
    if (!dir || owner != test) {
        dir.reset();
        dir = std::make_unique<blockmig::lab::TempDir>("jobs");
        owner = test;
    }
    return dir->path();
}

// `args` (blockmig's, without the binary) with `--state-dir
// test_state_dir()` right after the subcommand when it is one that keeps
// journals and the test gave no --state-dir.
inline std::vector<std::string> with_state_dir(std::vector<std::string> args) {
    static const std::set<std::string> journaling{"move", "migrate", "pivot", "recover", "jobs"};
    if (std::find(args.begin(), args.end(), "--state-dir") != args.end()) return args;
    const auto sub = std::find_if(args.begin(), args.end(),
                                  [](const std::string& a) { return journaling.contains(a); });
    if (sub != args.end()) args.insert(sub + 1, {"--state-dir", test_state_dir().string()});
    return args;
}

// Runs the blockmig binary; stdout and stderr interleaved.
inline CommandResult blockmig_cli(std::vector<std::string> args) {
    args = with_state_dir(std::move(args));
    args.insert(args.begin(), BLOCKMIG_BINARY);
    return blockmig::lab::run(args);
}

struct SplitResult {
    int status = -1;
    std::string out;  // stdout only
    std::string err;  // stderr only
};

// Runs `argv` with stdout and stderr kept apart (the JSON contract is about
// stdout alone). `scratch` holds the stderr file.
inline SplitResult run_split(const std::vector<std::string>& argv, const fs::path& scratch) {
    const fs::path err_file = scratch / "blockmig.stderr";
    std::vector<std::string> sh{"sh", "-c", "f=$1; shift; exec \"$@\" 2>\"$f\"", "sh",
                                err_file.string()};
    sh.insert(sh.end(), argv.begin(), argv.end());
    CommandResult r = blockmig::lab::run(sh);
    std::ifstream in(err_file);
    std::stringstream err;
    err << in.rdbuf();
    return {r.status, r.out, err.str()};
}

// The blockmig binary with stdout and stderr kept apart.
inline SplitResult blockmig_cli_split(std::vector<std::string> args, const fs::path& scratch) {
    args = with_state_dir(std::move(args));
    args.insert(args.begin(), BLOCKMIG_BINARY);
    return run_split(args, scratch);
}

// Starts the blockmig binary as a child of the test, so it can be SIGKILLed
// mid-job; stdout goes to /dev/null when `quiet`.
inline pid_t spawn_blockmig(std::vector<std::string> args, bool quiet = false) {
    args = with_state_dir(std::move(args));
    args.insert(args.begin(), BLOCKMIG_BINARY);
    pid_t pid = fork();
    if (pid == 0) {
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        if (quiet) dup2(open("/dev/null", O_WRONLY), 1);
        execv(argv[0], argv.data());
        _exit(127);
    }
    return pid;
}

// `blockmig jobs --output json` of a state dir; {} when it prints no JSON.
inline json jobs_listing(const fs::path& state) {
    auto r = blockmig_cli({"--output", "json", "jobs", "--state-dir", state.string()});
    EXPECT_EQ(r.status, 0) << r.out;
    auto brace = r.out.find('{');
    if (brace == std::string::npos) return json::object();
    auto j = json::parse(r.out.substr(brace), nullptr, false);
    return j.is_discarded() ? json::object() : j;
}

// How many jobs `state` holds (default: the test's own); -1 when `blockmig
// jobs` lists none at all (so a broken listing never reads as "no job").
inline long jobs_left(const fs::path& state = test_state_dir()) {
    const json l = jobs_listing(state);
    return l.contains("jobs") && l["jobs"].is_array() ? static_cast<long>(l["jobs"].size()) : -1;
}

inline std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line.find_first_not_of(" \t\r") != std::string::npos) out.push_back(line);
    return out;
}

// blockmig's lines that start "blockmig: error:" each contain every one of
// `needles`, and there is exactly one such line.
inline void expect_one_error_line(const std::string& out, const std::vector<std::string>& needles) {
    std::size_t errors = 0;
    for (const auto& l : lines_of(out))
        if (l.starts_with("blockmig: error:")) {
            ++errors;
            for (const auto& n : needles) EXPECT_NE(l.find(n), std::string::npos) << l;
        }
    EXPECT_EQ(errors, 1u) << out;
}

// Bytes the file system really holds for `path` (st_blocks), not its size.
inline std::uint64_t allocated_bytes(const fs::path& path) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) throw std::runtime_error("stat " + path.string());
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

inline std::set<std::string> entries_of(const fs::path& dir) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
    return out;
}

// The reply of a QEMU the test has no Guest for (one blockmig started), through
// `blockmig qmp SOCKET COMMAND`; an empty object if none came.
inline json qmp_at(const fs::path& socket, const std::string& command) {
    auto r = blockmig_cli({"qmp", socket.string(), command});
    json j = json::parse(r.out.substr(std::min(r.out.find('{'), r.out.size())), nullptr, false);
    return j.is_discarded() ? json::object() : j;
}

// ---- QMP observations (through the lab's client, not the product's) --------

inline json qmp_return(Guest& guest, const std::string& command) {
    std::string reply = guest.qmp(command);
    json j = json::parse(reply, nullptr, false);
    if (j.is_discarded() || !j.contains("return"))
        throw std::runtime_error("QMP " + command + " failed: " + reply);
    return j["return"];
}

// The query-block entry of the guest device with qdev id `id`.
inline json device_block(Guest& guest, const std::string& id) {
    for (const auto& d : qmp_return(guest, R"({"execute":"query-block"})")) {
        const std::string qdev = d.value("qdev", "");
        if (d.value("device", "") == id || qdev.find("/" + id + "/") != std::string::npos ||
            qdev == id)
            return d;
    }
    throw std::runtime_error("query-block has no device " + id);
}

// The filename QEMU reports for the node the device reads and writes.
inline std::string device_file(Guest& guest, const std::string& id) {
    return device_block(guest, id)["inserted"].value("file", "");
}

inline json named_nodes(Guest& guest) {
    return qmp_return(guest, R"({"execute":"query-named-block-nodes","arguments":{"flat":true}})");
}

inline std::set<std::string> node_names(Guest& guest) {
    std::set<std::string> out;
    for (const auto& n : named_nodes(guest)) out.insert(n.value("node-name", ""));
    return out;
}

// Drivers of all nodes, e.g. {"file", "qcow2", "nfs"}.
inline std::multiset<std::string> node_drivers(Guest& guest) {
    std::multiset<std::string> out;
    for (const auto& n : named_nodes(guest)) out.insert(n.value("drv", ""));
    return out;
}

// True when any node's filename mentions `needle` (e.g. an old source path).
inline bool any_node_mentions(Guest& guest, const std::string& needle) {
    for (const auto& n : named_nodes(guest))
        if (n.value("file", "").find(needle) != std::string::npos) return true;
    return false;
}

inline json block_jobs(Guest& guest) {
    return qmp_return(guest, R"({"execute":"query-block-jobs"})");
}

// PIDs of processes whose command line (NULs as spaces) satisfies `match`.
template <typename Match>
std::vector<int> processes_where(Match match) {
    std::vector<int> out;
    for (const auto& e : fs::directory_iterator("/proc")) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::ifstream in(e.path() / "cmdline");
        std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        for (char& c : cmdline)
            if (c == '\0') c = ' ';
        if (match(cmdline)) out.push_back(std::stoi(name));
    }
    return out;
}

// PIDs of processes whose command line starts with `program` and mentions
// `needle` (to find the blockmig run a test started when it must be stopped).
inline std::vector<int> processes_running(const std::string& program, const std::string& needle) {
    return processes_where([&](const std::string& cmdline) {
        return cmdline.rfind(program, 0) == 0 && cmdline.find(needle) != std::string::npos;
    });
}

// PIDs of qemu-storage-daemon processes whose command line mentions `needle`
// (the tool's NBD hop for a given volume).
inline std::vector<int> storage_daemons_mentioning(const std::string& needle) {
    return processes_where([&](const std::string& cmdline) {
        return cmdline.find("qemu-storage-daemon") != std::string::npos &&
               cmdline.find(needle) != std::string::npos;
    });
}

// The directory the NBD hop daemon `pid` serves from (its socket's, where
// its log goes), read from its argv ("addr.path=DIR/nbd.sock"); empty if
// the argv names no socket.
inline fs::path hop_dir_of_daemon(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
    const std::string argv{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    constexpr std::string_view key = "addr.path=";
    const auto at = argv.find(key);
    if (at == std::string::npos) return {};
    const auto start = at + key.size();
    const auto end = argv.find_first_of(std::string_view(",\0", 2), start);
    return fs::path(argv.substr(start, end == std::string::npos ? end : end - start)).parent_path();
}

// QEMU 7.2 running `guest` under TCG (no KVM): its post-copy, multifd and
// slow many-pass pre-copy hand the destination guest bad memory in this lab
// (docs/known-issues.md).
inline bool qemu7_under_tcg(Guest& guest) {
    const json version = qmp_return(guest, R"({"execute":"query-version"})");
    const bool kvm = qmp_return(guest, R"({"execute":"query-kvm"})").value("enabled", false);
    return version["qemu"].value("major", 0) < 8 && !kvm;
}

// Skips the running test when `guest` is QEMU 7.2 under TCG, naming what of
// QEMU's (`what`: "post-copy", "multifd", ...) corrupts the guest there.
#define SKIP_ON_QEMU7_TCG(guest, what)                                                      \
    if (move_test::qemu7_under_tcg(guest))                                                  \
    GTEST_SKIP() << "QEMU 7.2 " << (what)                                                   \
                 << " under TCG corrupts the guest (QEMU's defect, docs/known-issues.md); " \
                    "run with BLOCKMIG_QEMU=10"

// `blockmig ARGS` on a thread, so a test can act (stop a server) while it
// runs. `unique` is an argument only this run has (the guest's QMP socket):
// if the run is still going when the object dies, that process is killed by
// PID, so a hung move fails the test instead of hanging it.
class BackgroundCli {
  public:
    BackgroundCli(std::vector<std::string> args, std::string unique)
        : m_unique(std::move(unique)), m_started(Clock::now()) {
        m_thread = std::thread([this, args = with_state_dir(std::move(args))] {
            CommandResult r = blockmig_cli(args);
            std::lock_guard lock(m_mutex);
            m_result = std::move(r);
            m_finished = Clock::now();
            m_done = true;
            m_changed.notify_all();
        });
    }
    ~BackgroundCli() {
        if (!wait(0ms))
            for (int pid : processes_running(BLOCKMIG_BINARY, m_unique)) kill(pid, SIGKILL);
        m_thread.join();
    }
    BackgroundCli(const BackgroundCli&) = delete;
    BackgroundCli& operator=(const BackgroundCli&) = delete;

    // True once the process exited (within `timeout`).
    bool wait(std::chrono::milliseconds timeout) {
        std::unique_lock lock(m_mutex);
        return m_changed.wait_for(lock, timeout, [&] { return m_done; });
    }
    // Valid after wait() returned true.
    const CommandResult& result() const { return m_result; }
    Clock::time_point started() const { return m_started; }
    Clock::time_point finished() const { return m_finished; }

  private:
    std::string m_unique;
    Clock::time_point m_started, m_finished;
    std::mutex m_mutex;
    std::condition_variable m_changed;
    bool m_done = false;
    CommandResult m_result;
    std::thread m_thread;
};

// ---- the guest ----------------------------------------------------------------

// Position of an ACK as a count of blocks written since the guest started.
inline std::uint64_t ack_position(const Ack& a, std::uint64_t nblocks) {
    return (a.gen - 1) * nblocks + a.blk + 1;
}

// Boots a guest stamping `nblocks` of disk0 and waits until it writes.
inline std::unique_ptr<Guest> boot_writing_guest(const fs::path& disk, const std::string& format,
                                                 std::uint64_t nblocks) {
    auto guest = std::make_unique<Guest>(
        GuestConfig{.disks = {{"disk0", disk, format}}, .stamp_blocks = nblocks});
    if (!guest->wait_for_line("GUEST-UP", 120s))
        throw std::runtime_error("guest did not boot: " + guest->console());
    if (!guest->wait_for_ack("vda", 1, 120s))
        throw std::runtime_error("guest did not write: " + guest->console());
    return guest;
}

// Pauses the guest, verifies `image` against the last ACK (or `floor` when
// given), and resumes it unless told not to.
inline blockmig::lab::VerifyReport pause_and_verify(Guest& guest, const std::string& image,
                                                    const std::string& format,
                                                    std::uint64_t nblocks,
                                                    std::optional<Ack> floor = std::nullopt,
                                                    bool resume = true) {
    guest.pause();
    std::optional<Ack> ack = floor ? floor : guest.last_ack("vda");
    auto report = blockmig::lab::verify_image(image, format, nblocks, ack);
    if (resume) guest.resume();
    return report;
}

// Waits until the guest acknowledges a write beyond `after`: its disk I/O
// still completes.
inline bool guest_keeps_writing(Guest& guest, std::chrono::milliseconds timeout = 60s) {
    auto now = guest.last_ack("vda");
    if (!now) return false;
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        auto later = guest.last_ack("vda");
        if (later && (later->gen > now->gen || later->blk > now->blk + 64)) return true;
        std::this_thread::sleep_for(100ms);
    }
    return false;
}

inline std::string ack_text(const std::optional<Ack>& a) {
    return a ? "gen=" + std::to_string(a->gen) + " blk=" + std::to_string(a->blk) : "none";
}

}  // namespace move_test
