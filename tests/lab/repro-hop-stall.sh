#!/bin/bash
# Reproducer for the open QEMU 10.0 crash (docs/known-issues.md): one lab
# guest (heap checks on: glibc's libc_malloc_debug, MALLOC_CHECK_=3), one NFS
# server, then N moves to NFS whose NBD hop daemon is SIGSTOPped mid-copy, so
# blockmig's stall path kills it and rolls back. Stops at the first move after
# which the guest's QEMU is gone; DIR/summary has one line per move, DIR/core
# the core (ulimit -c unlimited; core_pattern "core").
#
#   repro-hop-stall.sh BLOCKMIG_BINARY N DIR      (root; BLOCKMIG_QEMU=10 by default)
# Environment: COPYMODE (auto|background|write-blocking, default auto), STALL (s, default 3).
set -u
bm=$1; n=$2; d=$3
lab=$(cd "$(dirname "$0")" && pwd)
export BLOCKMIG_QEMU=${BLOCKMIG_QEMU:-10}
settings=$("$lab/qemu.sh" env)
while IFS= read -r kv; do [ -z "$kv" ] || export "${kv?}"; done <<<"$settings"
mkdir -p "$d"; cd "$d" || exit 1
exec 9>/run/lock/blockmig-lab-nfs.lock; flock 9   # the lab's NFS lock (one rpcbind per host)
qemu-img create -q -f qcow2 "$d/src.qcow2" 512M
qemu-io -f qcow2 -c 'write -P 0x5a 64M 256M' "$d/src.qcow2" >/dev/null
"$lab/nfs.sh" start "$d/nfs" "$d/export" >/dev/null || exit 1
ulimit -c unlimited
BLOCKMIG_GUEST_APPEND="stamp.hb=100 stamp.blocks=8192" \
  env LD_PRELOAD=libc_malloc_debug.so.0 MALLOC_CHECK_=3 MALLOC_PERTURB_=165 "$lab/guest.sh" start "$d/g" \
  -blockdev "driver=file,node-name=disk0-file,filename=$d/src.qcow2,cache.direct=on,aio=native" \
  -blockdev driver=qcow2,node-name=disk0-fmt,file=disk0-file,cache.direct=on \
  -device virtio-blk-pci,drive=disk0-fmt,id=disk0 >/dev/null || { "$lab/nfs.sh" stop "$d/nfs"; exit 1; }
qemu=$(cat "$d/g/qemu.pid")
sleep 8  # the guest boots and writes
for i in $(seq 1 "$n"); do
  rm -rf "$d/export/"* "$d/state"
  "$bm" move --qmp "$d/g/qmp.sock" --disk disk0 --to nfs://127.0.0.1/export --bandwidth 8 \
    --stall-timeout "${STALL:-3}" --copy-mode "${COPYMODE:-auto}" --timeout 120 \
    --state-dir "$d/state" >"$d/move$i.log" 2>&1 &
  move=$!
  daemon=
  for _ in $(seq 1 300); do
    daemon=$(pgrep -P "$move" -f qemu-storage-daemon || true); [ -n "$daemon" ] && break; sleep 0.05
  done
  sleep "$(awk 'BEGIN { srand(); print 0.5 + 2 * rand() }')"
  [ -z "$daemon" ] || kill -STOP "$daemon"   # the hop's storage stops answering
  wait "$move"
  alive=yes; kill -0 "$qemu" 2>/dev/null || alive=no
  switched=no; grep -q "in place" "$d/move$i.log" && switched=yes
  echo "$(date +%T) move $i: switched in place: $switched; guest QEMU alive: $alive" >>"$d/summary"
  [ $alive = yes ] || break
done
"$lab/guest.sh" stop "$d/g"
echo "QEMU's last output:" >>"$d/summary"; tail -n 3 "$d/g/qemu.err" >>"$d/summary"
"$lab/nfs.sh" stop "$d/nfs"
cat "$d/summary"
