// The guardian's protocol (blockmig/jobs/guardian.hpp) with a fake recover:
// the owner's byte vs. its death, the wait for the owner's lock, a journal
// a human already recovered.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <thread>

#include "jobs/guardian.hpp"
#include "jobs/journal.hpp"
#include "jobs_test_util.hpp"

using namespace blockmig;
using namespace blockmig::jobs;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// A channel as Guardian::start makes one: [0] the owner's, [1] the guardian's.
std::pair<int, int> channel() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    return {fds[0], fds[1]};
}

Job migrate_job() {
    Job job;
    job.kind = "migrate";
    job.guest = {"/run/vm1.qmp", 4242, "", "vm1"};
    MigrationFacts facts;
    facts.destination = {"/run/vm1-dst.qmp", 4343, "", "vm1"};
    facts.phase = "ram";
    job.migration = facts;
    return job;
}

class GuardianTest : public ::testing::Test {
  protected:
    void TearDown() override { fs::remove_all(dir); }
    fs::path dir = jobs_test::temp_dir("guardian") / "state";
};

TEST(GuardianChannel, OwnerFinishedIsNotADeath) {
    auto [owner_fd, guardian_fd] = channel();
    {
        Guardian owner(owner_fd);
        owner.owner_finished();
    }
    EXPECT_EQ(wait_for_owner(guardian_fd), OwnerEnd::finished);
    ::close(guardian_fd);
}

TEST(GuardianChannel, ClosingWithoutTheByteIsADeath) {
    auto [owner_fd, guardian_fd] = channel();
    { Guardian owner(owner_fd); }  // what SIGKILL does to the owner's fds
    EXPECT_EQ(wait_for_owner(guardian_fd), OwnerEnd::died);
    ::close(guardian_fd);
}

TEST(GuardianChannel, OwnerFinishedAfterTheGuardianIsGoneDoesNotKillTheOwner) {
    auto [owner_fd, guardian_fd] = channel();
    ::close(guardian_fd);
    Guardian owner(owner_fd);
    owner.owner_finished();  // no SIGPIPE: the test would die here
    SUCCEED();
}

TEST(GuardianChannel, AProgramThatCannotRunIsAnError) {
    auto g = Guardian::start("/nonexistent/blockmig", "/nonexistent/state", "j-0000");
    ASSERT_FALSE(g);
    EXPECT_EQ(g.error().code, ErrorCode::not_found) << g.error().message;
    EXPECT_NE(g.error().message.find("/nonexistent/blockmig"), std::string::npos);
}

TEST_F(GuardianTest, WaitsForTheOwnersLockThenRecoversHoldingIt) {
    std::optional<Journal> owner;
    {
        auto j = Journal::create(dir, migrate_job());
        ASSERT_TRUE(j) << j.error().message;
        owner.emplace(std::move(*j));
    }
    const std::string id = owner->job().id;
    std::atomic<int> calls{0};
    std::atomic<bool> locked_while_recovering{false};
    std::optional<Result<bool>> result;
    std::thread guardian([&] {
        result = recover_abandoned(dir, id, [&](Journal& journal) -> Result<void> {
            ++calls;
            // `blockmig jobs` sees the job running while the guardian recovers it.
            auto listed = list_jobs(dir);
            locked_while_recovering = listed && listed->size() == 1 && (*listed)[0].running;
            EXPECT_EQ(journal.job().id, id);
            return journal.remove();
        });
    });
    // The owner is alive (it holds the lock): the guardian does nothing.
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(calls.load(), 0) << "recovered while the owner still held the lock";
    owner.reset();  // the owner dies: its lock goes with it
    guardian.join();
    ASSERT_TRUE(result.has_value());
    ASSERT_TRUE(*result) << result->error().message;
    EXPECT_TRUE(**result);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_TRUE(locked_while_recovering.load());
    EXPECT_FALSE(fs::exists(dir / (id + ".json")));
}

TEST_F(GuardianTest, AJournalAHumanAlreadyRecoveredIsLeftAlone) {
    auto j = Journal::create(dir, migrate_job());
    ASSERT_TRUE(j) << j.error().message;
    const std::string id = j->job().id;
    ASSERT_TRUE(j->remove());  // `blockmig recover` finished it first
    int calls = 0;
    auto r = recover_abandoned(dir, id, [&](Journal&) -> Result<void> {
        ++calls;
        return {};
    });
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(*r);
    EXPECT_EQ(calls, 0);
}

TEST_F(GuardianTest, ARecoverFailureIsReported) {
    std::string id;
    {
        auto j = Journal::create(dir, migrate_job());
        ASSERT_TRUE(j) << j.error().message;
        id = j->job().id;
    }  // the owner died
    auto r = recover_abandoned(dir, id, [&](Journal&) -> Result<void> {
        return fail(ErrorCode::timeout, "qmp: the guest does not answer");
    });
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ErrorCode::timeout);
    EXPECT_TRUE(fs::exists(dir / (id + ".json"))) << "the journal stays for a human";
}

}  // namespace
