// `migrate --dst-pool POOL --dst-launch -- CMD...`: blockmig makes the
// destination's volumes and starts the destination QEMU itself.
//
// One raw volume per source disk (the disk's exact size) is created in
// POOL, then CMD runs as argv — never through a shell — with `{qmp}`
// replaced by the QMP socket blockmig then connects to and `{vol:DEV}` by
// the path or URL of the volume made for the source's disk DEV. CMD may be
// local, `ip netns exec NS ...` or anything that ends in that QEMU; it runs
// in its own session (it becomes the guest's QEMU and outlives blockmig),
// stdin /dev/null, stdout and stderr appended to <state-dir>/<job>.dst.log.
//
// Volumes and the process are journaled under disk k_launched before they
// exist. They are undone only when the migration is undone (settle.hpp:
// the process stopped — its pid trusted only while its argv names the
// socket — then the volumes deleted), never after the destination ran the
// guest: then they are the guest's.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "blockmig/migrate.hpp"
#include "jobs/journal.hpp"
#include "preflight.hpp"
#include "qmp/client.hpp"

namespace blockmig::migrate {

inline constexpr const char* k_launched = "@launch";

// Pure: CMD's placeholders checked against the source's disks before any
// side effect. invalid_argument: no `{qmp}` (blockmig could not reach the
// QEMU), `{vol:DEV}` of a disk the source does not have, any other `{...}`.
Result<void> check_launch(const std::vector<std::string>& argv,
                          const std::vector<std::string>& disks);

// Pure: argv with every placeholder replaced.
std::vector<std::string> expand_launch(const std::vector<std::string>& argv, const std::string& qmp,
                                       const std::map<std::string, std::string>& volumes);

// The socket `{qmp}` names: <state-dir>/<job>.dst.qmp (0700 directory).
std::filesystem::path launch_socket(const std::filesystem::path& state_dir, const std::string& job);

// Creates the volumes, starts CMD, waits (at most launch.start_timeout) for
// its QMP socket and connects. Errors name what failed (the pool, the
// program, or CMD's exit with the end of its log); whatever was made is in
// the journal for the undo.
Result<std::unique_ptr<qmp::Client>> launch_destination(jobs::Journal& journal,
                                                        const DestinationLaunch& launch,
                                                        const SideFacts& src,
                                                        const std::filesystem::path& state_dir,
                                                        qmp::Milliseconds qmp_timeout);

}  // namespace blockmig::migrate
