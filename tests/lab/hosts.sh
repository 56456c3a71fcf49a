#!/bin/bash
# Two lab "hosts": network namespaces NAME-a (10.77.0.1) and NAME-b (10.77.0.2)
# joined by a veth pair, with an optional tbf rate limit on both ends.
#
#   hosts.sh up   NAME [RATE]     RATE as tc understands it, e.g. 100mbit
#   hosts.sh down NAME
#   hosts.sh link NAME up|down    the link between them (a cable pulled, and back)
#
# The addresses exist only inside the namespaces this script creates, so
# several pairs (distinct NAMEs) can coexist. netem is not available on these
# machines; tbf (pure rate limiting) is.
#
# tbf's bucket holds `burst` bytes: when the qdisc is dequeued late (a timer
# tick, a busy CPU) the tokens that overflow the bucket are lost and the link
# runs below RATE. The kernel wants burst >= RATE/HZ (4 ms at HZ=250); the
# bucket here holds 10 ms of RATE (at least 32 KiB), so a plain TCP stream
# gets near RATE as on a real link: measured on a loaded 2-core machine, a
# 32 KiB bucket gave 1.43x the nominal time at 200mbit and 5x at 1gbit.
set -euo pipefail
cmd=$1; name=$2
a=$name-a; b=$name-b

# RATE in tc's syntax (bit, kbit, mbit, gbit, bps, kbps, mbps, gbps, or
# bytes/s) -> the tbf burst in bytes: 10 ms of RATE, at least 32 KiB.
burst_bytes() {
  local r=${1,,} n unit per_s
  n=${r%%[a-z]*}; unit=${r#"$n"}
  [[ $n =~ ^[0-9]+$ ]] || { echo "hosts.sh: bad rate $1" >&2; exit 2; }
  case $unit in
    bit) per_s=$((n / 8)) ;; kbit) per_s=$((n * 125)) ;; mbit) per_s=$((n * 125000)) ;;
    gbit) per_s=$((n * 125000000)) ;; ''|bps) per_s=$n ;; kbps) per_s=$((n * 1000)) ;;
    mbps) per_s=$((n * 1000000)) ;; gbps) per_s=$((n * 1000000000)) ;;
    *) echo "hosts.sh: bad rate $1" >&2; exit 2 ;;
  esac
  local b=$((per_s / 100))
  echo $((b > 32768 ? b : 32768))
}
case $cmd in
up)
  burst=
  [ -z "${3:-}" ] || burst=$(burst_bytes "$3")  # a bad RATE fails before anything exists
  ip netns add "$a"; ip netns add "$b"
  trap '[ $? = 0 ] || { ip netns del "$a" 2>/dev/null; ip netns del "$b" 2>/dev/null; }' EXIT
  # interface names are limited to 15 characters
  ia=va$$; ib=vb$$
  ip link add "$ia" netns "$a" type veth peer name "$ib" netns "$b"
  ip -n "$a" addr add 10.77.0.1/24 dev "$ia"; ip -n "$b" addr add 10.77.0.2/24 dev "$ib"
  for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
  ip -n "$a" link set "$ia" up; ip -n "$b" link set "$ib" up
  if [ -n "${3:-}" ]; then
    ip netns exec "$a" tc qdisc add dev "$ia" root tbf rate "$3" burst "$burst" latency 50ms
    ip netns exec "$b" tc qdisc add dev "$ib" root tbf rate "$3" burst "$burst" latency 50ms
  fi
  echo "$a 10.77.0.1 $b 10.77.0.2"
  ;;
link)
  for ns in "$a" "$b"; do
    for dev in $(ip -n "$ns" -o link show type veth | awk -F'[:@ ]+' '{print $2}'); do
      ip -n "$ns" link set dev "$dev" "$3"
    done
  done
  ;;
down)
  # processes still inside would keep the namespace alive: stop them first
  for ns in "$a" "$b"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ;;
*) echo "usage: hosts.sh up|down|link NAME [RATE|up|down]" >&2; exit 2 ;;
esac
