// run_move's pre-flight refuses bad moves before it creates anything: the
// scripted QMP transport fails the test if blockmig sends any command beyond
// the read-only queries listed here (no blockdev-add, no mirror).
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "blockmig/move.hpp"
#include "qmp/testing/scripted_transport.hpp"

using namespace blockmig;
using namespace blockmig::qmp::testing;
using nlohmann::json;

namespace {

json disk(const std::string& drv, const std::string& file) {
    return json::array(
        {{{"device", ""},
          {"qdev", "/machine/peripheral/disk0/virtio-backend"},
          {"locked", false},
          {"removable", false},
          {"inserted",
           {{"node-name", "disk0-fmt"},
            {"drv", drv},
            {"ro", false},
            {"encrypted", false},
            {"file", file},
            {"backing_file_depth", 0},
            {"cache", {{"writeback", true}, {"direct", true}, {"no-flush", false}}},
            {"image", {{"filename", file}, {"format", "qcow2"}, {"virtual-size", 64 << 20}}}}}}});
}

class MovePreflight : public ::testing::Test {
  protected:
    void SetUp() override {
        script->push_greeting();
        script->expect("qmp_capabilities").reply(json::object());
        auto c = qmp::Client::connect(std::make_unique<ScriptedTransport>(script));
        ASSERT_TRUE(c);
        client = std::move(*c);
        dir = std::filesystem::temp_directory_path() / ("bm-preflight-" + std::to_string(getpid()));
        std::filesystem::create_directories(dir / "pool");
    }
    void TearDown() override {
        EXPECT_TRUE(script->failures().empty()) << script->failures().front();
        std::filesystem::remove_all(dir);
    }
    void expect_queries(const json& block_reply, const json& jobs = json::array()) {
        script->expect("query-block").reply(block_reply);
        script->expect("query-named-block-nodes").reply(json::array());
        script->expect("query-block-jobs").reply(jobs);
    }
    Result<MoveReport> move(MoveOptions options) {
        options.state_dir = dir / "state";
        auto progress = make_null_progress();
        std::atomic<bool> cancel{false};
        return run_move(*client, options, *progress, cancel);
    }

    std::shared_ptr<Script> script = std::make_shared<Script>();
    std::unique_ptr<qmp::Client> client;
    std::filesystem::path dir;
};

TEST_F(MovePreflight, RefusesUnknownDiskAndNamesTheKnownOnes) {
    expect_queries(disk("qcow2", "/v/vm1.qcow2"));
    auto r = move({.disks = {{"disk9", ""}}, .default_target = (dir / "pool").string()});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::not_found);
    EXPECT_NE(r.error().message.find("disk0"), std::string::npos) << r.error().message;
}

TEST_F(MovePreflight, RefusesDiskAlreadyInABlockJob) {
    expect_queries(disk("mirror_top", "/v/vm1.qcow2"));
    auto r = move({.disks = {{"disk0", ""}}, .default_target = (dir / "pool").string()});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_state);
    EXPECT_NE(r.error().message.find("already in a block job"), std::string::npos)
        << r.error().message;
}

TEST_F(MovePreflight, RefusesDeleteSourceWhenQemusRelativeNameCannotBeResolved) {
    // QEMU was started with file=vm1.qcow2 from its own directory; over a
    // transport that cannot name QEMU's process that directory is unknown,
    // and blockmig's own directory must not be guessed instead.
    std::ofstream(dir / "vm1.qcow2") << "not the guest's disk";
    const auto old_cwd = std::filesystem::current_path();
    std::filesystem::current_path(dir);
    expect_queries(disk("qcow2", "vm1.qcow2"));
    auto r = move({.disks = {{"disk0", ""}},
                   .default_target = (dir / "pool").string(),
                   .delete_source = true});
    std::filesystem::current_path(old_cwd);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(r.error().message.find("--delete-source"), std::string::npos) << r.error().message;
    EXPECT_TRUE(std::filesystem::exists(dir / "vm1.qcow2"));
}

TEST_F(MovePreflight, RefusesVerifyWhenTheSourceVolumeIsUnknown) {
    // Without the source's location there is nothing to compare the copy
    // with: refused up front, not after the copy with the guest paused.
    expect_queries(disk("qcow2", "vm1.qcow2"));
    auto r =
        move({.disks = {{"disk0", ""}}, .default_target = (dir / "pool").string(), .verify = true});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(r.error().message.find("--verify"), std::string::npos) << r.error().message;
    EXPECT_TRUE(std::filesystem::is_empty(dir / "pool"));
}

TEST_F(MovePreflight, RefusesWhenTargetVolumeExistsAndLeavesItAlone) {
    std::ofstream(dir / "pool" / "vm1.qcow2") << "precious";
    expect_queries(disk("qcow2", "/v/vm1.qcow2"));
    auto r = move({.disks = {{"disk0", ""}}, .default_target = (dir / "pool").string()});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::already_exists);
    std::ifstream in(dir / "pool" / "vm1.qcow2");
    std::string content;
    in >> content;
    EXPECT_EQ(content, "precious");
}

TEST_F(MovePreflight, RefusesShallowMoveToRawTarget) {
    json reply = disk("qcow2", "/v/top.qcow2");
    reply[0]["inserted"]["backing_file"] = "/v/base.qcow2";
    reply[0]["inserted"]["image"]["backing-image"] = {
        {"filename", "/v/base.qcow2"}, {"format", "qcow2"}, {"virtual-size", 64 << 20}};
    expect_queries(reply);
    auto r = move({.disks = {{"disk0", ""}},
                   .default_target = (dir / "pool").string(),
                   .format = pools::ImageFormat::raw,
                   .shallow = true});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(r.error().message.find("qcow2"), std::string::npos) << r.error().message;
    EXPECT_TRUE(std::filesystem::is_empty(dir / "pool"));
}

TEST_F(MovePreflight, RefusesWhenNoDiskIsSelected) {
    expect_queries(disk("qcow2", "/v/vm1.qcow2"));
    auto r = move({.default_target = (dir / "pool").string()});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
}

}  // namespace
