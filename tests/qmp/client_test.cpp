// The QMP client against a scripted server: protocol order, id matching,
// events, partial and giant reads, broken peers, timeouts, concurrency.
#include "qmp/client.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "qmp/testing/scripted_transport.hpp"

using namespace blockmig;
using namespace blockmig::qmp;
using namespace blockmig::qmp::testing;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

class QmpClient : public ::testing::Test {
  protected:
    // Greeting + plain negotiation, then a connected client.
    std::unique_ptr<Client> connect(ConnectOptions options = {}) {
        script->push_greeting();
        script->expect("qmp_capabilities", json::object()).reply(json::object());
        options.log = [this](LogLevel, std::string_view text) {
            std::lock_guard lock(log_mutex);
            log.emplace_back(text);
        };
        auto c = Client::connect(std::make_unique<ScriptedTransport>(script), std::move(options));
        EXPECT_TRUE(c) << c.error().message;
        return c ? std::move(*c) : nullptr;
    }
    bool logged(std::string_view needle) {
        std::lock_guard lock(log_mutex);
        for (const auto& l : log) {
            if (l.find(needle) != std::string::npos) return true;
        }
        return false;
    }
    void TearDown() override {
        EXPECT_TRUE(script->failures().empty()) << script->failures().front();
    }

    std::shared_ptr<Script> script = std::make_shared<Script>();
    std::mutex log_mutex;
    std::vector<std::string> log;
};

std::string id_of(const SentMessage& m) { return m.message["id"].get<std::string>(); }

}  // namespace

TEST_F(QmpClient, NegotiatesAfterGreetingAndReportsIt) {
    auto client = connect();
    ASSERT_TRUE(client);
    EXPECT_EQ(client->state(), State::running);
    EXPECT_EQ(client->greeting().major, 7);
    EXPECT_EQ(client->greeting().minor, 2);
    EXPECT_TRUE(client->greeting().offers("oob"));
    EXPECT_TRUE(client->greeting().at_least(7, 1));
    EXPECT_FALSE(client->greeting().at_least(8, 0));
    EXPECT_FALSE(client->oob_enabled());
    auto sent = script->sent();
    ASSERT_EQ(sent.size(), 1u);
    EXPECT_EQ(sent[0].message["execute"], "qmp_capabilities");
    EXPECT_EQ(sent[0].lines_delivered, 1u) << "qmp_capabilities must follow the greeting";
}

TEST_F(QmpClient, SendsNothingBeforeTheGreetingArrives) {
    script->push_delay(150ms);
    auto client = connect();
    ASSERT_TRUE(client);
    auto sent = script->sent();
    ASSERT_EQ(sent.size(), 1u);
    EXPECT_EQ(sent[0].lines_delivered, 1u);
}

TEST_F(QmpClient, EnablesOobWhenOfferedAndRequested) {
    script->push_greeting(7, 2, 0, {"oob"});
    script->expect("qmp_capabilities", json{{"enable", {"oob"}}}).reply(json::object());
    script->expect("migrate-pause").reply(json::object());
    auto client =
        Client::connect(std::make_unique<ScriptedTransport>(script), {.enable_oob = true});
    ASSERT_TRUE(client) << client.error().message;
    EXPECT_TRUE((*client)->oob_enabled());
    ASSERT_TRUE((*client)->execute_oob("migrate-pause"));
    EXPECT_TRUE(script->sent().back().message.contains("exec-oob"));
}

TEST_F(QmpClient, DoesNotEnableOobWhenNotOffered) {
    script->push_greeting(7, 2, 0, {});
    script->expect("qmp_capabilities", json::object()).reply(json::object());
    auto client =
        Client::connect(std::make_unique<ScriptedTransport>(script), {.enable_oob = true});
    ASSERT_TRUE(client) << client.error().message;
    EXPECT_FALSE((*client)->oob_enabled());
    auto r = (*client)->execute_oob("migrate-pause");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unsupported);
}

TEST_F(QmpClient, ConnectTimesOutWithoutGreeting) {
    auto start = std::chrono::steady_clock::now();
    auto client = Client::connect(std::make_unique<ScriptedTransport>(script), {.timeout = 100ms});
    ASSERT_FALSE(client);
    EXPECT_EQ(client.error().code, ErrorCode::timeout);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
    EXPECT_TRUE(script->sent().empty());
}

TEST_F(QmpClient, ConnectFailsOnMalformedGreeting) {
    script->push(json{{"QMP", {{"capabilities", json::array()}}}});
    auto client = Client::connect(std::make_unique<ScriptedTransport>(script));
    ASSERT_FALSE(client);
    EXPECT_EQ(client.error().code, ErrorCode::protocol);
    EXPECT_TRUE(script->sent().empty());
}

TEST_F(QmpClient, ConnectFailsWhenCapabilitiesRefused) {
    script->push_greeting();
    script->expect("qmp_capabilities").error("GenericError", "nope");
    auto client = Client::connect(std::make_unique<ScriptedTransport>(script));
    ASSERT_FALSE(client);
    EXPECT_EQ(client.error().code, ErrorCode::qmp_command_failed);
    EXPECT_EQ(client.error().qmp_class, "GenericError");
}

TEST_F(QmpClient, MatchesReplyByPrefixedId) {
    auto client = connect();
    script->expect("query-status").reply({{"status", "running"}, {"running", true}});
    auto r = client->execute("query-status");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)["status"], "running");
    for (const auto& s : script->sent()) EXPECT_TRUE(id_of(s).starts_with(Client::k_id_prefix));
    EXPECT_NE(id_of(script->sent()[0]), id_of(script->sent()[1]));
}

TEST_F(QmpClient, OmitsEmptyArgumentsAndSendsGivenOnes) {
    auto client = connect();
    script->expect("query-status", json::object()).reply(json::object());
    script->expect("blockdev-del", json{{"node-name", "n0"}}).reply(json::object());
    ASSERT_TRUE(client->execute("query-status"));
    ASSERT_TRUE(client->execute("blockdev-del", {{"node-name", "n0"}}));
    EXPECT_FALSE(script->sent()[1].message.contains("arguments"));
}

TEST_F(QmpClient, RejectsNonObjectArguments) {
    auto client = connect();
    auto r = client->execute("x", json::array({1}));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_EQ(script->sent().size(), 1u);
}

TEST_F(QmpClient, ReportsQmpErrorWithClassAndDescription) {
    auto client = connect();
    script->expect("blockdev-del").error("GenericError", "Failed to find node with node-name='x'");
    auto r = client->execute("blockdev-del", {{"node-name", "x"}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::qmp_command_failed);
    EXPECT_EQ(r.error().qmp_class, "GenericError");
    EXPECT_EQ(r.error().message, "blockdev-del: Failed to find node with node-name='x'");
    EXPECT_EQ(client->state(), State::running);
}

TEST_F(QmpClient, DropsReplyWithUnknownId) {
    auto client = connect();
    script->expect("query-status")
        .raw(R"({"return": {"status": "bogus"}, "id": "someone-else"})"
             "\n")
        .raw(R"({"return": {"status": "bogus"}, "id": 17})"
             "\n")
        .reply({{"status", "paused"}});
    auto r = client->execute("query-status");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)["status"], "paused");
    EXPECT_TRUE(logged("dropping reply with unknown id"));
    EXPECT_EQ(client->state(), State::running);
}

TEST_F(QmpClient, DeliversEventsInterleavedWithReplies) {
    auto client = connect();
    auto all = client->subscribe();
    auto stops = client->subscribe("STOP");
    script->expect("stop").event("STOP").event("OTHER", {{"x", 1}}).reply(json::object());
    ASSERT_TRUE(client->execute("stop"));
    auto e1 = all.next(1s);
    ASSERT_TRUE(e1) << e1.error().message;
    EXPECT_EQ(e1->name, "STOP");
    EXPECT_EQ(e1->seconds, 1);
    auto e2 = all.next(1s);
    ASSERT_TRUE(e2);
    EXPECT_EQ(e2->name, "OTHER");
    EXPECT_EQ(e2->data["x"], 1);
    auto s = stops.next(1s);
    ASSERT_TRUE(s);
    EXPECT_EQ(s->name, "STOP");
    EXPECT_EQ(stops.pending(), 0u);
    auto none = stops.next(50ms);
    ASSERT_FALSE(none);
    EXPECT_EQ(none.error().code, ErrorCode::timeout);
}

TEST_F(QmpClient, LosesNoEventBetweenCommandAndWait) {
    auto client = connect();
    auto sub = client->subscribe(job_events("job0"));
    // The job's events arrive before the command's own reply, as with QEMU.
    script->expect("blockdev-create")
        .event("JOB_STATUS_CHANGE", {{"id", "other"}, {"status", "created"}})
        .event("JOB_STATUS_CHANGE", {{"id", "job0"}, {"status", "created"}})
        .event("JOB_STATUS_CHANGE", {{"id", "job0"}, {"status", "running"}})
        .reply(json::object())
        .event("JOB_STATUS_CHANGE", {{"id", "job0"}, {"status", "concluded"}});
    ASSERT_TRUE(client->execute("blockdev-create", {{"job-id", "job0"}}));
    std::this_thread::sleep_for(50ms);  // every event is already queued now
    auto e = wait_for_job_status(*client, sub, "job0", "concluded", 1s);
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->data["status"], "concluded");
}

TEST_F(QmpClient, EventFilterPredicateSelectsEvents) {
    auto client = connect();
    auto sub = client->subscribe(EventFilter(
        {"BLOCK_JOB_READY"}, [](const Event& e) { return e.data.value("device", "") == "m1"; }));
    script->push_event("BLOCK_JOB_READY", {{"device", "m0"}});
    script->push_event("BLOCK_JOB_COMPLETED", {{"device", "m1"}});
    script->push_event("BLOCK_JOB_READY", {{"device", "m1"}});
    auto e = sub.next(1s);
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->data["device"], "m1");
    EXPECT_EQ(e->name, "BLOCK_JOB_READY");
}

TEST_F(QmpClient, WaitForBlockJobEventMatchesJobAndNames) {
    auto client = connect();
    auto sub = client->subscribe();
    script->push_event("BLOCK_JOB_READY", {{"device", "other"}});
    script->push_event("BLOCK_JOB_ERROR", {{"device", "m0"}, {"operation", "write"}});
    constexpr std::string_view names[] = {"BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR"};
    auto e = wait_for_block_job_event(sub, "m0", names, 1s);
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->name, "BLOCK_JOB_ERROR");
}

TEST_F(QmpClient, JobWaitFailsWithJobErrorWhenItAborts) {
    auto client = connect();
    auto sub = client->subscribe(job_events("m0"));
    script->push_event("JOB_STATUS_CHANGE", {{"id", "m0"}, {"status", "running"}});
    script->push_event("JOB_STATUS_CHANGE", {{"id", "m0"}, {"status", "aborting"}});
    script->expect("query-jobs")
        .reply(json::array({{{"id", "m0"}, {"status", "aborting"}, {"error", "No space left"}}}));
    auto e = wait_for_job_status(*client, sub, "m0", "ready", 1s);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, ErrorCode::io_error);
    EXPECT_NE(e.error().message.find("No space left"), std::string::npos) << e.error().message;
}

TEST_F(QmpClient, ReassemblesReplySplitMidJson) {
    auto client = connect();
    script->expect("query-status")
        .raw(R"({"ret)")
        .delay(20ms)
        .raw(R"(urn": {"status": "run)")
        .delay(20ms)
        .raw(R"(ning"}, "id": $ID})"
             "\n"
             R"({"event": "RES)")
        .delay(20ms)
        .raw(R"(UME"})"
             "\n");
    auto sub = client->subscribe("RESUME");
    auto r = client->execute("query-status");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)["status"], "running");
    auto e = sub.next(1s);
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->name, "RESUME");
}

TEST_F(QmpClient, HandlesMultiMebibyteReply) {
    auto client = connect();
    json big = json::array();
    for (int i = 0; i < 100000; ++i)
        big.push_back(
            {{"name", std::to_string(i)}, {"meta-type", "object"}, {"members", json::array()}});
    std::string line = json{{"return", big}, {"id", "ID_HERE"}}.dump() + "\n";
    ASSERT_GT(line.size(), 4u * 1024 * 1024);
    auto& e = script->expect("query-qmp-schema");
    std::string id_marker = "\"ID_HERE\"";
    line.replace(line.find(id_marker), id_marker.size(), "$ID");
    for (std::size_t i = 0; i < line.size(); i += 100000) e.raw(line.substr(i, 100000));
    auto r = client->execute("query-qmp-schema", json::object(), 10s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(*r, big);
}

TEST_F(QmpClient, MalformedJsonKillsConnectionWithProtocolError) {
    auto client = connect();
    script->expect("query-status").raw("{\"return\": oops}\n");
    auto r = client->execute("query-status", json::object(), 2s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::protocol);
    EXPECT_EQ(client->state(), State::dead);
    auto again = client->execute("query-status");
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code, ErrorCode::protocol);
}

TEST_F(QmpClient, ErrorReplyWithoutIdIsProtocolError) {
    auto client = connect();
    script->expect("query-status")
        .raw(R"({"error": {"class": "GenericError", "desc": "JSON parse error"}})"
             "\n");
    auto r = client->execute("query-status", json::object(), 2s);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::protocol);
    EXPECT_NE(r.error().message.find("without id"), std::string::npos) << r.error().message;
    EXPECT_EQ(client->state(), State::dead);
}

TEST_F(QmpClient, UnexpectedSecondGreetingIsProtocolError) {
    auto client = connect();
    script->push_greeting();
    auto sub = client->subscribe();
    auto e = sub.next(2s);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, ErrorCode::interrupted);
    EXPECT_EQ(client->state(), State::dead);
    EXPECT_EQ(client->dead_reason().code, ErrorCode::protocol);
}

TEST_F(QmpClient, DisconnectMidCommandInterruptsPendingCalls) {
    auto client = connect();
    auto sub = client->subscribe();
    script->expect("migrate").event("MIGRATION", {{"status", "setup"}}).delay(30ms).disconnect();
    auto r = client->execute("migrate", {{"uri", "tcp:x:1"}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::interrupted);
    EXPECT_EQ(client->state(), State::dead);
    // Events queued before the disconnect are still delivered, then interrupted.
    auto e = sub.next(1s);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->name, "MIGRATION");
    auto end = sub.next(1s);
    ASSERT_FALSE(end);
    EXPECT_EQ(end.error().code, ErrorCode::interrupted);
    auto after = client->execute("query-status");
    ASSERT_FALSE(after);
    EXPECT_EQ(after.error().code, ErrorCode::interrupted);
}

TEST_F(QmpClient, DisconnectFailsEveryConcurrentCall) {
    auto client = connect();
    script->set_responder([](const json&, Script&) {});  // never answers
    std::vector<std::thread> threads;
    std::atomic<int> interrupted{0};
    for (int i = 0; i < 4; ++i) {
        threads.emplace_back([&] {
            auto r = client->execute("query-status");
            if (!r && r.error().code == ErrorCode::interrupted) ++interrupted;
        });
    }
    ASSERT_TRUE(script->wait_for_sent(5, 2s));
    script->push_disconnect();
    for (auto& t : threads) t.join();
    EXPECT_EQ(interrupted, 4);
}

TEST_F(QmpClient, TimesOutAndDropsTheLateReply) {
    auto client = connect();
    script->expect("slow-command");
    auto r = client->execute("slow-command", json::object(), 50ms);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::timeout);
    EXPECT_EQ(client->state(), State::running);
    std::string late_id = id_of(script->sent().back());
    script->push(json{{"return", {{"late", true}}}, {"id", late_id}});
    script->expect("query-status").reply({{"status", "running"}});
    auto next = client->execute("query-status", json::object(), 1s);
    ASSERT_TRUE(next) << next.error().message;
    EXPECT_EQ((*next)["status"], "running");
    EXPECT_TRUE(logged("unknown id"));
}

TEST_F(QmpClient, DefaultTimeoutApplies) {
    auto client = connect({.default_timeout = 50ms});
    script->expect("slow-command");
    auto r = client->execute("slow-command");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::timeout);
}

TEST_F(QmpClient, MatchesOutOfOrderRepliesToConcurrentCallers) {
    auto client = connect();
    script->set_responder([](const json&, Script&) {});
    Result<json> ra, rb;
    std::thread ta([&] { ra = client->execute("a"); });
    ASSERT_TRUE(script->wait_for_sent(2, 2s));
    std::thread tb([&] { rb = client->execute("b"); });
    ASSERT_TRUE(script->wait_for_sent(3, 2s));
    auto sent = script->sent();
    script->push(json{{"return", "for-b"}, {"id", id_of(sent[2])}});
    script->push(json{{"return", "for-a"}, {"id", id_of(sent[1])}});
    ta.join();
    tb.join();
    ASSERT_TRUE(ra && rb);
    EXPECT_EQ(*ra, "for-a");
    EXPECT_EQ(*rb, "for-b");
}

TEST_F(QmpClient, ManyThreadsGetTheirOwnReplies) {
    auto client = connect();
    script->set_responder([](const json& m, Script& s) {
        s.push(json{{"return", m["arguments"]}, {"id", m["id"]}});
    });
    constexpr int k_threads = 8, k_calls = 100;
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < k_threads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < k_calls; ++i) {
                json args = {{"t", t}, {"i", i}};
                auto r = client->execute("echo", args, 5s);
                if (r && *r == args) ++ok;
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(ok, k_threads * k_calls);
}

TEST_F(QmpClient, CloseInterruptsPendingCallAndForbidsNewOnes) {
    auto client = connect();
    script->expect("slow-command");
    std::thread closer([&] {
        script->wait_for_sent(2, 2s);
        client->close();
    });
    auto r = client->execute("slow-command");
    closer.join();
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::interrupted);
    auto after = client->execute("query-status");
    ASSERT_FALSE(after);
    EXPECT_EQ(after.error().code, ErrorCode::invalid_state);
    EXPECT_TRUE(script->closed());
}

TEST_F(QmpClient, PassesFdsOnlyWhereTheTransportCan) {
    auto client = connect();
    script->expect("getfd", json{{"fdname", "f"}}).reply(json::object());
    int fds[] = {0};
    ASSERT_TRUE(client->execute_with_fds("getfd", {{"fdname", "f"}}, fds));
    EXPECT_EQ(script->sent().back().fd_count, 1u);

    auto other = std::make_shared<Script>();
    other->push_greeting();
    other->expect("qmp_capabilities").reply(json::object());
    auto tcp_like = Client::connect(std::make_unique<ScriptedTransport>(other, false));
    ASSERT_TRUE(tcp_like);
    auto r = (*tcp_like)->execute_with_fds("getfd", {{"fdname", "f"}}, fds);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::unsupported);
}

TEST_F(QmpClient, ReportsThePeerPidItsTransportKnows) {
    auto client = connect();
    EXPECT_FALSE(client->peer_pid().has_value());  // unknown by default
    script->set_peer_pid(4242);
    ASSERT_TRUE(client->peer_pid().has_value());
    EXPECT_EQ(*client->peer_pid(), 4242);
}

TEST_F(QmpClient, LogsCommandsWithoutSecrets) {
    auto client = connect();
    const json secret = {{"qom-type", "secret"}, {"id", "s0"}, {"data", "hunter2"}};
    script->expect("object-add", secret).reply(json::object());
    ASSERT_TRUE(client->execute("object-add", secret));
    const json vnc = {{"password", "hunter3"}};
    script->expect("change-vnc-password", vnc).reply(json::object());
    ASSERT_TRUE(client->execute("change-vnc-password", vnc));
    EXPECT_TRUE(logged("object-add"));
    EXPECT_TRUE(logged("<redacted>"));
    EXPECT_FALSE(logged("hunter2"));
    EXPECT_FALSE(logged("hunter3"));
    EXPECT_EQ(script->sent().at(1).message["arguments"]["data"], "hunter2");  // QEMU gets it
}

TEST_F(QmpClient, SubscriptionOutlivesClient) {
    EventSubscription sub;
    {
        auto client = connect();
        sub = client->subscribe();
    }
    auto e = sub.next(1s);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, ErrorCode::interrupted);
}
