// blockmig convert / compare / info against qemu-img as the oracle (never
// used by the product): every qcow2 flavour and VMDK subformat qemu-img can
// make converts to content `qemu-img compare` calls identical, blockmig's
// own qcow2 and VMDK output passes `qemu-img check`, bad input leaves no
// target behind, and a conversion runs from NFS straight onto an iSCSI LUN.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "lab.hpp"

using namespace blockmig::lab;
namespace fs = std::filesystem;

namespace {

CommandResult blockmig_cli(std::vector<std::string> args) {
    args.insert(args.begin(), BLOCKMIG_BINARY);
    return run(args);
}

// A 64 MiB raw disk with real file content (binaries, text) laid out in runs
// at scattered, unaligned offsets, a few random blocks and holes between.
void make_source(const fs::path& raw) {
    run_ok({"truncate", "-s", "64M", raw.string()});
    const std::vector<std::pair<std::string, std::string>> runs = {{"/usr/bin/qemu-img", "0"},
                                                                   {"/usr/bin/bash", "3"},
                                                                   {"/etc/services", "17"},
                                                                   {"/usr/bin/qemu-img", "40"},
                                                                   {"/usr/bin/qemu-io", "63"}};
    for (const auto& [file, mib] : runs)
        run_ok({"dd", "if=" + file, "of=" + raw.string(), "bs=1M", "seek=" + mib, "count=1",
                "conv=notrunc", "status=none"});
    run_ok({"dd", "if=/dev/urandom", "of=" + raw.string(), "bs=512", "seek=20001", "count=9",
            "conv=notrunc", "status=none"});
}

void expect_identical(const fs::path& a, const fs::path& b) {
    auto r = run({"qemu-img", "compare", a.string(), b.string()});
    EXPECT_EQ(r.status, 0) << a << " vs " << b << ": " << r.out;
}

void expect_clean(const fs::path& image) {
    auto r = run({"qemu-img", "check", image.string()});
    EXPECT_EQ(r.status, 0) << image << ": " << r.out;
}

// Converts with blockmig and checks the result against the oracle.
void convert_and_check(const fs::path& src, const fs::path& dst, const fs::path& oracle,
                       std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"convert"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(src.string());
    args.push_back(dst.string());
    auto r = blockmig_cli(args);
    ASSERT_EQ(r.status, 0) << src << " -> " << dst << ": " << r.out;
    expect_identical(oracle, dst);
    if (dst.extension() == ".qcow2" || dst.extension() == ".vmdk") expect_clean(dst);
    fs::remove(dst);
}

class ConvertTest : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!fs::exists("/usr/bin/qemu-img")) GTEST_SKIP() << "qemu-img (the oracle) missing";
        make_source(m_dir / "src.raw");
    }
    fs::path src() const { return m_dir / "src.raw"; }
    fs::path at(const std::string& name) const { return m_dir / name; }
    TempDir m_dir{"convert"};
};

TEST_F(ConvertTest, EveryQcow2FlavourQemuMakesConvertsIdentically) {
    const std::vector<std::pair<std::string, std::vector<std::string>>> flavours = {
        {"v2.qcow2", {"-O", "qcow2", "-o", "compat=0.10"}},
        {"v3.qcow2", {"-O", "qcow2"}},
        {"zlib.qcow2", {"-O", "qcow2", "-c"}},
        {"zstd.qcow2", {"-O", "qcow2", "-c", "-o", "compression_type=zstd"}},
        {"ext.qcow2", {"-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"}},
        {"small.qcow2", {"-O", "qcow2", "-o", "cluster_size=4k"}}};
    for (const auto& [name, options] : flavours) {
        std::vector<std::string> args = {"qemu-img", "convert"};
        args.insert(args.end(), options.begin(), options.end());
        args.push_back(src().string());
        args.push_back(at(name).string());
        run_ok(args);
        SCOPED_TRACE(name);
        convert_and_check(at(name), at("out.qcow2"), src(), {"-O", "qcow2"});
        convert_and_check(at(name), at("out.raw"), src(), {"-O", "raw"});
    }
}

TEST_F(ConvertTest, BackingChainsAreFlattened) {
    run_ok({"qemu-img", "convert", "-O", "qcow2", src().string(), at("base.qcow2").string()});
    run_ok({"qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
            at("mid.qcow2").string()});
    run_ok(
        {"qemu-io", "-c", "write -P 0xab 5M 3M", "-c", "write -z 0 64k", at("mid.qcow2").string()});
    run_ok({"qemu-img", "create", "-f", "qcow2", "-o", "extended_l2=on", "-b", "mid.qcow2", "-F",
            "qcow2", at("top.qcow2").string()});
    run_ok({"qemu-io", "-c", "write -P 0xcd 1M 4k", "-c", "write -z 3M 8k", "-c",
            "write -P 0x11 60M 64k", at("top.qcow2").string()});
    convert_and_check(at("top.qcow2"), at("out.qcow2"), at("top.qcow2"), {"-O", "qcow2"});
    convert_and_check(at("top.qcow2"), at("out.raw"), at("top.qcow2"), {"-O", "raw"});
    auto info = blockmig_cli({"info", "--output", "json", at("top.qcow2").string()});
    ASSERT_EQ(info.status, 0) << info.out;
    EXPECT_NE(info.out.find(R"("chain":["mid.qcow2","base.qcow2"])"), std::string::npos)
        << info.out;
    EXPECT_NE(info.out.find("extended_l2"), std::string::npos) << info.out;
}

TEST_F(ConvertTest, BlockmigQcow2OptionsOpenInQemu) {
    for (const auto& options :
         std::vector<std::vector<std::string>>{{"-O", "qcow2", "-c"},
                                               {"-O", "qcow2", "-c", "-o", "compression_type=zstd"},
                                               {"-O", "qcow2", "-o", "preallocation=metadata"},
                                               {"-O", "qcow2", "-o", "cluster_size=2M"},
                                               {"-O", "qcow2", "-o", "cluster_size=512"}}) {
        SCOPED_TRACE(options.back());
        convert_and_check(src(), at("out.qcow2"), src(), options);
    }
}

TEST_F(ConvertTest, EveryVmdkSubformatQemuMakesConvertsIdentically) {
    for (const std::string sub : {"monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                                  "twoGbMaxExtentFlat", "streamOptimized"}) {
        SCOPED_TRACE(sub);
        fs::create_directories(at(sub));
        const fs::path vmdk = at(sub) / "disk.vmdk";
        run_ok({"qemu-img", "convert", "-O", "vmdk", "-o", "subformat=" + sub, src().string(),
                vmdk.string()});
        convert_and_check(vmdk, at("out.qcow2"), src(), {"-O", "qcow2"});
        convert_and_check(vmdk, at("out.raw"), src(), {"-O", "raw"});
    }
}

TEST_F(ConvertTest, VmdkTargetsOpenInQemu) {
    convert_and_check(src(), at("out.vmdk"), src(), {"-O", "vmdk"});
    convert_and_check(
        src(), at("out.vmdk"), src(),
        {"-O", "vmdk", "-o", "subformat=monolithicSparse,adapter_type=ide,hwversion=6"});
    auto r = blockmig_cli({"convert", "-O", "vmdk", "-o", "adapter_type=buslogic", src().string(),
                           at("bus.vmdk").string()});
    ASSERT_EQ(r.status, 0) << r.out;
    auto info = blockmig_cli({"info", at("bus.vmdk").string()});
    EXPECT_NE(info.out.find("adapter_type: buslogic"), std::string::npos) << info.out;
    EXPECT_NE(info.out.find("subformat: streamOptimized"), std::string::npos) << info.out;
}

TEST_F(ConvertTest, TruncatedInputsFailAndLeaveNoTarget) {
    run_ok({"qemu-img", "convert", "-O", "qcow2", "-c", src().string(), at("c.qcow2").string()});
    run_ok({"qemu-img", "convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", src().string(),
            at("s.vmdk").string()});
    run_ok({"qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", src().string(),
            at("so.vmdk").string()});
    for (const std::string name : {"c.qcow2", "s.vmdk", "so.vmdk"}) {
        SCOPED_TRACE(name);
        fs::resize_file(at(name), fs::file_size(at(name)) / 2);
        for (const std::string format : {"raw", "qcow2"}) {
            auto r = blockmig_cli(
                {"convert", "-O", format, at(name).string(), at("out." + format).string()});
            EXPECT_EQ(r.status, 1) << r.out;
            EXPECT_NE(r.out.find(name), std::string::npos) << "the error names the file: " << r.out;
            EXPECT_FALSE(fs::exists(at("out." + format))) << "partial target left behind";
        }
    }
}

TEST_F(ConvertTest, ProbeRefusesAMisnamedFileAndRawIsNeverSecondGuessed) {
    fs::copy_file(src(), at("fake.vmdk"));
    auto r = blockmig_cli(
        {"convert", "-O", "qcow2", at("fake.vmdk").string(), at("out.qcow2").string()});
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find("named .vmdk"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(at("out.qcow2")));
    convert_and_check(at("fake.vmdk"), at("out.qcow2"), src(), {"-f", "raw", "-O", "qcow2"});
}

TEST_F(ConvertTest, RefusesAnExistingTargetAndBadOptions) {
    fs::copy_file(src(), at("taken.raw"));
    auto r = blockmig_cli({"convert", "-O", "raw", src().string(), at("taken.raw").string()});
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
    expect_identical(src(), at("taken.raw"));
    EXPECT_EQ(blockmig_cli({"convert", "-O", "qcow2", "-o", "subformat=streamOptimized",
                            src().string(), at("x.qcow2").string()})
                  .status,
              2);
    EXPECT_EQ(blockmig_cli({"convert", "-O", "qcow2", "-o", "nonsense=1", src().string(),
                            at("x.qcow2").string()})
                  .status,
              2);
    EXPECT_EQ(
        blockmig_cli({"convert", "-O", "floppy", src().string(), at("x.qcow2").string()}).status,
        2);
}

TEST_F(ConvertTest, CompareReportsEqualityAndTheFirstDifference) {
    run_ok({"qemu-img", "convert", "-O", "qcow2", "-c", src().string(), at("a.qcow2").string()});
    auto same = blockmig_cli({"compare", src().string(), at("a.qcow2").string()});
    EXPECT_EQ(same.status, 0) << same.out;
    run_ok({"qemu-io", "-c", "write -P 0x5a 12345678 1", at("a.qcow2").string()});
    auto diff =
        blockmig_cli({"compare", "--output", "json", src().string(), at("a.qcow2").string()});
    EXPECT_EQ(diff.status, 1) << diff.out;
    EXPECT_NE(diff.out.find(R"("first_difference":12345678)"), std::string::npos) << diff.out;
    // A larger image whose extra part is zero still compares equal.
    run_ok({"qemu-img", "create", "-f", "qcow2", "-b", "src.raw", "-F", "raw",
            at("big.qcow2").string(), "128M"});
    EXPECT_EQ(blockmig_cli({"compare", src().string(), at("big.qcow2").string()}).status, 0);
}

TEST_F(ConvertTest, InterruptedConversionLeavesNoTarget) {
    // Big enough to still be running when the signal comes (compressed, 2 GiB of data).
    run_ok({"truncate", "-s", "2G", at("big.raw").string()});
    for (int i = 0; i < 16; ++i)
        run_ok({"dd", "if=/usr/bin/qemu-img", "of=" + at("big.raw").string(), "bs=1M",
                "seek=" + std::to_string(i * 128), "count=64", "conv=notrunc", "status=none",
                "iflag=fullblock"});
    const pid_t pid = fork();
    if (pid == 0) {
        execl(BLOCKMIG_BINARY, BLOCKMIG_BINARY, "convert", "-O", "qcow2", "-c",
              at("big.raw").c_str(), at("out.qcow2").c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    // Wait until the target exists (the copy has begun), then interrupt.
    for (int i = 0; i < 3000 && !fs::exists(at("out.qcow2")); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    kill(pid, SIGINT);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1);
    EXPECT_FALSE(fs::exists(at("out.qcow2"))) << "interrupted conversion left its target";
}

TEST(ConvertLab, NfsSourceStraightOntoAnIscsiLun) {
    LAB_REQUIRE();
    NfsServer nfs;
    IscsiTarget target(64ull << 20, 1);
    TempDir local("convert-lab");
    make_source(local / "src.raw");
    run_ok({"qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
            (local / "src.raw").string(), (nfs.export_dir() / "disk.vmdk").string()});
    auto r = blockmig_cli({"convert", "-O", "raw", nfs.url() + "/disk.vmdk", target.lun_url(1)});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("unused LUN"), std::string::npos) << "says what it overwrote: " << r.out;
    expect_identical(local / "src.raw", target.backing_file(1));
    EXPECT_EQ(blockmig_cli({"compare", nfs.url() + "/disk.vmdk", target.lun_url(1)}).status, 0);
    // The LUN now holds data: a second conversion onto it is refused.
    auto again =
        blockmig_cli({"convert", "-O", "raw", nfs.url() + "/disk.vmdk", target.lun_url(1)});
    EXPECT_EQ(again.status, 1) << again.out;
    expect_identical(local / "src.raw", target.backing_file(1));
}

}  // namespace
