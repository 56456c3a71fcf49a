// Shared by the pools_*_test integration tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "lab.hpp"
#include "pools/pool.hpp"

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

}  // namespace pools_test
