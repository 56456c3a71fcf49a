// `migrate` against two fake QEMUs behind the scripted QMP transport: the
// pre-flight refusals (nothing touched), the phase logic of a live run
// (success, destination lost, timeout) and recovery from a journal.
#include "blockmig/migrate.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "jobs/journal.hpp"
#include "jobs_test_util.hpp"
#include "migrate/launch.hpp"
#include "migrate/preflight.hpp"
#include "migrate/recover.hpp"
#include "migrate/settle.hpp"
#include "qmp/testing/scripted_transport.hpp"

using namespace blockmig;
using namespace std::chrono_literals;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

// One QEMU of a migration, as far as blockmig talks to it.
struct FakeSide {
    // stalls: every query-migrate sees one more pass leaving 64 MiB (a guest
    // dirtying RAM as fast as it is sent) until `stop` pauses the guest,
    // then pre-switchover (or failed with fail_after_stop);
    // postcopy: stalls, then pre-switchover once migrate-start-postcopy
    // came, then postcopy-active (the destination runs) until completed;
    // postcopy_fails: the link dies in post-copy (QEMU pauses both sides).
    enum class Ram { reaches_switchover, fails, never_ends, stalls, postcopy, postcopy_fails };

    std::mutex mutex;
    std::string run_state = "running";
    std::string migration = "none";
    std::string machine = "pc-i440fx-7.2-machine";
    std::uint64_t memory = 256 << 20;
    std::map<std::string, std::string> disks;  // device id -> filename
    std::map<std::string, bool> caps{{"events", false},
                                     {"pause-before-switchover", false},
                                     {"late-block-activate", false},
                                     {"auto-converge", false},
                                     {"postcopy-ram", false}};
    json params{
        {"max-bandwidth", 134217728}, {"downtime-limit", 300}, {"cpu-throttle-increment", 10}};
    std::vector<std::string> commands;
    std::uint64_t disk_size = 4096;  // every disk's virtual size
    // A disk listed here is a qcow2 overlay over this backing file
    // (--copy-storage inc), occupying `allocated` host bytes.
    std::map<std::string, std::string> backings;
    std::uint64_t allocated = 200704;  // what qemu-img's fresh 1 GiB overlay occupies
    // What --copy-storage all leaves in a QEMU: mirror jobs and NBD client
    // nodes on the source, exports and the NBD server on the destination.
    std::set<std::string> block_jobs, nodes, exports;
    bool nbd_server = false;
    std::set<std::string> objects;  // object-add ids (--tls-dir)
    json schema;                    // query-qmp-schema's answer (--tls-dir)
    std::string failing;            // a command this QEMU answers with an error
    Ram ram = Ram::reaches_switchover;
    std::uint64_t passes = 1;      // dirty-sync-count while the RAM stalls
    bool fail_after_stop = false;  // stalls: the migration fails once the guest is paused
    // postcopy: each pass leaves 11 % less than the one before (pre-copy
    // converges slowly instead of stalling; still shrinking after 80 passes).
    bool converging = false;
    static std::uint64_t converged_left(std::uint64_t passes) {
        return static_cast<std::uint64_t>(64.0 * (1 << 20) * std::pow(0.89, passes));
    }
    bool resume_on_cancel = true;  // QEMU resumes a source whose migration ended
    // Post-copy recovery: how many `migrate` resume=true fail to connect
    // (the link still down) before one gets through; -1: never.
    int resume_failures = 0;
    bool dies_when_paused = false;  // destination: its QEMU exits once post-copy pauses
    bool dead = false;              // every command ends the connection
    std::string dies_on;            // a command on which this QEMU exits (no reply)
    std::string listening;          // destination: migrate-recover's URI
    FakeSide* peer = nullptr;       // the destination, for the source
    // Set: each query-migrate of a pre-copy ("active") moves it on one
    // second, and migrate-start-postcopy's arrival is noted on it.
    FakeClock* clock = nullptr;
    Clock::time_point postcopy_requested_at{};
    blockmig::qmp::testing::Script* script = nullptr;

    bool got(const std::string& command, const std::string& arg = "") {
        std::lock_guard lock(mutex);
        return sent(command, arg);
    }
    // Position of the first `command` sent (with `arg` in its arguments),
    // or -1 (order checks).
    int index_of(const std::string& command, const std::string& arg = "") {
        std::lock_guard lock(mutex);
        for (std::size_t i = 0; i < commands.size(); ++i)
            if (commands[i].starts_with(command + " ") &&
                commands[i].find(arg) != std::string::npos)
                return static_cast<int>(i);
        return -1;
    }
    // REQUIRES: mutex held.
    bool sent(const std::string& command, const std::string& arg = "") const {
        for (const auto& c : commands)
            if (c.starts_with(command + " ") && c.find(arg) != std::string::npos) return true;
        return false;
    }

    void event(const std::string& status) {
        migration = status;
        script->push_event("MIGRATION", {{"status", status}});
    }

    void respond(const json& m, blockmig::qmp::testing::Script& s) {
        std::unique_lock lock(mutex);
        const std::string cmd = m.value("execute", m.value("exec-oob", ""));
        const json args = m.value("arguments", json::object());
        commands.push_back(cmd + " " + args.dump());
        if (cmd == dies_on) dead = true;
        if (dead) return s.push_disconnect();
        auto reply = [&](json v) { s.push({{"return", v}, {"id", m["id"]}}); };
        if (cmd == "query-uuid") return reply({{"UUID", "00000000-0000-0000-0000-000000000000"}});
        if (cmd == "query-name") return reply(json::object());
        if (cmd == "query-status")
            return reply({{"status", run_state}, {"running", run_state == "running"}});
        if (cmd == "query-migrate") {
            json r{{"status", migration}};
            const bool stalling =
                migration == "active" &&
                (ram == Ram::stalls || ram == Ram::postcopy || ram == Ram::postcopy_fails);
            if (stalling) ++passes;
            if (clock && migration == "active") clock->advance(1s);
            if (migration != "none")
                r["ram"] = {{"transferred", passes << 20},
                            {"remaining", !stalling    ? std::uint64_t{2} << 20
                                          : converging ? converged_left(passes)
                                                       : std::uint64_t{64} << 20},
                            {"total", 3 << 20},
                            {"duplicate", 0},
                            {"normal", 256},
                            {"dirty-pages-rate", 0},
                            {"dirty-sync-count", stalling ? passes : 2},
                            {"page-size", 4096},
                            {"mbps", 80.0}};
            if (migration == "completed") r["downtime"] = 42;
            if (migration == "failed") r["error-desc"] = "Connection reset by peer";
            r["socket-address"] =
                json::array({{{"type", "inet"}, {"host", "10.0.0.2"}, {"port", "4444"}}});
            return reply(r);
        }
        if (cmd == "qom-get") return reply(machine);
        if (cmd == "qom-list") {
            json out = json::array();
            if (args.value("path", "") == "/machine/peripheral")
                for (auto& [id, file] : disks)
                    out.push_back({{"name", id}, {"type", "child<virtio-blk-pci>"}});
            return reply(out);
        }
        if (cmd == "query-memory-size-summary") return reply({{"base-memory", memory}});
        if (cmd == "query-block") {
            json out = json::array();
            for (auto& [id, file] : disks) {
                const bool overlay = backings.contains(id);
                json image{{"filename", file},
                           {"format", overlay ? "qcow2" : "raw"},
                           {"virtual-size", disk_size}};
                if (overlay) {
                    image["actual-size"] = allocated;
                    image["cluster-size"] = 65536;
                    image["backing-filename"] = backings[id];
                    image["backing-image"] = {
                        {"filename", backings[id]}, {"format", "raw"}, {"virtual-size", disk_size}};
                }
                out.push_back(
                    {{"device", ""},
                     {"qdev", "/machine/peripheral/" + id + "/virtio-backend"},
                     {"locked", false},
                     {"removable", false},
                     {"inserted",
                      {{"node-name", id + "-fmt"},
                       {"drv", overlay ? "qcow2" : "raw"},
                       {"ro", false},
                       {"encrypted", false},
                       {"file", file},
                       {"cache", {{"writeback", true}, {"direct", true}, {"no-flush", false}}},
                       {"backing_file_depth", overlay ? 1 : 0},
                       {"image", image}}}});
            }
            return reply(out);
        }
        if (cmd == "query-block-jobs") {
            json out = json::array();
            for (const auto& id : block_jobs)
                out.push_back({{"type", "mirror"},
                               {"device", id},
                               {"id", id},
                               {"len", 4096},
                               {"offset", 4096},
                               {"busy", false},
                               {"paused", false},
                               {"speed", 0},
                               {"io-status", "ok"},
                               {"ready", true},
                               {"status", "ready"}});
            return reply(out);
        }
        auto error = [&](std::string desc) {
            s.push({{"error", {{"class", "GenericError"}, {"desc", desc}}}, {"id", m["id"]}});
        };
        if (cmd == failing) return error("injected failure");
        if (cmd == "block-job-cancel") {
            if (!block_jobs.erase(args.value("device", "")))
                return error("Block job '" + args.value("device", "") + "' not found");
            return reply(json::object());
        }
        if (cmd == "blockdev-del") {
            if (!nodes.erase(args.value("node-name", "")))
                return error("Failed to find node with node-name='" + args.value("node-name", "") +
                             "'");
            return reply(json::object());
        }
        if (cmd == "block-export-del") {
            if (!exports.erase(args.value("id", "")))
                return error("Export '" + args.value("id", "") + "' is not found");
            return reply(json::object());
        }
        if (cmd == "nbd-server-stop") {
            if (!nbd_server) return error("NBD server not running");
            nbd_server = false;
            return reply(json::object());
        }
        if (cmd == "object-add") {
            objects.insert(args.value("id", ""));
            return reply(json::object());
        }
        if (cmd == "object-del") {
            if (!objects.erase(args.value("id", "")))
                return error("object '" + args.value("id", "") + "' not found");
            return reply(json::object());
        }
        if (cmd == "query-qmp-schema" && schema.is_array()) return reply(schema);
        if (cmd == "query-named-block-nodes") return reply(json::array());
        if (cmd == "query-version")
            return reply({{"qemu", {{"major", 7}, {"minor", 2}, {"micro", 0}}}, {"package", ""}});
        if (cmd == "query-migrate-capabilities") {
            json out = json::array();
            for (auto& [c, on] : caps) out.push_back({{"capability", c}, {"state", on}});
            return reply(out);
        }
        if (cmd == "query-migrate-parameters") return reply(params);
        if (cmd == "migrate-set-capabilities") {
            for (const auto& c : args["capabilities"]) caps[c["capability"]] = c["state"];
            return reply(json::object());
        }
        if (cmd == "migrate-set-parameters") {
            for (auto it = args.begin(); it != args.end(); ++it) params[it.key()] = *it;
            return reply(json::object());
        }
        if (cmd == "migrate-incoming") {
            run_state = "inmigrate";
            migration = "setup";
            return reply(json::object());
        }
        if (cmd == "migrate-pause") {
            if (migration != "postcopy-active")
                return error("migrate-pause is currently only supported during postcopy-active");
            event("postcopy-paused");
            return reply(json::object());
        }
        if (cmd == "migrate-recover") {
            if (migration != "postcopy-paused")
                return error("Migrate recover can only be run when postcopy is paused.");
            listening = args.value("uri", "");
            return reply(json::object());
        }
        if (cmd == "migrate" && args.value("resume", false)) {
            if (migration != "postcopy-paused")
                return error("Cannot resume if there is no paused migration");
            reply(json::object());
            event("postcopy-recover-setup");
            if (resume_failures != 0) {
                if (resume_failures > 0) --resume_failures;
                event("postcopy-paused");  // connect: Network is unreachable
                return;
            }
            lock.unlock();
            std::string peer_uri;
            {
                std::lock_guard peer_lock(peer->mutex);
                peer_uri = peer->listening;
            }
            std::lock_guard relock(mutex);
            if (peer_uri != args.value("uri", "")) {
                event("postcopy-paused");  // connection refused
                return;
            }
            event("postcopy-recover");
            event("postcopy-active");
            run_state = "postmigrate";
            event("completed");
            std::lock_guard peer_lock(peer->mutex);
            peer->event("completed");
            return;
        }
        if (cmd == "migrate") {
            reply(json::object());
            event("setup");
            event("active");
            if (ram == Ram::fails) {
                event("failed");
            } else if (ram == Ram::reaches_switchover) {
                run_state = "finish-migrate";
                event("pre-switchover");
            }
            return;
        }
        if (cmd == "migrate-start-postcopy") {
            if (clock) postcopy_requested_at = clock->now();
            reply(json::object());
            run_state = "finish-migrate";
            event("pre-switchover");
            return;
        }
        if (cmd == "stop") {
            run_state = "paused";
            reply(json::object());
            // A paused guest dirties nothing: the rest converges.
            if (ram == Ram::stalls && migration == "active")
                event(fail_after_stop ? "failed" : "pre-switchover");
            return;
        }
        if (cmd == "migrate-continue" && sent("migrate-start-postcopy")) {
            reply(json::object());
            event("postcopy-active");
            lock.unlock();
            {
                std::lock_guard peer_lock(peer->mutex);
                peer->run_state = "running";
                peer->migration = "postcopy-active";
            }
            std::lock_guard relock(mutex);
            if (ram == Ram::postcopy_fails) {
                event("postcopy-paused");
                std::lock_guard peer_lock(peer->mutex);
                peer->migration = "postcopy-paused";
                peer->dead = peer->dies_when_paused;
                return;
            }
            run_state = "postmigrate";
            event("completed");
            std::lock_guard peer_lock(peer->mutex);
            peer->event("completed");
            return;
        }
        if (cmd == "migrate-continue") {
            reply(json::object());
            run_state = "postmigrate";
            event("device");
            event("completed");
            lock.unlock();
            std::lock_guard peer_lock(peer->mutex);
            peer->run_state = "paused";  // -S / late-block-activate: waits for cont
            peer->event("completed");
            return;
        }
        if (cmd == "migrate_cancel") {
            reply(json::object());
            event("cancelled");
            if (resume_on_cancel) run_state = "running";
            return;
        }
        if (cmd == "cont") {
            run_state = "running";
            return reply(json::object());
        }
        if (cmd == "quit") {
            reply(json::object());
            s.push_disconnect();
            return;
        }
        s.push({{"error", {{"class", "CommandNotFound"}, {"desc", cmd}}}, {"id", m["id"]}});
    }
};

struct FakeQemu {
    std::shared_ptr<blockmig::qmp::testing::Script> script =
        std::make_shared<blockmig::qmp::testing::Script>();
    std::shared_ptr<FakeSide> side = std::make_shared<FakeSide>();
    std::unique_ptr<qmp::Client> client;

    void connect(int pid) {
        script->push_greeting();
        script->expect("qmp_capabilities").reply(json::object());
        script->set_peer_pid(pid);
        side->script = script.get();
        auto s = side;
        script->set_responder([s](const json& m, auto& sc) { s->respond(m, sc); });
        qmp::ConnectOptions options;
        options.default_timeout = 500ms;
        auto c = qmp::Client::connect(std::make_unique<qmp::testing::ScriptedTransport>(script),
                                      options);
        ASSERT_TRUE(c) << c.error().message;
        client = std::move(*c);
    }
};

class MigrateTest : public ::testing::Test {
  protected:
    void SetUp() override {
        fs::create_directories(dir);
        std::ofstream(disk) << "disk";
        src.side->disks["disk0"] = disk.string();
        dst.side->disks["disk0"] = disk.string();
        dst.side->run_state = "inmigrate";
        src.side->peer = dst.side.get();
        // Two distinct local processes, so file identity can be proven.
        src.connect(getpid());
        dst.connect(getppid());
        options.src_qmp = "/run/src.qmp";
        options.dst_qmp = "/run/dst.qmp";
        options.dst_addr = "10.0.0.2";
        options.jobs_dir = dir / "jobs";
        options.qmp_timeout = 500ms;
        options.switchover_timeout = 2s;
        options.progress_interval = 20ms;
    }
    void TearDown() override { fs::remove_all(dir); }

    Result<MigrateReport> migrate() {
        return run_migrate(*src.client, *dst.client, options, *progress, cancel);
    }
    std::size_t journals() {
        auto l = jobs::list_jobs(options.jobs_dir);
        return l ? l->size() : 999;
    }
    // A refusal before anything was touched: both QEMUs were only asked
    // (query-*, qom-*), and no journal exists.
    void expect_untouched() {
        for (auto* side : {src.side.get(), dst.side.get()})
            for (const auto& c : side->commands)
                EXPECT_TRUE(c.starts_with("query") || c.starts_with("qom")) << c;
        EXPECT_EQ(journals(), 0u);
    }

    fs::path dir = jobs_test::temp_dir("migrate");
    fs::path disk = dir / "shared.raw";
    FakeQemu src, dst;
    MigrateOptions options;
    std::unique_ptr<ProgressSink> progress = make_null_progress();
    std::atomic<bool> cancel{false};
};

TEST_F(MigrateTest, SharedStorageMigrationEndsWithTheGuestOnTheDestination) {
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    auto& s = *src.side;
    auto& d = *dst.side;
    EXPECT_TRUE(d.got("migrate-set-capabilities", R"("events")"));
    EXPECT_TRUE(d.got("migrate-set-capabilities", "late-block-activate"));
    EXPECT_TRUE(s.got("migrate-set-capabilities", "pause-before-switchover"));
    // Unlimited is set explicitly: never QEMU's 128 MiB/s default by accident.
    EXPECT_TRUE(s.got("migrate-set-parameters", R"("max-bandwidth":1099511627776)"));
    EXPECT_TRUE(s.got("migrate-set-parameters", R"("downtime-limit":100)"))
        << "minimal-downtime starts low";
    EXPECT_TRUE(d.got("migrate-incoming", "tcp:10.0.0.2:0"));
    EXPECT_TRUE(s.got("migrate", "tcp:10.0.0.2:4444")) << "the port QEMU picked";
    EXPECT_TRUE(s.got("migrate-continue", "pre-switchover"));
    EXPECT_TRUE(d.got("cont"));
    EXPECT_TRUE(s.got("quit"));
    EXPECT_FALSE(s.got("cont")) << "the source is never resumed once the destination has it";
    EXPECT_EQ(r->downtime_ms, 42);
    EXPECT_TRUE(r->source_quit);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MigrateTest, BandwidthAndKeepSourceAreHonoured) {
    options.bandwidth = 8 << 20;
    options.keep_source = true;
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(src.side->got("migrate-set-parameters", R"("max-bandwidth":8388608)"));
    EXPECT_FALSE(src.side->got("quit"));
    EXPECT_FALSE(r->source_quit);
}

TEST_F(MigrateTest, DefaultPolicyStepsTheDowntimeLimitThenAbortsAtTheTimeout) {
    src.side->ram = FakeSide::Ram::stalls;
    src.side->params["downtime-limit"] = 500;  // the source's own setting before the job
    options.max_downtime = 300ms;
    options.timeout = 1s;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("phase ram: timed out after 1 s with 64.0 MiB of RAM still "
                                     "to send"),
              std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("keeps running on the source"), std::string::npos);
    auto& s = *src.side;
    const int start = s.index_of("migrate-set-parameters", R"("downtime-limit":100)");
    const int step1 = s.index_of("migrate-set-parameters", R"({"downtime-limit":200})");
    const int step2 = s.index_of("migrate-set-parameters", R"({"downtime-limit":300})");
    ASSERT_GE(start, 0) << "starts at 100 ms";
    EXPECT_LT(s.index_of("migrate", "tcp:"), step1);
    EXPECT_LT(start, step1);
    EXPECT_LT(step1, step2) << "doubled up to --max-downtime";
    EXPECT_LT(step2, s.index_of("migrate_cancel"));
    EXPECT_FALSE(s.got("migrate-set-parameters", R"("downtime-limit":600)")) << "never above it";
    EXPECT_FALSE(s.got("migrate-set-capabilities", "auto-converge")) << "the guest is not slowed";
    EXPECT_FALSE(s.got("stop"));
    EXPECT_EQ(s.run_state, "running");
    EXPECT_EQ(s.params["downtime-limit"], 500) << "restored as it was";
    EXPECT_EQ(journals(), 0u);
}

// The live view's downtime limit is the one blockmig set (the policy's
// steps), not read back from QEMU: sampling costs one query-migrate.
TEST_F(MigrateTest, RamSamplesShowTheDowntimeLimitThePolicySetWithoutAskingQemu) {
    struct Limits : ProgressSink {
        std::mutex mutex;
        std::vector<std::int64_t> seen;
        void progress(const ProgressSample&) override {}
        void event(const std::string& name, const json& fields, const std::string&) override {
            std::lock_guard lock(mutex);
            if (name == "ram") seen.push_back(fields.value("downtime_limit_ms", std::int64_t{0}));
        }
    };
    auto limits = std::make_unique<Limits>();
    auto& seen = limits->seen;
    progress = std::move(limits);
    src.side->ram = FakeSide::Ram::stalls;
    options.max_downtime = 300ms;
    options.timeout = 1s;
    ASSERT_FALSE(migrate());
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.front(), 100) << "the limit configure() set";
    EXPECT_EQ(seen.back(), 300) << "raised by the policy up to --max-downtime";
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
    EXPECT_NE(std::find(seen.begin(), seen.end(), 200), seen.end());
    auto& s = *src.side;
    std::lock_guard lock(s.mutex);
    const auto from = std::find_if(s.commands.begin(), s.commands.end(),
                                   [](const auto& c) { return c.starts_with("migrate {"); });
    const auto to = std::find_if(from, s.commands.end(),
                                 [](const auto& c) { return c.starts_with("migrate_cancel"); });
    ASSERT_NE(from, s.commands.end());
    EXPECT_EQ(
        std::count_if(from, to,
                      [](const auto& c) { return c.starts_with("query-migrate-parameters"); }),
        0)
        << "no query-migrate-parameters while the RAM moves";
    EXPECT_GT(
        std::count_if(from, to, [](const auto& c) { return c.starts_with("query-migrate "); }), 3);
}

TEST_F(MigrateTest, PostcopyStartsWhenPreCopyStallsAndEndsOnTheDestination) {
    options.policy = MigratePolicy::postcopy;
    src.side->ram = FakeSide::Ram::postcopy;
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    for (auto* side : {src.side.get(), dst.side.get()})
        EXPECT_TRUE(side->got("migrate-set-capabilities", "postcopy-ram"));
    EXPECT_TRUE(src.side->got("migrate-start-postcopy"));
    EXPECT_LT(src.side->index_of("migrate-start-postcopy"), src.side->index_of("migrate-continue"));
    EXPECT_TRUE(r->postcopy);
    ASSERT_FALSE(r->actions.empty());
    EXPECT_NE(r->actions.front().find("pre-copy stalled"), std::string::npos) << r->actions.front();
    EXPECT_NE(r->actions.front().find("requested post-copy"), std::string::npos);
    EXPECT_GE(src.side->passes, 4u) << "not before two passes stalled after the first";
    EXPECT_TRUE(src.side->got("quit"));
    EXPECT_FALSE(src.side->got("cont"));
    EXPECT_EQ(journals(), 0u);
}

// With --postcopy-after, post-copy starts once pre-copy ran that long (each
// query-migrate of the fake moves the fake clock on one second; the fake's
// pre-copy never stalls), not before.
class MigratePostcopyAfter : public MigrateTest {
  protected:
    void migrates_switching_at(std::chrono::seconds after) {
        FakeClock clock;
        options.clock = &clock;
        src.side->clock = &clock;
        options.policy = MigratePolicy::postcopy;
        options.postcopy_after = after;
        const auto due = after;
        src.side->ram = FakeSide::Ram::postcopy;
        src.side->converging = true;
        const auto before = clock.now();
        auto r = migrate();
        ASSERT_TRUE(r) << r.error().message;
        for (auto* side : {src.side.get(), dst.side.get()})
            EXPECT_TRUE(side->got("migrate-set-capabilities", "postcopy-ram"));
        ASSERT_TRUE(src.side->got("migrate-start-postcopy"));
        const auto at = src.side->postcopy_requested_at - before;
        EXPECT_GE(at, due) << "not before --postcopy-after";
        EXPECT_LT(at, due + 3s) << "at the first sample once it is due";
        EXPECT_LT(src.side->index_of("migrate-start-postcopy"),
                  src.side->index_of("migrate-continue"));
        EXPECT_TRUE(r->postcopy);
        ASSERT_FALSE(r->actions.empty());
        EXPECT_NE(r->actions.front().find(fmt::format("--postcopy-after {}", due.count())),
                  std::string::npos)
            << r->actions.front();
        EXPECT_NE(r->actions.front().find("requested post-copy"), std::string::npos);
        EXPECT_TRUE(src.side->got("migrate-set-parameters", R"("downtime-limit":300)"));
        EXPECT_FALSE(src.side->got("migrate-set-parameters", R"("downtime-limit":100)"))
            << "post-copy keeps --max-downtime";
        EXPECT_TRUE(src.side->got("quit"));
        EXPECT_FALSE(src.side->got("cont"));
        EXPECT_EQ(journals(), 0u);
    }
};

TEST_F(MigratePostcopyAfter, SwitchesAfterTenSecondsAndEndsOnTheDestination) {
    migrates_switching_at(10s);
}

TEST_F(MigratePostcopyAfter, SwitchesAtTheConfiguredTimeNotBefore) { migrates_switching_at(25s); }

TEST_F(MigratePostcopyAfter, ZeroSwitchesAtTheFirstSample) { migrates_switching_at(0s); }

// The link dies in post-copy (both QEMUs postcopy-paused), stays down for two
// reconnects, then comes back: the destination listens again, the source
// resumes to it, the migration completes forward.
TEST_F(MigrateTest, PausedPostcopyIsRecoveredAndCompletes) {
    FakeClock clock;
    options.clock = &clock;
    options.policy = MigratePolicy::postcopy;
    options.postcopy_after = 0s;  // the fake clock stands still in pre-copy
    options.dst_addr = "10.0.0.2:4444";
    src.side->ram = FakeSide::Ram::postcopy_fails;
    src.side->resume_failures = 2;
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    auto& s = *src.side;
    auto& d = *dst.side;
    // Three rounds, each journaled before it is sent; the first port after --dst-addr's.
    EXPECT_TRUE(d.got("migrate-recover", R"("uri":"tcp:10.0.0.2:4445")"));
    EXPECT_EQ(std::count_if(s.commands.begin(), s.commands.end(),
                            [](const std::string& c) {
                                return c.find(R"("resume":true)") != std::string::npos;
                            }),
              3);
    EXPECT_LT(s.index_of("migrate-pause"), 0) << "QEMU paused it itself";
    EXPECT_TRUE(s.got("migrate", R"("uri":"tcp:10.0.0.2:4445")"));
    EXPECT_FALSE(s.got("cont")) << "the source is never resumed after the switch";
    EXPECT_FALSE(s.got("migrate_cancel"));
    EXPECT_TRUE(s.got("quit")) << "quit once the destination completed";
    EXPECT_TRUE(r->postcopy);
    const auto broke = std::find_if(r->actions.begin(), r->actions.end(), [](const auto& a) {
        return a.starts_with("the link broke during post-copy");
    });
    ASSERT_NE(broke, r->actions.end());
    EXPECT_NE(broke->find("retrying"), std::string::npos) << *broke;
    EXPECT_NE(r->actions.back().find("post-copy recovered after 3 attempts"), std::string::npos)
        << r->actions.back();
    EXPECT_EQ(journals(), 0u);
}

// The link never comes back: retries until the deadline, then one line;
// neither QEMU is stopped, the source never resumed nor quit.
TEST_F(MigrateTest, PostcopyRecoveryEndsAtTheDeadlineWithTheSourceKeptPaused) {
    FakeClock clock;
    options.clock = &clock;
    options.policy = MigratePolicy::postcopy;
    options.postcopy_after = 0s;  // the fake clock stands still in pre-copy
    options.postcopy_recover_timeout = 20s;
    options.postcopy_retry_interval = 2s;
    src.side->ram = FakeSide::Ram::postcopy_fails;
    src.side->resume_failures = -1;
    const auto before = clock.now();
    auto r = migrate();
    ASSERT_FALSE(r);
    const auto& m = r.error().message;
    EXPECT_NE(m.find("the link broke during post-copy and the recovery failed: the link did not "
                     "come back before the deadline"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("the guest's state is split"), std::string::npos) << m;
    EXPECT_NE(m.find("cannot be resumed on the source"), std::string::npos) << m;
    EXPECT_NE(m.find("the source QEMU is kept paused, never quit"), std::string::npos) << m;
    EXPECT_NE(m.find("blockmig recover"), std::string::npos) << m;
    EXPECT_NE(m.find("retries the resume"), std::string::npos) << m;
    EXPECT_GE(clock.now() - before, 20s) << "it kept trying until the deadline";
    EXPECT_LT(clock.now() - before, 30s);
    auto& s = *src.side;
    EXPECT_GE(s.index_of("migrate", R"("resume":true)"), 0);
    EXPECT_FALSE(s.got("cont")) << "the source's RAM is stale: never resumed";
    EXPECT_FALSE(s.got("migrate_cancel"));
    EXPECT_FALSE(s.got("quit")) << "it still holds pages the destination lacks";
    EXPECT_FALSE(dst.side->got("stop")) << "a paused post-copy is left to QEMU";
    EXPECT_EQ(journals(), 1u) << "recover finishes it";

    // Once the link is back, `blockmig recover` resumes it and finishes forward.
    s.resume_failures = 0;
    auto listed = jobs::list_jobs(options.jobs_dir);
    ASSERT_TRUE(listed && listed->size() == 1);
    auto j = jobs::Journal::open(options.jobs_dir, listed->front().job.id);
    ASSERT_TRUE(j) << j.error().message;
    auto rec =
        migrate::recover_migration(*j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(rec) << rec.error().message;
    EXPECT_EQ(rec->disks[0].direction, jobs::Direction::forward) << rec->disks[0].reason;
    ASSERT_FALSE(rec->disks[0].actions.empty());
    EXPECT_NE(rec->disks[0].actions[0].find("post-copy resumed (1 attempt) and completed"),
              std::string::npos)
        << rec->disks[0].actions[0];
    EXPECT_TRUE(s.got("quit"));
    EXPECT_FALSE(s.got("cont"));
    EXPECT_TRUE(rec->journal_removed);
}

// The destination QEMU died with the link: nothing to resume to. One line
// says so; the source is kept paused, never quit nor resumed.
TEST_F(MigrateTest, PostcopyWithTheDestinationGoneEndsWithTheSourceKeptPaused) {
    FakeClock clock;
    options.clock = &clock;
    options.policy = MigratePolicy::postcopy;
    options.postcopy_after = 0s;  // the fake clock stands still in pre-copy
    src.side->ram = FakeSide::Ram::postcopy_fails;
    dst.side->dies_when_paused = true;
    const auto before = clock.now();
    auto r = migrate();
    ASSERT_FALSE(r);
    const auto& m = r.error().message;
    EXPECT_NE(m.find("the recovery failed: the destination QEMU is gone"), std::string::npos) << m;
    EXPECT_NE(m.find("cannot be resumed on the source"), std::string::npos) << m;
    EXPECT_NE(m.find("the source QEMU is kept paused, never quit"), std::string::npos) << m;
    EXPECT_NE(m.find("cannot run anywhere"), std::string::npos) << m;
    EXPECT_LT(clock.now() - before, 10s) << "a QEMU proven gone ends the retries at once";
    EXPECT_FALSE(src.side->got("migrate", R"("resume":true)")) << "nothing listens for it";
    EXPECT_FALSE(src.side->got("cont"));
    EXPECT_FALSE(src.side->got("quit"));
    EXPECT_FALSE(src.side->got("migrate_cancel"));
    EXPECT_EQ(journals(), 1u);

    // `blockmig recover` proves the destination gone (no socket at its
    // address): a definite end, not "wait" forever.
    auto listed = jobs::list_jobs(options.jobs_dir);
    ASSERT_TRUE(listed && listed->size() == 1);
    EXPECT_TRUE(listed->front().job.needs_recovery());
    const std::string id = listed->front().job.id;
    {
        auto j = jobs::Journal::open(options.jobs_dir, id);
        ASSERT_TRUE(j) << j.error().message;
        auto rec = migrate::recover_migration(*j, src.client.get(), dst.client.get(), 500ms,
                                              options.jobs_dir, clock);
        ASSERT_TRUE(rec) << rec.error().message;
        EXPECT_NE(rec->ended.find("the guest was lost in post-copy"), std::string::npos)
            << rec->ended;
        EXPECT_NE(rec->ended.find("the shared volumes"), std::string::npos) << rec->ended;
        EXPECT_EQ(rec->ended.find('\n'), std::string::npos) << "one line";
        EXPECT_FALSE(rec->journal_removed);
    }
    EXPECT_FALSE(src.side->got("cont"));
    EXPECT_FALSE(src.side->got("quit"));
    EXPECT_FALSE(src.side->got("migrate_cancel"));
    listed = jobs::list_jobs(options.jobs_dir);
    ASSERT_TRUE(listed && listed->size() == 1) << "the journal records the end";
    EXPECT_FALSE(listed->front().job.needs_recovery());
    ASSERT_TRUE(listed->front().job.migration);
    EXPECT_EQ(listed->front().job.migration->phase, "lost");
}

TEST_F(MigrateTest, SuspendThrottlesThenPausesTheGuestAndResumesItOnTheDestination) {
    options.policy = MigratePolicy::suspend;
    src.side->ram = FakeSide::Ram::stalls;
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    auto& s = *src.side;
    EXPECT_TRUE(s.got("migrate-set-capabilities", "auto-converge"));
    EXPECT_FALSE(dst.side->got("migrate-set-capabilities", "auto-converge")) << "sender only";
    const int throttle1 = s.index_of("migrate-set-parameters", R"({"cpu-throttle-increment":20})");
    const int throttle2 = s.index_of("migrate-set-parameters", R"({"cpu-throttle-increment":40})");
    ASSERT_GE(throttle1, 0);
    EXPECT_LT(s.index_of("migrate", "tcp:"), throttle1) << "the guest runs while it can";
    EXPECT_LT(throttle1, throttle2);
    EXPECT_LT(throttle2, s.index_of("stop")) << "paused only as the last resort";
    EXPECT_LT(s.index_of("stop"), s.index_of("migrate-continue"));
    EXPECT_TRUE(dst.side->got("cont"));
    EXPECT_FALSE(s.got("cont"));
    ASSERT_EQ(r->actions.size(), 3u);
    EXPECT_NE(r->actions.back().find("paused the guest"), std::string::npos) << r->actions.back();
}

TEST_F(MigrateTest, SuspendedGuestIsResumedOnTheSourceWhenTheMigrationFails) {
    options.policy = MigratePolicy::suspend;
    src.side->ram = FakeSide::Ram::stalls;
    src.side->fail_after_stop = true;
    src.side->resume_on_cancel = false;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("keeps running on the source"), std::string::npos);
    ASSERT_TRUE(src.side->got("stop"));
    EXPECT_LT(src.side->index_of("stop"), src.side->index_of("cont"));
    EXPECT_EQ(src.side->run_state, "running");
    EXPECT_FALSE(dst.side->got("cont"));
}

TEST_F(MigrateTest, TimeoutPerGibScalesWithTheGuestRam) {
    src.side->ram = FakeSide::Ram::never_ends;
    options.timeout_per_gib = 4;  // 256 MiB of RAM: 1 s
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("timed out after 1 s"), std::string::npos)
        << r.error().message;
}

TEST_F(MigrateTest, AMissingCapabilityIsRefusedBeforeAnythingIsTouched) {
    options.policy = MigratePolicy::postcopy;
    dst.side->caps.erase("postcopy-ram");
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("the destination QEMU lacks the migration capability "
                                     "postcopy-ram"),
              std::string::npos)
        << r.error().message;
    EXPECT_FALSE(src.side->got("migrate-set-capabilities"));
    EXPECT_FALSE(dst.side->got("migrate-set-capabilities"));
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MigrateTest, DestinationLostDuringRamLeavesTheGuestOnTheSource) {
    src.side->ram = FakeSide::Ram::fails;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("phase ram"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("Connection reset by peer"), std::string::npos);
    EXPECT_NE(r.error().message.find("keeps running on the source"), std::string::npos);
    EXPECT_EQ(src.side->run_state, "running");
    EXPECT_FALSE(dst.side->got("cont"));
    // The source's settings are back as they were.
    EXPECT_FALSE(src.side->caps["pause-before-switchover"]);
    EXPECT_EQ(src.side->params["max-bandwidth"], 134217728);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MigrateTest, TimeoutCancelsAndResumes) {
    src.side->ram = FakeSide::Ram::never_ends;
    options.timeout = 1s;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("timed out"), std::string::npos) << r.error().message;
    EXPECT_TRUE(src.side->got("migrate_cancel"));
    EXPECT_EQ(src.side->run_state, "running");
    EXPECT_EQ(journals(), 0u);
}

// --report after a failure: the series up to it, the phase, the cause and
// the error line itself; a success or a pre-flight refusal hands none over.
TEST_F(MigrateTest, AFailedRunHandsOverItsReportUpToTheFailure) {
    src.side->ram = FakeSide::Ram::never_ends;
    options.timeout = 1s;
    MigrateReport failed;
    auto r = run_migrate(*src.client, *dst.client, options, *progress, cancel, &failed);
    ASSERT_FALSE(r);
    ASSERT_TRUE(failed.failure);
    EXPECT_EQ(failed.failure->phase, "ram");
    EXPECT_NE(failed.failure->cause.find("timed out"), std::string::npos) << failed.failure->cause;
    EXPECT_EQ(failed.failure->message, r.error().message);
    EXPECT_FALSE(failed.job.empty());
    EXPECT_GE(failed.total, 1s) << "the report runs to the failure (the 1 s timeout)";
    ASSERT_FALSE(failed.timeline.samples.empty());
    const auto& last = failed.timeline.samples.back();
    EXPECT_FALSE(std::isnan(last.ram_remaining)) << "RAM progress up to the failure";
    EXPECT_LE(last.t, failed.total.count() / 1000.0 + 0.001);
    EXPECT_EQ(failed.downtime_ms, -1) << "QEMU's completion figures stay unknown";
    const auto j = blockmig::report_json(failed);
    EXPECT_EQ(j["event"], "failed");
    EXPECT_EQ(j["outcome"], "failed");
    EXPECT_EQ(j["phase"], "ram");
    EXPECT_EQ(j["error"], r.error().message);
    EXPECT_EQ(journals(), 0u);

    MigrateReport none;
    dst.side->run_state = "running";  // a refusal: nothing was touched, nothing to report
    ASSERT_FALSE(run_migrate(*src.client, *dst.client, options, *progress, cancel, &none));
    EXPECT_FALSE(none.failure);
    EXPECT_TRUE(none.job.empty());
}

TEST_F(MigrateTest, ASuccessfulRunHandsOverNoFailedReport) {
    MigrateReport failed;
    auto r = run_migrate(*src.client, *dst.client, options, *progress, cancel, &failed);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(r->failure);
    EXPECT_FALSE(failed.failure);
    EXPECT_EQ(blockmig::report_json(*r)["outcome"], "completed");
    EXPECT_EQ(blockmig::report_json(*r)["event"], "done");
}

TEST_F(MigrateTest, InterruptBeforeSwitchoverCancels) {
    src.side->ram = FakeSide::Ram::never_ends;
    cancel = true;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("interrupted"), std::string::npos);
    EXPECT_TRUE(src.side->got("migrate_cancel"));
}

// --tls-dir: both QEMUs get a credentials object (server on the
// destination), the migration parameters name it; every ending removes the
// objects and leaves no parameter naming one that is gone.
class MigrateTlsTest : public MigrateTest {
  protected:
    void SetUp() override {
        MigrateTest::SetUp();
        fs::create_directories(tls);
        for (const char* f : {"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem",
                              "client-key.pem"})
            std::ofstream(tls / f) << "x";
        const json schema = json::parse(R"([
          {"name": "object-add", "meta-type": "command", "arg-type": "1", "ret-type": "0"},
          {"name": "1", "meta-type": "object", "members": [{"name": "qom-type", "type": "2"}]},
          {"name": "2", "meta-type": "enum", "values": ["tls-creds-x509"]},
          {"name": "migrate-set-parameters", "meta-type": "command", "arg-type": "3", "ret-type": "0"},
          {"name": "3", "meta-type": "object", "members": [{"name": "tls-creds", "type": "str"}]}
        ])");
        for (auto* side : {src.side.get(), dst.side.get()}) {
            side->schema = schema;
            side->params["tls-creds"] = "";
            side->params["tls-hostname"] = "";
        }
        options.tls_dir = tls;
    }
    fs::path tls = dir / "pki";
};

TEST_F(MigrateTlsTest, CredentialsOnBothSidesBeforeTheParametersThenRemoved) {
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    const std::string id = "bm" + r->job + "-tls";
    EXPECT_TRUE(dst.side->got("object-add", R"("endpoint":"server")"));
    EXPECT_TRUE(dst.side->got("object-add", "\"dir\":\"" + tls.string() + "\""));
    EXPECT_TRUE(src.side->got("object-add", R"("endpoint":"client")"));
    EXPECT_TRUE(src.side->got("object-add", R"("verify-peer":true)"));
    EXPECT_LT(dst.side->index_of("object-add"), dst.side->index_of("migrate-set-parameters"));
    EXPECT_LT(src.side->index_of("object-add"), src.side->index_of("migrate-set-parameters"));
    EXPECT_TRUE(dst.side->got("migrate-set-parameters", "\"tls-creds\":\"" + id + "\""));
    EXPECT_TRUE(src.side->got("migrate-set-parameters", "\"tls-creds\":\"" + id + "\""));
    EXPECT_TRUE(src.side->got("migrate-set-parameters", R"("tls-hostname":"10.0.0.2")"));
    // The guest runs on the destination: its credentials are gone and its
    // next migration (outgoing) does not name them.
    EXPECT_TRUE(dst.side->objects.empty());
    EXPECT_EQ(dst.side->params["tls-creds"], "");
    EXPECT_LT(dst.side->index_of("cont"), dst.side->index_of("object-del"));
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MigrateTlsTest, FailureRestoresTheSourceAndRemovesBothObjects) {
    src.side->ram = FakeSide::Ram::fails;
    src.side->params["tls-hostname"] = "earlier.example";
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("keeps running on the source"), std::string::npos)
        << r.error().message;
    EXPECT_TRUE(src.side->got("object-del"));
    EXPECT_TRUE(src.side->objects.empty());
    EXPECT_TRUE(dst.side->objects.empty());
    EXPECT_EQ(src.side->params["tls-creds"], "") << "restored as it was";
    EXPECT_EQ(src.side->params["tls-hostname"], "earlier.example");
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MigrateTlsTest, MissingFilesAndSchemaAreRefusedBeforeAnythingIsTouched) {
    fs::remove(tls / "server-key.pem");
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("server-key.pem"), std::string::npos) << r.error().message;
    std::ofstream(tls / "server-key.pem") << "x";
    dst.side->schema = json::array();
    r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("the destination QEMU lacks the migration parameter "
                                     "tls-creds"),
              std::string::npos)
        << r.error().message;
    for (auto* side : {src.side.get(), dst.side.get()}) {
        EXPECT_FALSE(side->got("object-add"));
        EXPECT_FALSE(side->got("migrate-set-parameters"));
    }
    EXPECT_EQ(journals(), 0u);
}

// A user's destination keeps QEMU's default (it exits after a failed
// incoming migration) even when its schema has exit-on-error.
TEST_F(MigrateTlsTest, AUsersDestinationIsNotAskedToStayUp) {
    dst.side->schema.push_back({{"name", "migrate-incoming"},
                                {"meta-type", "command"},
                                {"arg-type", "9"},
                                {"ret-type", "0"}});
    dst.side->schema.push_back(
        {{"name", "9"},
         {"meta-type", "object"},
         {"members",
          {{{"name", "uri"}, {"type", "str"}}, {{"name", "exit-on-error"}, {"type", "bool"}}}}});
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(dst.side->got("migrate-incoming", "tcp:10.0.0.2:0"));
    EXPECT_FALSE(dst.side->got("migrate-incoming", "exit-on-error"));
}

// A listening unix socket at `path` (a fake QEMU monitor), its fd.
int listen_unix(const fs::path& path, int backlog) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << path;
    EXPECT_EQ(::listen(fd, backlog), 0);
    return fd;
}

// The monitor of a QEMU that is exiting: it accepts `drops` connections and
// closes each before any greeting, then stops listening (the socket file
// stays, so a connection is refused, as once that QEMU died).
class ExitingMonitor {
  public:
    ExitingMonitor(const fs::path& path, int drops) {
        m_fd = listen_unix(path, 8);
        m_thread = std::thread([this, drops] {
            for (int i = 0; i < drops; ++i) {
                pollfd p{m_fd, POLLIN, 0};
                if (::poll(&p, 1, 20'000) <= 0) break;
                const int c = ::accept4(m_fd, nullptr, nullptr, SOCK_CLOEXEC);
                if (c < 0) continue;
                ::close(c);
                ++accepted;
            }
            ::close(m_fd);
        });
    }
    ~ExitingMonitor() { m_thread.join(); }
    std::atomic<int> accepted{0};

  private:
    int m_fd = -1;
    std::thread m_thread;
};

// The source's TLS handshake fails, and so does the destination's incoming
// side: that QEMU exits (QEMU 7.2, or a user's QEMU) while blockmig's
// object-del is in flight. Its monitor still takes two connections and drops
// them, then refuses: the object died with it, nothing is left behind.
TEST_F(MigrateTlsTest, ADestinationThatExitsDuringTheReleaseEndsClean) {
    options.dst_qmp = (dir / "dst.qmp").string();
    src.side->ram = FakeSide::Ram::fails;
    dst.side->dies_on = "object-del";
    ExitingMonitor exiting(options.dst_qmp, 2);
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("migration cancelled, the guest keeps running on the source"),
              std::string::npos)
        << r.error().message;
    EXPECT_EQ(r.error().message.find("left behind"), std::string::npos) << r.error().message;
    EXPECT_TRUE(dst.side->got("object-del"));
    EXPECT_EQ(exiting.accepted, 2) << "asked again until the connection was refused";
    EXPECT_TRUE(src.side->objects.empty());
    EXPECT_EQ(journals(), 0u);
}

// A destination that is still there and refuses the object-del keeps it:
// named in the line, the job kept for `blockmig recover`.
TEST_F(MigrateTlsTest, ADestinationThatRefusesTheObjectDelLeavesItBehind) {
    src.side->ram = FakeSide::Ram::fails;
    dst.side->failing = "object-del";
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("left behind: object bm"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("injected failure"), std::string::npos);
    EXPECT_NE(r.error().message.find("blockmig recover"), std::string::npos);
    EXPECT_EQ(dst.side->objects.size(), 1u);
    EXPECT_EQ(journals(), 1u);
}

TEST_F(MigrateTest, PreflightRefusalTouchesNothing) {
    dst.side->run_state = "running";  // not started with -incoming defer
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("not waiting for a migration"), std::string::npos)
        << r.error().message;
    expect_untouched();
}

TEST_F(MigrateTest, CopyStorageAllOntoAVolumeOfAnotherSizeIsRefusedUntouched) {
    options.copy_storage = CopyStorage::all;
    const fs::path other = dir / "dst.raw";
    std::ofstream(other) << "disk";
    dst.side->disks["disk0"] = other.string();
    dst.side->disk_size = 2048;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message,
              fmt::format("migrate pre-flight: disk disk0: the destination's volume {} is 2048 "
                          "bytes but the source's {} is 4096 bytes; --copy-storage all needs a "
                          "destination volume of exactly the source's size",
                          other.string(), disk.string()));
    expect_untouched();
}

TEST_F(MigrateTest, CopyModeWriteBlockingWhereQemuCannotSwitchInPlaceIsRefusedUntouched) {
    options.copy_storage = CopyStorage::all;
    options.copy_mode = CopyModePolicy::write_blocking;
    const fs::path other = dir / "dst.raw";
    std::ofstream(other) << "disk";
    dst.side->disks["disk0"] = other.string();
    src.side->schema = json::array();  // no block-job-change (QEMU 7.2)
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("--copy-mode write-blocking: the source QEMU cannot switch"),
              std::string::npos)
        << r.error().message;
    expect_untouched();
}

TEST_F(MigrateTest, CopyStorageAllOntoTheSameFileIsRefusedUntouched) {
    // Both fake QEMUs open the same file: copying it onto itself would destroy it.
    options.copy_storage = CopyStorage::all;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("onto itself"), std::string::npos) << r.error().message;
    expect_untouched();
}

TEST_F(MigrateTest, CopyStorageIncReadsBothChainsAndRefusesAnotherBaseUntouched) {
    // Each side's disk is its own qcow2 overlay; the bases differ.
    options.copy_storage = CopyStorage::inc;
    const fs::path src_ovl = dir / "src.qcow2", dst_ovl = dir / "dst.qcow2";
    const fs::path base = dir / "base.raw", other = dir / "other.raw";
    for (const auto& f : {src_ovl, dst_ovl, base, other}) std::ofstream(f) << "x";
    src.side->disks["disk0"] = src_ovl.string();
    dst.side->disks["disk0"] = dst_ovl.string();
    src.side->backings["disk0"] = base.string();
    dst.side->backings["disk0"] = other.string();
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message,
              fmt::format("migrate pre-flight: disk disk0: the source's overlay is over {} but "
                          "the destination's over {}, a different image; --copy-storage inc "
                          "needs both over the same base",
                          base.string(), other.string()));
    expect_untouched();

    // The same base file, reached by another name (a hard link): accepted
    // by identity, and the migration goes on past the pre-flight.
    const fs::path link = dir / "base-link.raw";
    fs::create_hard_link(base, link);
    dst.side->backings["disk0"] = link.string();
    src.side->schema = json::array();  // an old QEMU: the mirrors would start in background
    r = migrate();
    ASSERT_FALSE(r);  // the fake has no blockdev-mirror: the mirror phase fails
    EXPECT_EQ(r.error().message.find("pre-flight"), std::string::npos) << r.error().message;
    EXPECT_TRUE(src.side->got("migrate-set-capabilities"));
}

TEST_F(MigrateTest, CopyStorageIncRefusesAReusedOverlayUntouched) {
    options.copy_storage = CopyStorage::inc;
    const fs::path src_ovl = dir / "src.qcow2", dst_ovl = dir / "dst.qcow2", base = dir / "b.raw";
    for (const auto& f : {src_ovl, dst_ovl, base}) std::ofstream(f) << "x";
    src.side->disks["disk0"] = src_ovl.string();
    dst.side->disks["disk0"] = dst_ovl.string();
    src.side->backings["disk0"] = dst.side->backings["disk0"] = base.string();
    dst.side->allocated = 64 << 20;  // 64 MiB of data: not a fresh overlay
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("already holds data (65536 KiB allocated)"), std::string::npos)
        << r.error().message;
    expect_untouched();
}

// ---- pre-flight (pure) ----------------------------------------------------------

migrate::SideFacts side(std::string address, int pid, std::string state) {
    migrate::SideFacts f;
    f.address = address;
    f.identity.qmp = address;
    f.identity.pid = pid;
    f.run_state = std::move(state);
    f.migration_status = "none";
    f.machine_type = "pc-q35-7.2-machine";
    f.memory = 1 << 30;
    f.devices = {{"disk0", "child<virtio-blk-pci>"}};
    f.disks = {{"disk0", "/shared/vm.raw", migrate::FileIdentity{1, 2}, "none"}};
    f.version = 70200;
    f.capabilities = {"events", "pause-before-switchover"};
    return f;
}

struct Preflight : ::testing::Test {
    migrate::SideFacts src = side("/run/a", 10, "running");
    migrate::SideFacts dst = side("/run/b", 20, "inmigrate");
    std::string refusal() {
        auto r = migrate::check(src, dst, CopyStorage::none);
        return r ? "" : r.error().message;
    }
};

TEST_F(Preflight, AcceptsTwoMatchingQemusOnOneFile) { EXPECT_EQ(refusal(), ""); }

TEST_F(Preflight, RefusesTheSameQemuTwice) {
    dst.identity.pid = 10;
    EXPECT_NE(refusal().find("same QEMU"), std::string::npos);
}

TEST_F(Preflight, RefusesAPausedSource) {
    src.run_state = "paused";
    EXPECT_NE(refusal().find("paused, not running"), std::string::npos);
}

TEST_F(Preflight, RefusesADestinationNotWaiting) {
    dst.run_state = "prelaunch";
    EXPECT_NE(refusal().find("-incoming defer"), std::string::npos);
}

TEST_F(Preflight, RefusesAnActiveBlockJob) {
    src.block_jobs = {"mirror0"};
    EXPECT_NE(refusal().find("block job"), std::string::npos);
}

TEST_F(Preflight, RefusesMachineMemoryAndDeviceDifferences) {
    dst.machine_type = "pc-q35-10.0-machine";
    EXPECT_NE(refusal().find("machine types differ"), std::string::npos);
    dst.machine_type = src.machine_type;
    dst.memory = 2u << 30;
    EXPECT_NE(refusal().find("memory sizes differ: source 1024 MiB, destination 2048 MiB"),
              std::string::npos);
    dst.memory = src.memory;
    dst.devices.insert({"net0", "child<virtio-net-pci>"});
    EXPECT_NE(refusal().find("device sets differ"), std::string::npos);
}

TEST_F(Preflight, RefusesDifferentFilesAndUnprovableOnes) {
    dst.disks[0].identity = migrate::FileIdentity{1, 3};
    EXPECT_NE(refusal().find("different files"), std::string::npos);
    dst.disks[0].identity.reset();  // e.g. the destination's QMP is TCP
    EXPECT_NE(refusal().find("cannot prove"), std::string::npos);
}

TEST_F(Preflight, NetworkVolumesMatchByUrl) {
    src.disks[0] = {"disk0", "nfs://10.0.0.5/export/vm.qcow2", std::nullopt, "none"};
    dst.disks[0] = src.disks[0];
    EXPECT_EQ(refusal(), "");
    dst.disks[0].filename = "nfs://10.0.0.6/export/vm.qcow2";
    EXPECT_NE(refusal().find("both must open the same volume"), std::string::npos);
}

TEST_F(Preflight, RefusesAnOlderDestinationQemu) {
    src.version = 100000;
    EXPECT_NE(refusal().find("the destination QEMU (7.2.0) is older than the source (10.0.0)"),
              std::string::npos)
        << refusal();
}

TEST_F(Preflight, RefusesAHostCacheOnSharedStorageUnlessUnsafe) {
    dst.disks[0].cache_mode = "writeback";
    EXPECT_NE(refusal().find("the destination opens it with cache mode writeback"),
              std::string::npos)
        << refusal();
    EXPECT_TRUE(migrate::check(src, dst, CopyStorage::none, /*unsafe=*/true));
}

TEST_F(Preflight, CopyAllMatchesEveryDiskBySizeAndNamesBothSizes) {
    auto copy_all = [&] {
        auto r = migrate::check(src, dst, CopyStorage::all);
        return r ? "" : r.error().message;
    };
    dst.disks[0] = {"disk0", "/b/vm.raw", migrate::FileIdentity{1, 3}, "none"};
    src.disks[0].size = dst.disks[0].size = std::uint64_t{64} << 20;
    EXPECT_EQ(copy_all(), "");
    dst.disks[0].size = std::uint64_t{32} << 20;
    EXPECT_NE(copy_all().find("disk disk0: the destination's volume /b/vm.raw is 32 MiB but the "
                              "source's /shared/vm.raw is 64 MiB"),
              std::string::npos)
        << copy_all();
    // Larger is refused too: the guest would come up with another disk size.
    dst.disks[0].size = (std::uint64_t{64} << 20) + 512;
    EXPECT_NE(copy_all().find("is 67109376 bytes but the source's /shared/vm.raw is 64 MiB"),
              std::string::npos)
        << copy_all();
    // Matched by device id, not by position.
    src.disks.push_back({"disk1", "/shared/b.raw", migrate::FileIdentity{1, 4}, "none"});
    src.disks[1].size = std::uint64_t{2} << 30;
    dst.disks.insert(dst.disks.begin(), {"disk1", "/b/b.raw", migrate::FileIdentity{1, 5}, "none"});
    dst.disks[0].size = std::uint64_t{2} << 30;
    dst.disks[1].size = std::uint64_t{64} << 20;
    EXPECT_EQ(copy_all(), "");
    dst.disks[0].size = std::uint64_t{1} << 30;
    EXPECT_NE(copy_all().find("disk disk1: the destination's volume /b/b.raw is 1 GiB but the "
                              "source's /shared/b.raw is 2 GiB"),
              std::string::npos)
        << copy_all();
}

TEST_F(Preflight, RefusesAMissingCapability) {
    dst.capabilities.erase("pause-before-switchover");
    EXPECT_NE(refusal().find("pause-before-switchover"), std::string::npos);
}

// ---- --dst-launch's command (pure) ---------------------------------------------------

TEST(MigrateLaunchCommand, PlaceholdersAreCheckedAgainstTheSourceDisks) {
    const std::vector<std::string> disks{"disk0", "disk1"};
    auto refusal = [&](std::vector<std::string> argv) {
        auto r = migrate::check_launch(argv, disks);
        return r ? "" : r.error().message;
    };
    EXPECT_EQ(refusal({"qemu", "-qmp", "unix:{qmp},server=on", "file={vol:disk0}"}), "");
    EXPECT_NE(refusal({"qemu", "file={vol:disk0}"}).find("has no {qmp}"), std::string::npos);
    EXPECT_EQ(refusal({"qemu", "{qmp}", "file={vol:disk2}"}),
              "--dst-launch: {vol:disk2}: the source has no disk disk2 (it has: disk0, disk1)");
    EXPECT_NE(refusal({"qemu", "{qmp}", "{volume:disk0}"}).find("unknown placeholder {volume:"),
              std::string::npos);
    EXPECT_NE(refusal({}).find("no command"), std::string::npos);
    // A CHAP pool's secret: once (whether the pool needs it is plan_volumes').
    EXPECT_EQ(refusal({"qemu", "{qmp}", "-object", "{secret-object}"}), "");
    EXPECT_EQ(
        refusal({"qemu", "{qmp}", "-object", "{secret-object}", "-object", "{secret-object}"}),
        "--dst-launch: {secret-object} more than once (QEMU reads its stdin once)");
    EXPECT_NE(refusal({"qemu", "{qmp}", "{secret}"})
                  .find("(known: {qmp}, {vol:DEV}, "
                        "{secret-object})"),
              std::string::npos);
}

TEST(MigrateLaunchCommand, ExpandsEveryPlaceholderInEveryArgument) {
    auto out = migrate::expand_launch(
        {"ip", "netns", "exec", "b", "qemu", "-qmp", "unix:{qmp},server=on",
         "file={vol:disk0},x={vol:disk1}", "{vol:disk0}{vol:disk0}"},
        "/s/j.dst.qmp", {{"disk0", "/pool/a.raw"}, {"disk1", "nfs://h/e/b.raw"}});
    ASSERT_EQ(out.size(), 9u);
    EXPECT_EQ(out[3], "b");
    EXPECT_EQ(out[6], "unix:/s/j.dst.qmp,server=on");
    EXPECT_EQ(out[7], "file=/pool/a.raw,x=nfs://h/e/b.raw");
    EXPECT_EQ(out[8], "/pool/a.raw/pool/a.raw");
    EXPECT_EQ(migrate::expand_launch({"-object", "{secret-object}"}, "/q", {})[1],
              "secret,id=blockmig-chap,file=/dev/stdin,format=raw");
}

// ---- the settle decision (pure) ---------------------------------------------------

jobs::Job migrate_job(bool switchover_sent) {
    jobs::Job job;
    job.kind = "migrate";
    job.migration = jobs::MigrationFacts{};
    if (switchover_sent)
        job.records.push_back({.seq = 1,
                               .effect = jobs::EffectKind::switchover_sent,
                               .name = "migrate-continue",
                               .state = jobs::RecordState::intent});
    return job;
}

migrate::Observation seen(std::string src_run, std::string src_mig, std::string dst_run,
                          std::string dst_mig, bool dst_reachable = true) {
    return {{true, src_run, src_mig, ""}, {dst_reachable, dst_run, dst_mig, ""}};
}

TEST(MigrateDecide, FollowsWhatBothQemusSay) {
    using migrate::Verdict;
    auto v = [](const jobs::Job& j, const migrate::Observation& o) {
        return migrate::decide(j, o).verdict;
    };
    const auto before = migrate_job(false), after = migrate_job(true);
    EXPECT_EQ(v(before, seen("running", "active", "inmigrate", "active")), Verdict::cancel_first);
    EXPECT_EQ(v(before, seen("finish-migrate", "pre-switchover", "inmigrate", "active")),
              Verdict::cancel_first);
    EXPECT_EQ(v(before, seen("running", "failed", "", "", false)), Verdict::undo);
    EXPECT_EQ(v(after, seen("postmigrate", "completed", "paused", "completed")), Verdict::forward);
    EXPECT_EQ(v(after, seen("postmigrate", "device", "inmigrate", "active")), Verdict::again);
    // The destination runs the guest: forward, whatever the source says.
    EXPECT_EQ(v(before, seen("paused", "failed", "running", "completed")), Verdict::forward);
    // Failed after the switchover was sent, destination silent: cannot prove it did not start.
    EXPECT_EQ(v(after, seen("paused", "failed", "", "", false)), Verdict::wait);
    migrate::Observation gone = seen("", "", "inmigrate", "active");
    gone.src.reachable = false;
    EXPECT_EQ(v(before, gone), Verdict::wait);
}

TEST(MigrateDecide, PostcopyIsNeverUndoneNorCutShort) {
    using migrate::Verdict;
    auto v = [](const jobs::Job& j, const migrate::Observation& o) {
        return migrate::decide(j, o);
    };
    jobs::Job pc = migrate_job(true);
    pc.records.push_back({.seq = 2,
                          .effect = jobs::EffectKind::postcopy_requested,
                          .name = "migrate-start-postcopy",
                          .state = jobs::RecordState::done});
    // In progress: the destination runs, but pages are still on the source:
    // no forward (it would quit the source), no cancel.
    auto d = v(pc, seen("finish-migrate", "postcopy-active", "running", "postcopy-active"));
    EXPECT_EQ(d.verdict, Verdict::again) << d.reason;
    // The link broke: wait (a recovery resumes it), nothing stopped or undone.
    d = v(pc, seen("finish-migrate", "postcopy-paused", "running", "postcopy-paused"));
    EXPECT_EQ(d.verdict, Verdict::wait);
    EXPECT_FALSE(d.pause_destination);
    EXPECT_NE(d.reason.find("blockmig recover"), std::string::npos) << d.reason;
    migrate::Observation src_gone = seen("", "", "running", "postcopy-paused");
    src_gone.src.reachable = false;
    d = v(pc, src_gone);
    EXPECT_EQ(d.verdict, Verdict::wait);
    EXPECT_FALSE(d.pause_destination);
    // Failed after the switch: the source is stale, never resumed; a running
    // destination is paused rather than lost.
    d = v(pc, seen("finish-migrate", "failed", "running", "failed"));
    EXPECT_EQ(d.verdict, Verdict::wait) << d.reason;
    EXPECT_TRUE(d.pause_destination);
    EXPECT_NE(d.reason.find("only live copy"), std::string::npos) << d.reason;
    d = v(pc, seen("finish-migrate", "failed", "", "", false));
    EXPECT_EQ(d.verdict, Verdict::wait);
    EXPECT_FALSE(d.pause_destination);
    // The destination never left inmigrate: it never ran, the source is whole.
    EXPECT_EQ(v(pc, seen("finish-migrate", "failed", "inmigrate", "failed")).verdict,
              Verdict::undo);
    // Completed: forward as always.
    EXPECT_EQ(v(pc, seen("postmigrate", "completed", "running", "completed")).verdict,
              Verdict::forward);
    // Requested but the switchover not sent: pre-copy rules (cancel, undo).
    jobs::Job early = migrate_job(false);
    early.records = {pc.records[1]};
    EXPECT_EQ(v(early, seen("running", "active", "inmigrate", "active")).verdict,
              Verdict::cancel_first);
    EXPECT_EQ(v(early, seen("running", "failed", "inmigrate", "failed")).verdict, Verdict::undo);
}

// ---- recover ----------------------------------------------------------------------

class MigrateRecover : public MigrateTest {
  protected:
    // Both QEMUs say the migration completed; the guest waits on the destination.
    void both_completed_destination_paused() {
        src.side->migration = "completed";
        src.side->run_state = "postmigrate";
        dst.side->migration = "completed";
        dst.side->run_state = "paused";
    }

    jobs::Journal journal(const std::string& phase, bool switchover_sent) {
        jobs::Job job = migrate_job(switchover_sent);
        // Sockets nobody listens on: a QEMU asked again is proven gone.
        job.guest.qmp = (dir / "src.qmp").string();
        job.migration->destination.qmp = (dir / "dst.qmp").string();
        job.migration->phase = phase;
        job.migration->source_saved = {{"capabilities", {{"pause-before-switchover", false}}},
                                       {"parameters", {{"max-bandwidth", 134217728}}}};
        auto j = jobs::Journal::create(options.jobs_dir, job);
        EXPECT_TRUE(j);
        return std::move(*j);
    }

    // A --copy-storage all job: NBD server and one export on the
    // destination, an NBD client node and a mirror on the source.
    jobs::Journal copy_journal(const std::string& phase, bool switchover_sent) {
        auto j = journal(phase, switchover_sent);
        auto effect = [&](const std::string& disk, jobs::EffectKind kind, const std::string& name) {
            auto seq = j.intend({.disk = disk, .effect = kind, .name = name});
            ASSERT_TRUE(seq);
            ASSERT_TRUE(j.outcome(*seq, jobs::RecordState::done));
        };
        effect("@dst", jobs::EffectKind::nbd_server_started, "10.0.0.2:10809");
        effect("@dst", jobs::EffectKind::export_added, "bm1-disk0");
        effect("disk0", jobs::EffectKind::node_added, "bm1-disk0-nbd");
        effect("disk0", jobs::EffectKind::mirror_started, "bm1-disk0-mirror");
        src.side->block_jobs = {"bm1-disk0-mirror"};
        src.side->nodes = {"bm1-disk0-nbd"};
        dst.side->exports = {"bm1-disk0"};
        dst.side->nbd_server = true;
        return j;
    }

    std::size_t position(FakeSide& side, const std::string& command) {
        std::lock_guard lock(side.mutex);
        for (std::size_t i = 0; i < side.commands.size(); ++i)
            if (side.commands[i].starts_with(command + " ")) return i;
        return std::string::npos;
    }
};

// A --dst-launch --copy-storage all job past the switch to post-copy: the
// source paused in postcopy-paused, the volume blockmig made on the
// destination's pool journaled under @launch.
class MigrateRecoverLost : public MigrateRecover {
  protected:
    jobs::Journal postcopy_journal() {
        auto j = copy_journal("postcopy", true);
        EXPECT_TRUE(j.update([](jobs::Job& job) { job.migration->copy_storage = "all"; }));
        for (auto [disk, kind, name] :
             {std::tuple{std::string("@launch"), jobs::EffectKind::destination_launched,
                         (dir / "dst.qmp").string()},
              std::tuple{std::string("@launch"), jobs::EffectKind::volume_created, volume.string()},
              std::tuple{std::string(), jobs::EffectKind::postcopy_requested,
                         std::string("migrate-start-postcopy")}}) {
            auto seq = j.intend({.disk = disk, .effect = kind, .name = name});
            EXPECT_TRUE(seq);
            if (seq) {
                EXPECT_TRUE(j.outcome(*seq, jobs::RecordState::done));
            }
        }
        std::ofstream(volume) << "the guest's newest data";
        src.side->migration = "postcopy-paused";
        src.side->run_state = "finish-migrate";
        return j;
    }

    std::size_t sent(FakeSide& side) {
        std::lock_guard lock(side.mutex);
        return side.commands.size();
    }

    fs::path volume = dir / "job-disk0.raw";
    FakeClock clock;
};

TEST_F(MigrateRecoverLost, ADestinationProvenGoneEndsTheJobKeepingTheVolumesAndThePausedSource) {
    auto j = postcopy_journal();
    const auto before = clock.now();
    auto r =
        migrate::recover_migration(j, src.client.get(), nullptr, 500ms, options.jobs_dir, clock);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_LT(clock.now() - before, 10s) << "proof ends the retries at once";
    const std::string& e = r->ended;
    EXPECT_NE(e.find("the guest was lost in post-copy"), std::string::npos) << e;
    EXPECT_NE(e.find("destination QEMU (" + (dir / "dst.qmp").string() + ") died"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("the destination volume " + volume.string() +
                     " holds its newest disk data "
                     "and is kept"),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("the source QEMU (" + (dir / "src.qmp").string() + ") is left paused"),
              std::string::npos)
        << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << "one line";
    ASSERT_EQ(r->disks.size(), 1u);
    EXPECT_NE(r->disks[0].direction, jobs::Direction::wait);
    EXPECT_FALSE(r->journal_removed);
    // Nothing that could hurt the guest's data or its RAM on the source.
    auto& s = *src.side;
    for (const char* c : {"quit", "cont", "stop", "migrate_cancel", "block-job-cancel",
                          "blockdev-del", "migrate-set-capabilities", "migrate-set-parameters"})
        EXPECT_FALSE(s.got(c)) << c;
    EXPECT_FALSE(s.got("migrate", R"("resume":true)")) << "nothing listens for it";
    EXPECT_TRUE(fs::exists(volume)) << "the destination's volume is kept";
    EXPECT_EQ(s.block_jobs.size(), 1u);
    EXPECT_EQ(s.nodes.size(), 1u);
    // The journal records the end: no longer listed as needing recovery.
    EXPECT_EQ(j.job().migration->phase, "lost");
    EXPECT_FALSE(j.job().needs_recovery());
    for (const auto& rec : j.job().records)
        if (rec.effect == jobs::EffectKind::volume_created) {
            EXPECT_EQ(rec.state, jobs::RecordState::done) << "never undone";
        }
    auto listed = jobs::list_jobs(options.jobs_dir);
    ASSERT_TRUE(listed);
    ASSERT_EQ(listed->size(), 1u);
    EXPECT_FALSE(listed->front().job.needs_recovery());
    EXPECT_EQ(listed->front().job.migration->phase, "lost");

    // A second recover says the job has ended and asks no QEMU anything.
    const auto commands = sent(s);
    auto again =
        migrate::recover_migration(j, src.client.get(), nullptr, 500ms, options.jobs_dir, clock);
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_TRUE(again->ended.starts_with("the job has ended: the guest was lost in post-copy"))
        << again->ended;
    EXPECT_EQ(sent(s), commands);
    EXPECT_TRUE(fs::exists(volume));
    EXPECT_EQ(journals(), 1u);
}

// The monitor of a QEMU that is alive but does not answer (a host under
// load, a link down): connections are queued by the kernel, never greeted.
class SilentMonitor {
  public:
    explicit SilentMonitor(const fs::path& path) {
        m_fd = listen_unix(path, 512);
    }
    ~SilentMonitor() { ::close(m_fd); }

  private:
    int m_fd = -1;
};

TEST_F(MigrateRecoverLost, ADestinationThatOnlyTimesOutIsNoProofTheJobWaits) {
    auto j = postcopy_journal();
    SilentMonitor silent(dir / "dst.qmp");
    auto r =
        migrate::recover_migration(j, src.client.get(), nullptr, 100ms, options.jobs_dir, clock);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(r->ended.empty()) << r->ended;
    ASSERT_EQ(r->disks.size(), 1u);
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::wait) << r->disks[0].reason;
    EXPECT_NE(r->next_step.find("blockmig recover"), std::string::npos);
    EXPECT_NE(j.job().migration->phase, "lost");
    EXPECT_TRUE(j.job().needs_recovery());
    EXPECT_FALSE(src.side->got("quit"));
    EXPECT_FALSE(src.side->got("cont"));
    EXPECT_TRUE(fs::exists(volume));
}

TEST_F(MigrateRecover, MirrorPhaseUndoesTheCopyOnBothQemus) {
    auto j = copy_journal("mirror", false);
    auto r =
        migrate::recover_migration(j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::undo) << r->disks[0].reason;
    EXPECT_TRUE(src.side->block_jobs.empty()) << "the mirror is cancelled";
    EXPECT_TRUE(src.side->got("block-job-cancel", R"("force":true)"));
    EXPECT_TRUE(src.side->nodes.empty()) << "the NBD client node is deleted";
    EXPECT_TRUE(dst.side->exports.empty()) << "the export is deleted";
    EXPECT_FALSE(dst.side->nbd_server) << "the NBD server is stopped";
    EXPECT_LT(position(*dst.side, "block-export-del"), position(*dst.side, "nbd-server-stop"));
    EXPECT_FALSE(dst.side->got("cont"));
    EXPECT_TRUE(r->journal_removed);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MigrateRecover, ADestinationThatIsGoneTookItsExportsAlong) {
    // RAM phase: the source's cancel made the destination's QEMU exit.
    src.side->migration = "active";
    auto j = copy_journal("ram", false);
    auto r = migrate::recover_migration(j, src.client.get(), nullptr, 500ms, options.jobs_dir);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::undo) << r->disks[0].reason;
    EXPECT_TRUE(src.side->block_jobs.empty());
    EXPECT_TRUE(src.side->nodes.empty());
    const auto& actions = r->disks[0].actions;
    EXPECT_TRUE(std::any_of(actions.begin(), actions.end(), [](const std::string& a) {
        return a.starts_with("export_del bm1-disk0: the destination QEMU is gone");
    })) << fmt::format("{}", fmt::join(actions, " | "));
    EXPECT_TRUE(r->journal_removed);
}

TEST_F(MigrateRecover, ForwardRemovesTheExportsBeforeTheDestinationRuns) {
    both_completed_destination_paused();
    auto j = copy_journal("switchover", true);
    auto r =
        migrate::recover_migration(j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::forward) << r->disks[0].reason;
    EXPECT_TRUE(dst.side->exports.empty());
    EXPECT_FALSE(dst.side->nbd_server);
    EXPECT_LT(position(*dst.side, "nbd-server-stop"), position(*dst.side, "cont"));
    EXPECT_TRUE(src.side->block_jobs.empty());
    EXPECT_TRUE(src.side->got("quit"));
    EXPECT_TRUE(r->journal_removed);
}

TEST_F(MigrateRecover, ADestinationThatKeepsItsExportIsNotResumed) {
    both_completed_destination_paused();
    dst.side->failing = "block-export-del";
    auto j = copy_journal("switchover", true);
    auto r =
        migrate::recover_migration(j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(dst.side->got("cont")) << "never run the guest with a writable export open";
    EXPECT_FALSE(src.side->got("quit"));
    ASSERT_FALSE(r->disks[0].left_behind.empty());
    EXPECT_NE(r->disks[0].left_behind[0].find(
                  "left behind: export bm1-disk0 (block-export-del: injected failure)"),
              std::string::npos)
        << r->disks[0].left_behind[0];
    EXPECT_FALSE(r->journal_removed);
    EXPECT_TRUE(j.job().needs_recovery());

    // Next time the export goes: the guest runs on the destination.
    dst.side->failing.clear();
    auto again =
        migrate::recover_migration(j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_TRUE(dst.side->got("cont"));
    EXPECT_TRUE(dst.side->exports.empty());
    EXPECT_TRUE(again->journal_removed);
}

TEST_F(MigrateRecover, RamPhaseIsCancelledAndTheSourceKeepsTheGuest) {
    src.side->migration = "active";
    src.side->caps["pause-before-switchover"] = true;
    auto j = journal("ram", false);
    auto r =
        migrate::recover_migration(j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->disks.size(), 1u);
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::undo) << r->disks[0].reason;
    EXPECT_TRUE(src.side->got("migrate_cancel"));
    EXPECT_FALSE(src.side->caps["pause-before-switchover"]);
    EXPECT_TRUE(r->journal_removed);
    EXPECT_EQ(journals(), 0u);
}

TEST_F(MigrateRecover, PausedAtPreSwitchoverIsResumedOnTheSource) {
    src.side->migration = "pre-switchover";
    src.side->run_state = "finish-migrate";
    src.side->resume_on_cancel = false;  // blockmig must resume it itself
    auto j = journal("ram", false);
    auto r =
        migrate::recover_migration(j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::undo);
    EXPECT_TRUE(src.side->got("cont"));
    EXPECT_EQ(src.side->run_state, "running");
}

TEST_F(MigrateRecover, CompletedMigrationIsFinishedForward) {
    both_completed_destination_paused();
    auto j = journal("switchover", true);
    auto r =
        migrate::recover_migration(j, src.client.get(), dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::forward) << r->disks[0].reason;
    EXPECT_TRUE(dst.side->got("cont"));
    EXPECT_TRUE(src.side->got("quit"));
    EXPECT_FALSE(src.side->got("cont"));
    EXPECT_TRUE(r->journal_removed);
}

TEST_F(MigrateRecover, UnreachableSourceWithIdleDestinationWaits) {
    dst.side->migration = "active";
    auto j = journal("ram", false);
    auto r = migrate::recover_migration(j, nullptr, dst.client.get(), 500ms, options.jobs_dir);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->disks[0].direction, jobs::Direction::wait);
    EXPECT_FALSE(r->journal_removed);
    EXPECT_FALSE(dst.side->got("cont"));
    EXPECT_NE(r->next_step.find("blockmig recover"), std::string::npos);
    EXPECT_EQ(journals(), 1u);
    EXPECT_TRUE(j.job().needs_recovery());
}

}  // namespace

namespace {

// ---- the journal of a migrate job -----------------------------------------------------

TEST(MigrateJournal, RoundTripsAndNamesBothGuests) {
    fs::path dir = jobs_test::temp_dir("migrate-journal");
    jobs::Job job;
    job.kind = "migrate";
    job.guest = {"/run/src.qmp", 11, "", "vm1"};
    jobs::MigrationFacts facts;
    facts.destination = {"tcp:10.0.0.2:4444", -1, "", "vm1"};
    facts.dst_addr = "10.0.0.2";
    facts.keep_source = true;
    facts.phase = "ram";
    facts.source_saved = {{"parameters", {{"max-bandwidth", 1}}}};
    job.migration = facts;
    auto j = jobs::Journal::create(dir, job);
    ASSERT_TRUE(j) << j.error().message;
    ASSERT_TRUE(j->intend({.effect = jobs::EffectKind::migration_started, .name = "tcp:x:1"}));

    auto parsed = jobs::job_from_json(jobs::to_json(j->job()));
    ASSERT_TRUE(parsed) << parsed.error().message;
    ASSERT_TRUE(parsed->migration);
    EXPECT_EQ(parsed->migration->destination.qmp, "tcp:10.0.0.2:4444");
    EXPECT_EQ(parsed->migration->phase, "ram");
    EXPECT_TRUE(parsed->migration->keep_source);
    EXPECT_EQ(parsed->migration->source_saved["parameters"]["max-bandwidth"], 1);
    EXPECT_EQ(parsed->records.back().effect, jobs::EffectKind::migration_started);
    EXPECT_TRUE(parsed->needs_recovery());
    auto exists = jobs::what_exists(*parsed, "");
    ASSERT_EQ(exists.size(), 1u);
    EXPECT_NE(exists[0].find("migration to tcp:x:1"), std::string::npos);

    // Its owner gone (lock released): a new job on either guest is refused.
    { jobs::Journal owner_exits = std::move(*j); }
    for (const auto& qmp : {"/run/src.qmp", "tcp:10.0.0.2:4444"}) {
        auto r = jobs::refuse_if_unrecovered(dir, {qmp, -1, "", ""});
        ASSERT_FALSE(r) << qmp;
        EXPECT_NE(r.error().message.find("blockmig recover"), std::string::npos);
    }
    EXPECT_TRUE(jobs::refuse_if_unrecovered(dir, {"/run/other.qmp", -1, "", ""}));
    fs::remove_all(dir);
}

TEST(MigrateJournal, SettledMigrationNeedsNoRecovery) {
    jobs::Job job;
    job.kind = "migrate";
    job.migration = jobs::MigrationFacts{};
    EXPECT_FALSE(job.needs_recovery()) << "planned, nothing done";
    job.migration->phase = "configured";
    EXPECT_TRUE(job.needs_recovery());
    job.migration->phase = "rolled_back";
    EXPECT_FALSE(job.needs_recovery());
    job.migration->phase = "done";
    EXPECT_FALSE(job.needs_recovery());
}

}  // namespace
