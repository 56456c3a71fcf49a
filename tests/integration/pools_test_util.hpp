// Shared by the pools_*_test integration tests.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "frozen.hpp"
#include "lab.hpp"
#include "pools/pool.hpp"
#include "pools/pools.hpp"

namespace pools_test {

inline std::vector<std::byte> pattern(std::size_t size, std::uint8_t seed) {
    std::vector<std::byte> out(size);
    for (std::size_t i = 0; i < size; ++i)
        out[i] = static_cast<std::byte>(((i >> 9) * 131 + i * 7 + seed) & 0xff);
    return out;
}

// The chain as one nested `json:` filename for qemu-img / qemu-io, so tests
// check that QEMU accepts exactly the options describe_for_qemu produced.
inline std::string json_filename(const blockmig::pools::BlockdevChain& chain) {
    nlohmann::json nested = chain.format;
    nested["file"] = chain.protocol;
    return "json:" + nested.dump();
}

// A local raw file of `size` bytes with `data` at `offset`: the oracle for
// `qemu-img compare`.
inline void write_local_copy(const std::filesystem::path& path, std::uint64_t size,
                             const std::vector<std::byte>& data, std::uint64_t offset) {
    blockmig::lab::run_ok({"truncate", "-s", std::to_string(size), path.string()});
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// Runs the blockmig binary.
inline blockmig::lab::CommandResult blockmig_cli(std::vector<std::string> args) {
    args.insert(args.begin(), BLOCKMIG_BINARY);
    return blockmig::lab::run(args);
}

// One pool or volume call, as the deadline tests run it.
struct PoolCall {
    std::string name;
    std::function<std::optional<blockmig::Error>()> run;  // the error, or nullopt on success
};

template <typename T>
std::optional<blockmig::Error> error_of(const blockmig::Result<T>& r) {
    if (r) return std::nullopt;
    return r.error();
}

// Every kind of call a move makes against a pool: `existing` names a volume
// that exists (and `volume` is it, opened writable before the server went
// away); `fresh` names one that does not.
inline std::vector<PoolCall> every_pool_call(blockmig::pools::Pool& pool,
                                             blockmig::pools::Volume& volume,
                                             const std::string& existing,
                                             const std::string& fresh) {
    using blockmig::pools::ImageFormat;
    return {
        {"stat", [&] { return error_of(pool.stat(existing)); }},
        {"list_volumes", [&] { return error_of(pool.list_volumes()); }},
        {"capacity", [&] { return error_of(pool.capacity()); }},
        {"create", [&, fresh] { return error_of(pool.create(fresh, 1 << 20, ImageFormat::raw)); }},
        {"remove", [&] { return error_of(pool.remove(existing)); }},
        {"open+pread",
         [&] {
             auto v = pool.open(existing, false);
             if (!v) return std::optional(v.error());
             std::vector<std::byte> buf(4096);
             return error_of((*v)->pread(buf, 0));
         }},
        {"pread (opened before)",
         [&] {
             std::vector<std::byte> buf(4096);
             return error_of(volume.pread(buf, 0));
         }},
        {"pwrite (opened before)",
         [&] {
             std::vector<std::byte> buf(4096, std::byte{1});
             return error_of(volume.pwrite(buf, 0));
         }},
        {"flush (opened before)", [&] { return error_of(volume.flush()); }},
    };
}

// Runs every call; each must fail, within `bound`, with `code` if given.
inline void expect_each_fails_within(const std::vector<PoolCall>& calls,
                                     std::chrono::milliseconds bound,
                                     std::optional<blockmig::ErrorCode> code = std::nullopt) {
    for (const auto& call : calls) {
        const auto start = std::chrono::steady_clock::now();
        auto error = call.run();
        const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - start);
        ASSERT_TRUE(error.has_value()) << call.name << " succeeded against a dead server";
        EXPECT_LE(took, bound) << call.name << " took " << took.count()
                               << " ms: " << error->message;
        if (code) {
            EXPECT_EQ(error->code, *code)
                << call.name << ": " << blockmig::to_string(error->code) << ": " << error->message;
        }
        std::cerr << "  " << call.name << ": " << took.count() << " ms, "
                  << blockmig::to_string(error->code) << ": " << error->message << "\n";
    }
}

// The dead-server tests give every call a short deadline and allow this much.
inline constexpr auto k_deadline = std::chrono::seconds(3);
inline constexpr auto k_bound = k_deadline + std::chrono::seconds(2);

inline blockmig::pools::PoolsConfig deadline_config() {
    blockmig::pools::PoolsConfig config;
    config.options.timeout = k_deadline;
    return config;
}

// What the dead-server tests start from: a pool opened with the short
// deadline, `name` created in it and opened writable.
struct PoolWithVolume {
    std::unique_ptr<blockmig::pools::Pool> pool;
    std::unique_ptr<blockmig::pools::Volume> volume;
};

inline void open_with_deadline(const std::string& url, const std::string& name, std::uint64_t size,
                               blockmig::pools::ImageFormat format, PoolWithVolume& out) {
    auto pool = blockmig::pools::open_pool(url, deadline_config());
    ASSERT_TRUE(pool) << pool.error().message;
    auto created = (*pool)->create(name, size, format);
    ASSERT_TRUE(created) << created.error().message;
    auto volume = (*pool)->open(name, true);
    ASSERT_TRUE(volume) << volume.error().message;
    out.pool = std::move(*pool);
    out.volume = std::move(*volume);
}

// Opening the pool afresh fails too, within the bound (with `code` if given).
inline void expect_reopen_fails_within_bound(
    const std::string& url, std::optional<blockmig::ErrorCode> code = std::nullopt) {
    const auto start = std::chrono::steady_clock::now();
    auto again = blockmig::pools::open_pool(url, deadline_config());
    ASSERT_FALSE(again);
    if (code) {
        EXPECT_EQ(again.error().code, *code) << again.error().message;
    }
    EXPECT_LE(std::chrono::steady_clock::now() - start, k_bound);
}

}  // namespace pools_test
