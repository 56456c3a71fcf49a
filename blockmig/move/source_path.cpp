// Resolving QEMU's file names through /proc/PID (see source_path.hpp).
#include "move/source_path.hpp"

#include <dirent.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

namespace blockmig {

namespace {

struct DirCloser {
    void operator()(DIR* dir) const { ::closedir(dir); }
};

// Whether process `pid` holds an fd open on the file `st` describes. nullopt
// when its fd table cannot be read (EACCES: another user's process).
std::optional<bool> process_has_open(int pid, const struct stat& st) {
    const std::string fd_dir = fmt::format("/proc/{}/fd", pid);
    std::unique_ptr<DIR, DirCloser> dir(::opendir(fd_dir.c_str()));
    if (!dir) return std::nullopt;
    while (dirent* entry = ::readdir(dir.get())) {
        if (entry->d_name[0] == '.') continue;
        struct stat fd_st {};
        // stat() follows the magic link to the open file itself, whatever
        // its path looked like from the process's mount namespace.
        if (::stat((fd_dir + "/" + entry->d_name).c_str(), &fd_st) != 0) continue;
        if (fd_st.st_dev == st.st_dev && fd_st.st_ino == st.st_ino) return true;
    }
    return false;
}

Result<std::string> working_directory(int pid, std::string_view filename) {
    std::error_code ec;
    auto cwd = std::filesystem::read_symlink(fmt::format("/proc/{}/cwd", pid), ec);
    if (ec) {
        return fail(ErrorCode::unsupported,
                    fmt::format("source '{}': cannot read QEMU's working directory "
                                "(/proc/{}/cwd: {}); its location is unknown",
                                filename, pid, ec.message()));
    }
    return cwd.string();
}

}  // namespace

bool is_local_file_name(std::string_view filename) {
    return !filename.empty() && !filename.starts_with("json:") &&
           filename.find("://") == std::string_view::npos;
}

Result<std::string> resolve_source_path(std::string_view filename, std::optional<int> qemu_pid) {
    if (!is_local_file_name(filename)) {
        return fail(ErrorCode::invalid_argument,
                    fmt::format("source '{}': not a local file name", filename));
    }
    const bool absolute = filename.starts_with('/');
    if (!qemu_pid) {
        if (absolute) return std::string(filename);
        return fail(ErrorCode::unsupported,
                    fmt::format("source '{}': relative to QEMU's working directory, which is "
                                "unknown (QMP is not a local Unix socket); its location is unknown",
                                filename));
    }
    std::filesystem::path candidate(filename);
    if (!absolute) {
        auto cwd = working_directory(*qemu_pid, filename);
        if (!cwd) return fail(cwd.error());
        candidate = std::filesystem::path(*cwd) / candidate;
    }
    candidate = candidate.lexically_normal();
    struct stat st {};
    if (::stat(candidate.c_str(), &st) != 0) {
        return fail(ErrorCode::not_found,
                    fmt::format("source '{}': {} (resolved against QEMU pid {}): {}", filename,
                                candidate.string(), *qemu_pid, std::strerror(errno)));
    }
    auto open = process_has_open(*qemu_pid, st);
    if (!open) {
        if (absolute) return candidate.string();
        return fail(ErrorCode::unsupported,
                    fmt::format("source '{}': cannot read /proc/{}/fd to confirm {}; its "
                                "location is unknown",
                                filename, *qemu_pid, candidate.string()));
    }
    if (!*open) {
        return fail(ErrorCode::not_found,
                    fmt::format("source '{}': QEMU (pid {}) does not have {} open; its location "
                                "is unknown",
                                filename, *qemu_pid, candidate.string()));
    }
    return candidate.string();
}

}  // namespace blockmig
