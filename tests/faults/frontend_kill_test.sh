#!/usr/bin/env bash
# shellcheck disable=SC2119  # fault_lib.sh functions take optional arguments.
# Fault: the frontend dies (SIGKILL) in the middle of transfers, and a new one connects.
#
# A Linux stack in a network namespace is the guest (tap_bridge). While four idle connections are held
# open and two TCP transfers run (one at 3 MB/s, one at up to 15 MB/s, both ways, every byte checked),
# tap_bridge is killed with SIGKILL; another frontend (garbage_frontend --mode send) then connects,
# sends and receives frames and is killed too; then a new tap_bridge connects. The guest's sockets
# outlived the frontends (only its device went away), and vunet keeps flows across frontends: the
# held connections must work afterwards, 64 KiB echoed on each byte-exact, and the transfers resume
# over the new device and must complete byte-exact, neither of them standing still for more than
# STALL_LIMIT seconds (default 2) after the new frontend came: each transfer logs its progress (bytes
# acknowledged and received) and the first movement after the return is measured. What makes that
# hold: the frames lost with the old ring are sent again at once when the receive queue starts (and
# every flow's guest gets an ACK, in case its own went with the ring), and the guest's loss recovery
# after the outage meets SACK and an out-of-order queue, so it resends only what was lost. Then: vunet
# serves a new TCP connection and UDP flow; it holds no more fds than before besides flow sockets; its
# heap and mappings did not grow; SIGTERM ends it with status 0. Run it 30 times with
#   bazel test //tests/faults:frontend_kill_test --runs_per_test=30
#
# Usage: frontend_kill_test.sh VUNET TAP_BRIDGE GARBAGE_FRONTEND
set -euo pipefail
# shellcheck source=tests/faults/fault_lib.sh
source "$(dirname "$(realpath "$0")")/fault_lib.sh"
fl_init faults_kill "$1" "$2"
sender=$(realpath "$3")
port=5001

fl_start_vunet
fl_start_server "$port"
fl_start_bridge
fl_serving "$port"  # Warm-up: every pool and path has been used once.
before=$(fl_wait_flows tcp 0)
# The warm-up's UDP flow stays (180 s idle timeout); flow sockets are not compared.

rm -f "$FL_DIR/release"
fl_guest_bg hold.log timeout 55 "${FL_TRAFFIC[@]}" hold --host "$FL_GATEWAY" --port "$port" --count 4 \
  --until "$FL_DIR/release"
hold_pid=$FL_LAST_PID
fl_wait_log "$FL_DIR/hold.log" "^hold: ok 4$" 10 || fl_fail "the held connections did not open: $(cat "$FL_DIR/hold.log")"
stall_limit=${STALL_LIMIT:-2}
fl_guest_bg paced.log timeout 40 "${FL_TRAFFIC[@]}" bulk --host "$FL_GATEWAY" --port "$port" \
  --up 24000000 --down 24000000 --rate 3000000 --seed 10 --progress "$FL_DIR/paced.progress"
paced_pid=$FL_LAST_PID
fl_guest_bg fast.log timeout 40 "${FL_TRAFFIC[@]}" bulk --host "$FL_GATEWAY" --port "$port" \
  --up 150000000 --down 150000000 --rate 15000000 --seed 20 --progress "$FL_DIR/fast.progress"
fast_pid=$FL_LAST_PID
sleep 2
mid=$(fl_probe)
echo "mid-transfer: $mid"
(($(fl_field "$mid" tcp) >= 6)) || fl_fail "the transfers are not running: $mid"

kill -9 "$FL_BRIDGE_PID"
wait "$FL_BRIDGE_PID" 2>/dev/null || true
FL_BRIDGE_PID=
echo "tap_bridge killed (SIGKILL)"
# vunet notices the connection close: the queues stop.
fl_wait_log "$FL_DIR/vunet.log" "queue 1 \(tx\) stopped" 5 || fl_fail "vunet did not stop the queues"

# A second frontend, killed while it sends.
"$sender" --socket "$FL_DIR/vunet.sock" --mode send >"$FL_DIR/sender.log" 2>&1 &
sender_pid=$!
FL_PIDS+=("$sender_pid")
fl_wait_log "$FL_DIR/sender.log" "sending" 5 || fl_fail "the second frontend did not start: $(cat "$FL_DIR/sender.log")"
sleep 1
kill -0 "$sender_pid" 2>/dev/null || fl_fail "the second frontend ended early: $(cat "$FL_DIR/sender.log")"
kill -9 "$sender_pid"
wait "$sender_pid" 2>/dev/null || true
echo "a second frontend (busy on both rings) killed (SIGKILL)"
sleep 0.5

fl_start_bridge
returned=$(python3 -c 'import time; print(f"{time.monotonic():.3f}")')
echo "a new tap_bridge is running"
fl_serving "$port"

touch "$FL_DIR/release"
fl_wait_pid "$hold_pid" 10
((FL_RC == 0)) || fl_fail "held connections broke: $(cat "$FL_DIR/hold.log")"
echo "held: $(tail -n 1 "$FL_DIR/hold.log")"

# check_transfer NAME PID: completed byte-exact, and moved again within the limit after the return.
check_transfer() {
  fl_wait_pid "$2" 40
  ((FL_RC == 0)) || fl_fail "the $1 transfer failed ($FL_RC): $(cat "$FL_DIR/$1.log")"
  echo "$1: $(cat "$FL_DIR/$1.log")"
  local stall
  stall=$(awk -v t="$returned" '$1 > t { printf "%.2f", $1 - t; found = 1; exit }
    END { if (!found) print "0.00" }' "$FL_DIR/$1.progress")
  echo "$1: moved again $stall s after the new frontend came"
  awk -v s="$stall" -v l="$stall_limit" 'BEGIN { exit !(s <= l) }' ||
    fl_fail "the $1 transfer stood still for $stall s after the frontend returned (limit $stall_limit s)"
}
check_transfer paced "$paced_pid"
check_transfer fast "$fast_pid"
stalled=0
after=$(fl_wait_flows tcp "$stalled")
fl_check_leaks "$before" "$after"
(($(fl_field "$after" tcp) <= stalled)) || fl_fail "TCP flow sockets left: $after"
fl_stop_vunet
grep -E "^.*tcp: " "$FL_DIR/vunet.log" | tail -1
echo "PASS"
