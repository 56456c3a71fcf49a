// The NBD hop (qemu-storage-daemon) in front of a CHAP-protected iSCSI LUN:
// it logs in with the password, which appears nowhere in its command line.
#include "mirror/nbd_hop.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "lab.hpp"
#include "pools/address.hpp"
#include "pools/pools.hpp"

using namespace blockmig;
using namespace blockmig::lab;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

std::string cmdline_of(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(NbdHop, ServesAChapLunWithoutThePasswordInItsArgv) {
    LAB_REQUIRE();
    const std::string password = "hop-chap-pw-5e81d0";
    IscsiTarget target(16 * k_mib, 1, "hopuser", password);
    auto pool = pools::open_pool(
        "iscsi://hopuser%" + password + "@" + target.portal() + "/" + target.iqn(), {});
    ASSERT_TRUE(pool) << pool.error().message;
    ASSERT_TRUE((*pool)->create("lun1", 16 * k_mib, pools::ImageFormat::raw));
    {
        auto volume = (*pool)->open("lun1", true);
        ASSERT_TRUE(volume);
        std::vector<std::byte> data(k_mib, std::byte{0x3e});
        ASSERT_TRUE((*volume)->pwrite(data, 2 * k_mib));
        ASSERT_TRUE((*volume)->flush());
    }
    pools::QemuNodeOptions options;
    options.node_prefix = "hop0";
    auto chain = (*pool)->describe_for_qemu("lun1", options);
    ASSERT_TRUE(chain) << chain.error().message;
    ASSERT_EQ(chain->secrets.size(), 1u);

    TempDir dir("hop");
    auto hop = NbdHop::start(dir.path() / "state", chain->protocol, chain->secrets, 15s);
    ASSERT_TRUE(hop) << hop.error().message;
    const std::string cmdline = cmdline_of(hop->pid());
    ASSERT_NE(cmdline.find("qemu-storage-daemon"), std::string::npos);
    EXPECT_EQ(cmdline.find(password), std::string::npos) << "password in /proc/PID/cmdline";
    EXPECT_NE(cmdline.find("/proc/self/fd/"), std::string::npos) << cmdline;
    // The daemon logged in to the CHAP target: data written through the
    // pool reads back through the hop.
    const std::string url = "nbd+unix:///hop?socket=" + hop->socket_path().string();
    run_ok({"qemu-io", "-f", "raw", "-c", "read -P 0x3e 2M 1M", url});
    hop->stop();
    EXPECT_FALSE(hop->running());
}

}  // namespace
