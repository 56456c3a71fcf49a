// `blockmig migrate --dst-pool iscsi://... --dst-launch -- ip netns exec B ...`:
// the destination's disk is a LUN of an iSCSI target (tgtd in lab host A's
// namespace on 10.77.0.1, reached by the QEMU on host B over the link, and
// by blockmig, run in A's namespace, for the pool's LUN list). LUNs are not
// created: blockmig takes a free one and hands the launched QEMU its URL.
// - success: LUN 1 holds data (not free), so the guest lands on LUN 2; it
//   runs on B and every block the source acknowledged is on LUN 2; LUN 1 is
//   untouched; no job is left;
// - refusals: --dst-vol naming a LUN the target does not have is refused
//   before anything is made (no job, no QEMU); a launched QEMU the
//   pre-flight refuses (another memory size) is stopped and the LUN it got
//   is released, zeroed back to unused (no job holds it), the guest keeps
//   running on A, and the next run takes that LUN (80 MiB LUNs for a 64 MiB
//   disk: the QEMU gets a raw node of exactly the disk's size over it);
// - CHAP: the target admits only its CHAP account, the pool (with the
//   password) is named in a pools file, the launched QEMU gets `-object
//   {secret-object}` and reads the password from its stdin: the guest lands
//   on LUN 2 and verifies there, and the password is in no process's argv or
//   environment (but tgtd's, which the lab gives it) while blockmig runs, in
//   no file of the state dir and in nothing blockmig prints.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>

#include "migrate_test_util.hpp"
#include "secret_watch.hpp"

using namespace migrate_test;
using blockmig::lab::IscsiTarget;

namespace {

class MigrateIscsiLaunch : public CopyRig {
  protected:
    void SetUp() override {
        CopyRig::SetUp();
        if (HasFatalFailure() || IsSkipped()) return;
        dst.reset();  // blockmig starts its own on B
        iscsi = std::make_unique<IscsiTarget>(lun_size, 2, chap_user, chap_password, hosts->ns_a(),
                                              HostPair::k_addr_a);
        // LUN 1 holds data: not free, never chosen, never written.
        std::ofstream(iscsi->backing_file(1), std::ios::in | std::ios::out | std::ios::binary)
            .write(k_foreign.data(), static_cast<std::streamsize>(k_foreign.size()));
    }

    void TearDown() override {
        // A launched QEMU a failed test left: found by the job's socket path.
        for (int pid : launched_qemus()) kill(pid, SIGKILL);
        iscsi.reset();
    }

    // blockmig in host A's namespace, where the target's portal is.
    SplitResult on_host_a(const std::vector<std::string>& args) {
        std::vector<std::string> argv{"ip", "netns", "exec", hosts->ns_a(), BLOCKMIG_BINARY};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_split(argv, dir.path());
    }

    std::vector<std::string> launch_args(std::vector<std::string> env,
                                         std::vector<std::string> extra = {}) {
        std::vector<std::string> a{"migrate",    "--src-qmp",        src->qmp_socket().string(),
                                   "--dst-addr", HostPair::k_addr_b, "--copy-storage",
                                   "all",        "--state-dir",      state.string(),
                                   "--dst-pool", dst_pool()};
        if (!chap_user.empty()) a.insert(a.end(), {"--pools", pools_file().string()});
        a.insert(a.end(), extra.begin(), extra.end());
        const std::vector<std::string> launch{"--dst-launch", "--output", "json",        "--", "ip",
                                              "netns",        "exec",     hosts->ns_b(), "env"};
        a.insert(a.end(), launch.begin(), launch.end());
        env.push_back("BLOCKMIG_GUEST_APPEND=stamp.hb=100 stamp.blocks=" +
                      std::to_string(k_blocks));
        a.insert(a.end(), env.begin(), env.end());
        // {vol:disk0} is the LUN's iscsi:// URL, which QEMU's iscsi driver
        // opens (with CHAP: json:{..., "password-secret": "blockmig-chap"}).
        std::vector<std::string> drive{
            "-drive", "file={vol:disk0},format=raw,if=none,id=disk0-fmt,cache=none"};
        if (!chap_user.empty()) drive.insert(drive.begin(), {"-object", "{secret-object}"});
        const auto qemu = incoming_guest_words(drive);
        a.insert(a.end(), qemu.begin(), qemu.end());
        return a;
    }

    // The first MiB of LUN `lun` (its backing file on this host).
    std::string lun_head(int lun) {
        std::ifstream in(iscsi->backing_file(lun), std::ios::binary);
        std::string head(1 << 20, '\0');
        in.read(head.data(), static_cast<std::streamsize>(head.size()));
        head.resize(static_cast<std::size_t>(in.gcount()));
        return head;
    }

    bool all_zero(const std::string& bytes) {
        return bytes.find_first_not_of('\0') == std::string::npos;
    }

    // Nothing of the copy on the source: no block job, no NBD client node.
    void expect_source_clean() {
        EXPECT_TRUE(qmp_return(*src, R"({"execute":"query-block-jobs"})").empty());
        for (const auto& n : qmp_return(*src, R"({"execute":"query-named-block-nodes"})"))
            EXPECT_NE(n.value("drv", ""), "nbd") << "an NBD client node is left: " << n.dump();
    }

    // The target's pool: its URL, or with CHAP "lab" of pools_file().
    std::string dst_pool() { return chap_user.empty() ? iscsi->base_url() : "lab"; }

    // With CHAP: [pool.lab] with the credentials in its URL (0600, outside
    // the state dir): how a password reaches blockmig without its argv.
    fs::path pools_file() {
        const fs::path file = dir / "pools.toml";
        if (!fs::exists(file)) {
            std::ofstream(file) << "[pool.lab]\ntype = \"iscsi\"\nurl = \"iscsi://" << chap_user
                                << "%" << chap_password << "@" << iscsi->portal() << "/"
                                << iscsi->iqn() << "\"\n";
            fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write);
        }
        return file;
    }

    std::uint64_t lun_size = 64 * k_mib;   // the guest's disk's (set before SetUp)
    std::string chap_user, chap_password;  // the target's CHAP account (set before SetUp)
    const std::string k_foreign = std::string(4096, 'F');
    std::unique_ptr<IscsiTarget> iscsi;
};

TEST_F(MigrateIscsiLaunch, TheGuestLandsOnAFreeLunAndVerifiesThere) {
    auto r = on_host_a(launch_args({}));
    json done;
    std::optional<blockmig::lab::Ack> ack;
    ASSERT_NO_FATAL_FAILURE(expect_ran_to_done(r, done, ack));
    EXPECT_NE(r.out.find(iscsi->lun_url(2)), std::string::npos) << "LUN 2 is named: " << r.out;

    const fs::path socket = state / (done["job"].get<std::string>() + ".dst.qmp");
    EXPECT_EQ(qmp_at(socket, "query-status").value("status", ""), "running") << socket;
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    // Every block the source acknowledged is on LUN 2; LUN 1 is as it was.
    qmp_at(socket, "stop");
    auto v = blockmig::lab::verify_raw(iscsi->backing_file(2), k_blocks, ack);
    EXPECT_TRUE(v.intact()) << v.output;
    EXPECT_EQ(lun_head(1).substr(0, k_foreign.size()), k_foreign);
    EXPECT_TRUE(all_zero(lun_head(1).substr(k_foreign.size())));
    blockmig_cli({"qmp", socket.string(), "quit"});
}

// LUNs larger than the disk: {vol:disk0} is json:{raw, size = the disk's, the iscsi node}.
class MigrateIscsiLaunchLarger : public MigrateIscsiLaunch {
  protected:
    MigrateIscsiLaunchLarger() { lun_size = 80 * k_mib; }
};

TEST_F(MigrateIscsiLaunchLarger, ARefusedDestinationIsStoppedAndItsLunReleased) {
    // A LUN the target does not have: refused before anything is made.
    auto missing = on_host_a(launch_args({}, {"--dst-vol", "disk0=lun7"}));
    EXPECT_EQ(missing.status, 1) << missing.out << missing.err;
    expect_one_error_line(missing.err, {"--dst-vol disk0=lun7"});
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);

    // Another memory size: the pre-flight refuses the QEMU blockmig started on LUN 2.
    auto r = on_host_a(launch_args({"BLOCKMIG_GUEST_MEM=512"}));
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    expect_one_error_line(r.err,
                          {"phase launch", "memory sizes differ", "keeps running on the source"});
    // Only the QEMU: the job's guardian (`blockmig _guard`, its argv names
    // the state dir too) may still be on its way out.
    EXPECT_TRUE(launched_qemus().empty()) << "the QEMU blockmig started is stopped";
    // Released: no job holds LUN 2 and it reads unused again (what the
    // pool's free-LUN check looks at); LUN 1 was never touched.
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    EXPECT_TRUE(all_zero(lun_head(2))) << "LUN 2 is zeroed back to unused";
    EXPECT_EQ(lun_head(1).substr(0, k_foreign.size()), k_foreign);
    expect_source_clean();
    expect_guest_on_source();

    // So the next run can take it (LUN 1 holds data: LUN 2 is the only free one).
    auto again = on_host_a(launch_args({}, {"--dst-vol", "disk0=2"}));
    json done;
    std::optional<blockmig::lab::Ack> ack;
    ASSERT_NO_FATAL_FAILURE(expect_ran_to_done(again, done, ack));
    const fs::path socket = state / (done["job"].get<std::string>() + ".dst.qmp");
    EXPECT_EQ(qmp_at(socket, "query-status").value("status", ""), "running") << socket;
    qmp_at(socket, "stop");
    auto v = blockmig::lab::verify_raw(iscsi->backing_file(2), k_blocks, ack);
    EXPECT_TRUE(v.intact()) << v.output;
    blockmig_cli({"qmp", socket.string(), "quit"});
}

// The CHAP target, and a watch that looks for its password everywhere.
class MigrateIscsiLaunchChap : public MigrateIscsiLaunch {
  protected:
    MigrateIscsiLaunchChap() {
        chap_user = "bmlaunch";
        chap_password = "launch-chap-pw-4d7e19b3";
    }
};

TEST_F(MigrateIscsiLaunchChap, TheGuestLandsOnALunBehindChapAndThePasswordIsNowhere) {
    // The target admits no login without the account (what makes CHAP matter).
    auto anonymous = on_host_a({"pool", "info", iscsi->base_url()});
    EXPECT_NE(anonymous.status, 0) << anonymous.out << anonymous.err;
    auto account = on_host_a({"--pools", pools_file().string(), "pool", "info", "lab"});
    EXPECT_EQ(account.status, 0) << account.out << account.err;

    SecretWatch watch(chap_password, iscsi->pid(), state, "blockmig-chap");
    auto r = on_host_a(launch_args({}));
    watch.stop();
    json done;
    std::optional<blockmig::lab::Ack> ack;
    ASSERT_NO_FATAL_FAILURE(expect_ran_to_done(r, done, ack));
    EXPECT_NE(r.out.find(chap_user + "@" + iscsi->portal() + "/" + iscsi->iqn() + "/2"),
              std::string::npos)
        << "LUN 2 is named: " << r.out;

    const fs::path socket = state / (done["job"].get<std::string>() + ".dst.qmp");
    EXPECT_EQ(qmp_at(socket, "query-status").value("status", ""), "running") << socket;
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    // The password reached QEMU as the secret: the LUN is open through it.
    const auto blocks = blockmig_cli({"qmp", socket.string(), "query-block"}).out;
    for (const char* word : {"password-secret", "blockmig-chap", "bmlaunch"})
        EXPECT_NE(blocks.find(word), std::string::npos) << word << " in " << blocks;

    // Nowhere: the watch saw the launched QEMU (so it looked while it ran)
    // and the state dir's journal and the QEMU's log.
    EXPECT_TRUE(watch.saw_qemu) << "the watch never sampled the launched QEMU";
    EXPECT_TRUE(watch.files.contains(done["job"].get<std::string>() + ".dst.log"))
        << joined(watch.files);
    EXPECT_GE(watch.files.size(), 2u) << "the job's journal too";
    EXPECT_TRUE(watch.leaks.empty()) << "the password is in: " << joined(watch.leaks);
    EXPECT_EQ(r.out.find(chap_password), std::string::npos);
    EXPECT_EQ(r.err.find(chap_password), std::string::npos);

    // Every block the source acknowledged is on LUN 2; LUN 1 is as it was.
    qmp_at(socket, "stop");
    auto v = blockmig::lab::verify_raw(iscsi->backing_file(2), k_blocks, ack);
    EXPECT_TRUE(v.intact()) << v.output;
    EXPECT_EQ(lun_head(1).substr(0, k_foreign.size()), k_foreign);
    blockmig_cli({"qmp", socket.string(), "quit"});
}

}  // namespace
