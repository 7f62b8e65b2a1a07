#!/usr/bin/env bash
# The backend binary against a real Linux guest: `vunet --one-off -f -s SOCK` serves the only NIC of a
# Debian kernel + busybox guest under QEMU (tests/guest/guest_lib.sh). The guest's script
#   - gets a lease with busybox udhcpc, whose script prints what it got (address, mask, router, DNS,
#     MTU) and configures eth0 with it;
#   - pings the gateway (vunet's ICMP echo, through a ping socket to the host's loopback);
#   - sends a UDP probe and a TCP SYN to closed ports (translated: the host refuses them);
#   - waits for a global IPv6 address from our router advertisement (SLAAC) and pings the router.
# Checks: the lease is the one vunet was told to give (-a -n -g -D -m), eth0 got it, the default route
# points at the gateway, SLAAC produced an address in the advertised prefix, the pings were answered
# (where ICMP echo runs: see below), the guest powered off, vunet ran in its sandbox and no syscall was
# refused, and vunet exited 0 with its socket gone once QEMU had left. Everything started here is killed
# on every exit path.
#
# vunet runs with --pcap: afterwards the capture (mode 0600) must parse as libpcap and hold the DHCP
# exchange (DISCOVER, OFFER, REQUEST, ACK), the router advertisement, the guest's echo requests (and our
# replies where ICMP echo runs), its TCP and UDP frames (pcap_check.py, a parser of its own). Where
# tcpdump and tshark are installed (tools/setup installs both), `tcpdump -nn -r` and `tshark -r` must
# read it too, frame for frame.
#
# Ping sockets need net.ipv4.ping_group_range to include our group. As root, vunet runs in a network
# namespace of its own (unshare -n) with loopback up and the range opened there, which changes nothing
# on the host; otherwise it runs as is and the ping checks apply only if vunet says ICMP echo is on
# (e2e_lib.sh).
#
# Usage: vunet_test.sh VUNET FETCH_GUEST_SH GUEST_LIB_SH PCAP_CHECK_PY E2E_LIB_SH. Skips (exit 0, SKIPPED line) only when
# qemu-system-x86_64 is not installed. VUNET_TEST_TIMEOUT (seconds, default 70) bounds the guest; the whole test stays under 90 s.
set -euo pipefail

vunet=$(realpath "$1")
fetch=$(realpath "$2")
# shellcheck source=tests/guest/guest_lib.sh
source "$3"
pcap_check=$(realpath "$4")
# shellcheck source=tests/vunet/e2e_lib.sh
source "$5"
guest_timeout=${VUNET_TEST_TIMEOUT:-70}

if ! guest_have_qemu; then
  echo "SKIPPED: qemu-system-x86_64 or busybox is not installed (apt-get install qemu-system-x86" \
    "busybox-static)"
  exit 0
fi

e2e_init vunet_e2e
dir=$E2E_DIR
fail() { e2e_fail "$@"; }

t0=$(guest_now)
guest_fetch "$fetch" || fail "fetch_guest.sh left no guest in $GUEST_CACHE"

# What vunet is told to hand out.
guest_ip=10.0.2.15
gateway=10.0.2.2
dns=10.0.2.3
mtu=1400  # Not 1500, virtio-net's own default: the lease must set it.

cat >"$dir/test.sh" <<'EOF_GUEST'
set -u
rc=0
cat >/tmp/udhcpc.sh <<'EOF_SCRIPT'
#!/bin/sh
echo "UDHCPC: $1 ip=${ip:-} mask=${mask:-} subnet=${subnet:-} router=${router:-} dns=${dns:-} mtu=${mtu:-} lease=${lease:-} serverid=${serverid:-}"
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
EOF_SCRIPT
chmod 755 /tmp/udhcpc.sh
if udhcpc -i eth0 -n -q -t 5 -T 2 -s /tmp/udhcpc.sh; then
  echo "GUEST: dhcp ok"
else
  echo "GUEST: dhcp FAILED"
  rc=1
fi
echo "GUEST: addr4 $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
echo "GUEST: route4 $(ip -4 route show default)"
echo "GUEST: mtu $(cat /sys/class/net/eth0/mtu)"
gw=$(ip -4 route show default | awk '{print $3; exit}')
if [ -n "$gw" ] && ping -c 3 -W 5 "$gw"; then
  echo "GUEST: ping ok"
else
  echo "GUEST: ping FAILED"
fi
# To closed ports on the host: the translators' connect and send are refused.
traceroute -n -m 1 -q 1 -w 1 -p 7777 "${gw:-10.0.2.2}" >/dev/null 2>&1 || true
nc -w 2 "${gw:-10.0.2.2}" 80 </dev/null >/dev/null 2>&1 || true
echo "GUEST: tcp and udp sent"
# SLAAC from our router advertisement: a global address, no longer tentative.
addr6=
for _ in $(seq 40); do
  addr6=$(ip -6 -o addr show dev eth0 scope global | grep -v tentative | awk '{print $4; exit}')
  [ -n "$addr6" ] && break
  sleep 0.5
done
echo "GUEST: addr6 ${addr6:-none}"
echo "GUEST: route6 $(ip -6 route show default)"
[ -n "$addr6" ] || rc=1
gw6=$(ip -6 route show default | awk '{print $3; exit}')
if [ -n "$gw6" ] && ping -6 -c 3 -W 5 -I eth0 "$gw6"; then
  echo "GUEST: ping6 ok"
else
  echo "GUEST: ping6 FAILED"
fi
exit $rc
EOF_GUEST
guest_initrd "$dir/test.sh" "$dir/initrd" || fail "could not build the initrd"

socket=$dir/vunet.sock
pcap=$dir/vunet.pcap
e2e_start_vunet "$vunet" --one-off -a "$guest_ip" -n 24 -g "$gateway" -D "$dns" -m "$mtu" --pcap "$pcap"
netns=$E2E_NETNS

t_boot=$(guest_now)
script_timeout=$((guest_timeout > 30 ? guest_timeout - 20 : 10))
guest_start "$socket" "$dir/initrd" "$dir/console.log" "$dir/qemu.log" "$script_timeout"
qemu_rc=0
guest_wait "$guest_timeout" || qemu_rc=$?
((qemu_rc != 124)) || fail "the guest did not power off within $guest_timeout s"
t_off=$(guest_now)

((qemu_rc == 0)) || fail "qemu exited with status $qemu_rc"
# --one-off: vunet exits (0, its socket removed) once QEMU has disconnected.
e2e_stop_vunet
console=$(e2e_console)
vlog=$dir/vunet.log
grep -q 'VUNET-INIT: eth0 up' "$console" || fail "the guest has no eth0"
grep -q 'queue 0 (rx) started' "$vlog" || fail "the receive queue never started"
grep -q 'queue 1 (tx) started' "$vlog" || fail "the transmit queue never started"
grep -q "path=$socket" "$vlog" || fail "vunet printed no QEMU command line"
# The sandbox (tools/vunet/sandbox.h) is on and allowed everything the guest's traffic needed.
grep -q 'sandbox: running as' "$vlog" || fail "vunet did not enter its sandbox"
! grep -q 'refused syscall' "$vlog" || fail "the sandbox refused: $(grep -m 3 'refused syscall' "$vlog")"

# The lease, as udhcpc's script saw it.
lease=$(grep -m 1 '^UDHCPC: bound' "$console") || fail "udhcpc got no lease"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$lease"; }
[[ $(field ip) == "$guest_ip" ]] || fail "leased address $(field ip), not $guest_ip"
[[ $(field mask) == 24 || $(field subnet) == 255.255.255.0 ]] || fail "lease mask: $lease"
[[ $(field router) == "$gateway" ]] || fail "leased router $(field router), not $gateway"
[[ $(field dns) == "$dns" ]] || fail "leased DNS $(field dns), not $dns"
[[ $(field serverid) == "$gateway" ]] || fail "DHCP server id $(field serverid), not $gateway"
[[ $(field mtu) == "$mtu" ]] || fail "leased MTU '$(field mtu)', not $mtu"
grep -q "GUEST: mtu $mtu" "$console" || fail "eth0's MTU is not $mtu"
grep -q 'GUEST: dhcp ok' "$console" || fail "udhcpc failed"
grep -q "GUEST: addr4 $guest_ip/24" "$console" || fail "eth0 does not have $guest_ip/24"
grep -q "GUEST: route4 default via $gateway" "$console" || fail "no default route via $gateway"

# IPv6: SLAAC in the prefix vunet advertised.
addr6=$(sed -n 's/^GUEST: addr6 \([^ ]*\).*/\1/p' "$console")
[[ -n $addr6 && $addr6 != none ]] || fail "no global IPv6 address from our router advertisement"
# The first 64 bits of an IPv6 address, as four groups of four hex digits.
first64() {
  local a=${1%%/*} head tail groups=() g
  if [[ $a == *::* ]]; then
    head=${a%%::*}
    tail=${a#*::}
    local -a h=() t=()
    [[ -n $head ]] && IFS=: read -ra h <<<"$head"
    [[ -n $tail ]] && IFS=: read -ra t <<<"$tail"
    groups=(${h[@]+"${h[@]}"})
    for ((g = ${#h[@]} + ${#t[@]}; g < 8; g++)); do groups+=(0); done
    groups+=(${t[@]+"${t[@]}"})
  else
    IFS=: read -ra groups <<<"$a"
  fi
  printf '%04x:%04x:%04x:%04x' "0x${groups[0]}" "0x${groups[1]}" "0x${groups[2]}" "0x${groups[3]}"
}
prefix6=$(sed -n 's/.*IPv6: guest \([0-9a-f:]*\)\/64.*/\1/p' "$vlog")
[[ -n $prefix6 ]] || fail "vunet did not print the guest's IPv6 address"
[[ $(first64 "$addr6") == $(first64 "$prefix6") ]] ||
  fail "the SLAAC address $addr6 is not in the advertised prefix of $prefix6"
grep -q 'GUEST: route6 default via fe80::' "$console" || fail "no IPv6 default route via our router"

# Ping: vunet's ICMP echo where it runs.
icmp=off
grep -q 'ICMP echo: on' "$vlog" && icmp=on
if [[ $icmp == on ]]; then
  grep -q 'GUEST: ping ok' "$console" || fail "ping to the gateway failed"
  grep -q 'GUEST: ping6 ok' "$console" || fail "ping -6 to the router failed"
else
  echo "note: vunet runs without ICMP echo ($(grep -m 1 'ICMP echo' "$vlog" || echo 'not built in')):" \
    "ping results not checked"
fi
grep -q 'VUNET-TEST: exit=0' "$console" || fail "the guest's test script failed"
# The guest's TCP SYN and UDP datagram: counted by their translator (its counters at exit,
# "tcp: N connects", "udp: ..."), or, without one, counted as dropped.
if grep -Eq ' tcp: [0-9]+ connects' "$vlog"; then
  grep -Eq ' tcp: [1-9][0-9]* connects' "$vlog" || fail "the TCP translator counted no connect"
else
  grep -Eq 'dropped: tcp [1-9]' "$vlog" || fail "vunet did not count the guest's TCP as dropped"
fi
if ! grep -Eq ' udp: ' "$vlog"; then
  grep -Eq 'dropped: tcp [0-9]+, udp [1-9]' "$vlog" || fail "vunet did not count the guest's UDP as dropped"
fi

# The capture: every frame both ways, readable by libpcap's readers.
[[ -f $pcap ]] || fail "--pcap wrote no $pcap"
[[ $(stat -c %a "$pcap") == 600 ]] || fail "the capture's mode is $(stat -c %a "$pcap"), not 600"
grep -Eq 'pcap: [1-9][0-9]* frames captured to .*, 0 lost to errors' "$vlog" ||
  fail "vunet did not report a capture without errors"
command -v python3 >/dev/null || fail "python3 is needed to check the capture"
icmp_arg=()
[[ $icmp == on ]] && icmp_arg=(--icmp)
timeout 30 python3 "$pcap_check" "$pcap" "${GUEST_MAC:-52:54:00:12:34:56}" ${icmp_arg[@]+"${icmp_arg[@]}"} \
  >"$dir/pcap_check.txt" 2>&1 || fail "the capture: $(cat "$dir/pcap_check.txt")"
pcap_frames=$(sed -n 's/^frames //p' "$dir/pcap_check.txt")
tcpdump_checked=no
if command -v tcpdump >/dev/null; then
  timeout 30 tcpdump -nn -r "$pcap" >"$dir/tcpdump.txt" 2>"$dir/tcpdump.err" ||
    fail "tcpdump cannot read the capture: $(cat "$dir/tcpdump.err")"
  [[ $(wc -l <"$dir/tcpdump.txt") == "$pcap_frames" ]] ||
    fail "tcpdump read $(wc -l <"$dir/tcpdump.txt") frames, not $pcap_frames"
  tcpdump_checked=yes
fi
tshark_checked=no
if command -v tshark >/dev/null; then
  timeout 60 tshark -r "$pcap" -T fields -e frame.number >"$dir/tshark.txt" 2>"$dir/tshark.err" ||
    fail "tshark cannot read the capture: $(cat "$dir/tshark.err")"
  [[ $(wc -l <"$dir/tshark.txt") == "$pcap_frames" ]] ||
    fail "tshark read $(wc -l <"$dir/tshark.txt") frames, not $pcap_frames"
  tshark_checked=yes
fi

echo "--- guest console (results):"
grep -E 'VUNET-|GUEST:|UDHCPC:|packets received|round-trip' "$console" || true
echo "--- vunet:"
grep -E 'IPv4:|IPv6:|MTU|ICMP|queue|counters|frontend|exiting' "$vlog" || true
echo "--- capture:"
cat "$dir/pcap_check.txt"
echo "netns: $netns; ICMP echo: $icmp; capture read by tcpdump: $tcpdump_checked, by tshark:" \
  "$tshark_checked"
echo "timing: boot to power-off $(guest_elapsed "$t_boot" "$t_off") s; whole test $(guest_elapsed "$t0" "$(guest_now)") s"
echo "PASS"
