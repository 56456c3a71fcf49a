// blockmig migrate --tls-dir between two lab hosts (network namespaces), a
// writing guest on A, throw-away credentials from tests/lab/tls.sh (a fresh
// CA, a server certificate naming B's address, a client certificate):
// - --copy-storage all: while the disks copy, B's NBD server refuses a
//   plain NBD client (it requires TLS) and lists blockmig's export to a
//   client holding a certificate of the same CA; the guest then runs on B
//   and every block verifies on B's own disk file; no credentials object
//   is left on B;
// - B's certificate names another host: the source's NBD client refuses
//   it, the migration fails in the copy phase with one line, the guest
//   keeps running on A, and neither side keeps an export, NBD server, NBD
//   node or credentials object;
// - shared storage (RAM only), B's certificate naming another host: the
//   migration stream itself is refused (TLS is in use there too).
#include <gtest/gtest.h>

#include "migrate_test_util.hpp"

using namespace migrate_test;

namespace {

// The tls-creds-x509 objects a QEMU holds (qom-list /objects).
std::vector<std::string> tls_objects(Guest& guest) {
    std::vector<std::string> out;
    for (const auto& o :
         qmp_return(guest, R"({"execute":"qom-list","arguments":{"path":"/objects"}})"))
        if (o.value("type", "") == "child<tls-creds-x509>") out.push_back(o.value("name", ""));
    return out;
}

fs::path make_credentials(const fs::path& dir, const std::string& server_name) {
    blockmig::lab::run_ok(
        {(blockmig::lab::script_dir() / "tls.sh").string(), "make", dir.string(), server_name});
    return dir;
}

// The copy rig (migrate_test_util.hpp) with --tls-dir.
class MigrateTls : public CopyRig {
  protected:
    std::vector<std::string> tls_args(const fs::path& pki, std::vector<std::string> extra) {
        extra.insert(extra.begin(), {"--tls-dir", pki.string()});
        return migrate_args(std::move(extra));
    }

    // What the journal says exists once the export is there (blockmig holds
    // both monitors): "NBD server on the destination at HOST:PORT" and
    // "NBD export NAME on the destination".
    std::pair<std::string, std::string> wait_for_export(std::chrono::milliseconds timeout) {
        const auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            std::string port, name;
            json l = jobs_listing();
            if (!l["jobs"].empty() && l["jobs"][0].contains("migration"))
                for (const auto& e : l["jobs"][0]["migration"]["exists"]) {
                    const auto s = e.get<std::string>();
                    if (s.starts_with("NBD server on the destination at ") &&
                        !s.ends_with("(maybe)"))
                        port = s.substr(s.rfind(':') + 1);
                    if (s.starts_with("NBD export ") && !s.ends_with("(maybe)"))
                        name = s.substr(11, s.find(' ', 11) - 11);
                }
            if (!port.empty() && !name.empty()) return {port, name};
            std::this_thread::sleep_for(100ms);
        }
        return {};
    }

    // `qemu-nbd --list` from host A against B's server, with or without credentials.
    CommandResult list_exports(const std::string& port, const fs::path& pki = {}) {
        std::vector<std::string> argv{"ip",       "netns",  "exec", hosts->ns_a(),
                                      "qemu-nbd", "--list", "-b",   HostPair::k_addr_b,
                                      "-p",       port};
        if (!pki.empty()) {
            argv.push_back("--object");
            argv.push_back("tls-creds-x509,id=probe,endpoint=client,dir=" + pki.string());
            argv.push_back("--tls-creds=probe");
        }
        return blockmig::lab::run(argv);
    }
};

TEST_F(MigrateTls, CopiesOverTlsAndTheGuestRunsOnTheDestination) {
    // Known QEMU defect, not blockmig's (docs/known-issues.md): under TCG,
    // QEMU 7.2 handed the destination a guest whose kernel panicked after
    // this slow (4 MiB/s, many-pass) pre-copy, with or without TLS, 3 of 3
    // runs; QEMU 10.0 passes. The refusal tests below still run on 7.2.
    SKIP_ON_QEMU7_TCG(*src, "slow pre-copy");
    const auto pki = make_credentials(dir / "pki", HostPair::k_addr_b);
    // 4 MiB/s: the copy lasts long enough to probe B's NBD server.
    BackgroundCli cli(tls_args(pki, {"--bandwidth", "4"}), src->qmp_socket().string());
    const auto [port, export_name] = wait_for_export(60s);
    ASSERT_FALSE(port.empty()) << "the journal names B's NBD server and export";
    const auto plain = list_exports(port);
    EXPECT_NE(plain.status, 0) << "a plain NBD client is refused: " << plain.out;
    EXPECT_NE(plain.out.find("TLS"), std::string::npos) << plain.out;
    EXPECT_EQ(plain.out.find(export_name), std::string::npos) << plain.out;
    const auto with_tls = list_exports(port, pki);
    EXPECT_EQ(with_tls.status, 0) << with_tls.out;
    EXPECT_NE(with_tls.out.find(export_name), std::string::npos) << with_tls.out;

    ASSERT_TRUE(cli.wait(300s)) << "blockmig ends";
    const auto& r = cli.result();
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(r.out.find("BEGIN PRIVATE KEY"), std::string::npos);
    EXPECT_TRUE(src->wait_exit(15s)) << "the source QEMU quits";
    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-status"})")["status"], "running");
    ASSERT_TRUE(dst->wait_for_ack("vda", 1, 60s)) << dst->console();
    ASSERT_TRUE(guest_keeps_writing(*dst)) << "the guest keeps writing on the destination";
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    EXPECT_TRUE(tls_objects(*dst).empty()) << "the credentials object is removed";
    // Its next migration (outgoing) starts without a parameter naming it.
    EXPECT_EQ(qmp_return(*dst, R"({"execute":"query-migrate-parameters"})")["tls-creds"], "");
    auto v = pause_and_verify(*dst, dst_disk.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

TEST_F(MigrateTls, ACertificateForAnotherHostFailsTheCopyAndLeavesNothing) {
    const auto pki = make_credentials(dir / "pki", "10.77.0.99");
    auto r = blockmig_cli(tls_args(pki, {}));
    EXPECT_EQ(r.status, 1) << r.out;
    expect_one_error_line(r.out, {"phase mirror", "keeps running on the source"});
    std::cerr << r.out;
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-status"})")["status"], "running");
    EXPECT_TRUE(qmp_return(*src, R"({"execute":"query-block-jobs"})").empty());
    for (const auto& n : qmp_return(*src, R"({"execute":"query-named-block-nodes"})"))
        EXPECT_NE(n.value("drv", ""), "nbd") << "an NBD client node is left: " << n.dump();
    EXPECT_TRUE(tls_objects(*src).empty());
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-migrate-parameters"})")["tls-creds"], "");
    if (dst->qmp_socket().string().size() && fs::exists(dst->qmp_socket())) {
        EXPECT_TRUE(qmp_return(*dst, R"({"execute":"query-block-exports"})").empty());
        const std::string stop = dst->qmp(R"({"execute":"nbd-server-stop"})");
        EXPECT_NE(stop.find("NBD server not running"), std::string::npos) << stop;
        EXPECT_TRUE(tls_objects(*dst).empty());
    }
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    ASSERT_TRUE(guest_keeps_writing(*src));
    auto v = pause_and_verify(*src, disk.string(), "raw", k_blocks);
    EXPECT_TRUE(v.intact()) << v.output;
}

class MigrateTlsShared : public SharedRig {};

TEST_F(MigrateTlsShared, TheMigrationStreamChecksTheDestinationsCertificate) {
    const auto pki = make_credentials(dir / "pki", "10.77.0.99");
    auto r = blockmig_cli(migrate_args({"--tls-dir", pki.string()}));
    EXPECT_EQ(r.status, 1) << r.out;
    expect_one_error_line(r.out, {"phase ram", "keeps running on the source"});
    std::cerr << r.out;
    EXPECT_EQ(qmp_return(*src, R"({"execute":"query-status"})")["status"], "running");
    EXPECT_TRUE(tls_objects(*src).empty());
    EXPECT_EQ(jobs_listing()["jobs"].size(), 0u);
    ASSERT_TRUE(guest_keeps_writing(*src));
}

}  // namespace
