#!/bin/bash
# A private iSCSI target for tests: tgtd with thin-provisioned LUNs backed by
# sparse files (UNMAP / WRITE SAME punch holes; GET LBA STATUS works).
#
#   iscsi.sh start STATE_DIR PORT SIZE [NLUNS] [ADDR]  prints "PID IQN"; LUNs 1..NLUNS
#   iscsi.sh stop  STATE_DIR                           deletes the target, stops tgtd by PID
#
# With BLOCKMIG_ISCSI_CHAP=USER:PASSWORD in the environment the target admits
# only initiators that log in with that CHAP account (tgtadm(8) "account").
# (tgtadm takes the password in its argv: fine for a throwaway test target.)
#
# URL of LUN n: iscsi://ADDR:PORT/IQN/n. The control port (-C) is derived from
# PORT so several targets can run side by side. tgtd ignores SIGTERM: stopping
# means deleting targets, then "--op delete --mode system", then SIGKILL.
set -euo pipefail
cmd=$1; state=$2
ns=()
[ -z "${BLOCKMIG_NETNS:-}" ] || ns=(ip netns exec "$BLOCKMIG_NETNS")
case $cmd in
start)
  port=$3; size=$4; nluns=${5:-1}; addr=${6:-127.0.0.1}
  ctl=$((port % 10000 + 20000))
  iqn=iqn.2024-01.blockmig.lab:$(basename "$state")-$port  # unique: tests find their hop by IQN
  mkdir -p "$state"; state=$(cd "$state" && pwd)
  setsid "${ns[@]}" tgtd -f -C "$ctl" --iscsi portal="$addr:$port" >"$state/tgtd.log" 2>&1 &
  pid=$!; echo "$pid $ctl" > "$state/tgtd.pid"
  tgt="${ns[*]} tgtadm -C $ctl --lld iscsi"
  ready=0
  for _ in $(seq 1 250); do
    $tgt --mode system --op show >/dev/null 2>&1 && { ready=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  if [ $ready = 0 ]; then
    echo "iscsi: tgtd did not start on $addr:$port; see $state/tgtd.log" >&2
    kill -KILL "$pid" 2>/dev/null || true; exit 1
  fi
  $tgt --mode target --op new --tid 1 --targetname "$iqn"
  for lun in $(seq 1 "$nluns"); do
    [ -f "$state/lun$lun.img" ] || truncate -s "$size" "$state/lun$lun.img"
    $tgt --mode logicalunit --op new --tid 1 --lun "$lun" --backing-store "$state/lun$lun.img" --bstype rdwr
    $tgt --mode logicalunit --op update --tid 1 --lun "$lun" --params thin_provisioning=1
  done
  $tgt --mode target --op bind --tid 1 --initiator-address ALL
  if [ -n "${BLOCKMIG_ISCSI_CHAP:-}" ]; then
    $tgt --mode account --op new --user "${BLOCKMIG_ISCSI_CHAP%%:*}" --password "${BLOCKMIG_ISCSI_CHAP#*:}"
    $tgt --mode account --op bind --tid 1 --user "${BLOCKMIG_ISCSI_CHAP%%:*}"
  fi
  echo "$pid $iqn"
  ;;
stop)
  [ -f "$state/tgtd.pid" ] || exit 0
  read -r pid ctl < "$state/tgtd.pid"
  tgt="${ns[*]} tgtadm -C $ctl --lld iscsi"
  $tgt --mode target --op delete --force --tid 1 >/dev/null 2>&1 || true
  $tgt --op delete --mode system >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$state/tgtd.pid"
  ;;
*) echo "usage: iscsi.sh start|stop ..." >&2; exit 2 ;;
esac
