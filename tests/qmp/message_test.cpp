#include "qmp/message.hpp"

#include <gtest/gtest.h>

using namespace blockmig;
using namespace blockmig::qmp;

TEST(QmpMessage, ClassifiesTheFourKinds) {
    auto g = parse_message(R"({"QMP": {"version": {}, "capabilities": []}})");
    ASSERT_TRUE(g);
    EXPECT_EQ(g->kind, MessageKind::greeting);
    auto r = parse_message(R"({"return": {"a": 1}, "id": "blockmig-3"})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->kind, MessageKind::reply);
    EXPECT_EQ(r->id, "blockmig-3");
    EXPECT_EQ(r->body["a"], 1);
    auto e = parse_message(R"({"error": {"class": "GenericError", "desc": "no"}})");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind, MessageKind::error_reply);
    EXPECT_FALSE(e->has_id);
    auto ev = parse_message(R"({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}})"
                            "\r");
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->kind, MessageKind::event);
}

TEST(QmpMessage, NonStringIdIsPresentButNotOurs) {
    auto r = parse_message(R"({"return": {}, "id": 7})");
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->has_id);
    EXPECT_FALSE(r->id);
}

TEST(QmpMessage, RejectsMalformedInputWithProtocolError) {
    for (const char* bad : {"", "{", "[1,2]", "\"x\"", R"({"foo": 1})", R"({"error": "x"})",
                            R"({"error": {"class": 1, "desc": "d"}})", R"({"event": 5})",
                            R"({"QMP": 1})", "{\"return\": {}} trailing"}) {
        auto m = parse_message(bad);
        ASSERT_FALSE(m) << bad;
        EXPECT_EQ(m.error().code, ErrorCode::protocol) << bad;
    }
}

TEST(QmpLineBuffer, ReassemblesLinesSplitAcrossChunks) {
    LineBuffer b;
    ASSERT_TRUE(b.append("{\"ret"));
    EXPECT_FALSE(b.next_line());
    ASSERT_TRUE(b.append("urn\": {}}\n{\"event\""));
    EXPECT_EQ(b.next_line(), "{\"return\": {}}");
    EXPECT_FALSE(b.next_line());
    ASSERT_TRUE(b.append(": \"STOP\"}\n\n"));
    EXPECT_EQ(b.next_line(), "{\"event\": \"STOP\"}");
    EXPECT_EQ(b.next_line(), "");
    EXPECT_EQ(b.pending_bytes(), 0u);
}

TEST(QmpLineBuffer, RejectsLineLongerThanLimit) {
    LineBuffer b(16);
    ASSERT_TRUE(b.append("0123456789"));
    auto r = b.append("0123456789");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::protocol);
}

TEST(QmpLineBuffer, HandlesManySmallChunksOfAGiantLine) {
    LineBuffer b;
    std::string line(5 * 1024 * 1024, 'x');
    for (std::size_t i = 0; i < line.size(); i += 4096)
        ASSERT_TRUE(b.append(std::string_view(line).substr(i, 4096)));
    EXPECT_FALSE(b.next_line());
    ASSERT_TRUE(b.append("\n"));
    auto got = b.next_line();
    ASSERT_TRUE(got);
    EXPECT_EQ(got->size(), line.size());
}
