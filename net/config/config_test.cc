#include "net/config/config.h"

#include <arpa/inet.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "net/gateway/dhcp.h"
#include "net/gateway/dhcpv6.h"
#include "net/gateway/from_config.h"
#include "net/gateway/ndp.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

using testing::Ip4;
using testing::Ip6;

std::string S4(const in_addr& a) {
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return buf;
}
std::string S6(const in6_addr& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(AF_INET6, &a, buf, sizeof(buf));
  return buf;
}

// Shaped as the kernel writes them.
constexpr char kRoute[] =
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";

constexpr char kRoute6[] =
    "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";

std::vector<HostAddress> Interfaces() {
  std::vector<HostAddress> v;
  HostAddress lo4{.ifname = "lo", .family = AF_INET, .addr4 = Ip4("127.0.0.1"), .prefix_len = 8};
  lo4.loopback = true;
  v.push_back(lo4);
  HostAddress lo6{.ifname = "lo", .family = AF_INET6, .addr6 = Ip6("::1"), .prefix_len = 128};
  lo6.loopback = true;
  v.push_back(lo6);
  v.push_back({.ifname = "eth1", .family = AF_INET, .addr4 = Ip4("192.168.1.7"), .prefix_len = 24});
  v.push_back({.ifname = "eth0", .family = AF_INET6, .addr6 = Ip6("fe80::2"), .prefix_len = 64});
  v.push_back({.ifname = "eth0", .family = AF_INET, .addr4 = Ip4("192.0.2.2"), .prefix_len = 24});
  v.push_back(
      {.ifname = "eth0", .family = AF_INET6, .addr6 = Ip6("2001:db8::2"), .prefix_len = 64});
  return v;
}

HostSources Sources() {
  HostSources s;
  s.addresses = Interfaces();
  s.route = kRoute;
  s.ipv6_route = kRoute6;
  s.resolv_conf =
      "# generated\n"
      "nameserver 198.51.100.53\n"
      "nameserver 2001:db8::53\n"
      "search example.org corp.example.\n";
  return s;
}

TEST(ParseDefaultRoute4, LowestMetricWithGateway) {
  const auto r = config_internal::ParseDefaultRoute4(kRoute);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ifname, "eth0");
  EXPECT_EQ(S4(r->gateway), "192.0.2.1");
}

TEST(ParseDefaultRoute4, NoneWithoutDefault) {
  EXPECT_FALSE(config_internal::ParseDefaultRoute4("").has_value());
  EXPECT_FALSE(config_internal::ParseDefaultRoute4(
                   "Iface\tDestination\tGateway\n"
                   "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
                   .has_value());
  // A default route that is down or has no gateway does not count.
  EXPECT_FALSE(config_internal::ParseDefaultRoute4(
                   "eth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n")
                   .has_value());
}

TEST(ParseDefaultRoute6, SkipsRejectAndLoopback) {
  const auto r = config_internal::ParseDefaultRoute6(kRoute6);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ifname, "eth0");
  EXPECT_EQ(S6(r->gateway), "fe80::1");
  EXPECT_FALSE(config_internal::ParseDefaultRoute6("garbage\n\n").has_value());
}

TEST(ParseDefaultRoute, ThroughOneInterface) {
  // eth1's route has the higher metric: only -i picks it.
  const auto r = config_internal::ParseDefaultRoute4(kRoute, "eth1");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->ifname, "eth1");
  EXPECT_EQ(S4(r->gateway), "192.168.1.1");
  EXPECT_EQ(config_internal::ParseDefaultRoute4(kRoute, "eth0")->ifname, "eth0");
  EXPECT_FALSE(config_internal::ParseDefaultRoute4(kRoute, "eth9").has_value());
  EXPECT_FALSE(config_internal::ParseDefaultRoute4(kRoute, "lo").has_value());
  EXPECT_EQ(config_internal::ParseDefaultRoute6(kRoute6, "eth0")->ifname, "eth0");
  EXPECT_FALSE(config_internal::ParseDefaultRoute6(kRoute6, "eth1").has_value());
  EXPECT_FALSE(config_internal::ParseDefaultRoute6(kRoute6, "lo").has_value());
}

TEST(ParseResolvConf, ServersAndLastSearch) {
  const auto r = config_internal::ParseResolvConf(
      "; comment\n"
      "nameserver 127.0.0.53\n"
      "nameserver fe80::1%eth0\n"
      "nameserver bogus\n"
      "nameserver 127.0.0.53\n"
      "domain first.example\n"
      "search a.example b.example. # trailing\n"
      "options edns0\n");
  ASSERT_EQ(r.dns4.size(), 1u);
  EXPECT_EQ(S4(r.dns4[0]), "127.0.0.53");
  ASSERT_EQ(r.dns6.size(), 1u);
  EXPECT_EQ(S6(r.dns6[0]), "fe80::1");
  EXPECT_EQ(r.search, (std::vector<std::string>{"a.example", "b.example"}));
}

TEST(MirrorHost, MirrorsAddressesOfTheDefaultRouteInterface) {
  absl::StatusOr<GuestConfig> c = MirrorHost(Sources());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->mirrored4);
  EXPECT_TRUE(c->mirrored6);
  EXPECT_EQ(S4(c->addr4), "192.0.2.2");  // eth0's, not eth1's listed first.
  EXPECT_EQ(c->prefix_len4, 24);
  EXPECT_EQ(S4(c->gateway4), "192.0.2.1");
  EXPECT_EQ(S6(c->addr6), "2001:db8::2");  // Not the link-local one.
  EXPECT_EQ(c->prefix_len6, 64);
  EXPECT_EQ(S6(c->gateway6), "fe80::1");
  EXPECT_EQ(S6(c->our_link_local6), "fe80::1");
  ASSERT_EQ(c->dns4.size(), 1u);
  EXPECT_EQ(S4(c->dns4[0]), "198.51.100.53");
  ASSERT_EQ(c->dns6.size(), 1u);
  EXPECT_EQ(S6(c->dns6[0]), "2001:db8::53");
  EXPECT_EQ(c->search_domains, (std::vector<std::string>{"example.org", "corp.example"}));
  EXPECT_EQ(c->mtu, 65520u);
  EXPECT_EQ(c->gateway_mac, kDefaultGatewayMac);
  EXPECT_EQ(c->guest_mac, kDefaultGuestMac);
  EXPECT_FALSE(c->no_dhcp || c->no_ndp || c->no_dhcpv6 || c->no_ra);
  EXPECT_FALSE(c->ipv4_only || c->ipv6_only);
}

TEST(MirrorHost, GlobalIpv6GatewayKeepsFe80Colon1AsOurLinkLocal) {
  HostSources s = Sources();
  s.ipv6_route =
      "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
      "20010db8000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n";
  absl::StatusOr<GuestConfig> c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(S6(c->gateway6), "2001:db8::1");
  EXPECT_EQ(S6(c->our_link_local6), "fe80::1");
  const NdpConfig ndp = ToNdpConfig(*c);
  EXPECT_EQ(S6(ndp.gateway), "2001:db8::1");
  EXPECT_EQ(S6(ndp.gateway_ll), "fe80::1");
}

TEST(MirrorHost, LoopbackResolverBecomesTheGateway) {
  HostSources s = Sources();
  s.resolv_conf =
      "nameserver 127.0.0.53\nnameserver fe80::53%eth0\nnameserver ::1\nnameserver "
      "198.51.100.9\n";
  absl::StatusOr<GuestConfig> c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c->dns4.size(), 2u);
  EXPECT_EQ(S4(c->dns4[0]), "192.0.2.1");
  EXPECT_EQ(S4(c->dns4[1]), "198.51.100.9");
  ASSERT_EQ(c->dns6.size(), 1u);
  EXPECT_EQ(S6(c->dns6[0]), "fe80::1");
  EXPECT_TRUE(c->search_domains.empty());
}

TEST(MirrorHost, LinkLocalResolversAreNotGiven) {
  HostSources s = Sources();
  s.resolv_conf = "nameserver fe80::53%eth0\nnameserver 198.51.100.9\n";
  absl::StatusOr<GuestConfig> c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  // On the host's link only, and not mapped by DNS forwarding: of no use.
  EXPECT_TRUE(c->dns6.empty());
  ASSERT_EQ(c->dns4.size(), 1u);
}

TEST(MirrorHost, LoopbackOnlyHostFallsBack) {
  HostSources s;
  std::vector<HostAddress> lo = Interfaces();
  lo.resize(2);  // Loopback only.
  s.addresses = lo;
  s.route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
  s.ipv6_route = "";
  s.resolv_conf = "nameserver 127.0.0.1\n";
  absl::StatusOr<GuestConfig> c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->mirrored4);
  EXPECT_FALSE(c->mirrored6);
  EXPECT_EQ(S4(c->addr4), "10.0.2.15");
  EXPECT_EQ(c->prefix_len4, 24);
  EXPECT_EQ(S4(c->gateway4), "10.0.2.2");
  EXPECT_EQ(S6(c->addr6), "fd00:5655:4e45::2");
  EXPECT_EQ(S6(c->gateway6), "fe80::1");
  ASSERT_EQ(c->dns4.size(), 1u);
  EXPECT_EQ(S4(c->dns4[0]), "10.0.2.2");
  EXPECT_TRUE(c->dns6.empty());
}

TEST(MirrorHost, DefaultRouteWithoutAddressFallsBack) {
  HostSources s = Sources();
  std::vector<HostAddress> v = Interfaces();
  v.resize(2);
  s.addresses = v;
  absl::StatusOr<GuestConfig> c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->mirrored4);
  EXPECT_FALSE(c->mirrored6);
}

TEST(MirrorHost, InterfaceChosenOverTheDefaultRoutes) {
  HostSources s = Sources();
  s.interface = "eth1";
  s.resolv_conf = "nameserver 127.0.0.53\nnameserver ::1\n";
  absl::StatusOr<GuestConfig> c = MirrorHost(s);
  ASSERT_TRUE(c.ok()) << c.status();
  // IPv4: eth1's address and eth1's default route, not eth0's of lower metric.
  EXPECT_TRUE(c->mirrored4);
  EXPECT_EQ(S4(c->addr4), "192.168.1.7");
  EXPECT_EQ(c->prefix_len4, 24);
  EXPECT_EQ(S4(c->gateway4), "192.168.1.1");
  ASSERT_EQ(c->dns4.size(), 1u);
  EXPECT_EQ(S4(c->dns4[0]), "192.168.1.1");  // The loopback resolver: eth1's gateway.
  // IPv6: eth1 has neither address nor route; eth0's are not used.
  EXPECT_FALSE(c->mirrored6);
  EXPECT_EQ(S6(c->addr6), "fd00:5655:4e45::2");
  EXPECT_EQ(S6(c->gateway6), "fe80::1");

  s.interface = "eth0";  // The default routes' own: as without -i.
  c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->mirrored4 && c->mirrored6);
  EXPECT_EQ(S4(c->addr4), "192.0.2.2");
  EXPECT_EQ(S6(c->addr6), "2001:db8::2");
}

TEST(MirrorHost, InterfaceMissingOrWithoutAddressOrRouteFallsBack) {
  HostSources s = Sources();
  s.interface = "wlan9";  // No such interface.
  absl::StatusOr<GuestConfig> c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->mirrored4);
  EXPECT_FALSE(c->mirrored6);
  EXPECT_EQ(S4(c->addr4), "10.0.2.15");
  EXPECT_EQ(S4(c->gateway4), "10.0.2.2");
  EXPECT_EQ(S6(c->addr6), "fd00:5655:4e45::2");

  // eth1 has an IPv4 address but no route through it; its IPv6 address is
  // link-local only, and another interface's global one is not taken.
  s.interface = "eth1";
  s.route = std::string(kRoute).substr(0, std::string(kRoute).find("eth1\t00000000"));
  s.addresses->push_back(
      {.ifname = "eth1", .family = AF_INET6, .addr6 = Ip6("fe80::7"), .prefix_len = 64});
  s.ipv6_route =
      "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
      "fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth1\n";
  c = MirrorHost(s);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->mirrored4);
  EXPECT_EQ(S4(c->addr4), "10.0.2.15");
  EXPECT_FALSE(c->mirrored6);
  EXPECT_EQ(S6(c->addr6), "fd00:5655:4e45::2");
}

// The real host: OK, and each family either mirrored or the fallback.
TEST(MirrorHost, RealHost) {
  absl::StatusOr<GuestConfig> c = MirrorHost();
  ASSERT_TRUE(c.ok()) << c.status();
  fprintf(stderr, "host mirrored: %s/%d gw %s (%s), %s/%d gw %s (%s), %zu+%zu DNS\n",
          S4(c->addr4).c_str(), c->prefix_len4, S4(c->gateway4).c_str(),
          c->mirrored4 ? "mirrored" : "fallback", S6(c->addr6).c_str(), c->prefix_len6,
          S6(c->gateway6).c_str(), c->mirrored6 ? "mirrored" : "fallback", c->dns4.size(),
          c->dns6.size());
  if (!c->mirrored4) {
    EXPECT_EQ(S4(c->addr4), "10.0.2.15");
    EXPECT_EQ(S4(c->gateway4), "10.0.2.2");
  } else {
    EXPECT_NE(c->addr4.s_addr, 0u);
    EXPECT_NE(c->gateway4.s_addr, 0u);
  }
  if (!c->mirrored6) {
    EXPECT_EQ(S6(c->addr6), "fd00:5655:4e45::2");
  }
  for (const in_addr& d : c->dns4) EXPECT_NE(reinterpret_cast<const uint8_t*>(&d)[0], 127);
  EXPECT_TRUE(DhcpServer::Create(ToDhcpConfig(*c)).ok());
  EXPECT_TRUE(NdpResponder::Create(ToNdpConfig(*c)).ok());
}

GuestConfig Mirrored() { return MirrorHost(Sources()).value(); }

TEST(ApplyOverrides, NoneKeepsEverything) {
  GuestConfig c = Mirrored();
  ASSERT_TRUE(ApplyOverrides(&c, {}).ok());
  EXPECT_EQ(S4(c.addr4), "192.0.2.2");
  EXPECT_EQ(c.dns4.size(), 1u);
}

TEST(ApplyOverrides, AddressesPrefixGatewayMtu) {
  GuestConfig c = Mirrored();
  ConfigOverrides o;
  o.addresses = {"10.1.2.3", "2001:db8:1::5/56"};
  o.netmask = "255.255.0.0";
  o.gateways = {"10.1.0.1", "fe80::99"};
  o.mtu = "1500";
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  EXPECT_EQ(S4(c.addr4), "10.1.2.3");
  EXPECT_EQ(c.prefix_len4, 16);
  EXPECT_EQ(S4(c.gateway4), "10.1.0.1");
  EXPECT_EQ(S6(c.addr6), "2001:db8:1::5");
  EXPECT_EQ(c.prefix_len6, 56);
  EXPECT_EQ(S6(c.gateway6), "fe80::99");
  EXPECT_EQ(S6(c.our_link_local6), "fe80::99");
  EXPECT_EQ(c.mtu, 1500u);

  ConfigOverrides prefix;
  prefix.netmask = "20";
  prefix.addresses = {"10.9.9.9/8"};  // -n wins over the /len of -a.
  ASSERT_TRUE(ApplyOverrides(&c, prefix).ok());
  EXPECT_EQ(c.prefix_len4, 20);
}

TEST(ApplyOverrides, DnsReplacesPerFamilyAndNoneClears) {
  GuestConfig c = Mirrored();
  ConfigOverrides o;
  o.dns = {"192.0.2.53", "192.0.2.54"};
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  ASSERT_EQ(c.dns4.size(), 2u);
  EXPECT_EQ(S4(c.dns4[1]), "192.0.2.54");
  EXPECT_EQ(c.dns6.size(), 1u);  // IPv6 untouched.

  ConfigOverrides none;
  none.dns = {"none"};
  none.search = {"none"};
  ASSERT_TRUE(ApplyOverrides(&c, none).ok());
  EXPECT_TRUE(c.dns4.empty());
  EXPECT_TRUE(c.dns6.empty());
  EXPECT_TRUE(c.search_domains.empty());
}

TEST(ApplyOverrides, DnsOnTheGatewayFollowsAGatewayChange) {
  HostSources s = Sources();
  s.resolv_conf = "nameserver 127.0.0.53\n";
  GuestConfig c = MirrorHost(s).value();
  ConfigOverrides o;
  o.gateways = {"192.0.2.254"};
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  ASSERT_EQ(c.dns4.size(), 1u);
  EXPECT_EQ(S4(c.dns4[0]), "192.0.2.254");
}

TEST(ApplyOverrides, FlagsAndMac) {
  GuestConfig c = Mirrored();
  ConfigOverrides o;
  o.no_dhcp = o.no_ndp = o.no_dhcpv6 = o.no_ra = true;
  o.ipv4_only = true;
  o.mac_addr = "02:00:00:00:00:01";
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  EXPECT_TRUE(c.no_dhcp && c.no_ndp && c.no_dhcpv6 && c.no_ra && c.ipv4_only);
  EXPECT_EQ(c.gateway_mac, testing::Mac(2, 0, 0, 0, 0, 1));
}

void ExpectInvalid(const ConfigOverrides& o, const std::string& fragment) {
  GuestConfig c = Mirrored();
  const GuestConfig before = c;
  const absl::Status s = ApplyOverrides(&c, o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find(fragment), std::string::npos) << s;
  EXPECT_EQ(c.mtu, before.mtu);  // Unchanged on error.
  EXPECT_EQ(c.addr4.s_addr, before.addr4.s_addr);
}

TEST(ApplyOverrides, Errors) {
  ConfigOverrides o;
  o.addresses = {"10.0.0.256"};
  ExpectInvalid(o, "-a/--address '10.0.0.256'");
  o = {};
  o.addresses = {"224.0.0.1"};
  ExpectInvalid(o, "routable");
  o = {};
  o.addresses = {"10.0.0.1/33"};
  ExpectInvalid(o, "prefix length not in 0..32");
  o = {};
  o.addresses = {"2001:db8::1/129"};
  ExpectInvalid(o, "prefix length not in 0..128");
  o = {};
  o.netmask = "33";
  ExpectInvalid(o, "-n/--netmask '33'");
  o = {};
  o.netmask = "255.0.255.0";
  ExpectInvalid(o, "contiguous");
  o = {};
  o.gateways = {"nonsense"};
  ExpectInvalid(o, "-g/--gateway");
  o = {};
  o.mtu = "67";
  ExpectInvalid(o, "not in 68..65520");
  o = {};
  o.mtu = "65521";
  ExpectInvalid(o, "not in 68..65520");
  o = {};
  o.mtu = "1500x";
  ExpectInvalid(o, "-m/--mtu");
  o = {};
  o.dns = {"example.org"};
  ExpectInvalid(o, "-D/--dns");
  o = {};
  o.ipv4_only = o.ipv6_only = true;
  ExpectInvalid(o, "exclude each other");
  o = {};
  o.ipv4_only = true;
  o.addresses = {"2001:db8::1"};
  ExpectInvalid(o, "-4");
  o = {};
  o.mac_addr = "01:00:5e:00:00:01";
  ExpectInvalid(o, "unicast");
  o = {};
  o.mac_addr = "9a:55:9a:55:9a";
  ExpectInvalid(o, "not a MAC");
  // A valid change before the bad one is not applied either.
  o = {};
  o.mtu = "1500";
  o.addresses = {"bad"};
  ExpectInvalid(o, "bad");
}

TEST(Derive, HandlerConfigsMatchAndValidate) {
  GuestConfig c = Mirrored();
  const ArpConfig arp = ToArpConfig(c);
  EXPECT_EQ(arp.gateway_mac, kDefaultGatewayMac);
  EXPECT_EQ(S4(arp.guest_addr), "192.0.2.2");

  const DhcpConfig dhcp = ToDhcpConfig(c);
  EXPECT_EQ(S4(dhcp.guest_addr), "192.0.2.2");
  EXPECT_EQ(S4(dhcp.gateway_addr), "192.0.2.1");
  EXPECT_EQ(dhcp.prefix_len, 24);
  EXPECT_EQ(dhcp.mtu, 65520);
  ASSERT_EQ(dhcp.dns.size(), 1u);
  EXPECT_EQ(dhcp.search_domains.size(), 2u);
  EXPECT_TRUE(DhcpServer::Create(dhcp).ok());

  const NdpConfig ndp = ToNdpConfig(c);
  EXPECT_EQ(S6(ndp.gateway_ll), "fe80::1");
  EXPECT_EQ(S6(ndp.gateway), "::");  // The host's gateway is link-local.
  EXPECT_EQ(S6(ndp.prefix), "2001:db8::");
  EXPECT_EQ(ndp.prefix_len, 64);
  EXPECT_EQ(ndp.mtu, 65520u);
  EXPECT_EQ(ndp.dns.size(), 1u);
  EXPECT_TRUE(NdpResponder::Create(ndp).ok());

  ConfigOverrides o;
  o.mtu = "576";
  o.addresses = {"2001:db8:ab:cdef::1/52"};
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  EXPECT_EQ(ToNdpConfig(c).mtu, 0u);  // Below IPv6's minimum: no MTU option.
  EXPECT_EQ(S6(ToNdpConfig(c).prefix), "2001:db8:ab:c000::");
  EXPECT_EQ(ToDhcpConfig(c).mtu, 576);
}

TEST(Derive, NoDhcpDnsAndNoDhcpSearch) {
  GuestConfig c = Mirrored();
  ConfigOverrides o;
  o.no_dhcp_dns = true;
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  EXPECT_TRUE(c.no_dhcp_dns);
  EXPECT_FALSE(c.no_dhcp_search);
  EXPECT_EQ(c.dns4.size(), 1u);  // Kept: only the offers leave them out.
  EXPECT_TRUE(ToDhcpConfig(c).dns.empty());
  EXPECT_TRUE(ToNdpConfig(c).dns.empty());
  EXPECT_TRUE(ToDhcpv6Config(c).dns.empty());
  EXPECT_EQ(ToDhcpConfig(c).search_domains.size(), 2u);
  EXPECT_EQ(ToNdpConfig(c).search_domains.size(), 2u);
  EXPECT_EQ(ToDhcpv6Config(c).search_domains.size(), 2u);
  EXPECT_TRUE(DhcpServer::Create(ToDhcpConfig(c)).ok());
  EXPECT_TRUE(NdpResponder::Create(ToNdpConfig(c)).ok());
  EXPECT_TRUE(Dhcpv6Server::Create(ToDhcpv6Config(c)).ok());

  c = Mirrored();
  o = {};
  o.no_dhcp_search = true;
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  EXPECT_FALSE(c.no_dhcp_dns);
  EXPECT_TRUE(c.no_dhcp_search);
  EXPECT_EQ(ToDhcpConfig(c).dns.size(), 1u);
  EXPECT_EQ(ToNdpConfig(c).dns.size(), 1u);
  EXPECT_EQ(ToDhcpv6Config(c).dns.size(), 1u);
  EXPECT_TRUE(ToDhcpConfig(c).search_domains.empty());
  EXPECT_TRUE(ToNdpConfig(c).search_domains.empty());
  EXPECT_TRUE(ToDhcpv6Config(c).search_domains.empty());
}

TEST(ConfigTest, DerivesDhcpv6Config) {
  GuestConfig c;
  ConfigOverrides o;
  o.addresses = {"10.0.2.15/24", "fd00::15/64"};
  o.gateways = {"10.0.2.2", "fe80::1"};
  o.dns = {"fd00::3"};
  ASSERT_TRUE(ApplyOverrides(&c, o).ok());
  const Dhcpv6Config d = ToDhcpv6Config(c);
  EXPECT_TRUE(Dhcpv6Server::Create(d).ok());
  EXPECT_EQ(std::memcmp(&d.guest_addr, &c.addr6, sizeof(in6_addr)), 0);
}

}  // namespace
}  // namespace vunet::net
