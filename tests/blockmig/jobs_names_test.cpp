#include <gtest/gtest.h>

#include <set>

#include "jobs/names.hpp"

using namespace blockmig::jobs;

namespace {

bool well_formed_node(const std::string& name) {
    if (name.empty() || name.size() > 31 || !std::isalpha(static_cast<unsigned char>(name[0])))
        return false;
    for (char c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
            return false;
    return true;
}

TEST(JobNames, DeviceIdsThatShareAPrefixGetDistinctNames) {
    // The old scheme cut both to "virtio-disk1" and collided.
    auto a = names_for("0123abcd", "virtio-disk10");
    auto b = names_for("0123abcd", "virtio-disk11");
    EXPECT_NE(a.prefix, b.prefix);
    EXPECT_NE(a.block_job, b.block_job);
    EXPECT_NE(a.hop_node, b.hop_node);
    EXPECT_NE(a.hop_dir("/run/x", "0123abcd"), b.hop_dir("/run/x", "0123abcd"));
}

TEST(JobNames, EveryNodeNameIsValidForQemuEvenForLongOddIds) {
    for (std::string id :
         {"d", "disk0", "virtio-disk10", "/machine/peripheral/scsi0-0-0-0",
          "a-very-long-device-identifier-that-goes-on-and-on", "ünïcode-disk", "123"}) {
        auto n = names_for(new_job_id(), id);
        for (std::string suffix : {"-proto", "-fmt", "-chap", "-hop"})
            EXPECT_TRUE(well_formed_node(n.prefix + suffix)) << id << " -> " << n.prefix + suffix;
    }
}

TEST(JobNames, ManyDistinctIdsNeverCollide) {
    std::set<std::string> prefixes;
    for (int i = 0; i < 2000; ++i) {
        prefixes.insert(names_for("0123abcd", "virtio-disk" + std::to_string(i)).prefix);
        prefixes.insert(names_for("0123abcd", "scsi-hd-" + std::to_string(i) + "-x").prefix);
    }
    EXPECT_EQ(prefixes.size(), 4000u);
}

TEST(JobNames, ShortCleanIdsStayReadable) {
    EXPECT_EQ(device_tag("disk0"), "disk0");
    EXPECT_NE(device_tag("disk.0"), "disk.0");  // '.' marks hashed tags only
    EXPECT_EQ(names_for("0123abcd", "disk0").prefix, "bm0123abcd-disk0");
}

TEST(JobNames, JobIdsAreRandomAndWellFormed) {
    std::set<std::string> ids;
    for (int i = 0; i < 100; ++i) {
        auto id = new_job_id();
        EXPECT_TRUE(is_job_id(id)) << id;
        ids.insert(id);
    }
    EXPECT_GT(ids.size(), 95u);
    EXPECT_FALSE(is_job_id("../../etc"));
    EXPECT_FALSE(is_job_id("0123ABCD"));
}

TEST(JobNames, SameJobAndDeviceGiveTheSameNames) {
    EXPECT_EQ(names_for("0123abcd", "virtio-disk10").prefix,
              names_for("0123abcd", "virtio-disk10").prefix);
    EXPECT_NE(names_for("0123abcd", "disk0").prefix, names_for("0123abce", "disk0").prefix);
}

}  // namespace
