#!/usr/bin/env bash
# The command-line frontend against vu::Server with an echoing data plane (testpmd_server --echo):
# negotiation is printed, and every frame sent comes back.
#
# Usage: vu_frontend_main_test.sh PATH_TO_VU_FRONTEND_MAIN PATH_TO_TESTPMD_SERVER
set -euo pipefail

frontend=$1
server=$2
dir=$(mktemp -d /tmp/vu_frontend_main.XXXXXX)
server_pid=
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  echo "--- vu_frontend_main output:"
  cat "$dir/frontend.log" || true
  echo "--- server output:"
  cat "$dir/server.log" || true
  exit 1
}

# run NAME FRONTEND_FLAGS...: one server, one frontend run sending and receiving 20000 frames.
run() {
  local name=$1
  shift
  local socket=$dir/$name.sock
  "$server" --socket="$socket" --echo --timeout=30s >"$dir/server.log" 2>&1 &
  server_pid=$!
  "$frontend" --socket "$socket" --connect-timeout=5s --timeout=10s --send-frames 20000 \
    --receive-frames 20000 "$@" >"$dir/frontend.log" 2>&1 || fail "$name: vu_frontend_main failed"
  wait "$server_pid" || fail "$name: the server exited with status $?"
  server_pid=
  grep -q '^negotiated features: .*VERSION_1' "$dir/frontend.log" || fail "$name: no features printed"
  grep -q '^sent: 20000 frames' "$dir/frontend.log" || fail "$name: not all frames sent"
  grep -q '^received: 20000 frames' "$dir/frontend.log" || fail "$name: not all frames came back"
  echo "$name: $(grep -E '^received:' "$dir/frontend.log")"
}

run default --frame-size 1514
run small_rings_split_buffers --queue-size 64 --rx-descriptors 4 --tx-header-separate --frame-size 60
run jumbo_mergeable --frame-size 9000 --rx-buffer-size 1526
run no_protocol_features --protocol-features=false --event-idx=false --mrg-rxbuf=false --frame-size 1000
echo "PASS"
