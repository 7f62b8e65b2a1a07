#!/usr/bin/env bash
# tools/demo.sh (what `tools/run --demo` runs once vunet is built) against the vunet built here: the
# guest gets its lease, pings its gateway (or the summary says why not), fetches the host's page; the
# demo exits 0 and leaves no process or file behind.
#
# Usage: demo_test.sh VUNET DEMO_SH. Skips (exit 0, SKIPPED) only when QEMU or busybox is missing.
set -euo pipefail

vunet=$(realpath "$1")
demo=$2

if ! command -v qemu-system-x86_64 >/dev/null || ! command -v busybox >/dev/null; then
  echo "SKIPPED: qemu-system-x86_64 or busybox is not installed"
  exit 0
fi
fail() {
  echo "FAIL: $*"
  echo "--- the demo's output:"
  cat "$out"
  exit 1
}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

rc=0
timeout 240 "$demo" "$vunet" >"$out" 2>&1 || rc=$?
((rc == 0)) || fail "the demo exited $rc"

grep -q '^  vunet | .*qemu-system-x86_64 .*-netdev vhost-user' "$out" || fail "vunet's banner is not shown"
grep -q '^  guest | guest# udhcpc' "$out" || fail "the guest's commands are not shown"
grep -q '^  DHCP:  ok: the guest got ' "$out" || fail "no DHCP lease in the summary"
grep -Eq '^  ping:  (ok: .* [1-9][0-9]* packets received|skipped: )' "$out" || fail "ping: not ok"
grep -q "^  fetch: ok: the guest read \"hello from the host's loopback" "$out" ||
  fail "the guest did not fetch the host's page"

# Nothing left: the demo's directory (it holds the socket and the web server's root) is gone and no
# process names it.
dir=$(sed -n 's/.*starting vunet: vunet .* -s \(\/tmp\/vunet-demo\.[A-Za-z0-9]*\)\/vunet\.socket.*/\1/p' "$out")
[[ -n $dir ]] || fail "the demo did not say where its socket is"
[[ ! -e $dir ]] || fail "$dir is left behind"
sleep 0.5
if pgrep -af -- "$dir" >"$out.procs"; then
  fail "processes left behind: $(cat "$out.procs")"
fi
rm -f "$out.procs"

sed -n '/demo: summary/,$p' "$out"
echo "PASS"
