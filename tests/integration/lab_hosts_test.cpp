// The lab's two "hosts": namespaces that reach each other over veth, with a
// tbf rate limit that holds within ±20 % on a short transfer.
#include <gtest/gtest.h>

#include "lab.hpp"

using namespace blockmig::lab;

namespace {

TEST(LabHosts, NamespacesReachEachOther) {
    LAB_REQUIRE();
    HostPair hosts;
    run_ok({"ip", "netns", "exec", hosts.ns_a(), "ping", "-c", "1", "-W", "2", HostPair::k_addr_b});
    run_ok({"ip", "netns", "exec", hosts.ns_b(), "ping", "-c", "1", "-W", "2", HostPair::k_addr_a});
    // The addresses exist only inside the namespaces, never on the machine itself.
    EXPECT_EQ(run({"sh", "-c", "ip -o addr | grep -q '10.77.0.1/'"}).status, 1);
}

TEST(LabHosts, RateLimitHoldsWithinTwentyPercent) {
    LAB_REQUIRE();
    const double mbit = 80;
    HostPair hosts(std::to_string(static_cast<int>(mbit)) + "mbit");
    const std::uint64_t bytes = 8ull << 20;  // 8 MiB ≈ 0.84 s at 80 Mbit/s
    // socat listens on b and discards; a sends from /dev/zero and we time it.
    std::string script = "ip netns exec " + hosts.ns_b() +
                         " socat -u TCP-LISTEN:5001,reuseaddr OPEN:/dev/null & l=$!; "
                         "for i in $(seq 50); do ip netns exec " +
                         hosts.ns_b() +
                         " ss -ltn | grep -q :5001 && break; sleep 0.02; done; "
                         "s=$(date +%s%N); head -c " +
                         std::to_string(bytes) + " /dev/zero | ip netns exec " + hosts.ns_a() +
                         " socat -u STDIN TCP:" + HostPair::k_addr_b +
                         ":5001; wait $l; e=$(date +%s%N); echo $((e - s))";
    CommandResult r = run({"bash", "-c", script});
    ASSERT_EQ(r.status, 0) << r.out;
    double seconds = std::stod(r.out.substr(r.out.find_last_of('\n', r.out.size() - 2) + 1)) / 1e9;
    double measured_mbit = bytes * 8 / seconds / 1e6;
    EXPECT_GT(measured_mbit, mbit * 0.8) << seconds << " s";
    EXPECT_LT(measured_mbit, mbit * 1.2) << seconds << " s";
}

}  // namespace
