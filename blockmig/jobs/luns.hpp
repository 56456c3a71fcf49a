// iSCSI LUNs as targets, shared by `move` and `migrate --dst-launch`: a LUN
// is never created or deleted, only chosen (free: all zero, no guest disk on
// it, no journal holding it) and claimed (claims.hpp), so that two disks of
// one run or of two runs never land on the same LUN.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "claims.hpp"
#include "effects.hpp"
#include "pools/pool.hpp"

namespace blockmig::jobs {

// iscsi://host[:port]/iqn/N names a LUN (a volume); iscsi://host[:port]/iqn a pool.
bool is_iscsi_lun(std::string_view spec);

// "iscsi://PORTAL/TARGET/LUN" from an `iscsi` blockdev node's options (lun
// a number or a string): how a LUN QEMU opened as json:{...} is named, so it
// compares with a pool's URLs.
std::string lun_url_of_node(const nlohmann::json& iscsi_node);

// "iscsi://host:port/iqn/3" -> "iqn/3": the same LUN however the portal is
// written (a guest's filename and a pool's URL may spell it differently).
std::string lun_tail(std::string_view url);

// The LUNs of an iSCSI pool one disk may take, smallest first: none the
// guest uses (`guest_locations`: its disks' URLs), none a journal holds
// (`held`: claimed_by_journals()), none smaller than `min_size` bytes.
// Whether a LUN holds data is the pool's create() to check (under a claim).
Result<std::vector<std::string>> lun_candidates(pools::Pool& pool,
                                                const std::vector<std::string>& guest_locations,
                                                const std::set<std::string>& held,
                                                std::uint64_t min_size = 0);

struct ClaimedVolume {
    pools::VolumeInfo info;
    TargetClaim claim;  // held while the caller may write the volume
};

// Tries each of `names` in order (one name: the user's; several: LUN
// candidates): takes its claim in `state_dir`, then creates it through
// `effects` (journaled under `disk`). A name another run claims, or one the
// pool refuses as in use or too small, is skipped. The error of the last
// try otherwise, with `who` naming the disk; no_space when `names` is empty.
Result<ClaimedVolume> claim_and_create(Effects& effects, const std::string& disk, pools::Pool& pool,
                                       const std::vector<std::string>& names,
                                       const std::filesystem::path& state_dir, std::uint64_t size,
                                       pools::ImageFormat format, std::string_view who);

}  // namespace blockmig::jobs
