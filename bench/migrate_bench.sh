#!/bin/bash
# `blockmig migrate --copy-storage all` next to libvirt's `virsh migrate
# --live --copy-storage-all`: the same guest (the lab guest, stamping its
# disk all along), the same disk image and the same tbf-limited link between
# two lab hosts (network namespaces), in one run, alternating, N rounds.
# Prints per round and as medians: total time, the guest's pause (the
# longest gap between its heartbeats, timestamped on arrival on the host,
# across both hosts' consoles) and QEMU's own downtime count; the ratios
# blockmig/libvirt; and the physical floor, data / link rate.
#
#   bench/migrate_bench.sh [BLOCKMIG_BINARY] [DISK_MiB] [RAM_MiB] [RATE]
#
# Defaults: build/blockmig/blockmig, a 128 MiB raw disk full of real files
# (a tar of /usr/lib and /usr/share/doc: libraries, binaries, text; every
# byte allocated, so every byte crosses the link), 256 MiB of guest RAM, a 200mbit link.
# REPEAT rounds (default 2). Guest heartbeat every 50 ms.
#
# Times: blockmig's total is its own report's (the run's start to the guest
# running on the destination, pre-flight and disk copy included); libvirt's
# is its job's "Time elapsed" (domjobinfo --completed on the destination).
# Wall times of both commands are printed too. Floor: (disk size + the RAM
# bytes the thriftier tool sent) / link rate; and the same over the rate a
# plain TCP stream (socat, the disk image once) gets through the link.
#
# QEMU: both tools run the lab's QEMU flavour (tests/lab/qemu.sh): the
# system's (Debian 12: 7.2) or, with BLOCKMIG_QEMU=10, QEMU 10.0 from the
# lab cache. libvirt gets it as the domain's <emulator> (the lab's wrapper,
# which sets its own module dir and firmware); libvirtd itself stays the
# system's. The first round checks that both guests really run the same QEMU
# binary (/proc/PID/exe; libvirt's also by QMP query-version) and says which.
#
# Needs root, the lab (tests/lab: hosts.sh, guest.sh, libvirtd.sh, qemu.sh) and
# libvirt-daemon-system, libvirt-clients (Debian); not run by CI or ctest:
# it wants a quiet machine. KEEP=1 keeps the work dir (reports, logs).
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside a round ($(...)) stops the run
set -E
trap 'echo "migrate_bench: line $LINENO failed: $BASH_COMMAND" >&2' ERR
here=$(cd "$(dirname "$0")" && pwd)
lab=$here/../tests/lab
bin=${1:-$here/../build/blockmig/blockmig}
disk_mib=${2:-128}
ram_mib=${3:-256}
rate=${4:-200mbit}
repeat=${REPEAT:-2}
[ -x "$bin" ] || { echo "migrate_bench: no blockmig binary at $bin" >&2; exit 2; }
for tool in virsh libvirtd jq bc; do
  command -v "$tool" >/dev/null || { echo "migrate_bench: needs $tool" >&2; exit 2; }
done

tmp_root=${BLOCKMIG_LAB_TMP:-/var/tmp/blockmig-lab}  # a disk: O_DIRECT fails on tmpfs
mkdir -p "$tmp_root"
work=$(mktemp -d "$tmp_root/migrate-bench.XXXXXX")
name=mb$$
ns_a=$name-a ns_b=$name-b addr_b=10.77.0.2
lv_a=$work/lv-a lv_b=$work/lv-b
uri_a="qemu+unix:///system?socket=$lv_a/run/libvirt-sock"
uri_b="qemu+unix:///system?socket=$lv_b/run/libvirt-sock"
cleanup() {
  set +e
  stop_watchers
  for d in "$work"/bm*-src "$work"/bm*-dst; do [ -d "$d" ] && "$lab/guest.sh" stop "$d"; done
  "$lab/libvirtd.sh" stop "$lv_a" >/dev/null 2>&1
  "$lab/libvirtd.sh" stop "$lv_b" >/dev/null 2>&1
  "$lab/hosts.sh" down "$name" >/dev/null 2>&1
  if [ "${KEEP:-0}" = 1 ]; then echo "migrate_bench: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
calc() { echo "scale=3; $*" | bc; }
# %.15g: awk's default %.6g turns byte counts into 2.33677e+08, which bc cannot read.
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {printf "%.15g\n", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
link_bytes_per_s() {  # 200mbit -> 25000000
  local n=${1%[kmgKMG]bit} unit=${1#"${1%[kmgKMG]bit}"}
  case ${unit,,} in kbit) calc "$n * 1000 / 8" ;; mbit) calc "$n * 1000000 / 8" ;;
                     gbit) calc "$n * 1000000000 / 8" ;; *) echo "bad rate $1" >&2; exit 2 ;; esac
}
# "123.456 MiB" (virsh's units) -> bytes
to_bytes() {
  case $2 in B) calc "$1" ;; KiB) calc "$1 * 1024" ;; MiB) calc "$1 * 1048576" ;;
             GiB) calc "$1 * 1073741824" ;; *) echo 0 ;; esac
}

# Every line of FILE (even one written before or not yet created) as
# "EPOCH-SECONDS LINE" in OUT, timestamped when it arrives.
watch_console() {
  local file=$1 out=$2
  ( tail -n +1 -F "$file" 2>/dev/null | while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done ) >"$out" 2>/dev/null &
  # Rounds run in $(...) subshells: the PIDs go to a file the EXIT trap reads.
  echo $! >>"$work/watchers"
  disown $!
}
# The longest gap (s) between consecutive heartbeats in the merged,
# timestamped consoles, counting heartbeats from T0 on (the migration's start).
heartbeat_gap() {
  local t0=$1; shift
  cat "$@" | grep ' HB ' | awk -v t0="$t0" '$1 >= t0 {print $1}' | sort -n |
    awk 'NR > 1 && $1 - p > g {g = $1 - p} {p = $1} END {printf "%.3f\n", g}'
}
wait_for() {  # FILE PATTERN SECONDS
  local deadline=$((SECONDS + $3))
  while [ $SECONDS -lt $deadline ]; do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.2; done
  return 1
}
# Which QEMU binary PID runs, once per tool (rounds run in subshells: a file
# in the work dir): "EXE" or "EXE, QMP query-version X.Y.Z".
note_qemu() {  # TOOL PID [VERSION]
  local f=$work/qemu-$1 exe
  [ -e "$f" ] && return 0
  exe=$(readlink "/proc/$2/exe") || { echo "migrate_bench: no QEMU process $2 ($1)" >&2; exit 1; }
  echo "$exe${3:+, QMP query-version $3}" >"$f"
}
# After the first round of both: the same QEMU binary on both sides, or stop.
check_qemus() {
  local bm lv
  bm=$(cat "$work/qemu-blockmig") lv=$(cat "$work/qemu-libvirt")
  echo "migrate_bench: running QEMU: blockmig $bm; libvirt $lv" >&2
  [ "${bm%%,*}" = "${lv%%,*}" ] ||
    { echo "migrate_bench: blockmig and libvirt run different QEMU binaries" >&2; exit 1; }
}
# Each watcher by its PID: its children (tail, the loop) first.
stop_watchers() {
  [ -f "$work/watchers" ] || return 0
  local p
  for p in $(cat "$work/watchers"); do pkill -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  rm -f "$work/watchers"
}

read -r guest accel < <("$lab/guest.sh" prepare)
# The QEMU flavour for everything below: blockmig's guests (guest.sh applies
# it too), blockmig's own tools (BLOCKMIG_QEMU_DIR) and libvirt's <emulator>.
flavour=$("$lab/qemu.sh" env)
while IFS= read -r kv; do [ -z "$kv" ] || export "${kv?}"; done <<<"$flavour"
emulator=$(command -v qemu-system-x86_64)
append="stamp.blocks=8192 stamp.hb=50"
cmdline="console=ttyS0 quiet panic=-1 stamp.hb=100 $append"
link=$(link_bytes_per_s "$rate")
echo "migrate_bench: ${disk_mib} MiB disk of real files, ${ram_mib} MiB RAM, link $rate, $repeat rounds, accel $accel, work dir $work"
echo "migrate_bench: QEMU ${BLOCKMIG_QEMU:-system}: blockmig's guests $(qemu-system-x86_64 --version | head -n 1);" \
     "libvirt's <emulator> $emulator: $("$emulator" --version | head -n 1)"
"$lab/hosts.sh" up "$name" "$rate" >/dev/null
echo "migrate_bench: starting two libvirtd (cold: ~10 s each)"
"$lab/libvirtd.sh" start "$lv_a" "$ns_a" >/dev/null
"$lab/libvirtd.sh" start "$lv_b" "$ns_b" >/dev/null
truncate -s "${disk_mib}M" "$work/base.raw"
tar cf - /usr/lib /usr/share/doc 2>/dev/null | head -c "$((disk_mib << 20))" |
  dd of="$work/base.raw" bs=1M conv=notrunc,fsync iflag=fullblock status=none || true
disk_bytes=$((disk_mib * 1048576))

# What TCP itself gets through this link (tbf counts Ethernet and IP headers,
# ~4.6 % at MTU 1500; a busy CPU delays it): the disk image sent once with
# socat, A -> B.
ip netns exec "$ns_b" socat -u TCP-LISTEN:5999,reuseaddr /dev/null &
listener=$!
sleep 0.5
t0=$(now)
ip netns exec "$ns_a" socat -u "$work/base.raw" TCP:$addr_b:5999
tcp_rate=$(calc "$disk_bytes / ($(now) - $t0)")
wait "$listener" 2>/dev/null || true

disk_args() {  # IMAGE
  echo "-blockdev driver=file,node-name=disk0-file,filename=$1,cache.direct=on,aio=native" \
       "-blockdev driver=raw,node-name=disk0-fmt,file=disk0-file,cache.direct=on" \
       "-device virtio-blk-pci,drive=disk0-fmt,id=disk0"
}

# The lab guest of a blockmig round in DIR (its disk DIR/disk.raw) on host
# NETNS; any further arguments go to QEMU (the destination's -incoming defer).
start_guest() {  # DIR NETNS [QEMU ARGUMENTS...]
  local dir=$1 netns=$2
  shift 2
  # shellcheck disable=SC2046
  BLOCKMIG_NETNS=$netns BLOCKMIG_GUEST_MEM=$ram_mib BLOCKMIG_GUEST_APPEND=$append \
    "$lab/guest.sh" start "$dir" $(disk_args "$dir/disk.raw") "$@" >/dev/null
}

# One round of blockmig; prints "total wall hb_gap downtime_ms ram_bytes
# moved_bytes" (moved: every stream, the disk's carrying what the guest wrote
# while it was copied too).
blockmig_round() {
  local i=$1 s=$work/bm$1-src d=$work/bm$1-dst
  mkdir -p "$s" "$d"
  cp "$work/base.raw" "$s/disk.raw"
  truncate -s "${disk_mib}M" "$d/disk.raw"
  start_guest "$s" "$ns_a"
  start_guest "$d" "$ns_b" -incoming defer
  wait_for "$s/console.log" "ACK dev=vda" 180 || { echo "migrate_bench: blockmig guest did not start" >&2; exit 1; }
  note_qemu blockmig "$(cat "$s/qemu.pid")"
  watch_console "$s/console.log" "$s/hb"
  watch_console "$d/console.log" "$d/hb"
  sleep 1
  local t0 t1
  t0=$(now)
  "$bin" --output json migrate --src-qmp "$s/qmp.sock" --dst-qmp "$d/qmp.sock" --dst-addr "$addr_b" \
    --copy-storage all --state-dir "$work/state" --report "$work/blockmig-round$i.svg" \
    >"$work/bm$i.json" 2>"$work/bm$i.err" || { echo "migrate_bench: blockmig failed: $(tail -n 2 "$work/bm$i.err")" >&2; exit 1; }
  t1=$(now)
  wait_for "$d/console.log" "HB" 30 || true
  sleep 2  # heartbeats from the destination after the switchover
  stop_watchers
  local done_line gap
  done_line=$(tail -n 1 "$work/bm$i.json")
  gap=$(heartbeat_gap "$t0" "$s/hb" "$d/hb")
  "$lab/guest.sh" stop "$d"; "$lab/guest.sh" stop "$s"
  rm -f "$s/disk.raw" "$d/disk.raw"
  echo "$(jq -r .total_seconds <<<"$done_line") $(calc "($t1 - $t0) / 1") $gap" \
       "$(jq -r .downtime_ms <<<"$done_line") $(jq -r '[.streams[] | select(.stream == "ram" or .stream == "multifd") | .bytes] | add' <<<"$done_line")" \
       "$(jq -r '[.streams[].bytes] | add' <<<"$done_line")"
}

# ACPI on, as in blockmig's guests (QEMU's default); without <acpi/> libvirt
# 9.0 passes -no-acpi, which QEMU 10 no longer knows.
domain_xml() {
  cat <<XML
<domain type='qemu'>
  <name>bench</name>
  <memory unit='MiB'>$ram_mib</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$guest/vmlinuz</kernel><initrd>$guest/initrd.img</initrd>
    <cmdline>$cmdline</cmdline></os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>$emulator</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source file='/var/lib/libvirt/images/bench.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='/var/log/libvirt/qemu/bench-serial.log'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
}

# One round of libvirt; prints "job_time wall hb_gap downtime_ms ram_bytes".
libvirt_round() {
  local i=$1 src_log=$lv_a/log/qemu/bench-serial.log dst_log=$lv_b/log/qemu/bench-serial.log
  cp "$work/base.raw" "$lv_a/lib/images/bench.raw"
  rm -f "$lv_b/lib/images/bench.raw" "$src_log" "$dst_log"
  truncate -s "${disk_mib}M" "$lv_b/lib/images/bench.raw"  # libvirt needs it there, same size
  domain_xml >"$work/bench.xml"
  virsh -c "$uri_a" create "$work/bench.xml" >/dev/null
  wait_for "$src_log" "ACK dev=vda" 180 || { echo "migrate_bench: libvirt guest did not start" >&2; exit 1; }
  if [ ! -e "$work/qemu-libvirt" ]; then
    local version
    version=$(virsh -c "$uri_a" qemu-monitor-command bench '{"execute":"query-version"}' |
              jq -r '.return.qemu | "\(.major).\(.minor).\(.micro)"')
    note_qemu libvirt "$(cat "$lv_a/run/qemu/bench.pid")" "$version"
  fi
  watch_console "$src_log" "$work/lv$i-src.hb"
  watch_console "$dst_log" "$work/lv$i-dst.hb"
  sleep 1
  local t0 t1
  t0=$(now)
  virsh -c "$uri_a" migrate --live --copy-storage-all bench "$uri_b" "tcp://$addr_b" \
    --listen-address "$addr_b" >"$work/lv$i.out" 2>&1 || { echo "migrate_bench: virsh migrate failed: $(tail -n 2 "$work/lv$i.out")" >&2; exit 1; }
  t1=$(now)
  wait_for "$dst_log" "HB" 30 || true
  sleep 2
  stop_watchers
  local info gap elapsed downtime mem
  info=$(virsh -c "$uri_b" domjobinfo bench --completed)
  echo "$info" >"$work/lv$i.jobinfo"
  gap=$(heartbeat_gap "$t0" "$work/lv$i-src.hb" "$work/lv$i-dst.hb")
  elapsed=$(awk -F: '/^Time elapsed:/ {print $2+0}' <<<"$info")
  downtime=$(awk -F: '/^Total downtime:/ {print $2+0}' <<<"$info")
  read -r mem unit < <(awk -F: '/^Memory processed:/ {print $2}' <<<"$info")
  virsh -c "$uri_b" destroy bench >/dev/null
  rm -f "$lv_a/lib/images/bench.raw" "$lv_b/lib/images/bench.raw"
  echo "$(calc "$elapsed / 1000") $(calc "($t1 - $t0) / 1") $gap $downtime $(to_bytes "$mem" "$unit")"
}

bm_total=() bm_wall=() bm_gap=() bm_down=() bm_moved=() lv_total=() lv_wall=() lv_gap=() lv_down=() ram_min=
printf '%-8s %5s %9s %9s %9s %12s %10s\n' tool round total_s wall_s hb_gap_s qemu_down_ms ram_MiB
for i in $(seq 1 "$repeat"); do
  # Alternate who goes first: a warm cache or a busy neighbour favours neither.
  order="blockmig libvirt"; [ $((i % 2)) = 0 ] && order="libvirt blockmig"
  for tool in $order; do
    if [ "$tool" = blockmig ]; then r=$(blockmig_round "$i"); else r=$(libvirt_round "$i"); fi
    read -r total wall gap down ram moved <<<"$r"
    printf '%-8s %5s %9s %9s %9s %12s %10s\n' "$tool" "$i" "$total" "$wall" "$gap" "$down" \
      "$(calc "$ram / 1048576")"
    if [ "$tool" = blockmig ]; then
      bm_total+=("$total") bm_wall+=("$wall") bm_gap+=("$gap") bm_down+=("$down") bm_moved+=("$moved")
    else
      lv_total+=("$total") lv_wall+=("$wall") lv_gap+=("$gap") lv_down+=("$down")
    fi
    if [ -z "$ram_min" ] || [ "$(calc "$ram < $ram_min")" = 1 ]; then ram_min=$ram; fi
  done
  [ "$i" != 1 ] || check_qemus
done

floor=$(calc "($disk_bytes + $ram_min) / $link")
tcp_floor=$(calc "($disk_bytes + $ram_min) / $tcp_rate")
bt=$(median "${bm_total[@]}") lt=$(median "${lv_total[@]}")
bg=$(median "${bm_gap[@]}") lg=$(median "${lv_gap[@]}")
echo
echo "medians of $repeat rounds ($disk_mib MiB disk, $ram_mib MiB RAM, $rate):"
echo "  blockmig total $bt s (wall $(median "${bm_wall[@]}") s), heartbeat gap $bg s, QEMU downtime $(median "${bm_down[@]}") ms"
echo "  libvirt  job   $lt s (wall $(median "${lv_wall[@]}") s), heartbeat gap $lg s, QEMU downtime $(median "${lv_down[@]}") ms"
echo "  floor $floor s = ($disk_mib MiB disk + $(calc "$ram_min / 1048576") MiB RAM) / $rate"
echo "  TCP floor $tcp_floor s: the same bytes at the $(calc "$tcp_rate / 1048576") MiB/s socat got through the link"
moved=$(median "${bm_moved[@]}")
echo "  blockmig moved $(calc "$moved / 1048576") MiB (RAM, and the disk with what the guest wrote while it was copied):" \
     "$(calc "$moved / $link") s at the link rate, $(calc "$moved / $tcp_rate") s at socat's"
verdict() { [ "$(calc "$1 <= $2")" = 1 ] && echo met || echo MISSED; }
echo "  blockmig/libvirt total: $(calc "$bt / $lt")  (target <= 0.8: $(verdict "$bt" "0.8 * $lt"))"
echo "  blockmig/floor total:   $(calc "$bt / $floor")  (target <= 1.15: $(verdict "$bt" "1.15 * $floor")); over the TCP floor $(calc "$bt / $tcp_floor")"
echo "  blockmig/libvirt heartbeat gap: $(calc "$bg / $lg")  (target <= 1: $(verdict "$bg" "$lg"))"
[ "${KEEP:-0}" = 1 ] && echo "  reports: $work/blockmig-round*.svg"
exit 0
