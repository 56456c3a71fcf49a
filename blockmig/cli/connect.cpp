// Every command's QMP connection, whatever the address form (path, tcp:,
// ssh://): one place that warns about unauthenticated TCP.
#include <fmt/core.h>

#include <mutex>
#include <set>

#include "commands.hpp"
#include "qmp/address.hpp"

namespace blockmig::cli {

namespace {

// Once per address per process: recover and migrate may connect twice.
void warn_if_unauthenticated(std::string_view address) {
    auto parsed = qmp::parse_address(address);
    if (!parsed || !parsed->unauthenticated()) return;
    static std::mutex mutex;
    static std::set<std::string> warned;
    std::lock_guard lock(mutex);
    if (!warned.insert(std::string(address)).second) return;
    fmt::print(stderr,
               "blockmig: warning: QMP {} is unauthenticated TCP: anyone who reaches it controls "
               "that QEMU (prefer ssh://HOST/PATH)\n",
               address);
}

}  // namespace

Result<std::unique_ptr<qmp::Client>> connect_qmp(std::string_view address,
                                                 qmp::ConnectOptions options) {
    warn_if_unauthenticated(address);
    // A yank must reach a QEMU whose main loop hangs on a dead NBD peer.
    options.enable_oob = true;
    return qmp::Client::connect(address, std::move(options));
}

}  // namespace blockmig::cli
