#!/usr/bin/env bash
# Prepares what a test guest boots: a Debian kernel and a busybox initramfs that brings up the virtio-net
# device (our vhost-user NIC) and runs a test script. Idempotent and silent when everything is cached;
# prints only on failure (and a warning when it has to fall back to a cached kernel).
#
# Cache (outside the repository), ${VUNET_CACHE:-$HOME/.cache/vunet}/guest/:
#   vmlinuz               the kernel (a symlink into kernel/)
#   vmlinux               the same, uncompressed with a PVH entry point, if it could be extracted:
#                         boot this one when present (QEMU's -kernel takes it; saves ~7 s under TCG)
#   kernel.resolved       the package apt resolved, remembered until the package lists change
#   initramfs.cpio.gz     busybox, the virtio-net modules, /init (and iperf3 if the host has it)
#   initramfs.key         what initramfs.cpio.gz was built from; a different key rebuilds it
#   kernel/PACKAGE_VERSION/
#       vmlinuz config modules.builtin modules.order   from the package
#       vmlinux            vmlinuz uncompressed (xz-compressed kernels with CONFIG_PVH only)
#       modules/*.ko       the modules virtio-net over PCI needs that the kernel does not build in
#       modules.dep        their dependencies (depmod's format, for those modules only)
#       modules.load       the order to insmod them in
#   .lock                 serializes concurrent runs
#
# The kernel is the versioned linux-image-6.1.*-amd64 package that linux-image-amd64 depends on,
# fetched with `apt-get download` and unpacked with `dpkg -x`: never installed. The .deb carries no
# modules.dep (depmod runs at install time, and kmod may not be installed), so the dependencies come from
# each module's own modinfo `depends=` field, the data depmod builds modules.dep from.
#
# The guest's /init: mounts devtmpfs, proc, sysfs and /tmp; insmods the modules in dependency order;
# brings lo and eth0 up; runs the test script (vunet.script=PATH on the kernel command line, default
# /test.sh: a test appends a second cpio archive holding it to the initrd) under a time limit
# (vunet.timeout=SECONDS, default 120); then `poweroff -f`. It prints markers on the console (ttyS0):
#   VUNET-INIT: start / modules loaded / eth0 up ... / VUNET-TEST: begin / VUNET-TEST: exit=N /
#   VUNET-INIT: poweroff
# With vunet.mode=commands the script is a list of shell commands, one a line, run one after the other
# in one shell by /bin/vunet-commands, each shown first as "guest# COMMAND" and followed by its output
# (and "(exit status N)" if it failed); "#" lines are printed as they are. The demo (tools/run --demo)
# uses it.
# `udhcpc -i eth0` works out of the box: /etc/udhcpc/default.script prints what it got as one line,
#   UDHCPC: bound ip=... mask=... router=... dns=... mtu=... lease=... serverid=...
# and configures eth0 with it (address, MTU, default route, /etc/resolv.conf).
#
# Needs: apt (apt-get, apt-cache), dpkg, busybox-static (/bin/busybox), gzip; iperf3 optional.
set -euo pipefail

# Bazel runs tests without HOME: then the account's home directory.
home=${HOME:-$(getent passwd "$(id -u)" | cut -d : -f 6)}
cache=${VUNET_CACHE:-${home:-/tmp}/.cache/vunet}/guest
meta_package=linux-image-amd64
# Modules virtio-net over PCI needs; those built into the kernel are skipped.
wanted_modules=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover
  net_failover virtio_net)

die() {
  echo "fetch_guest.sh: $*" >&2
  exit 1
}

for tool in apt-get apt-cache dpkg gzip sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
busybox=/bin/busybox
[[ -x $busybox ]] || busybox=$(command -v busybox || true)
[[ -n $busybox ]] || die "busybox is not installed (apt-get install busybox-static)"
ldd_out=$(LC_ALL=C ldd "$busybox" 2>&1 || true)
[[ $ldd_out == *"not a dynamic executable"* ]] ||
  die "$busybox is not statically linked (apt-get install busybox-static)"

mkdir -p "$cache/kernel"
exec 9>"$cache/.lock"
flock -w 900 9 || die "timed out waiting for $cache/.lock"

tmp=
cleanup() { [[ -n $tmp ]] && rm -rf "$tmp"; }
trap cleanup EXIT
tmp=$(mktemp -d "$cache/tmp.XXXXXX")
log=$tmp/log

# --- The kernel ------------------------------------------------------------------------------------

# Prints "PACKAGE VERSION" of the kernel linux-image-amd64 depends on, or nothing. apt-cache takes
# seconds here (no binary package cache is kept), so the answer is remembered until the package lists
# change.
resolve_kernel() {
  local package version stamp
  stamp=$(find /var/lib/apt/lists -maxdepth 1 -type f -printf '%f %s %T@\n' 2>/dev/null | sort |
    sha256sum | cut -c 1-32)
  if [[ -f $cache/kernel.resolved ]]; then
    local saved_stamp saved_package saved_version
    read -r saved_stamp saved_package saved_version <"$cache/kernel.resolved" || true
    if [[ $saved_stamp == "$stamp" && -n $saved_package && -n $saved_version ]]; then
      echo "$saved_package $saved_version"
      return 0
    fi
  fi
  package=$(apt-cache depends "$meta_package" 2>/dev/null |
    sed -n 's/^ *|\{0,1\}Depends: \(linux-image-6\.1\.[^ ]*-amd64\) *$/\1/p' | head -n 1)
  [[ -n $package ]] || return 0
  version=$(apt-cache policy "$package" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n 1)
  [[ -n $version && $version != "(none)" ]] || return 0
  echo "$stamp $package $version" >"$cache/kernel.resolved"
  echo "$package $version"
}

# Writes the uncompressed kernel (an ELF with a PVH entry point) out of the bzImage: QEMU boots it
# directly (-kernel vmlinux), which saves the guest decompressing itself, seconds under TCG. Only for an
# xz-compressed kernel built with CONFIG_PVH; otherwise writes nothing and vmlinuz is booted.
extract_vmlinux() {
  local bzimage=$1 config=$2 out=$3 offset
  grep -q '^CONFIG_PVH=y' "$config" && grep -q '^CONFIG_KERNEL_XZ=y' "$config" || return 0
  offset=$(LC_ALL=C grep -obUa $'\xfd7zXZ' "$bzimage" | head -n 1 | cut -d : -f 1)
  [[ -n $offset ]] || return 0
  if command -v xz >/dev/null; then
    tail -c +$((offset + 1)) "$bzimage" | xz -dc --single-stream >"$out.tmp" 2>>"$log" || true
  else
    tail -c +$((offset + 1)) "$bzimage" | "$busybox" unxz -c >"$out.tmp" 2>>"$log" || true
  fi
  if [[ $(head -c 4 "$out.tmp" | od -An -c | tr -d ' ') == '177ELF' ]]; then
    mv "$out.tmp" "$out"
  else
    echo "could not extract an ELF kernel from $bzimage; booting the bzImage" >>"$log"
    rm -f "$out.tmp"
  fi
}

# Downloads and unpacks PACKAGE=VERSION into kernel/PACKAGE_VERSION.
fetch_kernel() {
  local package=$1 version=$2 dest=$3
  local work=$tmp/kernel
  rm -rf "$work" && mkdir -p "$work/deb"
  # apt's _apt user needs to write the download directory.
  chmod 755 "$tmp" "$work" "$work/deb"
  (cd "$work/deb" && apt-get download -q "$package=$version") >>"$log" 2>&1 || return 1
  local deb
  local debs=("$work/deb"/*.deb)
  deb=${debs[0]}
  [[ -f $deb ]] || return 1
  dpkg -x "$deb" "$work/root" >>"$log" 2>&1 || return 1
  rm -f "$deb"

  local kver
  local releases=("$work/root/lib/modules"/*)
  kver=$(basename "${releases[0]}")
  local src=$work/root/lib/modules/$kver
  [[ -n $kver && -f $work/root/boot/vmlinuz-$kver && -f $src/modules.order ]] || {
    echo "unexpected layout in $package" >>"$log"
    return 1
  }
  local out=$work/out
  mkdir -p "$out/modules"
  cp "$work/root/boot/vmlinuz-$kver" "$out/vmlinuz"
  cp "$work/root/boot/config-$kver" "$out/config"
  extract_vmlinux "$out/vmlinuz" "$out/config" "$out/vmlinux"
  cp "$src/modules.builtin" "$src/modules.order" "$out/"
  echo "$kver" >"$out/release"

  # Which of the wanted modules are built in, and the closure of the others' dependencies.
  local -A path_of=() deps_of=() state=()
  local order=() builtin=()
  local name
  _module_path() { # name -> path relative to the module directory, from modules.order
    grep -m 1 -E "/$1\.ko(\.xz|\.zst)?$" "$src/modules.order" || true
  }
  _visit() {
    local m=$1 rel deps d
    case ${state[$m]:-} in
      done) return 0 ;;
      active)
        echo "module dependency cycle at $m" >>"$log"
        return 1
        ;;
    esac
    if grep -q -E "/$m\.ko$" "$src/modules.builtin"; then
      state[$m]="done"
      builtin+=("$m")
      return 0
    fi
    rel=$(_module_path "$m")
    [[ -n $rel && -f $src/$rel ]] || {
      echo "module $m is neither built in nor in the package" >>"$log"
      return 1
    }
    [[ $rel == *.ko ]] || {
      echo "module $m is compressed ($rel); not supported" >>"$log"
      return 1
    }
    state[$m]=active
    path_of[$m]=$rel
    deps=$(tr '\0' '\n' <"$src/$rel" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' ')
    deps_of[$m]=$deps
    for d in $deps; do
      _visit "${d//-/_}" || return 1
    done
    state[$m]="done"
    order+=("$m")
  }
  for name in "${wanted_modules[@]}"; do
    _visit "$name" || return 1
  done
  # modules.dep: each module with every module it needs, transitively, nearest last as depmod writes.
  _closure() {
    local m=$1 d
    for d in ${deps_of[$m]:-}; do
      d=${d//-/_}
      [[ -n ${path_of[$d]:-} ]] || continue
      _closure "$d"
      echo "$d"
    done
  }
  : >"$out/modules.dep"
  : >"$out/modules.load"
  for name in "${order[@]}"; do
    cp "$src/${path_of[$name]}" "$out/modules/$name.ko"
    local needs=() d seen=" "
    for d in $(_closure "$name" | tac); do
      [[ $seen == *" $d "* ]] && continue
      seen+="$d "
      needs+=("${path_of[$d]}")
    done
    echo "${path_of[$name]}:${needs[*]:+ ${needs[*]}}" >>"$out/modules.dep"
    echo "$name" >>"$out/modules.load"
  done
  printf "%s\n" ${builtin[@]+"${builtin[@]}"} | sed "/^$/d" >"$out/modules.builtin-wanted"
  rm -rf "$dest"
  mv "$out" "$dest"
}

cached_kernel=
if [[ -L $cache/vmlinuz && -f $cache/vmlinuz ]]; then
  cached_kernel=$(dirname "$(readlink -f "$cache/vmlinuz")")
fi

# Resolves the package and makes sure it is unpacked; sets kernel_dir.
kernel_dir=
resolved=
use_current_kernel() {
  local package version
  read -r package version < <(resolve_kernel; echo) || true
  if [[ -z $package ]]; then
    echo "apt-cache cannot resolve $meta_package (run apt-get update)" >>"$log"
    return 1
  fi
  resolved="$package=$version"
  local dir=$cache/kernel/${package}_$version
  [[ -f $dir/modules.load ]] || fetch_kernel "$package" "$version" "$dir" || return 1
  kernel_dir=$dir
}
if ! use_current_kernel; then
  if [[ -n $cached_kernel ]]; then
    echo "fetch_guest.sh: warning: could not fetch the kernel $meta_package depends on" \
      "(${resolved:-not resolvable}); using the cached $(basename "$cached_kernel")" >&2
    kernel_dir=$cached_kernel
  elif ((EUID == 0)) && apt-get update -q >>"$log" 2>&1 && use_current_kernel; then
    : # The package lists were missing or stale (the mirror had moved on).
  else
    cat "$log" >&2
    die "could not fetch the kernel that $meta_package depends on (${resolved:-not resolvable})"
  fi
fi
# Older caches: the uncompressed kernel came later.
if [[ ! -f $kernel_dir/vmlinux && ! -f $kernel_dir/vmlinux.none ]]; then
  extract_vmlinux "$kernel_dir/vmlinuz" "$kernel_dir/config" "$kernel_dir/vmlinux"
  [[ -f $kernel_dir/vmlinux ]] || touch "$kernel_dir/vmlinux.none"
fi
for image in vmlinuz vmlinux; do
  if [[ -f $kernel_dir/$image ]]; then
    if [[ $(readlink "$cache/$image" 2>/dev/null) != "$kernel_dir/$image" ]]; then
      ln -sfn "$kernel_dir/$image" "$tmp/$image.link"
      mv -fT "$tmp/$image.link" "$cache/$image"
    fi
  else
    rm -f "$cache/$image"
  fi
done

# --- The initramfs ---------------------------------------------------------------------------------

iperf3=$(command -v iperf3 || true)
iperf3_files=()
if [[ -n $iperf3 ]]; then
  iperf3_files=("$iperf3")
  while read -r lib; do
    [[ -n $lib ]] && iperf3_files+=("$lib")
  done < <(LC_ALL=C ldd "$iperf3" 2>/dev/null |
    sed -n -e 's/^.*=> \(\/[^ ]*\) (0x[0-9a-f]*)$/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x[0-9a-f]*)$/\1/p')
fi

# Everything the archive is made of: this script (it holds /init), the kernel, busybox, iperf3.
key=$( {
  sha256sum "$0" "$busybox" | cut -d ' ' -f 1
  echo "$kernel_dir"
  for f in "${iperf3_files[@]}"; do
    echo "$f $(sha256sum "$(readlink -f "$f")" | cut -d ' ' -f 1)"
  done
} | sha256sum | cut -d ' ' -f 1)

if [[ -f $cache/initramfs.cpio.gz && $(cat "$cache/initramfs.key" 2>/dev/null) == "$key" ]]; then
  exit 0
fi

root=$tmp/initramfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc/vunet,lib/modules}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox || -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
done
cp "$kernel_dir"/modules/*.ko "$root/lib/modules/"
cp "$kernel_dir/modules.load" "$root/etc/vunet/modules.load"
cp "$kernel_dir/release" "$root/etc/vunet/kernel-release"
for f in "${iperf3_files[@]}"; do
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "127.0.0.1 localhost" >"$root/etc/hosts"

mkdir -p "$root/etc/udhcpc"
cat >"$root/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
# udhcpc's event script: one line saying what the server gave, then eth0 configured with it.
echo "UDHCPC: $1 ip=${ip:-} mask=${mask:-} subnet=${subnet:-} router=${router:-} dns=${dns:-}" \
  "mtu=${mtu:-} lease=${lease:-} serverid=${serverid:-}"
case "$1" in
deconfig) ip -4 addr flush dev "$interface" ;;
bound | renew)
  ip -4 addr flush dev "$interface"
  ip -4 addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "${mtu:-}" ] && ip link set dev "$interface" mtu "$mtu"
  ip -4 route flush default 2>/dev/null
  for r in ${router:-}; do
    ip -4 route add default via "$r" dev "$interface" && break
  done
  : >/etc/resolv.conf
  for d in ${dns:-}; do echo "nameserver $d" >>/etc/resolv.conf; done
  ;;
esac
exit 0
EOF
chmod 755 "$root/etc/udhcpc/default.script"

cat >"$root/bin/vunet-commands" <<'EOF'
#!/bin/sh
# Runs the shell commands in FILE, one a line, in this one shell (so variables carry over), each shown
# as "guest# COMMAND" before its output. Lines starting with # are printed as they are. Exits 1 if any
# command failed.
rc=0
while IFS= read -r line <&3; do
  case $line in
  '') continue ;;
  '#'*)
    echo "$line"
    continue
    ;;
  esac
  echo "guest# $line"
  eval "$line" </dev/null
  status=$?
  if [ $status -ne 0 ]; then
    echo "(exit status $status)"
    rc=1
  fi
done 3<"$1"
exit $rc
EOF
chmod 755 "$root/bin/vunet-commands"

cat >"$root/init" <<'EOF'
#!/bin/sh
# vunet test guest: bring the virtio-net device up, run the test script, power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
echo "VUNET-INIT: start (kernel $(uname -r), uptime $(cut -d ' ' -f 1 /proc/uptime) s)"

script=/test.sh
limit=120
mode=script
for arg in $(cat /proc/cmdline); do
  case $arg in
    vunet.script=*) script=${arg#vunet.script=} ;;
    vunet.timeout=*) limit=${arg#vunet.timeout=} ;;
    vunet.mode=*) mode=${arg#vunet.mode=} ;;
  esac
done

finish() {
  echo "VUNET-INIT: poweroff"
  sync
  poweroff -f
  sleep 5
}

loaded=
for m in $(cat /etc/vunet/modules.load); do
  if ! insmod "/lib/modules/$m.ko"; then
    echo "VUNET-INIT: FAILED insmod $m"
    finish
  fi
  loaded="$loaded $m"
done
echo "VUNET-INIT: modules loaded:$loaded"

i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
if [ ! -e /sys/class/net/eth0 ]; then
  echo "VUNET-INIT: FAILED no eth0"
  ls /sys/class/net
  finish
fi
ip link set lo up
ip link set eth0 up
echo "VUNET-INIT: eth0 up mac $(cat /sys/class/net/eth0/address)" \
  "driver $(basename "$(readlink /sys/class/net/eth0/device/driver)")" \
  "features $(cat /sys/class/net/eth0/device/features 2>/dev/null)"

if [ -f "$script" ]; then
  echo "VUNET-TEST: begin $script (limit ${limit} s)"
  if [ "$mode" = commands ]; then
    timeout "$limit" sh /bin/vunet-commands "$script"
  else
    timeout "$limit" sh "$script"
  fi
  rc=$?
  echo "VUNET-TEST: exit=$rc"
else
  echo "VUNET-TEST: no script at $script"
fi
finish
EOF
chmod 755 "$root/init"

(cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>>"$log" | gzip -6) \
  >"$tmp/initramfs.cpio.gz" || {
  cat "$log" >&2
  die "could not build the initramfs"
}
mv -f "$tmp/initramfs.cpio.gz" "$cache/initramfs.cpio.gz"
echo "$key" >"$cache/initramfs.key"
