// The copy loop (nbdcopy's shape, libnbd copy/multi-thread-copying.c): one
// thread walks the allocation map and writes in order; reader threads fill
// a ring of request buffers ahead of it and mark all-zero 4 KiB blocks.
#include "pipeline.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "pools/image/buffer.hpp"

namespace blockmig::convert {

namespace {

using pools::image::ImageReader;
using pools::image::ImageWriter;
using pools::image::Range;
using pools::image::RangeKind;

constexpr std::uint64_t k_map_window = 1ull << 30;  // map() asked for 1 GiB at a time
constexpr std::size_t k_zero_block = 4096;

struct Request {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    bool data = false;
};

// Turns the allocation map into requests: data runs cut at request_size
// boundaries (so they line up with clusters and grains), zero runs whole.
class Requests {
  public:
    Requests(ImageReader& reader, std::uint64_t request_size)
        : m_reader(reader), m_request(request_size) {}

    Result<std::optional<Request>> next() {
        while (m_index >= m_ranges.size()) {
            if (m_mapped >= m_reader.virtual_size()) return std::optional<Request>{};
            auto ranges =
                m_reader.map(m_mapped, std::min(k_map_window, m_reader.virtual_size() - m_mapped));
            if (!ranges) return fail(ranges.error());
            if (ranges->empty())
                return fail(ErrorCode::protocol, "convert: the source's map is empty");
            m_ranges = std::move(*ranges);
            m_mapped = m_ranges.back().offset + m_ranges.back().length;
            m_index = 0;
            m_done_in_range = 0;
        }
        const Range& r = m_ranges[m_index];
        const std::uint64_t start = r.offset + m_done_in_range;
        std::uint64_t end = r.offset + r.length;
        if (r.kind == RangeKind::data) end = std::min(end, (start / m_request + 1) * m_request);
        m_done_in_range += end - start;
        if (m_done_in_range == r.length) ++m_index, m_done_in_range = 0;
        return std::optional<Request>{Request{start, end - start, r.kind == RangeKind::data}};
    }

  private:
    ImageReader& m_reader;
    std::uint64_t m_request;
    std::vector<Range> m_ranges;
    std::size_t m_index = 0;
    std::uint64_t m_done_in_range = 0;
    std::uint64_t m_mapped = 0;
};

Result<std::uint64_t> count_data(ImageReader& reader) {
    std::uint64_t data = 0;
    for (std::uint64_t pos = 0; pos < reader.virtual_size();) {
        auto ranges = reader.map(pos, std::min(k_map_window, reader.virtual_size() - pos));
        if (!ranges) return fail(ranges.error());
        if (ranges->empty()) break;
        for (const auto& r : *ranges)
            if (r.kind == RangeKind::data) data += r.length;
        pos = ranges->back().offset + ranges->back().length;
    }
    return data;
}

// A run inside a request: [offset, offset+length) relative to its start.
struct Run {
    std::size_t offset;
    std::size_t length;
    bool data;
};

struct Slot {
    Request request;
    std::span<std::byte> buffer;  // request_size bytes of Pipeline::m_memory
    std::vector<Run> runs;
    Result<void> status;
    bool ready = false;
};

bool all_zero(const std::byte* p, std::size_t n) {
    const auto* w = reinterpret_cast<const std::uint64_t*>(p);
    std::size_t i = 0;
    for (; i + 4 <= n / 8; i += 4)
        if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3]) != 0) return false;
    for (; i < n / 8; ++i)
        if (w[i] != 0) return false;
    for (std::size_t j = n / 8 * 8; j < n; ++j)
        if (p[j] != std::byte{0}) return false;
    return true;
}

// Splits a filled buffer of `length` bytes into data and zero runs at 4 KiB.
void find_runs(Slot& slot, std::size_t length) {
    slot.runs.clear();
    for (std::size_t pos = 0; pos < length; pos += k_zero_block) {
        const std::size_t n = std::min(k_zero_block, length - pos);
        const bool data = !all_zero(slot.buffer.data() + pos, n);
        if (!slot.runs.empty() && slot.runs.back().data == data)
            slot.runs.back().length += n;
        else
            slot.runs.push_back(Run{pos, n, data});
    }
}

std::uint64_t align512(std::uint64_t v) { return (v + 511) / 512 * 512; }

class Pipeline {
  public:
    Pipeline(ImageReader& source, ImageWriter& writer, const CopyOptions& options,
             const std::atomic<bool>& cancel)
        : m_source(source),
          m_writer(writer),
          m_options(options),
          m_cancel(cancel),
          m_slots(std::max(1u, options.in_flight)),
          m_memory(m_slots.size() * options.request_size) {
        for (std::size_t i = 0; i < m_slots.size(); ++i)
            m_slots[i].buffer =
                m_memory.span().subspan(i * options.request_size, options.request_size);
        unsigned readers = options.readers;
        if (readers == 0)
            readers = std::min(static_cast<unsigned>(m_slots.size()),
                               std::thread::hardware_concurrency() + 2);
        for (unsigned i = 0; i < std::max(1u, readers); ++i)
            m_threads.emplace_back([this] { read_loop(); });
    }
    ~Pipeline() {
        {
            std::lock_guard lock(m_mutex);
            m_stop = true;
        }
        m_work.notify_all();
        for (auto& t : m_threads) t.join();
    }

    Result<CopyStats> run(const CopyProgress& progress);

  private:
    void read_loop();
    Result<void> write_slot(Slot& slot, CopyStats& stats);

    ImageReader& m_source;
    ImageWriter& m_writer;
    CopyOptions m_options;
    const std::atomic<bool>& m_cancel;
    std::vector<Slot> m_slots;
    pools::image::PageBuffer m_memory;  // every slot's buffer, in one mapping
    std::mutex m_mutex;
    std::condition_variable m_work;
    std::condition_variable m_done;
    std::deque<std::size_t> m_queue;  // slot indexes waiting for a reader
    bool m_stop = false;
    std::vector<std::thread> m_threads;
};

void Pipeline::read_loop() {
    std::unique_lock lock(m_mutex);
    for (;;) {
        m_work.wait(lock, [&] { return m_stop || !m_queue.empty(); });
        if (m_stop) return;
        Slot& slot = m_slots[m_queue.front()];
        m_queue.pop_front();
        lock.unlock();
        const std::size_t length = static_cast<std::size_t>(slot.request.length);
        auto status = m_source.read(slot.buffer.first(length), slot.request.offset);
        if (status) {
            // The image's last sector may be partial: pad it with zeroes.
            const std::size_t padded = static_cast<std::size_t>(align512(length));
            std::fill(slot.buffer.begin() + static_cast<std::ptrdiff_t>(length),
                      slot.buffer.begin() + static_cast<std::ptrdiff_t>(padded), std::byte{0});
            find_runs(slot, length);
        }
        lock.lock();
        slot.status = std::move(status);
        slot.ready = true;
        m_done.notify_all();
    }
}

Result<void> Pipeline::write_slot(Slot& slot, CopyStats& stats) {
    const Request& rq = slot.request;
    if (!rq.data) {
        stats.zero_bytes += rq.length;
        return m_writer.write_zeroes(rq.offset, align512(rq.offset + rq.length) - rq.offset);
    }
    if (!slot.status) return fail(slot.status.error());
    for (const Run& run : slot.runs) {
        const std::uint64_t at = rq.offset + run.offset;
        const std::size_t len = static_cast<std::size_t>(align512(run.length));
        Result<void> r =
            run.data ? m_writer.write(
                           std::span<const std::byte>(slot.buffer).subspan(run.offset, len), at)
                     : m_writer.write_zeroes(at, len);
        if (!r) return r;
        if (!run.data) stats.zero_bytes += run.length;
    }
    stats.data_done += rq.length;
    return {};
}

Result<CopyStats> Pipeline::run(const CopyProgress& progress) {
    CopyStats stats;
    auto total = count_data(m_source);
    if (!total) return fail(total.error());
    stats.data_total = *total;
    Requests requests(m_source, m_options.request_size);
    std::uint64_t assigned = 0, written = 0;
    bool exhausted = false;
    const std::size_t n = m_slots.size();
    for (;;) {
        while (!exhausted && assigned < written + n) {
            auto rq = requests.next();
            if (!rq) return fail(rq.error());
            if (!*rq) {
                exhausted = true;
                break;
            }
            std::lock_guard lock(m_mutex);
            Slot& slot = m_slots[assigned % n];
            slot.request = **rq;
            slot.ready = !slot.request.data;
            if (slot.request.data) {
                m_queue.push_back(assigned % n);
                m_work.notify_one();
            }
            ++assigned;
        }
        if (written == assigned) break;
        Slot& slot = m_slots[written % n];
        {
            std::unique_lock lock(m_mutex);
            while (!slot.ready) {
                if (m_cancel.load()) return fail(ErrorCode::cancelled, "convert: interrupted");
                m_done.wait_for(lock, std::chrono::milliseconds(100));
            }
        }
        if (m_cancel.load()) return fail(ErrorCode::cancelled, "convert: interrupted");
        if (auto r = write_slot(slot, stats); !r) return fail(r.error());
        ++written;
        if (progress) progress(stats);
    }
    return stats;
}

}  // namespace

Result<CopyStats> copy_image(ImageReader& source, ImageWriter& writer, const CopyOptions& options,
                             const CopyProgress& progress, const std::atomic<bool>& cancel) {
    if (options.request_size == 0 || options.request_size % k_zero_block != 0)
        return fail(ErrorCode::invalid_argument,
                    "convert: request size must be a multiple of 4 KiB");
    Pipeline pipeline(source, writer, options, cancel);
    return pipeline.run(progress);
}

}  // namespace blockmig::convert
