#!/usr/bin/env bash
# shellcheck disable=SC2119  # fault_lib.sh functions take optional arguments.
# Fault: the guest resets its virtio-net device in the middle of bulk TCP transfers.
#
# tap_bridge --reset_on_usr1 plays a driver that resets the device on SIGUSR1: both rings disabled and
# stopped (GET_VRING_BASE), a pause, then laid out afresh with new receive buffers and started. What
# was in flight on the rings is lost. vunet keeps its flows across the reset (as passt does): data to
# the guest stays in the host socket until the guest acknowledges it, so after the restart the
# retransmission timer resends from the first unacknowledged byte, and the guest's own stack
# retransmits what it sent. So the transfers must go on and complete byte-exact, not be reset.
# Then: vunet serves new flows, holds no more fds than before besides flow sockets, its heap and
# mappings did not grow, and SIGTERM ends it with status 0.
#
# Usage: device_reset_test.sh VUNET TAP_BRIDGE
set -euo pipefail
# shellcheck source=tests/faults/fault_lib.sh
source "$(dirname "$(realpath "$0")")/fault_lib.sh"
fl_init faults_reset "$1" "$2"
port=5001
resets=6

fl_start_vunet
fl_start_server "$port"
fl_start_bridge --reset_on_usr1 --reset_pause=300ms
fl_serving "$port"
before=$(fl_wait_flows tcp 0)

fl_guest_bg paced.log timeout 50 "${FL_TRAFFIC[@]}" bulk --host "$FL_GATEWAY" --port "$port" \
  --up 30000000 --down 30000000 --rate 3000000 --seed 10
paced_pid=$FL_LAST_PID
fl_guest_bg fast.log timeout 50 "${FL_TRAFFIC[@]}" bulk --host "$FL_GATEWAY" --port "$port" \
  --up 150000000 --down 150000000 --rate 15000000 --seed 20
fast_pid=$FL_LAST_PID
sleep 1.5
for i in $(seq "$resets"); do
  kill -USR1 "$FL_BRIDGE_PID"
  fl_wait_log "$FL_DIR/bridge.log" "device reset $i:" 5 || fl_fail "tap_bridge did not reset the device ($i)"
  sleep 1
done
echo "$resets device resets during the transfers"
stops=$(grep -c "queue 0 (rx) stopped" "$FL_DIR/vunet.log" || true)
((stops >= resets)) || fl_fail "vunet saw $stops rx queue stops, not $resets"

fl_wait_pid "$paced_pid" 45
((FL_RC == 0)) || fl_fail "the paced transfer failed ($FL_RC): $(cat "$FL_DIR/paced.log")"
echo "paced: $(cat "$FL_DIR/paced.log")"
fl_wait_pid "$fast_pid" 45
((FL_RC == 0)) || fl_fail "the fast transfer failed ($FL_RC): $(cat "$FL_DIR/fast.log")"
echo "fast: $(cat "$FL_DIR/fast.log")"
kill -0 "$FL_BRIDGE_PID" || fl_fail "tap_bridge died: $(tail -n 3 "$FL_DIR/bridge.log")"

fl_serving "$port"
after=$(fl_wait_flows tcp 0)
fl_check_leaks "$before" "$after"
(($(fl_field "$after" tcp) == 0)) || fl_fail "TCP flow sockets left: $after"
fl_stop_vunet
host_resets=$(fl_counter "from the host")
guest_resets=$(fl_counter "from the guest")
((host_resets == 0 && guest_resets == 0)) ||
  fl_fail "connections were reset ($host_resets from the host, $guest_resets from the guest)"
grep -E "tcp: " "$FL_DIR/vunet.log" | tail -1
echo "PASS"
