#!/bin/bash
# blockmig's main job on the embedded default lab, start to finish:
#   - installs dependencies and builds blockmig;
#   - starts the lab: a local pool (a directory), an NFS pool (nfs-ganesha on
#     127.0.0.1) and an iSCSI pool (tgtd, thin LUNs), and a QEMU guest whose
#     disk lives in the local pool and which stamps every block of it;
#   - moves the running guest's disk live: local -> NFS -> iSCSI;
#   - pauses the guest and verifies every block against its last acknowledged
#     write, then stops everything it started.
# (--bandwidth 16 keeps each copy a few seconds long, so the progress bar is
# visible while the guest keeps writing.)
# Needs root. Lab state lives in $BLOCKMIG_DEMO_DIR (default /var/tmp/blockmig-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
lab=$root/tests/lab
demo=${BLOCKMIG_DEMO_DIR:-/var/tmp/blockmig-demo}

.ci/install-deps.sh
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)" --target blockmig diskstamp >/dev/null
blockmig=$root/build/blockmig/blockmig
diskstamp=$root/build/tests/lab/diskstamp

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  "$lab/guest.sh" stop "$demo/guest" || true
  "$lab/nfs.sh" stop "$demo/nfs" || true
  "$lab/iscsi.sh" stop "$demo/iscsi" || true
}
trap cleanup EXIT
# One NFSv3 server per network namespace (rpcbind's port 111): wait for any
# lab test that has one running, as the test lab itself does.
exec 9>/run/lock/blockmig-lab-nfs.lock
flock 9
cleanup
rm -rf "$demo"; mkdir -p "$demo/local"

say "starting the lab in $demo"
"$lab/nfs.sh" start "$demo/nfs" "$demo/nfs-export" >/dev/null
echo "NFS pool:   nfs://127.0.0.1/export (nfs-ganesha, export dir $demo/nfs-export)"
read -r _ iqn < <("$lab/iscsi.sh" start "$demo/iscsi" 3260 256M 2)
echo "iSCSI pool: iscsi://127.0.0.1:3260/$iqn (tgtd, 2 thin LUNs of 256 MiB)"
qemu-img create -q -f qcow2 "$demo/local/vm1.qcow2" 256M
echo "local pool: $demo/local (guest disk vm1.qcow2, 256 MiB)"
BLOCKMIG_GUEST_APPEND="stamp.blocks=8192" "$lab/guest.sh" start "$demo/guest" \
  -blockdev "driver=file,node-name=vm1-file,filename=$demo/local/vm1.qcow2,cache.direct=on,aio=native" \
  -blockdev "driver=qcow2,node-name=vm1,file=vm1-file,cache.direct=on" \
  -device virtio-blk-pci,drive=vm1,id=disk0 >/dev/null
qmp=$demo/guest/qmp.sock
# Let the guest fill its 32 MiB stamp area once (generation 2 has begun), so
# the first copy has data to move and its progress lines have something to show.
for _ in $(seq 1 600); do grep -q '^ACK dev=vda gen=2' "$demo/guest/console.log" && break; sleep 0.2; done
echo "guest:      running ($(grep -m1 GUEST-UP "$demo/guest/console.log")), QMP $qmp"
echo "            $(grep -c '^ACK' "$demo/guest/console.log") write batches acknowledged so far"


say "moving the disk live: local -> NFS (qcow2)"
"$blockmig" move --qmp "$qmp" --disk disk0 --to nfs://127.0.0.1/export --bandwidth 16
say "moving the disk live: NFS -> iSCSI (raw, a thin LUN)"
"$blockmig" move --qmp "$qmp" --disk disk0 --to "iscsi://127.0.0.1:3260/$iqn" --format raw --bandwidth 16
echo
"$blockmig" qmp "$qmp" query-block | grep -E '"(node-name|filename|qdev)"' | head -n 4

say "pausing the guest and verifying every block against its last acknowledged write"
"$blockmig" qmp "$qmp" stop >/dev/null
ack=$(grep '^ACK' "$demo/guest/console.log" | tail -n 1)
gen=$(sed -E 's/.* gen=([0-9]+).*/\1/' <<<"$ack"); blk=$(sed -E 's/.* blk=([0-9]+).*/\1/' <<<"$ack")
echo "last ACK: $ack"
qemu-img convert -U -f raw -O raw "iscsi://127.0.0.1:3260/$iqn/1" "$demo/check.raw"
if "$diskstamp" verify "$demo/check.raw" 8192 "$gen" "$blk"; then
  say "PASS: every acknowledged block is intact"
else
  say "FAIL: the verifier found BAD or LOST blocks"; exit 1
fi
