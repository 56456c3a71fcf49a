// blockmig convert / compare / info against qemu-img as the oracle (never
// used by the product): every qcow2 flavour and VMDK subformat qemu-img can
// make converts to content `qemu-img compare` calls identical, blockmig's
// own qcow2 and VMDK output passes `qemu-img check`, bad input leaves no
// target behind, and a conversion runs from NFS straight onto an iSCSI LUN.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
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

// Files a conversion left in `dir` under a partial name.
std::vector<std::string> partial_files(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) {
        const std::string name = entry.path().filename().string();
        if (name.find(".blockmig-partial-") != std::string::npos) names.push_back(name);
    }
    return names;
}

// A 2 GiB raw image with 1 GiB of real file content, slow enough to
// compress that a conversion of it is still running when a signal comes.
void make_big_source(const fs::path& raw) {
    run_ok({"truncate", "-s", "2G", raw.string()});
    for (int i = 0; i < 16; ++i)
        run_ok({"dd", "if=/usr/bin/qemu-img", "of=" + raw.string(), "bs=1M",
                "seek=" + std::to_string(i * 128), "count=64", "conv=notrunc", "status=none",
                "iflag=fullblock"});
}

// Starts `blockmig convert -O qcow2 -c SRC DST`, waits until its partial
// target appears in DST's directory (the copy has begun), then sends `sig`.
int convert_and_signal(const fs::path& src, const fs::path& dst, int sig) {
    const pid_t pid = fork();
    if (pid == 0) {
        execl(BLOCKMIG_BINARY, BLOCKMIG_BINARY, "convert", "-O", "qcow2", "-c", src.c_str(),
              dst.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    for (int i = 0; i < 3000 && partial_files(dst.parent_path()).empty(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_FALSE(partial_files(dst.parent_path()).empty()) << "no partial target ever appeared";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

class ConvertTest : public ::testing::Test {
  protected:
    void SetUp() override {
        LAB_REQUIRE();  // qemu-img is the oracle: skip outside CI, fail under CI=true
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
    make_big_source(at("big.raw"));
    const int status = convert_and_signal(at("big.raw"), at("out.qcow2"), SIGINT);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1);
    EXPECT_FALSE(fs::exists(at("out.qcow2"))) << "interrupted conversion left its target";
    EXPECT_TRUE(partial_files(m_dir.path()).empty()) << "interrupted conversion left its partial";
}

TEST_F(ConvertTest, KilledConversionLeavesNothingUnderTheFinalName) {
    make_big_source(at("big.raw"));
    const int status = convert_and_signal(at("big.raw"), at("out.qcow2"), SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(status));
    EXPECT_FALSE(fs::exists(at("out.qcow2"))) << "a killed conversion left a half-written target";
    // What a kill -9 cannot clean up is at least hidden and named as partial.
    auto left = partial_files(m_dir.path());
    ASSERT_EQ(left.size(), 1u);
    EXPECT_TRUE(left[0].starts_with(".out.qcow2.blockmig-partial-")) << left[0];
    // A completed conversion renames its partial away.
    auto r = blockmig_cli({"convert", "-O", "raw", src().string(), at("done.raw").string()});
    ASSERT_EQ(r.status, 0) << r.out;
    expect_identical(src(), at("done.raw"));
    EXPECT_EQ(partial_files(m_dir.path()), left);
}

// Peak RSS of one `blockmig convert` run in a child process (KiB).
long convert_peak_rss_kib(std::vector<std::string> args) {
    const pid_t pid = fork();
    if (pid == 0) {
        std::vector<char*> argv = {const_cast<char*>(BLOCKMIG_BINARY),
                                   const_cast<char*>("convert")};
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(BLOCKMIG_BINARY, argv.data());
        _exit(127);
    }
    int status = 0;
    rusage usage{};
    wait4(pid, &status, 0, &usage);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "convert failed: " << status;
    return usage.ru_maxrss;
}

// The engine's memory is bounded by its requests in flight, not by the image:
// a 1 GiB disk with ~400 MiB of data converts within 64 MiB of peak RSS.
TEST_F(ConvertTest, PeakMemoryStaysUnder64MiB) {
    // 16 MiB of real binaries, written in 25 runs across a 1 GiB disk.
    run_ok({"sh", "-c", "cat /usr/bin/* 2>/dev/null | head -c 16M > " + at("content").string()});
    ASSERT_EQ(fs::file_size(at("content")), 16u << 20);
    run_ok({"truncate", "-s", "1G", at("mem.raw").string()});
    for (int i = 0; i < 25; ++i)
        run_ok({"dd", "if=" + at("content").string(), "of=" + at("mem.raw").string(), "bs=1M",
                "seek=" + std::to_string(i * 40 + 3), "count=16", "conv=notrunc", "status=none"});
    run_ok(
        {"qemu-img", "convert", "-O", "qcow2", at("mem.raw").string(), at("mem.qcow2").string()});
    constexpr long k_limit_kib = 64 * 1024;

    const long to_raw =
        convert_peak_rss_kib({"-O", "raw", at("mem.qcow2").string(), at("out.raw").string()});
    EXPECT_LE(to_raw, k_limit_kib) << "qcow2 -> raw peak RSS " << to_raw << " KiB";
    expect_identical(at("mem.raw"), at("out.raw"));

    const long to_vmdk = convert_peak_rss_kib({"-O", "vmdk", "-o", "subformat=streamOptimized",
                                               at("mem.raw").string(), at("out.vmdk").string()});
    EXPECT_LE(to_vmdk, k_limit_kib) << "raw -> streamOptimized peak RSS " << to_vmdk << " KiB";
    expect_identical(at("mem.raw"), at("out.vmdk"));
    RecordProperty("peak_rss_kib_qcow2_to_raw", std::to_string(to_raw));
    RecordProperty("peak_rss_kib_raw_to_vmdk", std::to_string(to_vmdk));
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
