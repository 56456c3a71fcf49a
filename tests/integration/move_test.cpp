// `blockmig move` end to end on local files and iSCSI: sparseness kept,
// --copy-only, refusals before anything is created, a write-heavy guest
// under a bandwidth cap, and the JSON progress stream. A real TCG guest
// stamps its disk the whole time; diskstamp verifies every block.
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iostream>
#include <regex>

#include "move_test_util.hpp"

using namespace blockmig::lab;
using namespace move_test;

namespace {

// A small tmpfs mounted for the test (a pool that is really short of space).
class TmpfsMount {
  public:
    TmpfsMount(const fs::path& at, const std::string& size) : m_path(at) {
        fs::create_directories(at);
        run_ok({"mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", at.string()});
    }
    ~TmpfsMount() { run({"umount", m_path.string()}); }
    TmpfsMount(const TmpfsMount&) = delete;
    TmpfsMount& operator=(const TmpfsMount&) = delete;
    const fs::path& path() const { return m_path; }

  private:
    fs::path m_path;
};

std::vector<json> json_lines(const std::string& out) {
    std::vector<json> events;
    for (const auto& line : lines_of(out)) {
        json j = json::parse(line, nullptr, false);
        EXPECT_FALSE(j.is_discarded()) << "stdout line is not JSON: " << line;
        if (!j.is_discarded()) events.push_back(std::move(j));
    }
    return events;
}

std::vector<json> events_named(const std::vector<json>& events, const std::string& name) {
    std::vector<json> out;
    for (const auto& e : events)
        if (e.value("event", "") == name) out.push_back(e);
    return out;
}

// A minimal QMP client on a second monitor socket, kept connected, so a
// test can watch block jobs while blockmig is connected to the first one.
class QmpWatch {
  public:
    explicit QmpWatch(const fs::path& socket_path) {
        m_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, socket_path.c_str(), sizeof a.sun_path - 1);
        if (connect(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
            throw std::runtime_error("connect " + socket_path.string());
        read_line();  // greeting
        command(R"({"execute":"qmp_capabilities"})");
    }
    ~QmpWatch() { close(m_fd); }
    QmpWatch(const QmpWatch&) = delete;
    QmpWatch& operator=(const QmpWatch&) = delete;

    json query_block_jobs() { return command(R"({"execute":"query-block-jobs"})")["return"]; }
    // Jobs QEMU created so far (JOB_STATUS_CHANGE "created" events seen).
    int jobs_created() const { return m_created; }

  private:
    json command(const std::string& text) {
        const std::string line = text + "\n";
        if (write(m_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
            throw std::runtime_error("QMP write failed");
        for (;;) {
            json reply = json::parse(read_line(), nullptr, false);
            if (!reply.is_object()) continue;
            if (!reply.contains("event")) return reply;
            if (reply.value("event", "") == "JOB_STATUS_CHANGE" &&
                reply["data"].value("status", "") == "created")
                ++m_created;
        }
    }
    std::string read_line() {
        for (;;) {
            if (auto pos = m_buffer.find('\n'); pos != std::string::npos) {
                std::string out = m_buffer.substr(0, pos);
                m_buffer.erase(0, pos + 1);
                return out;
            }
            char buf[4096];
            ssize_t n = read(m_fd, buf, sizeof buf);
            if (n <= 0) throw std::runtime_error("QMP connection closed");
            m_buffer.append(buf, static_cast<std::size_t>(n));
        }
    }
    int m_fd = -1;
    std::string m_buffer;
    int m_created = 0;
};

std::string seconds_since(Clock::time_point start) {
    return std::to_string(std::chrono::duration<double>(Clock::now() - start).count()) + " s";
}

TEST(Move, SparseSourceStaysSparseOnLocalAndIscsiTargets) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 16384;  // the guest writes the first 64 MiB only
    constexpr std::uint64_t k_size = 1ull << 30;
    TempDir dir("move-sparse");
    const fs::path source = dir / "sparse.raw";
    run_ok({"truncate", "-s", "1G", source.string()});
    IscsiTarget iscsi(k_size);
    auto guest = boot_writing_guest(source, "raw", k_blocks);
    ASSERT_TRUE(guest->wait_for_ack("vda", 2, 180s)) << "the 64 MiB were never written once";
    const std::string qmp = guest->qmp_socket().string();

    auto bound = [](std::uint64_t source_alloc) { return source_alloc * 11 / 10 + 16 * k_mib; };

    // raw (local) -> qcow2 (local)
    const std::uint64_t raw_alloc = allocated_bytes(source);
    EXPECT_GE(raw_alloc, 64 * k_mib);
    EXPECT_LT(raw_alloc, 80 * k_mib);
    const fs::path qcow2 = dir / "sparse-copy.qcow2";
    auto start = Clock::now();
    auto r = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", qcow2.string(),
                           "--format", "qcow2", "--timeout", "300"});
    std::cout << "[ move ] 1 GiB sparse raw -> local qcow2 took " << seconds_since(start) << "\n";
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    EXPECT_NE(device_file(*guest, "disk0").find(qcow2.string()), std::string::npos);
    const std::uint64_t qcow2_alloc = allocated_bytes(qcow2);
    std::cout << "[ move ] allocation: source " << raw_alloc << ", qcow2 target " << qcow2_alloc
              << "\n";
    EXPECT_LE(qcow2_alloc, bound(raw_alloc));
    VerifyReport v = pause_and_verify(*guest, qcow2.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;

    // qcow2 (local) -> raw (iSCSI LUN on a sparse backing file)
    ASSERT_EQ(allocated_bytes(iscsi.backing_file(1)), 0u);
    start = Clock::now();
    r = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", iscsi.lun_url(1), "--format",
                      "raw", "--timeout", "300"});
    std::cout << "[ move ] 1 GiB sparse qcow2 -> iSCSI took " << seconds_since(start) << "\n";
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    EXPECT_NE(device_file(*guest, "disk0").find(iscsi.iqn()), std::string::npos)
        << device_file(*guest, "disk0");
    const std::uint64_t lun_alloc = allocated_bytes(iscsi.backing_file(1));
    const std::uint64_t qcow2_alloc_now = allocated_bytes(qcow2);
    std::cout << "[ move ] allocation: qcow2 source " << qcow2_alloc_now << ", LUN backing file "
              << lun_alloc << "\n";
    EXPECT_LE(lun_alloc, bound(qcow2_alloc_now));
    EXPECT_LE(lun_alloc, bound(raw_alloc));
    v = pause_and_verify(*guest, iscsi.lun_url(1), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;

    // raw (iSCSI) -> raw (local)
    const fs::path back = dir / "sparse-back.raw";
    r = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", back.string(), "--format",
                      "raw", "--timeout", "300"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    const std::uint64_t back_alloc = allocated_bytes(back);
    std::cout << "[ move ] allocation: LUN " << lun_alloc << ", local raw target " << back_alloc
              << "\n";
    EXPECT_EQ(fs::file_size(back), k_size);
    EXPECT_LE(back_alloc, bound(lun_alloc));
    v = pause_and_verify(*guest, back.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(Move, CopyOnlyLeavesGuestOnSourceAndMakesVerifiableCopy) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-copy");
    const fs::path source = dir / "orig.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    ASSERT_TRUE(guest->wait_for_ack("vda", 2, 120s));
    const auto nodes_before = node_names(*guest);
    const std::string file_before = device_file(*guest, "disk0");

    // Every acknowledged write before the move started must be in the copy
    // (it is the source as of the cancel point, which comes later).
    const std::optional<Ack> floor = guest->last_ack("vda");
    const fs::path copy = dir / "copy.qcow2";
    const auto start = Clock::now();
    auto r = blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to",
                           copy.string(), "--copy-only", "--timeout", "300"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    const std::optional<Ack> at_return = guest->last_ack("vda");
    std::cout << "[ move ] copy-only took " << seconds_since(start) << "; ACK before "
              << ack_text(floor) << ", at return " << ack_text(at_return) << "\n";
    std::this_thread::sleep_for(1s);
    EXPECT_LT(guest->max_heartbeat_gap(start), 1000ms);

    EXPECT_EQ(device_file(*guest, "disk0"), file_before) << "the guest must stay on its source";
    EXPECT_TRUE(block_jobs(*guest).empty()) << block_jobs(*guest).dump();
    EXPECT_EQ(node_names(*guest), nodes_before) << "the copy's node must be gone";
    EXPECT_FALSE(any_node_mentions(*guest, copy.string()));
    ASSERT_TRUE(fs::exists(copy));

    guest->pause();
    VerifyReport c = verify_image(copy.string(), "qcow2", k_blocks, floor);
    EXPECT_TRUE(c.intact()) << "the copy:\n" << c.output;
    EXPECT_EQ(c.ok, k_blocks) << c.output;
    EXPECT_GE(c.gen_min, floor->gen - 1);
    VerifyReport s = verify_image(source.string(), "qcow2", k_blocks, guest->last_ack("vda"));
    EXPECT_TRUE(s.intact()) << "the source:\n" << s.output;
    guest->resume();
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
}

TEST(Move, TargetPoolTooSmallIsRefusedBeforeAnythingIsCreated) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-small");
    const fs::path source = dir / "big.raw";
    run_ok({"truncate", "-s", "256M", source.string()});
    // 96 MiB of data beyond the stamped area: more than the pool holds even
    // for a target that keeps holes.
    run_ok({"qemu-io", "-f", "raw", "-c", "write -P 0x5a 64M 96M", source.string()});
    TmpfsMount pool(dir / "pool", "32M");
    auto guest = boot_writing_guest(source, "raw", k_blocks);
    const auto nodes_before = node_names(*guest);

    auto r = blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to",
                           pool.path().string(), "--timeout", "120"});
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "a refused or failed move leaves no job";
    auto lines = lines_of(r.out);
    ASSERT_EQ(lines.size(), 1u) << r.out;
    EXPECT_EQ(lines[0].rfind("blockmig: error: ", 0), 0u) << r.out;
    EXPECT_TRUE(std::regex_search(lines[0], std::regex("space|capacity|free", std::regex::icase)))
        << r.out;
    EXPECT_NE(lines[0].find(pool.path().string()), std::string::npos) << "name the pool: " << r.out;

    EXPECT_TRUE(fs::is_empty(pool.path())) << "nothing may be created in the pool";
    EXPECT_TRUE(block_jobs(*guest).empty());
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_NE(device_file(*guest, "disk0").find(source.string()), std::string::npos);
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
}

TEST(Move, BadInputIsRefusedWithOneLineAndNothingChanges) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-bad");
    TempDir targets("move-bad-targets");
    const fs::path source = dir / "b.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    const fs::path existing = targets / "taken.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", existing.string(), "64M"});
    const auto existing_size = fs::file_size(existing);
    const auto existing_time = fs::last_write_time(existing);
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    const std::string qmp = guest->qmp_socket().string();
    const auto nodes_before = node_names(*guest);
    const auto targets_before = entries_of(targets.path());
    const auto dir_before = entries_of(dir.path());

    struct Case {
        std::vector<std::string> args;
        std::string needle;
    } cases[] = {
        {{"--disk", "nosuch", "--to", targets.path().string()}, "nosuch"},
        {{"--disk", "disk0", "--to", existing.string()}, "exists"},
        {{"--disk", "disk0", "--to", "nfs://"}, "nfs://"},
        {{"--disk", "disk0", "--to", "iscsi://127.0.0.1:3260"}, "iscsi://127.0.0.1:3260"},
        {{"--disk", "disk0", "--to", targets.path().string(), "--format", "vhdx9"}, "vhdx9"},
    };
    for (const auto& c : cases) {
        std::vector<std::string> args{"move", "--qmp", qmp};
        args.insert(args.end(), c.args.begin(), c.args.end());
        args.insert(args.end(), {"--timeout", "60"});
        auto r = blockmig_cli(args);
        SCOPED_TRACE(c.args[1] + " " + c.args[3]);
        EXPECT_EQ(r.status, 1) << r.out;
        EXPECT_EQ(jobs_left(), 0) << "a refused or failed move leaves no job";
        auto lines = lines_of(r.out);
        ASSERT_EQ(lines.size(), 1u) << r.out;
        EXPECT_EQ(lines[0].rfind("blockmig: error: ", 0), 0u) << r.out;
        EXPECT_NE(lines[0].find(c.needle), std::string::npos) << r.out;
        EXPECT_TRUE(block_jobs(*guest).empty());
        EXPECT_EQ(node_names(*guest), nodes_before);
        EXPECT_EQ(entries_of(targets.path()), targets_before);
        EXPECT_EQ(entries_of(dir.path()), dir_before);
    }
    EXPECT_EQ(fs::file_size(existing), existing_size) << "an existing volume must not be touched";
    EXPECT_EQ(fs::last_write_time(existing), existing_time);
    EXPECT_NE(device_file(*guest, "disk0").find(source.string()), std::string::npos);
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
    VerifyReport v = pause_and_verify(*guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(Move, AutoCopyModeConvergesWhenGuestOutwritesTheBandwidthCap) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 8192;  // 32 MiB rewritten over and over
    TempDir dir("move-heavy");
    const fs::path source = dir / "heavy.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    // The stamped 32 MiB hold data from the start, so the disk's data does
    // not grow during the move and "copied once" has a fixed yardstick.
    run_ok({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 32M", source.string()});
    // A second QMP monitor for the test to watch the job while blockmig
    // holds the first one (a QMP socket serves one client at a time).
    const fs::path watch_socket = dir / "watch.sock";
    auto guest = std::make_unique<Guest>(
        GuestConfig{.disks = {{"disk0", source, "qcow2"}},
                    .extra_args = {"-qmp", "unix:" + watch_socket.string() + ",server=on,wait=off"},
                    .stamp_blocks = k_blocks});
    ASSERT_TRUE(guest->wait_for_line("GUEST-UP", 120s)) << guest->console();
    ASSERT_TRUE(guest->wait_for_ack("vda", 1, 120s)) << guest->console();

    // The premise: the guest dirties its disk faster than the 1 MiB/s cap.
    auto a = guest->last_ack("vda");
    std::this_thread::sleep_for(3s);
    auto b = guest->last_ack("vda");
    const double rate =
        double(ack_position(*b, k_blocks) - ack_position(*a, k_blocks)) * k_block / 3.0 / k_mib;
    std::cout << "[ move ] guest write rate " << rate << " MiB/s\n";
    ASSERT_GT(rate, 2.0) << "guest writes too slowly for this test to mean anything";

    // QEMU >= 8.2 can switch a running mirror (block-job-change); blockmig
    // detects it from the schema, the test knows it from the version.
    const json version = qmp_return(*guest, R"({"execute":"query-version"})")["qemu"];
    const int major = version.value("major", 0), minor = version.value("minor", 0);
    const bool in_place = major > 8 || (major == 8 && minor >= 2);
    const std::uint64_t data = allocated_bytes(source);
    ASSERT_GE(data, 32 * k_mib);

    // Watched from outside on the second monitor: QEMU announces every job it
    // creates (JOB_STATUS_CHANGE "created"); a mirror switched in place is
    // one job, a restarted one is two.
    std::atomic<bool> moving{true};
    int job_restarts = 0, samples = 0;
    QmpWatch watch(watch_socket);
    std::thread watcher([&] {
        while (moving) {
            try {
                (void)watch.query_block_jobs();  // also collects the job events
            } catch (const std::exception&) {
                return;  // QEMU went away: the assertions below will say so
            }
            ++samples;
            std::this_thread::sleep_for(100ms);
        }
    });
    const fs::path target = dir / "heavy-target.qcow2";
    const auto start = Clock::now();
    auto r = blockmig_cli_split(
        {"--output", "json", "move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0",
         "--to", target.string(), "--bandwidth", "1", "--copy-mode", "auto", "--timeout", "500"},
        dir.path());
    moving = false;
    watcher.join();
    (void)watch.query_block_jobs();  // events up to the end
    job_restarts = watch.jobs_created() - 1;
    std::cout << "[ move ] write-heavy move took " << seconds_since(start) << ", mirror restarted "
              << job_restarts << " times (" << samples << " samples)\n";
    EXPECT_GT(samples, 50) << "the watcher did not see the job while it ran";
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    auto events = json_lines(r.out);
    auto switches = events_named(events, "copy-mode");
    ASSERT_FALSE(switches.empty()) << "no copy-mode event: " << r.out;
    EXPECT_EQ(switches[0].value("mode", ""), "write-blocking") << switches[0].dump();
    EXPECT_EQ(switches[0].value("disk", ""), "disk0") << switches[0].dump();
    EXPECT_EQ(switches[0].value("how", ""), in_place ? "in-place" : "restart")
        << "QEMU " << version.dump() << ": " << switches[0].dump();
    EXPECT_FALSE(events_named(events, "pivoted").empty()) << r.out;
    auto done = events_named(events, "done");
    ASSERT_EQ(done.size(), 1u) << r.out;
    const json moved = done[0]["disks"][0];
    const std::uint64_t copied = moved.value("bytes_copied", std::uint64_t{0});
    const std::uint64_t forwarded = moved.value("guest_bytes_forwarded", std::uint64_t{0});
    std::cout << "[ move ] QEMU " << major << "." << minor << ": mirror wrote " << copied / k_mib
              << " MiB for " << data / k_mib << " MiB data; the guest wrote " << forwarded / k_mib
              << " MiB while write-blocking\n";
    EXPECT_EQ(moved.value("switched_in_place", !in_place), in_place) << moved.dump();
    EXPECT_GT(copied, 0u) << moved.dump();
    if (in_place) {
        // One job from start to pivot, and nothing copied twice: the mirror
        // wrote the data once plus what the guest wrote meanwhile, no more.
        EXPECT_EQ(job_restarts, 0);
        EXPECT_GT(forwarded, 0u) << moved.dump();
        EXPECT_LT(copied, (data + forwarded) * 12 / 10) << moved.dump();
    } else {
        EXPECT_EQ(job_restarts, 1);
    }
    EXPECT_NE(device_file(*guest, "disk0").find(target.string()), std::string::npos);
    std::this_thread::sleep_for(1s);
    const auto gap = guest->max_heartbeat_gap(start);
    std::cout << "[ move ] max heartbeat gap " << gap.count() << " ms\n";
    EXPECT_LT(gap, 1000ms);

    VerifyReport v = pause_and_verify(*guest, target.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(Move, JsonOutputIsOneObjectPerLineWithProgressAndDone) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-json");
    const fs::path source = dir / "j.raw";
    run_ok({"truncate", "-s", "64M", source.string()});
    run_ok({"qemu-io", "-f", "raw", "-c", "write -P 0x5a 16M 32M", source.string()});
    auto guest = boot_writing_guest(source, "raw", k_blocks);
    const fs::path target = dir / "j-target.raw";
    // 8 MiB/s over ~48 MiB of data: several seconds, so progress is reported.
    auto r = blockmig_cli_split(
        {"--output", "json", "move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0",
         "--to", target.string(), "--bandwidth", "8", "--timeout", "300"},
        dir.path());
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    auto events = json_lines(r.out);
    ASSERT_FALSE(events.empty()) << r.out;

    auto progress = events_named(events, "progress");
    ASSERT_FALSE(progress.empty()) << r.out;
    for (const auto& p : progress) {
        ASSERT_TRUE(p.contains("bytes") && p["bytes"].is_number_unsigned()) << p.dump();
        ASSERT_TRUE(p.contains("total") && p["total"].is_number_unsigned()) << p.dump();
        ASSERT_TRUE(p.contains("rate") && p["rate"].is_number()) << p.dump();
        EXPECT_LE(p["bytes"].get<std::uint64_t>(), p["total"].get<std::uint64_t>()) << p.dump();
        EXPECT_EQ(p.value("disk", ""), "disk0") << p.dump();
    }
    EXPECT_TRUE(std::any_of(progress.begin(), progress.end(), [](const json& p) {
        return p["bytes"].get<std::uint64_t>() > 0;
    })) << r.out;
    EXPECT_TRUE(std::any_of(progress.begin(), progress.end(), [](const json& p) {
        return p["rate"].get<double>() > 0;
    })) << r.out;

    auto pivoted = events_named(events, "pivoted");
    ASSERT_EQ(pivoted.size(), 1u) << r.out;
    EXPECT_NE(pivoted[0].value("target", "").find(target.string()), std::string::npos);

    const json& done = events.back();
    ASSERT_EQ(done.value("event", ""), "done") << "the last line must be the done event: " << r.out;
    ASSERT_TRUE(done.contains("disks") && done["disks"].size() == 1) << done.dump();
    const json& d = done["disks"][0];
    EXPECT_EQ(d.value("disk", ""), "disk0");
    EXPECT_NE(d.value("source", "").find(source.string()), std::string::npos) << d.dump();
    EXPECT_NE(d.value("target", "").find(target.string()), std::string::npos) << d.dump();
    ASSERT_TRUE(d["source_allocated"].is_number_unsigned() &&
                d["target_allocated"].is_number_unsigned())
        << d.dump();
    // The guest keeps writing after the pivot, so the file may only have grown since.
    EXPECT_GE(d["source_allocated"].get<std::uint64_t>(), 32 * k_mib) << d.dump();
    EXPECT_GE(d["target_allocated"].get<std::uint64_t>(), 32 * k_mib) << d.dump();
    EXPECT_LE(d["target_allocated"].get<std::uint64_t>(), allocated_bytes(target)) << d.dump();
    EXPECT_EQ(events_named(events, "done").size(), 1u);

    VerifyReport v = pause_and_verify(*guest, target.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(Move, InterruptBeforePivotRollsBackAndDeletesTheTarget) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-int");
    const fs::path source = dir / "i.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "256M"});
    run_ok({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 32M 128M", source.string()});
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    const auto nodes_before = node_names(*guest);
    const std::string file_before = device_file(*guest, "disk0");
    const fs::path target = dir / "i-target.qcow2";
    const std::string qmp = guest->qmp_socket().string();

    BackgroundCli move({"move", "--qmp", qmp, "--disk", "disk0", "--to", target.string(),
                        "--bandwidth", "4", "--timeout", "300"},
                       qmp);
    const auto deadline = Clock::now() + 60s;
    while (Clock::now() < deadline && !move.wait(0ms) &&
           !(fs::exists(target) && allocated_bytes(target) > 4 * k_mib))
        std::this_thread::sleep_for(100ms);
    ASSERT_FALSE(move.wait(0ms)) << "finished before it could be interrupted: "
                                 << move.result().out;
    ASSERT_TRUE(fs::exists(target)) << "the copy never started";
    for (int pid : processes_running(BLOCKMIG_BINARY, qmp)) kill(pid, SIGINT);  // Ctrl-C
    ASSERT_TRUE(move.wait(30s)) << "blockmig did not stop within 30 s of SIGINT";
    const CommandResult& r = move.result();
    EXPECT_NE(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("blockmig: error: "), std::string::npos) << r.out;

    EXPECT_FALSE(fs::exists(target)) << "the volume blockmig created must be deleted";
    EXPECT_EQ(jobs_left(), 0) << "Ctrl-C rolled back: no job needs recovery";
    EXPECT_TRUE(block_jobs(*guest).empty()) << block_jobs(*guest).dump();
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_EQ(device_file(*guest, "disk0"), file_before);
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
    EXPECT_LT(guest->max_heartbeat_gap(move.started()), 1000ms);
    VerifyReport v = pause_and_verify(*guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(Move, DiskAlreadyInAJobIsRefused) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-busy");
    const fs::path source = dir / "busy.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    // Someone else's job on the disk: a mirror crawling at 64 KiB/s.
    const fs::path other = dir / "other.qcow2";
    std::string reply = guest->qmp(
        R"({"execute":"drive-mirror","arguments":{"job-id":"theirs","device":"disk0-fmt","target":")" +
        other.string() +
        R"(","format":"qcow2","sync":"full","mode":"absolute-paths","speed":65536}})");
    ASSERT_NE(reply.find("\"return\""), std::string::npos) << reply;
    const auto nodes_before = node_names(*guest);
    const auto dir_before = entries_of(dir.path());

    auto r = blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to",
                           (dir / "mine.qcow2").string(), "--timeout", "60"});
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "a refused or failed move leaves no job";
    // Refused in pre-flight: one line naming the job, nothing tried first.
    auto lines = lines_of(r.out);
    EXPECT_EQ(lines.size(), 1u) << r.out;
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines.back().rfind("blockmig: error: ", 0), 0u) << r.out;
    EXPECT_NE(lines.back().find("job"), std::string::npos) << r.out;
    EXPECT_EQ(entries_of(dir.path()), dir_before);
    EXPECT_EQ(node_names(*guest), nodes_before);
    auto jobs = block_jobs(*guest);
    ASSERT_EQ(jobs.size(), 1u) << jobs.dump();
    EXPECT_EQ(jobs[0].value("device", ""), "theirs") << "the other job must be left alone";
    guest->qmp(R"({"execute":"block-job-cancel","arguments":{"device":"theirs","force":true}})");
}

}  // namespace
