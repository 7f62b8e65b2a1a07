#include "tools/vunet/cli.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
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
#include "net/gateway/dns_name.h"

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
DEFINE_string(tcp_reorder_bytes, "", "the TCP out-of-order pool's size in bytes (0: none)");
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
DEFINE_string(fd, "", "an inherited UNIX stream socket to serve");
DEFINE_string(hostname, "", "the guest's host name (DHCP option 12)");
DEFINE_string(fqdn, "", "the guest's FQDN (DHCP option 81, DHCPv6 option 39)");
DEFINE_string(outbound, "", "source addresses of outbound flows (IPv4, IPv6)");
DEFINE_string(outbound_if4, "", "the interface IPv4 outbound flows leave from");
DEFINE_string(outbound_if6, "", "the interface IPv6 outbound flows leave from");
DEFINE_string(dns_forward, "", "guest DNS to these addresses goes to the host's resolver");
DEFINE_string(dns_host, "", "the host resolvers --dns-forward's queries go to");
DEFINE_string(map_host_loopback, "", "guest destinations that mean the host's loopback");
DEFINE_string(map_guest_addr, "", "guest destinations that mean the guest's address on the host");
DEFINE_bool(no_map_gw, false, "the gateway's address does not mean the host");
DEFINE_bool(freebind, false, "-t/-u may bind addresses the host does not have");
DEFINE_bool(stderr, false, "no effect (passt's deprecated option)");
DEFINE_bool(trace, false, "log debugging lines too (as -d)");
DEFINE_string(stats, "", "log counters every this many seconds (foreground)");
DEFINE_string(log_size, "", "the -l file's size limit in bytes");
DEFINE_string(conf_path, "", "pesto's configuration socket (accepted, not served)");
DEFINE_string(repair_path, "", "the TCP_REPAIR helper's socket, for live migration");
DEFINE_bool(migrate_exit, false, "exit once the guest has moved away and its frontend left");
DEFINE_bool(migrate_no_linger, false, "close the sockets handed over once the guest has moved");

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
    {"search", 'S', true, true, true},
    {"hostname", 'H', true},
    {"fqdn", 0, true},
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
    {"freebind", 0, false},
    {"outbound", 'o', true, true},
    {"outbound_if4", 0, true},
    {"outbound_if6", 0, true},
    {"map_host_loopback", 0, true, true},
    {"no_map_gw", 0, false},
    {"map_guest_addr", 0, true, true},
    {"dns_forward", 0, true, true},
    {"dns_host", 0, true, true},
    {"fd", 'F', true},
    {"stderr", 'e', false},
    {"trace", 0, false},
    {"stats", 0, true},
    {"log_size", 0, true},
    {"conf_path", 'c', true},
    {"repair_path", 0, true},
    {"migrate_exit", 0, false},
    {"migrate_no_linger", 0, false},
    {"runas", 0, true},
    {"no_sandbox", 0, false},
    {"max_flows", 0, true},
    {"tcp_reorder_bytes", 0, true},
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

// pasta's own options (network namespaces, tap devices): refused by name.
constexpr const char* kPastaOnly[] = {
    "ns_ifname",      "tcp_ns",           "udp_ns",        "userns",
    "netns",          "netns_only",       "no_netns_quit", "config_net",
    "no_copy_routes", "no_copy_addrs",    "ns_mac_addr",   "no_splice",
    "splice_only",    "host_lo_to_ns_lo", "dhcp_dns",      "dhcp_search"};
constexpr char kPastaOnlyShort[] = "ITU";

bool IsPastaOnly(absl::string_view name) {
  for (const char* p : kPastaOnly) {
    if (name == p) return true;
  }
  return false;
}

absl::Status Error(absl::string_view message) { return absl::InvalidArgumentError(message); }

absl::Status PastaOnly(absl::string_view typed) {
  return Error(absl::StrCat("option '", typed,
                            "' is pasta's (network namespaces); vunet serves VMs over vhost-user"));
}

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
      if (name == "socket_path") name = "socket";  // QEMU's convention.
      const OptionSpec* o = FindLong(name);
      if (o == nullptr && IsPastaOnly(name)) return PastaOnly(typed);
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
        if (i + 1 >= argv.size() || argv[i + 1].empty()) {
          return Error(absl::StrCat("option '", typed, "' needs a value"));
        }
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
        if (o == nullptr && std::strchr(kPastaOnlyShort, arg[j]) != nullptr) {
          return PastaOnly(absl::StrCat("-", arg.substr(j, 1)));
        }
        if (o == nullptr) return Error(absl::StrCat("unknown option '-", arg.substr(j, 1), "'"));
        if (!o->takes_value) {
          emit(o, nullptr);
          continue;
        }
        if (j + 1 < arg.size()) {
          const std::string value = arg.substr(j + 1);
          emit(o, &value);
        } else if (i + 1 < argv.size() && !argv[i + 1].empty()) {
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

namespace {

std::optional<in_addr> ParseV4(const std::string& text) {
  in_addr a;
  if (inet_pton(AF_INET, text.c_str(), &a) != 1) return std::nullopt;
  return a;
}

std::optional<in6_addr> ParseV6(const std::string& text) {
  in6_addr a;
  if (inet_pton(AF_INET6, text.c_str(), &a) != 1) return std::nullopt;
  return a;
}

bool Unspecified4(in_addr a) { return a.s_addr == INADDR_ANY; }
bool Broadcast4(in_addr a) { return a.s_addr == INADDR_BROADCAST; }
bool Loopback4(in_addr a) { return (ntohl(a.s_addr) >> 24) == 127; }
bool Multicast4(in_addr a) { return IN_MULTICAST(ntohl(a.s_addr)); }

// An address option given once per IP version, the last of each winning, as
// passt takes them. `check4`/`check6` return why an address is refused, or
// null. "none" (where `none` is given) clears both versions and calls it.
struct PerFamily {
  std::optional<in_addr>* v4;
  std::optional<in6_addr>* v6;
};

absl::Status ParsePerFamily(const std::string& flag, absl::string_view option,
                            const char* (*check4)(in_addr), const char* (*check6)(const in6_addr&),
                            PerFamily out, const std::function<void()>& none = nullptr) {
  for (const std::string& text : SplitList(flag)) {
    if (none != nullptr && text == "none") {
      out.v4->reset();
      out.v6->reset();
      none();
      continue;
    }
    if (std::optional<in_addr> a4 = ParseV4(text)) {
      if (const char* why = check4(*a4)) return Error(absl::StrCat(option, " ", text, ": ", why));
      *out.v4 = *a4;
    } else if (std::optional<in6_addr> a6 = ParseV6(text)) {
      if (const char* why = check6(*a6)) return Error(absl::StrCat(option, " ", text, ": ", why));
      *out.v6 = *a6;
    } else {
      return Error(absl::StrCat(option, " ", text, ": not an IPv4 or IPv6 address"));
    }
  }
  return absl::OkStatus();
}

// --map-host-loopback, --map-guest-addr: no unspecified, loopback or
// multicast address (passt's rules).
const char* MapCheck4(in_addr a) {
  if (Unspecified4(a) || Loopback4(a) || Multicast4(a) || Broadcast4(a)) {
    return "not a unicast, non-loopback address";
  }
  return nullptr;
}
const char* MapCheck6(const in6_addr& a) {
  if (IN6_IS_ADDR_UNSPECIFIED(&a) || IN6_IS_ADDR_LOOPBACK(&a) || IN6_IS_ADDR_MULTICAST(&a)) {
    return "not a unicast, non-loopback address";
  }
  return nullptr;
}
// -o/--outbound: a source address, so neither unspecified, broadcast nor
// multicast; for IPv6 not loopback, nor IPv4-mapped or -compatible.
const char* OutboundCheck4(in_addr a) {
  if (Unspecified4(a) || Broadcast4(a) || Multicast4(a)) return "not a unicast address";
  return nullptr;
}
const char* OutboundCheck6(const in6_addr& a) {
  if (IN6_IS_ADDR_UNSPECIFIED(&a) || IN6_IS_ADDR_LOOPBACK(&a) || IN6_IS_ADDR_MULTICAST(&a) ||
      IN6_IS_ADDR_V4MAPPED(&a) || IN6_IS_ADDR_V4COMPAT(&a)) {
    return "not a unicast, non-loopback IPv6 address";
  }
  return nullptr;
}
// --dns-forward: what the guest sends to, so not loopback either.
const char* DnsForwardCheck4(in_addr a) {
  if (Unspecified4(a) || Broadcast4(a) || Loopback4(a) || Multicast4(a)) {
    return "not a unicast, non-loopback address";
  }
  return nullptr;
}
const char* DnsForwardCheck6(const in6_addr& a) { return MapCheck6(a); }
// --dns-host: a resolver on the host, loopback ones included.
const char* DnsHostCheck4(in_addr a) {
  if (Unspecified4(a) || Broadcast4(a) || Multicast4(a)) return "not a unicast address";
  return nullptr;
}
const char* DnsHostCheck6(const in6_addr& a) {
  if (IN6_IS_ADDR_UNSPECIFIED(&a) || IN6_IS_ADDR_MULTICAST(&a)) return "not a unicast address";
  return nullptr;
}

// A name passt would pass to if_nametoindex: 1..15 bytes, no '/' or space.
bool IsInterfaceName(absl::string_view name) {
  return !name.empty() && name.size() < IFNAMSIZ && name != "." && name != ".." &&
         name.find_first_of("/ \t\n:") == absl::string_view::npos;
}

// Why `name` (-H, --fqdn) is no host name, or null.
const char* HostNameProblem(absl::string_view name) {
  if (net::IsHostName(std::string_view(name.data(), name.size()))) return nullptr;
  absl::string_view n = name;
  if (!n.empty() && n.back() == '.') n.remove_suffix(1);
  if (n.size() > 253) return "longer than DNS allows (253 characters, 255 octets)";
  for (absl::string_view label : absl::StrSplit(n, '.')) {
    if (label.size() > 63) return "a label is longer than DNS allows (63 octets)";
    if (label.empty()) return "an empty label";
  }
  return "not a host name (letters, digits, '-' and '_' in labels, no '-' at either end)";
}

// "N", or "0xN" as passt's strtol(..., 0) also takes.
bool ParseUnsigned(const std::string& text, uint64_t* out) {
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    const std::string hex = text.substr(2);
    if (hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) return false;
    return absl::SimpleHexAtoi(hex, out);
  }
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return false;
  return absl::SimpleAtoi(text, out);
}

// A size: "N" bytes, or with a suffix K, M or G (KiB, MiB, GiB).
bool ParseSize(const std::string& text, uint64_t* out) {
  if (text.empty()) return false;
  int shift = 0;
  switch (text.back()) {
    case 'k':
    case 'K':
      shift = 10;
      break;
    case 'm':
    case 'M':
      shift = 20;
      break;
    case 'g':
    case 'G':
      shift = 30;
      break;
    default:
      break;
  }
  const std::string digits = shift == 0 ? text : text.substr(0, text.size() - 1);
  uint64_t n = 0;
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(digits, &n) || n > (uint64_t{1} << (63 - shift))) {
    return false;
  }
  *out = n << shift;
  return true;
}

// A socket path (vhost-user, repair, configuration): 1..107 bytes.
absl::Status CheckSocketPath(absl::string_view option, const std::string& path) {
  if (path.empty() || path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Error(absl::StrCat(option, ": not a socket path (1 to ",
                              sizeof(sockaddr_un{}.sun_path) - 1, " bytes): ", path));
  }
  return absl::OkStatus();
}

// -t or -u: each spec parsed; "none" only before any forward of its own
// kind (passt's rule); specs that would listen on the same port refused.
absl::Status ParseForwards(const char* flag, const std::vector<std::string>& specs, bool off,
                           const char* off_why, const net::ConfigOverrides& v, bool freebind,
                           std::vector<net::PortForward>* out) {
  const net::PortRange ephemeral = net::EphemeralPorts();
  std::vector<size_t> spec_of;  // For each forward, the spec it came from.
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string& spec = specs[i];
    if (spec == "none") {
      if (!out->empty()) {
        return Error(absl::StrCat(flag, " none: conflicts with the ", flag, " options before it"));
      }
      continue;
    }
    if (off) return Error(absl::StrCat(flag, " ", spec, ": ", off_why));
    absl::StatusOr<std::vector<net::PortForward>> forwards =
        net::ParsePortForwards(spec, ephemeral);
    if (!forwards.ok()) return Error(absl::StrCat(flag, ": ", forwards.status().message()));
    for (net::PortForward& f : *forwards) {
      if ((f.family == AF_INET && v.ipv6_only) || (f.family == AF_INET6 && v.ipv4_only)) {
        return Error(absl::StrCat(flag, " ", spec, ": its address's family is off (",
                                  v.ipv6_only ? "-6" : "-4", ")"));
      }
      f.freebind = freebind;
      out->push_back(f);
      spec_of.push_back(i);
    }
  }
  // Forwards of different specs listening on the same port: sorted by first
  // port, each compared with those starting within its range. "all" (weak)
  // means every port nothing else binds, so it yields to the others: they
  // are listed first (bound first), and its own ports found taken are
  // skipped then (what libvirt's <portForward dev='...'/> without a range
  // beside another with ranges needs).
  std::vector<size_t> order(out->size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return (*out)[a].host_port < (*out)[b].host_port; });
  for (size_t i = 0; i < order.size(); ++i) {
    const net::PortForward& a = (*out)[order[i]];
    const uint32_t a_last = uint32_t{a.host_port} + a.count - 1;
    for (size_t j = i + 1; j < order.size() && (*out)[order[j]].host_port <= a_last; ++j) {
      if (spec_of[order[i]] == spec_of[order[j]] || a.weak || (*out)[order[j]].weak) continue;
      if (net::ForwardsOverlap(a, (*out)[order[j]])) {
        const size_t first = std::min(spec_of[order[i]], spec_of[order[j]]);
        const size_t second = std::max(spec_of[order[i]], spec_of[order[j]]);
        return Error(absl::StrCat(flag, ": forwarding specs '", specs[first], "' and '",
                                  specs[second], "' overlap (port ",
                                  std::max(a.host_port, (*out)[order[j]].host_port), ")"));
      }
    }
  }
  std::stable_partition(out->begin(), out->end(),
                        [](const net::PortForward& f) { return !f.weak; });
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckInheritedSocket(int fd) {
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    return Error(absl::StrCat("-F/--fd ", fd, ": not an open file descriptor"));
  }
  if (!S_ISSOCK(st.st_mode)) return Error(absl::StrCat("-F/--fd ", fd, ": not a socket"));
  int domain = 0, type = 0;
  socklen_t len = sizeof(domain);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) {
    return Error(absl::StrCat("-F/--fd ", fd, ": not a UNIX domain socket"));
  }
  len = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) {
    return Error(absl::StrCat("-F/--fd ", fd, ": not a stream socket"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CliOptions> OptionsFromFlags() {
  CliOptions o;
  if (!FLAGS_fd.empty()) {
    // As passt: 0 may be the socket (a program started with it as stdin);
    // 1 and 2 may not.
    uint64_t fd = 0;
    if (!ParseUnsigned(FLAGS_fd, &fd) || fd > INT32_MAX) {
      return Error(absl::StrCat("-F/--fd: not a file descriptor number: ", FLAGS_fd));
    }
    if (fd == 1 || fd == 2) {
      return Error(absl::StrCat("-F/--fd ", fd, ": standard output or error, not a socket"));
    }
    if (!FLAGS_socket.empty()) return Error("-F/--fd and -s/--socket exclude each other");
    if (absl::Status s = CheckInheritedSocket(static_cast<int>(fd)); !s.ok()) return s;
    o.inherited_fd = static_cast<int>(fd);
    o.one_off = true;
  } else {
    o.socket_path = FLAGS_socket;
    if (o.socket_path.empty()) o.socket_path = DefaultSocketPath();
    if (o.socket_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return Error(absl::StrCat("socket path too long (at most ",
                                sizeof(sockaddr_un{}.sun_path) - 1, " bytes): ", o.socket_path));
    }
  }
  if (!FLAGS_vhost_user) return Error("vhost-user is the only mode (--vhost-user=false)");
  o.foreground = FLAGS_foreground;
  o.one_off = o.one_off || FLAGS_one_off;
  o.pid_file = FLAGS_pid;
  o.pcap_file = FLAGS_pcap;
  o.log_file = FLAGS_log_file;
  if (const std::string& size = FLAGS_log_size; !size.empty()) {
    constexpr uint64_t kMax = uint64_t{1} << 40;
    if (!ParseUnsigned(size, &o.log_size) || o.log_size < kMinLogSize || o.log_size > kMax) {
      return Error(absl::StrCat("--log-size: not a size in bytes from ", kMinLogSize, " to ", kMax,
                                ": ", size));
    }
  }
  const bool debug = FLAGS_debug || FLAGS_trace;
  if (FLAGS_quiet && debug) {
    return Error(FLAGS_debug ? "-q and -d cannot be given together"
                             : "-q and --trace cannot be given together");
  }
  o.log_level = FLAGS_quiet ? LogLevel::kQuiet : debug ? LogLevel::kDebug : LogLevel::kNormal;
  if (const std::string& delay = FLAGS_stats; !delay.empty()) {
    uint64_t seconds = 0;
    if (!ParseUnsigned(delay, &seconds) || seconds < 1 || seconds > 86400) {
      return Error(absl::StrCat("--stats: not a delay in seconds from 1 to 86400: ", delay));
    }
    if (!o.foreground) {
      return Error("--stats: counters go to the terminal: needs -f/--foreground (as passt's)");
    }
    o.stats_interval = static_cast<int>(seconds);
  }
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
  if (const std::string& r = FLAGS_tcp_reorder_bytes; !r.empty()) {
    uint64_t bytes = 0;
    if (!ParseSize(r, &bytes) ||
        (bytes != 0 && (bytes < kMinTcpReorderBytes || bytes > kMaxTcpReorderBytes))) {
      return Error(absl::StrCat("--tcp-reorder-bytes: not 0 (no pool) or a size from ",
                                kMinTcpReorderBytes, " to ", kMaxTcpReorderBytes,
                                " bytes (K, M, G: KiB, MiB, GiB): ", r));
    }
    o.tcp_reorder_bytes = bytes;
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
  if (FLAGS_mtu == "0") {
    o.advertise_mtu = false;  // passt: "A zero value disables assignment".
  } else if (!FLAGS_mtu.empty()) {
    v.mtu = FLAGS_mtu;
  }
  v.dns = SplitList(FLAGS_dns);
  // -S: each a space-separated list (passt's); "none" alone clears it.
  for (absl::string_view value : absl::StrSplit(FLAGS_search, '\n', absl::SkipEmpty())) {
    const std::vector<std::string> domains =
        absl::StrSplit(value, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (domains.empty()) return Error("-S/--search: an empty list (none gives no search list)");
    for (const std::string& d : domains) {
      if (d == "none" && domains.size() > 1) {
        return Error(absl::StrCat("-S/--search '", value,
                                  "': none stands alone (a domain called none is none.)"));
      }
      std::vector<uint8_t> wire;
      if (d != "none" && !net::AppendDnsName(d, &wire)) {
        return Error(absl::StrCat("-S/--search ", d, ": not a domain name"));
      }
      if (d == "none") v.search.clear();  // What came before is gone too.
      v.search.push_back(d);
    }
  }
  if (!FLAGS_mac_addr.empty()) v.mac_addr = FLAGS_mac_addr;
  v.no_dhcp = FLAGS_no_dhcp;
  v.no_ndp = FLAGS_no_ndp;
  v.no_dhcpv6 = FLAGS_no_dhcpv6;
  v.no_ra = FLAGS_no_ra;
  v.no_dhcp_dns = FLAGS_no_dhcp_dns;
  v.no_dhcp_search = FLAGS_no_dhcp_search;
  v.ipv4_only = FLAGS_ipv4_only;
  v.ipv6_only = FLAGS_ipv6_only;
  // ApplyOverrides refuses -4 with -6 too; say it in passt's words first.
  if (v.ipv4_only && v.ipv6_only) return Error("-4 and -6 cannot be given together");

  if (!FLAGS_hostname.empty()) {
    if (const char* why = HostNameProblem(FLAGS_hostname)) {
      return Error(absl::StrCat("-H/--hostname ", FLAGS_hostname, ": ", why));
    }
    o.hostname = FLAGS_hostname;
  }
  if (!FLAGS_fqdn.empty()) {
    if (const char* why = HostNameProblem(FLAGS_fqdn)) {
      return Error(absl::StrCat("--fqdn ", FLAGS_fqdn, ": ", why));
    }
    o.fqdn = FLAGS_fqdn;
  }

  o.freebind = FLAGS_freebind;
  if (!FLAGS_tcp_ports.empty()) o.tcp_forwards = absl::StrSplit(FLAGS_tcp_ports, '\n');
  if (!FLAGS_udp_ports.empty()) o.udp_forwards = absl::StrSplit(FLAGS_udp_ports, '\n');
  if (absl::Status s = ParseForwards("-t", o.tcp_forwards, o.no_tcp, "TCP is off (--no-tcp)", v,
                                     o.freebind, &o.tcp_ports);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ParseForwards("-u", o.udp_forwards, o.no_udp, "UDP is off (--no-udp)", v,
                                     o.freebind, &o.udp_ports);
      !s.ok()) {
    return s;
  }

  if (absl::Status s = ParsePerFamily(FLAGS_outbound, "-o/--outbound", OutboundCheck4,
                                      OutboundCheck6, {&o.outbound.addr4, &o.outbound.addr6});
      !s.ok()) {
    return s;
  }
  for (const auto& [flag, option, out] :
       {std::tuple{&FLAGS_outbound_if4, "--outbound-if4", &o.outbound.ifname4},
        std::tuple{&FLAGS_outbound_if6, "--outbound-if6", &o.outbound.ifname6}}) {
    if (flag->empty()) continue;
    if (!IsInterfaceName(*flag)) {
      return Error(absl::StrCat(option, " ", *flag, ": not an interface name"));
    }
    if (if_nametoindex(flag->c_str()) == 0) {
      return Error(absl::StrCat(option, " ", *flag, ": no such interface"));
    }
    *out = *flag;
  }
  net::DestinationMap& d = o.destinations;
  if (FLAGS_no_map_gw) d.map_gateway = false;
  if (absl::Status s =
          ParsePerFamily(FLAGS_map_host_loopback, "--map-host-loopback", MapCheck4, MapCheck6,
                         {&d.host_loopback4, &d.host_loopback6}, [&d] { d.map_gateway = false; });
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ParsePerFamily(FLAGS_map_guest_addr, "--map-guest-addr", MapCheck4,
                                      MapCheck6, {&d.guest_addr4, &d.guest_addr6}, [] {});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ParsePerFamily(FLAGS_dns_forward, "--dns-forward", DnsForwardCheck4,
                                      DnsForwardCheck6, {&d.dns_forward4, &d.dns_forward6});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ParsePerFamily(FLAGS_dns_host, "--dns-host", DnsHostCheck4, DnsHostCheck6,
                                      {&d.dns_host4, &d.dns_host6});
      !s.ok()) {
    return s;
  }

  if (!FLAGS_conf_path.empty()) {
    if (absl::Status s = CheckSocketPath("-c/--conf-path", FLAGS_conf_path); !s.ok()) return s;
    o.conf_path = FLAGS_conf_path;
  }
  if (FLAGS_repair_path == "none") {
    o.migration.repair_path.clear();
  } else if (!FLAGS_repair_path.empty()) {
    if (absl::Status s = CheckSocketPath("--repair-path", FLAGS_repair_path); !s.ok()) return s;
    o.migration.repair_path = FLAGS_repair_path;
  } else if (!o.socket_path.empty() && o.socket_path.size() + 7 < sizeof(sockaddr_un{}.sun_path)) {
    o.migration.repair_path = o.socket_path + ".repair";  // passt's default.
  }
  o.migration.exit_after = FLAGS_migrate_exit;
  o.migration.no_linger = FLAGS_migrate_no_linger;
  return o;
}

std::string UsageText(const char* argv0) {
  return absl::StrFormat(
      R"(Usage: %s [OPTION]...
A user-mode network backend for virtual machines, served over vhost-user.
Its options are passt's (passt --vhost-user), with passt's meaning; libvirt
can start it in passt's place (docs/libvirt.md).

By default the guest's addressing mirrors the host's (address, prefix,
default gateway, DNS), as passt does; the options below override it.

The guest's ARP, DHCP, DHCPv6, NDP (router and neighbour advertisements) and
ICMP/ICMPv6 echo to any address are answered by vunet itself (echo through
host ping sockets). Guest TCP and UDP flows become ordinary host sockets
(the gateway's address stands for the host's loopback); -t and -u forward
host ports to the guest.

  --vhost-user          vhost-user mode (the only mode; accepted)
  -s, --socket, --socket-path PATH
                        the UNIX socket to listen on
                        default: $XDG_RUNTIME_DIR/vunet.socket, else
                        /tmp/vunet.socket
  -F, --fd FD           serve the inherited UNIX stream socket FD instead:
                        a listening one, or a connected frontend (implies
                        --one-off)
  -f, --foreground      do not daemonize (default: fork, log to syslog)
  -1, --one-off         exit when the first frontend disconnects
  -P, --pid FILE        write the process id to FILE
  -p, --pcap FILE       capture every frame to and from the guest in FILE
                        (libpcap format, for tcpdump or Wireshark; created
                        mode 0600, or truncated; not a symlink)
  -l, --log-file PATH   log to PATH instead of stderr (and of syslog when
                        daemonized); appended, created mode 0600, not a
                        symlink
  --log-size BYTES      keep the -l file under BYTES (the oldest lines go)
                        default: 1048576 (1 MiB); at least 4096
  -q, --quiet           log errors only
  -d, --debug           log debugging lines too
  --trace               as -d (vunet logs no single packets)
  -e, --stderr          no effect (passt's, deprecated there too)
  --stats DELAY         log counters every DELAY seconds (needs -f)
  -i, --interface NAME  mirror the addresses and default routes of host
                        interface NAME rather than of each default route's
                        interface (a family NAME has neither: the defaults)
  -a, --address ADDR    the guest's IPv4 or IPv6 address[/PREFIX]
                        (repeatable, once per family)
  -n, --netmask MASK    the guest's IPv4 netmask or prefix length
  -g, --gateway ADDR    the gateway's IPv4 or IPv6 address (repeatable)
  -m, --mtu MTU         the MTU to advertise (DHCP option 26, RA); 0: none
  -D, --dns ADDR        a DNS server to advertise (repeatable; "none")
  -S, --search LIST     search domains to advertise, space-separated
                        (repeatable; "none": no list)
  -H, --hostname NAME   the guest's host name (DHCP option 12)
  --fqdn NAME           the guest's FQDN (DHCP option 81, DHCPv6 option 39)
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
                        (repeatable); SPEC is passt's: "none", "all" (every
                        port but the ephemeral ones, those in use skipped),
                        or PORT[-PORT][:GUESTPORT[-GUESTPORT]] and ~PORT[-PORT]
                        exclusions, comma-separated (exclusions alone: all
                        but those), bound with ADDR/ or ADDR%%IFNAME/ in
                        front, e.g. -t 8080:80  -t 127.0.0.1/2222:22
                        -t 8000-8010,~8005  -t %%eth0/all
  -u, --udp-ports SPEC  forward UDP ports, as -t
  --freebind            -t/-u may bind addresses the host does not have yet
  -o, --outbound ADDR   source address of outbound flows (once per family)
  --outbound-if4 NAME   the interface IPv4 outbound flows leave from
  --outbound-if6 NAME   the interface IPv6 outbound flows leave from
  --dns-forward ADDR    guest DNS (TCP and UDP, ports 53 and 853) to ADDR goes
                        to the host's resolver (--dns-host, else
                        resolv.conf's first); once per family; advertise
                        ADDR with -D
  --dns-host ADDR       the resolver --dns-forward's queries go to
  --map-host-loopback ADDR
                        ADDR, in place of the gateway's address, stands for
                        the host's loopback (once per family; "none": no
                        address does)
  --no-map-gw           the gateway's address is the gateway's, not the host
  --map-guest-addr ADDR ADDR stands for the guest's own address on the host
                        (by default the host's, which the guest's shadows);
                        once per family; "none": no address
  -c, --conf-path PATH  accepted; no configuration socket is served
  --repair-path PATH    live migration: the socket the TCP_REPAIR helper
                        (passt-repair's protocol) connects to; default
                        the socket path + ".repair" (none with --fd);
                        "none": none, and TCP connections are reset when
                        the guest moves (docs/MIGRATION.md)
  --migrate-exit        exit once the guest has moved away and its frontend
                        left
  --migrate-no-linger   close the sockets handed over as soon as the guest
                        has moved (default: kept until the frontend leaves,
                        in case the migration fails)
  --runas USER[:GROUP]  started as root, run as USER (default nobody) once
                        the socket and files are open; ignored otherwise
  --max-flows N         at most N TCP and UDP flows at a time (default 65536);
                        new ones beyond are refused (TCP: an RST) and counted
  --tcp-reorder-bytes SIZE
                        the pool holding TCP segments a guest sent past a
                        lost one, for all flows, allocated at start: SIZE
                        bytes, or with K, M, G (default 32M; 64K to 1G); 0:
                        no pool, such segments are dropped and the guest
                        sends them again
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
(tested with QEMU 10; under TCG, QEMU 7.2 needs vectors=0 on the -device)
)",
      argv0);
}

std::string VersionText() { return absl::StrCat("vunet ", kVersion, "\n"); }

std::string CapabilitiesJson() { return "{\n  \"type\": \"net\"\n}\n"; }

}  // namespace vunet::tools
