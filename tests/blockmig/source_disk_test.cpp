// QEMU's names for images become volume specs pools/ understands.
#include "move/source_disk.hpp"

#include <gtest/gtest.h>

using blockmig::location_from_filename;

TEST(SourceDisk, PathsAndNfsUrlsPassThrough) {
    EXPECT_EQ(location_from_filename("/srv/vm1.qcow2"), "/srv/vm1.qcow2");
    EXPECT_EQ(location_from_filename("nfs://10.0.0.5/export/vm1.qcow2"),
              "nfs://10.0.0.5/export/vm1.qcow2");
}

TEST(SourceDisk, IscsiJsonFilenameBecomesLunUrl) {
    EXPECT_EQ(
        location_from_filename(
            R"(json:{"driver": "raw", "file": {"lun": 1, "portal": "127.0.0.1:3260", "driver": "iscsi", )"
            R"("transport": "tcp", "target": "iqn.2024-01.lab:t"}})"),
        "iscsi://127.0.0.1:3260/iqn.2024-01.lab:t/1");
}

TEST(SourceDisk, UnknownJsonFilenameHasNoLocation) {
    EXPECT_EQ(location_from_filename(R"(json:{"driver": "nbd", "server": {}})"), "");
    EXPECT_EQ(location_from_filename("json:{broken"), "");
}
