#include "tools/vunet/cli.h"

#include <sys/un.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

// Values are strings and are checked in OptionsFromFlags, so that a bad one
// gets our one-line error rather than Abseil's.
ABSL_FLAG(bool, vhost_user, true, "vhost-user mode (the only mode; accepted for passt's users)");
ABSL_FLAG(std::string, socket, "", "the vhost-user socket");
ABSL_FLAG(bool, foreground, false, "stay in the foreground");
ABSL_FLAG(bool, one_off, false, "serve one frontend, then exit");
ABSL_FLAG(std::string, pid, "", "write the process id to this file");
ABSL_FLAG(std::string, pcap, "", "capture the guest's frames both ways to this file (libpcap)");
ABSL_FLAG(bool, quiet, false, "log errors only");
ABSL_FLAG(bool, debug, false, "log debugging lines too");
ABSL_FLAG(bool, print_capabilities, false, "print the vhost-user capabilities and exit");
ABSL_FLAG(std::string, runas, "", "USER[:GROUP] to run as when started as root (default nobody)");
ABSL_FLAG(bool, no_sandbox, false, "no confinement (identity, namespaces, seccomp): debugging");
ABSL_FLAG(std::string, max_flows, "", "TCP and UDP flows at a time, at most");
ABSL_FLAG(std::vector<std::string>, address, {}, "the guest's address (IPv4 or IPv6)");
ABSL_FLAG(std::string, netmask, "", "the guest's IPv4 netmask or prefix length");
ABSL_FLAG(std::vector<std::string>, gateway, {}, "the gateway address (IPv4 or IPv6)");
ABSL_FLAG(std::string, mtu, "", "the MTU advertised to the guest");
ABSL_FLAG(std::vector<std::string>, dns, {}, "DNS servers advertised to the guest");
ABSL_FLAG(std::vector<std::string>, search, {}, "DNS search domains advertised to the guest");
ABSL_FLAG(std::string, mac_addr, "", "our MAC address");
ABSL_FLAG(bool, no_dhcp, false, "no DHCP server");
ABSL_FLAG(bool, no_ndp, false, "no NDP (neighbour and router advertisements)");
ABSL_FLAG(bool, no_dhcpv6, false, "no DHCPv6 server");
ABSL_FLAG(bool, no_ra, false, "no router advertisements");
ABSL_FLAG(bool, ipv4_only, false, "IPv4 only");
ABSL_FLAG(bool, ipv6_only, false, "IPv6 only");
// One spec per line (ExpandArgs joins repeated -t/-u with newlines: a spec
// holds commas of its own).
ABSL_FLAG(std::string, tcp_ports, "", "TCP ports forwarded from the host to the guest");
ABSL_FLAG(std::string, udp_ports, "", "UDP ports forwarded from the host to the guest");

namespace vunet::tools {
namespace {

// help and version are Abseil's own flags (flags_usage); main answers them
// before Abseil sees them.
constexpr OptionSpec kOptions[] = {
    {"vhost_user", 0, false},
    {"socket", 's', true},
    {"foreground", 'f', false},
    {"one_off", 0, false},
    {"pid", 'P', true},
    {"pcap", 'p', true},
    {"quiet", 'q', false},
    {"debug", 'd', false},
    {"address", 'a', true, true},
    {"netmask", 'n', true},
    {"gateway", 'g', true, true},
    {"mtu", 'm', true},
    {"dns", 'D', true, true},
    {"search", 'S', true, true},
    {"mac_addr", 'M', true},
    {"no_dhcp", 0, false},
    {"no_ndp", 0, false},
    {"no_dhcpv6", 0, false},
    {"no_ra", 0, false},
    {"ipv4_only", '4', false},
    {"ipv6_only", '6', false},
    {"tcp_ports", 't', true, true, true},
    {"udp_ports", 'u', true, true, true},
    {"runas", 0, true},
    {"no_sandbox", 0, false},
    {"max_flows", 0, true},
    {"print_capabilities", 0, false},
    {"version", 0, false},
    {"help", 'h', false},
};

const OptionSpec* FindLong(absl::string_view name) {
  for (const OptionSpec& o : kOptions) {
    if (name == o.name) return &o;
  }
  return nullptr;
}

const OptionSpec* FindShort(char c) {
  for (const OptionSpec& o : kOptions) {
    if (o.short_name != 0 && o.short_name == c) return &o;
  }
  return nullptr;
}

absl::Status Error(absl::string_view message) { return absl::InvalidArgumentError(message); }

}  // namespace

absl::Span<const OptionSpec> Options() { return kOptions; }

absl::StatusOr<std::vector<std::string>> ExpandArgs(absl::Span<const std::string> argv) {
  std::vector<std::string> out;
  if (argv.empty()) return out;
  out.push_back(argv[0]);
  // Values of repeatable options, in order of first appearance.
  std::vector<std::pair<const OptionSpec*, std::vector<std::string>>> lists;
  auto emit = [&](const OptionSpec* o, const std::string* value) {
    if (value == nullptr) {
      out.push_back(absl::StrCat("--", o->name));
    } else if (!o->repeatable) {
      out.push_back(absl::StrCat("--", o->name, "=", *value));
    } else {
      auto it =
          std::find_if(lists.begin(), lists.end(), [o](const auto& l) { return l.first == o; });
      if (it == lists.end()) it = lists.insert(lists.end(), {o, {}});
      it->second.push_back(*value);
    }
  };
  for (size_t i = 1; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg == "--") {
      if (i + 1 < argv.size())
        return Error(absl::StrCat("unexpected argument '", argv[i + 1], "'"));
      break;
    }
    if (arg.size() >= 2 && arg[0] == '-' && arg[1] == '-') {
      const size_t eq = arg.find('=');
      const std::string typed = arg.substr(0, eq);
      std::string name = typed.substr(2);
      for (char& c : name) {
        if (c == '-') c = '_';
      }
      const OptionSpec* o = FindLong(name);
      if (o == nullptr) return Error(absl::StrCat("unknown option '", typed, "'"));
      if (eq != std::string::npos) {
        const std::string value = arg.substr(eq + 1);
        if (o->takes_value && value.empty()) {
          return Error(absl::StrCat("option '", typed, "' needs a value"));
        }
        emit(o, &value);  // For a switch, Abseil checks true/false.
      } else if (o->takes_value) {
        if (i + 1 >= argv.size()) return Error(absl::StrCat("option '", typed, "' needs a value"));
        emit(o, &argv[++i]);
      } else {
        emit(o, nullptr);
      }
      continue;
    }
    if (arg.size() >= 2 && arg[0] == '-') {
      // A cluster of short options; one that takes a value takes the rest of
      // the argument, or the next one.
      for (size_t j = 1; j < arg.size(); ++j) {
        const OptionSpec* o = FindShort(arg[j]);
        if (o == nullptr) return Error(absl::StrCat("unknown option '-", arg.substr(j, 1), "'"));
        if (!o->takes_value) {
          emit(o, nullptr);
          continue;
        }
        if (j + 1 < arg.size()) {
          const std::string value = arg.substr(j + 1);
          emit(o, &value);
        } else if (i + 1 < argv.size()) {
          emit(o, &argv[++i]);
        } else {
          return Error(absl::StrCat("option '-", arg.substr(j, 1), "' needs a value"));
        }
        break;
      }
      continue;
    }
    return Error(absl::StrCat("unexpected argument '", arg, "'"));
  }
  for (const auto& [o, values] : lists) {
    out.push_back(
        absl::StrCat("--", o->name, "=", absl::StrJoin(values, o->join_lines ? "\n" : ",")));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ExpandArgs(absl::Span<const char* const> argv) {
  std::vector<std::string> args(argv.begin(), argv.end());
  return ExpandArgs(absl::Span<const std::string>(args));
}

std::string DefaultSocketPath() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  if (runtime != nullptr && runtime[0] == '/') return absl::StrCat(runtime, "/vunet.socket");
  return "/tmp/vunet.socket";
}

absl::StatusOr<CliOptions> OptionsFromFlags() {
  CliOptions o;
  o.socket_path = absl::GetFlag(FLAGS_socket);
  if (o.socket_path.empty()) o.socket_path = DefaultSocketPath();
  if (o.socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Error(absl::StrCat("socket path too long (at most ", sizeof(sockaddr_un{}.sun_path) - 1,
                              " bytes): ", o.socket_path));
  }
  if (!absl::GetFlag(FLAGS_vhost_user)) {
    return Error("vhost-user is the only mode (--vhost-user=false)");
  }
  o.foreground = absl::GetFlag(FLAGS_foreground);
  o.one_off = absl::GetFlag(FLAGS_one_off);
  o.pid_file = absl::GetFlag(FLAGS_pid);
  o.pcap_file = absl::GetFlag(FLAGS_pcap);
  const bool quiet = absl::GetFlag(FLAGS_quiet);
  const bool debug = absl::GetFlag(FLAGS_debug);
  if (quiet && debug) return Error("-q and -d cannot be given together");
  o.log_level = quiet ? LogLevel::kQuiet : debug ? LogLevel::kDebug : LogLevel::kNormal;
  o.print_capabilities = absl::GetFlag(FLAGS_print_capabilities);
  o.runas = absl::GetFlag(FLAGS_runas);
  o.no_sandbox = absl::GetFlag(FLAGS_no_sandbox);
  if (std::string m = absl::GetFlag(FLAGS_max_flows); !m.empty()) {
    // The flow table's bounds (net::FlowTable::kMaxCapacity).
    constexpr size_t kMax = size_t{1} << 20;
    if (!absl::SimpleAtoi(m, &o.max_flows) || o.max_flows < 1 || o.max_flows > kMax) {
      return Error(absl::StrCat("--max-flows: not a number of flows from 1 to ", kMax, ": ", m));
    }
  }

  net::ConfigOverrides& v = o.overrides;
  v.addresses = absl::GetFlag(FLAGS_address);
  if (std::string n = absl::GetFlag(FLAGS_netmask); !n.empty()) v.netmask = n;
  v.gateways = absl::GetFlag(FLAGS_gateway);
  if (std::string m = absl::GetFlag(FLAGS_mtu); !m.empty()) v.mtu = m;
  v.dns = absl::GetFlag(FLAGS_dns);
  v.search = absl::GetFlag(FLAGS_search);
  if (std::string m = absl::GetFlag(FLAGS_mac_addr); !m.empty()) v.mac_addr = m;
  v.no_dhcp = absl::GetFlag(FLAGS_no_dhcp);
  v.no_ndp = absl::GetFlag(FLAGS_no_ndp);
  v.no_dhcpv6 = absl::GetFlag(FLAGS_no_dhcpv6);
  v.no_ra = absl::GetFlag(FLAGS_no_ra);
  v.ipv4_only = absl::GetFlag(FLAGS_ipv4_only);
  v.ipv6_only = absl::GetFlag(FLAGS_ipv6_only);
  for (auto [flag, specs] : {std::pair{&FLAGS_tcp_ports, &o.tcp_forwards},
                             std::pair{&FLAGS_udp_ports, &o.udp_forwards}}) {
    if (std::string s = absl::GetFlag(*flag); !s.empty()) *specs = absl::StrSplit(s, '\n');
  }
  // ApplyOverrides refuses -4 with -6 too; say it in passt's words first.
  if (v.ipv4_only && v.ipv6_only) return Error("-4 and -6 cannot be given together");
  return o;
}

std::string UsageText(const char* argv0) {
  return absl::StrFormat(
      R"(Usage: %s [OPTION]...
A user-mode network backend for virtual machines, served over vhost-user.

By default the guest's addressing mirrors the host's (address, prefix,
default gateway, DNS), as passt does; the options below override it.

The guest's ARP, DHCP, DHCPv6, NDP (router and neighbour advertisements) and
ICMP/ICMPv6 echo to any address are answered by vunet itself (echo through
host ping sockets). Guest TCP and UDP flows become ordinary host sockets
(the gateway's address stands for the host's loopback); -t and -u forward
host ports to the guest.

  --vhost-user          vhost-user mode (the only mode; accepted)
  -s, --socket PATH     the UNIX socket to listen on
                        default: $XDG_RUNTIME_DIR/vunet.socket, else
                        /tmp/vunet.socket
  -f, --foreground      do not daemonize (default: fork, log to syslog)
  --one-off             exit when the first frontend disconnects
  -P, --pid FILE        write the process id to FILE
  -p, --pcap FILE       capture every frame to and from the guest in FILE
                        (libpcap format, for tcpdump or Wireshark; created
                        mode 0600, or truncated; not a symlink)
  -q, --quiet           log errors only
  -d, --debug           log debugging lines too
  -a, --address ADDR    the guest's IPv4 or IPv6 address[/PREFIX]
                        (repeatable, once per family)
  -n, --netmask MASK    the guest's IPv4 netmask or prefix length
  -g, --gateway ADDR    the gateway's IPv4 or IPv6 address (repeatable)
  -m, --mtu MTU         the MTU to advertise (DHCP option 26, RA)
  -D, --dns ADDR        a DNS server to advertise (repeatable; "none")
  -S, --search DOMAIN   a search domain to advertise (repeatable; "none")
  -M, --mac-addr MAC    our MAC address (the gateway's)
  --no-dhcp             no DHCP server
  --no-ndp              no NDP responder (and no router advertisements)
  --no-dhcpv6           no DHCPv6 server
  --no-ra               no router advertisements
  -4, --ipv4-only       IPv4 only
  -6, --ipv6-only       IPv6 only
  -t, --tcp-ports SPEC  forward TCP ports from the host to the guest
                        (repeatable); SPEC is passt's: "none", PORT[-PORT]
                        [:GUESTPORT[-GUESTPORT]], several comma-separated,
                        bound with ADDR/ or ADDR%%IFNAME/ in front, e.g.
                        -t 8080:80  -t 127.0.0.1/2222:22  -t 8000-8010
  -u, --udp-ports SPEC  forward UDP ports, as -t
  --runas USER[:GROUP]  started as root, run as USER (default nobody) once
                        the socket and files are open; ignored otherwise
  --max-flows N         at most N TCP and UDP flows at a time (default 65536);
                        new ones beyond are refused (TCP: an RST) and counted
  --no-sandbox          no confinement, for debugging: by default vunet
                        drops root (--runas), sets no_new_privs, enters new
                        user and mount namespaces with an empty root where
                        the kernel allows, and refuses every syscall it does
                        not need (seccomp; refusals are logged)
  --print-capabilities  print the vhost-user backend capabilities (JSON)
  --version             print the version
  -h, --help            print this help

Attach a VM (QEMU; its RAM must be a shared memory backend):
  qemu-system-x86_64 ... -m 1G \
    -chardev socket,id=vunet0,path=SOCKET \
    -netdev vhost-user,id=net0,chardev=vunet0 \
    -device virtio-net-pci,netdev=net0 \
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
(under TCG, QEMU 7.2 needs vectors=0 on the -device)
)",
      argv0);
}

std::string VersionText() { return absl::StrCat("vunet ", kVersion, "\n"); }

std::string CapabilitiesJson() { return "{\n  \"type\": \"net\"\n}\n"; }

}  // namespace vunet::tools
