// A QEMU process with a QMP Unix socket, for the qmp integration tests:
// qemu-storage-daemon, or qemu-system-x86_64 -machine none (which also has
// getfd / add-fd / migration commands). Killed by PID on destruction.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "lab.hpp"

extern char** environ;

namespace blockmig::testing {

class QemuProcess {
  public:
    enum class Kind { storage_daemon, system_none };

    explicit QemuProcess(Kind kind) {
        m_socket = m_dir / "qmp.sock";
        std::vector<std::string> argv;
        if (kind == Kind::storage_daemon) {
            argv = {"qemu-storage-daemon", "--chardev",
                    "socket,id=mon,path=" + m_socket.string() + ",server=on,wait=off", "--monitor",
                    "chardev=mon"};
        } else {
            argv = {"qemu-system-x86_64",
                    "-machine",
                    "none",
                    "-nodefaults",
                    "-display",
                    "none",
                    "-qmp",
                    "unix:" + m_socket.string() + ",server=on,wait=off"};
        }
        std::vector<char*> cargv;
        for (auto& a : argv) cargv.push_back(a.data());
        cargv.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        std::string log = (m_dir / "qemu.log").string();
        posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0644);
        posix_spawn_file_actions_adddup2(&actions, 1, 2);
        int rc = posix_spawnp(&m_pid, cargv[0], &actions, nullptr, cargv.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        if (rc != 0) throw std::runtime_error("cannot start " + argv[0]);
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (!std::filesystem::exists(m_socket)) {
            if (std::chrono::steady_clock::now() > deadline || !alive()) {
                stop();
                throw std::runtime_error(argv[0] + " did not create its QMP socket");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    ~QemuProcess() { stop(); }
    QemuProcess(const QemuProcess&) = delete;
    QemuProcess& operator=(const QemuProcess&) = delete;

    std::string socket() const { return m_socket.string(); }
    const lab::TempDir& dir() const { return m_dir; }
    pid_t pid() const { return m_pid; }

    bool alive() {
        if (m_pid <= 0) return false;
        int status = 0;
        if (waitpid(m_pid, &status, WNOHANG) == m_pid) {
            m_pid = -1;
            return false;
        }
        return true;
    }
    // Waits up to `timeout` for the process to exit by itself.
    bool wait_exit(std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (alive()) {
            if (std::chrono::steady_clock::now() > deadline) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return true;
    }
    void stop() {
        if (m_pid <= 0) return;
        kill(m_pid, SIGTERM);
        if (!wait_exit(std::chrono::seconds(5))) {
            kill(m_pid, SIGKILL);
            waitpid(m_pid, nullptr, 0);
        }
        m_pid = -1;
    }

  private:
    lab::TempDir m_dir{"qmp"};
    std::filesystem::path m_socket;
    pid_t m_pid = -1;
};

}  // namespace blockmig::testing
