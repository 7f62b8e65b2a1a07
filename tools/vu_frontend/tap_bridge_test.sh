#!/usr/bin/env bash
# tap_bridge against the real backend: a Linux network stack (a network namespace of its own) as the
# guest of //tools:vunet.
#
# Two namespaces, both made here and removed on every exit path:
#   host:  loopback up, ping sockets allowed; vunet runs here, so "the host's loopback" where guest
#          traffic to the gateway goes is this namespace's, and nothing touches the machine's own.
#   guest: tap_bridge's tap device vunet0, the only interface besides lo.
# Checks, in the guest namespace:
#   - busybox udhcpc gets the lease vunet was told to give (-a -n -g -D) with MTU 65520, and the
#     interface is configured with it (address, default route, MTU);
#   - the gateway's MAC is resolved by ARP (arping, then the neighbour table);
#   - ping to the gateway, a 30000-byte one included (vunet's ICMP echo through ping sockets);
#   - SLAAC from vunet's router advertisement gives a global IPv6 address; ping -6 to the router;
#   - TCP: one connection from the guest to a listener on the host's loopback (gateway address),
#     4 MiB each way, byte-exact; then again with the guest's interface at MTU 1500;
#   - UDP: 20 datagrams of 1 to 1400 bytes to an echo socket on the host's loopback, back unchanged.
# The bridge asks for every offload (--offloads=on, its default) and sets its tap's offloads to what
# vunet took: every checksum and segmentation offload (TSO, ECN, USO), so the TCP transfer goes as
# 64 KiB segments both ways (the bridge's counters show them, vunet's too).
# Then tap_bridge exits 0 on SIGTERM with its counters printed; a second one, with offloads off and
# every frame to vunet dropped (--loss-to-backend=every:1 --loss-only=all), prints its counters and
# what it dropped on SIGUSR1 and goes on, and exits 3 when vunet goes away.
#
# Usage: tap_bridge_test.sh VUNET TAP_BRIDGE CHECK_PY. Needs root (namespaces, /dev/net/tun) and
# busybox; skips (exit 0, SKIPPED line) without them.
set -euo pipefail

vunet=$(realpath "$1")
bridge=$(realpath "$2")
check=$(realpath "$3")

if ((EUID != 0)) || [[ ! -c /dev/net/tun ]] || ! command -v ip >/dev/null ||
  ! command -v busybox >/dev/null; then
  echo "SKIPPED: needs root, /dev/net/tun, ip (iproute2) and busybox (busybox-static)"
  exit 0
fi

guest_ip=10.0.2.15
gateway=10.0.2.2
dns=10.0.2.3
mtu=65520

dir=$(mktemp -d /tmp/tap_bridge_test.XXXXXX)
host_ns=vunet-tbt-host-$$
guest_ns=vunet-tbt-guest-$$
vunet_pid=
bridge_pid=
server_pid=
stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$server_pid"
  stop_pid "$bridge_pid"
  stop_pid "$vunet_pid"
  ip netns del "$guest_ns" 2>/dev/null || true
  ip netns del "$host_ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail() {
  echo "FAIL: $*"
  local log
  for log in "$dir/vunet.log" "$dir/bridge.log" "$dir/udhcpc.log" "$dir/tcp.log"; do
    [[ -f $log ]] || continue
    echo "--- $(basename "$log"):"
    cat "$log"
  done
  exit 1
}
in_host() { ip netns exec "$host_ns" "$@"; }
in_guest() { ip netns exec "$guest_ns" "$@"; }

ip netns add "$host_ns" || fail "ip netns add failed (run outside Bazel's sandbox: tag the test local)"
ip netns add "$guest_ns" || fail "ip netns add $guest_ns failed"
in_host ip link set lo up
in_host sh -c 'echo "0 2147483647" >/proc/sys/net/ipv4/ping_group_range'
in_guest ip link set lo up

socket=$dir/vunet.sock
# `ip netns exec` execs the command: $! is vunet's pid.
ip netns exec "$host_ns" "$vunet" -f -s "$socket" -a "$guest_ip" -n 24 -g "$gateway" -D "$dns" >"$dir/vunet.log" 2>&1 &
vunet_pid=$!
for _ in $(seq 100); do
  [[ -S $socket ]] && break
  kill -0 "$vunet_pid" 2>/dev/null || break
  sleep 0.05
done
[[ -S $socket ]] || fail "vunet did not listen on $socket"

ip netns exec "$guest_ns" "$bridge" --socket "$socket" --tap vunet0 --mtu "$mtu" --mac 52:54:00:12:34:56 \
  >"$dir/bridge.log" 2>&1 &
bridge_pid=$!
for _ in $(seq 100); do
  grep -q 'running' "$dir/bridge.log" && break
  kill -0 "$bridge_pid" 2>/dev/null || break
  sleep 0.05
done
grep -q 'vunet0 (MTU 65520) <-> .* running' "$dir/bridge.log" || fail "tap_bridge did not start"
in_guest ip link show vunet0 | grep -q 'UP' || fail "vunet0 is not up"
running=$(grep -m 1 'running' "$dir/bridge.log")
grep -q 'tap offloads CSUM|TSO4|TSO6|TSO_ECN|USO4|USO6; loss to backend none; loss to guest none' \
  <<<"$running" || fail "the tap's offloads are not every one vunet offers: $running"
for feature in HOST_TSO4 HOST_TSO6 HOST_ECN HOST_USO GUEST_TSO4 GUEST_TSO6 GUEST_ECN GUEST_USO4 \
  GUEST_USO6; do
  grep -Eq "features [^;]*\b$feature\b" <<<"$running" || fail "$feature not negotiated: $running"
done

# DHCP, configured by a script of our own.
cat >"$dir/udhcpc.sh" <<'EOF'
#!/bin/sh
echo "UDHCPC: $1 ip=${ip:-} mask=${mask:-} router=${router:-} dns=${dns:-} mtu=${mtu:-} serverid=${serverid:-}"
case "$1" in
bound | renew)
  ip -4 addr flush dev "$interface"
  ip -4 addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "${mtu:-}" ] && ip link set dev "$interface" mtu "$mtu"
  for r in ${router:-}; do
    ip route add default via "$r" dev "$interface"
    break
  done
  ;;
esac
exit 0
EOF
chmod 755 "$dir/udhcpc.sh"
in_guest timeout 30 busybox udhcpc -i vunet0 -n -q -t 5 -T 1 -s "$dir/udhcpc.sh" >"$dir/udhcpc.log" 2>&1 ||
  fail "udhcpc got no lease"
lease=$(grep -m 1 '^UDHCPC: bound' "$dir/udhcpc.log") || fail "udhcpc's script saw no lease"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$lease"; }
[[ $(field ip) == "$guest_ip" ]] || fail "leased address $(field ip), not $guest_ip"
[[ $(field mask) == 24 ]] || fail "leased mask $(field mask), not 24"
[[ $(field router) == "$gateway" ]] || fail "leased router $(field router), not $gateway"
[[ $(field dns) == "$dns" ]] || fail "leased DNS $(field dns), not $dns"
[[ $(field mtu) == "$mtu" ]] || fail "leased MTU $(field mtu), not $mtu"
in_guest ip -4 -o addr show dev vunet0 | grep -q "inet $guest_ip/24" || fail "vunet0 lacks $guest_ip/24"
in_guest ip -4 route show default | grep -q "default via $gateway dev vunet0" ||
  fail "no default route via $gateway"
[[ $(in_guest cat /sys/class/net/vunet0/mtu) == "$mtu" ]] || fail "vunet0's MTU is not $mtu"
echo "dhcp: $lease"

# ARP: the gateway's MAC, as arping and the neighbour table see it.
in_guest ip neigh flush dev vunet0
arping_out=$(in_guest timeout 10 busybox arping -c 2 -w 5 -I vunet0 "$gateway" 2>&1) ||
  fail "arping $gateway: $arping_out"
grep -Eq 'Received [12] response' <<<"$arping_out" || fail "no ARP reply: $arping_out"
gateway_mac=$(sed -n 's/.*reply from [0-9.]* \[\([0-9a-fA-F:]*\)\].*/\1/p' <<<"$arping_out" | head -1)
[[ -n $gateway_mac ]] || fail "arping printed no MAC: $arping_out"
echo "arp: $gateway is at $gateway_mac"

icmp=off
grep -q 'ICMP echo: on' "$dir/vunet.log" && icmp=on
if [[ $icmp == on ]]; then
  in_guest timeout 10 busybox ping -c 3 -W 2 "$gateway" >"$dir/ping.log" 2>&1 ||
    fail "ping $gateway: $(cat "$dir/ping.log")"
  in_guest timeout 10 busybox ping -c 2 -W 2 -s 30000 "$gateway" >>"$dir/ping.log" 2>&1 ||
    fail "ping -s 30000 $gateway: $(cat "$dir/ping.log")"
  echo "ping: $(grep -c 'bytes from' "$dir/ping.log") replies"
fi
# The neighbour table learned the gateway from the exchanges above.
in_guest ip neigh show "$gateway" dev vunet0 | grep -qi "lladdr $gateway_mac" ||
  fail "the neighbour table has no entry for $gateway: $(in_guest ip neigh show)"

# IPv6: SLAAC from vunet's router advertisement, and the router answers ping -6.
addr6=
for _ in $(seq 50); do
  addr6=$(in_guest ip -6 -o addr show dev vunet0 scope global | grep -v tentative |
    awk '{print $4; exit}')
  [[ -n $addr6 ]] && break
  sleep 0.2
done
[[ -n $addr6 ]] || fail "no global IPv6 address from the router advertisement"
echo "slaac: $addr6"
router6=$(sed -n 's/.*(router \([0-9a-f:]*\)).*/\1/p' "$dir/vunet.log" | head -1)
if [[ $icmp == on && -n $router6 ]]; then
  in_guest timeout 10 busybox ping -6 -c 2 -W 2 "$router6%vunet0" >"$dir/ping6.log" 2>&1 ||
    fail "ping -6 $router6: $(cat "$dir/ping6.log")"
  echo "ping6: $(grep -c 'bytes from' "$dir/ping6.log") replies"
fi

# TCP: guest to the host's loopback through the gateway address, 4 MiB each way. Host to guest, vunet
# marks its segments DATA_VALID without a checksum: this is where the bridge's handling of that shows.
head -c 4194304 /dev/urandom >"$dir/up.bin"
head -c 4194304 /dev/urandom >"$dir/down.bin"
port=5001
ip netns exec "$host_ns" python3 "$check" server 127.0.0.1 "$port" "$dir/down.bin" "$dir/up.got" \
  >"$dir/tcp.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  in_host ss -ltnH "sport = :$port" | grep -q . && break
  sleep 0.05
done
in_guest timeout 20 python3 "$check" client "$gateway" "$port" "$dir/up.bin" "$dir/down.got" \
  >>"$dir/tcp.log" 2>&1 || fail "TCP from the guest to the host's loopback failed"
wait "$server_pid" || fail "the host's TCP listener failed"
server_pid=
cmp -s "$dir/up.bin" "$dir/up.got" || fail "TCP guest to host: the data differs"
cmp -s "$dir/down.bin" "$dir/down.got" || fail "TCP host to guest: the data differs"
echo "tcp: 4 MiB each way, byte-exact"

# The same at MTU 1500, where the namespace's stack segments only because the tap lets it hand over
# 64 KiB segments (TSO) and takes them whole from vunet.
in_guest ip link set dev vunet0 mtu 1500
port=5002
rm -f "$dir/up.got" "$dir/down.got"
ip netns exec "$host_ns" python3 "$check" server 127.0.0.1 "$port" "$dir/down.bin" "$dir/up.got" \
  >>"$dir/tcp.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  in_host ss -ltnH "sport = :$port" | grep -q . && break
  sleep 0.05
done
in_guest timeout 20 python3 "$check" client "$gateway" "$port" "$dir/up.bin" "$dir/down.got" \
  >>"$dir/tcp.log" 2>&1 || fail "TCP at MTU 1500 from the guest to the host's loopback failed"
wait "$server_pid" || fail "the host's TCP listener failed (MTU 1500)"
server_pid=
cmp -s "$dir/up.bin" "$dir/up.got" || fail "TCP guest to host at MTU 1500: the data differs"
cmp -s "$dir/down.bin" "$dir/down.got" || fail "TCP host to guest at MTU 1500: the data differs"
echo "tcp: 4 MiB each way at MTU 1500, byte-exact"

# UDP: datagrams of 1 to 1400 bytes echoed by a socket on the host's loopback.
ip netns exec "$host_ns" python3 "$check" udp-echo 127.0.0.1 "$port" 20 >"$dir/udp.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  in_host ss -lunH "sport = :$port" | grep -q . && break
  sleep 0.05
done
in_guest timeout 20 python3 "$check" udp-client "$gateway" "$port" 20 >>"$dir/udp.log" 2>&1 ||
  fail "UDP between the guest and the host's loopback failed: $(cat "$dir/udp.log")"
wait "$server_pid" || fail "the host's UDP echo failed: $(cat "$dir/udp.log")"
server_pid=
echo "udp: 20 datagrams of 1 to 1400 bytes echoed"

# SIGTERM: exit 0 with the counters; then, with vunet gone, exit 3.
# Waits up to 5 s for PID to exit and sets RC to its status (124 if it did not).
wait_exit() {
  local pid=$1
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    rc=124
    return
  fi
  rc=0
  wait "$pid" || rc=$?
}
kill "$bridge_pid"
wait_exit "$bridge_pid"
((rc == 0)) || fail "tap_bridge exited $rc, not 0, on SIGTERM"
bridge_pid=
grep -q 'tap_bridge: to backend [1-9][0-9]* frames' "$dir/bridge.log" ||
  fail "tap_bridge printed no counters after SIGTERM"
# The TCP transfer went as segmentation-offloaded frames both ways, none refused.
grep -Eq 'to backend .* [1-9][0-9]* GSO, .* to tap .*\([1-9][0-9]* GSO\)' "$dir/bridge.log" ||
  fail "no segmentation-offloaded frames both ways: $(grep 'tap_bridge: to backend' "$dir/bridge.log")"
grep -q 'bad headers from backend 0,' "$dir/bridge.log" ||
  fail "headers from vunet the negotiated features do not allow: $(grep 'tap_bridge: to' "$dir/bridge.log")"
echo "offloads: $(grep -o 'to backend [0-9]* frames [0-9]* bytes ([^)]*)' "$dir/bridge.log"); $(grep -o 'to tap [0-9]* frames [0-9]* bytes ([^)]*)' "$dir/bridge.log")"
ip netns exec "$guest_ns" "$bridge" --socket "$socket" --tap vunet1 --offloads=off \
  --loss-to-backend=every:1 --loss-only=all >"$dir/bridge2.log" 2>&1 &
bridge_pid=$!
for _ in $(seq 100); do
  grep -q 'running' "$dir/bridge2.log" && break
  kill -0 "$bridge_pid" 2>/dev/null || break
  sleep 0.05
done
grep -q 'running' "$dir/bridge2.log" || fail "a second tap_bridge did not start: $(cat "$dir/bridge2.log")"
grep -q 'tap offloads CSUM; loss to backend every:1 (all); loss to guest none' "$dir/bridge2.log" ||
  fail "the second tap_bridge's settings: $(cat "$dir/bridge2.log")"
# Something to drop: the link's IPv6 chatter, and an ARP request.
in_guest ip link set vunet1 up
in_guest timeout 5 busybox arping -c 1 -w 1 -I vunet1 "$gateway" >/dev/null 2>&1 || true
kill -USR1 "$bridge_pid"
for _ in $(seq 50); do
  grep -q 'loss to backend every:1 (all): ' "$dir/bridge2.log" && break
  sleep 0.1
done
loss=$(grep -m 1 'loss to backend every:1 (all): ' "$dir/bridge2.log") ||
  fail "SIGUSR1 printed no loss counters: $(cat "$dir/bridge2.log")"
dropped=$(sed -n 's/.*: \([0-9]*\) of \([0-9]*\) frames dropped.*/\1 \2/p' <<<"$loss")
read -r dropped_n seen_n <<<"$dropped"
((seen_n > 0 && dropped_n == seen_n)) || fail "every frame to vunet should be dropped: $loss"
kill -0 "$bridge_pid" || fail "tap_bridge stopped on SIGUSR1"
echo "loss: $loss"
stop_pid "$vunet_pid"
vunet_pid=
wait_exit "$bridge_pid"
((rc == 124)) || bridge_pid=
((rc == 3)) || fail "tap_bridge exited $rc, not 3, when vunet went away: $(cat "$dir/bridge2.log")"

echo "--- tap_bridge:"
tail -1 "$dir/bridge.log"
echo "--- vunet:"
grep -E 'counters' "$dir/vunet.log" || true
echo "ICMP echo: $icmp"
echo "PASS"
