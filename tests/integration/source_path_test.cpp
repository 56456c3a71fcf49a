// A guest started from its own directory with a relative image name: the name
// resolves against QEMU's working directory (found through the QMP socket's
// peer), not blockmig's, even when blockmig's holds a file of the same name.
#include "move/source_path.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include "lab.hpp"
#include "move/source_disk.hpp"
#include "qmp/client.hpp"

using namespace blockmig;
using namespace blockmig::lab;

namespace {

// Runs the test from `dir` and returns to the old directory afterwards.
class WorkingDirectory {
  public:
    explicit WorkingDirectory(const fs::path& dir) : m_old(fs::current_path()) {
        fs::current_path(dir);
    }
    ~WorkingDirectory() {
        std::error_code ec;
        fs::current_path(m_old, ec);
    }

  private:
    fs::path m_old;
};

TEST(SourcePath, RelativeDriveNameResolvesAgainstTheGuestsQemu) {
    LAB_REQUIRE();
    TempDir vmdir("vmdir"), elsewhere("elsewhere");
    run_ok({"truncate", "-s", "64M", (vmdir / "vm.raw").string()});
    run_ok({"truncate", "-s", "64M", (elsewhere / "vm.raw").string()});  // the decoy
    WorkingDirectory here(elsewhere.path());

    GuestConfig config;
    config.disks = {{"disk0", "vm.raw", "raw"}};
    config.cwd = vmdir.path();
    config.stamp_blocks = 256;
    Guest guest(config);
    ASSERT_TRUE(guest.wait_for_line("GUEST-UP", std::chrono::seconds(60))) << guest.console();

    auto client = qmp::Client::connect(guest.qmp_socket().string());
    ASSERT_TRUE(client) << client.error().message;
    ASSERT_TRUE((*client)->peer_pid().has_value());
    EXPECT_EQ(*(*client)->peer_pid(), guest.pid());

    auto disks = list_source_disks(**client);
    ASSERT_TRUE(disks) << disks.error().message;
    auto disk = find_source_disk(*disks, "disk0");
    ASSERT_TRUE(disk) << disk.error().message;
    EXPECT_EQ(disk->filename, "vm.raw") << "QEMU reports the name it was given";
    EXPECT_EQ(disk->location, (vmdir / "vm.raw").string())
        << "the volume move, --verify and --delete-source act on";

    auto path = resolve_source_path(disk->filename, (*client)->peer_pid());
    ASSERT_TRUE(path) << path.error().message;
    EXPECT_EQ(*path, (vmdir / "vm.raw").string());
    EXPECT_NE(fs::absolute(disk->filename), fs::path(*path))
        << "blockmig's own directory would have named the decoy";

    // Without the peer (QMP over TCP) a relative name is unknown, never guessed.
    auto unknown = resolve_source_path(disk->filename, std::nullopt);
    ASSERT_FALSE(unknown);
    EXPECT_EQ(unknown.error().code, ErrorCode::unsupported);
}

}  // namespace
