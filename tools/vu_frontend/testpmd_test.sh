#!/usr/bin/env bash
# DPDK's virtio-user, a frontend no one here wrote, against vu::Server: dpdk-testpmd connects to
# testpmd_server, negotiates, starts both rings and sends a first burst (--tx-first); the server echoes
# what it receives on the transmit ring back into testpmd's receive ring, and testpmd's io forwarding
# sends it out again. The test passes once both rings started and MIN_FRAMES frames made a pass, and
# testpmd then shut its port down cleanly (GET_VRING_BASE on both rings) and exited.
#
# Usage: testpmd_test.sh PATH_TO_TESTPMD_SERVER. Skips (exit 0 with a SKIPPED line) only when
# dpdk-testpmd is not installed: Debian's dpdk-dev ships it, librte-net-virtio23 the virtio-user PMD
# and librte-mempool-ring23 the default mempool driver.
set -euo pipefail

server=$1
min_frames=${MIN_FRAMES:-256}

if ! command -v dpdk-testpmd >/dev/null; then
  echo "SKIPPED: dpdk-testpmd is not installed (apt-get install dpdk-dev librte-net-virtio23" \
    "librte-mempool-ring23)"
  exit 0
fi

# A UNIX socket path must be short; TEST_TMPDIR can be long.
dir=$(mktemp -d /tmp/vu_testpmd.XXXXXX)
prefix=vu_testpmd_$$
server_pid=
testpmd_pid=
cleanup() {
  exec 3>&- 2>/dev/null || true
  [[ -n $testpmd_pid ]] && kill "$testpmd_pid" 2>/dev/null || true
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
  # DPDK keeps its runtime directory under /var/run/dpdk (root) or $XDG_RUNTIME_DIR/dpdk.
  rm -rf "/var/run/dpdk/$prefix" "${XDG_RUNTIME_DIR:-/nonexistent}/dpdk/$prefix"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  if grep -q 'No probed ethernet devices' "$dir/testpmd.log" 2>/dev/null; then
    echo "dpdk-testpmd found no virtio-user device: is librte-net-virtio23 installed?"
  fi
  echo "--- testpmd_server output:"
  cat "$dir/server.log" || true
  echo "--- dpdk-testpmd output:"
  cat "$dir/testpmd.log" || true
  exit 1
}

socket=$dir/vu.sock
"$server" --socket="$socket" --echo --min_frames="$min_frames" --timeout=40s >"$dir/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  [[ -S $socket ]] && break
  sleep 0.05
done
[[ -S $socket ]] || fail "testpmd_server did not listen on $socket"

# Without -i testpmd forwards until a line (or end of file) arrives on its standard input: a FIFO
# held open on fd 3 keeps it running until we close it.
mkfifo "$dir/stdin"
start=$(date +%s.%N)
dpdk-testpmd --no-pci --no-huge -m 512 --no-telemetry --file-prefix="$prefix" \
  --vdev="net_virtio_user0,path=$socket,queues=1" \
  -- --total-num-mbufs=16384 --tx-first --forward-mode=io <"$dir/stdin" >"$dir/testpmd.log" 2>&1 &
testpmd_pid=$!
exec 3>"$dir/stdin"

for _ in $(seq 400); do
  grep -q '^READY' "$dir/server.log" && break
  kill -0 "$testpmd_pid" 2>/dev/null || break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
grep -q '^READY' "$dir/server.log" || fail "testpmd and the server did not get both rings going"
ready=$(date +%s.%N)

# Enter: testpmd stops forwarding, stops and closes its port, and exits; the one-off server exits when
# it disconnects.
exec 3>&-
for _ in $(seq 200); do
  kill -0 "$testpmd_pid" 2>/dev/null || break
  sleep 0.05
done
kill -0 "$testpmd_pid" 2>/dev/null && fail "dpdk-testpmd did not exit after its input closed"
wait "$testpmd_pid" || fail "dpdk-testpmd exited with status $?"
testpmd_pid=
for _ in $(seq 100); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
rc=0
wait "$server_pid" || rc=$?
server_pid=
((rc == 0)) || fail "testpmd_server exited with status $rc"

grep -q '^queue 0 started' "$dir/server.log" || fail "queue 0 never started"
grep -q '^queue 1 started' "$dir/server.log" || fail "queue 1 never started"
grep -q '^queue 0 stopped' "$dir/server.log" || fail "queue 0 was not stopped at shutdown"
grep -q '^queue 1 stopped' "$dir/server.log" || fail "queue 1 was not stopped at shutdown"
rx=$(sed -n 's/.*Accumulated forward statistics.*//;/RX-packets:/{s/.*RX-packets: *\([0-9]*\).*/\1/p;q}' \
  "$dir/testpmd.log")
[[ -n $rx && $rx -gt 0 ]] || fail "testpmd received nothing back"

echo "--- testpmd_server output:"
cat "$dir/server.log"
echo "--- dpdk-testpmd forward statistics:"
grep -E 'RX-packets|TX-packets' "$dir/testpmd.log" | tail -n 2
awk -v s="$start" -v r="$ready" -v e="$(date +%s.%N)" \
  'BEGIN { printf "rings up and %s frames through in %.2f s; whole run %.2f s\n", "'"$min_frames"'", r - s, e - s }'
echo "PASS"
