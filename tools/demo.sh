#!/usr/bin/env bash
# tools/run --demo: vunet serving a real VM, on the terminal. Started by tools/run (which has installed
# the packages and built vunet) as: tools/demo.sh VUNET [VUNET OPTION]...
#
#   1. prepares the test guest of tests/guest (a Debian kernel and a busybox initramfs, fetched once and
#      cached in ~/.cache/vunet/guest);
#   2. starts a web server on the host's loopback (busybox httpd on 127.0.0.1) with a page saying hello;
#   3. starts vunet in the foreground (its log prefixed "vunet |") with the options given;
#   4. boots the guest under QEMU (TCG) with vunet as its only NIC; its console (prefixed "guest |")
#      shows it run, one command at a time: udhcpc (its address by DHCP), ping to its gateway, and wget
#      of the host's page through the gateway address (which reaches the host's loopback);
#   5. powers the guest off, stops everything it started (also on Ctrl-C), and sums up.
#
# Ping needs ping sockets (net.ipv4.ping_group_range must include one of our groups). Where the host
# does not allow them: as root, vunet and the web server run in a network namespace of their own
# (unshare -n), where the range is opened, and nothing changes on the host; otherwise ping is skipped,
# saying so. VUNET_DEMO_NETNS=no keeps a root run in the host's namespace.
#
# Exit status: 0 if every step that should work here worked (the lease, the fetch, and the ping where
# ping sockets are allowed), 1 otherwise.
set -euo pipefail

vunet=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tests/guest/guest_lib.sh
source "$root/tests/guest/guest_lib.sh"

if [[ -t 1 ]]; then
  bold=$'\e[1m' plain=$'\e[0m'
else
  bold='' plain=''
fi
say() { echo "${bold}demo: $*${plain}"; }
die() {
  echo "demo: $*" >&2
  exit 1
}

guest_have_qemu || die "QEMU and busybox are needed (apt-get install qemu-system-x86 busybox-static)"

dir=$(mktemp -d /tmp/vunet-demo.XXXXXX)
vunet_pid=
httpd_pid=
tail_pid=
cleanup() {
  trap - EXIT INT TERM HUP
  # shellcheck disable=SC2086
  guest_stop_pids $GUEST_QEMU_PID $httpd_pid $vunet_pid $tail_pid
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo; say "interrupted: stopping the guest, vunet and the web server"; exit 130' INT TERM HUP

say "preparing the test guest (Debian kernel + busybox; the first time it downloads the kernel" \
  "package into $GUEST_CACHE)"
guest_fetch "$root/tests/guest/fetch_guest.sh" || die "fetch_guest.sh left no guest in $GUEST_CACHE"

# Where vunet runs: can it open ping sockets here?
ping_here=no
read -r ping_lo ping_hi </proc/sys/net/ipv4/ping_group_range
for g in $(id -G); do
  if ((g >= ping_lo && g <= ping_hi)); then ping_here=yes; fi
done
netns=no
if [[ $ping_here == no && ${VUNET_DEMO_NETNS:-yes} != no ]] && ((EUID == 0)) &&
  unshare -n true 2>/dev/null; then
  netns=yes
  say "this host allows no ping sockets (net.ipv4.ping_group_range is '$ping_lo $ping_hi'): running" \
    "vunet and the web server in a network namespace of their own, where ping is allowed;" \
    "the host is not changed"
fi


socket=$dir/vunet.socket
say "starting vunet: vunet -f --one-off -s $socket${*:+ $*}"
args=(-f --one-off -s "$socket" "$@")
if [[ $netns == yes ]]; then
  # shellcheck disable=SC2016
  unshare -n sh -c 'ip link set lo up && echo "0 2147483647" >/proc/sys/net/ipv4/ping_group_range &&
    exec "$0" "$@"' "$vunet" "${args[@]}" > >(tee "$dir/vunet.log" | sed -u 's/^/  vunet | /') 2>&1 &
else
  "$vunet" "${args[@]}" > >(tee "$dir/vunet.log" | sed -u 's/^/  vunet | /') 2>&1 &
fi
vunet_pid=$!
for _ in $(seq 100); do
  [[ -S $socket ]] && break
  kill -0 "$vunet_pid" 2>/dev/null || break
  sleep 0.05
done
[[ -S $socket ]] || die "vunet did not start"
# What runs a command in vunet's network namespace (its own, or ours). nsenter execs the command
# (no fork for a network namespace): a background one's $! is the command's own pid.
in_vunet_ns=()
[[ $netns == yes ]] && in_vunet_ns=(nsenter -t "$vunet_pid" -n --)
sleep 0.2  # Lets its banner reach the terminal before what follows.

# The web server, on a port free in vunet's namespace.
mkdir -p "$dir/www"
port=
used=$(${in_vunet_ns[@]+"${in_vunet_ns[@]}"} cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk 'NR > 1 { split($2, a, ":"); print a[2] }')
for candidate in 8080 8000 8888 $((20000 + RANDOM % 30000)) $((20000 + RANDOM % 30000)); do
  grep -qi "^$(printf '%04x' "$candidate")$" <<<"$used" && continue
  echo "hello from the host's loopback (busybox httpd on 127.0.0.1:$candidate)" >"$dir/www/index.html"
  ${in_vunet_ns[@]+"${in_vunet_ns[@]}"} busybox httpd -f -p "127.0.0.1:$candidate" -h "$dir/www" >"$dir/httpd.log" 2>&1 </dev/null &
  httpd_pid=$!
  sleep 0.2
  if kill -0 "$httpd_pid" 2>/dev/null; then
    port=$candidate
    break
  fi
  wait "$httpd_pid" 2>/dev/null || true
  httpd_pid=
done
[[ -n $port ]] || die "could not start busybox httpd on 127.0.0.1: $(cat "$dir/httpd.log")"
say "web server: http://127.0.0.1:$port/ on the host's loopback (busybox httpd)"

icmp=on
grep -q 'ICMP echo: on' "$dir/vunet.log" || icmp=off

# What the guest runs, one command a line (tests/guest/fetch_guest.sh: vunet.mode=commands).
{
  echo "# 1. An address by DHCP from vunet:"
  echo "udhcpc -i eth0 -n -q -t 5 -T 2"
  echo "ip -4 addr show dev eth0"
  echo "ip -4 route"
  echo "gw=\$(ip -4 route show default | awk '{print \$3; exit}')"
  echo "# 2. Ping the gateway (vunet answers through a ping socket to the host's loopback):"
  if [[ $icmp == on ]]; then
    echo "ping -c 3 -W 5 \$gw"
  else
    echo "# skipped: vunet cannot open ping sockets here (net.ipv4.ping_group_range)"
  fi
  echo "# 3. Fetch the page on the host's loopback, through the gateway address:"
  echo "timeout 15 wget -q -O - http://\$gw:$port/"
} >"$dir/commands"

say "booting the guest (QEMU under TCG, vunet is its only NIC; about 10 s)"
: >"$dir/console.log"
guest_initrd "$dir/commands" "$dir/initrd" ||
  die "could not build the guest's initrd"
GUEST_APPEND="vunet.mode=commands" GUEST_MAC=9a:55:9a:55:9a:56 \
  guest_start "$socket" "$dir/initrd" "$dir/console.log" "$dir/qemu.log" 90
tail -n +1 -F --pid="$GUEST_QEMU_PID" "$dir/console.log" 2>/dev/null > >(
  sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' -e '/SeaBIOS/d' \
    -e 's/^Booting from ROM\.\.//' -e 's/ features [01]*$//' -e '/^VUNET-INIT: modules loaded/d' \
    -e '/^VUNET-TEST: begin/d' -e 's/^/  guest | /'
) &
tail_pid=$!

qemu_rc=0
guest_wait 150 || qemu_rc=$?
((qemu_rc != 124)) || die "the guest did not finish within 150 s"
# vunet (--one-off) leaves once QEMU has gone, with its counters.
for _ in $(seq 50); do
  kill -0 "$vunet_pid" 2>/dev/null || break
  sleep 0.1
done
# shellcheck disable=SC2086
guest_stop_pids $vunet_pid $httpd_pid
vunet_pid='' httpd_pid=''
for _ in $(seq 20); do
  kill -0 "$tail_pid" 2>/dev/null || break
  sleep 0.1
done
sleep 0.2

console=$dir/console.txt
tr -d '\r' <"$dir/console.log" >"$console"
echo
say "summary"
failed=0
lease=$(grep -m 1 '^UDHCPC: bound' "$console" || true)
if [[ -n $lease ]]; then
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$lease"; }
  echo "  DHCP:  ok: the guest got $(field ip)/$(field mask), gateway $(field router), MTU $(field mtu)," \
    "DNS $(field dns)"
else
  echo "  DHCP:  FAILED: the guest got no lease"
  failed=1
fi
if [[ $icmp == off ]]; then
  echo "  ping:  skipped: this host gives vunet no ping sockets; to allow them:" \
    "sudo sysctl -w net.ipv4.ping_group_range='0 2147483647'"
elif grep -Eq '[1-9][0-9]* packets received' "$console"; then
  echo "  ping:  ok: $(grep -m 1 'packets received' "$console")"
else
  echo "  ping:  FAILED"
  failed=1
fi
if grep -q "hello from the host's loopback" "$console"; then
  echo "  fetch: ok: the guest read \"$(grep -m 1 "hello from the host's loopback" "$console")\""
else
  echo "  fetch: FAILED"
  failed=1
fi
((failed == 0))
