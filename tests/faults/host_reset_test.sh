#!/usr/bin/env bash
# shellcheck disable=SC2119  # fault_lib.sh functions take optional arguments.
# Fault: host peers reset connections (close with SO_LINGER 0) in the middle of transfers.
#
# While a paced transfer runs alongside (both ways, every byte checked), 24 guest connections to the
# host server are reset by it: 12 while the host sends (after 64 KiB to 8 MiB; data may still wait in
# vunet's socket, which the reset discards), 12 while the guest sends (after 64 KiB to 8 MiB). Each
# guest connection must end in a reset (ECONNRESET or EPIPE in the guest), never an orderly close,
# with every byte it received before it as sent; the transfer alongside must complete byte-exact;
# vunet must count the resets as host-side ones. Then: vunet serves new flows, holds no more fds
# than before besides flow sockets, its heap and mappings did not grow, SIGTERM ends it with status 0.
#
# Usage: host_reset_test.sh VUNET TAP_BRIDGE
set -euo pipefail
# shellcheck source=tests/faults/fault_lib.sh
source "$(dirname "$(realpath "$0")")/fault_lib.sh"
fl_init faults_host_reset "$1" "$2"
port=5001

fl_start_vunet
fl_start_server "$port"
fl_start_bridge
fl_serving "$port"
before=$(fl_wait_flows tcp 0)

fl_guest_bg alongside.log timeout 50 "${FL_TRAFFIC[@]}" bulk --host "$FL_GATEWAY" --port "$port" \
  --up 24000000 --down 24000000 --rate 3000000 --seed 10
alongside_pid=$FL_LAST_PID
sleep 0.5

pids=()
sizes=(65536 200000 1048576 4194304 8388608 3000000)
for i in $(seq 0 11); do
  after=${sizes[i % ${#sizes[@]}]}
  fl_guest_bg "down$i.log" timeout 30 "${FL_TRAFFIC[@]}" reset --host "$FL_GATEWAY" --port "$port" \
    --down 1 --after "$after" --seed $((100 + i))
  pids+=("$FL_LAST_PID")
  fl_guest_bg "up$i.log" timeout 30 "${FL_TRAFFIC[@]}" reset --host "$FL_GATEWAY" --port "$port" \
    --up 1 --after "$after" --seed $((200 + i))
  pids+=("$FL_LAST_PID")
  sleep 0.2
done
for pid in "${pids[@]}"; do
  fl_wait_pid "$pid" 30
  ((FL_RC == 0)) || fl_fail "a reset connection did not end as it should ($FL_RC): $(cat "$FL_DIR"/{down,up}*.log)"
done
echo "24 connections reset by the host peer:"
cat "$FL_DIR"/down0.log "$FL_DIR"/up0.log "$FL_DIR"/down4.log "$FL_DIR"/up4.log

fl_wait_pid "$alongside_pid" 45
((FL_RC == 0)) || fl_fail "the transfer alongside failed ($FL_RC): $(cat "$FL_DIR/alongside.log")"
echo "alongside: $(cat "$FL_DIR/alongside.log")"

fl_serving "$port"
after=$(fl_wait_flows tcp 0)
fl_check_leaks "$before" "$after"
(($(fl_field "$after" tcp) == 0)) || fl_fail "TCP flow sockets left: $after"
fl_stop_vunet
host_resets=$(fl_counter "from the host")
((host_resets >= 24)) || fl_fail "vunet counted $host_resets host-side resets, not 24"
grep -E "tcp: " "$FL_DIR/vunet.log" | tail -1
echo "PASS"
