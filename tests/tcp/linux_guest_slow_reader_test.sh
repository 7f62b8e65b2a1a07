#!/usr/bin/env bash
# The Linux TCP stack as the guest (a network namespace behind tools/vu_frontend:tap_bridge, as the
# fault tests run it: tests/faults/fault_lib.sh) sends 40 MiB as fast as it can to a host reader that
# drains 1 MiB/s for 6 s, then as fast as it can. The guest must settle at the drain rate while the
# reader is slow and speed up when it is fast, never falling into retransmission timeouts: vunet
# acknowledges only what the host socket took and offers the guest the socket's free space as its
# window, so the guest's stack waits on the window instead of losing segments.
# Checks: every byte arrives in order (the reader checks the pattern); the guest's TCPTimeouts
# (/proc/net/netstat in its namespace) did not move; the guest's send rate over the last 3 s of the
# slow phase is within a factor of two of the drain rate; the fast phase moves the rest at more
# than 5 MiB/s (some 80 MiB/s on an idle machine; the bound only shows that the guest sped up when
# the reader did, on a loaded one). Prints the rates and the guest's retransmission counters.
#
# Usage: linux_guest_slow_reader_test.sh VUNET TAP_BRIDGE FAULT_LIB_SH SLOW_READER_PY. Needs root;
# skips (exit 0, SKIPPED line) without it.
set -euo pipefail

# shellcheck source=tests/faults/fault_lib.sh
source "$3"
reader=(python3 "$(realpath "$4")")
fl_init tcp_slow "$1" "$2"

# TcpExt or Tcp counter NAME in the guest's namespace.
guest_counter() {
  fl_guest awk -v name="$1" '
    $1 ~ /:$/ && !seen[$1]++ { for (i = 2; i <= NF; i++) key[$1, i] = $i; next }
    { for (i = 2; i <= NF; i++) if (key[$1, i] == name) print $i }' /proc/net/netstat /proc/net/snmp |
    head -n 1
}

fl_start_vunet
fl_start_bridge
port=5001
bytes=$((40 << 20))
slow_rate=$((1 << 20))
# A small receive buffer on the host (autotuning off): the slow phase fills it in well under a second,
# so the guest's window, not the host's buffering, sets the pace.
fl_host_bg reader.log "${reader[@]}" serve --port "$port" --slow-seconds 6 --slow-rate "$slow_rate" \
  --rcvbuf 262144
fl_wait_log "$FL_DIR/reader.log" listening 10 || fl_fail "the reader did not start"

timeouts_before=$(guest_counter TCPTimeouts)
retrans_before=$(guest_counter RetransSegs)
fl_guest timeout 120 "${reader[@]}" send --host "$FL_GATEWAY" --port "$port" --bytes "$bytes" \
  --sndbuf 262144 >"$FL_DIR/sender.log" 2>&1 || fl_fail "the guest's transfer failed"
fl_wait_log "$FL_DIR/reader.log" ' ok$' 20 || fl_fail "the reader did not finish"
timeouts=$(($(guest_counter TCPTimeouts) - timeouts_before))
retrans=$(($(guest_counter RetransSegs) - retrans_before))

grep -q "total=$bytes ok" "$FL_DIR/reader.log" || fl_fail "the reader got: $(cat "$FL_DIR/reader.log")"
# The guest's rate over seconds 3 to 6, when every buffer on the way is full.
rate=$(awk '$1 == "progress" && $2 >= 3 && !a { a = $2; sa = $3 }
  $1 == "progress" && $2 <= 6 { b = $2; sb = $3 }
  END { if (b > a) printf "%.0f", (sb - sa) / (b - a); else print 0 }' "$FL_DIR/sender.log")
fast=$(sed -n 's/.* fast=[0-9]* in [0-9.]* s (\([0-9]*\) B\/s).*/\1/p' "$FL_DIR/reader.log")
echo "reader: $(cat "$FL_DIR/reader.log" | tail -n 1)"
echo "guest: $(tail -n 1 "$FL_DIR/sender.log"); rate while the reader was slow $rate B/s" \
  "(drain $slow_rate B/s); TCPTimeouts +$timeouts, RetransSegs +$retrans"
fl_stop_vunet
grep -E 'tcp: ' "$FL_DIR/vunet.log" | tail -n 1

((timeouts == 0)) || fl_fail "the guest's stack had $timeouts retransmission timeouts"
((rate >= slow_rate / 2 && rate <= slow_rate * 2)) ||
  fl_fail "the guest sent at $rate B/s while the host drained $slow_rate B/s"
((fast > 5 << 20)) || fl_fail "the fast phase ran at $fast B/s only"
echo "PASS"
