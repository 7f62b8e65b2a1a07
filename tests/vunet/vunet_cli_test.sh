#!/usr/bin/env bash
# The vunet binary's command line and life cycle, without a guest: --print-capabilities prints the JSON
# a vhost-user net backend must (QEMU/libvirt read it), --version and --help exit 0, every bad option or
# impossible combination is one line on stderr and exit 1, SIGTERM in the foreground exits 0 and
# removes the socket, and without -f the process daemonizes (the parent exits 0 at once; the pid file
# names the daemon, which serves the socket until SIGTERM).
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
    "TCP and UDP are not translated yet" "vectors=0" "memory-backend-memfd"; do
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
bad "foreground" --foreground=maybe
bad "the only mode" --vhost-user=false

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
grep -q "path=$sock" "$dir/fg.log" || fail "no QEMU command line in the banner: $(cat "$dir/fg.log")"
grep -q "TCP and UDP are not translated yet" "$dir/fg.log" || fail "the banner does not say TCP/UDP drop"
# A second instance on the same socket is refused.
run -f -s "$sock"
((rc == 1)) || fail "a second instance on a live socket exited $rc"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
((rc == 0)) || fail "SIGTERM: exit $rc: $(cat "$dir/fg.log")"
[[ ! -e $sock ]] || fail "the socket is still there after SIGTERM"
[[ ! -e $dir/fg.pid ]] || fail "the pid file is still there after SIGTERM"

# Daemon: the parent returns at once; the daemon writes the pid file and serves.
sock=$dir/bg.sock
run -s "$sock" -P "$dir/bg.pid" -q
((rc == 0)) || fail "daemonizing exited $rc: $err"
for _ in $(seq 100); do
  [[ -s $dir/bg.pid ]] && break
  sleep 0.05
done
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
echo "PASS"
