// `migrate --copy-mode`: the mode the disk mirrors start in, from what the
// source QEMU's schema offers (migrate/copy_mode.hpp).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "migrate/copy_mode.hpp"

using namespace blockmig;
using nlohmann::json;

namespace {

// blockdev-mirror with copy-mode (QEMU >= 3.0), and with `in_place`
// block-job-change whose mirror variant takes copy-mode (QEMU >= 8.2).
qmp::Features schema(bool in_place) {
    json s = json::parse(R"([
      {"name": "blockdev-mirror", "meta-type": "command", "arg-type": "10", "ret-type": "0"},
      {"name": "10", "meta-type": "object", "members": [{"name": "copy-mode", "type": "53"}]},
      {"name": "53", "meta-type": "enum", "values": ["background", "write-blocking"]}])");
    if (in_place)
        for (auto& e : json::parse(R"([
          {"name": "block-job-change", "meta-type": "command", "arg-type": "50", "ret-type": "0"},
          {"name": "50", "meta-type": "object", "tag": "type",
           "members": [{"name": "id", "type": "str"}, {"name": "type", "type": "51"}],
           "variants": [{"case": "mirror", "type": "52"}]},
          {"name": "51", "meta-type": "enum", "values": ["commit", "stream", "mirror"]},
          {"name": "52", "meta-type": "object", "members": [{"name": "copy-mode", "type": "53"}]}])"))
            s.push_back(e);
    auto f = qmp::Features::from_schema(s);
    EXPECT_TRUE(f);
    return f ? *f : qmp::Features{};
}

std::string mode(CopyModePolicy asked, bool in_place) {
    auto m = migrate::initial_copy_mode(asked, schema(in_place));
    if (!m) return "refused: " + m.error().message;
    return *m == qmp::CopyMode::write_blocking ? "write-blocking" : "background";
}

}  // namespace

TEST(MigrateCopyMode, AutoStartsWriteBlockingOnlyWhereQemuCanSwitchInPlace) {
    EXPECT_EQ(mode(CopyModePolicy::auto_switch, true), "write-blocking");
    EXPECT_EQ(mode(CopyModePolicy::auto_switch, false), "background");
}

TEST(MigrateCopyMode, BackgroundIsBackgroundEverywhere) {
    EXPECT_EQ(mode(CopyModePolicy::background, true), "background");
    EXPECT_EQ(mode(CopyModePolicy::background, false), "background");
}

TEST(MigrateCopyMode, WriteBlockingIsRefusedWhereQemuCannotSwitchInPlace) {
    EXPECT_EQ(mode(CopyModePolicy::write_blocking, true), "write-blocking");
    EXPECT_EQ(mode(CopyModePolicy::write_blocking, false),
              "refused: --copy-mode write-blocking: the source QEMU cannot switch a mirror in "
              "place (no block-job-change copy-mode, QEMU < 8.2), and a write-blocking mirror "
              "there is suspected of losing a guest write (docs/known-issues.md); use "
              "--copy-mode auto");
}
