#pragma once
// Freezes a server process (SIGSTOP: its sockets stay open and nothing
// answers, like a hung NAS or array) until thaw() or destruction.
#include <signal.h>

namespace blockmig::lab {

class Frozen {
  public:
    explicit Frozen(int pid) : m_pid(pid) { ::kill(m_pid, SIGSTOP); }
    ~Frozen() { thaw(); }
    Frozen(const Frozen&) = delete;
    Frozen& operator=(const Frozen&) = delete;
    void thaw() {
        if (m_pid > 0) ::kill(m_pid, SIGCONT);
        m_pid = -1;
    }

  private:
    int m_pid;
};

}  // namespace blockmig::lab
