#!/bin/bash
# Unpacks QEMU 10.0 (Debian 13's version, from bookworm-backports) into the lab
# cache on a Debian 12 machine, without touching the system's QEMU 7.2 or its
# apt configuration: apt runs with a private sources list, lists and cache
# directory, `apt-get download` fetches the .debs and `dpkg -x` unpacks them
# (nothing is installed).
#
#   fetch-qemu10.sh [CACHE_DIR]   prints the prefix, e.g. CACHE/qemu10-<hash>
#
# The prefix holds usr/bin/{qemu-system-x86_64,qemu-img,qemu-io,qemu-storage-daemon},
# block modules in usr/lib/x86_64-linux-gnu/qemu (QEMU_MODULE_DIR; this build
# does not find them on its own) and firmware in usr/share/seabios and
# usr/share/qemu (-L). lab-bin/ holds wrappers of the same names that add
# those settings, for the lab to put first in PATH (or a libvirt domain's
# <emulator>: libvirt clears the environment, the wrapper sets its own). The
# prefix is reused while this script is unchanged. Verified: 10.0.x runs
# against Debian 12's libraries.
#
# Every module this QEMU knows is unpacked, the GUI, OpenGL and SPICE ones
# too: a module missing from QEMU_MODULE_DIR is looked for next in the
# system's module dir, and loading QEMU 7.2's ui-opengl.so aborts QEMU 10
# ("Only modules from the same build can be loaded", then an assertion in
# module_load_dso). qom-list-types loads every QOM module, and libvirt sends
# it when it probes an emulator: without them libvirt cannot use QEMU 10.
set -euo pipefail
cache=${1:-${BLOCKMIG_CACHE:-$HOME/.cache/blockmig}}
hash=$(sha256sum < "$0" | cut -c1-16)
prefix=$cache/qemu10-$hash
if [ -x "$prefix/usr/bin/qemu-system-x86_64" ] && [ -s "$prefix/VERSION" ]; then
  echo "$prefix"; exit 0
fi
mkdir -p "$cache"
# Tests may start in parallel on a cold cache: one fetches, the others wait.
exec 8>"$cache/qemu10.lock"
flock 8
if [ -x "$prefix/usr/bin/qemu-system-x86_64" ] && [ -s "$prefix/VERSION" ]; then
  echo "$prefix"; exit 0
fi
work=$(mktemp -d "$cache/qemu10-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$work/sources.list"
# Private apt state: the system's sources, lists and package cache stay untouched.
apt_opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=-
          -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache"
          -o APT::Sandbox::User=root)
echo "fetch-qemu10: fetching QEMU 10 from bookworm-backports into $prefix" >&2
apt-get "${apt_opts[@]}" update -qq >/dev/null
pkgs=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils qemu-block-extra seabios
      qemu-system-modules-opengl qemu-system-modules-spice qemu-system-gui)
selected=()
for p in "${pkgs[@]}"; do
  v=$(apt-cache "${apt_opts[@]}" madison "$p" | awk '/bookworm-backports/ {print $3; exit}')
  [ -n "$v" ] || { echo "fetch-qemu10: $p is not in bookworm-backports" >&2; exit 1; }
  selected+=("$p=$v")
done
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq "${selected[@]}" >/dev/null)
for f in "$work/debs"/*.deb; do dpkg -x "$f" "$work/root"; done

# Wrappers: the unpacked binaries with their own modules and firmware.
mkdir -p "$work/root/lab-bin"
for tool in qemu-system-x86_64 qemu-img qemu-io qemu-nbd qemu-storage-daemon; do
  extra=
  [ "$tool" != qemu-system-x86_64 ] || extra="-L '$prefix/usr/share/seabios' -L '$prefix/usr/share/qemu'"
  cat > "$work/root/lab-bin/$tool" <<WRAPPER
#!/bin/sh
# QEMU 10 unpacked by tests/lab/fetch-qemu10.sh, with its own modules and firmware.
QEMU_MODULE_DIR='$prefix/usr/lib/x86_64-linux-gnu/qemu' exec '$prefix/usr/bin/$tool' $extra "\$@"
WRAPPER
  chmod +x "$work/root/lab-bin/$tool"
done
version=$("$work/root/usr/bin/qemu-system-x86_64" --version | head -n 1)
[[ $version == *"version 10."* ]] || { echo "fetch-qemu10: unexpected $version" >&2; exit 1; }
rm -rf "$prefix"; mv "$work/root" "$prefix"
# What libvirt's capability probe does, through the wrapper and with an empty
# environment as libvirt runs it: a module of another build would abort it.
# VERSION is written only after it passed: the prefix counts as fetched then.
if ! printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"qom-list-types"}' '{"execute":"quit"}' |
     env -i "$prefix/lab-bin/qemu-system-x86_64" -S -no-user-config -nodefaults -nographic \
       -machine none,accel=tcg -qmp stdio >"$work/probe.out" 2>&1; then
  echo "fetch-qemu10: QEMU 10 failed libvirt's probe (qom-list-types): $(tail -n 3 "$work/probe.out")" >&2
  rm -rf "$prefix"
  exit 1
fi
echo "$version" > "$prefix/VERSION"
echo "fetch-qemu10: $version -> $prefix" >&2
echo "$prefix"
