#!/bin/bash
# Installs everything blockmig needs to build, run its lab and run its tests,
# from Debian 12 packages only. Idempotent; needs root. Used by both README
# commands and by .ci/run, so a fresh machine and CI get exactly the same set.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config git
  libvirt-dev nlohmann-json3-dev libfmt-dev libnfs-dev libiscsi-dev
  libgtest-dev libgmock-dev libcli11-dev libtomlplusplus-dev zlib1g-dev
  libdeflate-dev libzstd-dev   # image formats: parallel deflate (VMDK, qcow2), zstd (qcow2)
  libssl-dev   # SHA-256 (OpenSSL libcrypto): migrate --offline compares digests of source and copy
  clang-16 libclang-rt-16-dev   # fuzz + sanitizer build (clang 14/15 cannot compile std::expected)
  # QEMU and image tools
  qemu-system-x86 qemu-utils qemu-block-extra
  # lab: NFS (ganesha + rpcbind), iSCSI (tgt), guest (busybox), netns hosts
  nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils
  tgt libiscsi-bin
  busybox-static iproute2 iputils-ping socat
  # QMP on another host (ssh://): the client blockmig runs; the server for the lab's sshd
  openssh-client openssh-server
  # migrate --tls-dir: the lab's throw-away CA and certificates (tests/lab/tls.sh)
  openssl
  # libvirt backend (daemon for later issues; no recommends keeps it small)
  libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
  # bench/ (run by hand, not by CI): JSON and arithmetic in the bench scripts
  jq bc
  # guest kernel is fetched with apt-get download; dpkg -x needs these
  apt-utils ca-certificates
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Service packages must not start daemons on install (no systemd here, and the
# lab starts its own private instances): policy-rc.d 101 forbids it.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
