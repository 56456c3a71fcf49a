// blockmig migrate --offline against a real lab guest stamping its disks:
// - a raw and a qcow2 disk copied into a dir pool: the guest is shut down
//   (the lab guest has no ACPI handler, so the power button is ignored and
//   blockmig quits QEMU after --shutdown-timeout), every stamped block
//   verifies on each copy, the digests blockmig printed equal sha256sum of
//   the source (raw) and of the copy, the sources are kept and verify;
// - into an NFS pool (nfs-ganesha): the copy verifies;
// - a copy that exists already in the pool: refused up front, the guest
//   keeps running and writing, the existing file untouched;
// - blockmig SIGKILLed while it copies: `blockmig recover` deletes the
//   copy, the source file is intact and verifies.
#include <sys/wait.h>

#include "offline_test_util.hpp"

namespace {

using namespace move_test;
using namespace offline_test;
using blockmig::lab::NfsServer;

class MigrateOffline : public OfflineRig {
  protected:
    MigrateOffline() : OfflineRig("offline") {}

    std::vector<std::string> args(const std::string& pool, std::vector<std::string> extra = {}) {
        std::vector<std::string> a{"--output",
                                   "json",
                                   "migrate",
                                   "--offline",
                                   "--src-qmp",
                                   guest->qmp_socket().string(),
                                   "--dst-pool",
                                   pool,
                                   "--state-dir",
                                   state.string(),
                                   "--shutdown-timeout",
                                   "3"};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }

    json jobs_listing() { return move_test::jobs_listing(state); }

};

TEST_F(MigrateOffline, RawAndQcow2DisksAreCopiedVerifiedAndKept) {
    // disk1: a qcow2 overlay on a raw base holding 8 MiB of data past the stamped part.
    const fs::path raw = dir / "vm-a.raw", qcow2 = dir / "vm-b.qcow2", base = dir / "base.raw";
    blockmig::lab::run_ok({"truncate", "-s", "64M", raw.string()});
    make_overlay_on_raw(qcow2, base, 48, 8);
    fs::create_directories(pool);
    boot({{"disk0", raw, "raw"}, {"disk1", qcow2, "qcow2"}});
    ASSERT_TRUE(guest->wait_for_ack("vdb", 1, 120s)) << guest->console();

    auto r = blockmig_cli(args(pool.string()));
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(guest->wait_exit(10s)) << "the source QEMU is gone";
    json done = done_line(r.out);
    ASSERT_EQ(done["disks"].size(), 2u) << r.out;
    EXPECT_TRUE(done.value("source_kept", false));
    EXPECT_NE(done.value("shutdown", "").find("quit after 3 s"), std::string::npos) << r.out;
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u) << "no journal left";

    // Every block the guest acknowledged is on each copy.
    const fs::path raw_copy = pool / "vm-a.raw", qcow2_copy = pool / "vm-b.qcow2";
    auto v0 =
        blockmig::lab::verify_image(raw_copy.string(), "raw", k_blocks, guest->last_ack("vda"));
    EXPECT_TRUE(v0.intact()) << v0.output;
    auto v1 =
        blockmig::lab::verify_image(qcow2_copy.string(), "qcow2", k_blocks, guest->last_ack("vdb"));
    EXPECT_TRUE(v1.intact()) << v1.output;
    EXPECT_EQ(blockmig::lab::run({"qemu-img", "check", "-q", qcow2_copy.string()}).status, 0)
        << "the copied qcow2 is consistent";
    // The overlay was flattened: a standalone image with the base's data in it.
    auto info = json::parse(
        blockmig::lab::run_ok({"qemu-img", "info", "--output", "json", qcow2_copy.string()}));
    EXPECT_FALSE(info.contains("backing-filename")) << info.dump();
    auto same = blockmig::lab::run({"qemu-img", "compare", qcow2.string(), qcow2_copy.string()});
    EXPECT_EQ(same.status, 0) << same.out;
    // The digests blockmig compared are the contents' SHA-256 (sha256sum of a raw image).
    for (const auto& d : done["disks"]) {
        if (d["disk"] == "disk0") {
            EXPECT_EQ(d["sha256"], sha256_of(raw)) << d.dump();
            EXPECT_EQ(d["sha256"], sha256_of(raw_copy)) << d.dump();
            EXPECT_EQ(d["format"], "raw");
        } else {
            const fs::path flat = dir / "flat.raw";
            blockmig::lab::run_ok(
                {"qemu-img", "convert", "-O", "raw", qcow2_copy.string(), flat.string()});
            EXPECT_EQ(d["sha256"], sha256_of(flat)) << d.dump();
            EXPECT_EQ(d["format"], "qcow2");
        }
    }
    // The sources are kept, and still verify.
    ASSERT_TRUE(fs::exists(raw) && fs::exists(qcow2));
    auto s0 = blockmig::lab::verify_image(raw.string(), "raw", k_blocks, guest->last_ack("vda"));
    EXPECT_TRUE(s0.intact()) << s0.output;
    // Sparse: the copy holds about the source's 16 MiB of data, not its 64 MiB.
    struct stat st {};
    ASSERT_EQ(::stat(raw_copy.c_str(), &st), 0);
    EXPECT_LT(static_cast<std::uint64_t>(st.st_blocks) * 512, 24 * k_mib);
    EXPECT_EQ(fs::file_size(raw_copy), 64 * k_mib);
}

TEST_F(MigrateOffline, IntoAnNfsPool) {
    NfsServer nfs;
    const fs::path raw = dir / "vm-n.raw";
    blockmig::lab::run_ok({"truncate", "-s", "32M", raw.string()});
    boot({{"disk0", raw, "raw"}});
    // For people this time: the text output names the new volume and its digest.
    auto a = args(nfs.url());
    a.erase(a.begin(), a.begin() + 2);
    auto r = blockmig_cli(a);
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(guest->wait_exit(10s));
    EXPECT_NE(r.out.find("disk0: " + raw.string() + " -> " + nfs.url() + "/vm-n.raw (raw"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("sha256 " + sha256_of(raw) + " on both"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("the source files are kept"), std::string::npos) << r.out;
    auto v = blockmig::lab::verify_image((nfs.export_dir() / "vm-n.raw").string(), "raw", k_blocks,
                                         guest->last_ack("vda"));
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST_F(MigrateOffline, AnExistingCopyIsRefusedAndTheGuestKeepsRunning) {
    const fs::path raw = dir / "vm-x.raw";
    blockmig::lab::run_ok({"truncate", "-s", "32M", raw.string()});
    fs::create_directories(pool);
    blockmig::lab::run_ok({"sh", "-c", "echo precious > " + (pool / "vm-x.raw").string()});
    boot({{"disk0", raw, "raw"}});
    auto r = blockmig_cli(args(pool.string()));
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
    EXPECT_EQ(blockmig::lab::run_ok({"cat", (pool / "vm-x.raw").string()}), "precious\n");
    EXPECT_TRUE(guest_keeps_writing(*guest)) << "the guest was not touched";
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
}

TEST_F(MigrateOffline, KilledWhileCopyingIsRecoveredWithoutTheCopy) {
    const fs::path raw = make_big_raw("vm-k.raw");
    fs::create_directories(pool);
    boot({{"disk0", raw, "raw"}});
    pid_t pid = spawn_blockmig(args(pool.string()), true);
    const bool copying = until_copying();
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    ASSERT_TRUE(copying) << jobs_listing().dump();
    EXPECT_TRUE(fs::exists(pool / "vm-k.raw")) << "the partial copy is there before recover";

    json listing = jobs_listing();
    ASSERT_EQ(listing["jobs"].size(), 1u);
    EXPECT_EQ(listing["jobs"][0]["kind"], "offline");
    EXPECT_EQ(listing["jobs"][0]["state"], "needs-recovery") << listing.dump();
    auto r = blockmig_cli({"recover", "--state-dir", state.string(), "--all"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("the copy is deleted"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(pool / "vm-k.raw")) << "recover deleted the partial copy";
    EXPECT_TRUE(fs::is_empty(pool));
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    EXPECT_TRUE(guest->wait_exit(10s));
    ASSERT_TRUE(fs::exists(raw));
    auto v = blockmig::lab::verify_image(raw.string(), "raw", k_blocks, guest->last_ack("vda"));
    EXPECT_TRUE(v.intact()) << v.output;
}

}  // namespace
