#include "copy_mode.hpp"

namespace blockmig::migrate {

Result<qmp::CopyMode> initial_copy_mode(CopyModePolicy asked, const qmp::Features& source) {
    const bool in_place = source.mirror_change_copy_mode();
    switch (asked) {
        case CopyModePolicy::background:
            return qmp::CopyMode::background;
        case CopyModePolicy::auto_switch:
            return in_place ? qmp::CopyMode::write_blocking : qmp::CopyMode::background;
        case CopyModePolicy::write_blocking:
            if (in_place) return qmp::CopyMode::write_blocking;
            return fail(ErrorCode::unsupported,
                        "--copy-mode write-blocking: the source QEMU cannot switch a mirror in "
                        "place (no block-job-change copy-mode, QEMU < 8.2), and a write-blocking "
                        "mirror there is suspected of losing a guest write (docs/known-issues.md); "
                        "use --copy-mode auto");
    }
    return qmp::CopyMode::background;
}

}  // namespace blockmig::migrate
