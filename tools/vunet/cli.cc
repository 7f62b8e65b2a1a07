#include "tools/vunet/cli.h"

#include <net/if.h>
#include <sys/un.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gflags/gflags.h"

// Values are strings and are checked in OptionsFromFlags, so that a bad one
// gets our one-line error; gflags only ever sees what ExpandArgs let through.
DEFINE_bool(vhost_user, true, "vhost-user mode (the only mode; accepted for passt's users)");
DEFINE_string(socket, "", "the vhost-user socket");
DEFINE_bool(foreground, false, "stay in the foreground");
DEFINE_bool(one_off, false, "serve one frontend, then exit");
DEFINE_string(pid, "", "write the process id to this file");
DEFINE_string(pcap, "", "capture the guest's frames both ways to this file (libpcap)");
DEFINE_string(log_file, "", "log to this file (appended) instead of stderr or syslog");
DEFINE_bool(quiet, false, "log errors only");
DEFINE_bool(debug, false, "log debugging lines too");
DEFINE_bool(print_capabilities, false, "print the vhost-user capabilities and exit");
DEFINE_string(runas, "", "USER[:GROUP] to run as when started as root (default nobody)");
DEFINE_bool(no_sandbox, false, "no confinement (identity, namespaces, seccomp): debugging");
DEFINE_string(max_flows, "", "TCP and UDP flows at a time, at most");
DEFINE_string(interface, "", "the host interface whose addresses and routes are mirrored");
// Comma-separated lists (ExpandArgs gathers repeated options into one).
DEFINE_string(address, "", "the guest's addresses (IPv4 or IPv6)");
DEFINE_string(netmask, "", "the guest's IPv4 netmask or prefix length");
DEFINE_string(gateway, "", "the gateway addresses (IPv4 or IPv6)");
DEFINE_string(mtu, "", "the MTU advertised to the guest");
DEFINE_string(dns, "", "DNS servers advertised to the guest");
DEFINE_string(search, "", "DNS search domains advertised to the guest");
DEFINE_string(mac_addr, "", "our MAC address");
DEFINE_bool(no_dhcp, false, "no DHCP server");
DEFINE_bool(no_ndp, false, "no NDP (neighbour and router advertisements)");
DEFINE_bool(no_dhcpv6, false, "no DHCPv6 server");
DEFINE_bool(no_ra, false, "no router advertisements");
DEFINE_bool(no_dhcp_dns, false, "no DNS servers in DHCP, DHCPv6 and router advertisements");
DEFINE_bool(no_dhcp_search, false, "no search list in DHCP, DHCPv6 and router advertisements");
DEFINE_bool(no_tcp, false, "no TCP translator");
DEFINE_bool(no_udp, false, "no UDP translator");
DEFINE_bool(no_icmp, false, "no ICMP/ICMPv6 echo");
DEFINE_bool(ipv4_only, false, "IPv4 only");
DEFINE_bool(ipv6_only, false, "IPv6 only");
// One spec per line (ExpandArgs joins repeated -t/-u with newlines: a spec
// holds commas of its own).
DEFINE_string(tcp_ports, "", "TCP ports forwarded from the host to the guest");
DEFINE_string(udp_ports, "", "UDP ports forwarded from the host to the guest");

namespace vunet::tools {
namespace {

// help and version are gflags' own flags; main answers them before gflags
// sees them.
constexpr OptionSpec kOptions[] = {
    {"vhost_user", 0, false},
    {"socket", 's', true},
    {"foreground", 'f', false},
    {"one_off", '1', false},
    {"pid", 'P', true},
    {"pcap", 'p', true},
    {"log_file", 'l', true},
    {"quiet", 'q', false},
    {"debug", 'd', false},
    {"interface", 'i', true},
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
    {"no_dhcp_dns", 0, false},
    {"no_dhcp_search", 0, false},
    {"no_tcp", 0, false},
    {"no_udp", 0, false},
    {"no_icmp", 0, false},
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

// A switch's value, as gflags would take it but narrower (gflags also takes
// t, f, y and n).
std::optional<bool> ParseSwitch(absl::string_view value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v == "true" || v == "yes" || v == "1") return true;
  if (v == "false" || v == "no" || v == "0") return false;
  return std::nullopt;
}

// A comma-separated list; empty: none.
std::vector<std::string> SplitList(const std::string& s) {
  if (s.empty()) return {};
  return absl::StrSplit(s, ',');
}

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
        if (!o->takes_value) {
          // gflags would print its own error for a value it cannot take.
          const std::optional<bool> on = ParseSwitch(value);
          if (!on.has_value()) {
            return Error(absl::StrCat("option '", typed, "' is a switch: '", value,
                                      "' is not true or false (yes, no, 1, 0)"));
          }
          if (*on) {
            emit(o, nullptr);
          } else {
            const std::string off = "false";
            emit(o, &off);
          }
        } else {
          emit(o, &value);
        }
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
  o.socket_path = FLAGS_socket;
  if (o.socket_path.empty()) o.socket_path = DefaultSocketPath();
  if (o.socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Error(absl::StrCat("socket path too long (at most ", sizeof(sockaddr_un{}.sun_path) - 1,
                              " bytes): ", o.socket_path));
  }
  if (!FLAGS_vhost_user) return Error("vhost-user is the only mode (--vhost-user=false)");
  o.foreground = FLAGS_foreground;
  o.one_off = FLAGS_one_off;
  o.pid_file = FLAGS_pid;
  o.pcap_file = FLAGS_pcap;
  o.log_file = FLAGS_log_file;
  if (FLAGS_quiet && FLAGS_debug) return Error("-q and -d cannot be given together");
  o.log_level = FLAGS_quiet ? LogLevel::kQuiet : FLAGS_debug ? LogLevel::kDebug : LogLevel::kNormal;
  o.print_capabilities = FLAGS_print_capabilities;
  o.runas = FLAGS_runas;
  o.no_sandbox = FLAGS_no_sandbox;
  if (const std::string& m = FLAGS_max_flows; !m.empty()) {
    // The flow table's bounds (net::FlowTable::kMaxCapacity).
    constexpr size_t kMax = size_t{1} << 20;
    if (!absl::SimpleAtoi(m, &o.max_flows) || o.max_flows < 1 || o.max_flows > kMax) {
      return Error(absl::StrCat("--max-flows: not a number of flows from 1 to ", kMax, ": ", m));
    }
  }
  o.interface = FLAGS_interface;
  if (o.interface.size() >= IFNAMSIZ) {
    return Error(absl::StrCat("-i/--interface: not an interface name (at most ", IFNAMSIZ - 1,
                              " bytes): ", o.interface));
  }
  o.no_tcp = FLAGS_no_tcp;
  o.no_udp = FLAGS_no_udp;
  o.no_icmp = FLAGS_no_icmp;

  net::ConfigOverrides& v = o.overrides;
  v.addresses = SplitList(FLAGS_address);
  if (!FLAGS_netmask.empty()) v.netmask = FLAGS_netmask;
  v.gateways = SplitList(FLAGS_gateway);
  if (!FLAGS_mtu.empty()) v.mtu = FLAGS_mtu;
  v.dns = SplitList(FLAGS_dns);
  v.search = SplitList(FLAGS_search);
  if (!FLAGS_mac_addr.empty()) v.mac_addr = FLAGS_mac_addr;
  v.no_dhcp = FLAGS_no_dhcp;
  v.no_ndp = FLAGS_no_ndp;
  v.no_dhcpv6 = FLAGS_no_dhcpv6;
  v.no_ra = FLAGS_no_ra;
  v.no_dhcp_dns = FLAGS_no_dhcp_dns;
  v.no_dhcp_search = FLAGS_no_dhcp_search;
  v.ipv4_only = FLAGS_ipv4_only;
  v.ipv6_only = FLAGS_ipv6_only;
  for (auto [flag, specs] : {std::pair{&FLAGS_tcp_ports, &o.tcp_forwards},
                             std::pair{&FLAGS_udp_ports, &o.udp_forwards}}) {
    if (!flag->empty()) *specs = absl::StrSplit(*flag, '\n');
  }
  // Forwarding needs the translator that serves it ("none" forwards nothing).
  for (const auto& [specs, off, flag, what] :
       {std::tuple{&o.tcp_forwards, o.no_tcp, "-t", "TCP is off (--no-tcp)"},
        std::tuple{&o.udp_forwards, o.no_udp, "-u", "UDP is off (--no-udp)"}}) {
    for (const std::string& spec : *specs) {
      if (off && spec != "none") return Error(absl::StrCat(flag, " ", spec, ": ", what));
    }
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
  -1, --one-off         exit when the first frontend disconnects
  -P, --pid FILE        write the process id to FILE
  -p, --pcap FILE       capture every frame to and from the guest in FILE
                        (libpcap format, for tcpdump or Wireshark; created
                        mode 0600, or truncated; not a symlink)
  -l, --log-file PATH   log to PATH instead of stderr (and of syslog when
                        daemonized); appended, created mode 0600, not a
                        symlink
  -q, --quiet           log errors only
  -d, --debug           log debugging lines too
  -i, --interface NAME  mirror the addresses and default routes of host
                        interface NAME rather than of each default route's
                        interface (a family NAME has neither: the defaults)
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
  --no-dhcp-dns         no DNS servers in DHCP, DHCPv6 and router
                        advertisements
  --no-dhcp-search      no search list in DHCP, DHCPv6 and router
                        advertisements
  --no-tcp              no TCP: the guest's segments are dropped; no -t
  --no-udp              no UDP: the guest's datagrams (DNS to the gateway
                        too) are dropped; no -u
  --no-icmp             no ICMP/ICMPv6 echo: requests are dropped
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
