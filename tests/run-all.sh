#!/bin/bash
# Installs what blockmig needs, builds it twice and runs the whole test suite:
#   1. g++ with -Werror: unit tests, then integration tests against a real
#      QEMU guest, nfs-ganesha, tgtd and network namespaces (label integration);
#      the move and migrate tests once more on QEMU 10.0; examples/demo.sh on an empty cache;
#   2. clang 16 with AddressSanitizer + UndefinedBehaviorSanitizer and
#      libFuzzer: unit tests and a short run of every fuzz target (label fuzz).
# Needs root (namespaces, NFS, iSCSI). Exits non-zero if anything fails.
# Under CI=true a lab part that cannot start fails its test instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

.ci/install-deps.sh

cmake -S . -B build -DBLOCKMIG_WERROR=ON
cmake --build build -j"$jobs"
# Integration tests run real QEMU guests under TCG on 2 loaded cores: one that
# fails is run again, up to twice, and every such retry is listed at the end (a
# real bug fails three times; a retry is still a finding for the session note).
# Two tries were enough until stop 16: QEMU 7.2 under TCG breaks the guest of
# a migration that needs a second live pass (QEMU's defect, measured in
# docs/known-issues.md; nothing blockmig or the rig can avoid).
retries=$(mktemp)
trap 'rm -f "$retries"' EXIT
integration() {
  local log rc=0
  log=$(mktemp)
  "$@" --output-on-failure -j2 --timeout 900 -L integration --repeat until-pass:3 | tee "$log" || rc=$?
  grep -E 'Test +#[0-9]+: .*\*\*\*(Failed|Timeout|Exception)' "$log" >>"$retries" || true
  rm -f "$log"
  return $rc
}
ctest --test-dir build --output-on-failure -j2 --timeout 900 -LE integration
integration ctest --test-dir build

# The move and migrate tests again on QEMU 10.0 (Debian 13's version, unpacked from
# bookworm-backports into the lab cache by tests/lab/fetch-qemu10.sh): the
# same code must work on both, and 10.0 switches copy-mode in place.
# A hop whose mirror was switched in place once corrupted QEMU 10.0's heap when
# it died (docs/known-issues.md); blockmig now restarts hop mirrors instead.
BLOCKMIG_QEMU=10 integration ctest --test-dir build -R '^(Move|Migrate)'
if [[ -s $retries ]]; then
  echo "=== integration tests that failed and passed when run again:"
  cat "$retries"
fi

# The README's first command as a newcomer runs it: an empty lab cache, so the
# guest is built from scratch. It must PASS and show real progress and a summary.
tests/cold-demo.sh

CC=clang-16 CXX=clang++-16 cmake -S . -B build-fuzz -DBLOCKMIG_FUZZ=ON -DBLOCKMIG_SANITIZE=ON
cmake --build build-fuzz -j"$jobs"
ctest --test-dir build-fuzz --output-on-failure -j2 -LE integration
