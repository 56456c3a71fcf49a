// blockmig migrate --offline --src-disk DEV=PATH: a guest that is not
// running (no QEMU) moved by its files. A real lab guest stamps its disks,
// its QEMU is quit (it flushes and closes the images), then:
// - a raw and a qcow2-over-raw disk into a dir pool: formats probed, every
//   stamped block verifies on each copy, the digests equal sha256sum, the
//   qcow2 flattened, the sources kept;
// - into an NFS pool (nfs-ganesha): the copy verifies;
// - an image a running QEMU has open is refused in one line (QEMU's OFD
//   write lock), nothing created, the guest keeps writing;
// - while it copies, a QEMU opening a source writable (qemu-io, QEMU's own
//   block layer) fails to get its write lock; blockmig SIGKILLed then:
//   `blockmig jobs` names the files, `blockmig recover` deletes the copy,
//   the source verifies and opens writable again;
// - a pool that fills up during the copy (a 4 MiB tmpfs; the qcow2's base
//   holds 16 MiB of data the capacity check does not see): the created
//   volume is deleted, no journal, the source verifies.
#include <sys/mount.h>
#include <sys/wait.h>

#include "offline_test_util.hpp"

namespace {

using namespace move_test;
using namespace offline_test;
using blockmig::lab::NfsServer;

class MigrateOfflineStopped : public OfflineRig {
  protected:
    MigrateOfflineStopped() : OfflineRig("offline-stopped") {}
    void TearDown() override {
        if (mounted) ::umount2(pool.c_str(), MNT_DETACH);
    }

    // The guest is shut off: QEMU quits, closing (flushing) its images.
    void quit_guest() {
        guest->qmp(R"({"execute":"quit"})");
        ASSERT_TRUE(guest->wait_exit(10s)) << "the lab QEMU quit";
    }

    std::vector<std::string> args(const std::string& dst, std::vector<std::string> src) {
        std::vector<std::string> a{"--output",   "json", "migrate",     "--offline",
                                   "--dst-pool", dst,    "--state-dir", state.string()};
        for (const auto& s : src) {
            a.push_back("--src-disk");
            a.push_back(s);
        }
        return a;
    }

    void expect_intact(const fs::path& file, const char* format, const char* dev) {
        auto v = blockmig::lab::verify_image(file.string(), format, k_blocks, guest->last_ack(dev));
        EXPECT_TRUE(v.intact()) << file << ": " << v.output;
    }

    bool mounted = false;
};

TEST_F(MigrateOfflineStopped, RawAndQcow2FilesAreProbedCopiedVerifiedAndKept) {
    const fs::path raw = dir / "vm-a.raw", qcow2 = dir / "vm-b.qcow2", base = dir / "base.raw";
    blockmig::lab::run_ok({"truncate", "-s", "64M", raw.string()});
    make_overlay_on_raw(qcow2, base, 48, 8);
    fs::create_directories(pool);
    boot({{"disk0", raw, "raw"}, {"disk1", qcow2, "qcow2"}});
    quit_guest();

    auto r =
        blockmig_cli(args(pool.string(), {"disk0=" + raw.string(), "disk1=" + qcow2.string()}));
    ASSERT_EQ(r.status, 0) << r.out;
    json done = done_line(r.out);
    ASSERT_EQ(done["disks"].size(), 2u) << r.out;
    EXPECT_EQ(done.value("shutdown", ""), "was not running") << r.out;
    EXPECT_EQ(jobs_listing(state)["jobs"].size(), 0u) << "no journal left";
    const fs::path raw_copy = pool / "vm-a.raw", qcow2_copy = pool / "vm-b.qcow2";
    expect_intact(raw_copy, "raw", "vda");
    expect_intact(qcow2_copy, "qcow2", "vdb");
    EXPECT_EQ(blockmig::lab::run({"qemu-img", "check", "-q", qcow2_copy.string()}).status, 0);
    auto info = json::parse(
        blockmig::lab::run_ok({"qemu-img", "info", "--output", "json", qcow2_copy.string()}));
    EXPECT_FALSE(info.contains("backing-filename")) << "flattened: " << info.dump();
    auto same = blockmig::lab::run({"qemu-img", "compare", qcow2.string(), qcow2_copy.string()});
    EXPECT_EQ(same.status, 0) << same.out;
    for (const auto& d : done["disks"]) {
        EXPECT_EQ(d["format_from"], "probed") << d.dump();
        if (d["disk"] == "disk0") {
            EXPECT_EQ(d["format"], "raw");
            EXPECT_EQ(d["sha256"], sha256_of(raw)) << d.dump();
            EXPECT_EQ(d["sha256"], sha256_of(raw_copy)) << d.dump();
        } else {
            EXPECT_EQ(d["format"], "qcow2") << "the qcow2 magic";
            const fs::path flat = dir / "flat.raw";
            blockmig::lab::run_ok(
                {"qemu-img", "convert", "-O", "raw", qcow2_copy.string(), flat.string()});
            EXPECT_EQ(d["sha256"], sha256_of(flat)) << d.dump();
        }
    }
    expect_intact(raw, "raw", "vda");
    expect_intact(qcow2, "qcow2", "vdb");
    // QEMU can open the sources again: blockmig's locks ended with it.
    EXPECT_EQ(blockmig::lab::run({"qemu-img", "info", raw.string()}).status, 0);
}

TEST_F(MigrateOfflineStopped, IntoAnNfsPool) {
    NfsServer nfs;
    const fs::path raw = dir / "vm-n.raw";
    blockmig::lab::run_ok({"truncate", "-s", "32M", raw.string()});
    boot({{"disk0", raw, "raw"}});
    quit_guest();
    auto a = args(nfs.url(), {"disk0=" + raw.string()});
    a.erase(a.begin(), a.begin() + 2);  // text output, for people
    auto r = blockmig_cli(a);
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("disk0: " + raw.string() + " -> " + nfs.url() + "/vm-n.raw (raw, probed"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("sha256 " + sha256_of(raw) + " on both"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("the guest was not running"), std::string::npos) << r.out;
    expect_intact(nfs.export_dir() / "vm-n.raw", "raw", "vda");
}

TEST_F(MigrateOfflineStopped, AnImageARunningQemuHasOpenIsRefused) {
    const fs::path raw = dir / "vm-r.raw";
    blockmig::lab::run_ok({"truncate", "-s", "32M", raw.string()});
    fs::create_directories(pool);
    boot({{"disk0", raw, "raw"}});
    auto r = blockmig_cli(args(pool.string(), {"disk0=" + raw.string()}));
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find("blockmig: error: migrate --offline: disk disk0: " + raw.string() +
                         " is in use: another process has it open for writing"),
              std::string::npos)
        << r.out;
    EXPECT_EQ(lines_of(r.out).size(), 1u) << "one line: " << r.out;
    EXPECT_TRUE(fs::is_empty(pool)) << "nothing created";
    EXPECT_EQ(jobs_listing(state)["jobs"].size(), 0u);
    EXPECT_TRUE(guest_keeps_writing(*guest)) << "the guest was not touched";
}

TEST_F(MigrateOfflineStopped, TheFilesAreLockedWhileCopyingAndAKilledJobIsRecovered) {
    const fs::path raw = make_big_raw("vm-k.raw");
    fs::create_directories(pool);
    boot({{"disk0", raw, "raw"}});
    quit_guest();
    // Opening read-write runs QEMU's lock check; `flush` writes nothing.
    const std::vector<std::string> open_writable{"qemu-io", "-f",    "raw",
                                                 "-c",      "flush", raw.string()};
    pid_t pid = spawn_blockmig(args(pool.string(), {"disk0=" + raw.string()}), true);
    const bool copying = until_copying();
    auto writer = blockmig::lab::run(open_writable);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    ASSERT_TRUE(copying) << jobs_listing(state).dump();
    EXPECT_NE(writer.status, 0) << writer.out;
    EXPECT_NE(writer.out.find("Failed to get \"write\" lock"), std::string::npos) << writer.out;

    json listing = jobs_listing(state);
    ASSERT_EQ(listing["jobs"].size(), 1u);
    EXPECT_EQ(listing["jobs"][0]["kind"], "offline");
    EXPECT_EQ(listing["jobs"][0]["state"], "needs-recovery") << listing.dump();
    EXPECT_EQ(listing["jobs"][0]["guest"]["files"], json::array({raw.string()})) << listing.dump();
    auto text = blockmig_cli({"jobs", "--state-dir", state.string()});
    EXPECT_NE(text.out.find("guest not running, files " + raw.string()), std::string::npos)
        << text.out;
    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("the copy is deleted"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("the guest was not running"), std::string::npos) << r.out;
    EXPECT_TRUE(fs::is_empty(pool)) << "recover deleted the partial copy";
    EXPECT_EQ(jobs_listing(state)["jobs"].size(), 0u);
    expect_intact(raw, "raw", "vda");
    auto after = blockmig::lab::run(open_writable);
    EXPECT_EQ(after.status, 0) << "the locks died with blockmig: " << after.out;
}

TEST_F(MigrateOfflineStopped, APoolFillingUpDuringTheCopyKeepsNothing) {
    const fs::path qcow2 = dir / "vm-f.qcow2", base = dir / "base-f.raw";
    make_overlay_on_raw(qcow2, base, 64, 16);
    fs::create_directories(pool);
    ASSERT_EQ(::mount("tmpfs", pool.c_str(), "tmpfs", 0, "size=4m"), 0) << std::strerror(errno);
    mounted = true;
    boot({{"disk0", qcow2, "qcow2"}});
    quit_guest();
    const std::string before = sha256_of(qcow2);
    auto r = blockmig_cli(args(pool.string(), {"disk0=" + qcow2.string()}));
    EXPECT_EQ(r.status, 1) << r.out;
    const auto lines = lines_of(r.out);
    ASSERT_FALSE(lines.empty());
    const std::string& error = lines.back();
    EXPECT_NE(error.find("failed in phase copy"), std::string::npos) << r.out;
    EXPECT_NE(error.find("the destination volumes blockmig created were deleted"),
              std::string::npos)
        << r.out;
    EXPECT_NE(error.find("the guest was not running"), std::string::npos) << r.out;
    EXPECT_TRUE(fs::is_empty(pool)) << "the partial copy is gone";
    EXPECT_EQ(jobs_listing(state)["jobs"].size(), 0u);
    EXPECT_EQ(sha256_of(qcow2), before) << "the source is never written";
    expect_intact(qcow2, "qcow2", "vda");
}

}  // namespace
