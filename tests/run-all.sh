#!/bin/bash
# Installs what blockmig needs, builds it twice and runs the whole test suite:
#   1. g++ with -Werror: unit tests, then integration tests against a real
#      QEMU guest, nfs-ganesha, tgtd and network namespaces (label integration);
#   2. g++ with AddressSanitizer + UndefinedBehaviorSanitizer: unit tests and
#      the fuzz smoke runs (label fuzz).
# Needs root (namespaces, NFS, iSCSI). Exits non-zero if anything fails.
# Under CI=true a lab part that cannot start fails its test instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

.ci/install-deps.sh

cmake -S . -B build -DBLOCKMIG_WERROR=ON
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j2 --timeout 900

cmake -S . -B build-asan -DBLOCKMIG_WERROR=ON -DBLOCKMIG_SANITIZE=ON
cmake --build build-asan -j"$jobs"
ctest --test-dir build-asan --output-on-failure -j2 -LE integration
