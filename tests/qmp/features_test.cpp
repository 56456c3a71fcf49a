#include "qmp/features.hpp"

#include <gtest/gtest.h>

using namespace blockmig;
using namespace blockmig::qmp;
using nlohmann::json;

namespace {

// A trimmed query-qmp-schema in QEMU 7.2's shape (types named by numbers).
json sample_schema() {
    return json::parse(R"([
      {"name": "blockdev-mirror", "meta-type": "command", "arg-type": "10", "ret-type": "0"},
      {"name": "10", "meta-type": "object", "members": [
          {"name": "device", "type": "str"}, {"name": "copy-mode", "type": "11", "default": null}]},
      {"name": "11", "meta-type": "enum", "values": ["background", "write-blocking"]},
      {"name": "block-export-add", "meta-type": "command", "arg-type": "20", "ret-type": "0"},
      {"name": "20", "meta-type": "object", "tag": "type",
       "members": [{"name": "type", "type": "21"}, {"name": "id", "type": "str"}],
       "variants": [{"case": "nbd", "type": "22"}]},
      {"name": "22", "meta-type": "object", "members": [{"name": "name", "type": "str", "default": null}]},
      {"name": "migrate-continue", "meta-type": "command", "arg-type": "30", "ret-type": "0"},
      {"name": "30", "meta-type": "object", "members": [{"name": "state", "type": "31"}]},
      {"name": "31", "meta-type": "enum", "values": ["none", "pre-switchover"]},
      {"name": "JOB_STATUS_CHANGE", "meta-type": "event", "arg-type": "40"}
    ])");
}

}  // namespace

TEST(QmpFeatures, AnswersFromSchema) {
    auto f = Features::from_schema(sample_schema());
    ASSERT_TRUE(f);
    EXPECT_TRUE(f->has_command("blockdev-mirror"));
    EXPECT_FALSE(f->has_command("block-job-change"));
    EXPECT_FALSE(f->block_job_change());
    EXPECT_TRUE(f->block_export_add());
    EXPECT_TRUE(f->mirror_copy_mode());
    EXPECT_TRUE(f->mirror_write_blocking());
    EXPECT_TRUE(f->migrate_pause_before_switchover());
    EXPECT_TRUE(f->has_event("JOB_STATUS_CHANGE"));
    EXPECT_FALSE(f->command_has_argument("blockdev-mirror", "nope"));
    EXPECT_FALSE(f->command_has_argument("no-such-command", "device"));
}

TEST(QmpFeatures, FindsArgumentsInUnionVariants) {
    auto f = Features::from_schema(sample_schema());
    ASSERT_TRUE(f);
    EXPECT_TRUE(f->command_has_argument("block-export-add", "id"));
    EXPECT_TRUE(f->command_has_argument("block-export-add", "name"));
}

TEST(QmpFeatures, OldMirrorWithoutCopyMode) {
    json schema = json::parse(R"([
      {"name": "blockdev-mirror", "meta-type": "command", "arg-type": "10", "ret-type": "0"},
      {"name": "10", "meta-type": "object", "members": [{"name": "device", "type": "str"}]}])");
    auto f = Features::from_schema(schema);
    ASSERT_TRUE(f);
    EXPECT_FALSE(f->mirror_copy_mode());
    EXPECT_FALSE(f->mirror_write_blocking());
}

TEST(QmpFeatures, RejectsNonArraySchema) {
    auto f = Features::from_schema(json::object());
    ASSERT_FALSE(f);
    EXPECT_EQ(f.error().code, ErrorCode::protocol);
}

// QEMU >= 8.2: block-job-change takes a union whose mirror variant has copy-mode.
TEST(QmpFeatures, BlockJobChangeCanSwitchMirrorCopyMode) {
    json schema = json::parse(R"([
      {"name": "block-job-change", "meta-type": "command", "arg-type": "50", "ret-type": "0"},
      {"name": "50", "meta-type": "object", "tag": "type",
       "members": [{"name": "id", "type": "str"}, {"name": "type", "type": "51"}],
       "variants": [{"case": "mirror", "type": "52"}]},
      {"name": "51", "meta-type": "enum", "values": ["commit", "stream", "mirror"]},
      {"name": "52", "meta-type": "object", "members": [{"name": "copy-mode", "type": "53"}]},
      {"name": "53", "meta-type": "enum", "values": ["background", "write-blocking"]}])");
    auto f = Features::from_schema(schema);
    ASSERT_TRUE(f);
    EXPECT_TRUE(f->block_job_change());
    EXPECT_TRUE(f->mirror_change_copy_mode());
    EXPECT_FALSE(Features::from_schema(sample_schema())->mirror_change_copy_mode());
}
