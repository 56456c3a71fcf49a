// A watch for a secret while a test runs: every process's argv and
// environment and every file under a directory, sampled from a thread.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>

namespace migrate_test {

// Until stopped, every 50 ms: every process's /proc/PID/cmdline and environ
// and every file under `dir`, searched for `secret`. `except` (tgtd, given
// the password by the lab) is not searched. `saw_qemu` tells that a sample
// held a QEMU whose argv names `qemu_marker`: the watch looked while it ran.
class SecretWatch {
  public:
    SecretWatch(std::string secret, int except, std::filesystem::path dir, std::string qemu_marker)
        : m_secret(std::move(secret)),
          m_except(except),
          m_dir(std::move(dir)),
          m_marker(std::move(qemu_marker)),
          m_thread([this] {
              while (!m_stop) {
                  sample();
                  std::this_thread::sleep_for(std::chrono::milliseconds(50));
              }
          }) {}
    ~SecretWatch() { stop(); }
    void stop() {
        m_stop = true;
        if (m_thread.joinable()) m_thread.join();
    }

    std::set<std::string> leaks;  // "PID (comm) cmdline", "FILE"
    bool saw_qemu = false;        // a sample held the launched QEMU (argv has the marker)
    std::set<std::string> files;  // the state dir's files searched

  private:
    static std::string read_all(const std::filesystem::path& path) {
        std::ifstream in(path, std::ios::binary);
        return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }

    void sample() {
        std::error_code ec;
        for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
            const std::string pid = e.path().filename().string();
            if (pid.find_first_not_of("0123456789") != std::string::npos ||
                std::stoi(pid) == m_except)
                continue;
            const std::string cmdline = read_all(e.path() / "cmdline");
            saw_qemu = saw_qemu || (cmdline.find(m_marker) != std::string::npos &&
                                    cmdline.find("qemu-system") != std::string::npos);
            for (const char* what : {"cmdline", "environ"})
                if ((what[0] == 'c' ? cmdline : read_all(e.path() / what)).find(m_secret) !=
                    std::string::npos)
                    leaks.insert(pid + " (" + read_all(e.path() / "comm") + ") " + what);
        }
        for (const auto& e : std::filesystem::recursive_directory_iterator(m_dir, ec)) {
            if (!e.is_regular_file(ec)) continue;
            files.insert(e.path().filename().string());
            if (read_all(e.path()).find(m_secret) != std::string::npos)
                leaks.insert(e.path().string());
        }
    }

    std::string m_secret;
    int m_except;
    std::filesystem::path m_dir;
    std::string m_marker;
    std::atomic<bool> m_stop{false};
    std::thread m_thread;
};

// "a; b; c", for a failure message.
inline std::string joined(const std::set<std::string>& words) {
    std::string out;
    for (const auto& w : words) out += (out.empty() ? "" : "; ") + w;
    return out;
}

}  // namespace migrate_test
