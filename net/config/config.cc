#include "net/config/config.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <net/route.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "base/log.h"

namespace vunet::net {
namespace {

constexpr char kProcNetRoute[] = "/proc/net/route";
constexpr char kProcNetIpv6Route[] = "/proc/net/ipv6_route";
constexpr char kResolvConf[] = "/etc/resolv.conf";

std::optional<in_addr> ParseAddr4(std::string_view s) {
  const std::string str(s);
  in_addr a{};
  if (inet_pton(AF_INET, str.c_str(), &a) != 1) return std::nullopt;
  return a;
}

std::optional<in6_addr> ParseAddr6(std::string_view s) {
  const std::string str(s);
  in6_addr a{};
  if (inet_pton(AF_INET6, str.c_str(), &a) != 1) return std::nullopt;
  return a;
}

// The first byte in network order.
uint8_t Byte0(const in_addr& a) { return reinterpret_cast<const uint8_t*>(&a.s_addr)[0]; }
uint8_t Byte1(const in_addr& a) { return reinterpret_cast<const uint8_t*>(&a.s_addr)[1]; }

bool IsLoopback4(const in_addr& a) { return Byte0(a) == 127; }
bool IsUnspecified4(const in_addr& a) { return a.s_addr == 0; }
bool IsMulticastOrBroadcast4(const in_addr& a) { return Byte0(a) >= 224; }
bool IsLinkLocal4(const in_addr& a) { return Byte0(a) == 169 && Byte1(a) == 254; }

bool IsUnspecified6(const in6_addr& a) { return IN6_IS_ADDR_UNSPECIFIED(&a); }
bool IsLoopback6(const in6_addr& a) { return IN6_IS_ADDR_LOOPBACK(&a); }
bool IsLinkLocal6(const in6_addr& a) { return IN6_IS_ADDR_LINKLOCAL(&a); }
bool IsMulticast6(const in6_addr& a) { return IN6_IS_ADDR_MULTICAST(&a); }

bool IsRoutable4(const in_addr& a) {
  return !IsUnspecified4(a) && !IsLoopback4(a) && !IsMulticastOrBroadcast4(a) && !IsLinkLocal4(a);
}
bool IsRoutable6(const in6_addr& a) {
  return !IsUnspecified6(a) && !IsLoopback6(a) && !IsLinkLocal6(a) && !IsMulticast6(a) &&
         !IN6_IS_ADDR_V4MAPPED(&a);
}

bool Equal6(const in6_addr& a, const in6_addr& b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

std::string Str4(const in_addr& a) {
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return buf;
}
std::string Str6(const in6_addr& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(AF_INET6, &a, buf, sizeof(buf));
  return buf;
}

int PrefixLen(const sockaddr* mask, int family) {
  if (mask == nullptr) return family == AF_INET ? 32 : 128;
  const uint8_t* bytes;
  size_t n;
  if (family == AF_INET) {
    bytes = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(mask)->sin_addr);
    n = 4;
  } else {
    bytes =
        reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in6*>(mask)->sin6_addr);
    n = 16;
  }
  int len = 0;
  for (size_t i = 0; i < n; ++i) len += __builtin_popcount(bytes[i]);
  return len;
}

absl::StatusOr<std::vector<HostAddress>> ReadInterfaces() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) {
    return absl::ErrnoToStatus(errno, "getifaddrs");
  }
  std::vector<HostAddress> out;
  for (const ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) continue;
    const int family = i->ifa_addr->sa_family;
    if (family != AF_INET && family != AF_INET6) continue;
    HostAddress a;
    a.ifname = i->ifa_name != nullptr ? i->ifa_name : "";
    a.family = family;
    if (family == AF_INET) {
      a.addr4 = reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr;
    } else {
      a.addr6 = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr;
    }
    a.prefix_len = PrefixLen(i->ifa_netmask, family);
    a.up = (i->ifa_flags & IFF_UP) != 0;
    a.loopback = (i->ifa_flags & IFF_LOOPBACK) != 0;
    out.push_back(std::move(a));
  }
  freeifaddrs(list);
  return out;
}

std::string ReadFileOrEmpty(const char* path) {
  std::ifstream in(path);
  if (!in) {
    VUNET_LOG(kInfo, "config: cannot read %s; taken as empty", path);
    return "";
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The first routable address of `family`, preferring interface `ifname`, or
// (only) on that one alone.
const HostAddress* PickAddress(const std::vector<HostAddress>& addrs, int family,
                               const std::string& ifname, bool only) {
  const HostAddress* any = nullptr;
  for (const HostAddress& a : addrs) {
    if (a.family != family || !a.up || a.loopback) continue;
    if (family == AF_INET ? !IsRoutable4(a.addr4) : !IsRoutable6(a.addr6)) continue;
    if (a.ifname == ifname) return &a;
    if (any == nullptr && !only) any = &a;
  }
  return any;
}

bool ParseHex32(std::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 8) return false;
  uint32_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    v = v << 4 | static_cast<uint32_t>(d);
  }
  *out = v;
  return true;
}

bool ParseHexAddr6(std::string_view s, in6_addr* out) {
  if (s.size() != 32) return false;
  for (size_t i = 0; i < 16; ++i) {
    uint32_t byte;
    if (!ParseHex32(s.substr(2 * i, 2), &byte)) return false;
    out->s6_addr[i] = static_cast<uint8_t>(byte);
  }
  return true;
}

// (absl::string_view is not std::string_view in this build, so the splitting
// and number parsing here are our own.)
std::vector<std::string_view> Split(std::string_view s, char c) {
  std::vector<std::string_view> out;
  size_t at = 0;
  while (true) {
    const size_t end = s.find(c, at);
    out.push_back(s.substr(at, end == std::string_view::npos ? std::string_view::npos : end - at));
    if (end == std::string_view::npos) return out;
    at = end + 1;
  }
}

std::vector<std::string_view> Fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t at = 0;
  while (true) {
    at = line.find_first_not_of(" \t\r", at);
    if (at == std::string_view::npos) return out;
    const size_t end = line.find_first_of(" \t\r", at);
    out.push_back(
        line.substr(at, end == std::string_view::npos ? std::string_view::npos : end - at));
    if (end == std::string_view::npos) return out;
    at = end;
  }
}

// A whole decimal number.
template <typename T>
bool ParseDecimal(std::string_view s, T* out) {
  if (s.empty()) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

std::string_view StripDot(std::string_view s) {
  if (s.size() > 1 && s.back() == '.') s.remove_suffix(1);
  return s;
}

template <typename T, typename Eq>
void AddUnique(std::vector<T>* v, const T& x, Eq eq) {
  for (const T& y : *v) {
    if (eq(x, y)) return;
  }
  v->push_back(x);
}

bool Eq4(const in_addr& a, const in_addr& b) { return a.s_addr == b.s_addr; }

absl::Status Invalid(std::string_view option, std::string_view value, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrFormat("%s '%s': %s", option, value, why));
}

// Parses "ADDR[/PREFIX]"; exactly one of `a4`/`a6` is set on success.
absl::Status ParseAddressOption(std::string_view option, std::string_view text,
                                std::optional<in_addr>* a4, std::optional<in6_addr>* a6,
                                std::optional<int>* prefix) {
  std::string_view addr = text;
  std::string_view len;
  if (const size_t slash = text.find('/'); slash != std::string_view::npos) {
    addr = text.substr(0, slash);
    len = text.substr(slash + 1);
  }
  *a4 = ParseAddr4(addr);
  if (!a4->has_value()) *a6 = ParseAddr6(addr);
  if (!a4->has_value() && !a6->has_value()) {
    return Invalid(option, text, "not an IPv4 or IPv6 address");
  }
  if (text.find('/') != std::string_view::npos) {
    const int max = a4->has_value() ? 32 : 128;
    int n;
    if (!ParseDecimal(len, &n) || n < 0 || n > max) {
      return Invalid(option, text, absl::StrFormat("prefix length not in 0..%d", max));
    }
    *prefix = n;
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ParseNetmask(std::string_view text) {
  constexpr std::string_view kOption = "-n/--netmask";
  if (text.find('.') != std::string_view::npos) {
    const std::optional<in_addr> mask = ParseAddr4(text);
    if (!mask.has_value()) return Invalid(kOption, text, "not a dotted netmask or prefix length");
    const uint32_t m = ntohl(mask->s_addr);
    const int len = __builtin_popcount(m);
    const uint32_t contiguous = len == 0 ? 0 : ~uint32_t{0} << (32 - len);
    if (m != contiguous) return Invalid(kOption, text, "netmask bits not contiguous");
    return len;
  }
  int n;
  if (!ParseDecimal(text, &n) || n < 0 || n > 32) {
    return Invalid(kOption, text, "prefix length not in 0..32");
  }
  return n;
}

std::optional<MacAddr> ParseMac(std::string_view text) {
  const std::vector<std::string_view> parts = Split(text, ':');
  if (parts.size() != 6) return std::nullopt;
  MacAddr mac;
  for (size_t i = 0; i < 6; ++i) {
    uint32_t b;
    if (parts[i].size() != 2 || !ParseHex32(parts[i], &b)) return std::nullopt;
    mac.bytes[i] = static_cast<uint8_t>(b);
  }
  return mac;
}

}  // namespace

namespace config_internal {

std::optional<DefaultRoute4> ParseDefaultRoute4(const std::string& text, std::string_view ifname) {
  // Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT;
  // addresses are the raw 32-bit value in hex, so s_addr takes it as is.
  std::optional<DefaultRoute4> best;
  uint32_t best_metric = std::numeric_limits<uint32_t>::max();
  for (std::string_view line : Split(text, '\n')) {
    const std::vector<std::string_view> f = Fields(line);
    if (f.size() < 8) continue;
    uint32_t dst, gw, flags, mask;
    uint32_t metric;
    if (!ParseHex32(f[1], &dst) || !ParseHex32(f[2], &gw) || !ParseHex32(f[3], &flags) ||
        !ParseHex32(f[7], &mask) || !ParseDecimal(f[6], &metric)) {
      continue;  // The header line, or garbage.
    }
    if (dst != 0 || mask != 0 || gw == 0) continue;
    if ((flags & RTF_UP) == 0 || (flags & RTF_GATEWAY) == 0 || (flags & RTF_REJECT) != 0) continue;
    if (f[0] == "lo" || (!ifname.empty() && f[0] != ifname)) continue;
    if (best.has_value() && metric >= best_metric) continue;
    best = DefaultRoute4{std::string(f[0]), {}};
    best->gateway.s_addr = gw;
    best_metric = metric;
  }
  return best;
}

std::optional<DefaultRoute6> ParseDefaultRoute6(const std::string& text, std::string_view ifname) {
  // dst dst_len src src_len next_hop metric refcnt use flags iface, all hex.
  std::optional<DefaultRoute6> best;
  uint32_t best_metric = 0;
  for (std::string_view line : Split(text, '\n')) {
    const std::vector<std::string_view> f = Fields(line);
    if (f.size() < 10) continue;
    in6_addr dst, gw;
    uint32_t dst_len, metric, flags;
    if (!ParseHexAddr6(f[0], &dst) || !ParseHex32(f[1], &dst_len) || !ParseHexAddr6(f[4], &gw) ||
        !ParseHex32(f[5], &metric) || !ParseHex32(f[8], &flags)) {
      continue;
    }
    if (dst_len != 0 || !IsUnspecified6(dst) || IsUnspecified6(gw)) continue;
    if ((flags & RTF_UP) == 0 || (flags & RTF_GATEWAY) == 0 || (flags & RTF_REJECT) != 0) continue;
    if (f[9] == "lo" || (!ifname.empty() && f[9] != ifname)) continue;
    if (best.has_value() && metric >= best_metric) continue;
    best = DefaultRoute6{std::string(f[9]), gw};
    best_metric = metric;
  }
  return best;
}

Resolver ParseResolvConf(const std::string& text) {
  Resolver r;
  for (std::string_view line : Split(text, '\n')) {
    const std::vector<std::string_view> f = Fields(line);
    if (f.empty() || f[0][0] == '#' || f[0][0] == ';') continue;
    if (f[0] == "nameserver" && f.size() >= 2) {
      if (std::optional<in_addr> a4 = ParseAddr4(f[1])) {
        AddUnique(&r.dns4, *a4, Eq4);
        continue;
      }
      // A zone ("fe80::1%eth0") means link-local, which ParseAddr6 sees anyway.
      std::string_view addr = f[1];
      if (const size_t pct = addr.find('%'); pct != std::string_view::npos) {
        addr = addr.substr(0, pct);
      }
      if (std::optional<in6_addr> a6 = ParseAddr6(addr)) AddUnique(&r.dns6, *a6, Equal6);
    } else if ((f[0] == "search" || f[0] == "domain") && f.size() >= 2) {
      // The last of "search" and "domain" wins (resolv.conf(5)).
      r.search.clear();
      for (size_t i = 1; i < f.size(); ++i) {
        if (f[i][0] == '#' || f[i][0] == ';') break;
        r.search.emplace_back(StripDot(f[i]));
      }
    }
  }
  return r;
}

}  // namespace config_internal

void SetFallback4(GuestConfig* c) {
  inet_pton(AF_INET, "10.0.2.15", &c->addr4);
  c->prefix_len4 = 24;
  inet_pton(AF_INET, "10.0.2.2", &c->gateway4);
  c->mirrored4 = false;
}

void SetFallback6(GuestConfig* c) {
  inet_pton(AF_INET6, "fd00:5655:4e45::2", &c->addr6);
  c->prefix_len6 = 64;
  inet_pton(AF_INET6, "fe80::1", &c->gateway6);
  c->our_link_local6 = c->gateway6;
  c->mirrored6 = false;
}

absl::StatusOr<GuestConfig> MirrorHost(const HostSources& sources) {
  std::vector<HostAddress> read_addrs;
  if (!sources.addresses.has_value()) {
    absl::StatusOr<std::vector<HostAddress>> a = ReadInterfaces();
    if (!a.ok()) return a.status();
    read_addrs = std::move(*a);
  }
  const std::vector<HostAddress>& addrs =
      sources.addresses.has_value() ? *sources.addresses : read_addrs;
  // Not value_or: a file is read only when no contents were injected.
  auto source = [](const std::optional<std::string>& given, const char* path) {
    return given.has_value() ? *given : ReadFileOrEmpty(path);
  };
  const std::string route = source(sources.route, kProcNetRoute);
  const std::string route6 = source(sources.ipv6_route, kProcNetIpv6Route);
  const std::string resolv = source(sources.resolv_conf, kResolvConf);

  GuestConfig c;
  const std::string& ifname = sources.interface;
  const bool only = !ifname.empty();
  // The address of `family` to mirror: with -i, that interface's; else the
  // default route's interface's, or any interface's.
  auto pick = [&](int family, const std::string* route_ifname) -> const HostAddress* {
    if (only) return PickAddress(addrs, family, ifname, true);
    return route_ifname != nullptr ? PickAddress(addrs, family, *route_ifname, false) : nullptr;
  };
  // Why a family falls back, for the log.
  auto why = [&](const char* family, bool has_address) -> std::string {
    if (!only) return absl::StrFormat("no %s default route and address on the host", family);
    if (!has_address) {
      return absl::StrFormat("interface %s has no routable %s address (or does not exist)", ifname,
                             family);
    }
    return absl::StrFormat("no %s default route through interface %s", family, ifname);
  };

  const std::optional<config_internal::DefaultRoute4> r4 =
      config_internal::ParseDefaultRoute4(route, ifname);
  const HostAddress* a4 = pick(AF_INET, r4.has_value() ? &r4->ifname : nullptr);
  if (r4.has_value() && a4 != nullptr) {
    c.addr4 = a4->addr4;
    c.prefix_len4 = a4->prefix_len;
    c.gateway4 = r4->gateway;
    c.mirrored4 = true;
  } else {
    SetFallback4(&c);
    VUNET_LOG(kInfo, "config: %s; guest gets %s/%d", why("IPv4", a4 != nullptr), Str4(c.addr4),
              c.prefix_len4);
  }

  const std::optional<config_internal::DefaultRoute6> r6 =
      config_internal::ParseDefaultRoute6(route6, ifname);
  const HostAddress* a6 = pick(AF_INET6, r6.has_value() ? &r6->ifname : nullptr);
  if (r6.has_value() && a6 != nullptr) {
    c.addr6 = a6->addr6;
    c.prefix_len6 = a6->prefix_len;
    c.gateway6 = r6->gateway;
    if (IsLinkLocal6(c.gateway6)) {
      c.our_link_local6 = c.gateway6;
    } else {
      inet_pton(AF_INET6, "fe80::1", &c.our_link_local6);
    }
    c.mirrored6 = true;
  } else {
    SetFallback6(&c);
    VUNET_LOG(kInfo, "config: %s; guest gets %s/%d", why("IPv6", a6 != nullptr), Str6(c.addr6),
              c.prefix_len6);
  }

  const config_internal::Resolver res = config_internal::ParseResolvConf(resolv);
  for (const in_addr& d : res.dns4) {
    // The host's loopback is not the guest's: hand out the gateway, which
    // DNS forwarding maps to the host's resolver.
    AddUnique(&c.dns4, IsLoopback4(d) ? c.gateway4 : d, Eq4);
  }
  for (const in6_addr& d : res.dns6) {
    if (IsLinkLocal6(d)) {
      // On the host's link, not the guest's, and DNS forwarding maps only
      // loopback resolvers: of no use to the guest.
      VUNET_LOG(kInfo, "config: host resolver %s is link-local: not given to the guest", Str6(d));
      continue;
    }
    AddUnique(&c.dns6, IsLoopback6(d) ? c.gateway6 : d, Equal6);
  }
  c.search_domains = res.search;
  return c;
}

absl::Status ApplyOverrides(GuestConfig* config, const ConfigOverrides& o) {
  GuestConfig c = *config;
  if (o.ipv4_only && o.ipv6_only) {
    return absl::InvalidArgumentError("-4/--ipv4-only and -6/--ipv6-only exclude each other");
  }
  c.ipv4_only = c.ipv4_only || o.ipv4_only;
  c.ipv6_only = c.ipv6_only || o.ipv6_only;
  if (c.ipv4_only && c.ipv6_only) {
    return absl::InvalidArgumentError("-4/--ipv4-only and -6/--ipv6-only exclude each other");
  }
  auto check_family = [&](std::string_view option, std::string_view text, bool v6) -> absl::Status {
    if (v6 && c.ipv4_only) return Invalid(option, text, "IPv6 address with -4/--ipv4-only");
    if (!v6 && c.ipv6_only) return Invalid(option, text, "IPv4 address with -6/--ipv6-only");
    return absl::OkStatus();
  };

  for (const std::string& text : o.addresses) {
    constexpr std::string_view kOption = "-a/--address";
    std::optional<in_addr> a4;
    std::optional<in6_addr> a6;
    std::optional<int> prefix;
    if (absl::Status s = ParseAddressOption(kOption, text, &a4, &a6, &prefix); !s.ok()) return s;
    if (absl::Status s = check_family(kOption, text, a6.has_value()); !s.ok()) return s;
    if (a4.has_value()) {
      if (!IsRoutable4(*a4)) return Invalid(kOption, text, "not a unicast, routable address");
      c.addr4 = *a4;
      if (prefix.has_value()) c.prefix_len4 = *prefix;
    } else {
      if (!IsRoutable6(*a6)) return Invalid(kOption, text, "not a unicast, routable address");
      c.addr6 = *a6;
      if (prefix.has_value()) c.prefix_len6 = *prefix;
    }
  }

  if (o.netmask.has_value()) {
    absl::StatusOr<int> len = ParseNetmask(*o.netmask);
    if (!len.ok()) return len.status();
    c.prefix_len4 = *len;
  }

  for (const std::string& text : o.gateways) {
    constexpr std::string_view kOption = "-g/--gateway";
    if (text.find('/') != std::string::npos) return Invalid(kOption, text, "not an address");
    std::optional<in_addr> a4;
    std::optional<in6_addr> a6;
    std::optional<int> prefix;
    if (absl::Status s = ParseAddressOption(kOption, text, &a4, &a6, &prefix); !s.ok()) return s;
    if (absl::Status s = check_family(kOption, text, a6.has_value()); !s.ok()) return s;
    if (a4.has_value()) {
      if (IsUnspecified4(*a4) || IsMulticastOrBroadcast4(*a4) || IsLoopback4(*a4)) {
        return Invalid(kOption, text, "not a unicast, non-loopback address");
      }
      // DNS servers that stood for the old gateway follow it.
      for (in_addr& d : c.dns4) {
        if (Eq4(d, c.gateway4)) d = *a4;
      }
      c.gateway4 = *a4;
    } else {
      if (IsUnspecified6(*a6) || IsMulticast6(*a6) || IsLoopback6(*a6)) {
        return Invalid(kOption, text, "not a unicast, non-loopback address");
      }
      for (in6_addr& d : c.dns6) {
        if (Equal6(d, c.gateway6)) d = *a6;
      }
      c.gateway6 = *a6;
      if (IsLinkLocal6(*a6)) c.our_link_local6 = *a6;
    }
  }

  if (o.mtu.has_value()) {
    uint32_t mtu;
    if (!ParseDecimal(*o.mtu, &mtu) || mtu < kMinMtu || mtu > kMaxMtu) {
      return Invalid("-m/--mtu", *o.mtu, absl::StrFormat("not in %d..%d", kMinMtu, kMaxMtu));
    }
    c.mtu = mtu;
  }

  bool dns4_given = false;
  bool dns6_given = false;
  for (const std::string& text : o.dns) {
    constexpr std::string_view kOption = "-D/--dns";
    if (text == "none") {
      c.dns4.clear();
      c.dns6.clear();
      dns4_given = dns6_given = true;
      continue;
    }
    if (std::optional<in_addr> a4 = ParseAddr4(text)) {
      if (IsUnspecified4(*a4) || IsMulticastOrBroadcast4(*a4)) {
        return Invalid(kOption, text, "not a unicast address");
      }
      if (!dns4_given) c.dns4.clear();
      dns4_given = true;
      AddUnique(&c.dns4, *a4, Eq4);
    } else if (std::optional<in6_addr> a6 = ParseAddr6(text)) {
      if (IsUnspecified6(*a6) || IsMulticast6(*a6)) {
        return Invalid(kOption, text, "not a unicast address");
      }
      if (!dns6_given) c.dns6.clear();
      dns6_given = true;
      AddUnique(&c.dns6, *a6, Equal6);
    } else {
      return Invalid(kOption, text, "not an IPv4 or IPv6 address");
    }
  }

  bool search_given = false;
  for (const std::string& text : o.search) {
    if (!search_given) c.search_domains.clear();
    search_given = true;
    if (text == "none") continue;
    if (text.empty() || text.find_first_of(" \t") != std::string::npos) {
      return Invalid("-S/--search", text, "not a domain name");
    }
    c.search_domains.push_back(std::string(StripDot(text)));
  }

  if (o.mac_addr.has_value()) {
    const std::optional<MacAddr> mac = ParseMac(*o.mac_addr);
    if (!mac.has_value()) return Invalid("-M/--mac-addr", *o.mac_addr, "not a MAC address");
    if (mac->IsMulticast() || *mac == MacAddr{}) {
      return Invalid("-M/--mac-addr", *o.mac_addr, "not a unicast MAC address");
    }
    c.gateway_mac = *mac;
  }

  c.no_dhcp = c.no_dhcp || o.no_dhcp;
  c.no_ndp = c.no_ndp || o.no_ndp;
  c.no_dhcpv6 = c.no_dhcpv6 || o.no_dhcpv6;
  c.no_ra = c.no_ra || o.no_ra;
  c.no_dhcp_dns = c.no_dhcp_dns || o.no_dhcp_dns;
  c.no_dhcp_search = c.no_dhcp_search || o.no_dhcp_search;
  *config = std::move(c);
  return absl::OkStatus();
}

}  // namespace vunet::net
