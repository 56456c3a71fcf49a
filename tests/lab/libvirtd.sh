#!/bin/bash
# A private libvirtd "host" for the migrate benchmark: a foreground libvirtd
# with its own /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt
# and /var/cache/libvirt (bind mounts in a private mount namespace), so two
# of them coexist on one machine, each in the network namespace of one lab
# host (hosts.sh), and migrate between each other. Debian 12 ships only the
# monolithic libvirtd; it runs without systemd or dbus as root.
#
#   libvirtd.sh start DIR [NETNS]   prints the URI; DIR/libvirtd.pid, DIR/libvirtd.out
#   libvirtd.sh stop  DIR           SIGTERM by PID (its QEMUs are stopped first)
#
# Inside that host /var/lib/libvirt/images is DIR/lib/images and the QEMU
# logs are in DIR/log/qemu: the same path names different files on each host.
# URI: qemu+unix:///system?socket=DIR/run/libvirt-sock
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$dir" ] || { echo "usage: libvirtd.sh start|stop DIR [NETNS]" >&2; exit 2; }
uri="qemu+unix:///system?socket=$dir/run/libvirt-sock"
case $cmd in
start)
  ns=${3:-}
  mkdir -p "$dir"/{run,lib/images,log/qemu,cache} /run/libvirt /var/log/libvirt \
    /var/cache/libvirt /var/lib/libvirt
  if [ ! -d "$dir/etc" ]; then
    cp -a /etc/libvirt "$dir/etc"
    rm -f "$dir"/etc/qemu/networks/autostart/*  # never start virbr0/dnsmasq
    # root, no cgroups/namespaces/security driver: the lab guest's files are ours.
    cat > "$dir/etc/qemu.conf" <<'CONF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
CONF
    # Migration refuses two hosts with the same UUID.
    cat > "$dir/etc/libvirtd.conf" <<CONF
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
  fi
  # DIR reaches the inner shell as "$1", never as part of its script.
  # shellcheck disable=SC2016
  inner='mount --bind "$1/etc" /etc/libvirt && mount --bind "$1/run" /run/libvirt &&
mount --bind "$1/lib" /var/lib/libvirt && mount --bind "$1/log" /var/log/libvirt &&
mount --bind "$1/cache" /var/cache/libvirt &&
exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid'
  netns=()
  [ -z "$ns" ] || netns=(ip netns exec "$ns")
  setsid "${netns[@]}" unshare -m --propagation private sh -c "$inner" libvirtd-host "$dir" \
    </dev/null >"$dir/libvirtd.out" 2>&1 &
  echo $! > "$dir/libvirtd.pid"
  # Cold, libvirtd probes QEMU's capabilities (~10 s, kept in DIR/cache).
  for _ in $(seq 1 1200); do
    kill -0 "$(cat "$dir/libvirtd.pid")" 2>/dev/null || break
    virsh -c "$uri" version >/dev/null 2>&1 && { echo "$uri"; exit 0; }
    sleep 0.1
  done
  # `virsh version` also needs the default emulator's capabilities: a running
  # libvirtd that could not probe QEMU fails it too. Say which it was.
  why=$(virsh -c "$uri" version 2>&1 >/dev/null | head -n 1 || true)
  probe=$(grep -m 1 'Failed to probe capabilities' "$dir/log/libvirtd.log" 2>/dev/null || true)
  echo "libvirtd: $dir did not start: ${why:-$(tail -n 3 "$dir/libvirtd.out")}${probe:+ ($probe)}" >&2
  "$0" stop "$dir"
  exit 1
  ;;
stop)
  [ -f "$dir/libvirtd.pid" ] || exit 0
  pid=$(cat "$dir/libvirtd.pid")
  for d in $(virsh -c "$uri" list --name 2>/dev/null); do virsh -c "$uri" destroy "$d" >/dev/null 2>&1 || true; done
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/libvirtd.pid"
  ;;
*) echo "usage: libvirtd.sh start|stop DIR [NETNS]" >&2; exit 2 ;;
esac
