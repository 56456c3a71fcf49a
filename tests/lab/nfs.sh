#!/bin/bash
# A private NFS server for tests: nfs-ganesha (VFS FSAL) + rpcbind, NFSv3 and v4,
# exporting EXPORT_DIR as nfs://ADDR/export (default ADDR 127.0.0.1).
#
#   nfs.sh start STATE_DIR EXPORT_DIR [ADDR]   prints ganesha's PID once NFSv3 answers
#   nfs.sh stop  STATE_DIR                     stops ganesha (and rpcbind if we started it) by PID
#
# QEMU's nfs driver speaks only NFSv3, which needs rpcbind on port 111, so only
# one such server can run per network namespace: callers serialise (the C++ lab
# holds a lock; CTest tests share RESOURCE_LOCK nfs). Needs root (the VFS FSAL
# uses open_by_handle_at). In a namespace: BLOCKMIG_NETNS=NAME.
set -euo pipefail
cmd=$1; state=$2
ns=()
[ -z "${BLOCKMIG_NETNS:-}" ] || ns=(ip netns exec "$BLOCKMIG_NETNS")

stop_pidfile() {  # SIGTERM lets ganesha unregister from rpcbind (~1.5 s)
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

case $cmd in
start)
  export_dir=$3; addr=${4:-127.0.0.1}
  mkdir -p "$state/recov" "$export_dir"
  state=$(cd "$state" && pwd); export_dir=$(cd "$export_dir" && pwd)
  if ! "${ns[@]}" rpcinfo -p 127.0.0.1 >/dev/null 2>&1; then
    mkdir -p /run/rpcbind
    setsid "${ns[@]}" rpcbind -f >"$state/rpcbind.log" 2>&1 &
    echo $! > "$state/rpcbind.pid"
    for _ in $(seq 1 150); do "${ns[@]}" rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.02; done
  fi
  # A server that died without unregistering (SIGKILL, a crashed test) leaves
  # its entries behind: drop them when nothing listens on 2049 any more.
  if "${ns[@]}" rpcinfo -p 127.0.0.1 2>/dev/null | grep -qw nfs &&
     [ -z "$("${ns[@]}" ss -Hltn 'sport = :2049')" ]; then
    for prog in 100003:3 100003:4 100005:1 100005:3; do
      "${ns[@]}" rpcinfo -d "${prog%:*}" "${prog#*:}" 2>/dev/null || true
    done
  fi
  if "${ns[@]}" rpcinfo -p 127.0.0.1 2>/dev/null | grep -qw nfs; then
    echo "nfs: another NFS server is already registered with rpcbind (port 2049 busy)" >&2
    exit 1
  fi
  cat > "$state/ganesha.conf" <<EOF
NFS_CORE_PARAM {
    Protocols = 3, 4;
    Bind_addr = $addr;
    NFS_Port = 2049;
    MNT_Port = 20048;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;   # v3 MOUNT of the pseudo path /export
}
NFSV4 {
    Graceless = true;           # no 90 s grace period at start
    RecoveryBackend = fs;
    RecoveryRoot = $state/recov;
    Lease_Lifetime = 10;
    Allow_Numeric_Owners = true;
    Only_Numeric_Owners = true;
}
NFS_KRB5 { Active_krb5 = false; }
EXPORT {
    Export_Id = 1;
    Path = $export_dir;
    Pseudo = /export;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Anonymous_Uid = 65534;
    Anonymous_Gid = 65534;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
EOF
  setsid "${ns[@]}" ganesha.nfsd -F -f "$state/ganesha.conf" -L "$state/ganesha.log" \
    -p "$state/ganesha.pidfile" >"$state/ganesha.out" 2>&1 &
  pid=$!; echo "$pid" > "$state/ganesha.pid"
  for _ in $(seq 1 300); do
    if "${ns[@]}" nfs-ls "nfs://$addr/export" >/dev/null 2>&1; then echo "$pid"; exit 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  echo "nfs: ganesha did not start; see $state/ganesha.log" >&2
  stop_pidfile "$state/ganesha.pid"; stop_pidfile "$state/rpcbind.pid"
  exit 1
  ;;
stop)
  stop_pidfile "$state/ganesha.pid"
  stop_pidfile "$state/rpcbind.pid"
  ;;
*) echo "usage: nfs.sh start|stop ..." >&2; exit 2 ;;
esac
