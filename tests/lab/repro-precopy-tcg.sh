#!/bin/bash
# Reproducer for the QEMU 7.2-under-TCG defect (docs/known-issues.md):
# plain pre-copy of the lab guest between the two lab hosts, driven by hand
# over QMP (socat, no blockmig, no out-of-band, no disk copy: both QEMUs open
# the same raw file, as `migrate --copy-storage none` does), then the guest
# runs on the destination for SETTLE seconds and its console is searched for
# a kernel panic or oops. Stops at the first broken guest unless ALL=1.
#
#   repro-precopy-tcg.sh N DIR        (root; BLOCKMIG_QEMU selects the QEMU, see qemu.sh)
# Environment: LIMIT (downtime-limit, ms, default 100), BW (max-bandwidth,
# MiB/s, default 4), AUTOCONVERGE (1 = on), PBS (1 = pause-before-switchover
# then migrate-continue, as blockmig does; default 1), SETTLE (s, default 15),
# RATE (the link, default 200mbit), ALL (1 = run all N), MINPASSES (the
# downtime limit is 1 ms, so QEMU keeps iterating, until dirty-sync-count
# reaches MINPASSES; then LIMIT: at least that many passes; default 0 = LIMIT
# from the start).
# DIR/summary: one line per run (passes, downtime, verdict); DIR/runI.console
# the destination's console of run I.
set -u
n=$1; d=$2
lab=$(cd "$(dirname "$0")" && pwd)
settings=$("$lab/qemu.sh" env)
while IFS= read -r kv; do [ -z "$kv" ] || export "${kv?}"; done <<<"$settings"
limit=${LIMIT:-100}; bw=$((${BW:-4} << 20)); pbs=${PBS:-1}
mkdir -p "$d"; cd "$d" || exit 1
hosts=repro$$
"$lab/hosts.sh" up "$hosts" "${RATE:-200mbit}" >/dev/null || exit 1
trap '"$lab/guest.sh" stop "$d/src"; "$lab/guest.sh" stop "$d/dst"; "$lab/hosts.sh" down "$hosts"' EXIT

# One command on a fresh connection; prints its reply (or error) line.
qmp() {
  local line n=0
  coproc QMP_CONN { socat - "UNIX-CONNECT:$1" 2>/dev/null; }
  [ -n "${QMP_CONN[1]:-}" ] || return 0  # socat gone already: no socket
  printf '{"execute":"qmp_capabilities"}\n%s\n' "$2" >&"${QMP_CONN[1]}"
  while IFS= read -r -t 30 line <&"${QMP_CONN[0]}"; do
    case $line in *'"return"'* | *'"error"'*)
      n=$((n + 1)); [ $n = 2 ] && { echo "$line"; break; } ;;
    esac
  done
  local pid=${QMP_CONN_PID:-}  # unset once socat is gone (QEMU exited)
  [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
}
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p" | head -n 1; }
disk_args() {
  echo -blockdev "driver=file,node-name=disk0-file,filename=$d/disk.raw,cache.direct=on,aio=native" \
    -blockdev driver=raw,node-name=disk0-fmt,file=disk0-file,cache.direct=on \
    -device virtio-blk-pci,drive=disk0-fmt,id=disk0
}
wait_line() {  # FILE NEEDLE SECONDS
  for _ in $(seq 1 $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

for i in $(seq 1 "$n"); do
  rm -f "$d/disk.raw"; truncate -s 64M "$d/disk.raw"
  # shellcheck disable=SC2046 # disk_args is a word list on purpose
  BLOCKMIG_NETNS=$hosts-a BLOCKMIG_GUEST_APPEND="stamp.blocks=8192" \
    "$lab/guest.sh" start "$d/src" $(disk_args) >/dev/null || exit 1
  # shellcheck disable=SC2046
  BLOCKMIG_NETNS=$hosts-b BLOCKMIG_GUEST_APPEND="stamp.blocks=8192" \
    "$lab/guest.sh" start "$d/dst" $(disk_args) -incoming defer >/dev/null || exit 1
  wait_line "$d/src/console.log" "ACK dev=vda" 120 || { echo "run $i: the guest did not boot"; exit 1; }
  qmp "$d/dst/qmp.sock" '{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true}]}}' >/dev/null
  qmp "$d/dst/qmp.sock" '{"execute":"migrate-incoming","arguments":{"uri":"tcp:10.77.0.2:4444"}}' >/dev/null
  caps='{"capability":"events","state":true}'
  [ "$pbs" = 1 ] && caps+=',{"capability":"pause-before-switchover","state":true}'
  [ "${AUTOCONVERGE:-0}" = 1 ] && caps+=',{"capability":"auto-converge","state":true}'
  qmp "$d/src/qmp.sock" "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":[$caps]}}" >/dev/null
  first=$limit; [ "${MINPASSES:-0}" -gt 0 ] && first=1
  qmp "$d/src/qmp.sock" "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":$bw,\"downtime-limit\":$first}}" >/dev/null
  qmp "$d/src/qmp.sock" '{"execute":"migrate","arguments":{"uri":"tcp:10.77.0.2:4444"}}' >/dev/null
  status=
  for _ in $(seq 1 1200); do
    info=$(qmp "$d/src/qmp.sock" '{"execute":"query-migrate"}')
    status=$(field status <<<"$info")
    if [ "$first" != "$limit" ] && [ "$(field dirty-sync-count <<<"$info")" -ge "${MINPASSES:-0}" ] 2>/dev/null; then
      qmp "$d/src/qmp.sock" "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"downtime-limit\":$limit}}" >/dev/null
      first=$limit
    fi
    case $status in
    pre-switchover) qmp "$d/src/qmp.sock" '{"execute":"migrate-continue","arguments":{"state":"pre-switchover"}}' >/dev/null ;;
    completed | failed | cancelled) break ;;
    esac
    sleep 0.5
  done
  passes=$(field dirty-sync-count <<<"$info"); downtime=$(field downtime <<<"$info")
  for _ in $(seq 1 100); do
    [ "$(qmp "$d/dst/qmp.sock" '{"execute":"query-migrate"}' | field status)" = completed ] && break
    sleep 0.1
  done
  qmp "$d/dst/qmp.sock" '{"execute":"cont"}' >/dev/null
  qmp "$d/src/qmp.sock" '{"execute":"quit"}' >/dev/null
  lines=$(wc -l <"$d/dst/console.log")
  sleep "${SETTLE:-15}"
  verdict=ok
  grep -qE 'Kernel panic|Oops|BUG:|general protection' "$d/dst/console.log" && verdict=PANIC
  [ "$verdict" = ok ] && ! tail -n +"$lines" "$d/dst/console.log" | grep -q "ACK dev=vda" && verdict=no-ack
  kill -0 "$(cat "$d/dst/qemu.pid" 2>/dev/null)" 2>/dev/null || [ "$verdict" != ok ] || verdict=dst-exited
  cp "$d/dst/console.log" "$d/run$i.console"
  echo "$(date +%T) run $i: $(qemu-system-x86_64 --version | head -n 1 | cut -d' ' -f4), min passes ${MINPASSES:-0}, limit ${limit} ms, ${BW:-4} MiB/s, auto-converge ${AUTOCONVERGE:-0}: $status after $passes passes, downtime $downtime ms: $verdict" >>"$d/summary"
  "$lab/guest.sh" stop "$d/src"; "$lab/guest.sh" stop "$d/dst"
  [ "$verdict" = ok ] || [ "${ALL:-0}" = 1 ] || break
done
cat "$d/summary"
