// The mode `migrate`'s disk mirrors start in (--copy-mode), from what the
// source QEMU's schema offers:
//   auto            write-blocking from the start where QEMU can also
//                   switch a running mirror (block-job-change copy-mode,
//                   QEMU >= 8.2, whose active mirror carries the fixes
//                   Proxmox waited for). A guest that writes while its disk
//                   is copied then writes at the link's pace and each byte
//                   crosses once; in background mode the same writes are
//                   copied again and again, and a steady writer keeps the
//                   mirror from READY (bench/README.md: 365 MiB moved
//                   instead of 223 MiB). Elsewhere background: on QEMU 7.2
//                   a write-blocking mirror is suspected of losing a write
//                   (docs/known-issues.md).
//   background      background; switched in place once READY where QEMU
//                   can (Proxmox's and libvirt's way).
//   write-blocking  as auto, refused where QEMU cannot switch in place.
#pragma once

#include "blockmig/copy_mode.hpp"
#include "qmp/commands.hpp"
#include "qmp/features.hpp"

namespace blockmig::migrate {

Result<qmp::CopyMode> initial_copy_mode(CopyModePolicy asked, const qmp::Features& source);

}  // namespace blockmig::migrate
