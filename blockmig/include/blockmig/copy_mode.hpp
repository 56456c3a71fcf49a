// --copy-mode of `move` and `migrate`: how a disk mirror treats the guest's
// writes while it copies.
//   background      the guest's writes complete locally and are copied
//                   later (QEMU's default); a busy guest can keep the copy
//                   from ever finishing.
//   write_blocking  each guest write completes only once it reached both
//                   sides: the guest writes at most as fast as the link and
//                   every byte crosses it once.
//   auto_switch     each command's own rule (README, docs/state-machines.md).
#pragma once

namespace blockmig {

enum class CopyModePolicy { background, write_blocking, auto_switch };

}  // namespace blockmig
