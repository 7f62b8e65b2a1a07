#include "net/gateway/ndp.h"

#include <arpa/inet.h>

#include <cstdint>
#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

using testing::Append;
using testing::Build;
using testing::Bytes;
using testing::Ip6;
using testing::Mac;
using testing::Split;

const MacAddr kGuestMac = Mac(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const MacAddr kGatewayMac = Mac(0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55);
const char* kGuestLl = "fe80::5054:ff:fe12:3456";

NdpConfig Config() {
  NdpConfig c;
  c.gateway_mac = kGatewayMac;
  c.gateway_ll = Ip6("fe80::1");
  c.gateway = Ip6("2001:db8::1");
  c.prefix = Ip6("2001:db8::");
  c.prefix_len = 64;
  c.mtu = 65520;
  c.dns = {Ip6("2001:db8::53")};
  c.search_domains = {"example.org"};
  c.router_lifetime = 1800;
  return c;
}

NdpResponder Responder(const NdpConfig& c = Config()) { return NdpResponder::Create(c).value(); }

std::vector<uint8_t> Bytes16(const in6_addr& a) {
  return std::vector<uint8_t>(a.s6_addr, a.s6_addr + 16);
}

std::vector<uint8_t> Icmp6Frame(const char* src, const char* dst, const std::vector<uint8_t>& msg,
                                uint8_t hop_limit = 255) {
  FrameSpec s;
  s.ipv6 = true;
  s.src_mac = kGuestMac;
  s.dst_mac = Mac(0x33, 0x33, 0, 0, 0, 2);
  s.src6 = Ip6(src);
  s.dst6 = Ip6(dst);
  s.ttl = hop_limit;
  s.protocol = IPPROTO_ICMPV6;
  return Build(s, msg);
}

// As Linux sends them: RS with the source link-layer option.
std::vector<uint8_t> RouterSolicitation(const char* src = kGuestLl) {
  std::vector<uint8_t> m = Bytes({133, 0, 0, 0, 0, 0, 0, 0, 1, 1});
  Append(m, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  if (Ip6(src).s6_addr[0] == 0) m.resize(8);  // From ::, no link-layer option.
  return Icmp6Frame(src, "ff02::2", m);
}

std::vector<uint8_t> NeighborSolicitation(const char* src, const char* target, bool lla = true) {
  std::vector<uint8_t> m = Bytes({135, 0, 0, 0, 0, 0, 0, 0});
  Append(m, Bytes16(Ip6(target)));
  if (lla) {
    Append(m, Bytes({1, 1}));
    Append(m, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  }
  return Icmp6Frame(src, "ff02::1:ff00:1", m);
}

struct Reply {
  size_t len = 0;
  ParsedFrame frame;
  std::vector<uint8_t> msg;                     // The ICMPv6 message.
  std::map<int, std::vector<uint8_t>> options;  // Option bodies by type.
};

Reply Parse(std::vector<uint8_t> out, absl::StatusOr<size_t> n) {
  Reply r;
  EXPECT_TRUE(n.ok());
  if (!n.ok() || *n == 0) return r;
  r.len = *n;
  out.resize(*n);
  EXPECT_TRUE(testing::Parse(out, &r.frame).ok());
  EXPECT_EQ(r.frame.ip.ttl, 255);
  EXPECT_EQ(r.frame.l4, L4Kind::kIcmpv6);
  const iovec whole = {out.data(), out.size()};
  EXPECT_EQ(L4ChecksumV6(r.frame.ip.src6, r.frame.ip.dst6, IPPROTO_ICMPV6,
                         absl::MakeConstSpan(&whole, 1), r.frame.l4_offset, r.frame.l4_len),
            0);
  r.msg.assign(out.begin() + static_cast<ptrdiff_t>(r.frame.l4_offset), out.end());
  const size_t fixed = r.msg[0] == 134 ? 16 : 24;
  for (size_t i = fixed; i + 2 <= r.msg.size() && r.msg[i + 1] > 0;) {
    const size_t len = r.msg[i + 1] * 8u;
    r.options[r.msg[i]] = std::vector<uint8_t>(r.msg.begin() + static_cast<ptrdiff_t>(i + 2),
                                               r.msg.begin() + static_cast<ptrdiff_t>(i + len));
    i += len;
  }
  return r;
}

Reply Answer(const NdpResponder& ndp, std::vector<uint8_t> request, bool partial = false) {
  std::vector<iovec> iov = Split(request, 9);
  ParsedFrame parsed;
  if (!ParseFrame(iov, &parsed).ok()) return Reply();
  std::vector<uint8_t> out(kNdpMaxReplyLen);
  absl::StatusOr<size_t> n = ndp.Reply(iov, parsed, absl::MakeSpan(out), partial);
  return Parse(out, n);
}

TEST(NdpTest, RouterSolicitationGetsAnAdvertisement) {
  Reply r = Answer(Responder(), RouterSolicitation());
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.frame.dst_mac, kGuestMac);
  EXPECT_EQ(r.frame.src_mac, kGatewayMac);
  EXPECT_EQ(Bytes16(r.frame.ip.dst6), Bytes16(Ip6(kGuestLl)));
  EXPECT_EQ(Bytes16(r.frame.ip.src6), Bytes16(Ip6("fe80::1")));
  EXPECT_EQ(r.msg[0], 134);
  EXPECT_EQ(r.msg[1], 0);
  EXPECT_EQ(r.msg[4], 64);
  EXPECT_EQ(r.msg[5], 0);  // No M or O: SLAAC, DNS from RDNSS.
  EXPECT_EQ(testing::GetBe16(r.msg, 6), 1800);
  EXPECT_EQ(r.options.at(1), Bytes({0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}));
  EXPECT_EQ(r.options.at(5), Bytes({0, 0, 0, 0, 0xff, 0xf0}));
  std::vector<uint8_t> pi =
      Bytes({64, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0});
  Append(pi, Bytes16(Ip6("2001:db8::")));
  EXPECT_EQ(r.options.at(3), pi);
  std::vector<uint8_t> rdnss = Bytes({0, 0, 0xff, 0xff, 0xff, 0xff});
  Append(rdnss, Bytes16(Ip6("2001:db8::53")));
  EXPECT_EQ(r.options.at(25), rdnss);
  EXPECT_EQ(r.options.at(31), Bytes({0,   0,   0xff, 0xff, 0xff, 0xff, 7,   'e', 'x', 'a', 'm',
                                     'p', 'l', 'e',  3,    'o',  'r',  'g', 0,   0,   0,   0}));
}

TEST(NdpTest, SolicitationFromUnspecifiedGoesToAllNodes) {
  Reply r = Answer(Responder(), RouterSolicitation("::"));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.frame.dst_mac, Mac(0x33, 0x33, 0, 0, 0, 1));
  EXPECT_EQ(Bytes16(r.frame.ip.dst6), Bytes16(Ip6("ff02::1")));

  std::vector<uint8_t> out(kNdpMaxReplyLen);
  Reply u = Parse(out, Responder().UnsolicitedAdvertisement(absl::MakeSpan(out)));
  EXPECT_EQ(Bytes16(u.frame.ip.dst6), Bytes16(Ip6("ff02::1")));
  EXPECT_EQ(u.msg, r.msg);
}

TEST(NdpTest, NeighborSolicitationForTheGateway) {
  for (const char* target : {"fe80::1", "2001:db8::1", "2001:db8::99"}) {
    Reply r = Answer(Responder(), NeighborSolicitation(kGuestLl, target));
    ASSERT_GT(r.len, 0u) << target;
    EXPECT_EQ(r.msg[0], 136);
    EXPECT_EQ(r.msg[4], 0x80 | 0x40 | 0x20);  // Router, solicited, override.
    EXPECT_EQ(std::vector<uint8_t>(r.msg.begin() + 8, r.msg.begin() + 24), Bytes16(Ip6(target)));
    EXPECT_EQ(r.options.at(2), Bytes({0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}));
    EXPECT_EQ(Bytes16(r.frame.ip.src6), Bytes16(Ip6(target)));
    EXPECT_EQ(Bytes16(r.frame.ip.dst6), Bytes16(Ip6(kGuestLl)));
    EXPECT_EQ(r.frame.dst_mac, kGuestMac);
  }
}

TEST(NdpTest, DuplicateAddressDetection) {
  // The guest's own tentative address must pass DAD: no answer.
  EXPECT_EQ(Answer(Responder(), NeighborSolicitation("::", kGuestLl, false)).len, 0u);
  EXPECT_EQ(
      Answer(Responder(), NeighborSolicitation("::", "2001:db8::5054:ff:fe12:3456", false)).len,
      0u);
  // Probing the gateway's address: taken, said to all nodes, not solicited.
  Reply r = Answer(Responder(), NeighborSolicitation("::", "fe80::1", false));
  ASSERT_GT(r.len, 0u);
  EXPECT_EQ(r.msg[4], 0x80 | 0x20);
  EXPECT_EQ(Bytes16(r.frame.ip.dst6), Bytes16(Ip6("ff02::1")));
}

TEST(NdpTest, InvalidSolicitationsAreDropped) {
  const NdpResponder ndp = Responder();
  std::vector<uint8_t> f = NeighborSolicitation(kGuestLl, "fe80::1");
  EXPECT_GT(Answer(ndp, f).len, 0u);
  // Hop limit not 255 (the checksum does not cover it).
  std::vector<uint8_t> g = f;
  g[21] = 64;
  EXPECT_EQ(Answer(ndp, g).len, 0u);
  // Code 1 (checksum fixed up by hand: code is the second byte of a word).
  g = f;
  g[55] = 1;
  testing::PutBe16(g, 56, static_cast<uint16_t>(testing::GetBe16(g, 56) - 1));
  EXPECT_EQ(Answer(ndp, g).len, 0u);
  // Bad checksum; accepted as partial.
  g = f;
  g[57] ^= 0x40;
  EXPECT_EQ(Answer(ndp, g).len, 0u);
  EXPECT_GT(Answer(ndp, g, true).len, 0u);
  // Too short, option of length 0, option past the end, source link-layer
  // option from ::, multicast target.
  std::vector<uint8_t> ns = Bytes({135, 0, 0, 0, 0, 0, 0, 0});
  Append(ns, Bytes16(Ip6("fe80::1")));
  EXPECT_EQ(Answer(ndp, Icmp6Frame(kGuestLl, "ff02::1:ff00:1",
                                   std::vector<uint8_t>(ns.begin(), ns.begin() + 20)))
                .len,
            0u);
  std::vector<uint8_t> zero = ns;
  Append(zero, Bytes({1, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(Answer(ndp, Icmp6Frame(kGuestLl, "ff02::1:ff00:1", zero)).len, 0u);
  std::vector<uint8_t> past = ns;
  Append(past, Bytes({1, 2, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(Answer(ndp, Icmp6Frame(kGuestLl, "ff02::1:ff00:1", past)).len, 0u);
  std::vector<uint8_t> odd = ns;
  Append(odd, Bytes({1}));
  EXPECT_EQ(Answer(ndp, Icmp6Frame(kGuestLl, "ff02::1:ff00:1", odd)).len, 0u);
  EXPECT_EQ(Answer(ndp, NeighborSolicitation("::", "fe80::1", true)).len, 0u);
  EXPECT_EQ(Answer(ndp, NeighborSolicitation(kGuestLl, "ff02::1")).len, 0u);
  EXPECT_EQ(Answer(ndp, NeighborSolicitation(kGuestLl, "::")).len, 0u);
  std::vector<uint8_t> rs = RouterSolicitation();
  rs[21] = 1;
  EXPECT_EQ(Answer(ndp, rs).len, 0u);
}

TEST(NdpTest, OtherFramesAreIgnored) {
  const NdpResponder ndp = Responder();
  // An echo request, an advertisement, and nothing at all.
  EXPECT_EQ(Answer(ndp, Icmp6Frame(kGuestLl, "fe80::1", Bytes({128, 0, 0, 0, 0, 1, 0, 1}))).len,
            0u);
  EXPECT_EQ(Answer(ndp, Icmp6Frame(kGuestLl, "ff02::1",
                                   Bytes({134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})))
                .len,
            0u);
  ParsedFrame p;
  uint8_t out[kNdpMaxReplyLen];
  EXPECT_EQ(*ndp.Reply({}, p, out), 0u);
  EXPECT_FALSE(ndp.Reply({}, p, absl::MakeSpan(out, 100)).ok());
  EXPECT_FALSE(ndp.UnsolicitedAdvertisement(absl::MakeSpan(out, 100)).ok());
}

TEST(NdpTest, OptionalOptionsAreLeftOut) {
  NdpConfig c = Config();
  c.mtu = 0;
  c.dns.clear();
  c.search_domains.clear();
  c.prefix_len = 0;
  Reply r = Answer(Responder(c), RouterSolicitation());
  EXPECT_EQ(r.options.size(), 1u);
  EXPECT_EQ(r.msg.size(), 16u + 8);
}

TEST(NdpTest, CreateRefusesBadConfigurations) {
  NdpConfig c = Config();
  c.gateway_ll = Ip6("2001:db8::1");
  EXPECT_FALSE(NdpResponder::Create(c).ok());
  c = Config();
  c.prefix_len = 129;
  EXPECT_FALSE(NdpResponder::Create(c).ok());
  c = Config();
  c.mtu = 1279;
  EXPECT_FALSE(NdpResponder::Create(c).ok());
  c = Config();
  c.search_domains = {"bad..name"};
  EXPECT_FALSE(NdpResponder::Create(c).ok());
  c = Config();
  c.dns.assign(100, Ip6("2001:db8::53"));
  EXPECT_FALSE(NdpResponder::Create(c).ok());
}

}  // namespace
}  // namespace vunet::net
