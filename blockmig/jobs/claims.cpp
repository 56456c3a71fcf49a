#include "claims.hpp"

#include <fcntl.h>
#include <fmt/core.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <utility>

#include "journal.hpp"

namespace blockmig::jobs {

namespace fs = std::filesystem;

namespace {

// A file name for a URL: readable tail plus a hash of the whole URL.
std::string claim_key(std::string_view url) {
    std::uint64_t h = 1469598103934665603ull;
    for (unsigned char c : url) {
        h ^= c;
        h *= 1099511628211ull;
    }
    std::string tail;
    for (char c : url.substr(url.size() > 24 ? url.size() - 24 : 0))
        tail += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    return fmt::format("{:016x}-{}", h, tail);
}

}  // namespace

Result<TargetClaim> TargetClaim::take(const fs::path& state_dir, std::string_view volume_url) {
    const fs::path dir = state_dir / "claims";
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec || chmod(state_dir.c_str(), 0700) != 0 || chmod(dir.c_str(), 0700) != 0)
        return fail(ErrorCode::io_error, fmt::format("claims: cannot use {}: {}", dir.string(),
                                                     ec ? ec.message() : std::strerror(errno)));
    TargetClaim claim;
    claim.m_url = std::string(volume_url);
    claim.m_path = dir / (claim_key(volume_url) + ".lock");
    claim.m_fd = ::open(claim.m_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (claim.m_fd < 0)
        return fail(ErrorCode::io_error, fmt::format("claims: open {}: {}", claim.m_path.string(),
                                                     std::strerror(errno)));
    if (flock(claim.m_fd, LOCK_EX | LOCK_NB) != 0)
        return fail(ErrorCode::already_exists,
                    fmt::format("target {} is in use by another blockmig run", volume_url));
    return claim;
}

TargetClaim::TargetClaim(TargetClaim&& other) noexcept
    : m_fd(std::exchange(other.m_fd, -1)),
      m_url(std::move(other.m_url)),
      m_path(std::move(other.m_path)) {}

TargetClaim& TargetClaim::operator=(TargetClaim&& other) noexcept {
    if (this != &other) {
        release();
        m_fd = std::exchange(other.m_fd, -1);
        m_url = std::move(other.m_url);
        m_path = std::move(other.m_path);
    }
    return *this;
}

TargetClaim::~TargetClaim() { release(); }

void TargetClaim::release() {
    // The lock file stays: unlinking it could let two processes lock two
    // different inodes of one path.
    if (m_fd >= 0) ::close(m_fd);
    m_fd = -1;
}

Result<std::set<std::string>> claimed_by_journals(const fs::path& state_dir) {
    std::set<std::string> out;
    auto listed = list_jobs(state_dir);
    if (!listed) return fail(listed.error());
    for (const auto& l : *listed) {
        for (const auto& r : l.job.records) {
            if (r.effect != EffectKind::volume_created) continue;
            const bool held = r.state == RecordState::intent || r.state == RecordState::done ||
                              r.state == RecordState::left_behind;
            if (held) out.insert(r.name);
        }
    }
    return out;
}

}  // namespace blockmig::jobs
