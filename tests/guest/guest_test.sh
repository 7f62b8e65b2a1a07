#!/usr/bin/env bash
# A real Linux guest whose only NIC is our vhost-user device. QEMU (TCG: KVM cannot run a stock kernel
# on these machines) boots the Debian kernel and busybox initramfs that fetch_guest.sh caches, with a
# vhost-user virtio-net-pci device connected to guest_server. The guest's /init loads the virtio-net
# modules and brings eth0 up; the test script appended to the initrd gives eth0 10.0.2.15/24, runs
# busybox arping and ping against the gateway 10.0.2.2 (whose ARP and echo requests guest_server
# answers), sends a UDP probe (traceroute), and the guest powers off.
#
# Checks: the guest's driver negotiated with the server and both rings started (READY); the server's
# TxHandler parsed the guest's frames (ARP for 10.0.2.2, UDP to port 7777 and up, ICMPv6); arping and
# ping received replies; the test script exited 0; the guest powered off and QEMU exited 0; the server
# exited 0 after QEMU left. Everything started here is killed on every exit path.
#
# Usage: guest_test.sh GUEST_SERVER FETCH_GUEST_SH GUEST_LIB_SH. Skips (exit 0, SKIPPED line) only
# when qemu-system-x86_64 is not installed. GUEST_TIMEOUT (seconds, default 150) bounds the guest.
set -euo pipefail

server=$(realpath "$1")
fetch=$(realpath "$2")
# shellcheck source=tests/guest/guest_lib.sh
source "$3"
guest_timeout=${GUEST_TIMEOUT:-150}
gateway_mac=02:00:0a:00:02:02

if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
  exit 0
fi
command -v busybox >/dev/null || {
  echo "FAIL: busybox is not installed (apt-get install busybox-static)"
  exit 1
}

# A UNIX socket path must be short; TEST_TMPDIR can be long.
dir=$(mktemp -d /tmp/vunet_guest.XXXXXX)
server_pid=
cleanup() {
  guest_stop_pids $GUEST_QEMU_PID $server_pid
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP


fail() { guest_fail "$*" "$dir/server.log" "$dir/console.log" "$dir/qemu.log"; }

t0=$(guest_now)
guest_fetch "$fetch" || fail "fetch_guest.sh left no guest in $GUEST_CACHE"
t_fetch=$(guest_now)

# The guest's test script, appended to the initramfs.
cat >"$dir/test.sh" <<'EOF'
set -u
rc=0
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "GUEST: eth0 $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
if arping -c 3 -w 20 -I eth0 10.0.2.2; then
  echo "GUEST: arping ok"
else
  echo "GUEST: arping FAILED"
  rc=1
fi
if ping -c 3 -W 10 10.0.2.2; then
  echo "GUEST: ping ok"
else
  echo "GUEST: ping FAILED"
  rc=1
fi
echo "GUEST: neighbours: $(ip neigh show dev eth0)"
# busybox nc has no UDP; traceroute sends one UDP probe to port 7777 (+ the probe's sequence).
traceroute -n -m 1 -q 1 -w 1 -p 7777 10.0.2.2 >/dev/null 2>&1 || true
echo "GUEST: udp probe sent"
cat /proc/net/dev | grep eth0
command -v iperf3 >/dev/null && echo "GUEST: $(iperf3 --version | head -n 1)"
exit $rc
EOF
guest_initrd "$dir/test.sh" "$dir/initrd" || fail "could not build the initrd"

socket=$dir/vu.sock
"$server" --socket="$socket" --timeout=$((guest_timeout + 60)) --gateway_mac="$gateway_mac" \
  >"$dir/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 200); do
  [[ -S $socket ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
[[ -S $socket ]] || fail "guest_server did not listen on $socket"

t_boot=$(guest_now)
# The guest's script gets less time than we wait, so that it can report and power off.
script_timeout=$((guest_timeout > 40 ? guest_timeout - 30 : 10))
guest_start "$socket" "$dir/initrd" "$dir/console.log" "$dir/qemu.log" "$script_timeout"

# Wait for the guest to power off (QEMU exits), bounded.
t_ready=
note_ready() {
  if [[ -z $t_ready ]] && grep -q '^READY' "$dir/server.log"; then
    t_ready=$(guest_now)
  fi
}
qemu_rc=0
guest_wait "$guest_timeout" note_ready || qemu_rc=$?
((qemu_rc != 124)) || fail "the guest did not power off within $guest_timeout s"
t_off=$(guest_now)
[[ -n $t_ready ]] || ! grep -q '^READY' "$dir/server.log" || t_ready=$t_off

# The one-off server exits once QEMU has disconnected.
for _ in $(seq 200); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$server_pid" 2>/dev/null && fail "guest_server did not exit after QEMU left"
server_rc=0
wait "$server_pid" || server_rc=$?
server_pid=

console=$dir/console.log
slog=$dir/server.log
((qemu_rc == 0)) || fail "qemu exited with status $qemu_rc"
grep -q 'VUNET-INIT: modules loaded' "$console" || fail "the guest did not load the virtio-net modules"
grep -q 'VUNET-INIT: eth0 up' "$console" || fail "the guest has no eth0"
grep -q '^READY' "$slog" || fail "the guest's driver did not get both rings going"
grep -q '^queue 0 started' "$slog" || fail "queue 0 (receive) never started"
grep -q '^queue 1 started' "$slog" || fail "queue 1 (transmit) never started"
grep -q '^features: .*VERSION_1' "$slog" || fail "no VERSION_1 in the negotiated features"
grep -q '^frame [0-9]*: .*arp request who-has 10.0.2.2 tell 10.0.2.15' "$slog" ||
  fail "the server parsed no ARP request for 10.0.2.2 from the guest"
grep -q '^sent arp reply' "$slog" || fail "the server sent no ARP reply"
grep -Eq '^frame [0-9]+: .*udp sport [0-9]+ dport 77[0-9]{2}( |$)' "$slog" ||
  fail "the server parsed no UDP datagram to port 7777 and up"
grep -q '^frame [0-9]*: .*ipv6 .*icmpv6 type' "$slog" || fail "the server parsed no ICMPv6 frame"
grep -Eq '^Received [1-9][0-9]* response' "$console" || fail "busybox arping received no reply"
grep -q 'GUEST: arping ok' "$console" || fail "arping failed"
grep -Eq '[1-9][0-9]* packets received' "$console" || fail "ping received no reply"
grep -q 'GUEST: ping ok' "$console" || fail "ping failed"
grep -q 'VUNET-TEST: exit=0' "$console" || fail "the guest's test script failed"
grep -q 'VUNET-INIT: poweroff' "$console" || fail "the guest did not power off through /init"
grep -q '^queue 0 stopped' "$slog" || fail "queue 0 was not stopped at the end"
grep -q '^queue 1 stopped' "$slog" || fail "queue 1 was not stopped at the end"
((server_rc == 0)) || fail "guest_server exited with status $server_rc"

echo "--- guest console (markers and results):"
grep -E 'VUNET-|GUEST:|^Received|^Sent|packets received|round-trip' "$console" || true
echo "--- guest_server:"
grep -E '^(features|READY|queue|counters|exit)' "$slog" || true
echo "--- frames the server parsed (first of each kind checked):"
grep -m 1 'arp request who-has 10.0.2.2' "$slog" || true
grep -m 1 -E 'udp sport [0-9]+ dport 77' "$slog" || true
grep -m 1 'icmpv6 type' "$slog" || true
grep -m 1 'icmp type 8' "$slog" || true
echo "frame kinds: $(sed -n 's/^frame [0-9]*: .* type \(0x[0-9a-f]*\).*/\1/p' "$slog" | sort | uniq -c |
  awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')"
uptime_at_init=$(sed -n 's/.*VUNET-INIT: start (kernel [^,]*, uptime \([0-9.]*\) s).*/\1/p' "$console")
echo "timing: fetch $(guest_elapsed "$t0" "$t_fetch") s; boot to READY $(guest_elapsed "$t_boot" "$t_ready") s;" \
  "guest uptime at /init ${uptime_at_init:-?} s; boot to power-off $(guest_elapsed "$t_boot" "$t_off") s;" \
  "whole test $(guest_elapsed "$t0" "$(guest_now)") s"
echo "PASS"
