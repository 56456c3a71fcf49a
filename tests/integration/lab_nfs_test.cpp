// The lab's NFS server: a file created through the export is read back
// through libnfs (NFSv3 and v4) and opened by QEMU's nfs driver.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <nfsc/libnfs.h>

#include <fstream>
#include <memory>

#include "lab.hpp"

using namespace blockmig::lab;

namespace {

struct NfsDeleter {
    void operator()(nfs_context* c) const { nfs_destroy_context(c); }
};

std::string read_via_libnfs(const std::string& url_text) {
    std::unique_ptr<nfs_context, NfsDeleter> nfs(nfs_init_context());
    if (!nfs) throw std::runtime_error("nfs_init_context failed");
    nfs_url* url = nfs_parse_url_full(nfs.get(), url_text.c_str());
    if (!url) throw std::runtime_error(std::string("parse: ") + nfs_get_error(nfs.get()));
    std::string out;
    if (nfs_mount(nfs.get(), url->server, url->path) != 0) {
        std::string e = nfs_get_error(nfs.get());
        nfs_destroy_url(url);
        throw std::runtime_error("mount: " + e);
    }
    nfsfh* fh = nullptr;
    if (nfs_open(nfs.get(), url->file, O_RDONLY, &fh) != 0) {
        std::string e = nfs_get_error(nfs.get());
        nfs_destroy_url(url);
        throw std::runtime_error("open: " + e);
    }
    char buf[4096];
    int n;
    while ((n = nfs_read(nfs.get(), fh, sizeof buf, buf)) > 0)
        out.append(buf, static_cast<size_t>(n));
    nfs_close(nfs.get(), fh);
    nfs_destroy_url(url);
    return out;
}

TEST(LabNfs, FileWrittenToExportReadsBackThroughLibnfsV3AndV4) {
    LAB_REQUIRE();
    NfsServer nfs;
    const std::string text = "blockmig lab " + std::to_string(nfs.pid()) + "\n";
    std::ofstream(nfs.export_dir() / "hello.txt") << text;
    EXPECT_EQ(read_via_libnfs(nfs.url() + "/hello.txt"), text);
    EXPECT_EQ(read_via_libnfs(nfs.url() + "/hello.txt?version=4"), text);
}

TEST(LabNfs, QemuNfsDriverOpensImageCreatedOnExport) {
    LAB_REQUIRE();
    NfsServer nfs;
    run_ok({"qemu-img", "create", "-q", "-f", "qcow2", (nfs.export_dir() / "disk.qcow2").string(),
            "64M"});
    std::string info = run_ok({"qemu-img", "info", "--output=json", nfs.url() + "/disk.qcow2"});
    EXPECT_NE(info.find("\"format\": \"qcow2\""), std::string::npos) << info;
    EXPECT_NE(info.find("\"virtual-size\": 67108864"), std::string::npos) << info;
}

TEST(LabNfs, StoppedServerIsUnreachable) {
    LAB_REQUIRE();
    NfsServer nfs;
    std::ofstream(nfs.export_dir() / "x") << "x";
    nfs.stop();
    EXPECT_THROW(read_via_libnfs(nfs.url() + "/x"), std::runtime_error);
}

}  // namespace
