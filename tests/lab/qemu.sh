#!/bin/bash
# The lab's QEMU flavour, chosen by one environment variable:
#   BLOCKMIG_QEMU unset or "system"   the system's QEMU (Debian 12: 7.2), from PATH
#   BLOCKMIG_QEMU=10                  QEMU 10.0 from bookworm-backports, unpacked in the
#                                     lab cache by fetch-qemu10.sh (the system QEMU stays)
#
#   qemu.sh env       prints the NAME=VALUE settings that select the flavour, one per
#                     line (none for the system QEMU): PATH with wrappers first (every
#                     lab part, test and blockmig's own qemu-img then runs that QEMU)
#                     and BLOCKMIG_QEMU_DIR (where blockmig finds qemu-storage-daemon
#                     and qemu-img: its --qemu-dir)
#   qemu.sh version   prints the chosen QEMU's version line
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
settings() {
  case ${BLOCKMIG_QEMU:-system} in
  system | 7.2) ;;
  10 | 10.0)
    local prefix
    prefix=$("$here/fetch-qemu10.sh")
    # Already first in PATH (a lab script called by another): do not repeat it.
    [[ $PATH == "$prefix/lab-bin:"* ]] || echo "PATH=$prefix/lab-bin:$PATH"
    # The wrappers, not usr/bin: the unpacked binaries find their block
    # modules (nfs, iscsi: the storage daemon's hop needs them) only through
    # the QEMU_MODULE_DIR the wrappers set.
    echo "BLOCKMIG_QEMU_DIR=$prefix/lab-bin"
    ;;
  *) echo "qemu: BLOCKMIG_QEMU=$BLOCKMIG_QEMU: use 10 (QEMU 10.0) or leave it unset (system QEMU)" >&2
     exit 1 ;;
  esac
}
case ${1:-} in
env) settings ;;
version)
  s=$(settings)
  while IFS= read -r kv; do [ -z "$kv" ] || export "${kv?}"; done <<<"$s"
  qemu-system-x86_64 --version | head -n 1
  ;;
*) echo "usage: qemu.sh env|version" >&2; exit 2 ;;
esac
