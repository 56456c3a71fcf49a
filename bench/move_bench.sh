#!/bin/bash
# Throughput of `blockmig move` (local -> local) next to the same copy done by
# QEMU's own mirror with its defaults driven by hand over QMP, and next to
# `cp --sparse=always` of the same file (the physical reference). Prints MiB/s
# for each and the ratios blockmig/hand-mirror and blockmig/cp.
#
#   bench/move_bench.sh [BLOCKMIG_BINARY] [DISK_MiB] [DATA_MiB]
#
# Defaults: build/blockmig/blockmig, a 512 MiB raw disk holding 256 MiB of
# random data (no zero shortcuts) and holes after it. The guest is the lab
# guest in idle mode (heartbeats only), so the copy is all that runs. Rates are
# DATA_MiB / wall seconds from the first QMP command to the job being gone
# (pivot included) — for cp, until the copy is on disk (fsync); the median of
# REPEAT runs each.
# Needs root and the lab (tests/lab). Not run by ctest: it wants a quiet machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lab=$here/../tests/lab
bin=${1:-$here/../build/blockmig/blockmig}
disk_mib=${2:-512}
data_mib=${3:-256}
[ -x "$bin" ] || { echo "move_bench: no blockmig binary at $bin" >&2; exit 2; }

tmp_root=${BLOCKMIG_LAB_TMP:-/var/tmp/blockmig-lab}  # a disk: O_DIRECT fails on tmpfs
mkdir -p "$tmp_root"
work=$(mktemp -d "$tmp_root/move-bench.XXXXXX")
cleanup() {
  "$lab/guest.sh" stop "$work/guest" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
rate() { echo "scale=1; $data_mib / ($2 - $1)" | bc; }
secs() { echo "scale=3; ($2 - $1) / 1" | bc; }
qmp() { "$bin" --output json qmp "$work/guest/qmp.sock" "$@"; }
# Drops the page cache of one file (GNU dd: nocache with count=0 = whole file).
uncache() { dd if="$1" iflag=nocache count=0 status=none; }

echo "move_bench: ${disk_mib} MiB raw disk, ${data_mib} MiB random data, work dir $work"
truncate -s "${disk_mib}M" "$work/src.raw"
dd if=/dev/urandom of="$work/src.raw" bs=1M count="$data_mib" conv=notrunc,fsync status=none
uncache "$work/src.raw"

BLOCKMIG_GUEST_APPEND="stamp.mode=idle" "$lab/guest.sh" start "$work/guest" \
  -blockdev "driver=file,node-name=disk0-file,filename=$work/src.raw,cache.direct=on,aio=native" \
  -blockdev "driver=raw,node-name=disk0-fmt,file=disk0-file,cache.direct=on" \
  -device "virtio-blk-pci,drive=disk0-fmt,id=disk0" >/dev/null
for _ in $(seq 1 600); do grep -q GUEST-UP "$work/guest/console.log" && break; sleep 0.1; done
grep -q GUEST-UP "$work/guest/console.log" || { echo "move_bench: guest did not boot" >&2; exit 1; }

# Each way runs REPEAT times (default 3), alternating; the median is reported.
# The guest's disk hops from file to file: hand-mirror target -> blockmig
# target -> next hand-mirror target; all hold the same data.
repeat=${REPEAT:-3}
current=$work/src.raw
hand_rates=() move_rates=() cp_rates=() hand_secs=() move_secs=()
for i in $(seq 1 "$repeat"); do
  # (b) QEMU's drive-mirror with its defaults (granularity, buffer size, no
  # speed limit, background copy mode), pivoted with block-job-complete.
  uncache "$current"
  t0=$(now)
  qmp drive-mirror "{\"job-id\":\"hand\",\"device\":\"disk0-fmt\",\"target\":\"$work/hand$i.raw\",
                     \"format\":\"raw\",\"sync\":\"full\",\"mode\":\"absolute-paths\"}" >/dev/null
  until [ "$(qmp query-block-jobs | jq -r '.[0].ready')" = true ]; do
    [ "$(qmp query-block-jobs | jq length)" = 1 ] || { echo "move_bench: hand mirror vanished" >&2; exit 1; }
    sleep 0.05
  done
  qmp block-job-complete '{"device":"hand"}' >/dev/null
  until [ "$(qmp query-block-jobs | jq length)" = 0 ]; do sleep 0.05; done
  t1=$(now)
  hand_rates+=("$(rate "$t0" "$t1")")
  hand_secs+=("$(secs "$t0" "$t1")")
  [ "$current" = "$work/src.raw" ] || rm -f "$current"
  current=$work/hand$i.raw

  # (a) blockmig move of the same data.
  uncache "$current"
  t0=$(now)
  "$bin" move --qmp "$work/guest/qmp.sock" --disk disk0 --to "$work/moved$i.raw" --format raw \
    --timeout 600 >"$work/move.log" 2>&1 || { cat "$work/move.log" >&2; exit 1; }
  t1=$(now)
  move_rates+=("$(rate "$t0" "$t1")")
  move_secs+=("$(secs "$t0" "$t1")")
  qmp query-block | jq -e --arg f "$work/moved$i.raw" '.[0].inserted.file | contains($f)' >/dev/null ||
    { echo "move_bench: guest is not on moved$i.raw after blockmig move" >&2; exit 1; }
  moved_alloc=$(( $(stat -c %b "$work/moved$i.raw") * 512 / 1048576 ))
  hand_alloc=$(( $(stat -c %b "$current") * 512 / 1048576 ))
  rm -f "$current"
  current=$work/moved$i.raw

  # (c) cp of the same data, flushed to disk.
  uncache "$work/src.raw"
  t0=$(now)
  cp --sparse=always "$work/src.raw" "$work/cp.raw"
  sync "$work/cp.raw"
  t1=$(now)
  cp_rates+=("$(rate "$t0" "$t1")")
  cp_alloc=$(( $(stat -c %b "$work/cp.raw") * 512 / 1048576 ))
  rm -f "$work/cp.raw"
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
move=$(median "${move_rates[@]}"); hand=$(median "${hand_rates[@]}"); cp_rate=$(median "${cp_rates[@]}")

printf '%-34s %8s MiB/s median of: %s  (target %s MiB allocated)\n' \
  "blockmig move" "$move" "${move_rates[*]}" "$moved_alloc" \
  "drive-mirror by hand (defaults)" "$hand" "${hand_rates[*]}" "$hand_alloc" \
  "cp --sparse=always + sync" "$cp_rate" "${cp_rates[*]}" "$cp_alloc"
move_s=$(median "${move_secs[@]}"); hand_s=$(median "${hand_secs[@]}")
echo "wall seconds (median): blockmig move $move_s, hand mirror $hand_s;" \
  "blockmig's overhead beyond QEMU's job: $(echo "($move_s - $hand_s) * 1000 / 1" | bc) ms"
echo "ratio blockmig/hand-mirror: $(echo "scale=2; $move / $hand" | bc)"
echo "ratio blockmig/cp:          $(echo "scale=2; $move / $cp_rate" | bc)"
