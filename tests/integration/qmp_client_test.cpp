// The QMP client against real QEMU 7.2: qemu-storage-daemon and
// qemu-system-x86_64 -machine none.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "lab.hpp"
#include "qmp/client.hpp"
#include "qmp/commands.hpp"
#include "qmp/features.hpp"
#include "qmp_daemon.hpp"

using namespace blockmig;
using namespace blockmig::qmp;
using blockmig::testing::QemuProcess;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

std::unique_ptr<Client> connect_to(const QemuProcess& q, ConnectOptions options = {}) {
    auto c = Client::connect(q.socket(), std::move(options));
    EXPECT_TRUE(c) << c.error().message;
    return c ? std::move(*c) : nullptr;
}

}  // namespace

TEST(QmpIntegration, NegotiatesWithStorageDaemon) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto client = connect_to(qsd, {.enable_oob = true});
    ASSERT_TRUE(client);
    EXPECT_EQ(client->state(), State::running);
    EXPECT_EQ(client->greeting().major, 7);
    EXPECT_TRUE(client->greeting().offers("oob"));
    EXPECT_TRUE(client->oob_enabled());
    auto v = query_version(*client, 5s);
    ASSERT_TRUE(v) << v.error().message;
    EXPECT_EQ(v->major, client->greeting().major);
    EXPECT_EQ(v->minor, client->greeting().minor);
}

TEST(QmpIntegration, DetectsFeaturesFromRealSchema) {
    LAB_REQUIRE();
    QemuProcess vm(QemuProcess::Kind::system_none);
    auto client = connect_to(vm);
    ASSERT_TRUE(client);
    auto f = Features::detect(*client, 10s);
    ASSERT_TRUE(f) << f.error().message;
    EXPECT_TRUE(f->has_command("blockdev-mirror"));
    EXPECT_TRUE(f->mirror_copy_mode());
    EXPECT_TRUE(f->mirror_write_blocking());
    EXPECT_TRUE(f->block_export_add());
    EXPECT_TRUE(f->command_has_argument("block-export-add", "writable"));
    EXPECT_TRUE(f->migrate_pause_before_switchover());
    EXPECT_TRUE(f->has_event("JOB_STATUS_CHANGE"));
    // block-job-change appeared in QEMU 8.2.
    EXPECT_EQ(f->block_job_change(), client->greeting().at_least(8, 2));
    EXPECT_FALSE(f->has_command("no-such-command"));
}

TEST(QmpIntegration, ReturnsErrorClassForBadCommands) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto client = connect_to(qsd);
    ASSERT_TRUE(client);
    auto r = client->execute("no-such-command", json::object(), 5s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::qmp_command_failed);
    EXPECT_EQ(r.error().qmp_class, "CommandNotFound");
    EXPECT_EQ(r.error().message, "no-such-command: The command no-such-command has not been found");
    auto del = blockdev_del(*client, "missing-node", 5s);
    ASSERT_FALSE(del);
    EXPECT_EQ(del.error().qmp_class, "GenericError");
    EXPECT_EQ(client->state(), State::running);  // errors do not hurt the connection
    EXPECT_TRUE(query_named_block_nodes(*client, true, 5s));
}

TEST(QmpIntegration, DrivesBlockdevCreateJobToConcludedThroughEvents) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto client = connect_to(qsd);
    ASSERT_TRUE(client);
    auto image = qsd.dir() / "disk.qcow2";
    lab::run_ok({"truncate", "-s", "0", image.string()});
    ASSERT_TRUE(blockdev_add(
        *client, {{"driver", "file"}, {"node-name", "proto0"}, {"filename", image.string()}}, 5s));

    auto events = client->subscribe(job_events("create0"));  // before the job exists
    constexpr std::uint64_t k_size = 64 * 1024 * 1024;
    auto started = blockdev_create(*client, "create0",
                                   {{"driver", "qcow2"}, {"file", "proto0"}, {"size", k_size}}, 5s);
    ASSERT_TRUE(started) << started.error().message;
    std::vector<std::string> seen;
    while (seen.empty() || seen.back() != "concluded") {
        auto e = events.wait([](const Event& ev) { return ev.name == "JOB_STATUS_CHANGE"; }, 30s);
        ASSERT_TRUE(e) << e.error().message;
        seen.push_back(e->data["status"]);
    }
    EXPECT_EQ(seen.front(), "created");
    EXPECT_NE(std::find(seen.begin(), seen.end(), "running"), seen.end());
    auto jobs = query_jobs(*client, 5s);
    ASSERT_TRUE(jobs);
    ASSERT_EQ(jobs->size(), 1u);
    EXPECT_EQ((*jobs)[0].status, "concluded");
    EXPECT_FALSE((*jobs)[0].error) << *(*jobs)[0].error;
    ASSERT_TRUE(job_dismiss(*client, "create0", 5s));

    ASSERT_TRUE(blockdev_add(*client,
                             {{"driver", "qcow2"}, {"node-name", "fmt0"}, {"file", "proto0"}}, 5s));
    auto nodes = query_named_block_nodes(*client, true, 5s);
    ASSERT_TRUE(nodes) << nodes.error().message;
    auto it = std::find_if(nodes->begin(), nodes->end(),
                           [](const BlockNodeInfo& n) { return n.node_name == "fmt0"; });
    ASSERT_NE(it, nodes->end());
    EXPECT_EQ(it->driver, "qcow2");
    ASSERT_FALSE(it->chain.empty());
    EXPECT_EQ(it->chain[0].virtual_size, k_size);
    EXPECT_EQ(it->chain[0].format, "qcow2");
    // The image on disk is what QEMU says it is.
    auto info =
        json::parse(lab::run_ok({"qemu-img", "info", "-U", "--output=json", image.string()}));
    EXPECT_EQ(info["format"], "qcow2");
    EXPECT_EQ(info["virtual-size"], k_size);
}

TEST(QmpIntegration, CreateImageHelperReportsJobFailure) {
    LAB_REQUIRE();
    QemuProcess qsd(QemuProcess::Kind::storage_daemon);
    auto client = connect_to(qsd);
    ASSERT_TRUE(client);
    auto image = qsd.dir() / "ok.qcow2";
    lab::run_ok({"truncate", "-s", "0", image.string()});
    ASSERT_TRUE(blockdev_add(
        *client, {{"driver", "file"}, {"node-name", "p0"}, {"filename", image.string()}}, 5s));
    auto ok =
        create_image(*client, "c1", {{"driver", "qcow2"}, {"file", "p0"}, {"size", 1 << 20}}, 30s);
    ASSERT_TRUE(ok) << ok.error().message;
    // A qcow2 cluster size that is not a power of two fails inside the job.
    auto bad = create_image(
        *client, "c2",
        {{"driver", "qcow2"}, {"file", "p0"}, {"size", 1 << 20}, {"cluster-size", 3000}}, 30s);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("c2"), std::string::npos) << bad.error().message;
    auto jobs = query_jobs(*client, 5s);
    ASSERT_TRUE(jobs);
    EXPECT_TRUE(jobs->empty()) << "failed job must be dismissed";
}

TEST(QmpIntegration, PassesFdWithGetfdAndClosesIt) {
    LAB_REQUIRE();
    QemuProcess vm(QemuProcess::Kind::system_none);
    auto client = connect_to(vm);
    ASSERT_TRUE(client);
    auto path = vm.dir() / "passed.raw";
    lab::run_ok({"truncate", "-s", "1M", path.string()});
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    auto got = getfd(*client, fd, "myfd", 5s);
    ASSERT_TRUE(got) << got.error().message;
    // QEMU now holds its own copy: closing it by name works exactly once.
    ASSERT_TRUE(closefd(*client, "myfd", 5s));
    auto again = closefd(*client, "myfd", 5s);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().qmp_class, "GenericError");
    // getfd without an fd attached is refused by QEMU: the fd really travelled.
    auto none = client->execute("getfd", {{"fdname", "nofd"}}, 5s);
    ASSERT_FALSE(none);
    auto added = add_fd(*client, fd, std::nullopt, "blockmig-test", 5s);
    ASSERT_TRUE(added) << added.error().message;
    auto fdsets = client->execute("query-fdsets", json::object(), 5s);
    ASSERT_TRUE(fdsets);
    EXPECT_NE(fdsets->dump().find("blockmig-test"), std::string::npos) << fdsets->dump();
    ::close(fd);
}

TEST(QmpIntegration, QuitEndsConnectionAndInterruptsLaterCalls) {
    LAB_REQUIRE();
    QemuProcess vm(QemuProcess::Kind::system_none);
    auto client = connect_to(vm);
    ASSERT_TRUE(client);
    auto sub = client->subscribe("SHUTDOWN");
    ASSERT_TRUE(quit(*client, 5s));
    auto e = sub.next(10s);
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_TRUE(vm.wait_exit(10s));
    auto end = sub.next(10s);
    ASSERT_FALSE(end);
    EXPECT_EQ(end.error().code, ErrorCode::interrupted);
    auto after = client->execute("query-status", json::object(), 5s);
    ASSERT_FALSE(after);
    EXPECT_EQ(after.error().code, ErrorCode::interrupted);
}

TEST(QmpIntegration, TypedQueriesParseRealReplies) {
    LAB_REQUIRE();
    QemuProcess vm(QemuProcess::Kind::system_none);
    auto client = connect_to(vm);
    ASSERT_TRUE(client);
    auto status = query_status(*client, 5s);
    ASSERT_TRUE(status) << status.error().message;
    EXPECT_FALSE(status->status.empty());
    auto machines = query_machines(*client, 5s);
    ASSERT_TRUE(machines) << machines.error().message;
    EXPECT_TRUE(std::any_of(machines->begin(), machines->end(),
                            [](const MachineInfo& m) { return m.name == "none"; }));
    EXPECT_TRUE(query_memory_size_summary(*client, 5s));
    EXPECT_TRUE(query_cpus_fast(*client, 5s));
    EXPECT_TRUE(query_block(*client, 5s));
    EXPECT_TRUE(query_block_jobs(*client, 5s));
    auto mig = client->execute("query-migrate", json::object(), 5s);
    EXPECT_TRUE(mig);
}
