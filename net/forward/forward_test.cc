#include "net/forward/forward.h"

#include <string>
#include <vector>

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

TEST(Forwarding, EveryRuleHoldsForTcpUdpAndIcmp) {
  const Forwarding forward(RulesFromConfig(Guest(), Resolvers()), MacAddr{});
  for (const Rule& rule : kRules) {
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
  ForwardRules rules = RulesFromConfig(Guest(), {}, /*map_gateway=*/false);
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
