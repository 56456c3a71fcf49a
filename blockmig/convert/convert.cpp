// run_convert: open the source, create the target, copy, finish; remove the
// target again on any failure or interruption. File targets are written
// under a hidden partial name and renamed only once complete, so even a
// killed process never leaves a half-written file under the final name.
#include "blockmig/convert.hpp"

#include <fmt/core.h>

#include <chrono>
#include <random>

#include "pipeline.hpp"
#include "pools/image/open.hpp"
#include "pools/image/raw.hpp"

namespace blockmig {

namespace {

using namespace pools;
using namespace pools::image;

std::uint64_t align512(std::uint64_t v) { return (v + 511) / 512 * 512; }

// Removes the target unless released: the one cleanup path for errors,
// cancellation and early returns.
class TargetGuard {
  public:
    TargetGuard(Pool& pool, std::string name) : m_pool(pool), m_name(std::move(name)) {}
    ~TargetGuard() {
        if (m_armed) (void)m_pool.remove(m_name);
    }
    void release() { m_armed = false; }

  private:
    Pool& m_pool;
    std::string m_name;
    bool m_armed = true;
};

// `.NAME.blockmig-partial-XXXXXXXX`: hidden from volume lists, visibly
// partial, and in the same directory so the final rename stays atomic.
std::string partial_name(std::string_view name) {
    constexpr std::size_t k_overhead = 1 + 18 + 8;  // ".", ".blockmig-partial-", hex
    const std::string_view stem = name.substr(0, 255 - k_overhead);
    std::random_device random;
    return fmt::format(".{}.blockmig-partial-{:08x}", stem, random());
}

// already_exists if `name` is taken: checked before copying so a clash
// fails in a second, not after the whole conversion.
Result<void> check_absent(Pool& pool, std::string_view name) {
    auto info = pool.stat(name);
    if (info)
        return fail(ErrorCode::already_exists,
                    fmt::format("{}: volume already exists", pool.url_of(name)));
    if (info.error().code != ErrorCode::not_found) return fail(info.error());
    return {};
}

Result<std::unique_ptr<ImageWriter>> make_writer(const ConvertOptions& o,
                                                 std::unique_ptr<Volume> volume, std::uint64_t size,
                                                 bool zeroed) {
    switch (o.target_format) {
        case ImageFormat::raw:
            return create_raw_writer(std::move(volume), size, RawWriteOptions{zeroed});
        case ImageFormat::qcow2:
            return create_qcow2_writer(std::move(volume), size, o.qcow2);
        case ImageFormat::vmdk:
            return create_vmdk_writer(std::move(volume), size, o.vmdk);
        case ImageFormat::unknown:
            break;
    }
    return fail(ErrorCode::invalid_argument, "convert: unknown target format");
}

// Progress every ~200 ms at most, and once at the end.
class Reporter {
  public:
    Reporter(ProgressSink& sink, std::string item) : m_sink(sink), m_item(std::move(item)) {}
    void operator()(const convert::CopyStats& s, bool last = false) {
        const auto now = std::chrono::steady_clock::now();
        if (!last && now - m_last < std::chrono::milliseconds(200)) return;
        m_last = now;
        m_meter.add(now, s.data_done);
        ProgressSample sample{
            m_item,         "convert",
            s.data_done,    s.data_total,
            m_meter.rate(), m_meter.eta(s.data_total - std::min(s.data_total, s.data_done))};
        m_sink.progress(sample);
    }

  private:
    ProgressSink& m_sink;
    std::string m_item;
    RateMeter m_meter;
    std::chrono::steady_clock::time_point m_last{};
};

}  // namespace

Result<ConvertReport> run_convert(const ConvertOptions& o, ProgressSink& progress,
                                  const std::atomic<bool>& cancel) {
    const auto started = std::chrono::steady_clock::now();
    auto src = resolve_volume(o.source, o.pools);
    if (!src) return fail(src.error());
    auto reader = open_image(*src->pool, src->name, o.source_format);
    if (!reader) return fail(reader.error());
    auto dst = resolve_volume(o.target, o.pools);
    if (!dst) return fail(dst.error());

    ConvertReport report;
    report.source = src->pool->url_of(src->name);
    report.target = dst->pool->url_of(dst->name);
    report.source_format = std::string(to_string((*reader)->info().format));
    report.virtual_size = (*reader)->virtual_size();
    if (report.virtual_size == 0)
        return fail(ErrorCode::invalid_argument, report.source + ": the image is empty");
    if (report.source == report.target)
        return fail(ErrorCode::invalid_argument,
                    report.target + ": source and target are the same volume");
    const std::uint64_t size = align512(report.virtual_size);
    const bool lun = dst->pool->type() == "iscsi";

    // Files: written under a partial name, renamed at the end (never
    // overwriting: already_exists if the name is taken). LUNs: the pool
    // hands out only an unused one, written in place.
    if (!lun) {
        if (auto r = check_absent(*dst->pool, dst->name); !r)
            return fail(r.error().with_context("convert: target"));
    }
    const std::string write_name = lun ? dst->name : partial_name(dst->name);
    auto created = dst->pool->create(write_name, o.target_format == ImageFormat::raw ? size : 0,
                                     ImageFormat::raw);
    if (!created) return fail(created.error().with_context("convert: create target"));
    TargetGuard guard(*dst->pool, created->name);
    report.onto_lun = lun;
    if (lun)
        progress.event(
            "target", {{"lun", report.target}, {"size", created->virtual_size}},
            fmt::format("writing onto unused LUN {} ({} bytes); its previous contents are replaced",
                        report.target, created->virtual_size));
    auto volume = dst->pool->open(created->name, true);
    if (!volume) return fail(volume.error());
    auto writer = make_writer(o, std::move(*volume), size, !lun);
    if (!writer) return fail(writer.error().with_context(report.target));

    Reporter reporter(progress, report.target);
    convert::CopyOptions copy;
    copy.request_size = o.request_size;
    copy.in_flight = o.in_flight;
    copy.target_size = size;
    auto stats = convert::copy_image(
        **reader, **writer, copy, [&](const convert::CopyStats& s) { reporter(s); }, cancel);
    if (!stats)
        return fail(stats.error().with_context(
            fmt::format("convert {} -> {}", report.source, report.target)));
    if (cancel.load()) return fail(ErrorCode::cancelled, "convert: interrupted");
    if (auto r = (*writer)->finish(); !r)
        return fail(r.error().with_context(fmt::format("convert: finish {}", report.target)));
    writer->reset();
    const std::string final_name = lun ? created->name : dst->name;
    if (!lun) {
        if (auto r = dst->pool->rename(created->name, final_name); !r)
            return fail(r.error().with_context(fmt::format("convert: finish {}", report.target)));
    }
    reporter(*stats, true);
    guard.release();

    report.data_bytes = stats->data_done;
    report.zero_bytes = stats->zero_bytes;
    if (auto info = dst->pool->stat(final_name)) report.target_allocated = info->allocated_bytes;
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return report;
}

}  // namespace blockmig
