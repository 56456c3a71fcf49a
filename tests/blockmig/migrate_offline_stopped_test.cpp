// run_offline_migrate_stopped(): a guest with no QEMU, described by its
// files. The sources are real files in a temporary directory (probing and
// QEMU's OFD locks need a real file; a second open of the file plays the
// running QEMU, since OFD locks of two opens conflict even in one
// process); the destination is a MemPool behind the fault pool. What a
// user would check: what the pool holds, that the sources are unchanged,
// the format used, the one-line refusals, the journal.
#include <fcntl.h>
#include <fmt/core.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "blockmig/offline.hpp"
#include "jobs/effects.hpp"
#include "jobs/journal.hpp"
#include "jobs_test_util.hpp"
#include "sha256_test_util.hpp"
#include "migrate/image_lock.hpp"
#include "migrate/offline_recover.hpp"
#include "pools/image/qcow2.hpp"

using namespace blockmig;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

using sha256_test::sha256;

using jobs_test::k_mib;

std::string read_all(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

// Another open of `file` holding QEMU's lock bytes, as a QEMU would.
struct LockHolder {
    LockHolder(const fs::path& file, std::vector<off_t> bytes)
        : fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC)) {
        for (off_t b : bytes) {
            struct flock fl {};
            fl.l_type = F_RDLCK;
            fl.l_whence = SEEK_SET;
            fl.l_start = b;
            fl.l_len = 1;
            ok = ok && fd >= 0 && ::fcntl(fd, F_OFD_SETLK, &fl) == 0;
        }
    }
    ~LockHolder() {
        if (fd >= 0) ::close(fd);
    }
    // Whether a write lock on `byte` would conflict with another open's lock.
    bool could_write_lock(off_t byte) const {
        struct flock fl {};
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = byte;
        fl.l_len = 1;
        return ::fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_UNLCK;
    }
    int fd;
    bool ok = true;
};

class MigrateOfflineStoppedTest : public ::testing::Test {
  protected:
    void SetUp() override {
        fs::create_directories(dir / "vms");
        raw = write_raw("vm-a.raw", 4 * k_mib, {0, 3 * k_mib + 4096});
        qcow2 = write_qcow2("vm-b.qcow2", 2 * k_mib, k_mib);
    }
    void TearDown() override { fs::remove_all(dir); }

    // A raw file with a 64 KiB pattern at each offset, the rest a hole.
    fs::path write_raw(const std::string& name, std::uint64_t size, std::vector<std::uint64_t> at) {
        const fs::path file = dir / "vms" / name;
        std::ofstream out(file, std::ios::binary);
        for (auto o : at) {
            out.seekp(static_cast<std::streamoff>(o));
            out << pattern(name);
        }
        out.close();
        fs::resize_file(file, size);
        return file;
    }
    static std::string pattern(const std::string& seed) {
        std::string data(64 << 10, '\0');
        for (std::size_t i = 0; i < data.size(); ++i)
            data[i] = static_cast<char>((i * 7 + seed.size()) & 0xff);
        return data;
    }
    // A qcow2 image (blockmig's own writer) with the pattern at `at`.
    fs::path write_qcow2(const std::string& name, std::uint64_t size, std::uint64_t at) {
        auto pool = pools::open_pool((dir / "vms").string(), {});
        EXPECT_TRUE(pool);
        EXPECT_TRUE((*pool)->create(name, 0, pools::ImageFormat::raw));
        auto v = (*pool)->open(name, true);
        EXPECT_TRUE(v);
        auto w = pools::image::create_qcow2_writer(std::move(*v), size, {});
        EXPECT_TRUE(w) << w.error().message;
        const std::string data = pattern(name);
        EXPECT_TRUE((*w)->write(std::as_bytes(std::span(data)), at));
        EXPECT_TRUE((*w)->finish());
        return dir / "vms" / name;
    }

    PoolOpener opener() {
        return {.open_pool = [this](std::string_view spec) -> Result<std::unique_ptr<pools::Pool>> {
                    if (spec != "cold") return fail(ErrorCode::not_found, "no pool");
                    return std::make_unique<jobs_test::BorrowedPool>(*pool.faults);
                },
                .resolve_volume = [this](std::string_view spec) -> Result<pools::VolumeRef> {
                    if (spec.starts_with("mem:"))
                        return pools::VolumeRef{
                            std::make_unique<jobs_test::BorrowedPool>(*pool.faults),
                            std::string(spec.substr(4))};
                    return pools::resolve_volume(spec, {});
                }};
    }

    OfflineOptions options(std::vector<OfflineSourceFile> files) {
        OfflineOptions o;
        o.src_files = std::move(files);
        o.dst_pool = "cold";
        o.jobs_dir = dir / "jobs";
        o.pool_opener = opener();
        return o;
    }
    OfflineOptions options() {
        return options({{"disk0", raw.string(), std::nullopt}, {"disk1", qcow2, std::nullopt}});
    }

    Result<OfflineReport> migrate(const OfflineOptions& o) {
        auto progress = make_null_progress();
        return run_offline_migrate_stopped(o, *progress, cancel);
    }

    std::vector<std::string> dst_volumes() {
        std::vector<std::string> out;
        if (auto listed = pool.mem->list_volumes())
            for (const auto& v : *listed) out.push_back(v.name);
        return out;
    }
    std::string copy_of(const std::string& name) {
        auto v = pool.mem->open(name, false);
        if (!v) return {};
        std::string out((*v)->size(), '\0');
        if (!pools::read_full(**v, std::as_writable_bytes(std::span(out)), 0)) return {};
        return out;
    }
    bool no_journal() { return !fs::exists(dir / "jobs") || fs::is_empty(dir / "jobs"); }

    // Refused with `words` in one line, and nothing created or journaled.
    void expect_refused(const OfflineOptions& o, const std::string& words) {
        auto r = migrate(o);
        ASSERT_FALSE(r) << words;
        EXPECT_NE(r.error().message.find(words), std::string::npos) << r.error().message;
        EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << "one line";
        EXPECT_TRUE(dst_volumes().empty()) << words;
        EXPECT_TRUE(no_journal()) << words;
    }

    fs::path dir = jobs_test::temp_dir("offline-stopped");
    fs::path raw, qcow2;
    jobs_test::FaultedPool pool{64 * k_mib};
    std::atomic<bool> cancel{false};
};

TEST_F(MigrateOfflineStoppedTest, EachFileIsProbedCopiedAndProvenEqual) {
    const std::string raw_before = read_all(raw), qcow2_before = read_all(qcow2);
    auto r = migrate(options());
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->shutdown, "was not running");
    ASSERT_EQ(r->disks.size(), 2u);
    const auto& d0 = r->disks[0];
    EXPECT_EQ(d0.device, "disk0");
    EXPECT_EQ(d0.source, fs::canonical(raw).string());
    EXPECT_EQ(d0.target, "mem:vm-a.raw");
    EXPECT_EQ(d0.format, "raw");
    EXPECT_EQ(d0.format_from, "probed");
    EXPECT_EQ(copy_of("vm-a.raw"), raw_before);
    EXPECT_EQ(d0.digest, sha256(raw_before)) << "sha256sum of the raw image";
    const auto& d1 = r->disks[1];
    EXPECT_EQ(d1.format, "qcow2") << "the qcow2 magic";
    EXPECT_EQ(d1.format_from, "probed");
    EXPECT_EQ(d1.size, 2 * k_mib);
    // The guest-visible contents: the pattern at 1 MiB, zeroes elsewhere.
    std::string visible(2 * k_mib, '\0');
    visible.replace(k_mib, 64 << 10, pattern("vm-b.qcow2"));
    EXPECT_EQ(d1.digest, sha256(visible));
    EXPECT_EQ(copy_of("vm-b.qcow2").substr(0, 4), "QFI\xfb") << "qcow2 stays qcow2";
    EXPECT_EQ(read_all(raw), raw_before) << "the source is never written";
    EXPECT_EQ(read_all(qcow2), qcow2_before);
    EXPECT_TRUE(no_journal());
}

TEST_F(MigrateOfflineStoppedTest, SrcFormatForcesTheFormat) {
    auto r = migrate(options({{"disk1", qcow2, pools::ImageFormat::raw}}));
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->disks.size(), 1u);
    EXPECT_EQ(r->disks[0].format, "raw");
    EXPECT_EQ(r->disks[0].format_from, "--src-format");
    EXPECT_EQ(copy_of("vm-b.qcow2"), read_all(qcow2)) << "-f raw copies the file's bytes";
}

TEST_F(MigrateOfflineStoppedTest, DiskSelectsOneFile) {
    auto o = options();
    o.disks = {"disk1"};
    auto r = migrate(o);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(dst_volumes(), std::vector<std::string>{"vm-b.qcow2"});
}

TEST_F(MigrateOfflineStoppedTest, RefusalsTouchNothing) {
    auto one = [&](const std::string& dev, const fs::path& path) {
        return options({{"disk0", raw.string(), std::nullopt}, {dev, path.string(), std::nullopt}});
    };
    expect_refused(one("disk1", dir / "vms" / "gone.raw"),
                   "disk1: " + (dir / "vms" / "gone.raw").string());
    expect_refused(one("disk0", qcow2), "disk disk0 is given twice");
    fs::create_directories(dir / "other");
    fs::copy_file(raw, dir / "other" / "vm-a.raw");
    expect_refused(one("disk1", dir / "other" / "vm-a.raw"), "both have a file named vm-a.raw");
    expect_refused(one("disk1", "nfs://nas/vms/x.raw"), "is not a local file");
    expect_refused(one("disk1", dir / "vms"), "is not a regular file");
    for (const auto& [magic, format] : std::vector<std::pair<std::string, std::string>>{
             {std::string("LUKS\xba\xbe\0\x02", 8), "luks"},
             {"vhdxfile", "vhdx"},
             {"conectix", "vpc"},
             {"KDMV\x01\0\0\0", "vmdk"}}) {
        const fs::path f = dir / "vms" / ("img-" + format);
        std::ofstream(f, std::ios::binary) << magic << std::string(4096, '\0');
        expect_refused(one("disk1", f), "is a " + format);
    }
    const fs::path fake = dir / "vms" / "fake.qcow2";
    std::ofstream(fake, std::ios::binary) << std::string(4096, 'x');
    expect_refused(one("disk1", fake), "named .qcow2 but has no qcow2 magic");
    auto o = options();
    o.disks = {"disk9"};
    expect_refused(o, "--disk disk9: no --src-disk disk9=PATH");
    EXPECT_EQ(migrate(one("disk1", qcow2)).has_value(), true) << "the same files do copy";
}

// QEMU's file-posix locks: a writer holds byte 101 (bytes 100 + perm bit).
TEST_F(MigrateOfflineStoppedTest, AFileAProcessHasOpenForWritingIsRefused) {
    LockHolder qemu(qcow2, {100, 101, 201});
    ASSERT_TRUE(qemu.ok);
    expect_refused(options(), "disk disk1: " + fs::canonical(qcow2).string() +
                                  " is in use: another process has it open for writing");
}

TEST_F(MigrateOfflineStoppedTest, AFileOpenOnlyForReadingIsCopied) {
    // A QEMU with the image read-only (readonly=on, a CD-ROM) holds byte
    // 100 and denies write to others (201): nothing changes the file.
    LockHolder reader(raw, {100, 201});
    ASSERT_TRUE(reader.ok);
    auto r = migrate(options());
    EXPECT_TRUE(r) << r.error().message;
}

TEST(ImageLock, KeepsAQemuFromOpeningTheImageForWritingUntilReleased) {
    const fs::path dir = jobs_test::temp_dir("image-lock");
    fs::create_directories(dir);
    const fs::path file = dir / "disk.raw";
    std::ofstream(file) << "data";
    LockHolder qemu(file, {});
    {
        auto lock = migrate::ImageLock::take(file.string());
        ASSERT_TRUE(lock) << lock.error().message;
        // A QEMU opening the image writable tests byte 201 ("Failed to get
        // "write" lock"); a reader tests 100 only against its own denials.
        EXPECT_FALSE(qemu.could_write_lock(201)) << "write is not shared";
        EXPECT_FALSE(qemu.could_write_lock(100)) << "consistent read held";
        EXPECT_TRUE(qemu.could_write_lock(101)) << "blockmig never holds write";
        auto moved = std::move(*lock);
        EXPECT_FALSE(qemu.could_write_lock(201)) << "a moved lock still holds";
    }
    EXPECT_TRUE(qemu.could_write_lock(201)) << "released with the lock";
    EXPECT_EQ(migrate::ImageLock::take((dir / "none").string()).error().code, ErrorCode::not_found);
    fs::remove_all(dir);
}

TEST_F(MigrateOfflineStoppedTest, AWriteErrorWhileCopyingDeletesTheCopies) {
    pool.use_faults({.fail_write_n = 2});
    const std::string raw_before = read_all(raw);
    auto r = migrate(options());
    ASSERT_FALSE(r);
    const std::string& m = r.error().message;
    EXPECT_NE(m.find("failed in phase copy"), std::string::npos) << m;
    EXPECT_NE(m.find("the destination volumes blockmig created were deleted"), std::string::npos)
        << m;
    EXPECT_NE(m.find("the guest was not running"), std::string::npos) << m;
    EXPECT_TRUE(dst_volumes().empty());
    EXPECT_EQ(read_all(raw), raw_before);
    EXPECT_TRUE(no_journal());
    // The locks ended with the job: the files can be started again.
    LockHolder qemu(raw, {});
    EXPECT_TRUE(qemu.could_write_lock(201));
}

// blockmig died mid-copy: the journal names the files; a new run on one of
// them is refused until `recover` deleted the copy.
TEST_F(MigrateOfflineStoppedTest, AnUnfinishedJobOnTheFilesIsRecoveredFirst) {
    jobs::Job job;
    job.kind = "offline";
    job.guest.files = {fs::canonical(raw).string()};
    job.disks.push_back({.disk = "disk0", .source = job.guest.files[0], .target = "mem:vm-a.raw"});
    jobs::UndoEnv env;
    env.resolve = [this](const std::string& url) { return opener().resolve_volume(url); };
    std::string id;
    {
        // The dead blockmig's part: its lock ends with it.
        auto journal = jobs::Journal::create(dir / "jobs", job);
        ASSERT_TRUE(journal);
        jobs::Effects effects(*journal, env);
        ASSERT_TRUE(
            effects.create_volume("disk0", *pool.mem, "vm-a.raw", 4096, pools::ImageFormat::raw));
        ASSERT_TRUE(journal->update([](jobs::Job& j) { j.disks[0].phase = "copying"; }));
        id = journal->job().id;
    }
    auto r = migrate(options());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("has an unfinished job " + id), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("not running, files " + job.guest.files[0]), std::string::npos)
        << r.error().message;
    auto reopened = jobs::Journal::open(dir / "jobs", id);
    ASSERT_TRUE(reopened) << reopened.error().message;
    EXPECT_EQ(reopened->job().guest.files, job.guest.files) << "kept in the journal";
    auto report = migrate::recover_offline(*reopened, env, dir / "jobs");
    ASSERT_TRUE(report) << report.error().message;
    EXPECT_NE(report->disks[0].reason.find("the guest was not running"), std::string::npos);
    EXPECT_TRUE(dst_volumes().empty());
    EXPECT_TRUE(no_journal());
    EXPECT_TRUE(migrate(options())) << "then it runs";
}

}  // namespace
