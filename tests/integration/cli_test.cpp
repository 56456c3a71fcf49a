// The blockmig binary's contract with shells and scripts (blockmig/cli.hpp):
// exit 0 on success, 1 when the command failed, 2 on a usage error, each
// failure as one "blockmig: error:" line; global options (--pools, --output)
// before or after the subcommand.
#include <gtest/gtest.h>

#include <fstream>

#include "lab.hpp"

using blockmig::lab::CommandResult;
using blockmig::lab::TempDir;

namespace {

CommandResult blockmig_cli(std::vector<std::string> args) {
    args.insert(args.begin(), BLOCKMIG_BINARY);
    return blockmig::lab::run(args);
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(line);
    return out;
}

// A usage error: exit 2 and one `blockmig: error:` line, returned ("" if not).
std::string usage_error_line(const std::vector<std::string>& args) {
    CommandResult r = blockmig_cli(args);
    std::string shown;
    for (const auto& a : args) shown += a + " ";
    EXPECT_EQ(r.status, 2) << shown << "\n" << r.out;
    auto lines = lines_of(r.out);
    EXPECT_EQ(lines.size(), 1u) << shown << "\n" << r.out;
    if (lines.size() != 1) return "";
    EXPECT_EQ(lines[0].rfind("blockmig: error: ", 0), 0u) << shown << "\n" << r.out;
    return lines[0];
}

// A pools file naming `dir` as pool "nas".
std::string pools_file(const TempDir& tmp) {
    std::filesystem::create_directories(tmp / "pool");
    const std::string file = (tmp / "pools.toml").string();
    std::ofstream(file) << "[pool.nas]\ntype = \"dir\"\npath = \"" << (tmp / "pool").string()
                        << "\"\n";
    return file;
}

}  // namespace

TEST(Cli, UsageErrorsExitTwoWithOneLine) {
    const std::vector<std::vector<std::string>> cases{
        {},                                                                 // no subcommand
        {"--no-such-option", "vol", "list", "/tmp"},                        // unknown option
        {"move", "--to", "/tmp"},                                           // --qmp missing
        {"move", "--qmp", "x", "--to", "/tmp", "--copy-mode", "sideways"},  // bad choice
        {"--output", "yaml", "vol", "list", "/tmp"},                        // bad global value
        {"vol", "list", "/tmp", "extra"},                                   // stray argument
        {"move", "--qmp", "x", "--to", "/tmp", "--bandwidth", "-5"},
    };
    for (const auto& args : cases) usage_error_line(args);
}

TEST(Cli, HelpAndVersionExitZero) {
    CommandResult help = blockmig_cli({"--help"});
    EXPECT_EQ(help.status, 0) << help.out;
    EXPECT_NE(help.out.find("--qemu-dir"), std::string::npos) << help.out;
    CommandResult version = blockmig_cli({"--version"});
    EXPECT_EQ(version.status, 0) << version.out;
    EXPECT_EQ(version.out.rfind("blockmig ", 0), 0u) << version.out;
}

TEST(Cli, RuntimeErrorsExitOneWithOneLine) {
    TempDir tmp("cli");
    const std::vector<std::vector<std::string>> cases{
        {"vol", "info", (tmp / "absent.qcow2").string()},
        {"--pools", (tmp / "absent.toml").string(), "vol", "list", "nas"},
        {"move", "--qmp", (tmp / "absent.sock").string(), "--disk", "disk0", "--to",
         tmp.path().string()},
    };
    for (const auto& args : cases) {
        CommandResult r = blockmig_cli(args);
        EXPECT_EQ(r.status, 1) << args[0] << " " << args[1] << "\n" << r.out;
        auto lines = lines_of(r.out);
        ASSERT_EQ(lines.size(), 1u) << r.out;
        EXPECT_EQ(lines[0].rfind("blockmig: error: ", 0), 0u) << r.out;
    }
}

TEST(Cli, PoolsFileWorksBeforeAndAfterTheSubcommand) {
    TempDir tmp("cli-pools");
    const std::string pools = pools_file(tmp);
    CommandResult created =
        blockmig_cli({"--pools", pools, "vol", "create", "nas", "vm1.qcow2", "16M"});
    ASSERT_EQ(created.status, 0) << created.out;
    EXPECT_TRUE(std::filesystem::exists(tmp / "pool" / "vm1.qcow2"));
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"--pools", pools, "vol", "list", "nas"},
             {"vol", "list", "nas", "--pools", pools},
             {"--pools", pools, "--output", "json", "vol", "list", "nas"}}) {
        CommandResult r = blockmig_cli(args);
        EXPECT_EQ(r.status, 0) << r.out;
        EXPECT_NE(r.out.find("vm1.qcow2"), std::string::npos) << r.out;
    }
    // Without the pools file, "nas" means nothing.
    CommandResult unnamed = blockmig_cli({"vol", "list", "nas"});
    EXPECT_EQ(unnamed.status, 1) << unnamed.out;
}

// --postcopy-after only means something to --policy postcopy: anything else
// is one usage line naming it (exit 2); with postcopy it parses, and the run
// then fails on the absent monitors (exit 1), not on the flag.
TEST(Cli, PostcopyAfterIsOnlyForThePostcopyPolicy) {
    TempDir tmp("cli-postcopy-after");
    const std::string src = (tmp / "src.qmp").string(), dst = (tmp / "dst.qmp").string();
    const std::vector<std::string> base{"migrate",   "--src-qmp",   src,
                                        "--dst-qmp", dst,           "--copy-storage",
                                        "none",      "--state-dir", (tmp / "jobs").string()};
    auto args_with = [&](std::vector<std::string> extra) {
        auto args = base;
        args.insert(args.end(), extra.begin(), extra.end());
        return args;
    };
    auto with = [&](std::vector<std::string> extra) { return blockmig_cli(args_with(extra)); };
    for (const auto& extra : std::vector<std::vector<std::string>>{
             {"--postcopy-after", "5"},
             {"--policy", "minimal-downtime", "--postcopy-after", "5"},
             {"--policy", "suspend", "--postcopy-after", "0"},
             {"--policy", "postcopy", "--postcopy-after", "-1"},
             {"--policy", "postcopy", "--postcopy-after", "soon"}})
        EXPECT_NE(usage_error_line(args_with(extra)).find("--postcopy-after"), std::string::npos);
    EXPECT_NE(usage_error_line(args_with({"--postcopy-after", "5"}))
                  .find("only with --policy postcopy"),
              std::string::npos);
    // --copy-mode is about the disk mirrors: refused without a disk copy.
    EXPECT_NE(usage_error_line(args_with({"--copy-mode", "background"}))
                  .find("--copy-mode: only with --copy-storage all or inc"),
              std::string::npos);
    for (const char* sec : {"0", "30"}) {
        CommandResult r = with({"--policy", "postcopy", "--postcopy-after", sec, "--no-guardian"});
        EXPECT_EQ(r.status, 1) << sec << "\n" << r.out;
        EXPECT_EQ(r.out.find("--postcopy-after"), std::string::npos) << r.out;
    }
}
