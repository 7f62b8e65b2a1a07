#!/usr/bin/env bash
# The vunet binary's confinement, end to end (tools/vunet/sandbox.h), with a real frontend
# (tools/vu_frontend) negotiating, mapping memory and sending frames:
#   - started as root, vunet runs as nobody (/proc/PID/status Uid and Gid, no supplementary groups,
#     no capabilities), with NoNewPrivs: 1 and Seccomp: 2 (filter mode); its clean-up helper keeps
#     the starting identity under a filter of its own; no syscall is refused while serving;
#     SIGTERM exits 0 and the helper has removed the socket and the pid file by then;
#   - daemonized (no -f), the same holds for the daemon the pid file names;
#   - killed with SIGKILL, the helper still removes the socket and the pid file;
#   - --runas with a name that does not exist: one line, exit 1, nothing created;
#   - --no-sandbox: identity unchanged, no filter, files removed as before.
# Not root: the identity checks become "unchanged", the rest holds.
#
# Usage: sandbox_vunet_test.sh VUNET VU_FRONTEND_MAIN
set -euo pipefail

vunet=$(realpath "$1")
frontend=$(realpath "$2")
dir=$(mktemp -d /tmp/vunet_sandbox.XXXXXX)
pids=()
cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail() {
  echo "FAIL: $*"
  for log in "$dir"/*.log; do
    [[ -f $log ]] && { echo "--- $log"; tail -n 30 "$log"; }
  done
  exit 1
}

field() { sed -n "s/^$2:[[:space:]]*//p" "/proc/$1/status"; }

# wait_for PATH: until PATH exists (5 s).
wait_for() {
  for _ in $(seq 100); do
    [[ -e $1 ]] && return 0
    sleep 0.05
  done
  return 1
}

# gone PATH...: until none exists (5 s).
gone() {
  for _ in $(seq 100); do
    local any=no p
    for p in "$@"; do [[ -e $p ]] && any=yes; done
    [[ $any == no ]] && return 0
    sleep 0.05
  done
  return 1
}

if ((EUID == 0)); then
  expect_uid=$(id -u nobody)
  expect_gid=$(id -g nobody)
else
  expect_uid=$EUID
  expect_gid=$(id -g)
fi
my_uid=$EUID

# check_confined PID LOG (- for none: a daemon logs to syslog): the identity, no_new_privs, the filter, and the helper.
check_confined() {
  local pid=$1 log=$2 helper
  [[ $(field "$pid" Uid) == "$expect_uid"$'\t'"$expect_uid"$'\t'"$expect_uid"$'\t'"$expect_uid" ]] ||
    fail "vunet's Uid is '$(field "$pid" Uid)', not $expect_uid"
  [[ $(field "$pid" Gid) == "$expect_gid"$'\t'"$expect_gid"$'\t'"$expect_gid"$'\t'"$expect_gid" ]] ||
    fail "vunet's Gid is '$(field "$pid" Gid)', not $expect_gid"
  [[ $(field "$pid" NoNewPrivs) == 1 ]] || fail "NoNewPrivs is $(field "$pid" NoNewPrivs)"
  [[ $(field "$pid" Seccomp) == 2 ]] || fail "Seccomp is $(field "$pid" Seccomp), not 2 (filter)"
  if ((EUID == 0)); then
    [[ $(field "$pid" Groups) =~ ^[[:space:]]*$ ]] || fail "supplementary groups: $(field "$pid" Groups)"
    [[ $(field "$pid" CapEff) == 0000000000000000 ]] || fail "capabilities: $(field "$pid" CapEff)"
  fi
  [[ $log == - ]] || grep -q "sandbox: running as" "$log" || fail "no sandbox line in the log"
  helper=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')
  [[ -n $helper ]] || fail "no clean-up helper under vunet"
  [[ $(field "$helper" Uid) == "$my_uid"$'\t'* ]] || fail "the helper runs as $(field "$helper" Uid)"
  [[ $(field "$helper" Seccomp) == 2 ]] || fail "the helper has no filter"
  echo "ok: pid $pid: Uid $(field "$pid" Uid | cut -f1), NoNewPrivs 1, Seccomp 2; helper $helper" \
    "(Uid $my_uid, Seccomp 2)"
}

# serve SOCKET LOG: a frontend negotiates and sends frames through vunet.
serve() {
  "$frontend" --socket "$1" --send-frames 200 --timeout 5s >"$dir/frontend.log" 2>&1 ||
    fail "the frontend failed: $(tail -n 3 "$dir/frontend.log")"
  grep -q "sent: 200 frames" "$dir/frontend.log" || fail "the frontend did not send its frames"
}

# stop PID: SIGTERM, then its exit status in rc.
stop() {
  kill -TERM "$1"
  rc=0
  wait "$1" || rc=$?
}

common=(-a 10.0.2.15 -n 24 -g 10.0.2.2 -D 10.0.2.3)

# 1. Foreground, SIGTERM.
sock=$dir/fg.sock
"$vunet" -f -s "$sock" -P "$dir/fg.pid" "${common[@]}" >"$dir/fg.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_for "$sock" || fail "vunet did not listen"
wait_for "$dir/fg.pid" || fail "no pid file"
for _ in $(seq 100); do grep -q "sandbox: running as" "$dir/fg.log" && break; sleep 0.05; done
check_confined "$pid" "$dir/fg.log"
serve "$sock"
stop "$pid"
((rc == 0)) || fail "vunet exited $rc after SIGTERM"
[[ ! -e $sock ]] || fail "the socket is still there after vunet exited"
[[ ! -e $dir/fg.pid ]] || fail "the pid file is still there after vunet exited"
grep -q "frontend connected" "$dir/fg.log" || fail "vunet saw no frontend"
! grep -q "refused syscall" "$dir/fg.log" || fail "syscalls were refused: $(grep 'refused' "$dir/fg.log")"
echo "ok: served a frontend confined, no syscall refused; SIGTERM: exit 0, socket and pid file removed"

# 2. Daemonized.
sock=$dir/d.sock
rc=0
"$vunet" -s "$sock" -P "$dir/d.pid" "${common[@]}" >"$dir/d.log" 2>&1 || rc=$?
((rc == 0)) || fail "daemonizing exited $rc"
wait_for "$dir/d.pid" || fail "the daemon wrote no pid file"
pid=$(cat "$dir/d.pid")
pids+=("$pid")
for _ in $(seq 100); do [[ $(field "$pid" Seccomp) == 2 ]] && break; sleep 0.05; done
check_confined "$pid" -
serve "$sock"
kill -TERM "$pid"
gone "$sock" "$dir/d.pid" || fail "the daemon left its socket or pid file behind"
echo "ok: the daemon is confined; SIGTERM: socket and pid file removed"

# 3. SIGKILL: the helper cleans up.
sock=$dir/k.sock
"$vunet" -f -s "$sock" -P "$dir/k.pid" "${common[@]}" >"$dir/k.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_for "$sock" || fail "vunet did not listen"
for _ in $(seq 100); do [[ $(field "$pid" Seccomp) == 2 ]] && break; sleep 0.05; done
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
gone "$sock" "$dir/k.pid" || fail "after SIGKILL, the socket or pid file stayed"
echo "ok: SIGKILL: the helper removed the socket and the pid file"

# 4. --runas with an unknown name: one line, exit 1, no socket.
rc=0
"$vunet" -f -s "$dir/bad.sock" --runas vunet-no-such-user "${common[@]}" >"$dir/bad.out" 2>"$dir/bad.err" ||
  rc=$?
((rc == 1)) || fail "--runas vunet-no-such-user exited $rc"
[[ $(wc -l <"$dir/bad.err") -eq 1 ]] || fail "--runas error is not one line: $(cat "$dir/bad.err")"
grep -q "no such user 'vunet-no-such-user'" "$dir/bad.err" || fail "--runas error: $(cat "$dir/bad.err")"
[[ ! -e $dir/bad.sock ]] || fail "a socket was created before the --runas error"
echo "ok: $(cat "$dir/bad.err")"

# 5. --no-sandbox: as before.
sock=$dir/n.sock
"$vunet" -f --no-sandbox -s "$sock" -P "$dir/n.pid" "${common[@]}" >"$dir/n.log" 2>&1 &
pid=$!
pids+=("$pid")
wait_for "$sock" || fail "vunet --no-sandbox did not listen"
wait_for "$dir/n.pid" || fail "no pid file"
for _ in $(seq 100); do grep -q "unconfined" "$dir/n.log" && break; sleep 0.05; done
grep -q "no-sandbox: running unconfined" "$dir/n.log" || fail "--no-sandbox did not say so"
[[ $(field "$pid" Seccomp) == 0 ]] || fail "--no-sandbox has a filter"
[[ $(field "$pid" Uid | cut -f1) == "$my_uid" ]] || fail "--no-sandbox changed identity"
serve "$sock"
stop "$pid"
((rc == 0)) || fail "vunet --no-sandbox exited $rc"
gone "$sock" "$dir/n.pid" || fail "--no-sandbox left its socket or pid file behind"
echo "ok: --no-sandbox runs unconfined as uid $my_uid and cleans up"
echo "PASS"
