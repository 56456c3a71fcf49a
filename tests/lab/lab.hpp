// The test lab: real parts (a QEMU guest that stamps its disks, nfs-ganesha,
// tgtd, network-namespace "hosts") started by tests and always stopped by PID.
//
// Each part is an RAII object: its destructor stops what it started and
// removes its files, also when a test fails. The heavy lifting is done by the
// scripts next to this file (guest.sh, nfs.sh, iscsi.sh, hosts.sh), which the
// README's demo uses too. Helpers throw std::runtime_error on failure: this is
// test code, and gtest turns an exception into a failed test after unwinding
// (so every part still gets stopped).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace blockmig::lab {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// ---- environment ---------------------------------------------------------

// Folder holding the lab scripts (compiled in; tests run from the build tree).
fs::path script_dir();
// True under CI=true: a lab part that cannot start must fail, never skip.
bool running_in_ci();
// Why the lab cannot run here (not root, missing tool), or empty if it can.
std::string missing_prerequisite();
// Selects the QEMU flavour named by BLOCKMIG_QEMU (see qemu.sh) for this
// process and every child it starts (guest, qemu-img, qemu-io,
// qemu-storage-daemon, blockmig): PATH and BLOCKMIG_QEMU_DIR are set once.
// Returns why it failed (e.g. QEMU 10 could not be fetched), or empty.
std::string use_qemu_flavour();

// Skips (or, under CI=true, fails) the current test when the lab cannot run.
// A QEMU flavour that was asked for but cannot be had always fails.
#define LAB_REQUIRE()                                                                         \
    do {                                                                                      \
        if (auto why = ::blockmig::lab::use_qemu_flavour(); !why.empty())                     \
            FAIL() << "QEMU flavour unavailable: " << why;                                    \
        if (auto why = ::blockmig::lab::missing_prerequisite(); !why.empty()) {               \
            if (::blockmig::lab::running_in_ci()) FAIL() << "lab unavailable in CI: " << why; \
            GTEST_SKIP() << "lab unavailable: " << why;                                       \
        }                                                                                     \
    } while (0)

struct CommandResult {
    int status = -1;  // exit status, or 128+signal
    std::string out;  // stdout and stderr, interleaved
};
// Runs argv (no shell), waits, captures output.
CommandResult run(const std::vector<std::string>& argv);
// Like run() but throws with the output when the exit status is not 0.
std::string run_ok(const std::vector<std::string>& argv);

// A fresh directory under $BLOCKMIG_LAB_TMP (default /var/tmp/blockmig-lab,
// a disk: O_DIRECT does not work on tmpfs), removed on destruction.
class TempDir {
  public:
    explicit TempDir(const std::string& prefix = "t");
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const fs::path& path() const { return m_path; }
    fs::path operator/(const std::string& name) const { return m_path / name; }

  private:
    fs::path m_path;
};

// ---- NFS -------------------------------------------------------------------

// nfs-ganesha exporting a fresh directory as nfs://127.0.0.1/export (v3 + v4).
// Only one can run per network namespace (rpcbind's port 111), so the
// constructor waits for a machine-wide lock that is held until destruction.
class NfsServer {
  public:
    // In `netns` (empty: this namespace), exporting on `addr`: e.g. a NAS in
    // lab host A's namespace on 10.77.0.1 that host B reaches over the link.
    explicit NfsServer(const std::string& netns = "", const std::string& addr = "127.0.0.1");
    ~NfsServer();
    NfsServer(const NfsServer&) = delete;
    NfsServer& operator=(const NfsServer&) = delete;

    std::string url() const { return "nfs://" + m_addr + "/export"; }
    const fs::path& export_dir() const { return m_export; }
    int pid() const { return m_pid; }
    // Stops the server now (e.g. to simulate a dead NAS); idempotent.
    void stop();

  private:
    TempDir m_dir{"nfs"};
    fs::path m_export;
    std::string m_netns, m_addr;
    int m_lock_fd = -1;
    int m_pid = -1;
};

// ---- iSCSI -----------------------------------------------------------------

// tgtd on 127.0.0.1:<free port> with `luns` thin-provisioned LUNs of `size`
// bytes, each backed by a sparse file. With `chap_user` set, only initiators
// logging in with that CHAP account and password are admitted.
class IscsiTarget {
  public:
    // `netns` + `addr`: the target runs in that network namespace (a lab
    // host's) and listens on `addr` there (default: 127.0.0.1 of this one).
    IscsiTarget(std::uint64_t size, int luns = 1, const std::string& chap_user = "",
                const std::string& chap_password = "", const std::string& netns = "",
                const std::string& addr = "127.0.0.1");
    ~IscsiTarget();
    IscsiTarget(const IscsiTarget&) = delete;
    IscsiTarget& operator=(const IscsiTarget&) = delete;

    std::string portal() const;            // "ADDR:PORT"
    std::string base_url() const;          // iscsi://127.0.0.1:PORT/IQN
    std::string lun_url(int lun) const;    // base_url()/lun
    fs::path backing_file(int lun) const;  // the sparse file behind a LUN
    const std::string& iqn() const { return m_iqn; }
    int port() const { return m_port; }
    int pid() const { return m_pid; }  // tgtd's (to kill or freeze it in tests)
    void stop();

  private:
    TempDir m_dir{"iscsi"};
    int m_port = 0;
    int m_pid = -1;
    std::string m_iqn;
    std::string m_netns, m_addr;
    bool m_running = false;
};

// ---- hosts -----------------------------------------------------------------

// Two network namespaces <name>-a (10.77.0.1) and <name>-b (10.77.0.2) joined
// by veth; `rate` (tc syntax, e.g. "100mbit") adds a tbf limit on both ends.
class HostPair {
  public:
    explicit HostPair(const std::string& rate = "");
    ~HostPair();
    HostPair(const HostPair&) = delete;
    HostPair& operator=(const HostPair&) = delete;

    const std::string& ns_a() const { return m_a; }
    const std::string& ns_b() const { return m_b; }
    // Takes the link between the two hosts down (a pulled cable) or up again.
    void set_link(bool up);
    static constexpr const char* k_addr_a = "10.77.0.1";
    static constexpr const char* k_addr_b = "10.77.0.2";

  private:
    std::string m_name, m_a, m_b;
};

// ---- guest -----------------------------------------------------------------

struct Ack {
    std::uint64_t gen = 0;
    std::uint64_t blk = 0;
};

struct GuestDisk {
    std::string id;      // qdev id, e.g. "disk0" (guest sees them as vda, vdb, ... in order)
    fs::path path;       // image file
    std::string format;  // "raw" or "qcow2"
};

struct GuestConfig {
    std::vector<GuestDisk> disks;
    // Raw extra QEMU arguments (e.g. network-backed -blockdev definitions).
    std::vector<std::string> extra_args;
    std::uint64_t stamp_blocks = 0;  // 0 = whole disk
    int heartbeat_ms = 100;
    // MiB of RAM the guest keeps dirty besides stamping (`diskstamp dirty`;
    // the migration policy tests), 0 = none.
    int dirty_mib = 0;
    std::string netns;  // run inside this namespace if set
    fs::path cwd;       // QEMU's working directory if set (relative disk paths resolve there)
};

// A running lab guest. A reader thread stamps every console line with its
// host arrival time (guest clocks stop while the VM is paused).
class Guest {
  public:
    explicit Guest(GuestConfig config);
    ~Guest();
    Guest(const Guest&) = delete;
    Guest& operator=(const Guest&) = delete;

    const fs::path& qmp_socket() const { return m_qmp; }
    int pid() const { return m_pid; }
    bool running() const;
    // Waits until QEMU exits by itself (e.g. `quit` after a migration) and
    // reaps it; true if it did within `timeout`.
    bool wait_exit(std::chrono::milliseconds timeout);

    // Waits until a console line contains `needle`; false on timeout.
    bool wait_for_line(const std::string& needle, std::chrono::milliseconds timeout);
    // Waits until `dev` (e.g. "vda") has acknowledged at least generation `gen`.
    bool wait_for_ack(const std::string& dev, std::uint64_t gen, std::chrono::milliseconds timeout);
    std::optional<Ack> last_ack(const std::string& dev) const;
    // Longest gap between consecutive heartbeat lines (any disk) that arrived after `since`.
    std::chrono::milliseconds max_heartbeat_gap(Clock::time_point since) const;
    // Heartbeat lines that arrived after `since`.
    std::size_t heartbeats_since(Clock::time_point since) const;
    // Host arrival times of the first / last heartbeat line (nullopt: none yet);
    // across a migration, the destination's first minus the source's last is
    // the pause the guest saw.
    std::optional<Clock::time_point> first_heartbeat() const;
    std::optional<Clock::time_point> last_heartbeat() const;
    std::string console() const;

    // Sends one QMP command (raw JSON object text) and returns the reply line.
    // The lab's own minimal client, independent of the product's qmp/ library.
    std::string qmp(const std::string& command_json);
    // Pauses the VM (QEMU drains all I/O first) so disks can be read consistently.
    void pause();
    void resume();
    void stop();
    // Why QEMU is gone when the lab did not stop it ("exit status 1",
    // "signal 6 (SIGABRT)") and the last lines it printed; empty while it
    // runs or after stop()/wait_exit(). Reaps it.
    std::string death_report();

  private:
    void read_console(int fd);
    // Reaps QEMU if it has exited; true if it is gone.
    bool reap_if_exited() const;

    GuestConfig m_config;
    TempDir m_dir{"guest"};
    fs::path m_qmp;
    // Mutable: running() reaps a QEMU that exited (a zombie still answers kill(pid, 0)).
    mutable int m_pid = -1;
    mutable int m_dead_pid = -1;
    mutable std::optional<int> m_wait_status;  // QEMU exited without stop()/wait_exit()
    bool m_death_told = false;                 // death_report() already went into an error
    std::thread m_reader;
    mutable std::mutex m_mutex;
    std::condition_variable m_changed;
    std::vector<std::pair<Clock::time_point, std::string>> m_lines;
    std::vector<Clock::time_point> m_heartbeats;
    std::map<std::string, Ack> m_acks;
};

// The destination of a live migration of a guest started with `source`:
// the same disks, devices and memory, `-incoming defer`, in namespace
// `netns` (another lab host). Start it as a Guest; its console shows the
// guest's output once the guest runs there.
GuestConfig incoming_config(const GuestConfig& source, const std::string& netns);

// ---- verification -----------------------------------------------------------

struct VerifyReport {
    std::uint64_t blocks = 0, ok = 0, empty = 0, bad = 0, lost = 0, gen_min = 0, gen_max = 0;
    int status = -1;  // diskstamp's exit status: 0 intact, 1 BAD/LOST, 2 I/O error
    std::string output;
    bool intact() const { return status == 0 && bad == 0 && lost == 0; }
};

// Verifies every stamped block of a raw image file against the last ACK.
VerifyReport verify_raw(const fs::path& raw, std::uint64_t nblocks, std::optional<Ack> ack);
// Same for any image QEMU can read (a qcow2 file, nfs://..., iscsi://...):
// converts it to a temporary raw file first.
VerifyReport verify_image(const std::string& image, const std::string& format,
                          std::uint64_t nblocks, std::optional<Ack> ack);
// Host-side diskstamp binary (the verifier).
fs::path diskstamp_binary();

}  // namespace blockmig::lab
