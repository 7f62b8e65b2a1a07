#!/usr/bin/env bash
# shellcheck disable=SC2119  # fault_lib.sh functions take optional arguments.
# The soak: vunet (optimized, confined as users run it) serves a Linux network stack as its guest
# (tools/vu_frontend:tap_bridge in a network namespace) for SECONDS while the guest churns:
#   - short TCP connections to a host-loopback echo server, as fast as --tcp-workers threads in each
#     of --tcp-procs processes go (1 B to 16 KiB each way, every byte checked);
#   - short UDP flows, each from a new socket (a new flow in vunet): --dns-rate per second to port 53
#     (vunet ends those 10 s after the answer) and --udp-rate per second to another port (180 s idle
#     timeout), every datagram checked;
#   - long flows: one TCP connection and one UDP socket exchanging all along.
# vunet's VmRSS, heap, open fds (flow sockets and the rest) and mappings are sampled every
# --interval seconds. After the warm-up (a fifth of the run, at least 30 s) the fds other than flow
# sockets and the mappings must not grow, the flow sockets must stay within what the workload can
# keep open, and heap and VmRSS must stay within --rss-bound-kb of the warm-up's maxima; every
# connection must close cleanly (no RST for a segment of a flow vunet ended). Prints a summary
# (connections/s, flows, RSS and fd ranges) and vunet's counters; exits 1 on a failure.
#
#   tests/soak/soak.sh 300                 # as root; builds //tools:vunet and tap_bridge with -c opt
#   tests/soak/soak.sh 60 --vunet PATH --tap-bridge PATH   # binaries built elsewhere
set -euo pipefail

here=$(dirname "$(realpath "$0")")
seconds=300
vunet=
bridge=
tcp_procs=2
tcp_workers=2
dns_rate=20
udp_rate=2
interval=2
rss_bound_kb=4096
usage() { sed -n '3,20p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --vunet) vunet=$2; shift ;;
    --tap-bridge) bridge=$2; shift ;;
    --tcp-procs) tcp_procs=$2; shift ;;
    --tcp-workers) tcp_workers=$2; shift ;;
    --dns-rate) dns_rate=$2; shift ;;
    --udp-rate) udp_rate=$2; shift ;;
    --interval) interval=$2; shift ;;
    --rss-bound-kb) rss_bound_kb=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    [0-9]*) seconds=$1 ;;
    *) echo "soak: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if ((EUID != 0)); then
  echo "soak: needs root (network namespaces, a tap device)" >&2
  exit 2
fi

bin=$(mktemp -d /tmp/vunet_soak_bin.XXXXXX)
trap 'rm -rf "$bin"' EXIT
if [[ -z $vunet || -z $bridge ]]; then
  echo "soak: building //tools:vunet and //tools/vu_frontend:tap_bridge (-c opt)"
  (cd "$here/../.." && bazel build -c opt //tools:vunet //tools/vu_frontend:tap_bridge >"$bin/build.log" 2>&1) ||
    { cat "$bin/build.log"; exit 1; }
  out=$(cd "$here/../.." && bazel info -c opt bazel-bin 2>/dev/null)
  vunet=${vunet:-$out/tools/vunet}
  bridge=${bridge:-$out/tools/vu_frontend/tap_bridge}
fi
# Copies: a build meanwhile cannot change them under us.
cp "$vunet" "$bin/vunet"
cp "$bridge" "$bin/tap_bridge"

# shellcheck source=tests/faults/fault_lib.sh
source "$here/../faults/fault_lib.sh"
fl_init vunet_soak "$bin/vunet" "$bin/tap_bridge"
trap '_fl_cleanup; rm -rf "$bin"' EXIT
port=5001
warmup=$((seconds / 5 > 30 ? seconds / 5 : 30))
((seconds > warmup + 10)) || { echo "soak: run for more than $((warmup + 10)) s" >&2; exit 2; }

fl_start_vunet
fl_start_server "$port"
fl_start_server 53
fl_start_bridge
# The guest's ephemeral ports and TIME_WAIT must not be what limits the churn.
fl_guest sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=1
fl_serving "$port"

churn=()
for i in $(seq "$tcp_procs"); do
  extra=()
  ((i == 1)) && extra=(--dns-rate "$dns_rate" --udp-rate "$udp_rate" --long)
  fl_guest_bg "churn$i.log" "${FL_TRAFFIC[@]}" churn --host "$FL_GATEWAY" --port "$port" \
    --seconds "$seconds" --tcp-workers "$tcp_workers" --seed "$i" "${extra[@]}"
  churn+=("$FL_LAST_PID")
done
echo "soak: $seconds s: $tcp_procs x $tcp_workers TCP workers, $dns_rate UDP flows/s to port 53," \
  "$udp_rate/s to port $port, 2 long flows; samples every $interval s, warm-up $warmup s"

: >"$FL_DIR/samples.txt"
start=$SECONDS
shown=-30
while :; do
  t=$((SECONDS - start))
  kill -0 "$FL_VUNET_PID" 2>/dev/null || fl_fail "vunet died"
  kill -0 "$FL_BRIDGE_PID" 2>/dev/null || fl_fail "tap_bridge died"
  line=$(fl_probe) || fl_fail "could not probe vunet"
  echo "t=$t $line" >>"$FL_DIR/samples.txt"
  if ((t - shown >= 30)); then
    shown=$t
    echo "soak: ${t}s $line; $(tail -n 1 "$FL_DIR/churn1.log" | cut -d: -f2-)"
  fi
  running=0
  for pid in "${churn[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  ((running)) || break
  sleep "$interval"
done
for pid in "${churn[@]}"; do
  wait "$pid" || fl_fail "a churn client failed: $(tail -n 3 "$FL_DIR"/churn*.log)"
done

# The workload's ceiling of open flows: a connection per TCP worker and the long one; the UDP flows
# of the last 10 s (port 53) and 180 s (others), with slack for the timers' granularity and retries.
ceiling=$((tcp_procs * tcp_workers + 1 + dns_rate * 15 + udp_rate * 190 + 10))
verdict=0
python3 "$here/soak_check.py" --samples "$FL_DIR/samples.txt" --warmup "$warmup" --seconds "$seconds" \
  --flow-ceiling "$ceiling" --rss-bound-kb "$rss_bound_kb" "$FL_DIR"/churn*.log || verdict=1

# The TCP flows end with their connections.
drained=$(fl_wait_flows tcp 0 20)
echo "  after the churn: $drained"
if (($(fl_field "$drained" tcp) != 0)); then
  echo "soak: FAILED: TCP flow sockets left:"
  fl_host ss -tanpi | grep -A1 "pid=$FL_VUNET_PID," | sed 's/^/  /'
  verdict=1
fi
fl_stop_vunet  # Fails if the sandbox refused a syscall.
echo "vunet's counters:"
grep -E "tcp: |udp: " "$FL_DIR/vunet.log" | tail -n 2 | cut -c14- | fold -s -w 110 | sed 's/^/  /'
# Every connection closes cleanly: a segment for a flow vunet already ended (answered with an RST)
# means a close went wrong (e.g. the guest's FIN left unacknowledged).
connects=$(fl_counter "connects")
no_flow=$(fl_counter "for no flow")
if ((no_flow > connects / 1000)); then
  echo "soak: FAILED: $no_flow RSTs for segments of no flow in $connects connections"
  verdict=1
fi
exit "$verdict"
