// `blockmig move` end to end with NFS in the picture: a chain of live moves
// across all pool kinds while the guest writes, and the rollbacks when the
// NFS server dies mid-copy or is not there at all. Real QEMU (TCG),
// nfs-ganesha, tgtd; every block verified by diskstamp.
#include <unistd.h>

#include <iostream>

#include "move_test_util.hpp"

using namespace blockmig::lab;
using namespace move_test;

namespace {

// After a successful move of disk0 to `target_image`: the guest's device sits
// on the target through a direct node (no NBD hop, no daemon), nothing of the
// old storage stays open, the heartbeat never stopped for 1 s, and every
// acknowledged block is on the target.
void check_moved(Guest& guest, Clock::time_point move_start, const std::string& target_image,
                 const std::string& target_format, const std::vector<std::string>& expect_in_file,
                 const std::string& hop_needle, const std::string& old_needle,
                 const std::string& old_driver, std::uint64_t nblocks) {
    std::this_thread::sleep_for(
        1s);  // heartbeats after the move ended, so a stall at its end shows
    const auto gap = guest.max_heartbeat_gap(move_start);
    EXPECT_LT(gap, 1000ms) << "heartbeat stalled during the move to " << target_image;
    std::cout << "[ move ] to " << target_image << ": max heartbeat gap " << gap.count() << " ms\n";

    EXPECT_TRUE(block_jobs(guest).empty()) << block_jobs(guest).dump();
    const json inserted = device_block(guest, "disk0")["inserted"];
    for (const auto& needle : expect_in_file)
        EXPECT_NE(inserted.value("file", "").find(needle), std::string::npos)
            << "device is not on the target (" << needle << "): " << inserted.dump();
    EXPECT_EQ(inserted.dump().find("nbd"), std::string::npos)
        << "device still goes through an NBD hop: " << inserted.dump();
    for (const auto& n : named_nodes(guest)) {
        EXPECT_NE(n.value("drv", ""), "nbd") << "NBD node left: " << n.dump();
        EXPECT_EQ(n.value("file", "").find(old_needle), std::string::npos)
            << "old storage still open: " << n.dump();
        if (!old_driver.empty()) {
            EXPECT_NE(n.value("drv", ""), old_driver) << "old storage still open: " << n.dump();
        }
    }
    EXPECT_TRUE(storage_daemons_mentioning(hop_needle).empty())
        << "the tool's qemu-storage-daemon still runs after the pivot";

    // Beyond the stamped area: the prefilled pattern, then holes reading zero.
    for (const char* check : {"read -P 0x5a 16M 32M", "read -P 0 48M 16M"}) {
        auto r = run({"qemu-io", "-r", "-U", "-f", target_format, "-c", check, target_image});
        EXPECT_EQ(r.status, 0) << check << ": " << r.out;
        EXPECT_EQ(r.out.find("verification failed"), std::string::npos) << check << ": " << r.out;
    }

    VerifyReport v = pause_and_verify(guest, target_image, target_format, nblocks);
    EXPECT_TRUE(v.intact()) << target_image << ":\n" << v.output;
    EXPECT_EQ(v.bad, 0u);
    EXPECT_EQ(v.lost, 0u);
    EXPECT_TRUE(guest_keeps_writing(guest)) << guest.console();
}

TEST(MoveNfs, ChainLocalQcow2ToNfsToIscsiToLocalRawKeepsEveryBlock) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;  // 16 MiB generation: a few seconds under TCG
    constexpr std::uint64_t k_size = 64 * k_mib;
    TempDir dir("move-chain");
    const fs::path source = dir / "chain.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    // 32 MiB of data after the 16 MiB the guest stamps; --bandwidth 16 then
    // makes every move last a few seconds while the guest writes.
    run_ok({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 16M 32M", source.string()});
    NfsServer nfs;
    IscsiTarget iscsi(k_size);
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    const std::string qmp = guest->qmp_socket().string();

    // 1. local qcow2 -> NFS pool (volume named after the source).
    const auto export_before = entries_of(nfs.export_dir());
    auto start = Clock::now();
    auto r = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", nfs.url(),
                           "--bandwidth", "16", "--timeout", "300"});
    std::cout << "[ move ] local -> NFS took "
              << std::chrono::duration<double>(Clock::now() - start).count() << " s\n";
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    std::vector<std::string> created;
    for (const auto& name : entries_of(nfs.export_dir()))
        if (!export_before.contains(name)) created.push_back(name);
    ASSERT_EQ(created.size(), 1u) << "expected exactly one new volume in the NFS export";
    const std::string nfs_image = nfs.url() + "/" + created[0];
    EXPECT_NE(run_ok({"qemu-img", "info", "-U", "--output=json", nfs_image})
                  .find("\"format\": \"qcow2\""),
              std::string::npos)
        << "the target keeps the source's format by default";
    ASSERT_NO_FATAL_FAILURE(check_moved(*guest, start, nfs_image, "qcow2",
                                        {"nfs://127.0.0.1", created[0]}, created[0],
                                        source.string(), "", k_blocks));

    // 2. NFS qcow2 -> iSCSI raw (an unused LUN of the target is claimed).
    EXPECT_EQ(allocated_bytes(iscsi.backing_file(1)), 0u);
    start = Clock::now();
    r = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", iscsi.base_url(), "--format",
                      "raw", "--bandwidth", "16", "--timeout", "300"});
    std::cout << "[ move ] NFS -> iSCSI took "
              << std::chrono::duration<double>(Clock::now() - start).count() << " s\n";
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    ASSERT_NO_FATAL_FAILURE(check_moved(*guest, start, iscsi.lun_url(1), "raw", {iscsi.iqn()},
                                        iscsi.iqn(), "nfs://", "nfs", k_blocks));

    // 3. iSCSI raw -> local raw, an exact volume path.
    const fs::path final_raw = dir / "final.raw";
    start = Clock::now();
    r = blockmig_cli({"move", "--qmp", qmp, "--disk", "disk0", "--to", final_raw.string(),
                      "--format", "raw", "--bandwidth", "16", "--timeout", "300"});
    std::cout << "[ move ] iSCSI -> local took "
              << std::chrono::duration<double>(Clock::now() - start).count() << " s\n";
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "the move ends its job";
    ASSERT_NO_FATAL_FAILURE(check_moved(*guest, start, final_raw.string(), "raw",
                                        {final_raw.string()}, final_raw.string(), iscsi.iqn(),
                                        "iscsi", k_blocks));
    EXPECT_EQ(fs::file_size(final_raw), k_size);
}

TEST(MoveNfs, TargetServerDyingMidCopyRollsBackWithinStallTimeout) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 8192;
    TempDir dir("move-rb");
    // A name no other run uses, to find this move's qemu-storage-daemon.
    const std::string name = "rb" + std::to_string(getpid()) + ".qcow2";
    const fs::path source = dir / name;
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "512M"});
    // 256 MiB of data beyond the stamped area: at 8 MiB/s the copy takes ~40 s.
    run_ok({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 64M 256M", source.string()});
    NfsServer nfs;
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    const auto nodes_before = node_names(*guest);
    const std::string file_before = device_file(*guest, "disk0");
    const auto export_before = entries_of(nfs.export_dir());

    BackgroundCli move({"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to",
                        nfs.url(), "--bandwidth", "8", "--stall-timeout", "5", "--timeout", "300"},
                       guest->qmp_socket().string());
    // The copy is under way once the target volume on the export grows.
    fs::path target_file;
    const auto deadline = Clock::now() + 90s;
    while (Clock::now() < deadline && !move.wait(0ms)) {
        for (const auto& n : entries_of(nfs.export_dir()))
            if (!export_before.contains(n) && allocated_bytes(nfs.export_dir() / n) > 4 * k_mib)
                target_file = nfs.export_dir() / n;
        if (!target_file.empty()) break;
        std::this_thread::sleep_for(100ms);
    }
    ASSERT_FALSE(target_file.empty()) << "the copy to NFS never started: "
                                      << (move.wait(0ms) ? move.result().out : "still running");
    std::this_thread::sleep_for(2s);
    ASSERT_FALSE(move.wait(0ms)) << "finished before the server was stopped: " << move.result().out;
    const auto stopped = Clock::now();
    nfs.stop();

    ASSERT_TRUE(move.wait(60s)) << "blockmig did not give up within 60 s of the NFS server dying";
    const auto took = std::chrono::duration<double>(move.finished() - stopped).count();
    std::cout << "[ move ] failed " << took << " s after the NFS server stopped\n";
    const CommandResult& r = move.result();
    EXPECT_EQ(r.status, 1) << r.out;
    // The target volume is on the dead server and cannot be deleted: the job
    // must be kept for `recover` (named in the error line), not dropped.
    EXPECT_EQ(jobs_left(), 1) << "the job that left a volume behind is kept";
    std::vector<std::string> errors;
    for (const auto& line : lines_of(r.out))
        if (line.find("blockmig: error: ") != std::string::npos) errors.push_back(line);
    ASSERT_EQ(errors.size(), 1u) << r.out;
    EXPECT_NE(errors[0].find("127.0.0.1"), std::string::npos)
        << "the error must name the unreachable server: " << r.out;
    EXPECT_NE(errors[0].find("blockmig recover --state-dir"), std::string::npos)
        << "the error must say how to finish the kept job: " << r.out;
    std::cout << "[ move ] " << errors[0] << "\n";

    // Nothing of the move is left in the guest's QEMU or on the host.
    EXPECT_TRUE(block_jobs(*guest).empty()) << block_jobs(*guest).dump();
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_EQ(device_file(*guest, "disk0"), file_before);
    EXPECT_EQ(device_file(*guest, "disk0").find(source.string()), 0u);
    EXPECT_TRUE(storage_daemons_mentioning(name).empty()) << "the NBD hop daemon was left running";
    if (fs::exists(target_file))
        std::cout << "[ note ] the target volume " << target_file
                  << " is still on the (dead) server's export\n";

    // The guest never noticed: it still writes, its heartbeat never stalled,
    // and its source holds every acknowledged block.
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
    EXPECT_LT(guest->max_heartbeat_gap(move.started()), 1000ms);
    VerifyReport v = pause_and_verify(*guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST(MoveNfs, UnreachableNfsServerIsRefusedAndNothingChanges) {
    LAB_REQUIRE();
    constexpr std::uint64_t k_blocks = 4096;
    TempDir dir("move-unreach");
    const fs::path source = dir / "u.qcow2";
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", source.string(), "64M"});
    auto guest = boot_writing_guest(source, "qcow2", k_blocks);
    const auto nodes_before = node_names(*guest);
    const auto dir_before = entries_of(dir.path());

    // Nothing listens for NFS on 127.0.0.3 (ganesha binds 127.0.0.1 only).
    const auto start = Clock::now();
    auto r = blockmig_cli({"move", "--qmp", guest->qmp_socket().string(), "--disk", "disk0", "--to",
                           "nfs://127.0.0.3/export", "--timeout", "120"});
    const auto took = std::chrono::duration<double>(Clock::now() - start).count();
    EXPECT_LT(took, 60.0) << r.out;
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_EQ(jobs_left(), 0) << "a refused or failed move leaves no job";
    auto lines = lines_of(r.out);
    ASSERT_EQ(lines.size(), 1u) << r.out;
    EXPECT_EQ(lines[0].rfind("blockmig: error: ", 0), 0u) << r.out;
    EXPECT_NE(lines[0].find("127.0.0.3"), std::string::npos) << r.out;

    EXPECT_TRUE(block_jobs(*guest).empty());
    EXPECT_EQ(node_names(*guest), nodes_before);
    EXPECT_EQ(entries_of(dir.path()), dir_before);
    EXPECT_TRUE(guest_keeps_writing(*guest)) << guest->console();
    VerifyReport v = pause_and_verify(*guest, source.string(), "qcow2", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

}  // namespace
