#!/usr/bin/env bash
# shellcheck disable=SC2119  # fault_lib.sh functions take optional arguments.
# Fault: frontends that hold a valid session, then send garbage or otherwise misbehave.
#
# A guest (tap_bridge) opens four connections, holds them and goes away. Then, one after the other,
# frontends negotiate, get an ARP reply through the rings, and misbehave (garbage_frontend --mode):
# random bytes, a bad version, an oversized or truncated message: vunet must drop each connection,
# say why in its log, and accept the next; an unknown request wanting a reply gets a failure reply
# (logged) and the connection stays; 250 fds on one message, a memory table of 200 regions without
# fds, a transmit ring whose avail index runs 1000 ahead: vunet may refuse the request, drop the
# connection or break the queue, but must serve the next frontend. Finally the guest comes back: the
# held connections work (64 KiB echoed on each, byte-exact), new flows work, the fds other than flow
# sockets are as many as before (none of the 250 kept), heap and mappings did not grow, and SIGTERM
# ends vunet with status 0.
#
# Usage: garbage_frontend_test.sh VUNET TAP_BRIDGE GARBAGE_FRONTEND
set -euo pipefail
# shellcheck source=tests/faults/fault_lib.sh
source "$(dirname "$(realpath "$0")")/fault_lib.sh"
fl_init faults_garbage "$1" "$2"
garbage=$(realpath "$3")
port=5001

fl_start_vunet
fl_start_server "$port"
fl_start_bridge
fl_serving "$port"
fl_guest_bg hold.log timeout 55 "${FL_TRAFFIC[@]}" hold --host "$FL_GATEWAY" --port "$port" --count 4 \
  --until "$FL_DIR/release" --timeout 50
hold_pid=$FL_LAST_PID
fl_wait_log "$FL_DIR/hold.log" "^hold: ok 4$" 10 || fl_fail "the held connections did not open: $(cat "$FL_DIR/hold.log")"
kill "$FL_BRIDGE_PID"
fl_wait_pid "$FL_BRIDGE_PID" 5
FL_BRIDGE_PID=
fl_wait_log "$FL_DIR/vunet.log" "queue 1 \(tx\) stopped" 5 || fl_fail "vunet did not stop the queues"
# Without a frontend: the held connections and the warm-up's UDP flow.
before=$(fl_probe)
echo "no frontend: $before"

# mode EXPECT LOG_PATTERN
check() {
  local mode=$1 expect=$2 pattern=$3 out rc=0 lines
  lines=$(wc -l <"$FL_DIR/vunet.log")
  out=$("$garbage" --socket "$FL_DIR/vunet.sock" --mode "$mode" --expect "$expect" --wait 3s 2>&1) ||
    rc=$?
  ((rc == 0)) || fl_fail "garbage_frontend --mode $mode (expected $expect): $rc: $out"
  if [[ -n $pattern ]]; then
    fl_wait_log <(tail -n +"$((lines + 1))" "$FL_DIR/vunet.log") "$pattern" 1 ||
      tail -n +"$((lines + 1))" "$FL_DIR/vunet.log" | grep -Eq "$pattern" ||
      fl_fail "vunet did not log '$pattern' for --mode $mode"
  fi
  echo "$out; vunet: $(tail -n +"$((lines + 1))" "$FL_DIR/vunet.log" | grep -E "warning|error" |
    head -1 | cut -c14-)"
}
check random dropped "vhost-user"
check bad_version dropped "vhost-user"
check oversized dropped "vhost-user"
check truncated dropped "vhost-user"
check unknown kept "UNKNOWN\(999\) failed"
check fd_flood any ""
check bad_table any ""
check ring any "queue 1 \(tx\) broken"
# Each left vunet as it was.
sleep 0.5
after_garbage=$(fl_probe)
echo "after the garbage: $after_garbage"
(($(fl_field "$after_garbage" other_fds) == $(fl_field "$before" other_fds))) ||
  fl_fail "vunet's fds changed: $before -> $after_garbage"

fl_start_bridge
fl_serving "$port"
touch "$FL_DIR/release"
fl_wait_pid "$hold_pid" 10
((FL_RC == 0)) || fl_fail "held connections broke: $(cat "$FL_DIR/hold.log")"
echo "held: $(tail -n 1 "$FL_DIR/hold.log")"
kill "$FL_BRIDGE_PID"
fl_wait_pid "$FL_BRIDGE_PID" 5
FL_BRIDGE_PID=
fl_wait_log "$FL_DIR/vunet.log" "queue 1 \(tx\) stopped" 5
after=$(fl_wait_flows tcp 0)
fl_check_leaks "$before" "$after"
fl_stop_vunet
echo "PASS"
