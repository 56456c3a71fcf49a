// `migrate --dst-launch` on another host (migrate/launch.hpp): where the
// remote command starts in an ssh argv, how its words are quoted for the
// remote shell (checked against the real sh and bash), and which
// combinations are refused before anything is made; the destination's
// volumes (--dst-vol, an iSCSI pool's LUNs) chosen before anything is made.
#include <fcntl.h>
#include <fmt/core.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "blockmig/migrate.hpp"
#include "migrate/launch.hpp"
#include "pools/pools.hpp"

using namespace blockmig;

namespace {

// What `shell -c "printf '%s\n' WORDS"` prints, one line per word: the words
// the remote shell hands its program.
std::string through_shell(const std::string& shell, const std::vector<std::string>& words) {
    std::string line = "printf '%s|' ";
    for (const auto& w : words) {
        auto q = migrate::quote_for_remote_shell(w);
        EXPECT_TRUE(q) << w;
        line += " " + (q ? *q : std::string());
    }
    int out[2];
    if (pipe(out) != 0) return "pipe failed";
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        execl(shell.c_str(), shell.c_str(), "-c", line.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    close(out[1]);
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) text.append(buf, n);
    close(out[0]);
    waitpid(pid, nullptr, 0);
    return text;
}

TEST(RemoteShellQuoting, PlainWordsStayAsTheyAre) {
    for (std::string w : {"qemu-system-x86_64", "-qmp", "unix:/run/b/qmp.sock,server=on,wait=off",
                          "file=nfs://10.0.0.5/export/j-disk0.raw", "user@host", "a%b+c=d"})
        EXPECT_EQ(migrate::quote_for_remote_shell(w).value_or("?"), w);
}

TEST(RemoteShellQuoting, EveryOtherWordIsSingleQuoted) {
    EXPECT_EQ(migrate::quote_for_remote_shell("").value_or("?"), "''");
    EXPECT_EQ(migrate::quote_for_remote_shell("a b").value_or("?"), "'a b'");
    EXPECT_EQ(migrate::quote_for_remote_shell("it's").value_or("?"), "'it'\\''s'");
    EXPECT_EQ(migrate::quote_for_remote_shell("$(rm -rf /)").value_or("?"), "'$(rm -rf /)'");
}

TEST(RemoteShellQuoting, TheRemoteShellGetsBackEveryWordExactly) {
    const std::vector<std::string> words{"BLOCKMIG_GUEST_APPEND=stamp.hb=100 stamp.blocks=8192",
                                         "it's",
                                         "\"double\"",
                                         "$HOME `id` $(id) ${x}",
                                         "a;b|c&d>e<f",
                                         "*?[a-z]~",
                                         "back\\slash\\",
                                         "",
                                         "!bang #hash",
                                         "'''",
                                         "ünïcödé"};
    std::string expected;
    for (const auto& w : words) expected += w + "|";
    for (std::string shell : {"/bin/sh", "/bin/bash", "/bin/dash"}) {
        if (access(shell.c_str(), X_OK) != 0) continue;
        EXPECT_EQ(through_shell(shell, words), expected) << shell;
    }
}

TEST(RemoteShellQuoting, ControlCharactersAreRefused) {
    for (std::string w : std::vector<std::string>{"a\nb", "tab\there", "bell\a", "del\x7f"}) {
        auto q = migrate::quote_for_remote_shell(w);
        ASSERT_FALSE(q) << w;
        EXPECT_NE(q.error().message.find("control character"), std::string::npos);
    }
}

TEST(SshRemoteCommand, FindsTheFirstWordAfterTheHost) {
    using V = std::vector<std::string>;
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "root@b", "qemu", "-m", "1G"}), 2u);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "-F", "cfg", "-p", "2222", "root@b", "qemu"}),
              6u);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "-vF", "cfg", "-T", "b", "qemu"}), 5u);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "-p2222", "-oBatchMode=yes", "b", "qemu"}), 4u);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "-o", "X=y", "--", "b", "qemu"}), 5u);
    EXPECT_EQ(migrate::ssh_remote_command(V{"/usr/bin/ssh", "-n", "b", "qemu"}), 3u);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "-J", "jump", "b", "-qemu-flag"}), 4u);
}

TEST(SshRemoteCommand, NothingWithoutSshOrWithoutARemoteCommand) {
    using V = std::vector<std::string>;
    EXPECT_EQ(migrate::ssh_remote_command(V{}), std::nullopt);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "b"}), std::nullopt);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "-F", "cfg"}), std::nullopt);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ssh", "--", "b"}), std::nullopt);
    EXPECT_EQ(migrate::ssh_remote_command(V{"ip", "netns", "exec", "b", "ssh", "b", "q"}),
              std::nullopt);
    EXPECT_EQ(migrate::ssh_remote_command(V{"sshpass", "b", "qemu"}), std::nullopt);
}

DestinationLaunch remote(std::vector<std::string> argv, std::string pool = "nfs://10.0.0.5/export",
                         std::string qmp = "ssh://root@b/run/b/qmp.sock") {
    return DestinationLaunch{
        .pool = std::move(pool), .argv = std::move(argv), .qmp = std::move(qmp)};
}

std::string refusal(const DestinationLaunch& l) {
    auto r = migrate::check_launch_target(l);
    return r ? "" : r.error().message;
}

const std::vector<std::string> k_ssh{"ssh",
                                     "-F",
                                     "cfg",
                                     "root@b",
                                     "qemu-system-x86_64",
                                     "-qmp",
                                     "unix:{qmp},server=on,wait=off",
                                     "-drive",
                                     "file={vol:disk0},format=raw,if=none,id=d0"};

TEST(LaunchTarget, AnSshLaunchIntoANetworkPoolIsAccepted) {
    EXPECT_EQ(refusal(remote(k_ssh)), "");
    EXPECT_EQ(refusal(remote(k_ssh, "iscsi://10.0.0.6:3260/iqn.2024-01.x:t")), "");
    DestinationLaunch named = remote(k_ssh, "nas");
    named.config.pools["nas"] = {"nas", "nfs", "nfs://10.0.0.5/export"};
    EXPECT_EQ(refusal(named), "");
    // Without --dst-qmp the launch is local, as before.
    EXPECT_EQ(refusal(DestinationLaunch{.pool = "/srv/pool", .argv = {"qemu", "{qmp}"}}), "");
}

TEST(LaunchTarget, ADirectoryPoolOfThisHostIsRefused) {
    for (std::string pool : {"/srv/pool", "./pool", "~/pool"})
        EXPECT_NE(refusal(remote(k_ssh, pool)).find("is a directory on this host"),
                  std::string::npos)
            << pool;
    DestinationLaunch named = remote(k_ssh, "local");
    named.config.pools["local"] = {"local", "dir", "/srv/pool"};
    EXPECT_NE(refusal(named).find("--dst-pool local is a directory on this host"),
              std::string::npos);
}

TEST(LaunchTarget, OtherAddressesAndCommandsAreRefused) {
    EXPECT_NE(refusal(remote(k_ssh, "nfs://h/e", "/run/b/qmp.sock")).find("only ssh://"),
              std::string::npos);
    EXPECT_NE(refusal(remote(k_ssh, "nfs://h/e", "tcp:b:4444")).find("only ssh://"),
              std::string::npos);
    EXPECT_NE(refusal(remote(k_ssh, "nfs://h/e", "ssh://b")).find("bad address"),
              std::string::npos);
    EXPECT_NE(refusal(remote({"ip", "netns", "exec", "b", "qemu", "{qmp}"}))
                  .find("must be `ssh [OPTIONS] HOST CMD...`"),
              std::string::npos);
    EXPECT_NE(refusal(remote({"ssh", "-S", "{qmp}", "b", "qemu"})).find("{qmp} must be in the"),
              std::string::npos);
    EXPECT_NE(
        refusal(remote({"ssh", "b", "qemu", "{qmp}", "-name", "x\ny"})).find("control character"),
        std::string::npos);
}

TEST(LaunchTarget, QmpIsThePathOnTheOtherHost) {
    auto local = migrate::launch_qmp(DestinationLaunch{}, "/var/lib/blockmig", "j1");
    EXPECT_EQ(local.address, "/var/lib/blockmig/j1.dst.qmp");
    EXPECT_EQ(local.path, local.address);
    EXPECT_FALSE(local.remote);
    auto far = migrate::launch_qmp(remote(k_ssh, "nfs://h/e", "ssh://root@b:2222/run/b/q.sock"),
                                   "/var/lib/blockmig", "j1");
    EXPECT_EQ(far.address, "ssh://root@b:2222/run/b/q.sock");
    EXPECT_EQ(far.path, "/run/b/q.sock");
    EXPECT_TRUE(far.remote);
}

TEST(LaunchTarget, OnlyTheRemoteWordsAreQuoted) {
    auto l = remote({"ssh", "-o", "SetEnv=A=b c", "root@b", "env", "APPEND=x y", "qemu",
                     "unix:{qmp},server=on", "file={vol:disk0}"});
    auto q = migrate::launch_qmp(l, "/s", "j1");
    auto argv = migrate::launch_command(l, q, {{"disk0", "nfs://h/e/j1 disk0.raw"}});
    ASSERT_TRUE(argv) << argv.error().message;
    EXPECT_EQ(*argv, (std::vector<std::string>{
                         "ssh", "-o", "SetEnv=A=b c", "root@b", "env", "'APPEND=x y'", "qemu",
                         "unix:/run/b/qmp.sock,server=on", "'file=nfs://h/e/j1 disk0.raw'"}));
    // A local launch: argv as given, placeholders replaced, nothing quoted.
    DestinationLaunch local{.argv = {"qemu", "-qmp", "unix:{qmp}", "a b"}};
    auto lq = migrate::launch_qmp(local, "/s", "j1");
    auto largv = migrate::launch_command(local, lq, {});
    ASSERT_TRUE(largv);
    EXPECT_EQ(*largv, (std::vector<std::string>{"qemu", "-qmp", "unix:/s/j1.dst.qmp", "a b"}));
}

}  // namespace

namespace {

// The schema of migrate-incoming, with or without QEMU 9.1's exit-on-error.
qmp::Features incoming_schema(bool exit_on_error) {
    nlohmann::json members = nlohmann::json::array({{{"name", "uri"}, {"type", "str"}}});
    if (exit_on_error) members.push_back({{"name", "exit-on-error"}, {"type", "bool"}});
    auto f = qmp::Features::from_schema(
        {{{"name", "migrate-incoming"},
          {"meta-type", "command"},
          {"arg-type", "1"},
          {"ret-type", "0"}},
         {{"name", "1"}, {"meta-type", "object"}, {"members", members}}});
    EXPECT_TRUE(f);
    return f ? *f : qmp::Features{};
}

}  // namespace

TEST(IncomingExitOnError, ALaunchedDestinationStaysUpWhenItsSchemaHasTheArgument) {
    EXPECT_EQ(migrate::incoming_exit_on_error(incoming_schema(true), true), false);
}

TEST(IncomingExitOnError, QemusDefaultWithoutTheArgumentOrForAUsersQemu) {
    // QEMU 7.2 refuses an argument its schema lacks.
    EXPECT_EQ(migrate::incoming_exit_on_error(incoming_schema(false), true), std::nullopt);
    // A QEMU the user started keeps exiting by itself: blockmig never stops it.
    EXPECT_EQ(migrate::incoming_exit_on_error(incoming_schema(true), false), std::nullopt);
}

// ---- the destination's volumes: --dst-vol and an iSCSI pool's LUNs --------

namespace {

constexpr std::uint64_t k_mib = 1 << 20;
constexpr const char* k_target = "iscsi://10.0.0.9:3260/iqn.2024-01.test:t";

// An iSCSI pool as plan_volumes sees it: LUNs "lun<N>" (here in memory),
// their URLs iscsi://PORTAL/IQN/N as IscsiPool forms them.
class FakeIscsiPool : public pools::PoolWrapper {
  public:
    explicit FakeIscsiPool(std::string url = k_target)
        : PoolWrapper(pools::make_mem_pool(1ull << 40)), m_url(std::move(url)) {}
    std::string_view type() const override { return "iscsi"; }
    std::string url() const override { return m_url; }
    std::string url_of(std::string_view name) const override {
        return fmt::format("{}/{}", m_url, name.substr(name.starts_with("lun") ? 3 : 0));
    }

  private:
    std::string m_url;
};

std::unique_ptr<pools::Pool> luns(std::vector<std::uint64_t> mib_sizes,
                                  std::string url = k_target) {
    auto pool = std::make_unique<FakeIscsiPool>(std::move(url));
    for (std::size_t i = 0; i < mib_sizes.size(); ++i)
        EXPECT_TRUE(pool->create(fmt::format("lun{}", i + 1), mib_sizes[i] * k_mib,
                                 pools::ImageFormat::raw));
    return pool;
}

migrate::SideFacts guest(std::vector<std::pair<std::string, std::string>> disks,
                         std::uint64_t mib = 64) {
    migrate::SideFacts facts;
    for (auto& [dev, filename] : disks)
        facts.disks.push_back({.device = dev, .filename = filename, .size = mib * k_mib});
    return facts;
}

DestinationLaunch launch_with(std::map<std::string, std::string> volumes = {}) {
    return DestinationLaunch{.pool = k_target, .volumes = std::move(volumes)};
}

std::string first_choice(const migrate::LaunchPlan& plan, std::size_t disk) {
    return plan.volumes.at(disk).names.empty() ? "" : plan.volumes.at(disk).names.front();
}

}  // namespace

TEST(LaunchLuns, EachDiskGetsTheSmallestFreeLunOfAtLeastItsSize) {
    auto plan = migrate::plan_volumes(luns({32, 128, 64}), launch_with(),
                                      guest({{"vda", "/img/a.raw"}}), {});
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_TRUE(plan->iscsi);
    EXPECT_EQ(plan->volumes[0].names, (std::vector<std::string>{"lun3", "lun2"}))
        << "lun1 (32 MiB) is too small; 64 MiB before 128 MiB";
}

TEST(LaunchLuns, TwoDisksGetTwoLuns) {
    auto plan = migrate::plan_volumes(luns({64, 64}), launch_with(),
                                      guest({{"vda", "/img/a.raw"}, {"vdb", "/img/b.raw"}}), {});
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(first_choice(*plan, 0), "lun1");
    EXPECT_EQ(first_choice(*plan, 1), "lun2");
}

TEST(LaunchLuns, TheSourceGuestsLunsAndHeldOnesAreNeverChosen) {
    // The guest names lun1 by another spelling of the portal, and as json:.
    const std::string json_lun2 =
        R"(json:{"driver":"raw","size":1,"file":{"driver":"iscsi","portal":"10.0.0.9",)"
        R"("target":"iqn.2024-01.test:t","lun":2}})";
    auto plan = migrate::plan_volumes(
        luns({64, 64, 64, 64, 64}), launch_with(),
        guest({{"vda", "iscsi://san.example:3260/iqn.2024-01.test:t/1"}, {"vdb", json_lun2}}),
        {std::string(k_target) + "/3"});
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(plan->volumes[0].names, (std::vector<std::string>{"lun4", "lun5"}));
    EXPECT_EQ(plan->volumes[1].names, std::vector<std::string>{"lun5"});
    // Without lun4 and lun5 nothing is left.
    auto none = migrate::plan_volumes(
        luns({64, 64, 64}), launch_with(),
        guest({{"vda", "iscsi://san.example:3260/iqn.2024-01.test:t/1"}, {"vdb", json_lun2}}),
        {std::string(k_target) + "/3"});
    ASSERT_FALSE(none);
    EXPECT_EQ(none.error().code, ErrorCode::no_space);
    EXPECT_NE(none.error().message.find("no free LUN of at least 64 MiB for disk vda"),
              std::string::npos)
        << none.error().message;
}

TEST(LaunchLuns, NoFreeLunIsRefused) {
    auto plan = migrate::plan_volumes(luns({32}), launch_with(), guest({{"vda", "/a.raw"}}), {});
    ASSERT_FALSE(plan);
    EXPECT_EQ(plan.error().code, ErrorCode::no_space);
    EXPECT_NE(plan.error().message.find("no free LUN"), std::string::npos) << plan.error().message;
}

TEST(LaunchLuns, ANamedLunIsTakenAsGivenWhenItFits) {
    auto plan = migrate::plan_volumes(luns({64, 128}), launch_with({{"vda", "2"}}),
                                      guest({{"vda", "/a.raw"}, {"vdb", "/b.raw"}}), {});
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_EQ(plan->volumes[0].names, std::vector<std::string>{"lun2"});
    EXPECT_EQ(plan->volumes[1].names, std::vector<std::string>{"lun1"})
        << "the other disk gets the LUN vda did not name";
}

TEST(LaunchLuns, ANamedLunTooSmallIsRefused) {
    auto plan = migrate::plan_volumes(luns({32, 64}), launch_with({{"vda", "lun1"}}),
                                      guest({{"vda", "/a.raw"}}), {});
    ASSERT_FALSE(plan);
    EXPECT_EQ(plan.error().code, ErrorCode::no_space);
    EXPECT_NE(plan.error().message.find("--dst-vol vda=lun1: LUN " + std::string(k_target) +
                                        "/1 is too small: 32 MiB for a disk of 64 MiB"),
              std::string::npos)
        << plan.error().message;
}

TEST(LaunchLuns, ANamedLunOfTheSourceGuestIsRefused) {
    auto plan =
        migrate::plan_volumes(luns({64, 64}), launch_with({{"vdb", "lun1"}}),
                              guest({{"vda", std::string(k_target) + "/1"}, {"vdb", "/b"}}), {});
    ASSERT_FALSE(plan);
    EXPECT_EQ(plan.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(plan.error().message.find("is a disk of the source guest"), std::string::npos)
        << plan.error().message;
}

TEST(LaunchLuns, ANamedLunAnotherJobHoldsIsRefused) {
    auto plan = migrate::plan_volumes(luns({64, 64}), launch_with({{"vda", "lun2"}}),
                                      guest({{"vda", "/a.raw"}}), {std::string(k_target) + "/2"});
    ASSERT_FALSE(plan);
    EXPECT_EQ(plan.error().code, ErrorCode::already_exists);
    EXPECT_NE(plan.error().message.find("claimed by another job"), std::string::npos)
        << plan.error().message;
}

TEST(LaunchLuns, AMissingLunOrOneNamedTwiceIsRefused) {
    auto missing = migrate::plan_volumes(luns({64}), launch_with({{"vda", "lun7"}}),
                                         guest({{"vda", "/a.raw"}}), {});
    ASSERT_FALSE(missing);
    EXPECT_NE(missing.error().message.find("--dst-vol vda=lun7"), std::string::npos)
        << missing.error().message;
    auto twice = migrate::plan_volumes(luns({64}), launch_with({{"vda", "1"}, {"vdb", "lun1"}}),
                                       guest({{"vda", "/a.raw"}, {"vdb", "/b.raw"}}), {});
    ASSERT_FALSE(twice);
    EXPECT_NE(twice.error().message.find("two disks would land on"), std::string::npos)
        << twice.error().message;
}

TEST(LaunchLuns, APoolWithCredentialsNeedsTheSecretObjectInTheCommand) {
    const std::string chap = "iscsi://admin@10.0.0.9:3260/iqn.2024-01.test:t";
    auto without =
        migrate::plan_volumes(luns({64}, chap), launch_with(), guest({{"vda", "/a.raw"}}), {});
    ASSERT_FALSE(without);
    EXPECT_EQ(without.error().code, ErrorCode::invalid_argument);
    EXPECT_EQ(without.error().message,
              "--dst-pool " + chap +
                  " has CHAP credentials: give the destination QEMU -object {secret-object} (the "
                  "secret it reads the password from, on its stdin)");
    auto launch = launch_with();
    launch.argv = {"qemu", "-qmp", "unix:{qmp}", "-object", "{secret-object}", "file={vol:vda}"};
    auto with = migrate::plan_volumes(luns({64}, chap), launch, guest({{"vda", "/a.raw"}}), {});
    ASSERT_TRUE(with) << with.error().message;
    EXPECT_TRUE(with->chap);
    EXPECT_EQ(first_choice(*with, 0), "lun1");
}

TEST(LaunchLuns, TheSecretObjectWithoutCredentialsIsRefused) {
    auto launch = launch_with();
    launch.argv = {"qemu", "-qmp", "unix:{qmp}", "-object", "{secret-object}"};
    for (bool iscsi : {true, false}) {
        auto plan = migrate::plan_volumes(iscsi ? luns({64}) : pools::make_mem_pool(1ull << 30),
                                          launch, guest({{"vda", "/a.raw"}}), {});
        ASSERT_FALSE(plan) << iscsi;
        EXPECT_EQ(plan.error().code, ErrorCode::invalid_argument);
        EXPECT_NE(plan.error().message.find("{secret-object}: --dst-pool"), std::string::npos)
            << plan.error().message;
        EXPECT_NE(plan.error().message.find("has no CHAP credentials"), std::string::npos)
            << plan.error().message;
    }
    launch.argv.pop_back();
    auto plain = migrate::plan_volumes(luns({64}), launch, guest({{"vda", "/a.raw"}}), {});
    ASSERT_TRUE(plain) << plain.error().message;
    EXPECT_FALSE(plain->chap);
}

TEST(LaunchVolumes, AFilePoolTakesTheNamedVolumeOrLeavesTheDefault) {
    auto pool = pools::make_mem_pool(1ull << 30);
    ASSERT_TRUE(pool->create("taken.raw", k_mib, pools::ImageFormat::raw));
    auto plan = migrate::plan_volumes(std::move(pool), launch_with({{"vda", "mine.raw"}}),
                                      guest({{"vda", "/a.raw"}, {"vdb", "/b.raw"}}), {});
    ASSERT_TRUE(plan) << plan.error().message;
    EXPECT_FALSE(plan->iscsi);
    EXPECT_EQ(plan->volumes[0].names, std::vector<std::string>{"mine.raw"});
    EXPECT_TRUE(plan->volumes[1].names.empty()) << "<job>-<dev>.raw, named once the job is";

    auto again = pools::make_mem_pool(1ull << 30);
    ASSERT_TRUE(again->create("taken.raw", k_mib, pools::ImageFormat::raw));
    auto exists = migrate::plan_volumes(std::move(again), launch_with({{"vda", "taken.raw"}}),
                                        guest({{"vda", "/a.raw"}}), {});
    ASSERT_FALSE(exists);
    EXPECT_EQ(exists.error().code, ErrorCode::already_exists);
}

TEST(LaunchVolumes, ADstVolOfADiskTheSourceLacksIsRefusedBeforeThePoolOpens) {
    auto plan = migrate::plan_launch(
        DestinationLaunch{.pool = "nfs://192.0.2.1/nowhere", .volumes = {{"vdz", "x.raw"}}},
        guest({{"vda", "/a.raw"}}), "/nonexistent");
    ASSERT_FALSE(plan);
    EXPECT_EQ(plan.error().message,
              "--dst-vol vdz=x.raw: the source has no disk vdz (it has: vda)");
}

TEST(LaunchVolumes, ALunOfTheDisksSizeIsItsUrlALargerOneShowsExactlyTheDisk) {
    FakeIscsiPool pool;
    const std::string url = std::string(k_target) + "/2";
    EXPECT_EQ(
        migrate::volume_location(pool, {.name = "lun2", .virtual_size = 64 * k_mib}, 64 * k_mib),
        url);
    const auto larger =
        migrate::volume_location(pool, {.name = "lun2", .virtual_size = 128 * k_mib}, 64 * k_mib);
    ASSERT_TRUE(larger.starts_with("json:")) << larger;
    // A -drive file= value: QEMU's option parser turns ",," back into ",".
    std::string text = larger.substr(5);
    for (auto at = text.find(",,"); at != std::string::npos; at = text.find(",,", at + 1))
        text.erase(at, 1);
    auto j = nlohmann::json::parse(text, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << larger;
    // The iscsi node spelled out: inside json: QEMU takes a bare URL for a file name.
    const nlohmann::json lun{{"driver", "iscsi"},
                             {"transport", "tcp"},
                             {"portal", "10.0.0.9:3260"},
                             {"target", "iqn.2024-01.test:t"},
                             {"lun", 2}};
    EXPECT_EQ(j, (nlohmann::json{{"driver", "raw"}, {"size", 64 * k_mib}, {"file", lun}}));
    auto files = pools::make_mem_pool(1ull << 30);
    EXPECT_EQ(migrate::volume_location(*files, {.name = "a.raw", .virtual_size = 1}, 64 * k_mib),
              "mem:a.raw")
        << "a file's size is the disk's: always its path or URL";
}

namespace {

// The JSON of a json: -drive file= value (",," back to ",").
nlohmann::json drive_json(const std::string& value) {
    EXPECT_TRUE(value.starts_with("json:")) << value;
    std::string text = value.substr(5);
    for (auto at = text.find(",,"); at != std::string::npos; at = text.find(",,", at + 1))
        text.erase(at, 1);
    return nlohmann::json::parse(text, nullptr, false);
}

}  // namespace

TEST(LaunchVolumes, AChapLunIsJsonNamingTheSecretObjectNeverThePassword) {
    // As IscsiPool::describe_for_qemu gives it (its own secret id and initiator name).
    const nlohmann::json node{{"driver", "iscsi"},
                              {"transport", "tcp"},
                              {"portal", "10.0.0.9:3260"},
                              {"target", "iqn.2024-01.test:t"},
                              {"lun", 2},
                              {"initiator-name", "iqn.2024-01.org.blockmig:qemu"},
                              {"user", "admin"},
                              {"password-secret", "bm0-chap"}};
    nlohmann::json lun = node;
    lun.erase("initiator-name");
    lun["password-secret"] = "blockmig-chap";
    // Of the disk's size too: no URL carries a password-secret.
    for (std::uint64_t size : {64 * k_mib, 128 * k_mib}) {
        const auto location = migrate::chap_volume_location(node, size);
        EXPECT_EQ(drive_json(location),
                  (nlohmann::json{{"driver", "raw"}, {"size", size}, {"file", lun}}))
            << location;
        // Every comma doubled: a single one would end -drive's file= value.
        std::string rest = location;
        for (auto at = rest.find(",,"); at != std::string::npos; at = rest.find(",,", at))
            rest.erase(at, 2);
        EXPECT_EQ(rest.find(','), std::string::npos) << location;
    }
    EXPECT_EQ(migrate::launch_secret_object(),
              "secret,id=blockmig-chap,file=/dev/stdin,format=raw");
}

TEST(LaunchVolumes, DstVolIsDevEqualsVolume) {
    auto v = migrate::parse_dst_vol("vda=lun3");
    ASSERT_TRUE(v);
    EXPECT_EQ(v->first, "vda");
    EXPECT_EQ(v->second, "lun3");
    for (const char* bad : {"vda", "=lun3", "vda=", ""})
        EXPECT_FALSE(migrate::parse_dst_vol(bad)) << bad;
}
