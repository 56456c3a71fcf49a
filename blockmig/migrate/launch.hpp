// `migrate --dst-pool POOL --dst-launch -- CMD...`: blockmig makes the
// destination's volumes and starts the destination QEMU itself.
//
// One raw volume per source disk (the disk's exact size) is created in
// POOL, then CMD runs as argv — never through a shell — with `{qmp}`
// replaced by the QMP socket blockmig then connects to and `{vol:DEV}` by
// the path or URL of the volume made for the source's disk DEV. CMD may be
// local, `ip netns exec NS ...` or anything that ends in that QEMU; it runs
// in its own session (it becomes the guest's QEMU and outlives blockmig),
// stdin /dev/null (a CHAP pool: see below), stdout and stderr appended to
// <state-dir>/<job>.dst.log.
//
// On another host (`--dst-qmp ssh://[USER@]HOST[:PORT]/PATH`): CMD is
// `ssh [OPTIONS] HOST CMD...`, `{qmp}` is PATH (on HOST) and `{vol:DEV}`
// the volume's URL, so the pool must be one HOST reaches (nfs://, iscsi://;
// a dir pool is refused: its path is on this host). ssh hands CMD to the
// remote login shell as one string: blockmig quotes every word of it for a
// POSIX shell, so each reaches QEMU as the word given. The local child is
// ssh (its own session, as above); blockmig waits for PATH through the ssh
// transport. CMD may end once its QEMU detached (-daemonize): ssh's exit
// status 0 is not a failure then.
//
// Each disk's volume is decided before the journal exists (plan_launch):
// `--dst-vol DEV=VOLUME` names it, else a dir or NFS pool gets a new
// <job>-<dev>.raw and an iSCSI pool (whose LUNs exist and are never created
// or deleted) its smallest free LUN of at least the disk's size (jobs/luns.hpp:
// all zero, no disk of the source guest, held by no journal), claimed
// (jobs/claims.hpp) while blockmig runs. `{vol:DEV}` of a LUN is its
// iscsi:// URL, which QEMU's iscsi driver opens; a LUN larger than the disk
// is handed over as json:{raw, size, file: its iscsi node} so the destination's
// disk has exactly the source's size, its commas doubled for a -drive
// file= value.
//
// A pool with CHAP credentials (iscsi://USER%PASSWORD@..., best in
// pools.toml: blockmig's own argv shows it otherwise) needs `-object
// {secret-object}` in CMD, exactly once: it becomes `secret,id=blockmig-chap,
// file=/dev/stdin,format=raw`, `{vol:DEV}` is then always the json: form with
// "user" and "password-secret": "blockmig-chap" in its iscsi node, and CMD's
// stdin is a pipe that holds the password and then ends (written before the
// fork). ssh hands its stdin to the remote command, so the one design works
// for all three ways of launching; the password is in no argv, environment,
// journal or log. `{secret-object}` with a pool without CHAP is refused.
//
// Volumes and the process are journaled under disk k_launched before they
// exist. They are undone only when the migration is undone (settle.hpp:
// the process stopped — its pid trusted only while its argv names the
// socket — then the volumes deleted), never after the destination ran the
// guest: then they are the guest's. A QEMU on another host is stopped
// with `quit` through its monitor (jobs/undo.cpp).
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "blockmig/migrate.hpp"
#include "jobs/claims.hpp"
#include "jobs/journal.hpp"
#include "pools/pool.hpp"
#include "preflight.hpp"
#include "qmp/client.hpp"
#include "qmp/features.hpp"

namespace blockmig::migrate {

inline constexpr const char* k_launched = "@launch";
// The id of the secret object `{secret-object}` makes (CHAP pools).
inline constexpr const char* k_launch_secret_id = "blockmig-chap";

// Pure: CMD's placeholders checked against the source's disks before any
// side effect. invalid_argument: no `{qmp}` (blockmig could not reach the
// QEMU), `{vol:DEV}` of a disk the source does not have, `{secret-object}`
// more than once, any other `{...}`. (Whether the pool needs
// `{secret-object}` is plan_volumes' check.)
Result<void> check_launch(const std::vector<std::string>& argv,
                          const std::vector<std::string>& disks);

// What `{secret-object}` becomes: the -object value of a secret QEMU reads
// from its stdin, id k_launch_secret_id.
std::string launch_secret_object();

// Pure: argv with every placeholder replaced.
std::vector<std::string> expand_launch(const std::vector<std::string>& argv, const std::string& qmp,
                                       const std::map<std::string, std::string>& volumes);

// The socket `{qmp}` names: <state-dir>/<job>.dst.qmp (0700 directory).
std::filesystem::path launch_socket(const std::filesystem::path& state_dir, const std::string& job);

// Where the launched QEMU's monitor is.
struct LaunchQmp {
    std::string address;  // what blockmig connects to and journals
    std::string path;     // what `{qmp}` becomes
    bool remote = false;  // on the host of an ssh:// address
};
// Without launch.qmp: launch_socket() on this host; ssh://HOST/PATH: PATH on HOST.
LaunchQmp launch_qmp(const DestinationLaunch& launch, const std::filesystem::path& state_dir,
                     const std::string& job);

// Pure, before any side effect (the CLI calls it for a usage error). Nothing
// to check without launch.qmp; an ssh:// address needs CMD = `ssh [OPTIONS]
// HOST CMD...` with `{qmp}` in the remote CMD, every remote word quotable and
// a pool the other host can open (nfs or iscsi; a dir pool, named or a
// path, is on this host). invalid_argument otherwise, and for any other
// address (a path or tcp:: a local launch names its own socket).
Result<void> check_launch_target(const DestinationLaunch& launch);

// `ssh [OPTIONS] HOST CMD...` (argv[0] is ssh or a path ending in /ssh): the
// index of CMD's first word; nullopt when argv runs no command through ssh.
std::optional<std::size_t> ssh_remote_command(const std::vector<std::string>& argv);

// One word for the POSIX shell (sh, dash, bash, ksh, zsh) that runs ssh's
// command on the other host: letters, digits and @%+=:,./_- as they are,
// anything else in single quotes (a quote as '\''). invalid_argument for
// control characters (newline, tab, ...), which no quoting carries safely.
Result<std::string> quote_for_remote_shell(std::string_view word);

// expand_launch(), then every word of the remote CMD quoted (remote launch).
Result<std::vector<std::string>> launch_command(const DestinationLaunch& launch,
                                                const LaunchQmp& qmp,
                                                const std::map<std::string, std::string>& volumes);

// One disk's destination volume, decided before anything is made.
struct LaunchVolume {
    std::string device;
    std::uint64_t size = 0;  // the source disk's
    // The volume to create, or the LUN candidates in order of preference;
    // empty: <job>-<dev>.raw (named once the job is).
    std::vector<std::string> names;
};

struct LaunchPlan {
    std::unique_ptr<pools::Pool> pool;
    bool iscsi = false;
    bool chap = false;  // iSCSI with CHAP credentials
    std::vector<LaunchVolume> volumes;
    // The claims of the volumes made: held until the run ends.
    std::vector<jobs::TargetClaim> claims;
};

// The pre-flight of the destination's volumes: the pool opened, every
// --dst-vol checked, and in an iSCSI pool a LUN found for every disk (one
// each), all before any side effect. invalid_argument for a --dst-vol of a
// disk the source lacks, one volume named twice, a LUN of the source guest,
// a pool with CHAP credentials without `{secret-object}` in the command (or
// the placeholder without them); no_space for a LUN smaller than its disk or no
// free LUN left; already_exists for a LUN an unfinished job holds or a
// dir / NFS volume that exists. `jobs_dir`: where claims and journals are.
Result<LaunchPlan> plan_launch(const DestinationLaunch& launch, const SideFacts& src,
                               const std::filesystem::path& jobs_dir);
// The same with the pool opened and `held` = jobs::claimed_by_journals()
// (the seam unit tests use). --dst-vol's disks are checked by plan_launch.
Result<LaunchPlan> plan_volumes(std::unique_ptr<pools::Pool> pool, const DestinationLaunch& launch,
                                const SideFacts& src, const std::set<std::string>& held);

// Pure: what `{vol:DEV}` becomes for a volume of `pool` holding `volume`
// for a disk of `disk_size` bytes: its path or URL, or for a larger LUN
// the json: form described above.
std::string volume_location(const pools::Pool& pool, const pools::VolumeInfo& volume,
                            std::uint64_t disk_size);

// Pure: what `{vol:DEV}` becomes for a LUN of a pool with CHAP credentials:
// json:{raw, size = disk_size, file: `iscsi_node`} (commas doubled), the node
// as the pool describes it for QEMU (pools::BlockdevChain::protocol) with its
// password-secret the id `{secret-object}` makes and no initiator-name (the
// launched QEMU logs in under its own name, as it does from a URL).
std::string chap_volume_location(nlohmann::json iscsi_node, std::uint64_t disk_size);

// Parses --dst-vol DEV=VOLUME. invalid_argument when either side is empty.
Result<std::pair<std::string, std::string>> parse_dst_vol(std::string_view text);

// Creates the volumes, starts CMD, waits (at most launch.start_timeout) for
// its QMP socket and connects. Errors name what failed (the pool, the
// program, or CMD's exit with the end of its log); whatever was made is in
// the journal for the undo.
// Pure: migrate-incoming's exit-on-error for the destination. false for a
// QEMU blockmig launched whose schema has the argument (QEMU >= 9.1): after
// a failed incoming migration it stays up (its migration status failed,
// still inmigrate) so the undo removes its TLS object and NBD server on a
// live monitor, then stops it (stop_launched). nullopt otherwise: QEMU's
// default, it exits by itself, which a QEMU the user started keeps (blockmig
// never stops it, and such a QEMU takes no second migrate-incoming anyway).
std::optional<bool> incoming_exit_on_error(const qmp::Features& destination, bool launched);

Result<std::unique_ptr<qmp::Client>> launch_destination(jobs::Journal& journal,
                                                        const DestinationLaunch& launch,
                                                        LaunchPlan& plan,
                                                        const std::filesystem::path& state_dir,
                                                        qmp::Milliseconds qmp_timeout);

}  // namespace blockmig::migrate
