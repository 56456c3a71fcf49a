// Typed commands send QEMU 7.2's argument names and parse its replies.
#include "qmp/commands.hpp"

#include <gtest/gtest.h>

#include "qmp/migration.hpp"
#include "qmp/testing/scripted_transport.hpp"

using namespace blockmig;
using namespace blockmig::qmp;
using namespace blockmig::qmp::testing;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

class QmpCommands : public ::testing::Test {
  protected:
    void SetUp() override {
        script->push_greeting();
        script->expect("qmp_capabilities").reply(json::object());
        auto c = Client::connect(std::make_unique<ScriptedTransport>(script));
        ASSERT_TRUE(c);
        client = std::move(*c);
    }
    void TearDown() override {
        EXPECT_TRUE(script->failures().empty()) << script->failures().front();
        EXPECT_EQ(script->unmet_expectations(), 0u);
    }
    std::shared_ptr<Script> script = std::make_shared<Script>();
    std::unique_ptr<Client> client;
};

}  // namespace

TEST_F(QmpCommands, QueryBlockFlattensTheImageChain) {
    // Shape of a QEMU 7.2 reply for a qcow2 overlay over a raw base.
    json reply =
        json::parse(R"([{"device": "", "qdev": "vblk0", "locked": false, "removable": false,
      "io-status": "ok",
      "inserted": {"node-name": "fmt0", "drv": "qcow2", "ro": false, "encrypted": false,
        "file": "/v/top.qcow2", "backing_file": "/v/base.raw", "backing_file_depth": 1,
        "cache": {"writeback": true, "direct": true, "no-flush": false},
        "image": {"filename": "/v/top.qcow2", "format": "qcow2", "virtual-size": 1048576,
          "actual-size": 200704, "cluster-size": 65536, "backing-filename": "/v/base.raw",
          "backing-image": {"filename": "/v/base.raw", "format": "raw", "virtual-size": 1048576}}}},
      {"device": "cd0", "locked": false, "removable": true}])");
    script->expect("query-block").reply(reply);
    auto r = query_block(*client);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), 2u);
    const BlockInfo& b = (*r)[0];
    EXPECT_EQ(b.qdev, "vblk0");
    ASSERT_TRUE(b.inserted);
    EXPECT_EQ(b.inserted->node_name, "fmt0");
    EXPECT_EQ(b.inserted->driver, "qcow2");
    EXPECT_EQ(b.inserted->cache_mode, "none");
    ASSERT_EQ(b.inserted->chain.size(), 2u);
    EXPECT_EQ(b.inserted->chain[0].format, "qcow2");
    EXPECT_EQ(b.inserted->chain[0].virtual_size, 1048576u);
    EXPECT_EQ(b.inserted->chain[1].filename, "/v/base.raw");
    EXPECT_FALSE((*r)[1].inserted);
}

TEST_F(QmpCommands, MirrorSendsOnlyGivenOptions) {
    script
        ->expect("blockdev-mirror", json{{"job-id", "m0"},
                                         {"device", "fmt0"},
                                         {"target", "tgt0"},
                                         {"sync", "full"},
                                         {"speed", 1000},
                                         {"copy-mode", "write-blocking"},
                                         {"on-target-error", "stop"},
                                         {"auto-dismiss", false}})
        .reply(json::object());
    MirrorOptions o{.job_id = "m0", .device = "fmt0", .target = "tgt0"};
    o.speed = 1000;
    o.copy_mode = CopyMode::write_blocking;
    o.on_target_error = OnError::stop;
    o.auto_dismiss = false;
    auto r = blockdev_mirror(*client, o);
    ASSERT_TRUE(r) << r.error().message;
}

TEST_F(QmpCommands, MirrorRejectsBadGranularityWithoutSending) {
    MirrorOptions o{.job_id = "m0", .device = "a", .target = "b"};
    o.granularity = 1000;
    auto r = blockdev_mirror(*client, o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
}

TEST_F(QmpCommands, QueryBlockJobsIsTyped) {
    script->expect("query-block-jobs")
        .reply(json::parse(
            R"([{"auto-finalize": true, "io-status": "ok", "device": "mirror0", "auto-dismiss": true,
          "busy": false, "len": 78381056, "offset": 78381056, "status": "ready", "paused": false, "speed": 0,
          "ready": true, "type": "mirror"}])"));
    auto r = query_block_jobs(*client);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->size(), 1u);
    EXPECT_EQ((*r)[0].id, "mirror0");
    EXPECT_EQ((*r)[0].status, "ready");
    EXPECT_TRUE((*r)[0].ready);
    EXPECT_EQ((*r)[0].len, 78381056u);
    EXPECT_FALSE((*r)[0].error);
}

TEST_F(QmpCommands, BlockJobControlUsesDeviceArgument) {
    script->expect("block-job-cancel", json{{"device", "m0"}, {"force", true}})
        .reply(json::object());
    script->expect("block-job-set-speed", json{{"device", "m0"}, {"speed", 5}})
        .reply(json::object());
    script->expect("job-dismiss", json{{"id", "m0"}}).reply(json::object());
    EXPECT_TRUE(block_job_cancel(*client, "m0", true));
    EXPECT_TRUE(block_job_set_speed(*client, "m0", 5));
    EXPECT_TRUE(job_dismiss(*client, "m0"));
}

TEST_F(QmpCommands, CreateImageRunsJobToConcludedAndDismisses) {
    json options = {{"driver", "qcow2"}, {"file", "f0"}, {"size", 1048576}};
    script->expect("blockdev-create", json{{"job-id", "c0"}, {"options", options}})
        .event("JOB_STATUS_CHANGE", {{"id", "c0"}, {"status", "created"}})
        .reply(json::object())
        .event("JOB_STATUS_CHANGE", {{"id", "c0"}, {"status", "running"}})
        .event("JOB_STATUS_CHANGE", {{"id", "c0"}, {"status", "concluded"}});
    script->expect("query-jobs")
        .reply(json::array({{{"id", "c0"}, {"type", "create"}, {"status", "concluded"}}}));
    script->expect("job-dismiss", json{{"id", "c0"}}).reply(json::object());
    auto r = create_image(*client, "c0", options, 2s);
    ASSERT_TRUE(r) << r.error().message;
}

TEST_F(QmpCommands, ExportFallsBackToNbdServerAddOnOldQemu) {
    script->expect("block-export-add")
        .error("CommandNotFound", "The command block-export-add has not been found");
    script->expect("nbd-server-add", json{{"device", "fmt0"}, {"name", "fmt0"}, {"writable", true}})
        .reply(json::object());
    auto r =
        block_export_add(*client, NbdExport{.id = "e0", .node_name = "fmt0", .writable = true});
    ASSERT_TRUE(r) << r.error().message;
}

TEST_F(QmpCommands, NbdServerStartUsesLegacyAddress) {
    script
        ->expect(
            "nbd-server-start",
            json{{"addr", {{"type", "inet"}, {"data", {{"host", "10.0.0.2"}, {"port", "10809"}}}}}})
        .reply(json::object());
    EXPECT_TRUE(nbd_server_start(*client, SocketAddress::inet("10.0.0.2", 10809)));
    EXPECT_EQ(to_json(SocketAddress::unix_path("/s")), json({{"type", "unix"}, {"path", "/s"}}));
}

TEST_F(QmpCommands, QueryMigrateParsesStats) {
    script->expect("query-migrate")
        .reply(json::parse(
            R"({"status": "completed", "setup-time": 1, "downtime": 73, "total-time": 747,
           "ram": {"total": 268967936, "remaining": 0, "transferred": 96898700, "mbps": 1040.8, "page-size": 4096}})"));
    auto r = query_migrate(*client);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, "completed");
    EXPECT_EQ(r->downtime_ms, 73);
    ASSERT_TRUE(r->ram);
    EXPECT_EQ(r->ram->transferred, 96898700u);
    EXPECT_DOUBLE_EQ(r->ram->mbps, 1040.8);
}

TEST_F(QmpCommands, MigrateSetCapabilitiesBuildsList) {
    script
        ->expect("migrate-set-capabilities",
                 json{{"capabilities", {{{"capability", "events"}, {"state", true}}}}})
        .reply(json::object());
    EXPECT_TRUE(migrate_set_capabilities(*client, {{"events", true}}));
}

// exit-on-error goes out only when asked for (QEMU < 9.1 refuses an unknown argument).
TEST_F(QmpCommands, MigrateIncomingSendsExitOnErrorOnlyWhenAsked) {
    script->expect("migrate-incoming", json{{"uri", "tcp:10.0.0.2:0"}}).reply(json::object());
    script->expect("migrate-incoming", json{{"uri", "tcp:10.0.0.2:0"}, {"exit-on-error", false}})
        .reply(json::object());
    EXPECT_TRUE(migrate_incoming(*client, "tcp:10.0.0.2:0"));
    EXPECT_TRUE(
        migrate_incoming(*client, "tcp:10.0.0.2:0", IncomingOptions{.exit_on_error = false}));
}

TEST_F(QmpCommands, MissingRequiredReplyFieldIsProtocolError) {
    script->expect("query-status").reply(json::object());
    auto r = query_status(*client);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::protocol);
}

TEST_F(QmpCommands, WrongTypedReplyFieldsDoNotThrow) {
    script->expect("query-jobs")
        .reply(json::array({{{"id", "j"}, {"status", 5}, {"current-progress", "x"}}}));
    auto r = query_jobs(*client);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)[0].status, "");
    EXPECT_EQ((*r)[0].current_progress, 0u);
}
