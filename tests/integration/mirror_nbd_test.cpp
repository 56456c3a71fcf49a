// mirror::Mirror onto a remote NBD export (the target kind `migrate` uses):
// a "destination" qemu-storage-daemon exports a volume with nbd-server-start
// + block-export-add, a "source" qemu-storage-daemon mirrors a node holding
// known data into it through an `nbd` client node, over a Unix socket and
// over TCP. The soft cancel (final sync, source untouched) must leave the
// export byte-identical to the source; an abort must leave nothing behind
// on the source side and the export untouched.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <random>

#include "jobs/effects.hpp"
#include "jobs/journal.hpp"
#include "jobs/names.hpp"
#include "mirror/group.hpp"
#include "mirror/mirror.hpp"
#include "qmp_daemon.hpp"

using namespace blockmig;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

std::string read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int free_port() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
    close(s);
    return ntohs(a.sin_port);
}

std::unique_ptr<qmp::Client> connect(const blockmig::testing::QemuProcess& p) {
    qmp::ConnectOptions options;
    options.default_timeout = 10s;
    auto c = qmp::Client::connect(p.socket(), options);
    EXPECT_TRUE(c) << c.error().message;
    return c ? std::move(*c) : nullptr;
}

// A raw file node "<name>-fmt" over "<name>-file" in `client`'s daemon.
void add_raw_node(qmp::Client& client, const std::string& name, const fs::path& file) {
    ASSERT_TRUE(qmp::blockdev_add(
        client, {{"driver", "file"}, {"node-name", name + "-file"}, {"filename", file.string()}}));
    ASSERT_TRUE(qmp::blockdev_add(
        client, {{"driver", "raw"}, {"node-name", name + "-fmt"}, {"file", name + "-file"}}));
}

class MirrorNbd : public ::testing::Test {
  protected:
    void SetUp() override {
        LAB_REQUIRE();
        // Source data: random megabytes with a hole between them.
        std::string data(4 * k_mib, '\0');
        std::mt19937 rng(42);
        for (auto& c : data) c = static_cast<char>(rng());
        {
            std::ofstream out(src_file, std::ios::binary);
            out.write(data.data(), static_cast<std::streamsize>(data.size()));
        }
        fs::resize_file(src_file, 16 * k_mib);
        { std::ofstream out(dst_file, std::ios::binary); }
        fs::resize_file(dst_file, 16 * k_mib);
        dst_client = connect(dst);
        src_client = connect(src);
        ASSERT_TRUE(dst_client && src_client);
        add_raw_node(*dst_client, "dst", dst_file);
        add_raw_node(*src_client, "src", src_file);
    }

    void export_on(const qmp::SocketAddress& address) {
        ASSERT_TRUE(qmp::nbd_server_start(*dst_client, address));
        ASSERT_TRUE(qmp::block_export_add(
            *dst_client,
            {.id = "exp0", .node_name = "dst-fmt", .name = "disk0", .writable = true}));
    }

    // A journal for one disk, as move/migrate make it.
    void begin_job() {
        jobs::Job job;
        job.guest.qmp = src.socket();
        job.kind = "migrate";
        job.finish = jobs::Finish::copy_only;
        auto j = jobs::Journal::create(state_dir.path(), std::move(job));
        ASSERT_TRUE(j) << j.error().message;
        journal.emplace(std::move(*j));
        names = jobs::names_for(journal->job().id, "disk0");
        ASSERT_TRUE(journal->update([&](jobs::Job& job) {
            jobs::JobDisk d;
            d.disk = "disk0";
            d.source_node = "src-fmt";
            job.disks.push_back(d);
        }));
        env.client = src_client.get();
        env.step_timeout = 10s;
        effects.emplace(*journal, env);
    }

    std::set<std::string> src_nodes() {
        std::set<std::string> out;
        auto nodes = qmp::query_named_block_nodes(*src_client);
        EXPECT_TRUE(nodes);
        if (nodes)
            for (const auto& n : *nodes) out.insert(n.node_name);
        return out;
    }

    // Attach, start, wait READY through a Group, as migrate drives them.
    void mirror_until_ready(mirror::Mirror& m, const qmp::SocketAddress& address) {
        mirror::Group group(*src_client);
        group.add(m);
        ASSERT_TRUE(m.attach(mirror::Target::nbd(address, "disk0")));
        EXPECT_EQ(m.top_node(), names.prefix + "-nbd");
        ASSERT_TRUE(m.start(qmp::CopyMode::background, 0));
        auto ready = group.wait_ready({.tick = 100ms}, nullptr);
        ASSERT_TRUE(ready) << ready.error().message;
        EXPECT_EQ(m.state(), mirror::MirrorState::ready);
    }

    blockmig::testing::QemuProcess dst{blockmig::testing::QemuProcess::Kind::storage_daemon};
    blockmig::testing::QemuProcess src{blockmig::testing::QemuProcess::Kind::storage_daemon};
    lab::TempDir files{"mirror-nbd"};
    lab::TempDir state_dir{"mirror-nbd-state"};
    fs::path src_file = files / "src.raw";
    fs::path dst_file = files / "dst.raw";
    std::unique_ptr<qmp::Client> dst_client, src_client;
    std::optional<jobs::Journal> journal;
    jobs::UndoEnv env;
    std::optional<jobs::Effects> effects;
    jobs::DiskNames names;
};

TEST_F(MirrorNbd, SoftCancelOverUnixSocketLeavesAnIdenticalCopyAndTheSourceInPlace) {
    const auto address = qmp::SocketAddress::unix_path((files / "nbd.sock").string());
    export_on(address);
    begin_job();
    mirror::Mirror m(*src_client, *effects,
                     {.disk = "disk0", .source_node = "src-fmt", .names = names});
    mirror_until_ready(m, address);
    EXPECT_EQ(m.target_url(), "nbd+unix:///disk0?socket=" + (files / "nbd.sock").string());
    ASSERT_TRUE(m.soft_cancel());
    EXPECT_EQ(m.state(), mirror::MirrorState::synced);
    auto jobs = qmp::query_block_jobs(*src_client);
    ASSERT_TRUE(jobs);
    EXPECT_TRUE(jobs->empty());
    auto detached = m.detach();
    ASSERT_TRUE(detached) << detached.error().message;
    EXPECT_TRUE(detached->left_behind.empty());
    EXPECT_FALSE(src_nodes().contains(names.prefix + "-nbd"));
    EXPECT_TRUE(src_nodes().contains("src-fmt"));
    ASSERT_TRUE(qmp::block_export_del(*dst_client, {.id = "exp0", .node_name = "dst-fmt"}));
    ASSERT_TRUE(qmp::blockdev_del(*dst_client, "dst-fmt"));
    EXPECT_EQ(read_all(dst_file), read_all(src_file));
}

TEST_F(MirrorNbd, OverTcpAnAbortLeavesNothingOnTheSourceSide) {
    const auto address =
        qmp::SocketAddress::inet("127.0.0.1", static_cast<std::uint16_t>(free_port()));
    export_on(address);
    begin_job();
    mirror::Mirror m(*src_client, *effects,
                     {.disk = "disk0", .source_node = "src-fmt", .names = names});
    mirror_until_ready(m, address);
    EXPECT_TRUE(m.target_url().starts_with("nbd://127.0.0.1:"));
    EXPECT_TRUE(src_nodes().contains(names.prefix + "-nbd"));
    auto aborted = m.abort();
    ASSERT_TRUE(aborted) << aborted.error().message;
    EXPECT_TRUE(aborted->left_behind.empty());
    EXPECT_EQ(m.state(), mirror::MirrorState::rolled_back);
    auto jobs = qmp::query_block_jobs(*src_client);
    ASSERT_TRUE(jobs);
    EXPECT_TRUE(jobs->empty());
    EXPECT_FALSE(src_nodes().contains(names.prefix + "-nbd"));
    // Every record of the journal is settled: nothing for recover to do.
    EXPECT_FALSE(journal->job().needs_recovery());
    // The export itself is not ours: it still serves.
    auto exports = dst_client->execute("query-block-exports");
    ASSERT_TRUE(exports);
    EXPECT_EQ(exports->size(), 1u);
}

}  // namespace
