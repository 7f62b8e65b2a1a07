# shellcheck shell=bash
# Shell functions for end-to-end tests of the vunet binary with a real guest (on top of
# tests/guest/guest_lib.sh, which must be sourced first):
#
#   e2e_init vunet_tcp                    # $E2E_DIR (a short path: it holds the socket), traps
#   e2e_start_vunet "$vunet" --one-off -a 10.0.2.15 ...   # sets E2E_VUNET_PID, E2E_NETNS
#   e2e_host_bg iperf3.log iperf3 -s -B 127.0.0.1 -p 5201  # a server beside vunet
#   e2e_boot "$E2E_DIR/test.sh" 60        # the guest runs test.sh (at most 60 s)
#   e2e_wait_guest 80                     # until it powers off
#   e2e_stop_vunet                        # --one-off: vunet has left; sets E2E_VUNET_RC
#   grep -q 'GUEST: ...' "$(e2e_console)"
#
# The network namespace: vunet translates guest flows to sockets of the namespace it runs in, and ICMP
# echo needs net.ipv4.ping_group_range to include its group. As root (where unshare works), vunet runs
# in a namespace of its own (unshare -n: loopback up, the range opened there), which changes nothing on
# the host; the servers and clients a test runs "on the host" (e2e_host, e2e_host_bg) then run in that
# namespace too (nsenter), so the gateway address, which reaches vunet's loopback, reaches them.
# Otherwise everything runs in the caller's namespace (E2E_NETNS=no), ping works only where the host's
# range allows it (e2e_icmp_on says), and ports are picked among those free (e2e_free_port).
#
# Everything started here is stopped on every exit path (TERM, then KILL after 2 s).

E2E_DIR=
E2E_VUNET_PID=
E2E_VUNET_RC=
E2E_NETNS=no
E2E_HOST_PIDS=()

_e2e_cleanup() {
  # shellcheck disable=SC2086
  guest_stop_pids $GUEST_QEMU_PID ${E2E_HOST_PIDS[@]+"${E2E_HOST_PIDS[@]}"} $E2E_VUNET_PID
  [[ -n $E2E_DIR ]] && rm -rf "$E2E_DIR"
}

# Makes E2E_DIR (/tmp/NAME.XXXXXX: a UNIX socket path must be short, and TEST_TMPDIR can be long) and
# sets the traps.
e2e_init() {
  E2E_DIR=$(mktemp -d "/tmp/$1.XXXXXX")
  trap _e2e_cleanup EXIT
  trap 'exit 1' INT TERM HUP
}

# Prints "FAIL: MESSAGE", vunet's log, the guest's console, QEMU's log and every *.log a test added
# in E2E_DIR; exits 1.
e2e_fail() {
  local logs=("$E2E_DIR/vunet.log" "$E2E_DIR/console.log" "$E2E_DIR/qemu.log") f
  for f in "$E2E_DIR"/*.log; do
    [[ -f $f && " ${logs[*]} " != *" $f "* ]] && logs+=("$f")
  done
  guest_fail "$*" "${logs[@]}"
}

# Starts VUNET -f -s $E2E_DIR/vunet.sock ARGS... (logging to $E2E_DIR/vunet.log) and waits until it
# listens. With E2E_RESOLV_CONF=FILE (root only), vunet reads FILE as /etc/resolv.conf (a bind mount in
# a mount namespace of its own, next to its network namespace).
e2e_start_vunet() {
  local vunet=$1
  shift
  local args=(-f -s "$E2E_DIR/vunet.sock" "$@")
  # shellcheck disable=SC2016
  if [[ -n ${E2E_RESOLV_CONF:-} ]]; then
    ((EUID == 0)) || e2e_fail "E2E_RESOLV_CONF needs root"
    E2E_NETNS=yes
    unshare -n -m sh -c 'mount --bind "$0" /etc/resolv.conf && ip link set lo up &&
      echo "0 2147483647" >/proc/sys/net/ipv4/ping_group_range && exec "$@"' \
      "$E2E_RESOLV_CONF" "$vunet" "${args[@]}" >"$E2E_DIR/vunet.log" 2>&1 &
  elif ((EUID == 0)) && unshare -n true 2>/dev/null; then
    E2E_NETNS=yes
    # unshare without --fork and sh's exec keep one process: E2E_VUNET_PID is vunet's.
    unshare -n sh -c 'ip link set lo up && echo "0 2147483647" >/proc/sys/net/ipv4/ping_group_range &&
      exec "$0" "$@"' "$vunet" "${args[@]}" >"$E2E_DIR/vunet.log" 2>&1 &
  else
    E2E_NETNS=no
    "$vunet" "${args[@]}" >"$E2E_DIR/vunet.log" 2>&1 &
  fi
  E2E_VUNET_PID=$!
  local socket=$E2E_DIR/vunet.sock
  for _ in $(seq 200); do
    [[ -S $socket ]] && break
    kill -0 "$E2E_VUNET_PID" 2>/dev/null || break
    sleep 0.05
  done
  [[ -S $socket ]] || e2e_fail "vunet did not listen on $socket"
}

# Runs CMD... where vunet's sockets live (its network namespace, if it has one of its own).
e2e_host() {
  if [[ $E2E_NETNS == yes ]]; then
    nsenter -t "$E2E_VUNET_PID" -n -- "$@"
  else
    "$@"
  fi
}

# Runs CMD... as e2e_host does, in the background, its output in $E2E_DIR/LOG; stopped at exit. Fails
# the test if it has died after 0.3 s (a server that could not bind, say).
e2e_host_bg() {
  local log=$E2E_DIR/$1
  shift
  # Not through e2e_host: a function in the background is a subshell, and $! would be its pid rather
  # than the command's (nsenter execs the command: no fork for a network namespace).
  if [[ $E2E_NETNS == yes ]]; then
    nsenter -t "$E2E_VUNET_PID" -n -- "$@" >"$log" 2>&1 </dev/null &
  else
    "$@" >"$log" 2>&1 </dev/null &
  fi
  local pid=$!
  E2E_HOST_PIDS+=("$pid")
  sleep 0.3
  kill -0 "$pid" 2>/dev/null || e2e_fail "'$*' exited at once"
}

# Prints a TCP and UDP port that nothing in vunet's namespace uses (any address, any state).
e2e_free_port() {
  local used port
  used=$(e2e_host cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null |
    awk 'NR > 1 { split($2, a, ":"); print a[2] }')
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 30000))
    grep -qi "^$(printf '%04x' "$port")$" <<<"$used" || {
      echo "$port"
      return 0
    }
  done
  return 1
}

# True if vunet said ICMP echo runs (ping sockets allowed).
e2e_icmp_on() { grep -q 'ICMP echo: on' "$E2E_DIR/vunet.log"; }

# Builds the initrd with SCRIPT as the guest's /test.sh and boots the guest against vunet's socket;
# the script gets SECONDS (default 60). GUEST_REBOOT=yes keeps QEMU going when the guest reboots.
e2e_boot() {
  guest_initrd "$1" "$E2E_DIR/initrd" || e2e_fail "could not build the initrd"
  : >"$E2E_DIR/console.log"
  guest_start "$E2E_DIR/vunet.sock" "$E2E_DIR/initrd" "$E2E_DIR/console.log" "$E2E_DIR/qemu.log" \
    "${2:-60}"
}

# Waits up to SECONDS for the guest to power off (QEMU exits 0), running ON_TICK (if given) five times
# a second meanwhile; fails the test otherwise.
e2e_wait_guest() {
  local rc=0
  guest_wait "$1" "${2:-}" || rc=$?
  ((rc != 124)) || e2e_fail "the guest did not power off within $1 s"
  ((rc == 0)) || e2e_fail "qemu exited with status $rc"
}

# The guest's console so far, as text (the serial console ends lines with CR LF): prints its path.
e2e_console() {
  tr -d '\r' <"$E2E_DIR/console.log" >"$E2E_DIR/console.txt"
  echo "$E2E_DIR/console.txt"
}

# Waits up to 10 s for a --one-off vunet to exit after QEMU left; sets E2E_VUNET_RC. Fails the test if
# it does not exit or leaves its socket.
e2e_stop_vunet() {
  for _ in $(seq 100); do
    kill -0 "$E2E_VUNET_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$E2E_VUNET_PID" 2>/dev/null && e2e_fail "vunet did not exit after QEMU left (--one-off)"
  E2E_VUNET_RC=0
  wait "$E2E_VUNET_PID" || E2E_VUNET_RC=$?
  E2E_VUNET_PID=
  ((E2E_VUNET_RC == 0)) || e2e_fail "vunet exited with status $E2E_VUNET_RC"
  [[ ! -e $E2E_DIR/vunet.sock ]] || e2e_fail "vunet left its socket behind"
}

# Writes the guest's test script to FILE: a DHCP lease on eth0 first (the initramfs's udhcpc script
# configures eth0 and prints "UDHCPC: bound ip=... router=..."), with $gw set to the default gateway,
# then the script read from standard input. Placeholders @NAME@ in it are replaced by the values of
# NAME=VALUE arguments.
#   e2e_guest_script "$E2E_DIR/test.sh" PORT=5201 <<'EOF'
#   iperf3 -c "$gw" -p @PORT@ -t 2
#   EOF
e2e_guest_script() {
  local file=$1 kv
  shift
  cat >"$file" <<'EOF'
set -u
if udhcpc -i eth0 -n -q -t 5 -T 2; then
  echo "GUEST: dhcp ok"
else
  echo "GUEST: dhcp FAILED"
  exit 1
fi
gw=$(ip -4 route show default | awk '{print $3; exit}')
echo "GUEST: addr4 $(ip -4 -o addr show dev eth0 | awk '{print $4}') gateway ${gw:-none}"
[ -n "$gw" ] || exit 1
EOF
  cat >>"$file"
  for kv in "$@"; do
    sed -i "s|@${kv%%=*}@|${kv#*=}|g" "$file"
  done
}
