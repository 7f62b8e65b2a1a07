# shellcheck shell=bash
# Shell functions for tests that boot a real Linux guest whose only NIC is a vhost-user virtio-net
# device: source this file, then
#
#   guest_have_qemu || { echo "SKIPPED: ..."; exit 0; }
#   guest_fetch path/to/fetch_guest.sh       # sets GUEST_KERNEL, GUEST_INITRAMFS
#   guest_initrd my_script.sh "$dir/initrd"  # the guest runs my_script.sh as /test.sh
#   guest_start "$socket" "$dir/initrd" "$dir/console.log" "$dir/qemu.log"   # sets GUEST_QEMU_PID
#   guest_wait 150                           # until the guest powers off; 124 on timeout
#
# The caller owns the backend listening on $socket and kills GUEST_QEMU_PID on its exit paths.
# QEMU runs under TCG (KVM cannot run a stock kernel on these machines), with the guest memory in a
# shared memfd (vhost-user maps it). The tests run on QEMU 10 (tools/setup installs it from
# bookworm-backports), where virtio-net-pci with vhost-user uses MSI-X under TCG as it does under KVM;
# Debian 12's own QEMU 7.2 crashes there and needs GUEST_VECTORS=0 (INTx). The guest's console (ttyS0)
# goes to a file; see fetch_guest.sh for the markers its /init prints.
#
# Settings (environment): GUEST_MAC (52:54:00:12:34:56), GUEST_MEMORY (512M), GUEST_VECTORS (the
# device's MSI-X vectors; QEMU's default if unset, 0 for QEMU 7.2),
# GUEST_APPEND (more kernel parameters), GUEST_NET_OPTS (more virtio-net-pci properties,
# comma-separated: guest_tso4=off,host_tso4=off... turn offloads off on QEMU's side), GUEST_REBOOT
# (yes: a guest reboot resets the machine and QEMU goes on; by default QEMU exits on reboot), VUNET_CACHE (the cache's parent, as fetch_guest.sh),
# GUEST_QMP (a path: a QMP socket there, -qmp unix:PATH,server=on,wait=off), GUEST_INCOMING (QEMU's
# -incoming value, e.g. defer: a migration destination, started with the same arguments).

# Bazel runs tests without HOME: the cache is then the account's, shared by every run and checkout.
if [[ -z ${VUNET_CACHE:-} ]]; then
  _guest_home=${HOME:-$(getent passwd "$(id -u)" | cut -d : -f 6)}
  export VUNET_CACHE=${_guest_home:-/tmp}/.cache/vunet
fi
GUEST_CACHE=$VUNET_CACHE/guest
GUEST_KERNEL=
GUEST_INITRAMFS=
GUEST_QEMU_PID=

# True if QEMU (and busybox, which builds the script archive) are installed.
guest_have_qemu() {
  command -v qemu-system-x86_64 >/dev/null && command -v busybox >/dev/null
}

# Runs fetch_guest.sh and sets GUEST_KERNEL (the uncompressed kernel when there is one: it boots
# seconds sooner under TCG) and GUEST_INITRAMFS.
guest_fetch() {
  "$1" || return 1
  GUEST_INITRAMFS=$GUEST_CACHE/initramfs.cpio.gz
  GUEST_KERNEL=$GUEST_CACHE/vmlinuz
  [[ -f $GUEST_CACHE/vmlinux ]] && GUEST_KERNEL=$GUEST_CACHE/vmlinux
  [[ -f $GUEST_KERNEL && -f $GUEST_INITRAMFS ]]
}

# Writes to OUT the initramfs followed by a second archive holding SCRIPT as /test.sh (the kernel
# unpacks both, the second over the first).
guest_initrd() {
  local script=$1 out=$2 stage
  stage=$(mktemp -d "${out%/*}/initrd-stage.XXXXXX") || return 1
  cp "$script" "$stage/test.sh" && chmod 755 "$stage/test.sh" &&
    (cd "$stage" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) | gzip >"$stage.cpio.gz" &&
    cat "$GUEST_INITRAMFS" "$stage.cpio.gz" >"$out"
  local rc=$?
  rm -rf "$stage" "$stage.cpio.gz"
  return $rc
}

# Boots the guest in the background with one NIC, the vhost-user device on SOCKET (someone must listen
# there). Sets GUEST_QEMU_PID. The guest's test script gets TIMEOUT seconds (default 120).
guest_start() {
  local socket=$1 initrd=$2 console=$3 qemu_log=$4 timeout=${5:-120}
  local memory=${GUEST_MEMORY:-512M} no_reboot=-no-reboot
  [[ ${GUEST_REBOOT:-no} == yes ]] && no_reboot=
  local extra=()
  [[ -n ${GUEST_QMP:-} ]] && extra+=(-qmp "unix:$GUEST_QMP,server=on,wait=off")
  [[ -n ${GUEST_INCOMING:-} ]] && extra+=(-incoming "$GUEST_INCOMING")
  qemu-system-x86_64 \
    -accel tcg -machine pc -smp 1 -m "$memory" \
    -object "memory-backend-memfd,id=mem,size=$memory,share=on" -numa node,memdev=mem \
    -nodefaults -nographic -monitor none -serial "file:$console" ${no_reboot:+"$no_reboot"} \
    -kernel "$GUEST_KERNEL" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet vunet.timeout=$timeout ${GUEST_APPEND:-}" \
    -chardev "socket,id=chr0,path=$socket" \
    -netdev vhost-user,id=net0,chardev=chr0 \
    -device "virtio-net-pci,netdev=net0,${GUEST_VECTORS:+vectors=$GUEST_VECTORS,}mac=${GUEST_MAC:-52:54:00:12:34:56},romfile=${GUEST_NET_OPTS:+,$GUEST_NET_OPTS}" \
    ${extra[@]+"${extra[@]}"} </dev/null >"$qemu_log" 2>&1 &
  GUEST_QEMU_PID=$!
}

# Waits up to SECONDS for QEMU to exit (the guest powered off); returns QEMU's status, or 124 if it is
# still running (it is left running: the caller's cleanup kills it). Clears GUEST_QEMU_PID once QEMU
# has exited. While waiting, runs the command ON_TICK (if given) about five times a second.
guest_wait() {
  local seconds=$1 on_tick=${2:-}
  local deadline=$(($(date +%s) + seconds))
  while kill -0 "$GUEST_QEMU_PID" 2>/dev/null; do
    [[ -n $on_tick ]] && $on_tick
    (($(date +%s) <= deadline)) || return 124
    sleep 0.2
  done
  local rc=0
  wait "$GUEST_QEMU_PID" || rc=$?
  GUEST_QEMU_PID=
  return $rc
}

# Stops each PID given: TERM, up to 2 s to go, then KILL; reaps them.
guest_stop_pids() {
  local pid
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    for _ in $(seq 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# Prints "FAIL: MESSAGE" and each log file given (with its name), then exits 1.
guest_fail() {
  local message=$1 log
  shift
  echo "FAIL: $message"
  for log in "$@"; do
    echo "--- $(basename "$log"):"
    cat "$log" 2>/dev/null || true
  done
  exit 1
}

guest_now() { date +%s.%N; }
guest_elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
