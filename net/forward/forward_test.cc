#include "net/forward/forward.h"

#include <string>
#include <vector>

#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

InetAddr A(const char* text) { return InetAddr::Parse(text).value(); }

// The guest of these tests: 192.168.1.20/24 behind gateway 192.168.1.1, and
// 2001:db8::20 behind a link-local gateway fe80::1 (which is then also ours),
// given the gateway as its DNS server in place of 127.0.0.53 and ::1.
GuestConfig Guest() {
  GuestConfig g;
  ConfigOverrides o;
  o.addresses = {"192.168.1.20/24", "2001:db8::20/64"};
  o.gateways = {"192.168.1.1", "fe80::1"};
  o.dns = {"192.168.1.1", "fe80::1"};
  EXPECT_TRUE(ApplyOverrides(&g, o).ok());
  return g;
}

config_internal::Resolver Resolvers() {
  config_internal::Resolver r;
  r.dns4 = {A("127.0.0.53").v4()};
  r.dns6 = {A("::1").v6()};
  return r;
}

// One rule: a destination as the guest addressed it, and where it goes (an
// empty `to` for a refusal with `why`).
struct Rule {
  const char* name;
  const char* dst;
  uint16_t port;
  const char* to;  // "" if refused.
  uint16_t to_port;
  Refusal why;
  bool port_specific;  // Holds for TCP and UDP only (ICMP has no ports).
};

const Rule kRules[] = {
    {"routable IPv4 passes", "93.184.216.34", 80, "93.184.216.34", 80, Refusal::kNone, false},
    {"routable IPv6 passes", "2606:2800::1", 443, "2606:2800::1", 443, Refusal::kNone, false},
    {"the gateway is the host", "192.168.1.1", 8080, "127.0.0.1", 8080, Refusal::kNone, false},
    {"our link-local is the host", "fe80::1", 22, "::1", 22, Refusal::kNone, false},
    {"IPv4 link-local passes", "169.254.169.254", 80, "169.254.169.254", 80, Refusal::kNone, false},
    {"unspecified IPv4", "0.0.0.0", 80, "", 0, Refusal::kUnspecified, false},
    {"unspecified IPv6", "::", 80, "", 0, Refusal::kUnspecified, false},
    {"this network", "0.1.2.3", 80, "", 0, Refusal::kThisNetwork, false},
    {"the guest's loopback", "127.0.0.1", 80, "", 0, Refusal::kLoopback, false},
    {"the guest's IPv6 loopback", "::1", 80, "", 0, Refusal::kLoopback, false},
    {"multicast", "224.0.0.251", 5353, "", 0, Refusal::kMulticast, false},
    {"IPv6 multicast", "ff02::fb", 5353, "", 0, Refusal::kMulticast, false},
    {"limited broadcast", "255.255.255.255", 67, "", 0, Refusal::kBroadcast, false},
    {"reserved 240/4", "240.0.0.1", 80, "", 0, Refusal::kBroadcast, false},
    {"subnet broadcast", "192.168.1.255", 137, "", 0, Refusal::kBroadcast, false},
    {"other link-local", "fe80::99", 80, "", 0, Refusal::kLinkLocal, false},
    {"v4-mapped", "::ffff:1.2.3.4", 80, "", 0, Refusal::kV4Mapped, false},
    {"port 0", "93.184.216.34", 0, "", 0, Refusal::kPort, true},
    {"DNS to the gateway", "192.168.1.1", 53, "127.0.0.53", 53, Refusal::kNone, true},
    {"DNS to our link-local", "fe80::1", 53, "::1", 53, Refusal::kNone, true},
    {"DNS elsewhere passes", "9.9.9.9", 53, "9.9.9.9", 53, Refusal::kNone, false},
};

// Each rule against TCP, UDP and ICMP (those for ports against TCP and UDP).
void CheckRules(const Forwarding& forward, absl::Span<const Rule> rules) {
  for (const Rule& rule : rules) {
    for (FlowProto proto : {FlowProto::kTcp, FlowProto::kUdp, FlowProto::kIcmp}) {
      const bool icmp = proto == FlowProto::kIcmp;
      if (icmp && rule.port_specific) continue;
      SCOPED_TRACE(std::string(rule.name) + (icmp                       ? " (ICMP)"
                                             : proto == FlowProto::kTcp ? " (TCP)"
                                                                        : " (UDP)"));
      Refusal why = Refusal::kPort;
      const std::optional<Endpoint> to =
          forward.Outbound(proto, Endpoint{A(rule.dst), icmp ? uint16_t{0} : rule.port}, &why);
      EXPECT_EQ(why, rule.why) << RefusalName(why);
      if (rule.to[0] == '\0') {
        EXPECT_FALSE(to.has_value()) << to->ToString();
        continue;
      }
      ASSERT_TRUE(to.has_value());
      EXPECT_EQ(to->addr, A(rule.to));
      EXPECT_EQ(to->port, icmp ? 0 : rule.to_port);
    }
  }
}

TEST(Forwarding, EveryRuleHoldsForTcpUdpAndIcmp) {
  const Forwarding forward(RulesFromConfig(Guest(), Resolvers()), MacAddr{});
  CheckRules(forward, kRules);
}

in_addr V4(const char* text) { return A(text).v4(); }
in6_addr V6(const char* text) { return A(text).v6(); }

// passt's options (DestinationMap, as the command line gives it) and the
// rules that change under them; everything else as above.
struct Mapped {
  const char* name;
  DestinationMap map;
  std::vector<Rule> rules;
};

std::vector<Mapped> MappedCases() {
  std::vector<Mapped> cases;
  DestinationMap m;
  m.map_gateway = false;
  cases.push_back(
      {"--no-map-gw",
       m,
       {
           {"the gateway is itself", "192.168.1.1", 8080, "192.168.1.1", 8080, Refusal::kNone,
            false},
           {"our link-local is another link's", "fe80::1", 22, "", 0, Refusal::kLinkLocal, false},
           {"DNS to the gateway still goes to the resolver", "192.168.1.1", 53, "127.0.0.53", 53,
            Refusal::kNone, true},
       }});
  m = {};
  m.host_loopback4 = V4("10.0.2.3");
  cases.push_back(
      {"--map-host-loopback 10.0.2.3",
       m,
       {
           {"the address is the host", "10.0.2.3", 80, "127.0.0.1", 80, Refusal::kNone, false},
           {"the gateway is itself", "192.168.1.1", 8080, "192.168.1.1", 8080, Refusal::kNone,
            false},
           {"IPv6 keeps the default", "fe80::1", 22, "::1", 22, Refusal::kNone, false},
       }});
  m = {};
  m.host_loopback6 = V6("2001:db8::3");
  cases.push_back(
      {"--map-host-loopback 2001:db8::3",
       m,
       {
           {"the address is the host", "2001:db8::3", 80, "::1", 80, Refusal::kNone, false},
           {"our link-local is another link's", "fe80::1", 22, "", 0, Refusal::kLinkLocal, false},
           {"IPv4 keeps the default", "192.168.1.1", 8080, "127.0.0.1", 8080, Refusal::kNone,
            false},
       }});
  m = {};
  m.map_gateway = false;  // --map-host-loopback none, as the command line gives it.
  m.host_loopback4 = V4("10.0.2.3");
  cases.push_back(
      {"--map-host-loopback none --map-host-loopback 10.0.2.3",
       m,
       {
           {"the address is the host", "10.0.2.3", 80, "127.0.0.1", 80, Refusal::kNone, false},
           {"our link-local is another link's", "fe80::1", 22, "", 0, Refusal::kLinkLocal, false},
       }});
  m = {};
  m.guest_addr4 = V4("169.254.1.2");
  m.guest_addr6 = V6("2001:db8::99");
  cases.push_back({"--map-guest-addr 169.254.1.2 --map-guest-addr 2001:db8::99",
                   m,
                   {
                       {"IPv4 alias is the guest's address", "169.254.1.2", 443, "192.168.1.20",
                        443, Refusal::kNone, false},
                       {"IPv6 alias is the guest's address", "2001:db8::99", 443, "2001:db8::20",
                        443, Refusal::kNone, false},
                       {"the gateway is still the host", "192.168.1.1", 80, "127.0.0.1", 80,
                        Refusal::kNone, false},
                   }});
  m = {};
  m.dns_forward4 = V4("169.254.1.1");
  m.dns_forward6 = V6("fd00::53");
  cases.push_back(
      {"--dns-forward 169.254.1.1 --dns-forward fd00::53",
       m,
       {
           {"DNS to the first resolver", "169.254.1.1", 53, "127.0.0.53", 53, Refusal::kNone, true},
           {"DNS over TLS too", "169.254.1.1", 853, "127.0.0.53", 853, Refusal::kNone, true},
           {"other ports pass", "169.254.1.1", 80, "169.254.1.1", 80, Refusal::kNone, false},
           {"IPv6 DNS to the first resolver", "fd00::53", 53, "::1", 53, Refusal::kNone, true},
           {"the gateway's DNS still goes to the resolver", "192.168.1.1", 53, "127.0.0.53", 53,
            Refusal::kNone, true},
       }});
  m.dns_host4 = V4("192.0.2.53");
  cases.push_back(
      {"--dns-forward 169.254.1.1 --dns-host 192.0.2.53",
       m,
       {
           {"DNS to --dns-host", "169.254.1.1", 53, "192.0.2.53", 53, Refusal::kNone, true},
           {"DNS over TLS to --dns-host", "169.254.1.1", 853, "192.0.2.53", 853, Refusal::kNone,
            true},
       }});
  return cases;
}

TEST(Forwarding, PasstOptionsChangeTheRulesForTcpUdpAndIcmp) {
  for (const Mapped& c : MappedCases()) {
    SCOPED_TRACE(c.name);
    EXPECT_TRUE(c.map.customized());
    CheckRules(Forwarding(RulesFromConfig(Guest(), Resolvers(), c.map), MacAddr{}), c.rules);
  }
}

TEST(Forwarding, DnsForwardWithoutAResolverMapsNothing) {
  DestinationMap m;
  m.dns_forward4 = V4("169.254.1.1");
  m.dns_forward6 = V6("fd00::53");
  config_internal::Resolver link_local_only;
  link_local_only.dns6 = {V6("fe80::53")};
  const ForwardRules rules = RulesFromConfig(Guest(), link_local_only, m);
  for (const DnsForward& d : rules.dns) {
    EXPECT_NE(d.guest.addr, A("169.254.1.1")) << d.host.ToString();
    EXPECT_NE(d.guest.addr, A("fd00::53")) << d.host.ToString();
  }
}

TEST(Forwarding, FamiliesTheGuestLacksAreRefused) {
  GuestConfig g = Guest();
  g.ipv4_only = true;
  const Forwarding forward(RulesFromConfig(g, {}), MacAddr{});
  Refusal why;
  EXPECT_FALSE(forward.Outbound(FlowProto::kTcp, {A("2606:2800::1"), 80}, &why));
  EXPECT_EQ(why, Refusal::kFamily);
  EXPECT_TRUE(forward.Outbound(FlowProto::kTcp, {A("93.184.216.34"), 80}, &why));
}

TEST(Forwarding, NoMapGatewayAndExplicitMappings) {
  DestinationMap no_map_gw;
  no_map_gw.map_gateway = false;
  ForwardRules rules = RulesFromConfig(Guest(), {}, no_map_gw);
  const Forwarding plain(rules, MacAddr{});
  const std::optional<Endpoint> to = plain.Outbound(FlowProto::kUdp, {A("192.168.1.1"), 8080});
  ASSERT_TRUE(to.has_value());
  EXPECT_EQ(to->addr, A("192.168.1.1"));  // The real gateway, not the host.
  EXPECT_FALSE(plain.IsHost(A("192.168.1.1")));

  rules.host_loopback = {A("10.0.2.3")};
  rules.guest_addr_alias = {A("10.0.2.4")};
  const Forwarding mapped(rules, MacAddr{});
  EXPECT_EQ(mapped.Outbound(FlowProto::kTcp, {A("10.0.2.3"), 1})->addr, A("127.0.0.1"));
  EXPECT_EQ(mapped.Outbound(FlowProto::kTcp, {A("10.0.2.4"), 1})->addr, A("192.168.1.20"));
  EXPECT_EQ(mapped.InboundSource(A("127.0.0.1"), AF_INET), A("10.0.2.3"));
}

TEST(Forwarding, InboundSources) {
  const Forwarding forward(RulesFromConfig(Guest(), {}), MacAddr{});
  // The host itself: loopback, or the address the guest mirrors.
  EXPECT_EQ(forward.InboundSource(A("127.0.0.1"), AF_INET), A("192.168.1.1"));
  EXPECT_EQ(forward.InboundSource(A("192.168.1.20"), AF_INET), A("192.168.1.1"));
  EXPECT_EQ(forward.InboundSource(A("::1"), AF_INET6), A("fe80::1"));
  // Anyone else as they are; the other family is not translated.
  EXPECT_EQ(forward.InboundSource(A("203.0.113.9"), AF_INET), A("203.0.113.9"));
  EXPECT_TRUE(forward.InboundSource(A("203.0.113.9"), AF_INET6).empty());
  // A global IPv6 gateway is preferred to our link-local address.
  GuestConfig g = Guest();
  g.gateway6 = A("2001:db8::1").v6();
  const Forwarding global(RulesFromConfig(g, {}), MacAddr{});
  EXPECT_EQ(global.InboundSource(A("::1"), AF_INET6), A("2001:db8::1"));
}

// Host peers as the guest sees them under passt's options: a loopback peer
// from --map-host-loopback's address (none: not at all), one using the
// guest's own address from --map-guest-addr's.
TEST(Forwarding, InboundSourcesUnderPasstOptions) {
  struct Case {
    const char* name;
    DestinationMap map;
    const char* peer;
    int family;
    const char* seen;  // "" if the peer cannot be shown.
  };
  DestinationMap host_lo;
  host_lo.host_loopback4 = V4("10.0.2.3");
  DestinationMap none;
  none.map_gateway = false;
  DestinationMap alias;
  alias.guest_addr4 = V4("169.254.1.2");
  alias.guest_addr6 = V6("2001:db8::99");
  const Case cases[] = {
      {"--map-host-loopback: loopback", host_lo, "127.0.0.1", AF_INET, "10.0.2.3"},
      {"--map-host-loopback: the guest's address", host_lo, "192.168.1.20", AF_INET, "10.0.2.3"},
      {"--map-host-loopback: IPv6 as by default", host_lo, "::1", AF_INET6, "fe80::1"},
      {"--no-map-gw: loopback", none, "127.0.0.1", AF_INET, ""},
      {"--no-map-gw: others as they are", none, "203.0.113.9", AF_INET, "203.0.113.9"},
      {"--map-guest-addr: the guest's address", alias, "192.168.1.20", AF_INET, "169.254.1.2"},
      {"--map-guest-addr: IPv6", alias, "2001:db8::20", AF_INET6, "2001:db8::99"},
      {"--map-guest-addr: loopback still the gateway", alias, "127.0.0.1", AF_INET, "192.168.1.1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Forwarding forward(RulesFromConfig(Guest(), {}, c.map), MacAddr{});
    const InetAddr seen = forward.InboundSource(A(c.peer), c.family);
    if (c.seen[0] == '\0') {
      EXPECT_TRUE(seen.empty()) << seen.ToString();
    } else {
      EXPECT_EQ(seen, A(c.seen));
    }
  }
}

TEST(GuestIdentity, LearnsFromFramesInOnePlace) {
  GuestIdentity id(kDefaultGuestMac, A("192.168.1.20"), InetAddr());
  ParsedFrame p;
  p.src_mac = MacAddr{{0x52, 0x54, 0, 1, 2, 3}};
  p.l3 = L3Kind::kIpv4;
  p.ip.src4 = A("192.168.1.77").v4();
  id.Learn(p);
  EXPECT_EQ(id.mac(), p.src_mac);
  EXPECT_EQ(id.address(AF_INET), A("192.168.1.77"));
  // A DHCP discover from 0.0.0.0 and a multicast source change nothing.
  p.ip.src4 = A("0.0.0.0").v4();
  p.src_mac = MacAddr{{0x01, 0, 0x5e, 0, 0, 1}};
  id.Learn(p);
  EXPECT_EQ(id.address(AF_INET), A("192.168.1.77"));
  EXPECT_EQ(id.mac(), (MacAddr{{0x52, 0x54, 0, 1, 2, 3}}));
  // IPv6: global and link-local sources are kept apart.
  p.l3 = L3Kind::kIpv6;
  p.ip.src6 = A("fe80::5054:ff:fe01:203").v6();
  id.Learn(p);
  EXPECT_TRUE(id.address(AF_INET6).empty());
  EXPECT_EQ(id.link_local6(), A("fe80::5054:ff:fe01:203"));
  p.ip.src6 = A("2001:db8::5054:ff:fe01:203").v6();
  id.Learn(p);
  EXPECT_EQ(id.address(AF_INET6), A("2001:db8::5054:ff:fe01:203"));
}

}  // namespace
}  // namespace vunet::net
