#!/usr/bin/env bash
# libvirt as a real client of vunet: libvirt 11's <interface type='vhostuser'><backend type='passt'/>
# runs the binary named passt from its daemon's PATH with passt's command line; here that is vunet.
#
# Nothing on the host changes. Everything runs in a mount and a network namespace of the test's own
# (an "anchor" process holds them): a tmpfs over /run, and the test's own directories bound over
# /etc/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt, so libvirtd and virtlogd
# (started by hand, daemonized, with private configuration files) keep their sockets, state, logs and
# caches there; the network namespace has a loopback, an uplink (a veth pair) with a default route
# (for vunet to mirror), ping sockets allowed, unprivileged low ports, and ephemeral ports from 2000, so that "all"
# is ports 1-1999. libvirtd's PATH starts with the test's bin/, where vunet is installed as passt
# (mode 0755 in a world-traversable directory: libvirt runs it as libvirt-qemu). libvirtd's open-file
# limit is 8192.
#
# The domain (transient, virsh create): TCG, 384 MiB of memfd shared memory, direct kernel boot of the
# test guest (copies of tests/guest's kernel and initramfs: libvirt changes their owner), a file serial
# console, and
#   <interface type='vhostuser'> <mac/> <ip address='192.0.2.15' prefix='24'/>
#     <backend type='passt' logFile='...'/> <model type='virtio'/>
#     <portForward proto='tcp'> <range start='1500'/> <range start='2222' to='8080'/>  (a remap)
#       <range start='3000' end='3010' to='9000'/> <range start='3005' exclude='yes'/> (an exclusion)
#     <portForward proto='udp'/>                                            (all: -u all)
# libvirt 11.3's schema has no host name or FQDN for passt (later versions pass --hostname and
# --fqdn): those are tested against vunet directly (tests/vunet: vunet_dhcp_test, vunet_cli_test).
#
# Checks:
#   1. libvirt started vunet with what the XML says (its log: "started as: passt --vhost-user
#      --one-off --socket ... --tcp-ports 1500,2222:8080,3000-3010:9000-9010,~3005 --udp-ports all
#      ...");
#      the guest gets its lease (192.0.2.15, gateway 192.0.2.1 mirrored from the namespace's uplink,
#      MTU 65520: libvirt 11.3 cannot give a vhost-user interface an <mtu>), pings the gateway, fetches a
#      page from a web server on the host's loopback; the host reaches listeners in the guest through
#      127.0.0.1:2222 (guest 8080) and 127.0.0.1:3001 (guest 9001); 3005 is not listened on while
#      3004 and 3006 are; UDP "all" listens on ports 1-1999 over both IP versions, and iperf3 -u from
#      the host to 127.0.0.1:1500 reaches the guest's iperf3 (TCP control through -t 1500, data through
#      UDP all). virsh destroy: vunet leaves, its socket and pid file gone.
#   2. virsh create again: a second boot gets its lease, pings, fetches the page, powers off; vunet
#      leaves again, nothing left.
#   3. With the usual ephemeral ports (32768-60999), "all" is 37303 ports and UDP listens per IP
#      version: more than the 8192 descriptors libvirtd gives; virsh create fails with vunet's one
#      line naming RLIMIT_NOFILE, and nothing is left running.
# At the end no vunet or QEMU process, socket or pid file remains, and every daemon the test started
# has stopped (also on failure: a trap).
#
# Usage: libvirt_test.sh VUNET FETCH_GUEST_SH GUEST_LIB_SH. Skips (exit 0, SKIPPED) when not root or
# when libvirtd, virtlogd, virsh, QEMU, busybox or iperf3 is missing (tools/setup installs them).
set -euo pipefail

vunet=$(realpath "$1")
fetch=$(realpath "$2")
# shellcheck source=tests/guest/guest_lib.sh
source "$3"

if ((EUID != 0)); then
  echo "SKIPPED: needs root (namespaces, a system-mode libvirtd of its own)"
  exit 0
fi
for tool in libvirtd virtlogd virsh unshare nsenter prlimit iperf3; do
  if ! command -v "$tool" >/dev/null && [[ ! -x /usr/sbin/$tool ]]; then
    echo "SKIPPED: $tool is not installed (tools/setup installs libvirt from bookworm-backports)"
    exit 0
  fi
done
if ! guest_have_qemu; then
  echo "SKIPPED: qemu-system-x86_64 or busybox is not installed"
  exit 0
fi
PATH=$PATH:/usr/sbin:/sbin

t0=$(guest_now)
# Short (UNIX socket paths) and traversable by libvirt-qemu.
dir=$(mktemp -d /tmp/vunet_libvirt.XXXXXX)
chmod 755 "$dir"
name=vunet-libvirt-$$
anchor=
http_pid=

# Runs CMD... in the test's namespaces.
in_ns() { nsenter -t "$anchor" -m -n -- "$@"; }
virsh_() { in_ns virsh -q -c qemu:///system "$@"; }

# The pids of processes running our copy of vunet, or QEMU for our domains.
our_pids() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    if [[ $exe == "$dir/bin/passt" ]]; then
      echo "${p#/proc/}"
    elif [[ ${exe##*/} == qemu-system-x86_64 ]] &&
      [[ $(tr '\0' ' ' 2>/dev/null <"$p/cmdline") == *"guest=$name"* ]]; then
      echo "${p#/proc/}"
    fi
  done
}

# Stops PID (TERM, then KILL after SECONDS, default 10) and waits for it to go.
stop_pid() {
  local pid=$1 seconds=${2:-10}
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq $((seconds * 10))); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  if [[ -n $anchor ]] && kill -0 "$anchor" 2>/dev/null; then
    for domain in "$name" "$name-2" "$name-3"; do
      virsh_ destroy "$domain" >/dev/null 2>&1 || true
    done
  fi
  # libvirtd leaves domains running when it stops: QEMU first, by pid.
  for pid in $(our_pids); do stop_pid "$pid" 5; done
  # libvirtd may take long to stop; another must not start before it has.
  for daemon in libvirtd virtlogd; do
    [[ ! -f $dir/$daemon.pid ]] || stop_pid "$(cat "$dir/$daemon.pid")" 30
  done
  stop_pid "$http_pid"
  stop_pid "$anchor"
  [[ -z $anchor ]] || wait "$anchor" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail() {
  echo "FAIL: $*"
  local log
  for log in "$dir"/passt*.log "$dir"/console*.log "$dir/log/libvirtd.log" "$dir"/log/qemu/*.log \
    "$dir/virsh.out"; do
    [[ -f $log ]] || continue
    echo "--- ${log#"$dir"/}:"
    tail -n 60 "$log" | tr -d '\r'
  done
  exit 1
}

# A command failing where no check expected it: say where, with the logs.
set -E
trap 'fail "a command failed at line $LINENO"' ERR

# --- The namespaces and the daemons ----------------------------------------------------------------

mkdir -p "$dir"/{etc/qemu,lib,log/qemu,cache,bin,boot,www}
chmod 755 "$dir"/{bin,boot}
cp -L "$vunet" "$dir/bin/passt"
chmod 755 "$dir/bin/passt"
cat >"$dir/etc/libvirtd.conf" <<EOF
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "2:file:/var/log/libvirt/libvirtd.log"
EOF
# No AppArmor profile and no cgroups of the host's to change; files keep no xattr of their old owner.
cat >"$dir/etc/qemu.conf" <<EOF
security_driver = "none"
cgroup_controllers = [ ]
remember_owner = 0
EOF
cat >"$dir/etc/virtlogd.conf" <<EOF
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
EOF

# shellcheck disable=SC2016
unshare -m -n --propagation private sh -c '
  set -e
  dir=$0
  mount -t tmpfs -o mode=755 vunet-run /run
  mkdir -p /run/libvirt /run/lock
  mount --bind "$dir/etc" /etc/libvirt
  mount --bind "$dir/lib" /var/lib/libvirt
  mount --bind "$dir/log" /var/log/libvirt
  mount --bind "$dir/cache" /var/cache/libvirt
  ip link set lo up
  ip link add uplink0 type veth peer name peer0
  ip addr add 192.0.2.10/24 dev uplink0
  ip link set peer0 up
  ip link set uplink0 up
  ip route add default via 192.0.2.1
  echo "0 2147483647" >/proc/sys/net/ipv4/ping_group_range
  echo 0 >/proc/sys/net/ipv4/ip_unprivileged_port_start
  echo "2000 65535" >/proc/sys/net/ipv4/ip_local_port_range
  touch "$dir/anchor.ready"
  exec sleep infinity' "$dir" >"$dir/anchor.log" 2>&1 &
anchor=$!
for _ in $(seq 100); do
  [[ -f $dir/anchor.ready ]] && break
  kill -0 "$anchor" 2>/dev/null || fail "the namespaces could not be set up: $(cat "$dir/anchor.log")"
  sleep 0.05
done
[[ -f $dir/anchor.ready ]] || fail "the namespaces were not ready in 5 s"

in_ns virtlogd -d --config "$dir/etc/virtlogd.conf" --pid-file "$dir/virtlogd.pid" ||
  fail "virtlogd did not start"
in_ns env PATH="$dir/bin:/usr/sbin:/usr/bin:/sbin:/bin" prlimit --nofile=8192:8192 \
  libvirtd -d --config "$dir/etc/libvirtd.conf" --pid-file "$dir/libvirtd.pid" ||
  fail "libvirtd did not start"
# It answers once its drivers are up (the QEMU driver probes QEMU first: seconds under load).
for _ in $(seq 120); do
  virsh_ version >/dev/null 2>&1 && break
  sleep 0.5
done
virsh_ version >"$dir/virsh.out" 2>&1 || fail "libvirtd does not answer"
echo "libvirt: $(grep -m 1 'libvirt' "$dir/virsh.out" | tr -s ' ')" \
  "(private libvirtd pid $(cat "$dir/libvirtd.pid"), $(guest_elapsed "$t0" "$(guest_now)") s)"

echo "hello from the host" >"$dir/www/index.html"
http_port=3080
in_ns busybox httpd -f -p "127.0.0.1:$http_port" -h "$dir/www" >"$dir/httpd.log" 2>&1 &
http_pid=$!

# --- The guest -------------------------------------------------------------------------------------

guest_fetch "$fetch" || fail "fetch_guest.sh left no guest in $GUEST_CACHE"
cp "$GUEST_KERNEL" "$dir/boot/kernel"

# The first boot's script: lease, ping, page, then listeners the host reaches through the forwards.
cat >"$dir/guest1.sh" <<'EOF'
set -u
cat >/tmp/lease.sh <<'X'
#!/bin/sh
echo "GUEST: lease $1 ip=${ip:-} router=${router:-} mtu=${mtu:-} hostname=${hostname:-}"
exec /etc/udhcpc/default.script "$@"
X
chmod 755 /tmp/lease.sh
udhcpc -i eth0 -n -q -t 5 -T 2 -s /tmp/lease.sh || { echo "GUEST: dhcp FAILED"; exit 1; }
gw=$(ip -4 route show default | awk '{print $3; exit}')
echo "GUEST: addr4 $(ip -4 -o addr show dev eth0 | awk '{print $4}') gateway ${gw:-none}" \
  "mtu $(cat /sys/class/net/eth0/mtu)"
if ping -c 2 -W 5 "$gw"; then echo "GUEST: ping ok"; else echo "GUEST: ping FAILED"; fi
if timeout 20 wget -q -O /tmp/page "http://$gw:@HTTP@/"; then
  echo "GUEST: http $(cat /tmp/page)"
else
  echo "GUEST: http FAILED"
fi
@MORE@
EOF
cp "$dir/guest1.sh" "$dir/guest2.sh"
sed -i "s|@HTTP@|$http_port|; s|@MORE@||" "$dir/guest2.sh"
more=$(
  cat <<'EOF'
for port in 8080 9001; do
  echo "GUEST: listening on $port"
  printf 'HTTP/1.0 200 OK\r\nContent-Length: 21\r\n\r\nhello from guest %s\n' $port |
    timeout 60 nc -l -p $port >/tmp/request
  echo "GUEST: request on $port: $(head -n 1 /tmp/request | tr -d '\r')"
done
# UDP "all" reaches the guest: iperf3 -u from the host to 127.0.0.1:1500 (its control connection is
# TCP, forwarded as 1500 too).
echo "GUEST: iperf3 listening on 1500"
timeout 60 iperf3 -s -1 -p 1500 -f m >/tmp/iperf3 2>&1
echo "GUEST: iperf3 $(grep -m 1 -E 'receiver|error' /tmp/iperf3)"
echo "GUEST: done"
sleep 600
EOF
)
python3 - "$dir/guest1.sh" "$http_port" "$more" <<'PYEOF'
import sys
path, port, more = sys.argv[1:]
text = open(path).read().replace("@HTTP@", port).replace("@MORE@", more)
open(path, "w").write(text)
PYEOF
guest_initrd "$dir/guest1.sh" "$dir/boot/initrd1" || fail "could not build the first initrd"
guest_initrd "$dir/guest2.sh" "$dir/boot/initrd2" || fail "could not build the second initrd"

# The domain's XML: NAME INITRD CONSOLE LOGFILE.
domain_xml() {
  cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>384</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$dir/boot/kernel</kernel>
    <initrd>$2</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet vunet.timeout=200</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='vhostuser'>
      <mac address='52:54:00:4c:56:01'/>
      <ip address='192.0.2.15' prefix='24' family='ipv4'/>
      <backend type='passt' logFile='$4'/>
      <model type='virtio'/>
      <portForward proto='tcp'>
        <range start='1500'/>
        <range start='2222' to='8080'/>
        <range start='3000' end='3010' to='9000'/>
        <range start='3005' exclude='yes'/>
      </portForward>
      <portForward proto='udp'/>
    </interface>
    <serial type='file'>
      <source path='$3'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# Files the domain writes, owned by the user QEMU and vunet run as.
writable() {
  : >"$1"
  chown libvirt-qemu "$1"
}

# The passt directory libvirt keeps vunet's socket, repair socket and pid file in: what is left there.
leftovers() { in_ns sh -c 'ls /run/libvirt/qemu/passt/ 2>/dev/null | grep -E "\.(socket|pid|repair)$"' || true; }

# Waits up to SECONDS for every vunet and QEMU of ours to be gone.
wait_gone() {
  for _ in $(seq $(($1 * 5))); do
    [[ -z $(our_pids) ]] && return 0
    sleep 0.2
  done
  return 1
}

console_has() { tr -d '\r' <"$1" | grep -Eq -- "$2"; }

# --- 1. Boot, lease, ping, page, forwards; virsh destroy --------------------------------------------

writable "$dir/console1.log"
writable "$dir/passt1.log"
domain_xml "$name" "$dir/boot/initrd1" "$dir/console1.log" "$dir/passt1.log" >"$dir/domain1.xml"
t_boot=$(guest_now)
virsh_ create "$dir/domain1.xml" >"$dir/virsh.out" 2>&1 || fail "virsh create: $(cat "$dir/virsh.out")"
grep -q "started as: passt --vhost-user --one-off --socket /run/libvirt/qemu/passt/" \
  "$dir/passt1.log" || fail "vunet did not log how libvirt started it"
started=$(grep -m 1 'started as:' "$dir/passt1.log" | sed 's/.*started as: //')
echo "libvirt ran: $started"
for want in "--tcp-ports 1500,2222:8080,3000-3010:9000-9010,~3005" "--udp-ports all" \
  "--address 192.0.2.15" "--netmask 24" "--log-file $dir/passt1.log" "--pid "; do
  grep -qF -- "$want" <<<"$started" || fail "libvirt did not pass '$want'"
done

fetched_8080=
fetched_9001=
udp_report=
udp_tries=0
listening_checked=no
tcp_listeners=
udp_listeners=0
# Host side of the forwards, polled while the guest runs.
host_side() {
  local console=$dir/console1.log
  if [[ -z $fetched_8080 ]] && console_has "$console" 'GUEST: listening on 8080'; then
    in_ns timeout 3 busybox wget -q -O "$dir/page8080" "http://127.0.0.1:2222/" 2>/dev/null &&
      fetched_8080=$(cat "$dir/page8080")
  fi
  if [[ -n $fetched_8080 && -z $fetched_9001 ]] && console_has "$console" 'GUEST: listening on 9001'; then
    in_ns timeout 3 busybox wget -q -O "$dir/page9001" "http://127.0.0.1:3001/" 2>/dev/null &&
      fetched_9001=$(cat "$dir/page9001")
  fi
  if [[ $listening_checked == no ]]; then
    tcp_listeners=$(in_ns ss -Hltn | awk '{ n = split($4, a, ":"); print a[n] }' | sort -n | tr '\n' ' ')
    udp_listeners=$(in_ns ss -Hlun | wc -l)
    listening_checked=yes
  fi
  if [[ -z $udp_report ]] && console_has "$console" 'GUEST: iperf3 listening on 1500'; then
    udp_tries=$((udp_tries + 1))
    in_ns timeout 20 iperf3 -c 127.0.0.1 -p 1500 -u -b 1M -l 1000 -t 1 -f m --connect-timeout 3000 \
      >"$dir/iperf3.out" 2>&1 && udp_report=$(grep -m 1 'receiver' "$dir/iperf3.out" || true)
  fi
  return 0  # Whatever did not work yet is tried again.
}
deadline=$(($(date +%s) + 240))
until console_has "$dir/console1.log" 'GUEST: done|VUNET-TEST: exit='; do
  (($(date +%s) < deadline)) || fail "the first guest did not finish in 240 s"
  [[ -n $(our_pids) ]] || fail "QEMU or vunet went away during the first boot"
  host_side
  sleep 0.2
done
t_done=$(guest_now)
c1=$dir/console1.log
console_has "$c1" '^GUEST: lease bound ip=192\.0\.2\.15 router=192\.0\.2\.1 mtu=65520 ' ||
  fail "no lease of 192.0.2.15 via 192.0.2.1 with MTU 65520"
console_has "$c1" '^GUEST: addr4 192\.0\.2\.15/24 gateway 192\.0\.2\.1 mtu 65520' ||
  fail "eth0 is not 192.0.2.15/24 via 192.0.2.1, MTU 65520"
console_has "$c1" '^GUEST: ping ok' || fail "the guest's ping to the gateway failed"
console_has "$c1" '^GUEST: http hello from the host' || fail "the guest did not fetch the host's page"
[[ $fetched_8080 == "hello from guest 8080" ]] ||
  fail "127.0.0.1:2222 did not reach the guest's 8080 (got '$fetched_8080')"
[[ $fetched_9001 == "hello from guest 9001" ]] ||
  fail "127.0.0.1:3001 did not reach the guest's 9001 (got '$fetched_9001')"
console_has "$c1" '^GUEST: request on 8080: GET / HTTP' || fail "no request reached the guest's 8080"
[[ -n $udp_report ]] || fail "iperf3 -u to 127.0.0.1:1500 did not complete ($udp_tries tries):" \
  "$(cat "$dir/iperf3.out" 2>/dev/null)"
console_has "$c1" '^GUEST: iperf3 .* receiver' || fail "the guest's iperf3 received no UDP"
for port in 1500 2222 3000 3004 3006 3010 "$http_port"; do
  [[ " $tcp_listeners " == *" $port "* ]] || fail "nothing listens on TCP $port: $tcp_listeners"
done
[[ " $tcp_listeners " != *" 3005 "* ]] || fail "the excluded TCP port 3005 is listened on"
# UDP all: ports 1-1999 over IPv4 and IPv6 (none is in use in this namespace).
((udp_listeners == 2 * 1999)) || fail "UDP all: $udp_listeners sockets, not 3998"
echo "first boot: lease, ping, page, 2222->8080, 3001->9001, 3005 excluded, UDP all ($udp_listeners" \
  "sockets; iperf3 -u to 1500: ${udp_report## }) in $(guest_elapsed "$t_boot" "$t_done") s"

virsh_ destroy "$name" >"$dir/virsh.out" 2>&1 || fail "virsh destroy: $(cat "$dir/virsh.out")"
wait_gone 30 || fail "vunet or QEMU still running 30 s after virsh destroy: $(our_pids)"
[[ -z $(leftovers) ]] || fail "left in /run/libvirt/qemu/passt after destroy: $(leftovers)"
grep -q "the frontend left (--one-off): exiting" "$dir/passt1.log" ||
  fail "vunet did not leave as its frontend did"
echo "virsh destroy: vunet and QEMU gone, no socket or pid file left"

# --- 2. Create again: a second boot -----------------------------------------------------------------

writable "$dir/console2.log"
writable "$dir/passt2.log"
domain_xml "$name-2" "$dir/boot/initrd2" "$dir/console2.log" "$dir/passt2.log" >"$dir/domain2.xml"
t_boot=$(guest_now)
virsh_ create "$dir/domain2.xml" >"$dir/virsh.out" 2>&1 ||
  fail "virsh create, again: $(cat "$dir/virsh.out")"
# It powers off when done (on_poweroff: destroy): the transient domain goes.
deadline=$(($(date +%s) + 180))
while virsh_ domstate "$name-2" >/dev/null 2>&1; do
  (($(date +%s) < deadline)) ||
    fail "the second guest did not power off in 180 s: $(virsh_ domstate --reason "$name-2" 2>&1)"
  sleep 0.5
done
t_done=$(guest_now)
c2=$dir/console2.log
console_has "$c2" '^GUEST: addr4 192\.0\.2\.15/24 gateway 192\.0\.2\.1' || fail "second boot: no lease"
console_has "$c2" '^GUEST: ping ok' || fail "second boot: the ping failed"
console_has "$c2" '^GUEST: http hello from the host' || fail "second boot: no page"
wait_gone 30 || fail "vunet or QEMU still running after the second guest powered off: $(our_pids)"
[[ -z $(leftovers) ]] || fail "left in /run/libvirt/qemu/passt after power-off: $(leftovers)"
echo "second boot (virsh create again): lease, ping, page, power-off in" \
  "$(guest_elapsed "$t_boot" "$t_done") s; vunet gone, nothing left"

# --- 3. "all" beyond the open-file limit: refused at start, in one line ------------------------------

in_ns sh -c 'echo "32768 60999" >/proc/sys/net/ipv4/ip_local_port_range'
writable "$dir/console3.log"
writable "$dir/passt3.log"
domain_xml "$name-3" "$dir/boot/initrd2" "$dir/console3.log" "$dir/passt3.log" >"$dir/domain3.xml"
if virsh_ create "$dir/domain3.xml" >"$dir/virsh.out" 2>&1; then
  fail "a domain whose UDP all needs 74606 sockets started under an 8192-descriptor limit"
fi
for want in "RLIMIT_NOFILE 8192" "raise it to at least" "rather than all"; do
  grep -qF "$want" "$dir/virsh.out" || fail "virsh create's error does not say '$want'"
done
wait_gone 10 || fail "something of the refused domain still runs: $(our_pids)"
[[ -z $(leftovers) ]] || fail "left in /run/libvirt/qemu/passt after the refusal: $(leftovers)"
echo "UDP all past the limit: virsh create fails with: $(grep -o 'vunet: .*' "$dir/virsh.out" | head -n 1)"

echo "PASS ($(guest_elapsed "$t0" "$(guest_now)") s)"
