#include "names.hpp"

#include <fmt/core.h>
#include <sys/random.h>

#include <cctype>
#include <cstdint>
#include <random>

namespace blockmig::jobs {

namespace {

constexpr std::size_t k_max_plain_tag = 12;

// FNV-1a: stable across runs and hosts (std::hash is neither promised).
std::uint32_t hash32(std::string_view text) {
    std::uint64_t h = 1469598103934665603ull;
    for (unsigned char c : text) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return static_cast<std::uint32_t>(h ^ (h >> 32));
}

}  // namespace

std::string new_job_id() {
    std::uint32_t value = 0;
    if (getrandom(&value, sizeof value, 0) != sizeof value) {
        // No entropy source: still unique enough per host when mixed with time.
        std::random_device rd;
        value = rd();
    }
    return fmt::format("{:08x}", value);
}

bool is_job_id(std::string_view id) {
    if (id.size() != 8) return false;
    for (char c : id)
        if (!std::isxdigit(static_cast<unsigned char>(c)) ||
            std::isupper(static_cast<unsigned char>(c)))
            return false;
    return true;
}

std::string device_tag(std::string_view device_id) {
    std::string clean;
    for (char c : device_id)
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') clean += c;
    if (clean == device_id && !clean.empty() && clean.size() <= k_max_plain_tag) return clean;
    return fmt::format("{}.{:08x}", clean.substr(0, 5), hash32(device_id));
}

DiskNames names_for(std::string_view job_id, std::string_view device_id) {
    DiskNames n;
    n.tag = device_tag(device_id);
    n.prefix = fmt::format("bm{}-{}", job_id, n.tag);
    n.block_job = n.prefix + "-mirror";
    n.hop_node = n.prefix + "-hop";
    n.export_name = n.prefix;
    return n;
}

std::filesystem::path DiskNames::hop_dir(const std::filesystem::path& run_dir,
                                         std::string_view job_id) const {
    return run_dir / job_id / tag;
}

std::filesystem::path hop_log_path(const std::filesystem::path& socket) {
    return socket.parent_path() / "qemu-storage-daemon.log";
}

}  // namespace blockmig::jobs
