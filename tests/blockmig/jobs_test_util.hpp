// Shared by the jobs_* unit tests: a tiny QEMU model answering through the
// scripted QMP transport (devices on nodes, named nodes, block jobs), a pool
// borrowed from the test, and a temporary state directory.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "pools/pools.hpp"
#include "qmp/client.hpp"
#include "qmp/testing/scripted_transport.hpp"

namespace jobs_test {

using nlohmann::json;
namespace fs = std::filesystem;

// Forwards to a pool the test owns (VolumeRef wants ownership).
class BorrowedPool final : public blockmig::pools::Pool {
  public:
    explicit BorrowedPool(Pool& p) : m_p(p) {}
    std::string_view type() const override { return m_p.type(); }
    std::string url() const override { return m_p.url(); }
    blockmig::Result<std::vector<blockmig::pools::VolumeInfo>> list_volumes() override {
        return m_p.list_volumes();
    }
    blockmig::Result<blockmig::pools::VolumeInfo> stat(std::string_view n) override {
        return m_p.stat(n);
    }
    blockmig::Result<blockmig::pools::VolumeInfo> create(std::string_view n, std::uint64_t s,
                                                         blockmig::pools::ImageFormat f) override {
        return m_p.create(n, s, f);
    }
    blockmig::Result<void> remove(std::string_view n) override { return m_p.remove(n); }
    blockmig::Result<void> rename(std::string_view a, std::string_view b) override {
        return m_p.rename(a, b);
    }
    blockmig::Result<void> resize(std::string_view n, std::uint64_t s) override {
        return m_p.resize(n, s);
    }
    blockmig::Result<blockmig::pools::Capacity> capacity() override { return m_p.capacity(); }
    blockmig::Result<std::unique_ptr<blockmig::pools::Volume>> open(std::string_view n,
                                                                    bool w) override {
        return m_p.open(n, w);
    }
    blockmig::Result<blockmig::pools::BlockdevChain> describe_for_qemu(
        std::string_view n, const blockmig::pools::QemuNodeOptions& o) override {
        return m_p.describe_for_qemu(n, o);
    }
    std::string url_of(std::string_view n) const override { return m_p.url_of(n); }

  private:
    Pool& m_p;
};

inline constexpr std::uint64_t k_mib = 1 << 20;

// An in-memory pool (`mem`: what really happened) behind the fault pool
// (`faults`: what the code under test is handed; use_faults() sets which
// of its calls fail). A new `mem` needs use_faults() again.
struct FaultedPool {
    explicit FaultedPool(std::uint64_t capacity) : mem(blockmig::pools::make_mem_pool(capacity)) {
        use_faults({});
    }
    void use_faults(blockmig::pools::FaultPlan plan) {
        faults =
            blockmig::pools::make_fault_pool(std::make_unique<BorrowedPool>(*mem), std::move(plan));
    }
    std::unique_ptr<blockmig::pools::Pool> mem, faults;
};

// The QEMU side of a move, as far as recovery looks at it.
struct FakeQemu {
    struct Job {
        std::string status;  // running, ready, concluded
        std::string error;
        // Where the device goes when the job completes (device id, node).
        std::string device, target;
        std::uint64_t offset = 100, len = 100;
        bool busy = false;
    };
    std::mutex mutex;
    std::map<std::string, std::string> devices;  // device id -> node
    std::set<std::string> nodes;
    std::map<std::string, Job> jobs;
    std::vector<std::string> commands;  // every command received, in order
    bool lose_complete_reply = false;   // block-job-complete acts, reply never comes
    bool complete_fails = false;        // the pivot fails: job concludes with an error
    bool cancel_hangs = false;          // block-job-cancel is accepted, the job never ends
    bool respond_mirror = false;        // blockdev-mirror starts a job in `mirror_status`
    std::string mirror_status = "ready";
    bool refuse_blockdev_add = false;
    std::uint64_t written = 0;  // query-blockstats wr_bytes of every device

    bool got(const std::string& command, const std::string& arg_substring = "") {
        std::lock_guard lock(mutex);
        for (const auto& c : commands)
            if (c.starts_with(command + " ") && c.find(arg_substring) != std::string::npos)
                return true;
        return false;
    }

    std::string device_on(const std::string& node) {
        for (auto& [dev, n] : devices)
            if (n == node) return dev;
        return {};
    }

    void respond(const json& message, blockmig::qmp::testing::Script& script) {
        std::lock_guard lock(mutex);
        const std::string cmd = message.value("execute", "");
        const json args = message.value("arguments", json::object());
        commands.push_back(cmd + " " + args.dump());
        auto reply = [&](json value) { script.push({{"return", value}, {"id", message["id"]}}); };
        auto error = [&](std::string desc) {
            script.push(
                {{"error", {{"class", "GenericError"}, {"desc", desc}}}, {"id", message["id"]}});
        };
        if (cmd == "query-block") {
            json out = json::array();
            for (auto& [dev, node] : devices)
                out.push_back({{"device", ""},
                               {"qdev", "/machine/peripheral/" + dev + "/virtio-backend"},
                               {"locked", false},
                               {"removable", false},
                               {"inserted",
                                {{"node-name", node},
                                 {"drv", "qcow2"},
                                 {"ro", false},
                                 {"encrypted", false},
                                 {"file", "/f/" + node},
                                 {"backing_file_depth", 0},
                                 {"image",
                                  {{"filename", "/f/" + node},
                                   {"format", "qcow2"},
                                   {"virtual-size", 1 << 20}}}}}});
            return reply(out);
        }
        if (cmd == "query-named-block-nodes") {
            json out = json::array();
            for (auto& n : nodes)
                out.push_back(
                    {{"node-name", n},
                     {"drv", "qcow2"},
                     {"ro", false},
                     {"encrypted", false},
                     {"file", "/f/" + n},
                     {"backing_file_depth", 0},
                     {"image",
                      {{"filename", "/f/" + n}, {"format", "qcow2"}, {"virtual-size", 1 << 20}}}});
            return reply(out);
        }
        if (cmd == "query-block-jobs") {
            json out = json::array();
            for (auto& [id, j] : jobs) {
                json e{
                    {"device", id},       {"type", "mirror"},      {"len", j.len},
                    {"offset", j.offset}, {"busy", j.busy},        {"paused", false},
                    {"speed", 0},         {"io-status", "ok"},     {"ready", j.status == "ready"},
                    {"status", j.status}, {"auto-finalize", true}, {"auto-dismiss", false}};
                if (!j.error.empty()) e["error"] = j.error;
                out.push_back(e);
            }
            return reply(out);
        }
        if (cmd == "query-blockstats") {
            json out = json::array();
            for (auto& [dev, node] : devices)
                out.push_back({{"device", ""},
                               {"qdev", dev},
                               {"stats", {{"wr_bytes", written}, {"rd_bytes", 0}}}});
            return reply(out);
        }
        if (cmd == "block-job-change") {
            if (!jobs.contains(args.value("id", ""))) return error("Block job not found");
            return reply(json::object());
        }
        if (cmd == "block-job-cancel") {
            auto it = jobs.find(args.value("device", ""));
            if (it == jobs.end()) return error("Block job not found");
            if (!cancel_hangs) it->second.status = "concluded";
            return reply(json::object());
        }
        if (cmd == "job-dismiss") {
            jobs.erase(args.value("id", ""));
            return reply(json::object());
        }
        if (cmd == "block-job-complete") {
            auto it = jobs.find(args.value("device", ""));
            if (it == jobs.end() || it->second.status != "ready")
                return error("The active block job cannot be completed");
            if (complete_fails) {
                it->second.status = "concluded";
                it->second.error = "Input/output error";
            } else {
                devices[it->second.device] = it->second.target;
                jobs.erase(it);
            }
            if (!lose_complete_reply) reply(json::object());
            return;
        }
        if (cmd == "blockdev-del") {
            const std::string node = args.value("node-name", "");
            for (auto& [dev, n] : devices)
                if (n == node) return error("Node " + node + " is in use");
            if (!nodes.erase(node))
                return error("Failed to find node with node-name='" + node + "'");
            return reply(json::object());
        }
        if (cmd == "blockdev-mirror" && respond_mirror) {
            jobs[args.value("job-id", "")] = {
                mirror_status, "", device_on(args.value("device", "")), args.value("target", "")};
            return reply(json::object());
        }
        if (cmd == "blockdev-add") {
            if (refuse_blockdev_add) return error("Could not open image");
            nodes.insert(args.value("node-name", ""));
            return reply(json::object());
        }
        if (cmd == "blockdev-reopen" || cmd == "object-add" || cmd == "object-del")
            return reply(json::object());
        error("unexpected command " + cmd);
    }
};

// A connected client on a FakeQemu.
struct FakeGuest {
    std::shared_ptr<blockmig::qmp::testing::Script> script =
        std::make_shared<blockmig::qmp::testing::Script>();
    std::shared_ptr<FakeQemu> qemu = std::make_shared<FakeQemu>();
    std::unique_ptr<blockmig::qmp::Client> client;

    FakeGuest() {
        script->push_greeting();
        script->expect("qmp_capabilities").reply(json::object());
        auto q = qemu;
        script->set_responder([q](const json& m, auto& s) { q->respond(m, s); });
        blockmig::qmp::ConnectOptions options;
        // A lost reply must not hang the test: every call has a deadline.
        options.default_timeout = std::chrono::milliseconds(300);
        auto c = blockmig::qmp::Client::connect(
            std::make_unique<blockmig::qmp::testing::ScriptedTransport>(script), options);
        if (c) client = std::move(*c);
    }

    // One disk, "disk0" on node disk0-fmt over disk0-proto, whose mirrors
    // start and run (the guest most orchestration tests move).
    void with_disk0() {
        qemu->devices["disk0"] = "disk0-fmt";
        qemu->nodes = {"disk0-fmt", "disk0-proto"};
        qemu->respond_mirror = true;
    }
};

inline fs::path temp_dir(const std::string& tag) {
    static std::atomic<int> counter{0};
    fs::path dir = fs::temp_directory_path() /
                   ("bm-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(dir);
    return dir;
}

}  // namespace jobs_test
