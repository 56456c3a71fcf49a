// Fault injection (leveldb's ErrorEnv): a PoolWrapper whose volumes fail the
// Nth write, return short reads or stall, and whose create / remove fail on
// demand, so callers' error paths get tested.
#include <fmt/core.h>

#include <atomic>
#include <thread>

#include "pools/pools.hpp"

namespace blockmig::pools {

namespace {

struct FaultState {
    FaultPlan plan;
    std::atomic<std::uint64_t> writes{0};
};

class FaultVolume final : public Volume {
  public:
    FaultVolume(std::unique_ptr<Volume> target, std::shared_ptr<FaultState> state)
        : m_target(std::move(target)), m_state(std::move(state)) {}

    std::uint64_t size() const override { return m_target->size(); }
    std::uint32_t block_size() const override { return m_target->block_size(); }

    Result<std::size_t> pread(std::span<std::byte> buf, std::uint64_t offset) override {
        stall();
        if (m_state->plan.short_read_max > 0 && buf.size() > m_state->plan.short_read_max) {
            buf = buf.first(m_state->plan.short_read_max);
        }
        return m_target->pread(buf, offset);
    }
    Result<void> pwrite(std::span<const std::byte> buf, std::uint64_t offset) override {
        stall();
        if (auto r = count_write(offset); !r) return r;
        return m_target->pwrite(buf, offset);
    }
    Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) override {
        stall();
        if (auto r = count_write(offset); !r) return r;
        return m_target->write_zeroes(offset, length);
    }
    Result<void> discard(std::uint64_t offset, std::uint64_t length) override {
        stall();
        return m_target->discard(offset, length);
    }
    Result<void> flush() override {
        stall();
        return m_target->flush();
    }
    Result<std::vector<Extent>> block_status(std::uint64_t offset, std::uint64_t length) override {
        stall();
        return m_target->block_status(offset, length);
    }

  private:
    void stall() const {
        if (m_state->plan.stall.count() > 0) std::this_thread::sleep_for(m_state->plan.stall);
    }
    Result<void> count_write(std::uint64_t offset) {
        const std::uint64_t n = ++m_state->writes;
        if (m_state->plan.fail_write_n != 0 && n == m_state->plan.fail_write_n) {
            return fail(
                m_state->plan.write_error,
                fmt::format("fault: injected failure of write #{} at offset {}", n, offset));
        }
        return {};
    }

    std::unique_ptr<Volume> m_target;
    std::shared_ptr<FaultState> m_state;
};

class FaultPool final : public PoolWrapper {
  public:
    FaultPool(std::unique_ptr<Pool> target, FaultPlan plan)
        : PoolWrapper(std::move(target)), m_state(std::make_shared<FaultState>()) {
        m_state->plan = plan;
    }

    Result<VolumeInfo> create(std::string_view name, std::uint64_t size,
                              ImageFormat format) override {
        if (auto code = m_state->plan.create_error)
            return fail(*code, fmt::format("fault: injected failure of create '{}'", name));
        return PoolWrapper::create(name, size, format);
    }
    Result<void> remove(std::string_view name) override {
        if (auto code = m_state->plan.remove_error)
            return fail(*code, fmt::format("fault: injected failure of remove '{}'", name));
        return PoolWrapper::remove(name);
    }
    Result<std::unique_ptr<Volume>> open(std::string_view name, bool writable) override {
        auto volume = PoolWrapper::open(name, writable);
        if (!volume) return fail(volume.error());
        return std::make_unique<FaultVolume>(std::move(*volume), m_state);
    }

  private:
    std::shared_ptr<FaultState> m_state;
};

}  // namespace

std::unique_ptr<Pool> make_fault_pool(std::unique_ptr<Pool> target, FaultPlan plan) {
    return std::make_unique<FaultPool>(std::move(target), plan);
}

}  // namespace blockmig::pools
