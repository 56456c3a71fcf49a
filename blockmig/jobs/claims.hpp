// Target claims: two blockmig runs on one host never choose the same target
// volume or LUN. A claim is an flock on <state-dir>/claims/<key>.lock held
// by the process that may write the volume, for as long as it runs; a
// volume named by a journal that still needs recovery stays taken after
// its process died (claimed_by_journals).
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <string_view>

#include "qmp/error.hpp"

namespace blockmig::jobs {

class TargetClaim {
  public:
    // Claims `volume_url` for this process. already_exists when another live
    // process holds it; io_error when the state directory is unusable.
    static Result<TargetClaim> take(const std::filesystem::path& state_dir,
                                    std::string_view volume_url);

    TargetClaim() = default;
    TargetClaim(TargetClaim&& other) noexcept;
    TargetClaim& operator=(TargetClaim&& other) noexcept;
    TargetClaim(const TargetClaim&) = delete;
    TargetClaim& operator=(const TargetClaim&) = delete;
    ~TargetClaim();  // releases the claim

    const std::string& url() const { return m_url; }

  private:
    void release();
    int m_fd = -1;
    std::string m_url;
    std::filesystem::path m_path;
};

// Volume URLs that journals in `state_dir` may still hold (created and not
// undone, or left behind) — of jobs no live process runs as well as of
// running ones.
Result<std::set<std::string>> claimed_by_journals(const std::filesystem::path& state_dir);

}  // namespace blockmig::jobs
