// `migrate --tls-dir`: the pre-flight file checks, the schema checks, and
// the QMP arguments built for the credentials objects, the NBD server and
// client and the migration parameters (migrate/tls.hpp).
#include <gtest/gtest.h>

#include <fstream>

#include "jobs_test_util.hpp"
#include "migrate/tls.hpp"
#include "mirror/target.hpp"

using namespace blockmig;
using jobs_test::json;
namespace fs = std::filesystem;

namespace {

class TlsDir : public ::testing::Test {
  protected:
    void SetUp() override {
        fs::create_directories(dir);
        for (const char* f : {"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem",
                              "client-key.pem"})
            std::ofstream(dir / f) << "-----BEGIN-----\n";
    }
    void TearDown() override { fs::remove_all(dir); }

    std::string refusal(bool source_here, bool destination_here) {
        auto r = migrate::check_tls_dir(dir, source_here, destination_here);
        return r ? "" : r.error().message;
    }

    fs::path dir = jobs_test::temp_dir("tls");
};

// A schema in QEMU 7.2's shape with what TLS needs on both sides.
json tls_schema(bool with_nbd_tls) {
    json schema = json::parse(R"([
      {"name": "object-add", "meta-type": "command", "arg-type": "1", "ret-type": "0"},
      {"name": "1", "meta-type": "object", "tag": "qom-type",
       "members": [{"name": "qom-type", "type": "2"}, {"name": "id", "type": "str"}],
       "variants": []},
      {"name": "2", "meta-type": "enum", "values": ["secret", "tls-creds-x509"]},
      {"name": "migrate-set-parameters", "meta-type": "command", "arg-type": "3", "ret-type": "0"},
      {"name": "3", "meta-type": "object", "members": [
          {"name": "tls-creds", "type": "str", "default": null},
          {"name": "tls-hostname", "type": "str", "default": null}]},
      {"name": "nbd-server-start", "meta-type": "command", "arg-type": "4", "ret-type": "0"},
      {"name": "4", "meta-type": "object", "members": [{"name": "addr", "type": "str"}]},
      {"name": "blockdev-add", "meta-type": "command", "arg-type": "5", "ret-type": "0"},
      {"name": "5", "meta-type": "object", "members": [{"name": "driver", "type": "str"}]}
    ])");
    if (with_nbd_tls) {
        schema[6]["members"].push_back({{"name", "tls-creds"}, {"type", "str"}});
        schema[8]["members"].push_back({{"name", "tls-creds"}, {"type", "str"}});
    }
    return schema;
}

}  // namespace

TEST_F(TlsDir, AcceptsTheFilesOfTheSidesOnThisHost) {
    EXPECT_EQ(refusal(true, true), "");
    EXPECT_EQ(refusal(false, false), "");
}

TEST_F(TlsDir, NamesTheMissingFileAndWhatTheOtherSideReads) {
    fs::remove(dir / "client-key.pem");
    const auto why = refusal(true, false);
    EXPECT_NE(why.find("client-key.pem: No such file or directory"), std::string::npos) << why;
    EXPECT_NE(why.find("the source QEMU reads ca-cert.pem, client-cert.pem and client-key.pem"),
              std::string::npos)
        << why;
    EXPECT_NE(why.find("the destination QEMU reads ca-cert.pem, server-cert.pem and "
                       "server-key.pem from the same path on its host"),
              std::string::npos)
        << why;
    // The destination's files are all there: only a local source is refused.
    EXPECT_EQ(refusal(false, true), "");
}

TEST_F(TlsDir, ChecksTheDestinationsFilesWhenItsQemuIsHere) {
    fs::remove(dir / "server-cert.pem");
    fs::create_directory(dir / "server-cert.pem");
    EXPECT_NE(refusal(false, true).find("server-cert.pem: not a regular file"), std::string::npos);
    EXPECT_EQ(refusal(true, false), "");
}

TEST_F(TlsDir, RefusesARelativePath) {
    auto r = migrate::check_tls_dir("pki/qemu", false, false);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(r.error().message.find("absolute path"), std::string::npos);
}

TEST(MigrateTls, OnlyUnixSocketsAreOnThisHost) {
    EXPECT_TRUE(migrate::is_local_qmp("/run/vm.qmp"));
    EXPECT_FALSE(migrate::is_local_qmp("ssh://root@hostb/run/vm.qmp"));
    EXPECT_FALSE(migrate::is_local_qmp("tcp:10.0.0.2:4444"));
}

TEST(MigrateTls, ObjectsVerifyThePeerOnBothEnds) {
    EXPECT_EQ(migrate::tls_object_id("0123abcd"), "bm0123abcd-tls");
    EXPECT_EQ(migrate::tls_object("bm1-tls", "/etc/pki/qemu", true),
              json({{"qom-type", "tls-creds-x509"},
                    {"id", "bm1-tls"},
                    {"dir", "/etc/pki/qemu"},
                    {"endpoint", "server"},
                    {"verify-peer", true}}));
    EXPECT_EQ(migrate::tls_object("bm1-tls", "/etc/pki/qemu", false)["endpoint"], "client");
    // Only paths: no key material ever goes over QMP or into the journal.
    EXPECT_EQ(migrate::tls_object("bm1-tls", "/d", false).dump().find("BEGIN"), std::string::npos);
}

TEST(MigrateTls, ParametersNameTheObjectOnBothSidesAndTheHostOnTheSource) {
    migrate::TuningPlan plan;
    plan.source.parameters = {{"max-bandwidth", 1}};
    migrate::add_tls_parameters(plan, "bm1-tls", "10.0.0.2");
    EXPECT_EQ(plan.source.parameters,
              json({{"max-bandwidth", 1}, {"tls-creds", "bm1-tls"}, {"tls-hostname", "10.0.0.2"}}));
    EXPECT_EQ(plan.destination.parameters, json({{"tls-creds", "bm1-tls"}}));
}

TEST(MigrateTls, NbdClientNodeCarriesTheCredentialsOnlyWhenAsked) {
    const auto server = qmp::SocketAddress::inet("10.0.0.2", 10809);
    auto plain = mirror::nbd_client_node("n", server, "e");
    EXPECT_FALSE(plain.contains("tls-creds"));
    auto tls = mirror::nbd_client_node("n", server, "e", "bm1-tls");
    EXPECT_EQ(tls["tls-creds"], "bm1-tls");
    EXPECT_EQ(tls["server"], json({{"type", "inet"}, {"host", "10.0.0.2"}, {"port", "10809"}}));
}

TEST(MigrateTls, SchemaChecksNameWhatIsMissing) {
    auto full = qmp::Features::from_schema(tls_schema(true));
    ASSERT_TRUE(full);
    for (bool server : {false, true})
        for (bool nbd : {false, true})
            EXPECT_EQ(migrate::tls_missing(*full, server, nbd), std::nullopt);
    auto no_nbd = qmp::Features::from_schema(tls_schema(false));
    ASSERT_TRUE(no_nbd);
    EXPECT_EQ(migrate::tls_missing(*no_nbd, true, false), std::nullopt) << "RAM only needs less";
    EXPECT_EQ(migrate::tls_missing(*no_nbd, true, true), "nbd-server-start's tls-creds");
    EXPECT_EQ(migrate::tls_missing(*no_nbd, false, true),
              "the NBD client's tls-creds (blockdev-add)");
    json no_x509 = tls_schema(true);
    no_x509[2]["values"] = {"secret"};
    auto f = qmp::Features::from_schema(no_x509);
    ASSERT_TRUE(f);
    EXPECT_EQ(migrate::tls_missing(*f, false, false),
              "the object type tls-creds-x509 (object-add)");
}
