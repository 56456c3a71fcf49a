// --copy-storage inc: which destination disk may receive only the source's
// overlay (blockdev-mirror sync=top). The mirror copies what the source's
// top image holds (QEMU's bdrv_is_allocated on it) and nothing else: every
// other block must read the same on the destination through its own
// backing, so both backings must be the same image, and the destination's
// overlay must not hold data of its own there (it would shadow the base).
#include <fmt/core.h>

#include "preflight.hpp"

namespace blockmig::migrate {

namespace {

std::unexpected<Error> refuse(std::string text) {
    return fail(ErrorCode::invalid_state, "migrate pre-flight: " + std::move(text));
}

std::uint64_t round_up(std::uint64_t n, std::uint64_t to) { return (n + to - 1) / to * to; }

}  // namespace

std::uint64_t fresh_overlay_bound(std::uint64_t size, std::uint64_t cluster) {
    // One L1 entry (8 bytes) per L2 table, which maps cluster / 8 clusters.
    const std::uint64_t per_l2 = cluster * (cluster / 8);
    const std::uint64_t l1 = round_up(size, per_l2) / per_l2 * 8;
    // Header, refcount table and blocks: a few clusters (qemu-img makes 3);
    // any data needs an L2 table and a data cluster on top of them.
    return round_up(l1, 4096) + 16 * cluster + (128 << 10);
}

Result<void> check_overlay(const DiskFacts& s, const DiskFacts& d) {
    if (s.backing.empty())
        return refuse(fmt::format(
            "disk {}: the source's {} has no backing image; --copy-storage inc copies only an "
            "overlay over a base both hosts share (use --copy-storage all)",
            s.device, s.filename));
    if (d.format != "qcow2")
        return refuse(fmt::format(
            "disk {}: the destination's {} is a {} node; --copy-storage inc needs a qcow2 "
            "overlay over {} (qemu-img create -f qcow2 -b BASE -F FMT)",
            s.device, d.filename, d.format.empty() ? "unknown" : d.format, s.backing));
    if (d.backing.empty())
        return refuse(fmt::format(
            "disk {}: the destination's {} has no backing image; --copy-storage inc needs it "
            "to be an overlay over {}",
            s.device, d.filename, s.backing));
    switch (same_volume(s.backing, s.backing_identity, d.backing, d.backing_identity)) {
        case Sameness::same:
            break;
        case Sameness::different:
            return refuse(fmt::format(
                "disk {}: the source's overlay is over {} but the destination's over {}, a "
                "different image; --copy-storage inc needs both over the same base",
                s.device, s.backing, d.backing));
        case Sameness::unprovable:
            return refuse(fmt::format(
                "disk {}: cannot prove both overlays are over the same base ({} / {}): a local "
                "file is compared by identity, which needs both QMP sockets local (Unix "
                "sockets) and the files visible from here; use a network URL for the base, or "
                "--copy-storage all",
                s.device, s.backing, d.backing));
    }
    // QMP shows no allocation map: the host bytes the overlay occupies tell
    // an overlay that already holds data (a reused one) from a fresh one.
    if (d.allocated && *d.allocated > fresh_overlay_bound(d.size, d.cluster_size.value_or(65536)))
        return refuse(fmt::format(
            "disk {}: the destination's overlay {} already holds data ({} KiB allocated); "
            "--copy-storage inc copies only what the source's overlay holds, so create a fresh "
            "overlay over {}",
            s.device, d.filename, *d.allocated >> 10, d.backing));
    return {};
}

}  // namespace blockmig::migrate
