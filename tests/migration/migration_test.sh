#!/usr/bin/env bash
# Live migration of a real guest (tests/guest: a Debian kernel and a busybox initramfs under QEMU,
# TCG) from a QEMU on one vunet to a QEMU on another, both vunets serving one network namespace as
# two backends on one host would (migration_lib.sh). One Bazel target per case. The guest first gets
# its lease (10.0.2.15 via 10.0.2.2); "the host" is the namespace, where mig_traffic's server listens
# on the loopback (the gateway's address reaches it).
#
# Cases that pass with a vunet that carries no state (the dirty log is all they need):
#   basic      lease and ping on A; migrated to B: the same address, ping, a new TCP connection
#              (1 MiB each way, checked) and UDP flow, a DHCP renewal (udhcpc's SIGUSR1: a unicast
#              request to the server), and the device never re-initialised: eth0's ifindex and
#              carrier_changes unchanged, no virtio error in the guest's kernel log, no queue broken
#              in vunet's, and QEMU B never stopped the rings (GET_VRING_BASE) or reset the device.
#   dirty_log  the guest receives a TCP stream and a UDP stream from the host, and sends one, while
#              the migration copies its memory: the bytes and datagrams the guest took in, some of
#              them written by the backend into guest memory just before the switch-over and read
#              by the guest only on the destination, are checked against their pattern after the
#              switch-over (the TCP stream also from the tmpfs file the guest wrote it to). A page
#              the backend wrote without logging it would be stale on the destination. Then again
#              from B to a fresh A' and on (HOPS, default 4), each hop with a new QEMU and vunet.
#              The guest boots with init_on_alloc=0: Debian's kernel otherwise zeroes each receive
#              buffer's page when it allocates it, a write of the guest's CPU that QEMU tracks
#              itself, and the final copy carries the page whatever the backend logged. Even so a
#              page is caught stale only if the backend filled it after its last copy and the
#              guest reads it on the destination: with the backend's buffer logging switched off,
#              3 runs in 4 failed (at hop 2 or 3). Used-ring writes are not caught at all: the
#              guest's used ring shares a page with its avail ring, which the guest writes.
#   no_helper  no repair helper: the migration completes; the guest's held connections end with a
#              reset within 3 s of use (no hang), a stream too; a new connection works. (Without
#              state the destination knows none of the flows and resets them: it passes today.)
# Cases that need the backend's state (SET_DEVICE_STATE_FD) and TCP_REPAIR (MIG_REPAIR, or the
# ninth argument: the repair helper); tagged manual until vunet carries its state:
#   tcp          two TCP streams, each both ways: one paced (1 MB/s each way: the stall), one with the
#                host and the guest reading slowly so data queues both ways at the switch-over;
#                both go on after the migration and end in order with every byte checked; an idle
#                connection opened before echoes after; a UDP flow (an echo every 20 ms) and ping
#                go on. Prints MIGRATION stall_ms=... (the longest gap between arrivals at the
#                host of the paced stream's upload, the downtime included) guest_stall_ms=... (the
#                same at the guest for its download, by the guest's clock, which stops with the VM)
#                downtime_ms=... state_bytes=...; fails when the guest's stall beyond the stream's
#                own pace exceeds MIG_STALL_LIMIT_MS (default 1000: a guard against restores that
#                hang, not issue 17's goal of 100 ms, which a same-host migration misses: the host
#                peer's segments are dropped from the dump until the source lets the addresses go
#                (when its QEMU exits), and it resends on its own backed-off timer).
#   slow_reader  the guest sends 16 MiB (SLOW_MIB) to a host reader of 512 KiB/s (SLOW_RATE):
#                megabytes wait in the sockets at the switch-over (measured with ss, at least 1 MiB
#                or the case fails); every byte arrives, nothing is reset. (Without state the
#                upload the source's socket held is lost although the source acknowledged it to
#                the guest: the host gets about half.)
#   many         1000 idle TCP connections (MIG_MANY to change it) migrate; each echoes after; the
#                state's size and load time (vunet B's MIG_STATE_PATTERN line) are reported.
#   bad_state    the destination gets the state truncated (state_tamper --mode truncate), then, with
#                another destination, a bit flipped (--mode flip): CHECK_DEVICE_STATE fails, each
#                migration fails, and the source goes on serving: a paced stream, held connections
#                and a UDP flow live through both attempts; then a migration with the state intact
#                completes and they live through that too. Needs no repair helper; with
#                MIG_FAKE_STATE=N (the proxies play a backend with state) the failures and the
#                source's recovery can be tried before vunet has state.
#
# Prints the guest's results, the migrations' figures (qmp.py's MIGRATE lines) and PASS.
#
# Usage: migration_test.sh CASE VUNET MIG_TRAFFIC STATE_TAMPER FETCH_GUEST GUEST_LIB E2E_LIB
#        MIGRATION_LIB [REPAIR_HELPER]
# Skips (exit 0, SKIPPED) only when QEMU, busybox or python3 is missing.
set -euo pipefail

case_name=$1
fetch=$(realpath "$5")
# shellcheck source=tests/guest/guest_lib.sh
source "$6"
# shellcheck source=tests/vunet/e2e_lib.sh
source "$7"
# shellcheck source=tests/migration/migration_lib.sh
source "$8"
if [[ -n ${9:-} ]]; then
  MIG_REPAIR=$(realpath "$9")
fi

mig_init "migration_$case_name" "$2" "$3" "$4"
guest_fetch "$fetch" || mig_fail "fetch_guest.sh left no guest in $GUEST_CACHE"
script=$MIG_DIR/test.sh
t0=$(guest_now)

# A case that needs the repair helper fails at once without one.
need_repair() {
  [[ -n ${MIG_REPAIR:-} ]] ||
    mig_fail "the $case_name case needs the TCP_REPAIR helper: MIG_REPAIR=PATH or a ninth argument"
}

# The guest's lines from its result files, each prefixed "GUEST: ".
results_lines() {
  cat <<'EOF'
for f in /tmp/*.out; do sed 's/^/GUEST: /' "$f"; done
dmesg | grep -iE 'virtio|eth0|net_failover' | sed 's/^/GUEST: dmesg /'
EOF
}

# expect_result PREFIX [MESSAGE]: the guest's first line starting with "GUEST: PREFIX" says result=ok;
# prints it and keeps it in RESULT.
RESULT=
expect_result() {
  RESULT=$(mig_guest_line "^GUEST: $1")
  RESULT=${RESULT#GUEST: }
  [[ -n $RESULT ]] || mig_fail "the guest printed no '$1' line"
  echo "$RESULT"
  [[ $RESULT == *" result=ok"* ]] || mig_fail "${2:-$1 failed}: $RESULT"
}

# expect_udp_flow: the guest's UDP echo flow ("udp") got at least 80% of its echoes back.
expect_udp_flow() {
  expect_result "UDPECHO name=udp "
  (($(mig_field "$RESULT" received) * 10 >= $(mig_field "$RESULT" sent) * 8)) ||
    mig_fail "the UDP flow lost more than 20%: $RESULT"
}

# server_line SEED: the server's line for the stream of SEED.
server_line() { grep -m 1 " stream seed=$1 " "$MIG_DIR/server.log" || true; }

# expect_server SEED NAME [GUEST_LINE]: the server saw stream SEED end in order with every byte
# right (its line comes when the connection ends: up to 30 s are given for that); with the guest's
# STREAM line, as many bytes each way as the guest counted (an endless stream's length is known
# only to its sender).
expect_server() {
  local line
  _mig_wait_for "grep -q ' stream seed=$1 ' '$MIG_DIR/server.log'" 30 || true
  line=$(server_line "$1")
  [[ -n $line ]] || mig_fail "the server has no line for the $2 stream (seed $1)"
  echo "server: ${line#conn * }"
  [[ $line == *" result=ok"* && $line == *" rx_end=eof "* ]] ||
    mig_fail "the $2 stream, as the host saw it: $line"
  [[ -z ${3:-} ]] && return 0
  [[ $(mig_field "$line" rx) == "$(mig_field "$3" up)" ]] ||
    mig_fail "the guest sent $(mig_field "$3" up) bytes on the $2 stream, the host got $(mig_field "$line" rx)"
  [[ $(mig_field "$line" tx) == "$(mig_field "$3" down)" ]] ||
    mig_fail "the host sent $(mig_field "$line" tx) bytes on the $2 stream, the guest got $(mig_field "$3" down)"
}

# No virtio error in the guest's kernel log, no queue broken in any vunet's log.
expect_healthy() {
  if grep -Ei '^GUEST: dmesg .*(error|timed out|not a head|broken|reset|unexpected)' \
    "$(mig_console)"; then
    mig_fail "the guest's virtio-net driver complained"
  fi
  if grep -E 'broken|refused syscall' "$MIG_DIR"/vunet-*.log; then
    mig_fail "a vunet broke a queue or its sandbox refused a call"
  fi
}

figures() { echo "figures: $MIG_LINE"; }

# queued_bytes: the bytes waiting in the namespace's TCP sockets of the server's port (Recv-Q and
# Send-Q of both ends: the server's and vunet's).
queued_bytes() {
  e2e_host ss -tnH "( sport = :$MIG_PORT or dport = :$MIG_PORT )" |
    awk '{ q += $2 + $3 } END { print q + 0 }'
}

# report_state N: what vunet N says it loaded (MIG_STATE_PATTERN) and the state's size through its
# proxy; fails if vunet N logged no such line.
report_state() {
  local line
  line=$(mig_state_line "$1")
  echo "state: ${line:-none logged} (through the proxy: $(mig_state_bytes "$1") bytes)"
  [[ -n $line ]] || mig_fail "vunet $1 did not log '$MIG_STATE_PATTERN'"
}

# boot_until_ready SECONDS: the guest's script ($script, its line @RESULTS@ replaced by
# results_lines) on QEMU 0 with SECONDS for it, QEMU 1 waiting for it; returns once the guest said
# "ready 1" (READY_SECONDS, default 180).
boot_until_ready() {
  awk -v r="$(results_lines)" '$0 == "@RESULTS@" { print r; next } { print }' "$script" \
    >"$script.new" && mv "$script.new" "$script"
  mig_boot 0 "$script" "$1"
  mig_start_incoming 1
  mig_wait_console '^GUEST: ready 1 ' "${READY_SECONDS:-180}"
}

# migrate_0_1: the guest to QEMU 1, then its `phase 1` returns.
migrate_0_1() {
  mig_migrate 0 1 || mig_fail "the migration failed"
  mig_phase 1
}

case $case_name in
basic)
  mig_start_server
  mig_start_vunet 0
  mig_start_vunet 1
  mig_guest_script "$script" <<'EOF'
# A udhcpc that stays, for the renewal after the migration.
udhcpc -i eth0 -f -t 5 -T 2 >/tmp/udhcpc.log 2>&1 &
dhcp=$!
i=0
until grep -q '^UDHCPC: bound' /tmp/udhcpc.log || [ $i -ge 150 ]; do sleep 0.1; i=$((i + 1)); done
grep '^UDHCPC' /tmp/udhcpc.log | sed 's/^/GUEST: daemon /'
gw=$(ip -4 route show default | awk '{print $3; exit}')
state() {
  echo "$(ip -4 -o addr show dev eth0 | awk '{print $4}') ifindex=$(cat /sys/class/net/eth0/ifindex)" \
    "carrier_changes=$(cat /sys/class/net/eth0/carrier_changes)"
}
if ping -c 2 -W 5 "$gw" >/dev/null; then echo "GUEST: ping before ok"; else echo "GUEST: ping before FAILED"; fi
$T stream --host "$gw" --port "$PORT" --name before --seed 10 --up 1M --down 1M | sed 's/^/GUEST: /'
echo "GUEST: state before $(state)"
ready 1
phase 1
echo "GUEST: state after $(state)"
if ping -c 3 -W 5 "$gw" >/dev/null; then echo "GUEST: ping after ok"; else echo "GUEST: ping after FAILED"; fi
$T stream --host "$gw" --port "$PORT" --name after --seed 20 --up 1M --down 1M | sed 's/^/GUEST: /'
(sleep 2; touch /tmp/udp.stop) &
$T udp-echo --host "$gw" --port "$PORT" --name udp_after --interval 50 --size 300 \
  --stop-file /tmp/udp.stop | sed 's/^/GUEST: /'
renews=$(grep -c '^UDHCPC: renew' /tmp/udhcpc.log)
t=$(now)
kill -USR1 "$dhcp"
i=0
while [ "$(grep -c '^UDHCPC: renew' /tmp/udhcpc.log)" -le "$renews" ] && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
if [ "$(grep -c '^UDHCPC: renew' /tmp/udhcpc.log)" -gt "$renews" ]; then
  echo "GUEST: renew ok in $(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s:" \
    "$(grep '^UDHCPC: renew' /tmp/udhcpc.log | tail -n 1)"
else
  echo "GUEST: renew FAILED"
  sed 's/^/GUEST: daemon /' /tmp/udhcpc.log
fi
echo "GUEST: state end $(state)"
dmesg | grep -iE 'virtio|eth0|net_failover' | sed 's/^/GUEST: dmesg /'
echo "GUEST: done"
phase 2
kill "$dhcp"
EOF
  mig_boot 0 "$script" 240
  mig_start_incoming 1
  mig_wait_console '^GUEST: ready 1 ' 180
  t_ready=$(guest_now)
  mig_migrate 0 1 || mig_fail "the migration failed"
  t_migrated=$(guest_now)
  mig_phase 1
  mig_wait_console '^GUEST: done$' 120
  # Before the guest powers off (QEMU then stops the rings): what QEMU B asked of vunet B.
  cp "$MIG_DIR/trace-1.log" "$MIG_DIR/trace-1.at-done" 2>/dev/null || true
  mig_phase 2
  mig_wait_guest 60
  console=$(mig_console)

  expect_result "STREAM name=before " "TCP before the migration"
  before=$(sed -n 's/^GUEST: state before //p' "$console")
  after=$(sed -n 's/^GUEST: state after //p' "$console")
  end=$(sed -n 's/^GUEST: state end //p' "$console")
  echo "eth0 before: $before; after: $after; at the end: $end"
  [[ $before == 10.0.2.15/24* ]] || mig_fail "eth0 is not 10.0.2.15/24 before the migration: $before"
  [[ $after == "$before" && $end == "$before" ]] ||
    mig_fail "eth0 changed (address, ifindex or carrier): $before / $after / $end"
  if mig_icmp_on; then
    mig_expect '^GUEST: ping before ok$' "ping before the migration failed"
    mig_expect '^GUEST: ping after ok$' "ping after the migration failed"
  else
    ((EUID != 0)) || mig_fail "vunet runs without ICMP echo"
    echo "ping: not checked (no ping sockets here)"
  fi
  expect_result "STREAM name=after " "a new TCP connection after the migration"
  expect_server 10 before
  expect_server 20 after
  expect_result "UDPECHO name=udp_after " "a new UDP flow after the migration"
  renew=$(mig_guest_line '^GUEST: renew ')
  echo "${renew#GUEST: }"
  [[ $renew == "GUEST: renew ok"*" ip=10.0.2.15 "* ]] || mig_fail "the DHCP renewal after the migration failed"
  expect_healthy
  if [[ -f $MIG_DIR/trace-1.at-done ]]; then
    bad=$(grep -E ' F>B (GET_VRING_BASE|RESET_OWNER|RESET_DEVICE) |F>B SET_STATUS .* u64=0x0$' \
      "$MIG_DIR/trace-1.at-done" || true)
    [[ -z $bad ]] || mig_fail "QEMU B stopped or reset the device while the guest ran: $bad"
  fi
  figures
  echo "timing: ready after $(guest_elapsed "$t0" "$t_ready") s, migrated in" \
    "$(guest_elapsed "$t_ready" "$t_migrated") s (QMP, with QEMU A stopped), all" \
    "$(guest_elapsed "$t0" "$(guest_now)") s"
  ;;

dirty_log)
  hops=${HOPS:-4}
  # Debian's kernel zeroes every page it allocates (init_on_alloc): its receive buffers would be
  # written by the guest's CPU, which QEMU tracks itself, just before the backend fills them, and
  # the final copy would carry them whether the backend logged its writes or not.
  export GUEST_APPEND="${GUEST_APPEND:-} init_on_alloc=0"
  mig_start_server
  mig_start_vunet 0
  mig_guest_script "$script" HOPS="$hops" <<'EOF'
hop=1
while [ $hop -le @HOPS@ ]; do
  rm -f /tmp/stop /tmp/*.out
  s=$((hop * 100))
  $T stream --host "$gw" --port "$PORT" --name rx$hop --seed $s --up 0 --down inf --rate 3000000 \
    --out /tmp/rx.bin --stop-file /tmp/stop --stall-timeout 2 --expect intact >/tmp/rx.out &
  p1=$!
  $T stream --host "$gw" --port "$PORT" --name tx$hop --seed $((s + 10)) --up inf --down 0 \
    --send-rate 1000000 --stop-file /tmp/stop --stall-timeout 2 --expect intact >/tmp/tx.out &
  p2=$!
  sleep 1 # Both connected before the flood.
  # More than the guest can take: its receive ring stays full, so the backend writes into it up to
  # the moment QEMU stops the rings, after the vCPU stopped.
  $T udp-recv --host "$gw" --port "$PORT" --name udp$hop --seed $((s + 20)) --count 100000000 \
    --rate 8000 --size 1400 --stop-file /tmp/stop --stall-timeout 2 >/tmp/udp.out &
  p3=$!
  sleep 1
  ready $hop
  phase $hop
  touch /tmp/stop
  wait $p1 $p2 $p3
  $T verify --seed $((s + 1)) --file /tmp/rx.bin >/tmp/verify.out
  for f in rx tx udp verify; do sed "s/^/GUEST: hop $hop /" /tmp/$f.out; done
  rm -f /tmp/rx.bin
  hop=$((hop + 1))
done
dmesg | grep -iE 'virtio|eth0|net_failover' | sed 's/^/GUEST: dmesg /'
# A new connection on the last QEMU.
$T stream --host "$gw" --port "$PORT" --name last --seed 7 --up 1M --down 1M | sed 's/^/GUEST: /'
echo "GUEST: done"
EOF
  mig_boot 0 "$script" $((120 + 90 * hops))
  for hop in $(seq "$hops"); do
    mig_start_vunet "$hop"
    mig_start_incoming "$hop"
    mig_wait_console "^GUEST: ready $hop " 240
    sleep 1 # The streams run in the live phase: the migration starts amid them.
    # Throttled, so the live phase lasts seconds and the dirty log is synced several times.
    mig_migrate $((hop - 1)) "$hop" --max-bandwidth 40000000 || mig_fail "migration $hop failed"
    mig_phase "$hop"
    mig_wait_console "^GUEST: hop $hop VERIFY " 120
  done
  mig_wait_guest 120
  for hop in $(seq "$hops"); do
    for what in rx tx udp; do
      line=$(mig_guest_line "^GUEST: hop $hop (STREAM|UDP) name=$what$hop ")
      [[ -n $line ]] || mig_fail "hop $hop: no result for $what"
      echo "${line#GUEST: }"
      [[ $line == *" result=ok"* ]] || mig_fail "hop $hop: $what came in wrong: $line"
    done
    line=$(mig_guest_line "^GUEST: hop $hop VERIFY ")
    echo "${line#GUEST: }"
    [[ $line == *" ok" ]] || mig_fail "hop $hop: the file the guest wrote is not what the host sent: $line"
    [[ $(mig_field "$line" bytes) -gt 0 ]] || mig_fail "hop $hop: the guest received nothing"
    tx=$(server_line $((hop * 100 + 10)))
    [[ $tx == *" rx_ok=yes "* ]] || mig_fail "hop $hop: the host got the guest's stream wrong: $tx"
    echo "server: ${tx#conn * }"
  done
  expect_result "STREAM name=last " "a new connection after the last migration"
  expect_healthy
  for f in "$MIG_DIR"/migrate-*.log; do echo "$(basename "$f" .log): $(grep -m 1 '^MIGRATE ' "$f")"; done
  echo "timing: $hops migrations, all $(guest_elapsed "$t0" "$(guest_now)") s"
  ;;

tcp)
  need_repair
  mig_start_server
  mig_start_vunet 0
  mig_start_vunet 1
  mig_guest_script "$script" <<'EOF'
rm -f /tmp/stop
# Paced both ways, the reader keeping up: the stall the migration causes.
$T stream --host "$gw" --port "$PORT" --name paced --seed 100 --up inf --down inf --rate 1000000 \
  --send-rate 1000000 --stop-file /tmp/stop --stall-timeout 10 >/tmp/paced.out &
# Both readers slow (the host's and ours): data waits in the sockets both ways.
$T stream --host "$gw" --port "$PORT" --name queued --seed 200 --up inf --down inf \
  --read-rate 500000 --recv-rate 500000 --stop-file /tmp/stop --stall-timeout 20 >/tmp/queued.out &
# Idle until the end, then 64 KiB echoed on each.
$T hold --host "$gw" --port "$PORT" --count 2 --until /tmp/stop --bytes 65536 >/tmp/hold.out &
$T udp-echo --host "$gw" --port "$PORT" --name udp --interval 20 --size 200 \
  --stop-file /tmp/stop >/tmp/udp.out &
ping -i 0.2 "$gw" >/tmp/ping.txt 2>&1 &
ping=$!
sleep 3
ready 1
phase 1
sleep 4
touch /tmp/stop
kill -INT $ping
wait
echo "GUEST: ping $(grep 'packets transmitted' /tmp/ping.txt)"
@RESULTS@
echo "GUEST: done"
EOF
  boot_until_ready 300
  sleep 2
  echo "queued at the switch-over: $(queued_bytes) bytes in the sockets of the server's port"
  migrate_0_1
  mig_wait_guest 240
  expect_result "STREAM name=paced "
  paced=$RESULT
  expect_server 100 paced "$paced"
  expect_result "STREAM name=queued "
  expect_server 200 queued "$RESULT"
  expect_result "HOLD expect=" "the idle connections did not echo after the migration"
  expect_udp_flow
  ping=$(mig_guest_line '^GUEST: ping ')
  echo "${ping#GUEST: }"
  if mig_icmp_on; then
    loss=$(sed -n 's/.* \([0-9]*\)% packet loss.*/\1/p' <<<"$ping")
    ((${loss:-100} <= 20)) || mig_fail "ping lost more than 20%: $ping"
  fi
  expect_healthy
  report_state 1
  host_gap=$(mig_field "$(server_line 100)" max_gap_ms)
  guest_gap=$(mig_field "$paced" max_gap_ms)
  beyond=$(awk -v g="$guest_gap" -v p="$(mig_field "$paced" p50_gap_ms)" \
    'BEGIN { printf "%.1f", g - p }')
  echo "MIGRATION stall_ms=$host_gap guest_stall_ms=$guest_gap guest_beyond_pace_ms=$beyond" \
    "downtime_ms=$(mig_field "$MIG_LINE" downtime_ms) state_bytes=$(mig_state_bytes 1)" \
    "total_ms=$(mig_field "$MIG_LINE" total_ms)"
  limit=${MIG_STALL_LIMIT_MS:-1000}
  awk -v b="$beyond" -v l="$limit" 'BEGIN { exit !(b <= l) }' ||
    mig_fail "the guest's paced stream stood still $beyond ms beyond its pace (limit $limit ms)"
  ;;

slow_reader)
  need_repair
  mib=${SLOW_MIB:-16}
  rate=${SLOW_RATE:-524288}
  mig_start_server
  mig_start_vunet 0
  mig_start_vunet 1
  mig_guest_script "$script" MIB="$mib" RATE="$rate" <<'EOF'
$T stream --host "$gw" --port "$PORT" --name slow --seed 300 --up @MIB@M --down 0 \
  --read-rate @RATE@ --stall-timeout 60 >/tmp/slow.out &
sleep 5
ready 1
phase 1
wait
ready 2
phase 2
@RESULTS@
echo "GUEST: done"
EOF
  boot_until_ready $((mib * 1048576 / rate + 200))
  queued=$(queued_bytes)
  echo "queued at the switch-over: $queued bytes in the sockets of the server's port"
  ((queued >= 1048576)) || mig_fail "less than 1 MiB queued: the case tests nothing"
  migrate_0_1
  # The guest is done once vunet took its last byte; the host's reader gets it megabytes later.
  # The guest (and with it QEMU and vunet) stays up until the server has read the end.
  mig_wait_console '^GUEST: ready 2 ' $((mib * 1048576 / rate + 120))
  _mig_wait_for "grep -q ' stream seed=300 ' '$MIG_DIR/server.log'" $((mib * 1048576 / rate + 60)) ||
    true
  mig_phase 2
  mig_wait_guest 120
  expect_result "STREAM name=slow " "the slow stream"
  expect_server 300 slow
  [[ $(mig_field "$(server_line 300)" rx) == $((mib * 1048576)) ]] ||
    mig_fail "the host did not get every byte: $(server_line 300)"
  expect_healthy
  report_state 1
  figures
  ;;

many)
  need_repair
  count=${MIG_MANY:-1000}
  mig_start_server
  mig_start_vunet 0
  mig_start_vunet 1
  mig_guest_script "$script" COUNT="$count" <<'EOF'
$T hold --host "$gw" --port "$PORT" --count @COUNT@ --until /tmp/go --bytes 64 --within 60000 \
  >/tmp/hold.out &
i=0
until grep -q 'HOLD opened=' /tmp/hold.out || [ $i -ge 1200 ]; do sleep 0.5; i=$((i + 1)); done
sed 's/^/GUEST: /' /tmp/hold.out
ready 1
phase 1
touch /tmp/go
wait
@RESULTS@
echo "GUEST: done"
EOF
  READY_SECONDS=700 boot_until_ready 900
  mig_expect "^GUEST: HOLD opened=$count\$" "the guest could not open $count connections"
  migrate_0_1
  mig_wait_guest 240
  expect_result "HOLD expect=" "the connections did not all echo after the migration"
  report_state 1
  figures
  ;;

no_helper)
  MIG_REPAIR=
  mig_start_server
  mig_start_vunet 0
  mig_start_vunet 1
  mig_guest_script "$script" <<'EOF'
$T hold --host "$gw" --port "$PORT" --count 8 --until /tmp/go --expect reset --within 3000 \
  >/tmp/hold.out &
hold=$!
$T stream --host "$gw" --port "$PORT" --name reset --seed 400 --up inf --down inf --rate 200000 \
  --send-rate 200000 --stop-file /tmp/stop --stall-timeout 5 --expect intact >/tmp/reset.out &
stream=$!
sleep 2
ready 1
phase 1
touch /tmp/go
wait $hold
touch /tmp/stop
wait $stream
$T stream --host "$gw" --port "$PORT" --name new --seed 410 --up 1M --down 1M >/tmp/new.out
@RESULTS@
echo "GUEST: done"
EOF
  boot_until_ready 300
  migrate_0_1
  mig_wait_guest 180
  expect_result "HOLD expect=reset" "the held connections were not reset within 3 s of use"
  expect_result "STREAM name=reset " "the stream's bytes"
  # The socket reports the reset once: to the read or to the send, whichever asks first.
  [[ $(mig_field "$RESULT" end) != stalled &&
    ($(mig_field "$RESULT" end) == reset || $(mig_field "$RESULT" tx_end) == reset) ]] ||
    mig_fail "the stream did not end with a reset: $RESULT"
  expect_result "STREAM name=new " "a new connection after the migration"
  expect_healthy
  figures
  ;;

bad_state)
  mig_start_server
  mig_start_vunet 0
  mig_guest_script "$script" <<'EOF'
rm -f /tmp/stop
$T stream --host "$gw" --port "$PORT" --name paced --seed 500 --up inf --down inf --rate 500000 \
  --send-rate 500000 --stop-file /tmp/stop --stall-timeout 10 >/tmp/paced.out &
$T hold --host "$gw" --port "$PORT" --count 4 --until /tmp/stop >/tmp/hold.out &
$T udp-echo --host "$gw" --port "$PORT" --name udp --interval 50 --size 200 \
  --stop-file /tmp/stop >/tmp/udp.out &
sleep 2
ready 1
phase 1
sleep 2
ready 2
phase 2
sleep 3
touch /tmp/stop
wait
@RESULTS@
echo "GUEST: done"
EOF
  MIG_PROXY=truncate mig_start_vunet 1
  boot_until_ready 300
  MIG_PROXY=flip mig_start_vunet 2
  mig_start_incoming 2
  sleep 1
  for i in 1 2; do
    mig_migrate 0 "$i" --expect failed ||
      mig_fail "the migration to destination $i (a spoilt state) did not fail as it should"
    check=$(grep -m 1 'reply CHECK_DEVICE_STATE' "$MIG_DIR/trace-$i.log" || true)
    [[ -n $check ]] || mig_fail "destination $i was never asked CHECK_DEVICE_STATE (no state carried)"
    # The trace prints u64=0 for success and u64=0x... for anything else.
    [[ $check =~ u64=0x[0-9a-f]+ ]] || mig_fail "destination $i accepted a spoilt state: $check"
    echo "destination $i: $(grep -m 1 'state: load' "$MIG_DIR/trace-$i.log"); ${check#* reply }"
  done
  mig_phase 1
  mig_wait_console '^GUEST: ready 2 ' 120
  mig_start_vunet 3
  mig_start_incoming 3
  mig_migrate 0 3 || mig_fail "the migration with the state intact failed"
  mig_phase 2
  mig_wait_guest 180
  expect_result "STREAM name=paced "
  expect_server 500 paced "$RESULT"
  expect_result "HOLD expect=" "the held connections did not echo after the failed migrations"
  expect_udp_flow
  expect_healthy
  figures
  ;;

*)
  mig_fail "unknown case $case_name"
  ;;
esac
echo PASS
