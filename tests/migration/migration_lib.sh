# shellcheck shell=bash
# Shell functions for live-migration tests: one guest, QEMUs that hand it on to one another, each
# QEMU on a vunet of its own. Source tests/guest/guest_lib.sh and tests/vunet/e2e_lib.sh first, then
# this file:
#
#   mig_init migration_basic VUNET MIG_TRAFFIC STATE_TAMPER  # $MIG_DIR, the namespace, traps
#   mig_start_server                     # mig_traffic's server beside the vunets: $MIG_PORT
#   mig_start_vunet 0; mig_start_vunet 1 # vunet N on $MIG_DIR/vunet-N.sock (log vunet-N.log)
#   mig_guest_script "$MIG_DIR/test.sh" <<'EOF'   # the guest's script: a lease, then this
#   ready 1; phase 1; ...
#   EOF
#   mig_boot 0 "$MIG_DIR/test.sh" 300    # the guest on QEMU 0 (console-0.log, qmp-0.sock)
#   mig_start_incoming 1                 # QEMU 1: the same machine, -incoming defer, on vunet 1
#   mig_wait_console '^GUEST: ready 1$' 120
#   mig_migrate 0 1                      # QMP: 0 -> 1; MIG_LINE; QEMU 0 and vunet 0 stopped
#   mig_phase 1                          # the guest's `phase 1` returns
#   mig_wait_guest 120                   # the guest powers off (on QEMU 1); vunet 1 exits 0
#   mig_expect '^GUEST: ping ok$' "ping failed after the migration"
#
# Indices name a QEMU and the vunet it is attached to: a migration goes from one index to another,
# and each hop needs a fresh pair (A -> B -> A' is 0 -> 1 -> 2).
#
# The namespace: both vunets (and every vunet of a test) translate the guest's flows into one network
# namespace, as two backends on one host would; the server and any host-side command (e2e_host,
# e2e_host_bg) run there too. As root that is a namespace of the test's own (loopback up, ping sockets
# allowed), held by a sleeping process: E2E_VUNET_PID is that process here, so e2e_lib's functions
# enter it. Otherwise everything runs in the caller's namespace.
#
# The console: the guest's ttyS0 goes to console-N.log of the QEMU it runs on, so after a migration
# the guest goes on writing in the destination's file. mig_console joins the files of the QEMUs the
# guest ran on, in order; the guest's lines ("GUEST: ...") are found there whichever QEMU wrote them.
#
# The guest (mig_guest_script): after its lease, `$T` is mig_traffic, `$gw` the gateway, `$PORT` the
# server's port; `ready N` prints "GUEST: ready N", `phase N` waits until the test has called
# mig_phase N (the guest asks the server, on a new connection each time).
#
# Settings (environment):
#   MIG_REPAIR     the TCP_REPAIR helper (//tools/vunet_repair:vunet_repair): started for each vunet
#                  as `MIG_REPAIR SOCKET.repair` once vunet listens there; empty or absent: none.
#                  MIG_NO_REPAIR=yes for one mig_start_vunet call leaves it out there.
#   MIG_PROXY      state_tamper's mode in front of each vunet (QEMU connects to proxy-N.sock and the
#                  proxy to vunet): count (the default: the device state is copied through pipes of
#                  its own and counted), relay, truncate, flip, or none (QEMU connects to vunet).
#                  Every message is traced in trace-N.log.
#   MIG_FAKE_STATE N  the proxies play a backend with N bytes of device state (state_tamper
#                  --fake_state_bytes): QEMU then transfers a state, which the destination's proxy
#                  checks; shows the frontend's side of it, and lets the failure cases be tried,
#                  while vunet carries none.
#   MIG_VUNET_ARGS more vunet arguments (words), e.g. --debug.
#   MIG_PCAP=yes   each vunet captures the guest's frames in vunet-N.pcap (--pcap), and tcpdump
#                  (where installed) the host side, the server's port on the loopback, in host.pcap.
#   MIG_KEEP=yes   keep $MIG_DIR.
#   GUEST_MEMORY   defaults to 256M here (less to copy).
# Everything started here is stopped on every exit path.

MIG_DIR=
MIG_VUNET=
MIG_TRAFFIC=
MIG_TAMPER=
MIG_PORT=
MIG_LINE=
MIG_GUEST_TIMEOUT=
MIG_LIB_DIR=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
MIG_ADDRESSING=(-a 10.0.2.15 -n 24 -g 10.0.2.2 -D 10.0.2.3)
MIG_NS=()          # The prefix that runs a command in the namespace (empty: none of our own).
MIG_HOPS=()        # The indices of the QEMUs the guest ran on, in order.
MIG_QEMU_PIDS=()   # By index.
MIG_VUNET_PIDS=()
MIG_PROXY_PIDS=()
MIG_REPAIR_PIDS=()
MIG_FRONT=()       # The socket QEMU N connects to (the proxy's, or vunet's).
export GUEST_MEMORY=${GUEST_MEMORY:-256M}

_mig_cleanup() {
  # shellcheck disable=SC2086
  guest_stop_pids ${MIG_QEMU_PIDS[@]+"${MIG_QEMU_PIDS[@]}"}
  GUEST_QEMU_PID=
  # shellcheck disable=SC2086
  guest_stop_pids ${MIG_PROXY_PIDS[@]+"${MIG_PROXY_PIDS[@]}"} \
    ${MIG_REPAIR_PIDS[@]+"${MIG_REPAIR_PIDS[@]}"} ${MIG_VUNET_PIDS[@]+"${MIG_VUNET_PIDS[@]}"}
  if [[ ${MIG_KEEP:-} == yes && -n $MIG_DIR ]]; then
    echo "kept $MIG_DIR"
    E2E_DIR=
  fi
  _e2e_cleanup || true # The host-side commands, the namespace's holder, $MIG_DIR.
  return 0
}

# mig_init NAME VUNET MIG_TRAFFIC STATE_TAMPER: skips (exit 0, a SKIPPED line) without QEMU, busybox
# or python3; makes $MIG_DIR, the namespace and the traps.
mig_init() {
  if ! guest_have_qemu || ! command -v python3 >/dev/null; then
    echo "SKIPPED: qemu-system-x86_64, busybox or python3 is not installed (apt-get install" \
      "qemu-system-x86 busybox-static python3)"
    exit 0
  fi
  MIG_VUNET=$(realpath "$2")
  MIG_TRAFFIC=$(realpath "$3")
  MIG_TAMPER=$(realpath "$4")
  e2e_init "$1"
  MIG_DIR=$E2E_DIR
  chmod 755 "$MIG_DIR" # vunet drops root: it must still reach its socket's directory.
  trap _mig_cleanup EXIT
  if ((EUID == 0)) && unshare -n true 2>/dev/null; then
    # unshare without --fork and sh's exec keep one process: $! is the holder itself.
    unshare -n sh -c 'ip link set lo up && echo "0 2147483647" >/proc/sys/net/ipv4/ping_group_range &&
      exec sleep 100000' </dev/null >"$MIG_DIR/holder.out" 2>&1 &
    E2E_VUNET_PID=$!
    # shellcheck disable=SC2034  # e2e_lib.sh reads it.
    E2E_NETNS=yes
    MIG_NS=(nsenter -t "$E2E_VUNET_PID" -n --)
    for _ in $(seq 50); do
      [[ $(readlink "/proc/$E2E_VUNET_PID/ns/net" 2>/dev/null) != "$(readlink /proc/self/ns/net)" ]] &&
        break
      sleep 0.05
    done
  fi
  echo 0 >"$MIG_DIR/phase"
}

# mig_fail MESSAGE: prints it and the end of every log (the guest's console whole), exits 1.
mig_fail() {
  echo "FAIL: $*"
  local log
  for log in "$MIG_DIR"/*.log; do
    [[ -f $log ]] || continue
    case $log in
      */console-*) echo "--- $(basename "$log"):" && tr -d '\r' <"$log" ;;
      *) echo "--- $(basename "$log") (last 60 lines):" && tail -n 60 "$log" ;;
    esac
  done
  exit 1
}

# _mig_wait_for CONDITION_COMMAND SECONDS: until the command succeeds; false at the deadline.
_mig_wait_for() {
  local tries=$(($2 * 20))
  for _ in $(seq "$tries"); do
    eval "$1" && return 0
    sleep 0.05
  done
  return 1
}

# mig_start_server: mig_traffic's server on a free port of the namespace's loopback ($MIG_PORT),
# answering the guest's phase questions from $MIG_DIR/phase; its log is server.log.
mig_start_server() {
  MIG_PORT=$(e2e_free_port) || mig_fail "no free port"
  e2e_host_bg server.log "$MIG_TRAFFIC" server --port "$MIG_PORT" --phase-file "$MIG_DIR/phase"
  _mig_wait_for "grep -q listening '$MIG_DIR/server.log'" 5 || mig_fail "the server did not start"
  if [[ ${MIG_PCAP:-} == yes ]] && command -v tcpdump >/dev/null; then
    e2e_host_bg tcpdump.log tcpdump -i lo -s 128 -w "$MIG_DIR/host.pcap" "tcp port $MIG_PORT"
  fi
}

# mig_start_vunet N [ARGS...]: vunet N (-f --one-off, the addressing every vunet here gives, then
# MIG_VUNET_ARGS and ARGS) on $MIG_DIR/vunet-N.sock in the namespace, logging to vunet-N.log; then
# the proxy in front of it (MIG_PROXY) and its repair helper (MIG_REPAIR). Waits until both listen.
mig_start_vunet() {
  local i=$1
  shift
  local socket=$MIG_DIR/vunet-$i.sock log=$MIG_DIR/vunet-$i.log
  # shellcheck disable=SC2206  # MIG_VUNET_ARGS is words.
  local args=(-f --one-off -s "$socket" "${MIG_ADDRESSING[@]}" ${MIG_VUNET_ARGS:-} "$@")
  [[ ${MIG_PCAP:-} == yes ]] && args+=(--pcap "$MIG_DIR/vunet-$i.pcap")
  # nsenter execs vunet: $! is vunet's pid.
  ${MIG_NS[@]+"${MIG_NS[@]}"} "$MIG_VUNET" "${args[@]}" </dev/null >"$log" 2>&1 &
  MIG_VUNET_PIDS[i]=$!
  _mig_wait_for "[[ -S '$socket' ]] || ! kill -0 ${MIG_VUNET_PIDS[i]} 2>/dev/null" 10
  [[ -S $socket ]] || mig_fail "vunet $i did not listen on $socket"
  MIG_FRONT[i]=$socket
  local mode=${MIG_PROXY:-count}
  if [[ $mode != none ]]; then
    local proxy=$MIG_DIR/proxy-$i.sock
    "$MIG_TAMPER" --listen "$proxy" --backend "$socket" --mode "$mode" \
      --fake_state_bytes "${MIG_FAKE_STATE:-0}" --trace "$MIG_DIR/trace-$i.log" </dev/null >"$MIG_DIR/proxy-$i.log" 2>&1 &
    MIG_PROXY_PIDS[i]=$!
    _mig_wait_for "[[ -S '$proxy' ]]" 5 || mig_fail "state_tamper did not listen on $proxy"
    MIG_FRONT[i]=$proxy
  fi
  if [[ -n ${MIG_REPAIR:-} && ${MIG_NO_REPAIR:-} != yes ]]; then
    _mig_wait_for "[[ -S '$socket.repair' ]]" 5 ||
      mig_fail "vunet $i has no repair socket at $socket.repair"
    ${MIG_NS[@]+"${MIG_NS[@]}"} "$MIG_REPAIR" "$socket.repair" </dev/null \
      >"$MIG_DIR/repair-$i.log" 2>&1 &
    MIG_REPAIR_PIDS[i]=$!
  fi
}

# mig_guest_script FILE [NAME=VALUE...] < BODY: the guest's script (see e2e_guest_script: the lease
# first, $gw, @NAME@ placeholders), with the helpers described at the top before BODY.
mig_guest_script() {
  local file=$1
  shift
  {
    cat <<'EOF'
T=/bin/mig_traffic
PORT=@PORT@
now() { cut -d ' ' -f 1 /proc/uptime; }
ready() { echo "GUEST: ready $1 at $(now)"; }
phase() {
  if ! $T phase --host "$gw" --port "$PORT" --at-least "$1" --timeout "${2:-900}"; then
    echo "GUEST: phase $1 did not come"
    exit 1
  fi
  echo "GUEST: phase $1 at $(now)"
}
EOF
    cat
  } | e2e_guest_script "$file" PORT="$MIG_PORT" "$@"
}

# mig_initrd SCRIPT: $MIG_DIR/initrd, the guest's initramfs with SCRIPT as /test.sh and
# /bin/mig_traffic with the shared libraries it needs (one more archive after guest_initrd's).
mig_initrd() {
  guest_initrd "$1" "$MIG_DIR/initrd" || mig_fail "could not build the initrd"
  local stage=$MIG_DIR/initrd-extra file
  rm -rf "$stage" && mkdir -p "$stage/bin"
  cp "$MIG_TRAFFIC" "$stage/bin/mig_traffic"
  # Each library ldd names by its absolute path, at that path.
  for file in $(LC_ALL=C ldd "$MIG_TRAFFIC" | grep -o '/[^ ]*'); do
    mkdir -p "$stage$(dirname "$file")" && cp -L "$file" "$stage$file"
  done
  (cd "$stage" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) | gzip >>"$MIG_DIR/initrd" ||
    mig_fail "could not add mig_traffic to the initrd"
  rm -rf "$stage"
}

# mig_boot N SCRIPT SECONDS: the guest on QEMU N (attached to vunet N), running SCRIPT with SECONDS
# for it; QMP on qmp-N.sock. GUEST_QEMU_PID is the QEMU the guest runs on from here on.
mig_boot() {
  local i=$1
  MIG_GUEST_TIMEOUT=$3
  mig_initrd "$2"
  : >"$MIG_DIR/console-$i.log"
  GUEST_QMP=$MIG_DIR/qmp-$i.sock guest_start "${MIG_FRONT[i]}" "$MIG_DIR/initrd" \
    "$MIG_DIR/console-$i.log" "$MIG_DIR/qemu-$i.log" "$MIG_GUEST_TIMEOUT"
  MIG_QEMU_PIDS[i]=$GUEST_QEMU_PID
  MIG_HOPS=("$i")
}

# mig_start_incoming N: QEMU N, a destination: the machine mig_boot started, on vunet N, waiting for
# a migration (-incoming defer; mig_migrate gives it the address).
mig_start_incoming() {
  local i=$1 current=$GUEST_QEMU_PID
  : >"$MIG_DIR/console-$i.log"
  GUEST_QMP=$MIG_DIR/qmp-$i.sock GUEST_INCOMING=defer guest_start "${MIG_FRONT[i]}" \
    "$MIG_DIR/initrd" "$MIG_DIR/console-$i.log" "$MIG_DIR/qemu-$i.log" "$MIG_GUEST_TIMEOUT"
  MIG_QEMU_PIDS[i]=$GUEST_QEMU_PID
  GUEST_QEMU_PID=$current
  _mig_wait_for "[[ -S '$MIG_DIR/qmp-$i.sock' ]] || ! kill -0 ${MIG_QEMU_PIDS[i]} 2>/dev/null" 20
  [[ -S $MIG_DIR/qmp-$i.sock ]] || mig_fail "QEMU $i (the destination) did not start"
}

# mig_stop N: QEMU N quits (QMP; killed if it lingers), then vunet N, --one-off, must exit 0 within
# 10 s; its proxy and repair helper are stopped.
mig_stop() {
  local i=$1 pid=${MIG_QEMU_PIDS[$1]:-}
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    python3 "$MIG_LIB_DIR/qmp.py" quit "$MIG_DIR/qmp-$i.sock" >/dev/null 2>&1 || true
    _mig_wait_for "! kill -0 $pid 2>/dev/null" 10 || true
  fi
  [[ -n $pid ]] && guest_stop_pids "$pid"
  MIG_QEMU_PIDS[i]=
  [[ $pid == "$GUEST_QEMU_PID" ]] && GUEST_QEMU_PID=
  mig_stop_vunet "$i"
}

# mig_stop_vunet N: vunet N, whose frontend has gone, must exit 0 within 10 s (--one-off).
mig_stop_vunet() {
  local i=$1 pid=${MIG_VUNET_PIDS[$1]:-} rc=0
  if [[ -n $pid ]]; then
    _mig_wait_for "! kill -0 $pid 2>/dev/null" 10 ||
      mig_fail "vunet $i did not exit once its QEMU had gone (--one-off)"
    wait "$pid" || rc=$?
    MIG_VUNET_PIDS[i]=
    ((rc == 0)) || mig_fail "vunet $i exited with status $rc"
  fi
  # shellcheck disable=SC2086
  guest_stop_pids ${MIG_PROXY_PIDS[i]:-} ${MIG_REPAIR_PIDS[i]:-}
  MIG_PROXY_PIDS[i]=
  MIG_REPAIR_PIDS[i]=
}

# mig_migrate FROM TO [qmp.py migrate options...]: migrates the guest from QEMU FROM to QEMU TO over a
# UNIX socket and prints qmp.py's MIGRATE line (also in MIG_LINE; migrate-FROM-TO.log holds it all).
# Returns qmp.py's status: 0 when the outcome is the one expected (--expect completed, the default,
# or failed). Completed: the guest runs on TO from here on, and FROM is stopped (mig_stop). Failed as
# expected: the guest stays on FROM, and TO (which gives up by itself) is stopped.
mig_migrate() {
  local from=$1 to=$2 rc=0
  shift 2
  local log=$MIG_DIR/migrate-$from-$to.log
  python3 "$MIG_LIB_DIR/qmp.py" migrate "$MIG_DIR/qmp-$from.sock" "$MIG_DIR/qmp-$to.sock" \
    "unix:$MIG_DIR/mig-$from-$to.sock" "$@" >"$log" 2>&1 || rc=$?
  MIG_LINE=$(grep -m 1 '^MIGRATE ' "$log" || true)
  echo "migration $from -> $to: ${MIG_LINE:-no result: $(tail -n 1 "$log")}"
  ((rc == 0)) || return $rc
  if [[ $MIG_LINE == *" status=completed "* ]]; then
    MIG_HOPS+=("$to")
    GUEST_QEMU_PID=${MIG_QEMU_PIDS[to]}
    mig_stop "$from"
  else
    _mig_wait_for "! kill -0 ${MIG_QEMU_PIDS[to]} 2>/dev/null" 10 || true
    mig_stop "$to"
  fi
}

# mig_field LINE KEY: the value of KEY=VALUE in LINE.
mig_field() { sed -n "s/.*[ ]$2=\([^ ]*\).*/\1/p" <<<" $1"; }

# mig_console: the guest's console so far, over every QEMU it ran on, as text; prints its path.
mig_console() {
  local i
  for i in "${MIG_HOPS[@]}"; do tr -d '\r' <"$MIG_DIR/console-$i.log"; done >"$MIG_DIR/console.txt"
  echo "$MIG_DIR/console.txt"
}

# mig_wait_console PATTERN SECONDS: until a line of the console matches the extended regex; fails
# the test at the deadline or if the guest's QEMU exits meanwhile.
mig_wait_console() {
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    grep -Eq -- "$1" "$(mig_console)" && return 0
    kill -0 "$GUEST_QEMU_PID" 2>/dev/null || mig_fail "the guest's QEMU exited before '$1'"
    sleep 0.2
  done
  mig_fail "no line matching '$1' on the guest's console within $2 s"
}

# mig_expect PATTERN [MESSAGE]: fails unless a line of the console matches the extended regex.
mig_expect() {
  local why="no line matching '$1' on the guest's console"
  grep -Eq -- "$1" "$(mig_console)" || mig_fail "${2:-$why}"
}

# mig_guest_line PATTERN: the first console line matching the extended regex (or nothing).
mig_guest_line() { grep -E -m 1 -- "$1" "$(mig_console)" || true; }

# mig_phase N: the guest's `phase N` (and any lower) returns from now on.
mig_phase() {
  echo "$1" >"$MIG_DIR/phase.new" && mv -f "$MIG_DIR/phase.new" "$MIG_DIR/phase"
}

# mig_wait_guest SECONDS: until the guest powers off (its QEMU exits 0); then its vunet must exit 0.
mig_wait_guest() {
  local rc=0 last=${MIG_HOPS[-1]}
  guest_wait "$1" || rc=$?
  ((rc != 124)) || mig_fail "the guest did not power off within $1 s"
  ((rc == 0)) || mig_fail "QEMU $last exited with status $rc"
  MIG_QEMU_PIDS[last]=
  mig_stop_vunet "$last"
}

# mig_icmp_on: true if vunet 0 said ICMP echo runs (ping sockets allowed where it runs).
mig_icmp_on() { grep -q 'ICMP echo: on' "$MIG_DIR/vunet-0.log"; }

# mig_state_line N: the line vunet N logs when it loaded a migrated state (MIG_STATE_PATTERN, an
# extended regex), or nothing.
MIG_STATE_PATTERN=${MIG_STATE_PATTERN:-'migration: loaded [0-9]+ flows, [0-9]+ bytes in [0-9.]+ ms'}
mig_state_line() { grep -E -m 1 -- "$MIG_STATE_PATTERN" "$MIG_DIR/vunet-$1.log" || true; }

# mig_state_bytes N: the device state's size that went through proxy N (MIG_PROXY=count), or -1.
mig_state_bytes() {
  local n
  n=$(sed -n 's/.*state: load \([0-9]*\) bytes copied.*/\1/p' "$MIG_DIR/trace-$1.log" 2>/dev/null |
    head -n 1)
  echo "${n:--1}"
}

# mig_trace_count N REQUEST: how many times the frontend of vunet N sent REQUEST (trace-N.log).
mig_trace_count() { grep -c " F>B $2 " "$MIG_DIR/trace-$1.log" 2>/dev/null || true; }
