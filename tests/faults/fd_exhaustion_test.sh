#!/usr/bin/env bash
# shellcheck disable=SC2119  # fault_lib.sh functions take optional arguments.
# Fault: the host runs out of file descriptors.
#
# vunet runs with RLIMIT_NOFILE 64 (prlimit) and a TCP forward (-t 6000:7000, to a server in the
# guest). While a paced transfer runs alongside (both ways, every byte checked), the guest opens 80
# connections and holds them: those vunet has no fd for must be refused with an RST (ECONNREFUSED in
# the guest, at once, not a timeout), the others must work. While the fds are gone, a new UDP flow gets
# nothing through (its datagrams are dropped, counted) and an inbound connection to the forward is
# reset (vunet gives up the fd it keeps for this to accept and refuse it). Once the guest closes its
# connections, vunet recovers: new TCP, UDP and inbound connections work; the held connections all
# still worked before they closed; the transfer alongside completed byte-exact; the fds other than
# flow sockets are as many as before, heap and mappings did not grow, SIGTERM ends vunet with status 0.
#
# Usage: fd_exhaustion_test.sh VUNET TAP_BRIDGE
set -euo pipefail
# shellcheck source=tests/faults/fault_lib.sh
source "$(dirname "$(realpath "$0")")/fault_lib.sh"
fl_init faults_fds "$1" "$2"
port=5001
limit=64
count=80

# shellcheck disable=SC2034  # fault_lib.sh's.
FL_VUNET_PREFIX=(prlimit --nofile="$limit:$limit")
fl_start_vunet -t 6000:7000
fl_start_server "$port"
fl_start_bridge
fl_guest_bg guest_server.log "${FL_TRAFFIC[@]}" server --bind 0.0.0.0 --port 7000
fl_wait_log "$FL_DIR/guest_server.log" listening 10 || fl_fail "the guest's server did not start"

# inbound EXPECT: a connection from the host to the forward, 256 KiB each way; EXPECT ok or reset.
inbound() {
  local out rc=0
  out=$(fl_host timeout 20 "${FL_TRAFFIC[@]}" bulk --host 127.0.0.1 --port 6000 --up 262144 \
    --down 262144 --seed 5 2>&1) || rc=$?
  if [[ $1 == ok ]]; then
    ((rc == 0)) || fl_fail "an inbound connection failed: $out"
  else
    if ((rc == 0)) || ! grep -Eqi "reset|ended after" <<<"$out"; then
      fl_fail "an inbound connection was not reset while out of fds ($rc): $out"
    fi
  fi
  echo "inbound ($1): $out"
}

fl_serving "$port"
inbound ok
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
echo "$held (of $count)"
ok=$(sed -n 's/.* ok \([0-9]*\).*/\1/p' <<<"$held")
refused=$(sed -n 's/.* refused \([0-9]*\).*/\1/p' <<<"$held")
((${ok:-0} >= 10)) || fl_fail "too few connections worked: $held"
((${refused:-0} >= 10)) || fl_fail "connections beyond the fds were not refused with an RST: $held"
((${ok:-0} + ${refused:-0} == count)) || fl_fail "some connections neither worked nor were refused: $held"
exhausted=$(fl_probe)
echo "out of fds: $exhausted"
(($(fl_field "$exhausted" fds) >= limit - 2)) || fl_fail "vunet is not out of fds: $exhausted"

out=$(fl_guest timeout 20 "${FL_TRAFFIC[@]}" udp --host "$FL_GATEWAY" --port "$port" --count 1 2>&1) &&
  fl_fail "a new UDP flow worked while vunet had no fd for it: $out"
echo "udp while out of fds: $out"
inbound reset

touch "$FL_DIR/release"
fl_wait_pid "$hold_pid" 20
((FL_RC == 0)) || fl_fail "held connections broke: $(cat "$FL_DIR/hold.log")"
tail -1 "$FL_DIR/hold.log"
fl_wait_flows tcp 1 >/dev/null

fl_serving "$port"
inbound ok
fl_wait_pid "$alongside_pid" 45
((FL_RC == 0)) || fl_fail "the transfer alongside failed ($FL_RC): $(cat "$FL_DIR/alongside.log")"
echo "alongside: $(cat "$FL_DIR/alongside.log")"

after=$(fl_wait_flows tcp 0)
fl_check_leaks "$before" "$after"
(($(fl_field "$after" tcp) == 0)) || fl_fail "TCP flow sockets left: $after"
fl_stop_vunet
grep -q "out of file descriptors" "$FL_DIR/vunet.log" || fl_fail "vunet did not log the inbound refusal"
grep -E "tcp: socket: |udp: .*(socket|Too many)" "$FL_DIR/vunet.log" | head -3
grep -E "tcp: |udp: " "$FL_DIR/vunet.log" | tail -2
echo "PASS"
