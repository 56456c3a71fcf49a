// Where a guest's local image file is, as blockmig sees it.
//
// QEMU reports file names as it was given them: `-drive file=vm.qcow2`
// shows up as "vm.qcow2", relative to QEMU's working directory, not ours.
// Acting on such a name from blockmig's directory can check, verify or
// delete the wrong file. This resolves the name through the QEMU process
// (the QMP socket's peer, Client::peer_pid()) and proves the answer by
// finding the same file (device and inode) among the process's open fds.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "qmp/error.hpp"

namespace blockmig {

// True for a plain local file name (absolute or relative), false for
// URLs (nfs://, iscsi://), json:{...} names and the empty string.
bool is_local_file_name(std::string_view filename);

// Resolves `filename` (a local file name as QEMU reports it) to an absolute
// path in blockmig's view of the file system.
// - `qemu_pid` is the QEMU process (Client::peer_pid()); nullopt when QMP
//   runs over TCP or the pid is otherwise unknown.
// - Relative names are joined to /proc/PID/cwd. The result (relative or
//   absolute) is accepted only if the process has that very file open
//   (same st_dev/st_ino through /proc/PID/fd), so a wrong pid, a changed
//   working directory (QEMU's -daemonize chdirs to /) or another mount
//   namespace answer "unknown" instead of a wrong file.
// - An absolute name with no pid, or whose process's fds cannot be read
//   (another user's QEMU), is returned as given (what QEMU was told).
// Errors, all meaning "unknown: refuse what needs the path" (--delete-source,
// --verify; the sparseness check reports unknown): invalid_argument (not a
// local file name), unsupported (relative name without a pid, or /proc of
// that process unreadable), not_found (no such file, or the process does
// not have it open). Messages say why and name the file.
Result<std::string> resolve_source_path(std::string_view filename, std::optional<int> qemu_pid);

}  // namespace blockmig
