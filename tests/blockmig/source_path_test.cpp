// Relative image names resolved against the QEMU process, with real
// processes standing in for QEMU (a child that opened the file from its own
// working directory).
#include "move/source_path.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

using blockmig::ErrorCode;
using blockmig::resolve_source_path;
namespace fs = std::filesystem;

namespace {

// Plays QEMU started from `cwd` with `-drive file=<open_name>`: the child
// chdirs, opens the file, optionally chdirs again (as -daemonize does), and
// waits. Killed and reaped on destruction.
class FakeQemu {
  public:
    FakeQemu(const fs::path& cwd, const std::string& open_name, const fs::path& chdir_after = {}) {
        int ready[2];
        if (::pipe(ready) != 0) std::abort();
        m_pid = ::fork();
        if (m_pid == 0) {
            if (::chdir(cwd.c_str()) != 0 || ::open(open_name.c_str(), O_RDONLY) < 0) ::_exit(1);
            if (!chdir_after.empty() && ::chdir(chdir_after.c_str()) != 0) ::_exit(1);
            char ok = 1;
            (void)!::write(ready[1], &ok, 1);
            while (true) ::pause();
        }
        ::close(ready[1]);
        char ok = 0;
        m_ready = ::read(ready[0], &ok, 1) == 1;
        ::close(ready[0]);
    }
    ~FakeQemu() { stop(); }
    void stop() {
        if (m_pid <= 0) return;
        ::kill(m_pid, SIGKILL);
        ::waitpid(m_pid, nullptr, 0);
        m_pid = -1;
    }
    int pid() const { return m_pid; }
    bool ready() const { return m_ready; }

  private:
    int m_pid = -1;
    bool m_ready = false;
};

class SourcePath : public ::testing::Test {
  protected:
    void SetUp() override {
        root = fs::temp_directory_path() / ("bm-srcpath-" + std::to_string(::getpid()));
        fs::create_directories(root / "vmdir");
        std::ofstream(root / "vmdir" / "vm.qcow2") << "guest disk";
        std::ofstream(root / "vmdir" / "other.qcow2") << "not opened";
    }
    void TearDown() override { fs::remove_all(root); }
    fs::path root;
};

TEST_F(SourcePath, RelativeNameResolvesAgainstQemusWorkingDirectory) {
    FakeQemu qemu(root / "vmdir", "vm.qcow2");
    ASSERT_TRUE(qemu.ready());
    ASSERT_NE(fs::current_path(), root / "vmdir");  // ours differs from QEMU's
    auto path = resolve_source_path("vm.qcow2", qemu.pid());
    ASSERT_TRUE(path) << path.error().message;
    EXPECT_EQ(*path, (root / "vmdir" / "vm.qcow2").string());
}

TEST_F(SourcePath, DotDotNamesAreNormalised) {
    FakeQemu qemu(root / "vmdir", "../vmdir/./vm.qcow2");
    ASSERT_TRUE(qemu.ready());
    auto path = resolve_source_path("../vmdir/./vm.qcow2", qemu.pid());
    ASSERT_TRUE(path) << path.error().message;
    EXPECT_EQ(*path, (root / "vmdir" / "vm.qcow2").string());
}

TEST_F(SourcePath, AFileTheProcessDoesNotHaveOpenIsUnknown) {
    FakeQemu qemu(root / "vmdir", "vm.qcow2");
    ASSERT_TRUE(qemu.ready());
    auto path = resolve_source_path("other.qcow2", qemu.pid());
    ASSERT_FALSE(path);
    EXPECT_EQ(path.error().code, ErrorCode::not_found);
    EXPECT_NE(path.error().message.find("does not have"), std::string::npos)
        << path.error().message;
}

TEST_F(SourcePath, QemuThatChangedDirectoryAfterOpeningIsUnknown) {
    // -daemonize: QEMU opens its images, then chdir("/").
    fs::create_directories(root / "elsewhere");
    std::ofstream(root / "elsewhere" / "vm.qcow2") << "a different file, same name";
    FakeQemu qemu(root / "vmdir", "vm.qcow2", root / "elsewhere");
    ASSERT_TRUE(qemu.ready());
    auto path = resolve_source_path("vm.qcow2", qemu.pid());
    ASSERT_FALSE(path) << "resolved to " << *path;
    EXPECT_EQ(path.error().code, ErrorCode::not_found);
}

TEST_F(SourcePath, AbsoluteNameIsConfirmedAgainstTheProcess) {
    FakeQemu qemu(root / "vmdir", "vm.qcow2");
    ASSERT_TRUE(qemu.ready());
    const std::string vm = (root / "vmdir" / "vm.qcow2").string();
    auto path = resolve_source_path(vm, qemu.pid());
    ASSERT_TRUE(path) << path.error().message;
    EXPECT_EQ(*path, vm);
    auto other = resolve_source_path((root / "vmdir" / "other.qcow2").string(), qemu.pid());
    ASSERT_FALSE(other);
    EXPECT_EQ(other.error().code, ErrorCode::not_found);
}

TEST_F(SourcePath, RelativeNameWithoutPidIsUnknown) {
    auto path = resolve_source_path("vm.qcow2", std::nullopt);
    ASSERT_FALSE(path);
    EXPECT_EQ(path.error().code, ErrorCode::unsupported);
    EXPECT_NE(path.error().message.find("unknown"), std::string::npos);
}

TEST_F(SourcePath, AbsoluteNameWithoutPidPassesThrough) {
    auto path = resolve_source_path("/srv/vms/vm1.qcow2", std::nullopt);
    ASSERT_TRUE(path);
    EXPECT_EQ(*path, "/srv/vms/vm1.qcow2");
}

TEST_F(SourcePath, ProcessThatIsGoneIsUnknown) {
    FakeQemu qemu(root / "vmdir", "vm.qcow2");
    ASSERT_TRUE(qemu.ready());
    const int pid = qemu.pid();
    qemu.stop();
    auto path = resolve_source_path("vm.qcow2", pid);
    ASSERT_FALSE(path);
    EXPECT_EQ(path.error().code, ErrorCode::unsupported);
}

TEST_F(SourcePath, NetworkAndJsonNamesAreNotLocalFiles) {
    for (const char* name :
         {"nfs://10.0.0.5/export/vm.qcow2", "iscsi://h/iqn/1", R"(json:{"driver":"nbd"})", ""}) {
        auto path = resolve_source_path(name, ::getpid());
        ASSERT_FALSE(path) << name;
        EXPECT_EQ(path.error().code, ErrorCode::invalid_argument) << name;
    }
}

}  // namespace
