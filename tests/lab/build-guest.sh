#!/bin/bash
# Builds the lab guest: a Debian cloud kernel + a busybox initramfs whose /init
# loads the virtio modules and runs `diskstamp write` on every virtio disk.
#
#   build-guest.sh [CACHE_DIR]     prints the guest directory on stdout
#
# The result is cached in CACHE_DIR/guest-<hash> (default
# ${BLOCKMIG_CACHE:-~/.cache/blockmig}); the hash covers this script and
# diskstamp.c, so editing either rebuilds. Output files: vmlinuz, initrd.img,
# diskstamp (static, also usable on the host as the verifier).
#
# Kernel command line knobs read by /init:
#   stamp.mode=write|idle   (default write; idle only prints heartbeats)
#   stamp.blocks=N          (4 KiB blocks to cycle over; default whole disk)
#   stamp.hb=MS             (heartbeat period, default 50)
#   stamp.dirty=MIB         (also keep MIB MiB of RAM dirty: `diskstamp dirty`; default 0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-${BLOCKMIG_CACHE:-$HOME/.cache/blockmig}}
kernel_pkg=${BLOCKMIG_GUEST_KERNEL:-linux-image-cloud-amd64}
hash=$(cat "$0" "$here/diskstamp.c" | sha256sum | cut -c1-16)
out=$cache/guest-$hash
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -x "$out/diskstamp" ]; then
  echo "$out"; exit 0
fi
mkdir -p "$cache"
# Tests may start in parallel on a cold cache: one builds, the others wait.
exec 8>"$cache/guest.lock"
flock 8
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -x "$out/diskstamp" ]; then
  echo "$out"; exit 0
fi
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "build-guest: busybox missing (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then
  echo "build-guest: $busybox is not static (apt-get install busybox-static)" >&2; exit 1
fi

# 1. kernel: resolve the metapackage to the real image package; download + unpack, never install
cd "$work"
real=$(apt-cache depends "$kernel_pkg" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$real" ] || ! apt-get download "$real" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  real=$(apt-cache depends "$kernel_pkg" | awk '/Depends: linux-image-/{print $2; exit}')
  apt-get download "$real" >/dev/null
fi
dpkg -x ./"$real"_*.deb k
kver=$(ls k/lib/modules)

# 2. the stamper (static: the initramfs has no libc)
stage=$work/out
mkdir -p "$stage"
cp k/boot/vmlinuz-"$kver" "$stage/vmlinuz"
gcc -O2 -static -pthread -o "$stage/diskstamp" "$here/diskstamp.c"

# 3. initramfs
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
cp "$stage/diskstamp" "$root/bin/diskstamp"
mods=k/lib/modules/$kver/kernel/drivers
# virtio is =m in Debian kernels: /init must insmod them in dependency order
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev \
         virtio/virtio_pci_legacy_dev virtio/virtio_pci block/virtio_blk; do
  cp "$mods/$m.ko" "$root/lib/modules/"
done
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko
done
MODE=write; BLOCKS=0; HB=50; DIRTY=0
for a in $(cat /proc/cmdline); do
  case "$a" in
    stamp.dirty=*) DIRTY=${a#*=};;
    stamp.mode=*) MODE=${a#*=};;
    stamp.blocks=*) BLOCKS=${a#*=};;
    stamp.hb=*) HB=${a#*=};;
  esac
done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done
DISKS=$(ls /dev/vd? 2>/dev/null | tr '\n' ' ')
[ "$DIRTY" -gt 0 ] && /bin/diskstamp dirty "$DIRTY" &
echo "GUEST-UP uptime=$(cut -d' ' -f1 /proc/uptime) mode=$MODE disks=$DISKS"
if [ "$MODE" = write ] && [ -n "$DISKS" ]; then
  for d in $DISKS; do /bin/diskstamp write "$d" "$BLOCKS" "$HB" & done
  wait
else
  n=0; while :; do n=$((n+1)); echo "HB dev=none n=$n"; sleep 1; done
fi
echo "GUEST-EXIT"; poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -9) > "$stage/initrd.img"
rm -rf "$out"; mv "$stage" "$out"
echo "build-guest: kernel $kver -> $out" >&2
echo "$out"
