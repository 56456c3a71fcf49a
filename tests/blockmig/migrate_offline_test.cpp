// Whole run_offline_migrate() calls with nothing real behind them: a fake
// QEMU behind the scripted QMP transport (powers down on system_powerdown or
// ignores it, closes its monitor on quit), source disks in one MemPool, the
// destination pool another MemPool (wrapped in the fault pool) handed in
// through OfflineOptions::pool_opener, a temporary journal directory. What a
// user would check: what the destination pool holds, that the sources are
// unchanged, the order of powerdown / quit, the error line, the journal.
#include <fmt/core.h>
#include <gtest/gtest.h>

#include "blockmig/offline.hpp"
#include "jobs/effects.hpp"
#include "jobs/journal.hpp"
#include "jobs_test_util.hpp"
#include "sha256_test_util.hpp"
#include "migrate/offline_recover.hpp"

using namespace blockmig;
using namespace std::chrono_literals;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

using sha256_test::sha256;

using jobs_test::k_mib;

struct Disk {
    std::string id, file, format;
    std::uint64_t size;
};

// The guest's QEMU, as far as `migrate --offline` talks to it.
struct OfflineQemu {
    std::mutex mutex;
    std::string run_state = "running";
    std::vector<Disk> disks;
    std::vector<std::string> jobs;
    bool obeys_powerdown = true;
    std::vector<std::string> commands;

    bool got(const std::string& command) {
        std::lock_guard lock(mutex);
        return std::find(commands.begin(), commands.end(), command) != commands.end();
    }

    json block_query() const {
        json out = json::array();
        for (const auto& d : disks)
            out.push_back(
                {{"device", ""},
                 {"qdev", "/machine/peripheral/" + d.id + "/virtio-backend"},
                 {"locked", false},
                 {"removable", false},
                 {"inserted",
                  {{"node-name", d.id + "-fmt"},
                   {"drv", d.format},
                   {"ro", false},
                   {"encrypted", false},
                   {"file", d.file},
                   {"backing_file_depth", 0},
                   {"image",
                    {{"filename", d.file}, {"format", d.format}, {"virtual-size", d.size}}}}}});
        return out;
    }

    void respond(const json& m, qmp::testing::Script& s) {
        std::lock_guard lock(mutex);
        const std::string cmd = m.value("execute", "");
        commands.push_back(cmd);
        auto reply = [&](json v) { s.push({{"return", v}, {"id", m["id"]}}); };
        if (cmd == "query-uuid") return reply({{"UUID", "6f1c2a4e-0000-4000-8000-00000000000f"}});
        if (cmd == "query-name") return reply({{"name", "vm1"}});
        if (cmd == "query-status")
            return reply({{"status", run_state}, {"running", run_state == "running"}});
        if (cmd == "query-migrate") return reply({{"status", "none"}});
        if (cmd == "qom-get") return reply("pc-i440fx-7.2-machine");
        if (cmd == "qom-list") return reply(json::array());
        if (cmd == "query-memory-size-summary") return reply({{"base-memory", 256 << 20}});
        if (cmd == "query-block") return reply(block_query());
        if (cmd == "query-named-block-nodes") return reply(json::array());
        if (cmd == "query-version")
            return reply({{"qemu", {{"major", 7}, {"minor", 2}, {"micro", 0}}}, {"package", ""}});
        if (cmd == "query-block-jobs") {
            json out = json::array();
            for (const auto& j : jobs)
                out.push_back({{"type", "mirror"},
                               {"device", j},
                               {"id", j},
                               {"len", 1},
                               {"offset", 0},
                               {"busy", false},
                               {"paused", false},
                               {"speed", 0},
                               {"io-status", "ok"},
                               {"ready", false},
                               {"status", "running"}});
            return reply(out);
        }
        if (cmd == "query-migrate-capabilities") return reply(json::array());
        if (cmd == "system_powerdown") {
            reply(json::object());
            s.push_event("POWERDOWN");
            if (obeys_powerdown) {
                run_state = "shutdown";
                s.push_event("SHUTDOWN", {{"guest", true}, {"reason", "guest-shutdown"}});
            }
            return;
        }
        if (cmd == "quit") {
            reply(json::object());
            s.push_disconnect();  // QEMU exits: the monitor's end of stream
            return;
        }
        s.push({{"error", {{"class", "CommandNotFound"}, {"desc", cmd}}}, {"id", m["id"]}});
    }
};

// A destination volume that returns one flipped byte on every read: a copy
// that does not hold what was written.
class CorruptVolume final : public pools::Volume {
  public:
    explicit CorruptVolume(std::unique_ptr<pools::Volume> v) : m_v(std::move(v)) {}
    std::uint64_t size() const override { return m_v->size(); }
    Result<std::size_t> pread(std::span<std::byte> buf, std::uint64_t offset) override {
        auto n = m_v->pread(buf, offset);
        if (n && *n > 0) buf[0] ^= std::byte{0x5a};
        return n;
    }
    Result<void> pwrite(std::span<const std::byte> buf, std::uint64_t offset) override {
        return m_v->pwrite(buf, offset);
    }
    Result<void> write_zeroes(std::uint64_t o, std::uint64_t l) override {
        return m_v->write_zeroes(o, l);
    }
    Result<void> discard(std::uint64_t o, std::uint64_t l) override { return m_v->discard(o, l); }
    Result<void> flush() override { return m_v->flush(); }
    Result<std::vector<pools::Extent>> block_status(std::uint64_t o, std::uint64_t l) override {
        return m_v->block_status(o, l);
    }

  private:
    std::unique_ptr<pools::Volume> m_v;
};

class CorruptingPool final : public pools::PoolWrapper {
  public:
    using PoolWrapper::PoolWrapper;
    Result<std::unique_ptr<pools::Volume>> open(std::string_view name, bool writable) override {
        auto v = PoolWrapper::open(name, writable);
        if (!v || writable) return v;
        return std::unique_ptr<pools::Volume>(std::make_unique<CorruptVolume>(std::move(*v)));
    }
};

std::vector<std::byte> contents(pools::Pool& pool, const std::string& name) {
    auto v = pool.open(name, false);
    if (!v) return {};
    std::vector<std::byte> out((*v)->size());
    if (!pools::read_full(**v, out, 0)) return {};
    return out;
}

class MigrateOfflineTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(guest.client);
        guest.script->set_responder([this](const json& m, auto& s) { qemu.respond(m, s); });
        add_disk("disk0", 4 * k_mib, {0, 3 * k_mib + 4096});
        add_disk("disk1", 2 * k_mib, {k_mib});
    }
    void TearDown() override { fs::remove_all(dir); }

    // A raw source disk with a 64 KiB pattern at each offset (the rest a hole).
    void add_disk(const std::string& id, std::uint64_t size, std::vector<std::uint64_t> at) {
        const std::string name = id + ".raw";
        ASSERT_TRUE(src->create(name, size, pools::ImageFormat::raw));
        auto v = src->open(name, true);
        ASSERT_TRUE(v);
        std::vector<std::byte> data(64 << 10);
        for (std::size_t i = 0; i < data.size(); ++i)
            data[i] = static_cast<std::byte>((i * 7 + id.size() + at.size()) & 0xff);
        for (auto o : at) ASSERT_TRUE((*v)->pwrite(data, o));
        qemu.disks.push_back({id, "nfs://nas/vms/" + name, "raw", size});
    }

    PoolOpener opener() {
        return {.open_pool = [this](std::string_view spec) -> Result<std::unique_ptr<pools::Pool>> {
                    if (spec != "cold") return fail(ErrorCode::not_found, "no pool");
                    auto p = std::make_unique<jobs_test::BorrowedPool>(*pool.faults);
                    if (corrupt) return std::make_unique<CorruptingPool>(std::move(p));
                    return p;
                },
                .resolve_volume = [this](std::string_view spec) -> Result<pools::VolumeRef> {
                    if (spec.starts_with("nfs://nas/vms/"))
                        return pools::VolumeRef{std::make_unique<jobs_test::BorrowedPool>(*src),
                                                std::string(spec.substr(14))};
                    if (spec.starts_with("mem:"))
                        return pools::VolumeRef{
                            std::make_unique<jobs_test::BorrowedPool>(*pool.faults),
                            std::string(spec.substr(4))};
                    return fail(ErrorCode::not_found, fmt::format("no volume {}", spec));
                }};
    }

    OfflineOptions options() {
        OfflineOptions o;
        o.src_qmp = "/run/vm1.qmp";
        o.dst_pool = "cold";
        o.shutdown_timeout = 300ms;
        o.qmp_timeout = 2s;
        o.jobs_dir = dir / "jobs";
        o.pool_opener = opener();
        return o;
    }

    Result<OfflineReport> migrate(const OfflineOptions& o) {
        auto progress = make_null_progress();
        return run_offline_migrate(*guest.client, o, *progress, cancel);
    }
    Result<OfflineReport> migrate() { return migrate(options()); }

    std::vector<std::string> dst_volumes() {
        std::vector<std::string> out;
        auto listed = pool.mem->list_volumes();
        if (listed)
            for (const auto& v : *listed) out.push_back(v.name);
        return out;
    }
    bool no_journal() { return !fs::exists(dir / "jobs") || fs::is_empty(dir / "jobs"); }
    void expect_sources_unchanged() {
        EXPECT_EQ(contents(*src, "disk0.raw"), disk0) << "the source is never written";
        EXPECT_EQ(contents(*src, "disk1.raw"), disk1);
    }

    jobs_test::FakeGuest guest;
    OfflineQemu qemu;
    std::unique_ptr<pools::Pool> src = pools::make_mem_pool(64 * k_mib);
    jobs_test::FaultedPool pool{64 * k_mib};  // the destination
    bool corrupt = false;
    std::atomic<bool> cancel{false};
    fs::path dir = jobs_test::temp_dir("offline");
    std::vector<std::byte> disk0 = contents(*src, "disk0.raw"), disk1;

    void snapshot() {
        disk0 = contents(*src, "disk0.raw");
        disk1 = contents(*src, "disk1.raw");
    }
};

TEST_F(MigrateOfflineTest, EveryDiskIsCopiedAfterThePowerdownAndProvenEqual) {
    snapshot();
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->disks.size(), 2u);
    EXPECT_EQ(r->shutdown, "powered down");
    for (const auto& d : r->disks) {
        const std::string name = d.device + ".raw";
        EXPECT_EQ(d.target, "mem:" + name);
        EXPECT_EQ(contents(*pool.mem, name), contents(*src, name)) << d.device;
        // The digest is the SHA-256 of the disk's contents (sha256sum of a raw image).
        EXPECT_EQ(d.digest, sha256(contents(*src, name))) << d.device;
        EXPECT_EQ(d.source, "nfs://nas/vms/" + name);
    }
    // Sparse: only the patterns were copied (64 KiB each), not the 6 MiB.
    EXPECT_EQ(r->disks[0].data_bytes + r->disks[1].data_bytes, 3u * (64 << 10));
    EXPECT_TRUE(qemu.got("system_powerdown"));
    EXPECT_TRUE(qemu.got("quit")) << "quit after SHUTDOWN: a -no-shutdown QEMU would stay";
    expect_sources_unchanged();
    EXPECT_TRUE(no_journal());
}

TEST_F(MigrateOfflineTest, AGuestIgnoringThePowerButtonIsQuitAfterTheTimeout) {
    qemu.obeys_powerdown = false;
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(r->shutdown.starts_with("quit after")) << r->shutdown;
    EXPECT_EQ(dst_volumes().size(), 2u);
}

TEST_F(MigrateOfflineTest, AShutDownGuestIsOnlyQuit) {
    qemu.run_state = "shutdown";
    auto r = migrate();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->shutdown, "was shut down");
    EXPECT_FALSE(qemu.got("system_powerdown"));
    EXPECT_TRUE(qemu.got("quit"));
}

TEST_F(MigrateOfflineTest, OneDiskWithDisk) {
    auto o = options();
    o.disks = {"disk1"};
    auto r = migrate(o);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->disks.size(), 1u);
    EXPECT_EQ(dst_volumes(), std::vector<std::string>{"disk1.raw"});
}

TEST_F(MigrateOfflineTest, AFullPoolFailsBeforeTheShutdownAndTheGuestKeepsRunning) {
    // Room for disk0's 4 MiB, not for disk1's 2 MiB more (mem pools reserve the size).
    pool.mem = pools::make_mem_pool(5 * k_mib);
    pool.use_faults({});
    snapshot();
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("failed in phase create"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("deleted"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("keeps running"), std::string::npos) << r.error().message;
    EXPECT_FALSE(qemu.got("system_powerdown"));
    EXPECT_FALSE(qemu.got("quit"));
    EXPECT_TRUE(dst_volumes().empty());
    expect_sources_unchanged();
    EXPECT_TRUE(no_journal());
}

TEST_F(MigrateOfflineTest, AWriteErrorWhileCopyingDeletesEveryCopy) {
    pool.use_faults({.fail_write_n = 2});
    snapshot();
    auto r = migrate();
    ASSERT_FALSE(r);
    const std::string& m = r.error().message;
    EXPECT_NE(m.find("failed in phase copy"), std::string::npos) << m;
    EXPECT_NE(m.find("the destination volumes blockmig created were deleted"), std::string::npos)
        << m;
    EXPECT_NE(m.find("the source files are untouched"), std::string::npos) << m;
    EXPECT_NE(m.find("stays shut off"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "one line";
    EXPECT_TRUE(dst_volumes().empty());
    expect_sources_unchanged();
    EXPECT_TRUE(no_journal());
}

TEST_F(MigrateOfflineTest, ACopyThatReadsBackDifferentlyFailsTheDigestCompare) {
    corrupt = true;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("digest mismatch"), std::string::npos) << r.error().message;
    EXPECT_TRUE(dst_volumes().empty());
    EXPECT_TRUE(no_journal());
}

TEST_F(MigrateOfflineTest, CtrlCBeforeTheShutdownLeavesTheGuestRunning) {
    cancel = true;
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("keeps running"), std::string::npos) << r.error().message;
    EXPECT_FALSE(qemu.got("system_powerdown"));
    EXPECT_TRUE(dst_volumes().empty());
    EXPECT_TRUE(no_journal());
}

TEST_F(MigrateOfflineTest, RefusalsTouchNothing) {
    auto refused = [&](const OfflineOptions& o, const std::string& words) {
        auto r = migrate(o);
        ASSERT_FALSE(r);
        EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
        EXPECT_FALSE(qemu.got("system_powerdown"));
        EXPECT_FALSE(qemu.got("quit"));
        EXPECT_TRUE(dst_volumes().empty());
        EXPECT_TRUE(no_journal());
    };
    auto o = options();
    o.disks = {"disk9"};
    refused(o, "no disk disk9 (it has: disk0, disk1)");
    qemu.run_state = "paused";
    refused(options(), "the guest is paused");
    qemu.run_state = "running";
    qemu.jobs = {"mirror0"};
    refused(options(), "block job mirror0");
    qemu.jobs.clear();
    qemu.disks[1].format = "luks";
    refused(options(), "disk1: format luks cannot be copied");
    qemu.disks[1].format = "raw";
    qemu.disks[1].file = "json:{\"driver\":\"nbd\"}";
    refused(options(), "not a file or a pool volume");
    qemu.disks[1].file = "nfs://nas/other/disk0.raw";
    refused(options(), "both have a file named disk0.raw");
    qemu.disks[1].file = "/vms/disk1.raw";
    // A local name, and no QEMU pid behind the QMP (tcp:, ssh://): it may be another file.
    refused(options(), "cannot prove it reads QEMU's file");
    qemu.disks[1].file = "nfs://nas/vms/disk1.raw";
    ASSERT_TRUE(pool.mem->create("disk1.raw", 4096, pools::ImageFormat::raw));
    auto r = migrate();
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("mem:disk1.raw already exists"), std::string::npos)
        << r.error().message;
    EXPECT_EQ(dst_volumes(), std::vector<std::string>{"disk1.raw"});
}

// blockmig died: recover undoes a job that did not reach `done`, keeps one that did.
TEST_F(MigrateOfflineTest, RecoverDeletesAnUnfinishedCopyAndKeepsAFinishedOne) {
    for (const std::string phase : {"copying", "done"}) {
        jobs::Job job;
        job.kind = "offline";
        job.guest.qmp = "/run/vm1.qmp";
        job.disks.push_back({.disk = "disk0", .target = "mem:c.raw", .phase = phase});
        auto journal = jobs::Journal::create(dir / "jobs", job);
        ASSERT_TRUE(journal);
        jobs::UndoEnv env;
        env.resolve = [this](const std::string& url) { return opener().resolve_volume(url); };
        jobs::Effects effects(*journal, env);
        ASSERT_TRUE(
            effects.create_volume("disk0", *pool.mem, "c.raw", 4096, pools::ImageFormat::raw));
        ASSERT_TRUE(journal->update([&](jobs::Job& j) { j.disks[0].phase = phase; }));
        EXPECT_TRUE(journal->job().needs_recovery() || phase == "done");
        auto report = migrate::recover_offline(*journal, env, dir / "jobs");
        ASSERT_TRUE(report) << report.error().message;
        EXPECT_TRUE(report->journal_removed);
        if (phase == "copying") {
            EXPECT_TRUE(dst_volumes().empty()) << "an unverified copy is deleted";
            EXPECT_NE(report->disks[0].reason.find("shut down"), std::string::npos);
        } else {
            EXPECT_EQ(dst_volumes(), std::vector<std::string>{"c.raw"}) << "verified copies stay";
            ASSERT_TRUE(pool.mem->remove("c.raw"));
        }
        EXPECT_TRUE(no_journal());
    }
}

}  // namespace
