#include "offline_copy.hpp"

#include <fmt/core.h>

#include <future>

#include "convert/digest.hpp"
#include "convert/pipeline.hpp"
#include "pools/image/open.hpp"
#include "pools/image/qcow2.hpp"
#include "pools/image/raw.hpp"

namespace blockmig::migrate {

namespace {

using namespace pools::image;

std::uint64_t align512(std::uint64_t v) { return (v + 511) / 512 * 512; }

Result<std::unique_ptr<ImageWriter>> make_writer(const OfflineDisk& disk, pools::Pool& pool,
                                                 const std::string& target) {
    auto volume = pool.open(target, true);
    if (!volume) return fail(volume.error());
    if (disk.format == pools::ImageFormat::qcow2)
        return create_qcow2_writer(std::move(*volume), disk.size, Qcow2WriteOptions{});
    // A volume made for this copy reads as zeroes: holes need no I/O.
    return create_raw_writer(std::move(*volume), align512(disk.size), RawWriteOptions{true});
}

Result<std::uint64_t> copy(const OfflineDisk& disk, ImageReader& reader, pools::Pool& pool,
                           const std::string& target, unsigned in_flight,
                           const DiskProgress& progress, const std::atomic<bool>& cancel) {
    auto writer = make_writer(disk, pool, target);
    if (!writer) return fail(writer.error());
    convert::CopyOptions options;
    options.in_flight = in_flight;
    options.target_size = align512(disk.size);
    auto stats = convert::copy_image(
        reader, **writer, options,
        [&](const convert::CopyStats& s) { progress("copy", s.data_done, s.data_total); }, cancel);
    if (!stats) return fail(stats.error());
    if (cancel.load()) return fail(ErrorCode::cancelled, "interrupted");
    if (auto r = (*writer)->finish(); !r) return fail(r.error());
    return stats->data_done;
}

// Both digests at once (source and copy usually sit on different storage).
Result<std::string> verify(const OfflineDisk& disk, ImageReader& source, pools::Pool& pool,
                           const std::string& target, const DiskProgress& progress,
                           const std::atomic<bool>& cancel) {
    auto copy = open_image(pool, target, disk.format);
    if (!copy) return fail(copy.error().with_context("open the copy"));
    auto theirs = std::async(std::launch::async,
                             [&] { return convert::image_digest(source, disk.size, cancel); });
    auto ours = convert::image_digest(**copy, disk.size, cancel, [&](std::uint64_t done) {
        progress("verify", done, disk.size);
    });
    auto src = theirs.get();
    if (!src) return fail(src.error().with_context("digest of the source"));
    if (!ours) return fail(ours.error().with_context("digest of the copy"));
    if (*src != *ours)
        return fail(ErrorCode::io_error,
                    fmt::format("digest mismatch: source sha256 {}, copy sha256 {}", *src, *ours));
    return *src;
}

}  // namespace

Result<DiskCopied> copy_and_verify(const OfflineDisk& disk, pools::VolumeRef& source,
                                   pools::Pool& pool, const std::string& target, unsigned in_flight,
                                   const DiskProgress& progress, const std::atomic<bool>& cancel) {
    auto ctx = [&](const Error& e) { return fail(e.with_context("disk " + disk.device)); };
    auto reader = open_image(*source.pool, source.name, disk.format);
    if (!reader) return ctx(reader.error());
    DiskCopied out;
    auto copied = copy(disk, **reader, pool, target, in_flight, progress, cancel);
    if (!copied) return ctx(copied.error());
    out.data_bytes = *copied;
    auto digest = verify(disk, **reader, pool, target, progress, cancel);
    if (!digest) return ctx(digest.error());
    out.digest = *digest;
    return out;
}

}  // namespace blockmig::migrate
