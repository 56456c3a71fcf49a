#!/bin/bash
# Runs the lab guest under QEMU.
#
#   guest.sh run   QMP_SOCKET [QEMU_ARGS...]   exec QEMU; serial console on stdout
#   guest.sh start DIR [QEMU_ARGS...]          background: DIR/qmp.sock, DIR/console.log, DIR/qemu.pid
#   guest.sh stop  DIR                         stop it by PID (QMP quit is not needed)
#
# QEMU_ARGS add the disks, e.g.
#   -blockdev driver=file,node-name=file0,filename=disk.qcow2,cache.direct=on,aio=native
#   -blockdev driver=qcow2,node-name=fmt0,file=file0 -device virtio-blk-pci,drive=fmt0,id=disk0
# Environment: BLOCKMIG_GUEST_APPEND (extra kernel args, e.g. stamp.blocks=4096),
# BLOCKMIG_GUEST_MEM (MiB, default 256), BLOCKMIG_NETNS (run inside that namespace).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=$1; shift
case $cmd in
run)
  qmp=$1; shift
  guest=$("$here/build-guest.sh")
  accel=$("$here/accel.sh")
  netns=()
  [ -z "${BLOCKMIG_NETNS:-}" ] || netns=(ip netns exec "$BLOCKMIG_NETNS")
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
  setsid "$0" run "$dir/qmp.sock" "$@" </dev/null >"$dir/console.log" 2>"$dir/qemu.err" &
  echo $! > "$dir/qemu.pid"
  for _ in $(seq 1 200); do
    [ -S "$dir/qmp.sock" ] && { cat "$dir/qemu.pid"; exit 0; }
    kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null || break
    sleep 0.05
  done
  echo "guest: QEMU did not start: $(tail -n 3 "$dir/qemu.err")" >&2; exit 1
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
*) echo "usage: guest.sh run|start|stop ..." >&2; exit 2 ;;
esac
