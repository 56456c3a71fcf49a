// `blockmig migrate --dst-launch` onto another host, as an admin on host A
// does it: blockmig runs in lab host A's namespace, the destination QEMU is
// started on host B with `ssh` (sshd in B's namespace, throw-away keys), its
// monitor is reached as ssh://root@10.77.0.2:2222/PATH, and its volume is
// made in an NFS pool on the lab's NAS (nfs-ganesha in A's namespace on
// 10.77.0.1, reached by B over the link). The failure paths: a QEMU on B
// the pre-flight refuses is quit through its monitor over ssh and its volume
// deleted; a remote command that cannot run leaves nothing in the pool.
// CHAP: the volume is a LUN of a CHAP target in A's namespace, the password
// travels in ssh's stdin to B's QEMU (-object {secret-object}) and shows in
// no process's argv or environment and no file of the state dir.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <fstream>

#include "migrate_ssh_rig.hpp"
#include "secret_watch.hpp"

using namespace migrate_test;
using blockmig::lab::IscsiTarget;
using blockmig::lab::NfsServer;

namespace {

class MigrateSshLaunch : public SshRig {
  protected:
    void SetUp() override {
        SshRig::SetUp();
        if (HasFatalFailure()) return;
        dst.reset();  // blockmig starts its own on B
        nas = std::make_unique<NfsServer>(hosts->ns_a(), HostPair::k_addr_a);
        fs::create_directories(on_b);
    }

    void TearDown() override {
        // A QEMU a failed test left on B: found by its socket's directory.
        for (int pid : qemus_on_b()) kill(pid, SIGKILL);
    }

    std::vector<int> qemus_on_b() const {
        return processes_where([&](const std::string& cmdline) {
            return cmdline.find(on_b.string()) != std::string::npos &&
                   cmdline.find("qemu-system") != std::string::npos;
        });
    }

    // `migrate ... --dst-launch -- ssh ... root@B env ... guest.sh run {qmp} ...`.
    // `remote_env`: extra VAR=value words for the remote `env`.
    std::vector<std::string> launch_args(std::vector<std::string> remote_env,
                                         std::string program = "") {
        std::vector<std::string> a{"migrate",
                                   "--src-qmp",
                                   src->qmp_socket().string(),
                                   "--dst-qmp",
                                   sshd->url(socket_on_b),
                                   "--dst-addr",
                                   HostPair::k_addr_b,
                                   "--copy-storage",
                                   "all",
                                   "--state-dir",
                                   state.string(),
                                   "--dst-pool",
                                   pool.empty() ? nas->url() : pool,
                                   "--dst-launch",
                                   "--output",
                                   "json",
                                   "--",
                                   "ssh",
                                   "-F",
                                   sshd->client_config().string(),
                                   "-p",
                                   std::to_string(sshd->port()),
                                   std::string("root@") + HostPair::k_addr_b,
                                   "env"};
        // ssh gives the remote command a fresh environment: the lab's settings travel along.
        for (const char* name :
             {"BLOCKMIG_QEMU", "BLOCKMIG_QEMU_DIR", "BLOCKMIG_CACHE", "BLOCKMIG_ACCEL"})
            if (const char* v = std::getenv(name)) a.push_back(std::string(name) + "=" + v);
        // A value with a space: it reaches guest.sh as one word only if quoted for B's shell.
        remote_env.push_back("BLOCKMIG_GUEST_APPEND=stamp.hb=100 stamp.blocks=" +
                             std::to_string(k_blocks));
        a.insert(a.end(), remote_env.begin(), remote_env.end());
        std::vector<std::string> drive{
            "-drive", "file={vol:disk0},format=raw,if=none,id=disk0-fmt,cache=none"};
        if (!pools_file.empty()) drive.insert(drive.begin(), {"-object", "{secret-object}"});
        const auto qemu = incoming_guest_words(drive, program);
        a.insert(a.end(), qemu.begin(), qemu.end());
        if (!pools_file.empty()) a.insert(a.begin() + 1, {"--pools", pools_file.string()});
        return a;
    }

    json qmp_on_b(const std::string& command) {
        auto r = on_host_a({"qmp", sshd->url(socket_on_b), command});
        json j = json::parse(r.out.substr(std::min(r.out.find('{'), r.out.size())), nullptr, false);
        return j.is_discarded() ? json::object() : j;
    }

    // Waits until no QEMU of this test runs on B.
    bool qemu_on_b_gone(std::chrono::milliseconds timeout) {
        const auto deadline = Clock::now() + timeout;
        while (!qemus_on_b().empty() && Clock::now() < deadline) std::this_thread::sleep_for(100ms);
        return qemus_on_b().empty();
    }

    std::unique_ptr<NfsServer> nas;
    std::string pool;                // --dst-pool; empty: the NAS
    fs::path pools_file;             // --pools (a CHAP pool's: then -object {secret-object} too)
    fs::path on_b = dir / "host-b";  // the destination QEMU's files "on B"
    fs::path socket_on_b = on_b / "qmp.sock";
};

TEST_F(MigrateSshLaunch, TheGuestRunsOnTheHostSshStartedItOn) {
    auto r = on_host_a(launch_args({}));
    json done;
    std::optional<blockmig::lab::Ack> ack;
    ASSERT_NO_FATAL_FAILURE(expect_ran_to_done(r, done, ack));

    // The QEMU on B answers at the ssh:// address and runs the guest.
    EXPECT_EQ(qmp_on_b("query-status").value("status", ""), "running");
    EXPECT_EQ(qemus_on_b().size(), 1u) << "one QEMU, started through ssh";
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    // Its disk is the one volume blockmig made on the NAS, of the source's size.
    const auto volumes = entries_of(nas->export_dir());
    ASSERT_EQ(volumes.size(), 1u);
    const fs::path volume = nas->export_dir() / *volumes.begin();
    EXPECT_EQ(fs::file_size(volume), 64u << 20);
    EXPECT_TRUE(volume.filename().string().starts_with(done["job"].get<std::string>()));
    // Every block the source acknowledged is on the NAS volume B writes to.
    qmp_on_b("stop");
    auto v = blockmig::lab::verify_raw(volume, k_blocks, ack);
    EXPECT_TRUE(v.intact()) << v.output;
    qmp_on_b("quit");
    EXPECT_TRUE(qemu_on_b_gone(15s));
}

TEST_F(MigrateSshLaunch, ARefusedDestinationIsQuitOverSshAndItsVolumeDeleted) {
    // Another memory size: the pre-flight refuses the QEMU started on B.
    auto r = on_host_a(launch_args({"BLOCKMIG_GUEST_MEM=512"}));
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    expect_one_error_line(r.err,
                          {"phase launch", "memory sizes differ", "keeps running on the source"});
    EXPECT_TRUE(qemu_on_b_gone(15s)) << "the QEMU on B was quit";
    EXPECT_TRUE(entries_of(nas->export_dir()).empty()) << "the volume blockmig made is deleted";
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    expect_guest_on_source();
}

TEST_F(MigrateSshLaunch, ACommandBCannotRunLeavesNothingBehind) {
    auto r = on_host_a(launch_args({}, "/nonexistent/qemu-system-x86_64"));
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    expect_one_error_line(r.err, {"phase launch", "ssh exited (status 127)", sshd->url(socket_on_b),
                                  "keeps running on the source"});
    EXPECT_TRUE(entries_of(nas->export_dir()).empty()) << "the volume blockmig made is deleted";
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    expect_guest_on_source();
}

TEST_F(MigrateSshLaunch, SomethingAlreadyAnsweringThereIsRefusedBeforeAnythingIsMade) {
    // B already runs a QEMU on that socket: blockmig must not take it for its own.
    GuestConfig other = config;
    other.disks[0].path = dst_disk;
    other.extra_args = {"-qmp", "unix:" + socket_on_b.string() + ",server=on,wait=off"};
    dst = std::make_unique<Guest>(blockmig::lab::incoming_config(other, hosts->ns_b()));
    auto r = on_host_a(launch_args({}));
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    expect_one_error_line(r.err, {"a QEMU already answers there"});
    EXPECT_TRUE(entries_of(nas->export_dir()).empty());
    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "inmigrate")
        << "the other QEMU is untouched";
    expect_guest_on_source();
}

TEST_F(MigrateSshLaunch, ThePasswordOfAChapPoolReachesBInSshsStdinOnly) {
    const std::string user = "bmssh", password = "ssh-chap-pw-a61c07e5";
    IscsiTarget iscsi(64 * k_mib, 1, user, password, hosts->ns_a(), HostPair::k_addr_a);
    pools_file = dir / "pools.toml";
    std::ofstream(pools_file) << "[pool.san]\ntype = \"iscsi\"\nurl = \"iscsi://" << user << "%"
                              << password << "@" << iscsi.portal() << "/" << iscsi.iqn() << "\"\n";
    fs::permissions(pools_file, fs::perms::owner_read | fs::perms::owner_write);
    pool = "san";

    SecretWatch watch(password, iscsi.pid(), state, "blockmig-chap");
    auto r = on_host_a(launch_args({}));
    watch.stop();
    json done;
    std::optional<blockmig::lab::Ack> ack;
    ASSERT_NO_FATAL_FAILURE(expect_ran_to_done(r, done, ack));
    EXPECT_EQ(qmp_on_b("query-status").value("status", ""), "running");
    EXPECT_EQ(qemus_on_b().size(), 1u) << "one QEMU, started through ssh";
    EXPECT_TRUE(watch.saw_qemu) << "the watch never sampled the QEMU on B";
    EXPECT_TRUE(watch.leaks.empty()) << "the password is in: " << joined(watch.leaks);
    EXPECT_GE(watch.files.size(), 2u) << joined(watch.files);
    EXPECT_EQ(r.out.find(password), std::string::npos);
    EXPECT_EQ(r.err.find(password), std::string::npos);
    EXPECT_TRUE(entries_of(nas->export_dir()).empty()) << "nothing on the NAS";
    // Every block the source acknowledged is on the LUN B logged in to.
    qmp_on_b("stop");
    auto v = blockmig::lab::verify_raw(iscsi.backing_file(1), k_blocks, ack);
    EXPECT_TRUE(v.intact()) << v.output;
    qmp_on_b("quit");
    EXPECT_TRUE(qemu_on_b_gone(15s));
}

// No lab needed: refused by the command line, before any connection.
TEST(MigrateSshLaunchUsage, ADirectoryPoolOnThisHostIsAUsageError) {
    blockmig::lab::TempDir dir("ssh-launch-usage");
    auto r = blockmig_cli_split(
        {"migrate", "--src-qmp", (dir / "src.qmp").string(), "--dst-qmp",
         "ssh://root@b/run/b/qmp.sock", "--copy-storage", "all", "--state-dir",
         (dir / "jobs").string(), "--dst-pool", (dir / "pool").string(), "--dst-launch", "--",
         "ssh", "root@b", "qemu-system-x86_64", "-qmp", "unix:{qmp},server=on,wait=off"},
        dir.path());
    EXPECT_EQ(r.status, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("is a directory on this host"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "pool"));
    EXPECT_FALSE(fs::exists(dir / "jobs"));

    auto local =
        blockmig_cli_split({"migrate", "--src-qmp", (dir / "src.qmp").string(), "--dst-qmp",
                            "tcp:b:4444", "--copy-storage", "all", "--dst-pool", "nfs://h/e",
                            "--dst-launch", "--", "ssh", "b", "qemu", "{qmp}"},
                           dir.path());
    EXPECT_EQ(local.status, 2) << local.err;
    EXPECT_NE(local.err.find("only ssh://"), std::string::npos) << local.err;
}

}  // namespace
