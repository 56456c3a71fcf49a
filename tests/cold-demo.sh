#!/bin/bash
# Runs examples/demo.sh the way a newcomer does on a fresh machine: with an
# empty lab cache (BLOCKMIG_CACHE), so the guest kernel and initramfs are
# fetched and built from scratch and the KVM probe runs. Fails unless the demo
# ends in PASS and its output shows real progress lines (bytes, rate) and the
# move summary. Needs root, like the demo. Prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=$(mktemp -d /var/tmp/blockmig-cold-cache.XXXXXX)
log=$(mktemp /var/tmp/blockmig-cold-demo.XXXXXX.log)
trap 'rm -rf "$cache" "$log"' EXIT
start=$SECONDS
status=0
BLOCKMIG_CACHE=$cache ./examples/demo.sh 2>&1 | tee "$log" || status=$?
echo "cold-demo: took $((SECONDS - start)) s"
fail() { echo "cold-demo: FAIL: $*" >&2; exit 1; }
[ "$status" -eq 0 ] || fail "examples/demo.sh exited $status"
grep -q '== PASS' "$log" || fail "the demo did not print PASS"
grep -Eq '^disk0 +(copy|ready) +[0-9.]+% +[0-9.]+ [KMG]iB / [0-9.]+ [KMG]iB +[0-9.]+ [KMG]iB/s' "$log" ||
  fail "no progress line with real bytes and rate"
! grep -q ' 0 B / 0 B' "$log" || fail "a progress line shows 0 B / 0 B"
grep -q '^summary: 1 disk, copied ' "$log" || fail "no move summary"
echo "cold-demo: PASS"
