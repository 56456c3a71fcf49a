#!/bin/bash
# Installs what blockmig needs, builds it twice and runs the whole test suite:
#   1. g++ with -Werror: unit tests, then integration tests against a real
#      QEMU guest, nfs-ganesha, tgtd and network namespaces (label integration);
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
ctest --test-dir build --output-on-failure -j2 --timeout 900

CC=clang-16 CXX=clang++-16 cmake -S . -B build-fuzz -DBLOCKMIG_FUZZ=ON -DBLOCKMIG_SANITIZE=ON
cmake --build build-fuzz -j"$jobs"
ctest --test-dir build-fuzz --output-on-failure -j2 -LE integration
