#!/bin/bash
# `blockmig convert` next to `qemu-img convert` on the same inputs, in one
# run: qemu-img with its defaults and with `-m 16 -W` (the faster of the two
# is the reference), reported as ratios reference/blockmig (> 1: blockmig is
# faster) with each tool's peak RSS (/usr/bin/time -v).
#
#   bench/convert_bench.sh [BLOCKMIG_BINARY] [DISK_MiB] [DATA_MiB]
#
# Content is realistic, not random: real files (a tar of /usr/lib and
# /usr/share/doc: libraries, binaries, text) laid out in 8 MiB runs spread
# evenly across a DISK_MiB (default 1024) raw disk, DATA_MiB (default 400) in
# all; the rest are holes. Cases and targets (issue 11):
#   monolithicSparse -> qcow2    >= 1.3
#   streamOptimized  -> qcow2    >= 1.6
#   raw -> streamOptimized       >= 4
#   qcow2 -> raw                 >= 1.0
# Every output is checked with `qemu-img compare` against the source. Each
# time is the best of REPEAT (default 3) runs.
#
# Durability, so the comparison is fair: blockmig fdatasyncs its output
# before renaming it into place (a conversion that reports success is on
# disk). `qemu-img convert` opens its output with cache=unsafe by default and
# never flushes it: when it exits, the data may still be only in the page
# cache. The reference times (qemu-img, qemu -W, ratio) therefore include
# `sync -d OUTPUT`, one fdatasync of qemu-img's output, so both sides deliver
# the same thing. For the record, the last columns give qemu-img's best time
# without that flush and blockmig's ratio against it.
# Not run by ctest: it wants a quiet machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/blockmig/blockmig}
disk_mib=${2:-1024}
data_mib=${3:-400}
[ -x "$bin" ] || { echo "convert_bench: no blockmig binary at $bin" >&2; exit 2; }
command -v qemu-img >/dev/null || { echo "convert_bench: qemu-img missing" >&2; exit 2; }

tmp_root=${BLOCKMIG_LAB_TMP:-/var/tmp/blockmig-lab}
mkdir -p "$tmp_root"
work=$(mktemp -d "$tmp_root/convert-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "convert_bench: ${disk_mib} MiB disk, ${data_mib} MiB of real files in 8 MiB runs, $(nproc) CPUs, work dir $work"
tar cf - /usr/lib /usr/share/doc 2>/dev/null | head -c "$((data_mib << 20))" >"$work/data.bin" || true
truncate -s "${disk_mib}M" "$work/src.raw"
runs=$((data_mib / 8))
stride=$((disk_mib / runs))
for i in $(seq 0 $((runs - 1))); do
  dd if="$work/data.bin" of="$work/src.raw" bs=1M skip=$((i * 8)) seek=$((i * stride)) count=8 \
     conv=notrunc status=none
done
rm -f "$work/data.bin"
qemu-img convert -O vmdk -o subformat=monolithicSparse "$work/src.raw" "$work/src-sparse.vmdk"
qemu-img convert -O vmdk -o subformat=streamOptimized "$work/src.raw" "$work/src-stream.vmdk"
qemu-img convert -O qcow2 "$work/src.raw" "$work/src.qcow2"
sync

repeat=${REPEAT:-3}
# run NAME OUTPUT CMD...: the best wall seconds of $repeat runs (the machine
# may be shared: the minimum is the least disturbed) and the largest peak RSS
# (KiB) into $secs / $rss; OUTPUT is removed before each run.
run() {
  local name=$1 out=$2; shift 2
  secs=""; rss=0
  for _ in $(seq "$repeat"); do
    rm -f "$out"
    /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null 2>"$work/err.txt" || {
      echo "convert_bench: $name failed:" >&2; cat "$work/err.txt" "$work/time.txt" >&2; exit 1; }
    local s r
    s=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); v = 0; for (i = 1; i <= n; i++) v = v * 60 + t[i]; print v}' "$work/time.txt")
    r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
    if [ -z "$secs" ] || [ "$(echo "$s < $secs" | bc -l)" = 1 ]; then secs=$s; fi
    if [ "$r" -gt "$rss" ]; then rss=$r; fi
  done
}

echo "convert_bench: qemu-img times include 'sync -d OUTPUT' (blockmig fdatasyncs, qemu-img's cache=unsafe does not);"
echo "convert_bench: 'no-flush' is qemu-img's best time without it, 'ratio nf' blockmig's ratio against that"
printf "%-26s %9s %9s %9s %7s %10s %10s %6s %9s %8s\n" case "blockmig" "qemu-img" "qemu -W" ratio "bm RSS" "qemu RSS" target \
  "no-flush" "ratio nf"
bench_case() {
  local label=$1 src=$2 target=$3 ext=$4 min=$5; shift 5
  local bm_args=("$@")
  local out="$work/out.$ext"
  run blockmig "$out" "$bin" convert "${bm_args[@]}" "$src" "$out"; local bm=$secs bm_rss=$rss
  qemu-img compare -q "$src" "$out" || { echo "convert_bench: $label: blockmig output differs" >&2; exit 1; }
  # sh runs qemu-img, then fdatasyncs its output ($0): durable, as blockmig's.
  local flushed=(sh -c '"$@" && sync -d "$0"' "$out")
  run qemu-img "$out" "${flushed[@]}" qemu-img convert $target "$src" "$out"; local q=$secs q_rss=$rss
  run qemu-img-W "$out" "${flushed[@]}" qemu-img convert -m 16 -W $target "$src" "$out"; local qw=$secs
  if [ "$rss" -gt "$q_rss" ]; then q_rss=$rss; fi
  run qemu-img-noflush "$out" qemu-img convert $target "$src" "$out"; local nf=$secs
  run qemu-img-W-noflush "$out" qemu-img convert -m 16 -W $target "$src" "$out"
  nf=$(echo "if ($nf < $secs) $nf else $secs" | bc -l)
  rm -f "$work/out.$ext"
  local ref ratio ratio_nf
  ref=$(echo "if ($q < $qw) $q else $qw" | bc -l)
  ratio=$(echo "scale=2; $ref / $bm" | bc -l)
  ratio_nf=$(echo "scale=2; $nf / $bm" | bc -l)
  printf "%-26s %8.2fs %8.2fs %8.2fs %6.2fx %7d MiB %7d MiB %5s %8.2fs %7.2fx\n" "$label" "$bm" "$q" "$qw" \
    "$ratio" $((bm_rss / 1024)) $((q_rss / 1024)) "$min" "$nf" "$ratio_nf"
}

bench_case "monolithicSparse->qcow2" "$work/src-sparse.vmdk" "-O qcow2" qcow2 ">=1.3" -O qcow2
bench_case "streamOptimized->qcow2" "$work/src-stream.vmdk" "-O qcow2" qcow2 ">=1.6" -O qcow2
bench_case "raw->streamOptimized" "$work/src.raw" "-O vmdk -o subformat=streamOptimized" vmdk ">=4" -O vmdk -o subformat=streamOptimized
bench_case "qcow2->raw" "$work/src.qcow2" "-O raw" raw ">=1.0" -O raw
