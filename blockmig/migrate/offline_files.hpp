// `migrate --offline --src-disk DEV=PATH`: which files of a guest that is
// not running are copied, in which format, under which name — decided
// from the files themselves (no QEMU to ask) before anything is touched.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "blockmig/move.hpp"
#include "blockmig/offline.hpp"
#include "offline_plan.hpp"

namespace blockmig::migrate {

// The disks to copy (`only`: --disk names of `files`; empty = all), in
// the order given, or the first reason not to, as one line: an empty or
// repeated device name, an unknown --disk, a file that does not exist or is
// not a regular local file, a format other than raw / qcow2 (probed like
// qemu-img: the qcow2 magic, else raw; a VMDK, LUKS, VHDX, VDI, VHD or QED
// header is refused; `format` forces one), an unreadable image, two files
// with the same name (the copies would collide). Sources are absolute
// paths with symlinks resolved. `open_volume` reads them (PoolOpener's
// resolve_volume).
Result<std::vector<OfflineDisk>> plan_offline_files(
    const std::vector<OfflineSourceFile>& files, const std::vector<std::string>& only,
    const std::function<Result<pools::VolumeRef>(std::string_view)>& open_volume);

}  // namespace blockmig::migrate
