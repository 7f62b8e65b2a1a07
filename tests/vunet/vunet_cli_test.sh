#!/usr/bin/env bash
# The vunet binary's command line and life cycle, without a guest: --print-capabilities prints the JSON
# a vhost-user net backend must (QEMU/libvirt read it), --version and --help exit 0, every option passt's
# users type is accepted (all of them at once, in two runs that start and serve), every bad option or
# impossible combination is one line on stderr and exit 1 (never gflags' own messages), the start-up
# banner holds the QEMU options that attach a VM, -l sends the log to a file (foreground and daemon), SIGTERM and SIGINT in the foreground exit 0 and remove the socket, and without -f
# the process daemonizes (the parent exits 0 once the daemon is ready, the pid file naming it, and the
# daemon serves the socket until SIGTERM; a daemon failing at start-up makes the parent exit 1 with
# its error). passt's newer options (issue 16): each malformed value of every option is one line
# naming it (ports out of range, inverted or overlapping ranges, ~ alone, bad addresses and interfaces,
# an FQDN longer than DNS allows, a log size of 0, an --fd that is not a socket, pasta's own options);
# they are all accepted together, --stats logs counters every DELAY s, --log-size keeps the log under
# its cap, --fd serves a listening and a connected socket handed over, -t all fails at start in one line
# naming RLIMIT_NOFILE when the limit cannot hold its sockets, and binds every non-ephemeral port (in a
# network namespace of its own, as root) when it can.
#
# Usage: vunet_cli_test.sh VUNET
set -euo pipefail

vunet=$(realpath "$1")
dir=$(mktemp -d /tmp/vunet_cli.XXXXXX)
pids=()
cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail() {
  echo "FAIL: $*"
  exit 1
}

# Runs vunet with the arguments given; sets rc, out, err.
run() {
  rc=0
  "$vunet" "$@" >"$dir/out" 2>"$dir/err" </dev/null || rc=$?
  out=$(cat "$dir/out")
  err=$(cat "$dir/err")
}

run --print-capabilities
((rc == 0)) || fail "--print-capabilities exited $rc"
[[ $out == $'{\n  "type": "net"\n}' ]] || fail "--print-capabilities printed: $out"
compact=$(tr -d ' \n' <"$dir/out")
[[ $compact == '{"type":"net"}' ]] || fail "--print-capabilities is not {\"type\": \"net\"}: $compact"

run --version
((rc == 0)) || fail "--version exited $rc"
[[ $out =~ ^vunet\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "--version printed: $out"

for help in --help -h; do
  run "$help"
  ((rc == 0)) || fail "$help exited $rc"
  for want in --socket --foreground --one-off --pid --print-capabilities --vhost-user --no-dhcp \
    --tcp-ports --udp-ports --pcap --mtu --dns "vectors=0" "memory-backend-memfd" "-1," \
    --log-file --interface --no-tcp --no-udp --no-icmp --no-dhcp-dns --no-dhcp-search; do
    grep -qF -- "$want" "$dir/out" || fail "$help does not mention '$want'"
  done
done

# Each must fail with one line on stderr naming the problem, and exit 1.
bad() {
  local want=$1
  shift
  run "$@"
  ((rc == 1)) || fail "'$*' exited $rc, not 1 (stderr: $err)"
  [[ $(wc -l <"$dir/err") -eq 1 ]] || fail "'$*' printed more than one line: $err"
  [[ -z $out ]] || fail "'$*' printed on stdout: $out"
  grep -qF -- "$want" "$dir/err" || fail "'$*': '$want' not in: $err"
  echo "ok: $* -> $err"
}
bad "unknown option '-x'" -x
bad "unknown option '--bogus'" --bogus
bad "unknown option '--helpfull'" --helpfull
bad "needs a value" -s
bad "needs a value" --socket
bad "unexpected argument 'stray'" -f stray
bad "-q and -d" -q -d
bad "-4 and -6" -4 -6
bad "mtu" -m 10
bad "address" -a 300.1.2.3
bad "netmask" -n 255.0.255.0
bad "too long" -s "/tmp/$(printf 'x%.0s' $(seq 200))"
bad "option '--foreground' is a switch: 'maybe'" --foreground=maybe
bad "option '--foreground' is a switch: 't'" --foreground=t
bad "option '--no-icmp' is a switch" --no-icmp=maybe
bad "unknown option '--noforeground'" --noforeground
bad "unknown option '--flagfile'" --flagfile=/dev/null
bad "unknown option '--fromenv'" --fromenv=socket
bad "needs a value" -i
bad "needs a value" --interface=
bad "-i/--interface: not an interface name" -i 0123456789abcdef
bad "needs a value" -l
bad "log file $dir/no/such/dir/vunet.log: No such file" -l "$dir/no/such/dir/vunet.log"
ln -s "$dir/elsewhere.log" "$dir/link.log"
bad "log file $dir/link.log: is a symbolic link" -l "$dir/link.log"
mkfifo "$dir/fifo.log"
bad "log file $dir/fifo.log: not a regular file" -l "$dir/fifo.log"
[[ ! -e $dir/elsewhere.log ]] || fail "-l followed a symlink"
bad "-t 8080: TCP is off (--no-tcp)" --no-tcp -t 8080
bad "-u 53: UDP is off (--no-udp)" --no-udp -u none -u 53
bad "the only mode" --vhost-user=false
bad "needs a value" -t
bad "forwarding spec 'x'" -t x
bad "forwarding spec '0'" -t 0
bad "forwarding spec '70000'" -u 70000
bad "forwarding spec '8000-8010:80'" -t 8000-8010:80
bad "forwarding spec '300.0.0.1/80'" -t 300.0.0.1/80
bad "forwarding spec '80,,81'" -t 22 -t 80,,81
bad "-6" -6 -t 127.0.0.1/8080
bad "-4" -4 -u ::1/5353
bad "unknown option '--tcp-port'" --tcp-port 80

# Hostile input for passt's options (issue 16): one line naming the option, exit 1, for each.
# -t/-u specs: ports out of range, inverted and overlapping ranges, ~ alone, bad addresses and
# interfaces, "all" with more, "none" after a forward, pasta's "auto".
bad "forwarding spec '65536'" -t 65536
bad "forwarding spec '1-65536'" -u 1-65536
bad "forwarding spec '90-80'" -t 90-80
bad "forwarding spec '8000-8010,8005': '8000-8010' and '8005' overlap" -t 8000-8010,8005
bad "-t: forwarding specs '8080' and '8000-8100' overlap (port 8080)" -t 8080 -t 8000-8100
bad "-u: forwarding specs '53' and '127.0.0.1/53' overlap" -u 53 -u 127.0.0.1/53
bad "forwarding spec '~': '~' needs a port or range to exclude" -t '~'
bad "forwarding spec '80,~': '~' needs a port" -t 80,~
bad "forwarding spec '~0'" -u '~0'
bad "forwarding spec '1.2.3.4.5/80': '1.2.3.4.5' is not an IPv4 or IPv6 address" -t 1.2.3.4.5/80
bad "forwarding spec '%0123456789abcdef/80': '0123456789abcdef' is not an interface name" \
  -t %0123456789abcdef/80
bad "forwarding spec 'all,~22': 'all' stands alone" -t all,~22
bad "forwarding spec '~1-65535': every port is excluded" -t '~1-65535'
bad "-t none: conflicts with the -t options before it" -t 8080 -t none
bad "'auto' (ports bound in a namespace) is pasta's" -t auto
# -H/--fqdn: what DNS does not allow, or what a guest's DHCP script should not see.
bad "-H/--hostname vm 1: not a host name" -H "vm 1"
bad "-H/--hostname \$(reboot): not a host name" --hostname '$(reboot)'
bad "--fqdn -vm.example.org: not a host name" --fqdn -vm.example.org
longest=$(printf 'a%.0s' $(seq 63)).$(printf 'b%.0s' $(seq 63)).$(printf 'c%.0s' $(seq 63)).$(printf 'd%.0s' $(seq 61))
bad "--fqdn ${longest}d: longer than DNS allows (253 characters, 255 octets)" --fqdn "${longest}d"
bad "a label is longer than DNS allows (63 octets)" --fqdn "$(printf 'x%.0s' $(seq 64)).org"
bad "-S/--search bad..example: not a domain name" -S bad..example
bad "-S/--search 'a.example none': none stands alone" -S "a.example none"
# Log size, stats, descriptors, socket paths.
bad "--log-size: not a size in bytes from 4096" --log-size 0
bad "--log-size: not a size in bytes from 4096" --log-size 1k
bad "--tcp-reorder-bytes: not 0 (no pool) or a size from 65536 to 1073741824 bytes (K, M, G: KiB, MiB, GiB): 1000" --tcp-reorder-bytes 1000
bad "--tcp-reorder-bytes: not 0 (no pool) or a size from 65536 to 1073741824 bytes" --tcp-reorder-bytes 2G
bad "--tcp-reorder-bytes: not 0 (no pool) or a size from 65536 to 1073741824 bytes" --tcp-reorder-bytes=lots
bad "--stats: counters go to the terminal: needs -f/--foreground" --stats 5
bad "--stats: not a delay in seconds from 1 to 86400: 0" -f --stats 0
bad "-q and --trace cannot be given together" -q --trace
bad "-F/--fd 1: standard output or error, not a socket" -F 1
bad "-F/--fd 77: not an open file descriptor" -F 77
bad "-F/--fd 0: not a socket" -F 0
bad "-F/--fd: not a file descriptor number: x" --fd x
bad "-F/--fd and -s/--socket exclude each other" -F 0 -s "$dir/x.sock"
bad "needs a value" -c ""
bad "--repair-path: not a socket path (1 to 107 bytes)" --repair-path "/tmp/$(printf 'r%.0s' $(seq 120))"
bad "-c/--conf-path: not a socket path" --conf-path "/tmp/$(printf 'c%.0s' $(seq 120))"
# Addresses and interfaces.
bad "-o/--outbound 224.0.0.1: not a unicast address" -o 224.0.0.1
bad "-o/--outbound ::1: not a unicast, non-loopback IPv6 address" --outbound ::1
bad "-o/--outbound eth0: not an IPv4 or IPv6 address" -o eth0
bad "--outbound-if4 nosuch0: no such interface" --outbound-if4 nosuch0
bad "--outbound-if6 a/b: not an interface name" --outbound-if6 a/b
bad "--dns-forward 127.0.0.1: not a unicast, non-loopback address" --dns-forward 127.0.0.1
bad "--dns-host ::: not a unicast address" --dns-host ::
bad "--map-host-loopback ::1: not a unicast, non-loopback address" --map-host-loopback ::1
bad "--map-guest-addr 10.0.2: not an IPv4 or IPv6 address" --map-guest-addr 10.0.2
# pasta's own options, by name.
bad "option '--netns' is pasta's (network namespaces)" --netns /run/netns/x
bad "option '-T' is pasta's" -T 22
bad "option '--config-net' is pasta's" --config-net
bad "option '--dhcp-dns' is pasta's" --dhcp-dns

# Every option at once (passt's spellings), in three runs: each starts, serves its socket, and exits 0
# on SIGTERM. Forwarded ports are high and random (they bind once forwarding is served), below the
# ephemeral ports ("~" exclusions alone forward what is left of the others).
ephemeral_first=$(cut -f 1 /proc/sys/net/ipv4/ip_local_port_range)
((ephemeral_first > 12000)) || fail "ephemeral ports from $ephemeral_first: no room below them for this test"
port=$((10000 + RANDOM % (ephemeral_first - 10100)))
accepted() {
  local sock=$1 log=$2
  shift 2
  "$vunet" -s "$sock" "$@" >"$log" 2>&1 </dev/null &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    [[ -S $sock ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [[ -S $sock ]] || fail "'$*' did not start: $(cat "$log")"
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  ((rc == 0)) || fail "'$*': exit $rc after SIGTERM: $(cat "$log")"
  echo "ok: accepted $*"
}
accepted "$dir/all4.sock" "$dir/all4.log" --vhost-user -f --one-off -P "$dir/all4.pid" -4 \
  -a 10.0.2.15 -n 255.255.255.0 -g 10.0.2.2 --mtu 1500 --dns 10.0.2.3 -D 10.0.2.4 -S example.com \
  -M 02:00:00:00:00:01 --no-dhcp --no-ndp --no-dhcpv6 --no-ra -t none -t "127.0.0.1/$port:80" \
  -u "$port,$((port + 1)):53" --pcap "$dir/all4.pcap" -q -i lo --no-icmp --no-dhcp-dns \
  --no-dhcp-search
accepted "$dir/all6.sock" "$dir/all6.log" --foreground -6 -a fd00::15/64 -g fe80::1 -m 65520 \
  -D fd00::3 --tcp-ports "::1/$port-$((port + 2)):8080-8082" --udp-ports none -p "$dir/all6.pcap" -d \
  -1 --log-file "$dir/all6.vunet.log" --interface nosuch0 --no-udp
# -l: the lines went to the file (created mode 0600), none to stderr.
vlog=$dir/all6.vunet.log
grep -q 'IPv6: guest fd00::15/64' "$vlog" || fail "-6 -a: $(cat "$vlog")"
grep -q 'config: interface nosuch0 has no routable IPv4 address' "$vlog" ||
  fail "--interface nosuch0: $(cat "$vlog")"
grep -q 'UDP is dropped (--no-udp)' "$vlog" || fail "--no-udp: $(cat "$vlog")"
[[ $(stat -c %a "$vlog") == 600 ]] || fail "-l created its file mode $(stat -c %a "$vlog")"
[[ ! -s $dir/all6.log ]] || fail "-l: lines on stderr: $(cat "$dir/all6.log")"
# --tcp-reorder-bytes (vunet's): 0 starts without the TCP out-of-order pool, and says so; a size starts
# with a pool of that size.
accepted "$dir/ooo.sock" "$dir/ooo.log" -f --tcp-reorder-bytes 0
grep -q 'tcp: no out-of-order pool' "$dir/ooo.log" || fail "--tcp-reorder-bytes 0: $(cat "$dir/ooo.log")"
accepted "$dir/ooo.sock" "$dir/ooo.log" -f --tcp-reorder-bytes 4M
! grep -q 'no out-of-order pool' "$dir/ooo.log" || fail "--tcp-reorder-bytes 4M: $(cat "$dir/ooo.log")"
accepted "$dir/off.sock" "$dir/off.log" -f --no-tcp --no-udp --no-icmp -t none -u none
grep -q 'Guest TCP and UDP are dropped (--no-tcp, --no-udp). ICMP echo is off (--no-icmp).' \
  "$dir/off.log" || fail "--no-tcp --no-udp --no-icmp: $(cat "$dir/off.log")"

# passt's newer options, all at once: they start, serve and end as the rest. --freebind binds a
# forward to an address the host does not have (TEST-NET-3); the log names what is not in effect yet
# and the DNS forwards made.
accepted "$dir/new.sock" "$dir/new.log" --socket-path "$dir/new.sock" -f -e --trace -H vm1 \
  --fqdn vm1.example.org -S "example.org example.net" -m 0 --log-size 65536 -c "$dir/conf.sock" \
  --repair-path "$dir/repair.sock" --migrate-exit --migrate-no-linger -o 127.0.0.1 \
  --outbound-if4 lo --dns-forward 192.0.2.53 --dns-host 127.0.0.53 --map-host-loopback 192.0.2.1 \
  --no-map-gw --map-guest-addr 192.0.2.2 --freebind -t "203.0.113.77/$port" \
  -t "$((port + 10))-$((port + 20)),~$((port + 15))" -u "~1-$((port - 1)),~$((port + 1))-65535"
for want in "started as: $vunet -s $dir/new.sock --socket-path $dir/new.sock -f -e --trace -H vm1" \
  "-c/--conf-path $dir/conf.sock: no configuration socket is served" \
  "DNS: the guest's queries to 192.0.2.53:53 go to 127.0.0.53:53" \
  "DNS: the guest's queries to 192.0.2.53:853 go to 127.0.0.53:853" "vunet debug:"; do
  grep -qF -- "$want" "$dir/new.log" || fail "'$want' not in the log: $(cat "$dir/new.log")"
done
[[ ! -e $dir/repair.sock && ! -e $dir/conf.sock ]] ||
  fail "a repair or configuration socket was left, or made"

# --repair-path (live migration): by default the socket path + ".repair", as passt's, listened on
# while vunet runs (for the TCP_REPAIR helper) and removed at exit; "none": no repair socket; a path
# given: that one.
repair_run() {
  local sock=$1 want=$2
  shift 2
  "$vunet" -f -s "$sock" "$@" >"$dir/repair.log" 2>&1 </dev/null &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    [[ -S $sock ]] && break
    sleep 0.05
  done
  [[ -S $sock ]] || fail "'$*' did not start: $(cat "$dir/repair.log")"
  if [[ -n $want ]]; then
    [[ -S $want ]] || fail "'$*': no repair socket $want: $(cat "$dir/repair.log")"
    grep -qF "migration: waiting for a TCP_REPAIR helper on $want" "$dir/repair.log" ||
      fail "'$*': the repair socket not logged: $(cat "$dir/repair.log")"
  else
    ! grep -q "TCP_REPAIR helper" "$dir/repair.log" || fail "'$*': a repair socket: $(cat "$dir/repair.log")"
  fi
  kill -TERM "$pid"
  wait "$pid" || fail "'$*': exit $? after SIGTERM: $(cat "$dir/repair.log")"
  [[ -z $want || ! -e $want ]] || fail "'$*': $want left behind"
  echo "ok: repair socket '$want' for $*"
}
repair_run "$dir/mig.sock" "$dir/mig.sock.repair"
repair_run "$dir/mig.sock" "" --repair-path none
[[ ! -e $dir/mig.sock.repair ]] || fail "--repair-path none: $dir/mig.sock.repair made"
repair_run "$dir/mig.sock" "$dir/r.sock" --repair-path "$dir/r.sock" --migrate-no-linger --migrate-exit

# --stats DELAY: a line of counters every DELAY seconds in the foreground, and one at the end.
"$vunet" -f -s "$dir/stats.sock" --stats 1 >"$dir/stats.log" 2>&1 </dev/null &
pid=$!
pids+=("$pid")
sleep 3.5
kill -TERM "$pid"
wait "$pid" || fail "--stats: exit $?: $(cat "$dir/stats.log")"
(($(grep -c 'vunet info: counters: ' "$dir/stats.log") >= 3)) ||
  fail "--stats 1: not a line of counters a second: $(cat "$dir/stats.log")"

# --log-size: runs appending to one log file keep it under the cap, the oldest lines dropped.
for i in $(seq 8); do
  accepted "$dir/cap.sock" "$dir/cap.out" -f -d -l "$dir/cap.log" --log-size 4096 >/dev/null
done
[[ $(stat -c %s "$dir/cap.log") -le 4096 ]] || fail "--log-size 4096: $(stat -c %s "$dir/cap.log") bytes"
grep -q 'bytes were dropped' "$dir/cap.log" || fail "--log-size: no note of dropped lines"
tail -n 1 "$dir/cap.log" | grep -q 'vunet ' || fail "--log-size: the last line is cut"

# -F/--fd (QEMU's convention for vhost-user backends), as whoever starts vunet passes it: a listening
# socket, served until its one frontend leaves (passt's --fd implies --one-off), the socket file left to
# its owner; and a connected socket, served at once. A frontend here connects and leaves.
python3 - "$vunet" "$dir" <<'PYEOF' || fail "--fd: see above"
import os, socket, subprocess, sys, time
vunet, d = sys.argv[1], sys.argv[2]

def run(fd, log):
    return subprocess.Popen([vunet, "-f", "--fd", str(fd)], pass_fds=[fd],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)

def wait_for(log, text, p):
    for _ in range(100):
        if text in open(log).read():
            return
        if p.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"'{text}' not in {log}: {open(log).read()}")

path = os.path.join(d, "fd.sock")
listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listening.bind(path)
listening.listen(4)
p = run(listening.fileno(), os.path.join(d, "fd_listen.log"))
listening.close()
wait_for(os.path.join(d, "fd_listen.log"), "on inherited fd", p)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(path)
wait_for(os.path.join(d, "fd_listen.log"), "frontend connected", p)
c.close()
if p.wait(10) != 0:
    sys.exit(f"--fd (listening): exit {p.returncode}")
if not os.path.exists(path):
    sys.exit("--fd (listening): vunet removed a socket file that is not its own")
if "TCP_REPAIR helper" in open(os.path.join(d, "fd_listen.log")).read() or \
        os.path.exists(path + ".repair"):
    sys.exit("--fd without --repair-path: a repair socket was made")

ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
p = run(theirs.fileno(), os.path.join(d, "fd_conn.log"))
theirs.close()
wait_for(os.path.join(d, "fd_conn.log"), "frontend connected", p)
ours.close()
if p.wait(10) != 0:
    sys.exit(f"--fd (connected): exit {p.returncode}")
print("ok: --fd, listening and connected")
PYEOF

# "all" (and exclusions alone) bind every port outside the ephemeral range, skipping those in use; where
# the open-file limit cannot hold them, vunet says so at start, in one line, rather than fail halfway.
out=$(prlimit --nofile=4096:4096 "$vunet" -f -s "$dir/all.sock" -t all -u all 2>&1 </dev/null) &&
  fail "-t all -u all under a 4096-fd limit started: $out"
[[ $(wc -l <<<"$out") -eq 1 ]] || fail "-t all under a low limit: more than one line: $out"
for want in "RLIMIT_NOFILE 4096" "raise it to at least" "rather than all"; do
  grep -qF "$want" <<<"$out" || fail "-t all under a low limit: '$want' not in: $out"
done
echo "ok: -t all -u all under a 4096-fd limit -> $out"
# In a network namespace of its own whose ephemeral ports start at 2000 (the kernel keeps the range
# above the privileged ports): all is ports 1-1999.
if ((EUID == 0)) && unshare -n true 2>/dev/null; then
  # shellcheck disable=SC2016
  unshare -n sh -c 'ip link set lo up && echo "2000 65535" >/proc/sys/net/ipv4/ip_local_port_range &&
    exec "$@"' sh "$vunet" -f -s "$dir/ns.sock" -t all -u "~53" >"$dir/ns.log" 2>&1 </dev/null &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do
    [[ -S $dir/ns.sock ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [[ -S $dir/ns.sock ]] || fail "-t all in a namespace did not start: $(cat "$dir/ns.log")"
  tcp=$(nsenter -t "$pid" -n ss -Hltn | wc -l)
  udp=$(nsenter -t "$pid" -n ss -Hlun | wc -l)
  kill -TERM "$pid"
  wait "$pid" || fail "-t all: exit $?: $(cat "$dir/ns.log")"
  ((tcp == 1999)) || fail "-t all with ephemeral ports from 2000: $tcp TCP listeners, not 1999"
  ((udp == 2 * 1998)) || fail "-u ~53 with ephemeral ports from 2000: $udp UDP sockets, not 3996"
  echo "ok: -t all, -u ~53 in a namespace: $tcp TCP and $udp UDP listening sockets"
else
  echo "(not root or no network namespaces: -t all's binding not checked here; tests/libvirt does)"
fi

# Foreground: listening, SIGTERM, exit 0, socket and pid file removed.
sock=$dir/fg.sock
"$vunet" -f -s "$sock" -P "$dir/fg.pid" >"$dir/fg.log" 2>&1 &
pid=$!
pids+=("$pid")
for _ in $(seq 100); do
  [[ -S $sock ]] && break
  sleep 0.05
done
[[ -S $sock ]] || fail "no socket at $sock: $(cat "$dir/fg.log")"
[[ $(cat "$dir/fg.pid") == "$pid" ]] || fail "the pid file does not name $pid"
# The QEMU options that attach a VM, with the MAC the guest should have and a shared memory backend.
qemu_line="-chardev socket,id=vunet0,path=$sock -netdev vhost-user,id=net0,chardev=vunet0"
qemu_line+=" -device virtio-net-pci,netdev=net0,mac=9a:55:9a:55:9a:56"
qemu_line+=" -object memory-backend-memfd,id=mem0,size=1G,share=on -numa node,memdev=mem0"
grep -qF -- "$qemu_line" "$dir/fg.log" || fail "no QEMU command line in the banner: $(cat "$dir/fg.log")"
grep -qF -- "-m and size= must be the same" "$dir/fg.log" || fail "the banner does not say -m = size="
# A second instance on the same socket is refused.
run -f -s "$sock"
((rc == 1)) || fail "a second instance on a live socket exited $rc"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
((rc == 0)) || fail "SIGTERM: exit $rc: $(cat "$dir/fg.log")"
[[ ! -e $sock ]] || fail "the socket is still there after SIGTERM"
[[ ! -e $dir/fg.pid ]] || fail "the pid file is still there after SIGTERM"

# SIGINT (Ctrl-C) ends it as SIGTERM does.
"$vunet" -f -s "$sock" -P "$dir/int.pid" >"$dir/int.log" 2>&1 &
pid=$!
pids+=("$pid")
for _ in $(seq 100); do
  [[ -S $sock ]] && break
  sleep 0.05
done
[[ -S $sock ]] || fail "no socket at $sock: $(cat "$dir/int.log")"
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
((rc == 0)) || fail "SIGINT: exit $rc: $(cat "$dir/int.log")"
[[ ! -e $sock ]] || fail "the socket is still there after SIGINT"
[[ ! -e $dir/int.pid ]] || fail "the pid file is still there after SIGINT"

# Daemon: the parent returns once the daemon is ready, its pid file already written; the daemon
# serves.
sock=$dir/bg.sock
run -s "$sock" -P "$dir/bg.pid" -q
((rc == 0)) || fail "daemonizing exited $rc: $err"
[[ -s $dir/bg.pid ]] || fail "the daemon's parent returned before the pid file was written"
daemon=$(cat "$dir/bg.pid" 2>/dev/null || true)
[[ -n $daemon ]] || fail "the daemon wrote no pid file"
pids+=("$daemon")
kill -0 "$daemon" || fail "the daemon $daemon is not running"
[[ -S $sock ]] || fail "the daemon does not listen on $sock"
[[ $(ps -o sid= -p "$daemon" | tr -d ' ') == "$daemon" ]] || fail "the daemon is not a session leader"
# Running, not a zombie nobody reaps (the daemon's parent is whatever adopted it).
alive() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
kill -TERM "$daemon"
for _ in $(seq 100); do
  alive "$daemon" || break
  sleep 0.05
done
alive "$daemon" && fail "the daemon did not exit on SIGTERM"
[[ ! -e $sock ]] || fail "the daemon left its socket"

# A daemon with -l: its lines, before the fork and after, are appended to the file (not syslog);
# stderr stays empty.
sock=$dir/bgl.sock
echo "an earlier line" >"$dir/bgl.log"
run -s "$sock" -P "$dir/bgl.pid" -l "$dir/bgl.log"
((rc == 0)) || fail "a daemon with -l exited $rc: $err"
[[ -z $err ]] || fail "a daemon with -l printed: $err"
daemon=$(cat "$dir/bgl.pid")
pids+=("$daemon")
[[ $(head -n 1 "$dir/bgl.log") == "an earlier line" ]] || fail "-l did not append: $(cat "$dir/bgl.log")"
grep -q "backend listening on $sock" "$dir/bgl.log" || fail "-l: no banner: $(cat "$dir/bgl.log")"
kill -TERM "$daemon"
for _ in $(seq 100); do
  alive "$daemon" || break
  sleep 0.05
done
alive "$daemon" && fail "the daemon with -l did not exit on SIGTERM"
grep -q "shutting down" "$dir/bgl.log" || fail "-l: the daemon's lines are not in it: $(cat "$dir/bgl.log")"

# A daemon that fails after the fork (its pid file cannot be written): the parent says why, exit 1,
# and nothing is left listening.
sock=$dir/bg2.sock
run -s "$sock" -P "$dir/no/such/dir/bg.pid"
((rc == 1)) || fail "a daemon whose pid file fails: exit $rc"
last=$(tail -n 1 "$dir/err")
[[ $last == "vunet: $dir/no/such/dir/bg.pid: No such file or directory" ]] ||
  fail "the parent did not report the daemon's error last: $err"
for _ in $(seq 100); do
  [[ -e $sock ]] || break
  sleep 0.05
done
[[ ! -e $sock ]] || fail "the failed daemon left its socket"
echo "PASS"
