// Every QMP address form, and the bad ones each refused with one clear line.
#include "qmp/address.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace blockmig;
using namespace blockmig::qmp;

namespace {

Address parse_ok(std::string_view text) {
    auto a = parse_address(text);
    EXPECT_TRUE(a) << text << ": " << (a ? "" : a.error().message);
    return a ? *a : Address{};
}

std::string parse_error(std::string_view text) {
    auto a = parse_address(text);
    EXPECT_FALSE(a) << text << " should be refused";
    if (a) return {};
    EXPECT_EQ(a.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(a.error().message.find(std::string(text)), std::string::npos)
        << "the error names the address: " << a.error().message;
    EXPECT_EQ(a.error().message.find('\n'), std::string::npos) << "one line";
    return a.error().message;
}

TEST(QmpAddress, PathIsALocalUnixSocket) {
    for (const char* p : {"/run/vm.qmp", "vm.qmp", "./dir/q.sock", "/a:b/q"}) {
        Address a = parse_ok(p);
        EXPECT_EQ(a.kind, Address::Kind::unix_socket);
        EXPECT_EQ(a.path, p);
        EXPECT_TRUE(a.can_pass_fds());
        EXPECT_FALSE(a.unauthenticated());
        EXPECT_EQ(to_string(a), p);
    }
}

TEST(QmpAddress, TcpHostAndPort) {
    Address a = parse_ok("tcp:10.0.0.2:4444");
    EXPECT_EQ(a.kind, Address::Kind::tcp);
    EXPECT_EQ(a.host, "10.0.0.2");
    EXPECT_EQ(a.port, 4444);
    EXPECT_TRUE(a.unauthenticated());
    EXPECT_FALSE(a.can_pass_fds());
    EXPECT_EQ(to_string(a), "tcp:10.0.0.2:4444");
    Address v6 = parse_ok("tcp:[::1]:4444");
    EXPECT_EQ(v6.host, "::1");
    EXPECT_EQ(to_string(v6), "tcp:[::1]:4444");
    EXPECT_EQ(parse_ok("tcp:kvm-2.example.org:1").host, "kvm-2.example.org");
}

TEST(QmpAddress, SshWithUserAndPort) {
    Address a = parse_ok("ssh://root@kvm2:2222/run/qemu/vm1.qmp");
    EXPECT_EQ(a.kind, Address::Kind::ssh);
    EXPECT_EQ(a.user, "root");
    EXPECT_EQ(a.host, "kvm2");
    EXPECT_EQ(a.port, 2222);
    EXPECT_EQ(a.path, "/run/qemu/vm1.qmp");
    EXPECT_FALSE(a.unauthenticated()) << "ssh authenticates and encrypts";
    EXPECT_FALSE(a.can_pass_fds()) << "SCM_RIGHTS cannot cross ssh";
    EXPECT_EQ(to_string(a), "ssh://root@kvm2:2222/run/qemu/vm1.qmp");
}

TEST(QmpAddress, SshUserAndPortAreOptional) {
    Address a = parse_ok("ssh://kvm2.example.org/var/lib/vm.sock");
    EXPECT_EQ(a.user, "");
    EXPECT_EQ(a.port, 0) << "0: ssh's own default (22 or ssh_config)";
    EXPECT_EQ(a.host, "kvm2.example.org");
    EXPECT_EQ(to_string(a), "ssh://kvm2.example.org/var/lib/vm.sock");
    Address v6 = parse_ok("ssh://admin@[fd00::2]:22/q.sock");
    EXPECT_EQ(v6.host, "fd00::2");
    EXPECT_EQ(v6.port, 22);
    EXPECT_EQ(v6.path, "/q.sock");
    EXPECT_EQ(parse_ok("ssh://[fd00::2]/q.sock").host, "fd00::2");
    EXPECT_EQ(to_string(v6), "ssh://admin@[fd00::2]:22/q.sock");
}

TEST(QmpAddress, CanonicalTextParsesBackToTheSameAddress) {
    for (const char* text : {"ssh://u@h:1/p/q", "ssh://h/p", "tcp:[::1]:5", "/x/y"}) {
        Address a = parse_ok(text);
        Address b = parse_ok(to_string(a));
        EXPECT_EQ(to_string(b), text);
    }
}

TEST(QmpAddress, BadTcpAddressesAreRefused) {
    EXPECT_NE(parse_error("tcp:").find("HOST:PORT"), std::string::npos);
    EXPECT_NE(parse_error("tcp:host").find("HOST:PORT"), std::string::npos);
    EXPECT_NE(parse_error("tcp::44").find("HOST:PORT"), std::string::npos);
    EXPECT_NE(parse_error("tcp:h:0").find("1-65535"), std::string::npos);
    EXPECT_NE(parse_error("tcp:h:65536").find("1-65535"), std::string::npos);
    EXPECT_NE(parse_error("tcp:h:x1").find("1-65535"), std::string::npos);
    parse_error("tcp:-oProxyCommand=x:22");
}

TEST(QmpAddress, BadSshAddressesAreRefused) {
    EXPECT_NE(parse_error("ssh://host").find("absolute path"), std::string::npos);
    EXPECT_NE(parse_error("ssh://host/").find("absolute path"), std::string::npos);
    EXPECT_NE(parse_error("ssh:///run/q.sock").find("needs a host"), std::string::npos);
    EXPECT_NE(parse_error("ssh://u@/run/q.sock").find("needs a host"), std::string::npos);
    EXPECT_NE(parse_error("ssh://host:0/q").find("1-65535"), std::string::npos);
    EXPECT_NE(parse_error("ssh://host:/q").find("1-65535"), std::string::npos);
    EXPECT_NE(parse_error("ssh://host:99999/q").find("1-65535"), std::string::npos);
    EXPECT_NE(parse_error("ssh:host/q").find("ssh://"), std::string::npos);
    EXPECT_NE(parse_error("ssh:/q").find("ssh://"), std::string::npos);
}

TEST(QmpAddress, SshHostOrUserThatWouldBeAnOptionIsRefused) {
    EXPECT_NE(parse_error("ssh://-oProxyCommand=touch/q").find("not starting with '-'"),
              std::string::npos);
    EXPECT_NE(parse_error("ssh://-oProxyCommand=x@host/q").find("not starting with '-'"),
              std::string::npos);
    parse_error("ssh://@host/q");
    parse_error("ssh://a b@host/q");
    parse_error("ssh://ho$t/q");
    parse_error("ssh://host;rm/q");
    parse_error("ssh://[not-v6]/q");
}

TEST(QmpAddress, SshPathThatSshCannotForwardIsRefused) {
    EXPECT_NE(parse_error("ssh://h/run/a:b.sock").find("':'"), std::string::npos);
    EXPECT_NE(parse_error("ssh://h/run/q.sock?x=1").find("'?'"), std::string::npos);
    EXPECT_NE(parse_error("ssh://h/run/q#f").find("'#'"), std::string::npos);
    EXPECT_NE(parse_error("ssh://h/run/a b").find("whitespace"), std::string::npos);
    EXPECT_NE(parse_error("ssh://h/run/a\tb").find("whitespace"), std::string::npos);
    EXPECT_NE(parse_error("ssh://h/" + std::string(120, 'x')).find("longer than"),
              std::string::npos);
    parse_ok("ssh://h/" + std::string(106, 'x'));
}

TEST(QmpAddress, OtherSchemesAreRefusedNotTakenForPaths) {
    EXPECT_NE(parse_error("qemu+ssh://h/q").find("unsupported scheme 'qemu+ssh'"),
              std::string::npos);
    EXPECT_NE(parse_error("unix:///run/q").find("unsupported scheme 'unix'"), std::string::npos);
    EXPECT_NE(parse_error("").find("empty"), std::string::npos);
}

}  // namespace
