#!/usr/bin/env bash
# The vunet binary's command line and life cycle, without a guest: --print-capabilities prints the JSON
# a vhost-user net backend must (QEMU/libvirt read it), --version and --help exit 0, every option passt's
# users type is accepted (all of them at once, in two runs that start and serve), every bad option or
# impossible combination is one line on stderr and exit 1 (never gflags' own messages), the start-up
# banner holds the QEMU options that attach a VM, -l sends the log to a file (foreground and daemon), SIGTERM and SIGINT in the foreground exit 0 and remove the socket, and without -f
# the process daemonizes (the parent exits 0 once the daemon is ready, the pid file naming it, and the
# daemon serves the socket until SIGTERM; a daemon failing at start-up makes the parent exit 1 with
# its error).
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

# Every option at once (passt's spellings), in three runs: each starts, serves its socket, and exits 0
# on SIGTERM. Forwarded ports are high and random (they bind once forwarding is served).
port=$((20000 + RANDOM % 20000))
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
  -M 02:00:00:00:00:01 --no-dhcp --no-ndp --no-dhcpv6 --no-ra -t "127.0.0.1/$port:80" -t none \
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
accepted "$dir/off.sock" "$dir/off.log" -f --no-tcp --no-udp --no-icmp -t none -u none
grep -q 'Guest TCP and UDP are dropped (--no-tcp, --no-udp). ICMP echo is off (--no-icmp).' \
  "$dir/off.log" || fail "--no-tcp --no-udp --no-icmp: $(cat "$dir/off.log")"

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
