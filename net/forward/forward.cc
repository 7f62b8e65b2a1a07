#include "net/forward/forward.h"

#include <arpa/inet.h>

#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

#include "base/log.h"

namespace vunet::net {
namespace {

constexpr uint16_t kDnsPort = 53;
constexpr uint16_t kDnsOverTlsPort = 853;

bool Contains(const std::vector<InetAddr>& list, const InetAddr& a) {
  for (const InetAddr& x : list) {
    if (x == a) return true;
  }
  return false;
}

std::string MacString(const MacAddr& m) {
  char buf[18];
  snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", m.bytes[0], m.bytes[1], m.bytes[2],
           m.bytes[3], m.bytes[4], m.bytes[5]);
  return buf;
}

}  // namespace

ForwardRules RulesFromConfig(const GuestConfig& guest, const config_internal::Resolver& resolvers,
                             const DestinationMap& map) {
  ForwardRules r;
  r.ipv4 = !guest.ipv6_only;
  r.ipv6 = !guest.ipv4_only;
  if (guest.addr4.s_addr != 0) r.guest4 = InetAddr::V4(guest.addr4);
  if (!IN6_IS_ADDR_UNSPECIFIED(&guest.addr6)) r.guest6 = InetAddr::V6(guest.addr6);
  r.prefix_len4 = guest.prefix_len4;
  const InetAddr gw4 = guest.gateway4.s_addr != 0 ? InetAddr::V4(guest.gateway4) : InetAddr();
  const InetAddr gw6 =
      IN6_IS_ADDR_UNSPECIFIED(&guest.gateway6) ? InetAddr() : InetAddr::V6(guest.gateway6);
  const InetAddr ll6 = IN6_IS_ADDR_UNSPECIFIED(&guest.our_link_local6)
                           ? InetAddr()
                           : InetAddr::V6(guest.our_link_local6);
  // The host's loopback: --map-host-loopback's address of a version in
  // place of the gateway's.
  if (map.host_loopback4.has_value()) {
    r.host_loopback.push_back(InetAddr::V4(*map.host_loopback4));
  } else if (map.map_gateway && !gw4.empty()) {
    r.host_loopback.push_back(gw4);
  }
  if (map.host_loopback6.has_value()) {
    r.host_loopback.push_back(InetAddr::V6(*map.host_loopback6));
  } else if (map.map_gateway) {
    // A link-local gateway is reachable only as our own link-local address.
    if (!gw6.empty() && !gw6.IsLinkLocal()) r.host_loopback.push_back(gw6);
    if (!ll6.empty()) r.host_loopback.push_back(ll6);
  }
  if (map.guest_addr4.has_value()) r.guest_addr_alias.push_back(InetAddr::V4(*map.guest_addr4));
  if (map.guest_addr6.has_value()) r.guest_addr_alias.push_back(InetAddr::V6(*map.guest_addr6));
  // --dns-forward: ports 53 and 853 to --dns-host, else the host's first
  // resolver of that version.
  std::optional<InetAddr> host4, host6;
  if (map.dns_host4.has_value()) {
    host4 = InetAddr::V4(*map.dns_host4);
  } else if (!resolvers.dns4.empty()) {
    host4 = InetAddr::V4(resolvers.dns4.front());
  }
  if (map.dns_host6.has_value()) {
    host6 = InetAddr::V6(*map.dns_host6);
  } else {
    for (const in6_addr& d : resolvers.dns6) {
      if (!IN6_IS_ADDR_LINKLOCAL(&d)) {
        host6 = InetAddr::V6(d);
        break;
      }
    }
  }
  for (const auto& [forward, host] :
       {std::pair{map.dns_forward4 ? InetAddr::V4(*map.dns_forward4) : InetAddr(), host4},
        std::pair{map.dns_forward6 ? InetAddr::V6(*map.dns_forward6) : InetAddr(), host6}}) {
    if (forward.empty() || !host.has_value()) continue;
    for (const uint16_t port : {kDnsPort, kDnsOverTlsPort}) {
      r.dns.push_back({{forward, port}, {*host, port}});
    }
  }
  // DNS: the gateway given in place of a loopback resolver.
  auto given = [](const auto& list, const auto& addr) {
    for (const auto& d : list) {
      if (std::memcmp(&d, &addr, sizeof(d)) == 0) return true;
    }
    return false;
  };
  if (!gw4.empty() && given(guest.dns4, guest.gateway4)) {
    for (const in_addr& d : resolvers.dns4) {
      if (InetAddr::V4(d).IsLoopback()) {
        r.dns.push_back({{gw4, kDnsPort}, {InetAddr::V4(d), kDnsPort}});
        break;
      }
    }
  }
  if (!gw6.empty() && given(guest.dns6, guest.gateway6)) {
    for (const in6_addr& d : resolvers.dns6) {
      if (IN6_IS_ADDR_LOOPBACK(&d)) {
        r.dns.push_back({{gw6, kDnsPort}, {InetAddr::V6(d), kDnsPort}});
        break;
      }
    }
  }
  return r;
}

config_internal::Resolver HostResolvers(const std::string& resolv_conf) {
  std::ifstream in(resolv_conf);
  std::stringstream text;
  text << in.rdbuf();
  return config_internal::ParseResolvConf(text.str());
}

const char* RefusalName(Refusal refusal) {
  switch (refusal) {
    case Refusal::kNone:
      return "none";
    case Refusal::kFamily:
      return "IP version not served";
    case Refusal::kUnspecified:
      return "unspecified address";
    case Refusal::kThisNetwork:
      return "this network (0.0.0.0/8)";
    case Refusal::kLoopback:
      return "the guest's loopback";
    case Refusal::kMulticast:
      return "multicast";
    case Refusal::kBroadcast:
      return "broadcast";
    case Refusal::kLinkLocal:
      return "link-local";
    case Refusal::kV4Mapped:
      return "v4-mapped IPv6";
    case Refusal::kPort:
      return "port 0";
  }
  return "?";
}

GuestIdentity::GuestIdentity(const MacAddr& mac, const InetAddr& addr4, const InetAddr& addr6)
    : mac_(mac), addr4_(addr4), addr6_(addr6) {}

void GuestIdentity::Restore(const MacAddr& mac, const InetAddr& addr4, const InetAddr& addr6,
                            const InetAddr& link_local6) {
  mac_ = mac;
  addr4_ = addr4;
  addr6_ = addr6;
  link_local6_ = link_local6;
  VUNET_LOG(kInfo, "the guest's identity as the migration's source knew it: %s, %s, %s, %s",
            MacString(mac), addr4.empty() ? "no IPv4" : addr4.ToString(),
            addr6.empty() ? "no IPv6" : addr6.ToString(),
            link_local6.empty() ? "no link-local IPv6" : link_local6.ToString());
}

void GuestIdentity::Learn(const ParsedFrame& p) {
  const MacAddr& src = p.src_mac;
  if (!src.IsMulticast() && !(src == MacAddr{}) && !(src == mac_)) {
    mac_ = src;
    VUNET_LOG_RATELIMITED(kInfo, "the guest's MAC address is %s", MacString(src));
  }
  if (p.l3 == L3Kind::kIpv4) {
    if (p.ip.src4.s_addr == 0) return;
    const InetAddr a = InetAddr::V4(p.ip.src4);
    if (a != addr4_ && !a.IsMulticast() && !a.IsLoopback()) {
      addr4_ = a;
      VUNET_LOG_RATELIMITED(kInfo, "the guest uses %s", a.ToString());
    }
  } else if (p.l3 == L3Kind::kIpv6) {
    const InetAddr a = InetAddr::V6(p.ip.src6);
    if (a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.IsV4Mapped()) return;
    InetAddr& slot = a.IsLinkLocal() ? link_local6_ : addr6_;
    if (a != slot) {
      slot = a;
      VUNET_LOG_RATELIMITED(kInfo, "the guest uses %s", a.ToString());
    }
  }
}

Forwarding::Forwarding(const ForwardRules& rules, const MacAddr& guest_mac)
    : rules_(rules), guest_(guest_mac, rules.guest4, rules.guest6) {
  const int p = rules.prefix_len4;
  if (!rules.guest4.empty() && p > 0 && p < 31) {
    const uint32_t mask = ~0u << (32 - p);
    subnet_broadcast4_ = htonl((ntohl(rules.guest4.v4().s_addr) & mask) | ~mask);
  }
}

bool Forwarding::IsHost(const InetAddr& dst) const { return Contains(rules_.host_loopback, dst); }

std::optional<Endpoint> Forwarding::Outbound(FlowProto proto, const Endpoint& dst,
                                             Refusal* why) const {
  auto refuse = [why](Refusal r) -> std::optional<Endpoint> {
    if (why != nullptr) *why = r;
    return std::nullopt;
  };
  if (why != nullptr) *why = Refusal::kNone;
  const InetAddr& a = dst.addr;
  if ((a.is_v4() && !rules_.ipv4) || (a.is_v6() && !rules_.ipv6) || a.empty()) {
    return refuse(Refusal::kFamily);
  }
  const bool ported = proto != FlowProto::kIcmp;
  if (ported && dst.port == 0) return refuse(Refusal::kPort);
  if (ported) {
    for (const DnsForward& d : rules_.dns) {
      if (d.guest == dst) return d.host;
    }
  }
  const uint16_t port = ported ? dst.port : 0;
  if (Contains(rules_.host_loopback, a)) {
    in_addr lo4;
    lo4.s_addr = htonl(INADDR_LOOPBACK);
    return Endpoint{a.is_v4() ? InetAddr::V4(lo4) : InetAddr::V6(in6addr_loopback), port};
  }
  if (Contains(rules_.guest_addr_alias, a)) {
    const InetAddr& own = a.is_v4() ? rules_.guest4 : rules_.guest6;
    if (!own.empty()) return Endpoint{own, port};
  }
  if (a.IsUnspecified()) return refuse(Refusal::kUnspecified);
  if (a.IsLoopback()) return refuse(Refusal::kLoopback);
  if (a.IsMulticast()) return refuse(Refusal::kMulticast);
  if (a.is_v4()) {
    const uint8_t b0 = static_cast<uint8_t>(ntohl(a.v4().s_addr) >> 24);
    if (b0 == 0) return refuse(Refusal::kThisNetwork);
    // 240.0.0.0/4 is reserved; its last address is the limited broadcast.
    if (b0 >= 240 || (subnet_broadcast4_ != 0 && a.v4().s_addr == subnet_broadcast4_)) {
      return refuse(Refusal::kBroadcast);
    }
  } else {
    if (a.IsLinkLocal()) return refuse(Refusal::kLinkLocal);
    if (a.IsV4Mapped()) return refuse(Refusal::kV4Mapped);
  }
  return Endpoint{a, port};
}

InetAddr Forwarding::InboundSource(const InetAddr& peer, int family) const {
  if (peer.family() != family) return InetAddr();
  const InetAddr& own = family == AF_INET ? rules_.guest4 : rules_.guest6;
  const bool guest_address = (!own.empty() && peer == own) || peer == guest_.address(family);
  if (!peer.IsLoopback() && !guest_address) {
    // Another link's address: not one the guest could answer.
    return peer.is_v6() && peer.IsLinkLocal() ? InetAddr() : peer;
  }
  // The guest's own address on the host: --map-guest-addr's address, which
  // the guest reaches it by.
  if (guest_address) {
    for (const InetAddr& a : rules_.guest_addr_alias) {
      if (a.family() == family) return a;
    }
  }
  // The first address standing for the host in the guest's family, a global
  // one before a link-local one.
  const InetAddr* link_local = nullptr;
  for (const InetAddr& a : rules_.host_loopback) {
    if (a.family() != family) continue;
    if (!a.IsLinkLocal()) return a;
    if (link_local == nullptr) link_local = &a;
  }
  return link_local != nullptr ? *link_local : InetAddr();
}

}  // namespace vunet::net
