// The lab's iSCSI target: a LUN's capacity read through libiscsi matches its
// sparse backing file, and QEMU's iscsi driver opens and writes it.
#include <gtest/gtest.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <sys/stat.h>

#include <filesystem>

#include "lab.hpp"

using namespace blockmig::lab;

namespace {

std::uint64_t capacity_via_libiscsi(const std::string& url_text) {
    iscsi_context* iscsi = iscsi_create_context("iqn.2024-01.blockmig.lab:test");
    if (!iscsi) throw std::runtime_error("iscsi_create_context failed");
    struct Guard {
        iscsi_context* c;
        ~Guard() { iscsi_destroy_context(c); }
    } guard{iscsi};
    iscsi_url* url = iscsi_parse_full_url(iscsi, url_text.c_str());
    if (!url) throw std::runtime_error(std::string("parse: ") + iscsi_get_error(iscsi));
    iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
    if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
        std::string e = iscsi_get_error(iscsi);
        iscsi_destroy_url(url);
        throw std::runtime_error("connect: " + e);
    }
    scsi_task* task = iscsi_readcapacity16_sync(iscsi, url->lun);
    iscsi_destroy_url(url);
    if (!task || task->status != SCSI_STATUS_GOOD)
        throw std::runtime_error("READ CAPACITY(16) failed");
    auto* rc16 = static_cast<scsi_readcapacity16*>(scsi_datain_unmarshall(task));
    std::uint64_t bytes = (rc16->returned_lba + 1) * rc16->block_length;
    scsi_free_scsi_task(task);
    iscsi_logout_sync(iscsi);
    return bytes;
}

TEST(LabIscsi, LunCapacityMatchesBackingFile) {
    LAB_REQUIRE();
    IscsiTarget target(96ull << 20, 2);
    for (int lun : {1, 2}) {
        auto backing = std::filesystem::file_size(target.backing_file(lun));
        EXPECT_EQ(capacity_via_libiscsi(target.lun_url(lun)), backing) << target.lun_url(lun);
    }
}

TEST(LabIscsi, QemuIscsiDriverOpensAndWritesThinLun) {
    LAB_REQUIRE();
    IscsiTarget target(64ull << 20);
    std::string info = run_ok({"qemu-img", "info", "--output=json", target.lun_url(1)});
    EXPECT_NE(info.find("\"virtual-size\": 67108864"), std::string::npos) << info;

    struct stat st {};
    ASSERT_EQ(stat(target.backing_file(1).c_str(), &st), 0);
    EXPECT_EQ(st.st_blocks, 0) << "a fresh thin LUN must be sparse";
    run_ok({"qemu-io", "-f", "raw", "-c", "write -P 0xab 0 8M", target.lun_url(1)});
    ASSERT_EQ(stat(target.backing_file(1).c_str(), &st), 0);
    EXPECT_GE(st.st_blocks * 512, 8 << 20) << "the write reached the backing file";
}

}  // namespace
