#!/bin/bash
# A private OpenSSH server for tests, in a lab host's network namespace, with
# throw-away keys: nothing of the machine's own ssh setup is used or touched.
#
#   sshd.sh start DIR ADDR PORT [NETNS]   prints the sshd PID once it accepts
#   sshd.sh stop  DIR                     stops it by PID
#
# DIR receives: host_key (the server's), user_key (the client's, authorized
# for every user, root included: PermitRootLogin prohibit-password), and
# ssh_config, a client config naming that identity and a known_hosts that
# trusts only this server's key (StrictHostKeyChecking yes), for `ssh -F` or
# blockmig's BLOCKMIG_SSH_CONFIG. StrictModes is off: DIR lives in the lab's
# temp tree, whose modes sshd would otherwise refuse.
set -euo pipefail
cmd=$1; dir=$2
case $cmd in
start)
  addr=$3; port=$4; netns=${5:-}
  ns=(); [ -z "$netns" ] || ns=(ip netns exec "$netns")
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  rm -f "$dir/host_key" "$dir/user_key"
  ssh-keygen -q -t ed25519 -N '' -C blockmig-lab-host -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -C blockmig-lab-user -f "$dir/user_key"
  cp "$dir/user_key.pub" "$dir/authorized_keys"
  echo "[$addr]:$port $(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
  cat > "$dir/sshd_config" <<CONF
ListenAddress $addr:$port
HostKey $dir/host_key
PidFile none
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowStreamLocalForwarding yes
LogLevel VERBOSE
CONF
  cat > "$dir/ssh_config" <<CONF
Host *
  IdentityFile $dir/user_key
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
CONF
  mkdir -p /run/sshd   # sshd's privilege-separation directory
  setsid "${ns[@]}" /usr/sbin/sshd -D -e -f "$dir/sshd_config" >"$dir/sshd.log" 2>&1 &
  pid=$!; echo "$pid" > "$dir/sshd.pid"
  for _ in $(seq 1 250); do
    if "${ns[@]}" bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null; then
      echo "$pid"; exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  echo "sshd: not accepting on $addr:$port; $(tail -n 3 "$dir/sshd.log" 2>/dev/null)" >&2
  kill -KILL "$pid" 2>/dev/null || true; exit 1
  ;;
stop)
  [ -f "$dir/sshd.pid" ] || exit 0
  pid=$(cat "$dir/sshd.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/sshd.pid"
  ;;
*) echo "usage: sshd.sh start DIR ADDR PORT [NETNS] | stop DIR" >&2; exit 2 ;;
esac
