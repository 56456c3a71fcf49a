// Shared writer pieces (see vmdk_write_common.hpp).
#include "vmdk_write_common.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "vmdk_format.hpp"

namespace blockmig::pools::image::vmdk {

namespace {
constexpr std::size_t k_sink_buffer = 1 << 20;
}

Result<void> check_write_options(const VmdkWriteOptions& o, std::uint64_t virtual_size) {
    auto bad = [](std::string_view what) {
        return fail(ErrorCode::invalid_argument, fmt::format("vmdk: {}", what));
    };
    if (o.subformat != "streamOptimized" && o.subformat != "monolithicSparse")
        return bad(fmt::format(
            "subformat '{}' (blockmig writes streamOptimized or monolithicSparse)", o.subformat));
    static constexpr std::string_view adapters[] = {"ide", "buslogic", "lsilogic", "legacyESX",
                                                    "pvscsi"};
    if (std::find(std::begin(adapters), std::end(adapters), o.adapter_type) == std::end(adapters))
        return bad(fmt::format("adapter_type '{}' (ide, buslogic, lsilogic, legacyESX or pvscsi)",
                               o.adapter_type));
    if (o.hw_version < 1 || o.hw_version > 99)
        return bad(fmt::format("hwversion {} is out of range", o.hw_version));
    if (o.compression_level < 0 || o.compression_level > 12)
        return bad(fmt::format("compression level {} (0 to 12)", o.compression_level));
    if (virtual_size == 0 || virtual_size % k_sector != 0)
        return bad(fmt::format("virtual size {} is not a positive multiple of 512", virtual_size));
    // Grain table entries are 32-bit sector numbers, so the file itself must
    // stay below 2 TiB (checked while writing); capping the capacity at 64 TiB
    // bounds the grain directory kept in memory.
    if (virtual_size / k_sector > (std::uint64_t{1} << 37))
        return bad(fmt::format("virtual size {} is too large for a VMDK", virtual_size));
    return {};
}

std::string make_descriptor(const std::string& create_type, std::uint64_t capacity,
                            const VmdkWriteOptions& o) {
    std::random_device rd;
    std::mt19937_64 rng((std::uint64_t{rd()} << 32) ^ rd());
    std::uint32_t cid;
    do {  // ffffffff means "no parent" and fffffffe "disk full of zeroes" to some readers
        cid = static_cast<std::uint32_t>(rng());
    } while (cid >= 0xfffffffe);
    const bool ide = o.adapter_type == "ide";
    const std::uint64_t heads = ide ? 16 : 255, sectors = 63;
    const std::uint64_t cylinders = std::min<std::uint64_t>(
        (capacity + heads * sectors - 1) / (heads * sectors), ide ? 16383 : 65535);
    std::string uuid;
    for (int i = 0; i < 16; ++i)
        uuid += fmt::format("{}{:02x}", i == 0 ? "" : i == 8 ? "-" : " ", rng() & 0xff);
    return fmt::format(
        "# Disk DescriptorFile\n"
        "version=1\n"
        "encoding=\"UTF-8\"\n"
        "CID={:08x}\n"
        "parentCID=ffffffff\n"
        "createType=\"{}\"\n"
        "\n"
        "# Extent description\n"
        "RW {} SPARSE \"disk.vmdk\"\n"
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        "ddb.adapterType = \"{}\"\n"
        "ddb.geometry.cylinders = \"{}\"\n"
        "ddb.geometry.heads = \"{}\"\n"
        "ddb.geometry.sectors = \"{}\"\n"
        "ddb.longContentID = \"{:08x}{:08x}{:08x}{:08x}\"\n"
        "ddb.uuid = \"{}\"\n"
        "ddb.virtualHWVersion = \"{}\"\n",
        cid, create_type, capacity, o.adapter_type, cylinders, heads, sectors,
        static_cast<std::uint32_t>(rng()), static_cast<std::uint32_t>(rng()),
        static_cast<std::uint32_t>(rng()), cid, uuid, o.hw_version);
}

bool all_zero(std::span<const std::byte> b) {
    const std::byte* p = b.data();
    std::size_t n = b.size();
    for (; n >= 8; p += 8, n -= 8) {
        std::uint64_t v;
        std::memcpy(&v, p, 8);
        if (v) return false;
    }
    for (; n; --n, ++p)
        if (*p != std::byte{0}) return false;
    return true;
}

Result<void> Sink::append(std::span<const std::byte> data) {
    m_buffer.insert(m_buffer.end(), data.begin(), data.end());
    m_pos += data.size();
    if (m_buffer.size() >= k_sink_buffer) return flush();
    return {};
}

Result<void> Sink::pad_to_sector() {
    const std::size_t rem = m_pos % k_sector;
    if (rem == 0) return {};
    std::vector<std::byte> zero(k_sector - rem);
    return append(zero);
}

Result<void> Sink::flush() {
    if (m_buffer.empty()) return {};
    if (auto r = m_volume.pwrite(m_buffer, m_base); !r)
        return fail(r.error().with_context("vmdk: write"));
    m_base += m_buffer.size();
    m_buffer.clear();
    return {};
}

}  // namespace blockmig::pools::image::vmdk
