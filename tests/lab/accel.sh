#!/bin/bash
# Prints the accelerator the lab guest should use: "kvm" or "tcg".
#
# /dev/kvm existing proves nothing (on nested-PVM machines it cannot boot a
# stock kernel), so KVM is chosen only if a probe boot reaches GUEST-UP within
# BLOCKMIG_KVM_PROBE_TIMEOUT seconds (default 20). The verdict is cached per
# boot (keyed by /proc/sys/kernel/random/boot_id). BLOCKMIG_ACCEL=tcg|kvm
# overrides everything.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${BLOCKMIG_ACCEL:-}" ]; then echo "$BLOCKMIG_ACCEL"; exit 0; fi
[ -w /dev/kvm ] || { echo tcg; exit 0; }
cache=${BLOCKMIG_CACHE:-$HOME/.cache/blockmig}
mkdir -p "$cache"
verdict=$cache/accel-$(cat /proc/sys/kernel/random/boot_id)
if [ -s "$verdict" ]; then cat "$verdict"; exit 0; fi
guest=$("$here/build-guest.sh" "$cache")
log=$(mktemp)
timeout "${BLOCKMIG_KVM_PROBE_TIMEOUT:-20}" \
  qemu-system-x86_64 -accel kvm -m 128 -smp 1 -nodefaults -no-user-config -display none \
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 stamp.mode=idle" -serial "file:$log" -no-reboot 2>/dev/null &
pid=$!
result=tcg
while kill -0 "$pid" 2>/dev/null; do
  if grep -q GUEST-UP "$log" 2>/dev/null; then result=kvm; break; fi
  sleep 0.2
done
kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
rm -f "$log"
echo "$result" > "$verdict"
echo "$result"
