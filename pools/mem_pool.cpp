// Volumes in memory, for unit tests of code built on Pool.
#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

#include "common.hpp"
#include "pools/image_format.hpp"
#include "pools/pools.hpp"

namespace blockmig::pools {

namespace {

constexpr std::uint64_t k_block = 4096;

struct MemData {
    std::mutex mutex;
    std::vector<std::byte> bytes;
    std::vector<bool> allocated;  // per k_block block

    void resize(std::uint64_t size) {
        bytes.resize(size);
        allocated.resize((size + k_block - 1) / k_block, false);
    }
    std::uint64_t allocated_bytes() const {
        return static_cast<std::uint64_t>(std::count(allocated.begin(), allocated.end(), true)) *
               k_block;
    }
};

class MemVolume final : public Volume {
  public:
    MemVolume(std::shared_ptr<MemData> data, bool writable)
        : m_data(std::move(data)), m_writable(writable) {}

    std::uint64_t size() const override {
        std::lock_guard lock(m_data->mutex);
        return m_data->bytes.size();
    }

    Result<std::size_t> pread(std::span<std::byte> buf, std::uint64_t offset) override {
        std::lock_guard lock(m_data->mutex);
        if (offset >= m_data->bytes.size()) return 0;
        std::size_t n = static_cast<std::size_t>(
            std::min<std::uint64_t>(buf.size(), m_data->bytes.size() - offset));
        std::memcpy(buf.data(), m_data->bytes.data() + offset, n);
        return n;
    }

    Result<void> pwrite(std::span<const std::byte> buf, std::uint64_t offset) override {
        if (!m_writable) return fail(ErrorCode::invalid_state, "mem: volume opened read-only");
        std::lock_guard lock(m_data->mutex);
        if (offset + buf.size() > m_data->bytes.size()) m_data->resize(offset + buf.size());
        std::memcpy(m_data->bytes.data() + offset, buf.data(), buf.size());
        mark(offset, buf.size(), true);
        return {};
    }

    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        if (!m_writable) return fail(ErrorCode::invalid_state, "mem: volume opened read-only");
        std::lock_guard lock(m_data->mutex);
        if (offset + length > m_data->bytes.size()) m_data->resize(offset + length);
        std::memset(m_data->bytes.data() + offset, 0, length);
        // Only whole blocks become holes; partial ones stay allocated (zeroed).
        std::uint64_t first = (offset + k_block - 1) / k_block, last = (offset + length) / k_block;
        for (std::uint64_t b = first; b < last; ++b) m_data->allocated[b] = false;
        return {};
    }

    Result<void> discard(std::uint64_t offset, std::uint64_t length) override {
        {
            std::lock_guard lock(m_data->mutex);
            if (offset >= m_data->bytes.size()) return {};
            length = std::min<std::uint64_t>(length, m_data->bytes.size() - offset);
        }
        return write_zeroes(offset, length);
    }

    Result<void> flush() override { return {}; }

    Result<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length) override {
        std::lock_guard lock(m_data->mutex);
        std::vector<Extent> extents;
        const std::uint64_t end = std::min<std::uint64_t>(offset + length, m_data->bytes.size());
        for (std::uint64_t pos = offset; pos < end;) {
            const std::uint64_t block_end = std::min(end, (pos / k_block + 1) * k_block);
            detail::append_extent(extents,
                                  {pos, block_end - pos, bool(m_data->allocated[pos / k_block])});
            pos = block_end;
        }
        return extents;
    }

  private:
    void mark(std::uint64_t offset, std::uint64_t length, bool value) {
        if (length == 0) return;
        for (std::uint64_t b = offset / k_block; b <= (offset + length - 1) / k_block; ++b) {
            m_data->allocated[b] = value;
        }
    }

    std::shared_ptr<MemData> m_data;
    bool m_writable;
};

class MemPool final : public Pool {
  public:
    explicit MemPool(std::uint64_t capacity) : m_capacity(capacity) {}

    std::string_view type() const override { return "mem"; }
    std::string url() const override { return "mem:"; }

    Result<std::vector<VolumeInfo>> list_volumes() override {
        std::vector<std::string> names;
        {
            std::lock_guard lock(m_mutex);
            for (const auto& [name, entry] : m_volumes) names.push_back(name);
        }
        return detail::stat_each(*this, names);
    }

    Result<VolumeInfo> stat(std::string_view name) override {
        auto data = find(name);
        if (!data) return fail(data.error());
        MemVolume volume(*data, false);
        auto probed = probe_image(volume);
        if (!probed) return fail(probed.error());
        std::lock_guard lock((*data)->mutex);
        return VolumeInfo{std::string(name), probed->virtual_size, (*data)->allocated_bytes(),
                          probed->format};
    }

    Result<VolumeInfo> create(std::string_view name, std::uint64_t size,
                              ImageFormat format) override {
        if (auto r = detail::check_file_name("mem", name); !r) return fail(r.error());
        if (format != ImageFormat::raw && format != ImageFormat::qcow2) {
            return fail(
                ErrorCode::invalid_argument,
                fmt::format("mem: cannot create {} volumes (raw or qcow2)", to_string(format)));
        }
        auto data = std::make_shared<MemData>();
        {
            std::lock_guard lock(m_mutex);
            if (m_volumes.contains(std::string(name))) {
                return fail(ErrorCode::already_exists,
                            fmt::format("mem: volume '{}' already exists", name));
            }
            if (size > m_capacity - reserved_locked()) {
                return fail(ErrorCode::no_space,
                            fmt::format("mem: no space for '{}': {} bytes wanted, {} free", name,
                                        size, m_capacity - reserved_locked()));
            }
            m_volumes[std::string(name)] = Entry{data, size};
        }
        if (format == ImageFormat::raw) {
            data->resize(size);
        } else {
            MemVolume volume(data, true);
            if (auto r = write_empty_qcow2(volume, size); !r) {
                std::lock_guard lock(m_mutex);
                m_volumes.erase(std::string(name));
                return fail(r.error().with_context(fmt::format("mem: create '{}'", name)));
            }
        }
        return stat(name);
    }

    Result<void> remove(std::string_view name) override {
        std::lock_guard lock(m_mutex);
        if (m_volumes.erase(std::string(name)) == 0) {
            return fail(ErrorCode::not_found, fmt::format("mem: volume '{}' does not exist", name));
        }
        return {};
    }

    Result<void> rename(std::string_view from, std::string_view to) override {
        if (auto r = detail::check_file_name("mem", to); !r) return fail(r.error());
        std::lock_guard lock(m_mutex);
        auto it = m_volumes.find(std::string(from));
        if (it == m_volumes.end())
            return fail(ErrorCode::not_found, fmt::format("mem: volume '{}' does not exist", from));
        if (m_volumes.contains(std::string(to)))
            return fail(ErrorCode::already_exists,
                        fmt::format("mem: volume '{}' already exists", to));
        auto node = m_volumes.extract(it);
        node.key() = std::string(to);
        m_volumes.insert(std::move(node));
        return {};
    }

    Result<void> resize(std::string_view name, std::uint64_t size) override {
        std::lock_guard lock(m_mutex);
        auto it = m_volumes.find(std::string(name));
        if (it == m_volumes.end())
            return fail(ErrorCode::not_found, fmt::format("mem: volume '{}' does not exist", name));
        const std::uint64_t others = reserved_locked() - it->second.reserved;
        if (size > m_capacity - others) {
            return fail(ErrorCode::no_space,
                        fmt::format("mem: no space to grow '{}' to {} bytes", name, size));
        }
        it->second.reserved = size;
        std::lock_guard data_lock(it->second.data->mutex);
        it->second.data->resize(size);
        return {};
    }

    Result<Capacity> capacity() override {
        std::lock_guard lock(m_mutex);
        return Capacity{m_capacity, m_capacity - reserved_locked()};
    }

    Result<std::unique_ptr<Volume>> open(std::string_view name, bool writable) override {
        auto data = find(name);
        if (!data) return fail(data.error());
        return std::make_unique<MemVolume>(*data, writable);
    }

    Result<BlockdevChain> describe_for_qemu(std::string_view name,
                                            const QemuNodeOptions&) override {
        return fail(
            ErrorCode::unsupported,
            fmt::format("mem: volume '{}' lives in this process; QEMU cannot open it", name));
    }

    std::string url_of(std::string_view name) const override { return fmt::format("mem:{}", name); }

  private:
    struct Entry {
        std::shared_ptr<MemData> data;
        std::uint64_t reserved = 0;
    };

    std::uint64_t reserved_locked() const {
        std::uint64_t sum = 0;
        for (const auto& [name, entry] : m_volumes) sum += entry.reserved;
        return sum;
    }

    Result<std::shared_ptr<MemData>> find(std::string_view name) {
        std::lock_guard lock(m_mutex);
        auto it = m_volumes.find(std::string(name));
        if (it == m_volumes.end())
            return fail(ErrorCode::not_found, fmt::format("mem: volume '{}' does not exist", name));
        return it->second.data;
    }

    std::mutex m_mutex;
    std::uint64_t m_capacity;
    std::map<std::string, Entry> m_volumes;
};

}  // namespace

std::unique_ptr<Pool> make_mem_pool(std::uint64_t capacity) {
    return std::make_unique<MemPool>(capacity);
}

}  // namespace blockmig::pools
