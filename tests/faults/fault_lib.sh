# shellcheck shell=bash
# Shell functions for vunet's fault tests and soak (tests/faults/, tests/soak/): the vunet binary, confined
# as users run it, serving a Linux network stack as its guest (tools/vu_frontend:tap_bridge in a network
# namespace), host servers and guest clients from traffic.py, and what vunet holds from probe.py.
#
#   source fault_lib.sh
#   fl_init faults_reset VUNET TAP_BRIDGE     # $FL_DIR, two namespaces, traps; skips without root
#   fl_start_vunet                            # extra vunet args after it; FL_VUNET_PREFIX=(prlimit ...)
#   fl_start_bridge                           # tap_bridge in the guest namespace, address and route set
#   fl_host_bg server.log "${FL_TRAFFIC[@]}" server --port 5001   # a host-side process, stopped at exit
#   fl_guest "${FL_TRAFFIC[@]}" bulk --host 10.0.2.2 --port 5001 --up 1000 --down 1000
#   before=$(fl_probe); ...; fl_check_leaks "$before" "$(fl_probe)"
#   fl_stop_vunet                             # SIGTERM: exits 0, its counters in $FL_DIR/vunet.log
#
# Namespaces, both made here and removed on every exit path:
#   host:  vunet, and the servers its guest reaches on "the host's loopback" (the gateway address);
#   guest: the tap device (vunet0) and the clients.
# vunet runs with its sandbox on (started as root it becomes nobody, in namespaces of its own, under
# seccomp): the socket lives in $FL_DIR, which it opens before it drops root.

FL_DIR=
FL_HOST_NS=
FL_GUEST_NS=
FL_VUNET=
FL_BRIDGE=
FL_VUNET_PID=
FL_BRIDGE_PID=
FL_PIDS=()
FL_VUNET_PREFIX=()
FL_GUEST_IP=10.0.2.15
FL_GATEWAY=10.0.2.2
FL_GUEST_MAC=9a:55:9a:55:9a:56
FL_LIB_DIR=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
FL_TRAFFIC=(python3 "$FL_LIB_DIR/traffic.py")
FL_PROBE=(python3 "$FL_LIB_DIR/probe.py")

# fl_stop_pid PID: SIGTERM, then SIGKILL after 2 s; reaped.
fl_stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

_fl_cleanup() {
  local pid
  for pid in ${FL_PIDS[@]+"${FL_PIDS[@]}"}; do fl_stop_pid "$pid"; done
  fl_stop_pid "$FL_BRIDGE_PID"
  fl_stop_pid "$FL_VUNET_PID"
  [[ -n $FL_GUEST_NS ]] && ip netns del "$FL_GUEST_NS" 2>/dev/null
  [[ -n $FL_HOST_NS ]] && ip netns del "$FL_HOST_NS" 2>/dev/null
  [[ -n $FL_DIR && -z ${FL_KEEP:-} ]] && rm -rf "$FL_DIR"
  return 0
}

# fl_init NAME VUNET TAP_BRIDGE: checks what the test needs (exit 0 with a SKIPPED line without it),
# makes $FL_DIR and the namespaces, sets the traps.
fl_init() {
  FL_VUNET=$(realpath "$2")
  FL_BRIDGE=$(realpath "$3")
  if ((EUID != 0)) || [[ ! -c /dev/net/tun ]] || ! command -v ip >/dev/null ||
    ! command -v python3 >/dev/null; then
    echo "SKIPPED: needs root, /dev/net/tun, ip (iproute2) and python3"
    exit 0
  fi
  # Under AddressSanitizer freed memory waits in a quarantine (up to 256 MiB): heap bounds loosen.
  FL_SANITIZED=no
  grep -qaE "libasan\.so|AddressSanitizer" "$FL_VUNET" && FL_SANITIZED=yes
  FL_DIR=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$FL_DIR"
  FL_HOST_NS=vunet-$1-host-$$
  FL_GUEST_NS=vunet-$1-guest-$$
  trap _fl_cleanup EXIT
  trap 'exit 1' INT TERM HUP
  ip netns add "$FL_HOST_NS" || fl_fail "ip netns add failed (outside Bazel's sandbox: tag the test local)"
  ip netns add "$FL_GUEST_NS" || fl_fail "ip netns add $FL_GUEST_NS failed"
  fl_host ip link set lo up
  fl_guest ip link set lo up
}

# fl_fail MESSAGE: prints it, the tail of every log in $FL_DIR, and exits 1.
fl_fail() {
  echo "FAIL: $*"
  local log
  for log in "$FL_DIR"/*.log; do
    [[ -f $log ]] || continue
    echo "--- $(basename "$log") (last 40 lines):"
    tail -n 40 "$log"
  done
  exit 1
}

fl_host() { ip netns exec "$FL_HOST_NS" "$@"; }
fl_guest() { ip netns exec "$FL_GUEST_NS" "$@"; }

# fl_host_bg LOG CMD...: CMD in the host namespace, in the background (output in $FL_DIR/LOG); its pid
# in FL_LAST_PID, stopped at exit.
fl_host_bg() {
  local log=$FL_DIR/$1
  shift
  ip netns exec "$FL_HOST_NS" "$@" >"$log" 2>&1 </dev/null &
  FL_LAST_PID=$!
  FL_PIDS+=("$FL_LAST_PID")
}

# fl_guest_bg LOG CMD...: likewise in the guest namespace.
fl_guest_bg() {
  local log=$FL_DIR/$1
  shift
  ip netns exec "$FL_GUEST_NS" "$@" >"$log" 2>&1 </dev/null &
  FL_LAST_PID=$!
  FL_PIDS+=("$FL_LAST_PID")
}

# fl_wait_log FILE PATTERN [SECONDS]: until grep -E finds PATTERN in FILE (default 10 s).
fl_wait_log() {
  local tries=$((${3:-10} * 20))
  for _ in $(seq "$tries"); do
    grep -Eq "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# fl_start_server PORT: traffic.py's server on 127.0.0.1:PORT (TCP and UDP) in the host namespace.
fl_start_server() {
  fl_host_bg "server$1.log" "${FL_TRAFFIC[@]}" server --port "$1"
  fl_wait_log "$FL_DIR/server$1.log" "listening" 10 || fl_fail "the server on port $1 did not start"
}

# fl_start_vunet [ARGS...]: vunet in the host namespace (prefixed by FL_VUNET_PREFIX, e.g. prlimit),
# logging to $FL_DIR/vunet.log; waits until it listens and has entered its sandbox. FL_VUNET_PID.
fl_start_vunet() {
  local socket=$FL_DIR/vunet.sock
  # ip netns exec and prlimit exec the next command: $! is vunet's pid.
  ip netns exec "$FL_HOST_NS" ${FL_VUNET_PREFIX[@]+"${FL_VUNET_PREFIX[@]}"} "$FL_VUNET" -f \
    -s "$socket" -a "$FL_GUEST_IP" -n 24 -g "$FL_GATEWAY" -D 10.0.2.3 "$@" >"$FL_DIR/vunet.log" 2>&1 &
  FL_VUNET_PID=$!
  for _ in $(seq 200); do
    [[ -S $socket ]] && grep -q "sandbox: running as" "$FL_DIR/vunet.log" && break
    kill -0 "$FL_VUNET_PID" 2>/dev/null || break
    sleep 0.05
  done
  [[ -S $socket ]] || fl_fail "vunet did not listen on $socket"
  grep -q "sandbox: running as" "$FL_DIR/vunet.log" || fl_fail "vunet did not enter its sandbox"
}

# fl_start_bridge [ARGS...]: tap_bridge in the guest namespace (tap vunet0, vunet's guest MAC), then the
# guest's address and default route (a new tap each time: what the last one had went with it).
# FL_BRIDGE_PID; its log is $FL_DIR/bridge.log (appended).
fl_start_bridge() {
  local log=$FL_DIR/bridge.log
  touch "$log"
  local mark
  mark=$(grep -c 'running' "$log" || true)
  ip netns exec "$FL_GUEST_NS" "$FL_BRIDGE" --socket "$FL_DIR/vunet.sock" --tap vunet0 \
    --mac "$FL_GUEST_MAC" "$@" >>"$log" 2>&1 &
  FL_BRIDGE_PID=$!
  for _ in $(seq 200); do
    (($(grep -c 'running' "$log" || true) > mark)) && break
    kill -0 "$FL_BRIDGE_PID" 2>/dev/null || break
    sleep 0.05
  done
  (($(grep -c 'running' "$log" || true) > mark)) || fl_fail "tap_bridge did not start"
  fl_guest ip addr add "$FL_GUEST_IP/24" dev vunet0
  fl_guest ip route add default via "$FL_GATEWAY" dev vunet0
}

# fl_probe: probe.py's line for vunet (fds=... rss_kb=...).
fl_probe() { "${FL_PROBE[@]}" "$FL_VUNET_PID"; }

# fl_field LINE KEY: a value of a probe line.
fl_field() { sed -n "s/.*\b$2=\([0-9]*\).*/\1/p" <<<"$1"; }

# fl_wait_flows KIND N [SECONDS]: until vunet holds at most N flow sockets of KIND (tcp, udp or flow_fds
# for both; default 20 s); prints the last probe line.
fl_wait_flows() {
  local line end=$((SECONDS + ${3:-20}))
  while :; do
    line=$(fl_probe)
    (($(fl_field "$line" "$1") <= $2 || SECONDS >= end)) && break
    sleep 0.1
  done
  echo "$line"
}

# fl_check_leaks BEFORE AFTER [RSS_KB]: the fds that are not flow sockets are as many as before; heap
# (RssAnon) and VmRSS less the guest memory's share grew by at most RSS_KB (default 2048; 64 MiB
# under AddressSanitizer, whose quarantine holds freed memory); no more mappings than before. Prints
# both lines.
fl_check_leaks() {
  local before=$1 after=$2 bound=${3:-2048}
  [[ $FL_SANITIZED == yes ]] && bound=65536
  echo "before: $before"
  echo "after:  $after"
  (($(fl_field "$after" other_fds) == $(fl_field "$before" other_fds))) ||
    fl_fail "vunet's fds other than flow sockets went from $(fl_field "$before" other_fds) to" \
      "$(fl_field "$after" other_fds)"
  (($(fl_field "$after" maps) <= $(fl_field "$before" maps))) ||
    fl_fail "vunet's mappings went from $(fl_field "$before" maps) to $(fl_field "$after" maps)"
  local anon=$(($(fl_field "$after" anon_kb) - $(fl_field "$before" anon_kb)))
  ((anon <= bound)) || fl_fail "vunet's heap (RssAnon) grew by $anon kB (bound $bound kB)"
  local rss=$(($(fl_field "$after" rss_kb) - $(fl_field "$after" shmem_kb) -
    $(fl_field "$before" rss_kb) + $(fl_field "$before" shmem_kb)))
  ((rss <= bound)) || fl_fail "vunet's RSS outside guest memory grew by $rss kB (bound $bound kB)"
}

# fl_serving PORT: vunet still serves: a new TCP connection moves 1 MiB each way byte-exact, and a new
# UDP flow is echoed.
fl_serving() {
  local out
  out=$(fl_guest timeout 30 "${FL_TRAFFIC[@]}" bulk --host "$FL_GATEWAY" --port "$1" --up 1048576 \
    --down 1048576 --seed 77 2>&1) || fl_fail "a new TCP connection failed: $out"
  echo "serving: $out"
  out=$(fl_guest timeout 20 "${FL_TRAFFIC[@]}" udp --host "$FL_GATEWAY" --port "$1" --count 5 2>&1) ||
    fl_fail "a new UDP flow failed: $out"
  echo "serving: $out"
}

# fl_wait_pid PID SECONDS: until PID exits; its status in FL_RC (124 if it did not exit).
fl_wait_pid() {
  local pid=$1
  for _ in $(seq $(($2 * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    FL_RC=124
    return
  fi
  FL_RC=0
  wait "$pid" || FL_RC=$?
}

# fl_stop_vunet: SIGTERM; vunet must exit 0 within 5 s (its counters are then in vunet.log), and its
# sandbox must not have refused a syscall meanwhile (what vunet does under a fault is allowed too).
fl_stop_vunet() {
  kill "$FL_VUNET_PID"
  fl_wait_pid "$FL_VUNET_PID" 5
  ((FL_RC == 0)) || fl_fail "vunet exited $FL_RC on SIGTERM"
  FL_VUNET_PID=
  ! grep -q "refused syscall" "$FL_DIR/vunet.log" ||
    fl_fail "the sandbox refused: $(grep -m 3 "refused syscall" "$FL_DIR/vunet.log")"
}

# fl_counter LABEL: the first counter "N LABEL" in vunet's log (its exit lines: "tcp: ..., 3 table full, ...").
fl_counter() { grep -oE "[0-9]+ $1" "$FL_DIR/vunet.log" | head -1 | awk '{print $1}'; }
