#!/usr/bin/env bash
# shellcheck disable=SC2119  # fault_lib.sh functions take optional arguments.
# Fault: the flow table fills up.
#
# vunet runs with --max-flows 32 (TCP and UDP flows share the table). While a paced transfer runs
# alongside (both ways, every byte checked), the guest opens 50 connections and holds them: once the
# table is full, new connections must be refused with an RST at once (ECONNREFUSED in the guest) and
# counted ("table full"), and a new UDP flow's datagrams dropped and counted ("no flow room"); the
# connections that got in must keep working. Once the guest closes them, new TCP and UDP flows work
# again; the transfer alongside completed byte-exact; the fds other than flow sockets are as many as
# before, heap and mappings did not grow, and SIGTERM ends vunet with status 0.
#
# Usage: flow_table_full_test.sh VUNET TAP_BRIDGE
set -euo pipefail
# shellcheck source=tests/faults/fault_lib.sh
source "$(dirname "$(realpath "$0")")/fault_lib.sh"
fl_init faults_flows "$1" "$2"
port=5001
max_flows=32
count=50

fl_start_vunet --max-flows "$max_flows"
fl_start_server "$port"
fl_start_bridge
fl_serving "$port"  # Leaves one UDP flow in the table (idle timeout: 180 s).
before=$(fl_wait_flows tcp 0)

fl_guest_bg alongside.log timeout 50 "${FL_TRAFFIC[@]}" bulk --host "$FL_GATEWAY" --port "$port" \
  --up 24000000 --down 24000000 --rate 3000000 --seed 10
alongside_pid=$FL_LAST_PID
sleep 0.5

rm -f "$FL_DIR/release"
fl_guest_bg hold.log timeout 50 "${FL_TRAFFIC[@]}" hold --host "$FL_GATEWAY" --port "$port" \
  --count "$count" --until "$FL_DIR/release" --connect-timeout 5
hold_pid=$FL_LAST_PID
fl_wait_log "$FL_DIR/hold.log" "^hold: .*ok" 40 || fl_fail "the guest's connections did not finish"
held=$(head -1 "$FL_DIR/hold.log")
echo "$held (of $count, $max_flows flows at most, 2 taken)"
ok=$(sed -n 's/.* ok \([0-9]*\).*/\1/p' <<<"$held")
refused=$(sed -n 's/.* refused \([0-9]*\).*/\1/p' <<<"$held")
((${ok:-0} == max_flows - 2)) || fl_fail "$((max_flows - 2)) connections should have fit: $held"
((${refused:-0} == count - max_flows + 2)) || fl_fail "the rest should have been refused: $held"
full=$(fl_probe)
echo "table full: $full"

out=$(fl_guest timeout 20 "${FL_TRAFFIC[@]}" udp --host "$FL_GATEWAY" --port "$port" --count 1 2>&1) &&
  fl_fail "a new UDP flow worked while the table was full: $out"
echo "udp while the table is full: $out"

touch "$FL_DIR/release"
fl_wait_pid "$hold_pid" 20
((FL_RC == 0)) || fl_fail "held connections broke: $(cat "$FL_DIR/hold.log")"
tail -1 "$FL_DIR/hold.log"
fl_wait_flows tcp 1 >/dev/null

fl_serving "$port"
fl_wait_pid "$alongside_pid" 45
((FL_RC == 0)) || fl_fail "the transfer alongside failed ($FL_RC): $(cat "$FL_DIR/alongside.log")"
echo "alongside: $(cat "$FL_DIR/alongside.log")"

after=$(fl_wait_flows tcp 0)
fl_check_leaks "$before" "$after"
(($(fl_field "$after" tcp) == 0)) || fl_fail "TCP flow sockets left: $after"
fl_stop_vunet
table_full=$(fl_counter "table full")
((table_full >= count - max_flows + 2)) || fl_fail "vunet counted $table_full refusals, not $((count - max_flows + 2))"
no_room=$(fl_counter "no flow room")
((no_room >= 1)) || fl_fail "vunet counted no UDP datagram dropped for a full table"
grep -q "table full" "$FL_DIR/vunet.log" || fl_fail "vunet did not log the full table"
grep -E "table full \(" "$FL_DIR/vunet.log" | head -2
grep -E "tcp: |udp: " "$FL_DIR/vunet.log" | tail -2
echo "PASS"
