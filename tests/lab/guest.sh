#!/bin/bash
# Runs the lab guest under QEMU.
#
#   guest.sh prepare                           build the guest, pick the accelerator, fetch
#                                              the QEMU flavour (slow only on a cold cache)
#   guest.sh run   QMP_SOCKET [QEMU_ARGS...]   exec QEMU; serial console on stdout
#   guest.sh start DIR [QEMU_ARGS...]          background: DIR/qmp.sock, DIR/console.log, DIR/qemu.pid
#   guest.sh stop  DIR                         stop it by PID (QMP quit is not needed)
#
# QEMU_ARGS add the disks, e.g.
#   -blockdev driver=file,node-name=file0,filename=disk.qcow2,cache.direct=on,aio=native
#   -blockdev driver=qcow2,node-name=fmt0,file=file0 -device virtio-blk-pci,drive=fmt0,id=disk0
# Environment: BLOCKMIG_GUEST_APPEND (extra kernel args, e.g. stamp.blocks=4096),
# BLOCKMIG_GUEST_CWD (QEMU's working directory, for relative image names),
# BLOCKMIG_GUEST_MEM (MiB, default 256), BLOCKMIG_NETNS (run inside that namespace),
# BLOCKMIG_QEMU (QEMU flavour, see qemu.sh), BLOCKMIG_CACHE (see build-guest.sh).
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(prepare) must fail it
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}; shift || true

use_qemu_flavour() {
  local settings kv
  settings=$("$here/qemu.sh" env)
  while IFS= read -r kv; do [ -z "$kv" ] || export "${kv?}"; done <<<"$settings"
}

# Everything slow happens here, before QEMU starts, so that waiting for QEMU's
# QMP socket measures QEMU alone. Prints "GUEST_DIR ACCEL".
prepare() {
  use_qemu_flavour
  local guest accel
  guest=$("$here/build-guest.sh")
  accel=$("$here/accel.sh")
  echo "$guest $accel"
}

case $cmd in
prepare) prepare ;;
run)
  qmp=$1; shift
  prepared=$(prepare)
  read -r guest accel <<<"$prepared"
  use_qemu_flavour
  netns=()
  [ -z "${BLOCKMIG_NETNS:-}" ] || netns=(ip netns exec "$BLOCKMIG_NETNS")
  # QEMU's working directory: relative image names resolve against it.
  [ -z "${BLOCKMIG_GUEST_CWD:-}" ] || cd "$BLOCKMIG_GUEST_CWD"
  exec "${netns[@]}" qemu-system-x86_64 -accel "$accel" -m "${BLOCKMIG_GUEST_MEM:-256}" -smp 1 \
    -nodefaults -no-user-config -display none -no-reboot \
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 stamp.hb=100 ${BLOCKMIG_GUEST_APPEND:-}" \
    -serial stdio -qmp "unix:$qmp,server=on,wait=off" "$@"
  ;;
start)
  dir=$1; shift
  mkdir -p "$dir"
  rm -f "$dir/qmp.sock"
  prepare >/dev/null
  setsid "$0" run "$dir/qmp.sock" "$@" </dev/null >"$dir/console.log" 2>"$dir/qemu.err" &
  echo $! > "$dir/qemu.pid"
  # QEMU itself opens its QMP socket within a second; 60 s covers a loaded machine.
  deadline=$((SECONDS + ${BLOCKMIG_GUEST_START_TIMEOUT:-60}))
  while [ $SECONDS -lt $deadline ]; do
    [ -S "$dir/qmp.sock" ] && { cat "$dir/qemu.pid"; exit 0; }
    kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null; then
    echo "guest: QEMU opened no QMP socket within ${BLOCKMIG_GUEST_START_TIMEOUT:-60} s; stopping it" >&2
    "$0" stop "$dir"
  else
    echo "guest: QEMU exited at start: $(tail -n 3 "$dir/qemu.err")" >&2
  fi
  exit 1
  ;;
stop)
  dir=$1
  [ -f "$dir/qemu.pid" ] || exit 0
  pid=$(cat "$dir/qemu.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/qemu.pid" "$dir/qmp.sock"
  ;;
*) echo "usage: guest.sh prepare|run|start|stop ..." >&2; exit 2 ;;
esac
