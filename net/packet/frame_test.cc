#include "net/packet/frame.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/log.h"
#include "gtest/gtest.h"
#include "net/packet/checksum.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

using testing::Append;
using testing::Build;
using testing::Bytes;
using testing::FixIpv4Checksum;
using testing::GetBe16;
using testing::Ip4;
using testing::Ip6;
using testing::Mac;
using testing::Parse;
using testing::PutBe16;
using testing::Split;

const MacAddr kGuestMac = Mac(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const MacAddr kGatewayMac = Mac(0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55);

std::vector<uint8_t> Payload(size_t n, uint8_t seed = 1) {
  std::vector<uint8_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(seed + i * 7);
  return p;
}

FrameSpec V4Spec(uint8_t protocol) {
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kGatewayMac;
  s.src4 = Ip4("10.0.2.15");
  s.dst4 = Ip4("93.184.216.34");
  s.protocol = protocol;
  s.src_port = 40000;
  s.dst_port = 80;
  s.ipv4_id = 0x1234;
  return s;
}

FrameSpec V6Spec(uint8_t protocol) {
  FrameSpec s = V4Spec(protocol);
  s.ipv6 = true;
  s.src6 = Ip6("fd00::15");
  s.dst6 = Ip6("2001:db8::1");
  s.flow_label = 0xabcde;
  return s;
}

// MSS 1460, SACK permitted, timestamps 0x11223344/0x55667788, NOP, window
// scale 7: 20 bytes, as a Linux SYN carries them.
const std::vector<uint8_t> kSynOptions = Bytes(
    {2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 1, 3, 3, 7});

std::vector<uint8_t> TcpV4() {
  FrameSpec s = V4Spec(IPPROTO_TCP);
  s.tcp_seq = 1000;
  s.tcp_ack = 2000;
  s.tcp_flags = kTcpSyn | kTcpAck;
  s.tcp_window = 64240;
  s.tcp_options = kSynOptions;
  return Build(s, Payload(100));
}

std::vector<uint8_t> UdpV4() { return Build(V4Spec(IPPROTO_UDP), Payload(33)); }

std::vector<uint8_t> IcmpV4() {
  std::vector<uint8_t> echo = Bytes({8, 0, 0, 0, 0x12, 0x34, 0x00, 0x01});
  Append(echo, Payload(56));
  return Build(V4Spec(IPPROTO_ICMP), echo);
}

std::vector<uint8_t> TcpV6() {
  FrameSpec s = V6Spec(IPPROTO_TCP);
  s.tcp_flags = kTcpAck;
  const std::vector<uint8_t> options = Bytes({2, 4, 0x05, 0xa0, 1, 1, 4, 2});
  s.tcp_options = options;
  return Build(s, Payload(999));
}

// Hop-by-hop and destination options (each 8 bytes of PadN) before UDP.
std::vector<uint8_t> UdpV6WithExtensions() {
  FrameSpec s = V6Spec(IPPROTO_HOPOPTS);
  std::vector<uint8_t> p = Bytes({IPPROTO_DSTOPTS, 0, 1, 4, 0, 0, 0, 0});
  Append(p, Bytes({IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0}));
  Append(p, Bytes({0x9c, 0x40, 0x00, 0x35, 0x00, 8 + 21, 0, 0}));  // 40000 -> 53.
  Append(p, Payload(21));
  return Build(s, p);
}

std::vector<uint8_t> IcmpV6() {
  std::vector<uint8_t> echo = Bytes({128, 0, 0, 0, 0xab, 0xcd, 0x00, 0x07});
  Append(echo, Payload(10));
  return Build(V6Spec(IPPROTO_ICMPV6), echo);
}

std::vector<uint8_t> ArpRequest() {
  std::vector<uint8_t> f = Bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
  Append(f, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  Append(f, Bytes({0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1}));
  Append(f, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  Append(f, Bytes({10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2}));
  return f;
}

std::vector<std::pair<std::string, std::vector<uint8_t>>> ValidFrames() {
  return {{"tcp4", TcpV4()},
          {"udp4", UdpV4()},
          {"icmp4", IcmpV4()},
          {"tcp6", TcpV6()},
          {"udp6_ext", UdpV6WithExtensions()},
          {"icmp6", IcmpV6()},
          {"arp", ArpRequest()}};
}

TEST(FrameTest, ParsesTcpV4WithOptions) {
  std::vector<uint8_t> f = TcpV4();
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.frame_len, f.size());
  EXPECT_EQ(p.src_mac, kGuestMac);
  EXPECT_EQ(p.dst_mac, kGatewayMac);
  EXPECT_EQ(p.ether_type, kEtherTypeIpv4);
  EXPECT_EQ(p.l3, L3Kind::kIpv4);
  EXPECT_EQ(p.l3_offset, 14u);
  EXPECT_EQ(p.l3_len, 20u + 40 + 100);
  EXPECT_EQ(p.ip.src4.s_addr, Ip4("10.0.2.15").s_addr);
  EXPECT_EQ(p.ip.dst4.s_addr, Ip4("93.184.216.34").s_addr);
  EXPECT_EQ(p.ip.protocol, IPPROTO_TCP);
  EXPECT_EQ(p.ip.ttl, 64);
  EXPECT_EQ(p.l4, L4Kind::kTcp);
  EXPECT_EQ(p.l4_offset, 34u);
  EXPECT_EQ(p.l4_len, 140u);
  EXPECT_EQ(p.src_port, 40000);
  EXPECT_EQ(p.dst_port, 80);
  EXPECT_EQ(p.tcp.seq, 1000u);
  EXPECT_EQ(p.tcp.ack, 2000u);
  EXPECT_EQ(p.tcp.flags, kTcpSyn | kTcpAck);
  EXPECT_EQ(p.tcp.window, 64240);
  EXPECT_EQ(p.tcp.header_len, 40u);
  EXPECT_TRUE(p.tcp.options.has_mss);
  EXPECT_EQ(p.tcp.options.mss, 1460);
  EXPECT_TRUE(p.tcp.options.sack_permitted);
  EXPECT_TRUE(p.tcp.options.has_timestamps);
  EXPECT_EQ(p.tcp.options.ts_val, 0x11223344u);
  EXPECT_EQ(p.tcp.options.ts_ecr, 0x55667788u);
  EXPECT_TRUE(p.tcp.options.has_window_scale);
  EXPECT_EQ(p.tcp.options.window_scale, 7);
  EXPECT_EQ(p.payload_offset, 74u);
  EXPECT_EQ(p.payload_len, 100u);
}

TEST(FrameTest, ParsesUdpV4) {
  std::vector<uint8_t> f = UdpV4();
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kUdp);
  EXPECT_EQ(p.src_port, 40000);
  EXPECT_EQ(p.dst_port, 80);
  EXPECT_EQ(p.payload_offset, 42u);
  EXPECT_EQ(p.payload_len, 33u);
}

TEST(FrameTest, ParsesIcmpEcho) {
  std::vector<uint8_t> f = IcmpV4();
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmp);
  EXPECT_EQ(p.icmp.type, 8);
  EXPECT_EQ(p.icmp.id, 0x1234);
  EXPECT_EQ(p.icmp.seq, 1);
  EXPECT_EQ(p.payload_offset, 38u);
  EXPECT_EQ(p.payload_len, 60u);
  EXPECT_EQ(InternetChecksum(f.data() + 34, f.size() - 34), 0);
}

TEST(FrameTest, ParsesTcpV6) {
  std::vector<uint8_t> f = TcpV6();
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kIpv6);
  EXPECT_EQ(p.l3_len, 40u + 28 + 999);
  const in6_addr src6 = V6Spec(0).src6;
  EXPECT_EQ(0, std::memcmp(&p.ip.src6, &src6, 16));
  EXPECT_EQ(p.l4, L4Kind::kTcp);
  EXPECT_EQ(p.l4_offset, 54u);
  EXPECT_EQ(p.tcp.header_len, 28u);
  EXPECT_EQ(p.tcp.options.mss, 1440);
  EXPECT_TRUE(p.tcp.options.sack_permitted);
  EXPECT_FALSE(p.tcp.options.has_timestamps);
  EXPECT_EQ(p.payload_len, 999u);
  EXPECT_EQ(GetBe16(f, 14), 0x600a);  // Version, traffic class, flow label.
  EXPECT_EQ(GetBe16(f, 16), 0xbcde);
}

TEST(FrameTest, WalksIpv6ExtensionHeaders) {
  std::vector<uint8_t> f = UdpV6WithExtensions();
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.ip.protocol, IPPROTO_UDP);
  EXPECT_EQ(p.l4, L4Kind::kUdp);
  EXPECT_EQ(p.l4_offset, 14u + 40 + 16);
  EXPECT_EQ(p.dst_port, 53);
  EXPECT_EQ(p.payload_len, 21u);
}

TEST(FrameTest, ParsesIcmpv6AndArp) {
  std::vector<uint8_t> f = IcmpV6();
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmpv6);
  EXPECT_EQ(p.icmp.type, 128);
  EXPECT_EQ(p.icmp.id, 0xabcd);
  EXPECT_EQ(p.icmp.seq, 7);
  const iovec iov = {f.data(), f.size()};
  EXPECT_EQ(L4ChecksumV6(p.ip.src6, p.ip.dst6, IPPROTO_ICMPV6, absl::MakeConstSpan(&iov, 1),
                         p.l4_offset, p.l4_len),
            0);

  std::vector<uint8_t> a = ArpRequest();
  ASSERT_TRUE(Parse(a, &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kArp);
  EXPECT_EQ(p.arp.op, 1);
  EXPECT_EQ(p.arp.sha, kGuestMac);
  EXPECT_EQ(p.arp.spa.s_addr, Ip4("10.0.2.15").s_addr);
  EXPECT_EQ(p.arp.tpa.s_addr, Ip4("10.0.2.2").s_addr);
}

TEST(FrameTest, BuiltChecksumsVerify) {
  for (auto [name, f] : ValidFrames()) {
    ParsedFrame p;
    ASSERT_TRUE(Parse(f, &p).ok()) << name;
    const iovec iov = {f.data(), f.size()};
    const auto span = absl::MakeConstSpan(&iov, 1);
    if (p.l4 == L4Kind::kTcp || p.l4 == L4Kind::kUdp) {
      if (p.l3 == L3Kind::kIpv4) {
        EXPECT_EQ(L4ChecksumV4(p.ip.src4, p.ip.dst4, p.ip.protocol, span, p.l4_offset, p.l4_len), 0)
            << name;
      } else if (name != "udp6_ext") {  // Hand-made UDP header, no checksum.
        EXPECT_EQ(L4ChecksumV6(p.ip.src6, p.ip.dst6, p.ip.protocol, span, p.l4_offset, p.l4_len), 0)
            << name;
      }
    }
  }
}

// Every split of every valid frame, down to one byte per iovec, so that
// every header straddles a boundary somewhere: the same result.
TEST(FrameTest, SameResultForEverySplit) {
  for (auto [name, f] : ValidFrames()) {
    ParsedFrame whole;
    ASSERT_TRUE(Parse(f, &whole).ok()) << name;
    for (size_t piece = 1; piece <= f.size(); ++piece) {
      ParsedFrame p;
      ASSERT_TRUE(Parse(f, &p, piece).ok()) << name << " piece " << piece;
      EXPECT_EQ(p.l4, whole.l4);
      EXPECT_EQ(p.l4_offset, whole.l4_offset);
      EXPECT_EQ(p.payload_offset, whole.payload_offset);
      EXPECT_EQ(p.payload_len, whole.payload_len);
      EXPECT_EQ(p.src_port, whole.src_port);
      EXPECT_EQ(p.tcp.options.ts_val, whole.tcp.options.ts_val);
      EXPECT_EQ(p.arp.tpa.s_addr, whole.arp.tpa.s_addr);
    }
  }
}

// Truncation at every header boundary and everywhere between: every strict
// prefix of a valid frame is refused (the IP or ARP lengths no longer fit).
TEST(FrameTest, EveryPrefixIsRefused) {
  for (auto [name, f] : ValidFrames()) {
    for (size_t len = 0; len < f.size(); ++len) {
      std::vector<uint8_t> prefix(f.begin(), f.begin() + static_cast<ptrdiff_t>(len));
      ParsedFrame p;
      EXPECT_FALSE(Parse(prefix, &p, 3).ok()) << name << " prefix " << len;
      EXPECT_LE(p.payload_offset + p.payload_len, std::max<size_t>(len, p.payload_offset));
    }
  }
}

TEST(FrameTest, EthernetPaddingIsIgnored) {
  std::vector<uint8_t> f = UdpV4();
  f.resize(f.size() + 18, 0);
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.l3_len, 20u + 8 + 33);
  EXPECT_EQ(p.payload_len, 33u);
  std::vector<uint8_t> a = ArpRequest();
  a.resize(60, 0);
  ASSERT_TRUE(Parse(a, &p).ok());
}

TEST(FrameTest, RefusesEmptyAndOversizedFrames) {
  std::vector<uint8_t> empty;
  ParsedFrame p;
  EXPECT_FALSE(Parse(empty, &p).ok());
  const iovec none[1] = {{nullptr, 0}};
  EXPECT_FALSE(ParseFrame(absl::Span<const iovec>(), &p).ok());
  EXPECT_FALSE(ParseFrame(none, &p).ok());

  std::vector<uint8_t> huge = UdpV4();
  huge.resize(70000, 0);
  EXPECT_FALSE(Parse(huge, &p).ok());
  EXPECT_FALSE(Parse(huge, &p, 4096).ok());

  // The largest accepted, with an EtherType nobody handles.
  std::vector<uint8_t> max(kMaxFrameLen, 0);
  max[12] = 0x88;
  max[13] = 0xb5;
  ASSERT_TRUE(Parse(max, &p, 1000).ok());
  EXPECT_EQ(p.l3, L3Kind::kNone);
  EXPECT_EQ(p.payload_len, kMaxFrameLen - 14);
  max.push_back(0);
  EXPECT_FALSE(Parse(max, &p).ok());

  // Absurd iovec lengths saturate instead of wrapping.
  const iovec absurd[2] = {{max.data(), SIZE_MAX}, {max.data(), 100}};
  EXPECT_FALSE(ParseFrame(absurd, &p).ok());
}

TEST(FrameTest, RefusesVlanTags) {
  for (uint16_t type : {kEtherTypeVlan, kEtherTypeQinQ}) {
    std::vector<uint8_t> f = UdpV4();
    f.insert(f.begin() + 12, {0, 0, 0, 5});
    PutBe16(f, 12, type);
    ParsedFrame p;
    EXPECT_FALSE(Parse(f, &p).ok());
  }
}

TEST(FrameTest, RefusesBadIpv4Headers) {
  ParsedFrame p;
  for (uint8_t ihl = 0; ihl < 5; ++ihl) {
    std::vector<uint8_t> f = UdpV4();
    f[14] = static_cast<uint8_t>(0x40 | ihl);
    FixIpv4Checksum(f);
    EXPECT_FALSE(Parse(f, &p).ok()) << "IHL " << int{ihl};
  }
  {
    std::vector<uint8_t> f = UdpV4();
    f[14] = 0x65;  // Version 6 in an IPv4 EtherType.
    FixIpv4Checksum(f);
    EXPECT_FALSE(Parse(f, &p).ok());
  }
  {
    std::vector<uint8_t> f = UdpV4();
    f[14] = 0x4f;  // 60-byte header in a 61-byte packet: UDP can't fit.
    FixIpv4Checksum(f);
    EXPECT_FALSE(Parse(f, &p).ok());
  }
  for (uint16_t total : {0, 19, 20 + 8 + 33 + 1, 65535}) {
    std::vector<uint8_t> f = UdpV4();
    PutBe16(f, 16, total);
    FixIpv4Checksum(f);
    EXPECT_FALSE(Parse(f, &p).ok()) << "total length " << total;
  }
  {
    std::vector<uint8_t> f = UdpV4();
    f[22] ^= 1;  // TTL changed, checksum not.
    EXPECT_FALSE(Parse(f, &p).ok());
  }
  for (uint16_t frag : {0x2000, 0x0001, 0x6000, 0x1fff}) {  // MF, offset, DF|MF, max offset.
    std::vector<uint8_t> f = UdpV4();
    PutBe16(f, 20, frag);
    FixIpv4Checksum(f);
    EXPECT_FALSE(Parse(f, &p).ok()) << "fragment field " << frag;
  }
}

TEST(FrameTest, SkipsIpv4Options) {
  std::vector<uint8_t> f = UdpV4();
  f.insert(f.begin() + 34, {1, 1, 1, 0});  // NOP NOP NOP EOL.
  f[14] = 0x46;
  PutBe16(f, 16, static_cast<uint16_t>(GetBe16(f, 16) + 4));
  FixIpv4Checksum(f);
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p, 5).ok());
  EXPECT_EQ(p.l4_offset, 38u);
  EXPECT_EQ(p.l4, L4Kind::kUdp);
  EXPECT_EQ(p.payload_len, 33u);
}

TEST(FrameTest, RefusesBadTcpHeaders) {
  ParsedFrame p;
  for (uint8_t doff = 0; doff < 5; ++doff) {
    std::vector<uint8_t> f = TcpV4();
    f[46] = static_cast<uint8_t>(doff << 4);
    EXPECT_FALSE(Parse(f, &p).ok()) << "data offset " << int{doff};
  }
  {
    // Data offset 15 in a segment of 20 + 4 bytes.
    std::vector<uint8_t> f = Build(V4Spec(IPPROTO_TCP), Payload(4));
    f[46] = 0xf0;
    EXPECT_FALSE(Parse(f, &p).ok());
  }
}

TEST(FrameTest, TcpOptionsBounds) {
  TcpOptions o;
  // Lengths past the end, below 2, or missing.
  for (const auto& bad : {Bytes({2, 4, 5}), Bytes({2, 5, 5, 0xb4}), Bytes({8, 0}),
                          Bytes({8, 1, 0, 0}), Bytes({1, 1, 1, 3}), Bytes({30, 255, 0, 0})}) {
    EXPECT_FALSE(ParseTcpOptions(bad.data(), bad.size(), &o));
  }
  // END stops the walk: what follows is not looked at.
  const auto ended = Bytes({2, 4, 1, 0, 0, 8, 200, 0});
  ASSERT_TRUE(ParseTcpOptions(ended.data(), ended.size(), &o));
  EXPECT_EQ(o.mss, 256);
  EXPECT_FALSE(o.has_timestamps);
  // Known options with the wrong length are ignored; unknown ones skipped;
  // window scale capped at 14.
  const auto odd = Bytes({2, 3, 9, 4, 3, 0, 30, 4, 1, 2, 3, 3, 99, 1});
  ASSERT_TRUE(ParseTcpOptions(odd.data(), odd.size(), &o));
  EXPECT_FALSE(o.has_mss);
  EXPECT_FALSE(o.sack_permitted);
  EXPECT_TRUE(o.has_window_scale);
  EXPECT_EQ(o.window_scale, 14);
  EXPECT_TRUE(ParseTcpOptions(nullptr, 0, &o));

  // SACK blocks: 1 to 4, in order; other lengths ignored.
  const auto sack =
      Bytes({1, 1, 5, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 4});
  o = TcpOptions();
  ASSERT_TRUE(ParseTcpOptions(sack.data(), sack.size(), &o));
  ASSERT_EQ(o.sack_count, 2);
  EXPECT_EQ(o.sack[0].left, 10u);
  EXPECT_EQ(o.sack[0].right, 20u);
  EXPECT_EQ(o.sack[1].left, 0xfffffff0u);
  EXPECT_EQ(o.sack[1].right, 4u);
  std::vector<uint8_t> five_blocks(42, 0);
  five_blocks[0] = 5;
  five_blocks[1] = 42;
  for (const auto& odd_sack : {Bytes({5, 2}), Bytes({5, 9, 0, 0, 0, 1, 0, 0, 0}), five_blocks}) {
    o = TcpOptions();
    ASSERT_TRUE(ParseTcpOptions(odd_sack.data(), odd_sack.size(), &o));
    EXPECT_EQ(o.sack_count, 0);
  }

  // In a frame: an option running past the header is refused.
  std::vector<uint8_t> f = TcpV4();
  f[54 + 17] = 1;
  f[54 + 18] = 3;
  f[54 + 19] = 3;  // Window scale, length 3, two bytes before the end.
  ParsedFrame p;
  EXPECT_FALSE(Parse(f, &p).ok());
}

TEST(FrameTest, UdpLengthChecks) {
  ParsedFrame p;
  for (uint16_t len : {0, 7, 8 + 33 + 1, 65535}) {
    std::vector<uint8_t> f = UdpV4();
    PutBe16(f, 38, len);
    EXPECT_FALSE(Parse(f, &p).ok()) << "UDP length " << len;
  }
  // Shorter than the IP payload: the datagram is what UDP says.
  std::vector<uint8_t> f = UdpV4();
  PutBe16(f, 38, 8 + 10);
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.payload_len, 10u);
}

TEST(FrameTest, IcmpLengthChecks) {
  ParsedFrame p;
  std::vector<uint8_t> f = Build(V4Spec(IPPROTO_ICMP), Bytes({8, 0, 0, 0, 0, 1}));
  EXPECT_FALSE(Parse(f, &p).ok());
  std::vector<uint8_t> g = Build(V6Spec(IPPROTO_ICMPV6), Bytes({133, 0, 0, 0}));
  ASSERT_TRUE(Parse(g, &p).ok());
  EXPECT_EQ(p.icmp.type, 133);
  EXPECT_EQ(p.icmp.id, 0);
  EXPECT_EQ(p.payload_len, 0u);
  std::vector<uint8_t> h = Build(V6Spec(200), Bytes({133, 0, 0}));  // Unknown protocol.
  h[20] = IPPROTO_ICMPV6;
  EXPECT_FALSE(Parse(h, &p).ok());
}

TEST(FrameTest, RefusesBadIpv6) {
  ParsedFrame p;
  {
    std::vector<uint8_t> f = TcpV6();
    PutBe16(f, 18, static_cast<uint16_t>(GetBe16(f, 18) + 1));
    EXPECT_FALSE(Parse(f, &p).ok());
    f = TcpV6();
    f[14] = 0x40;
    EXPECT_FALSE(Parse(f, &p).ok());
  }
  {
    // A fragment header.
    std::vector<uint8_t> ext = Bytes({IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 1});
    Append(ext, Payload(16));
    std::vector<uint8_t> f = Build(V6Spec(IPPROTO_FRAGMENT), ext);
    EXPECT_FALSE(Parse(f, &p).ok());
  }
  {
    // An extension header whose length runs past the payload.
    std::vector<uint8_t> ext = Bytes({IPPROTO_UDP, 2, 1, 4, 0, 0, 0, 0});
    Append(ext, Payload(16));
    std::vector<uint8_t> f = Build(V6Spec(IPPROTO_DSTOPTS), ext);
    EXPECT_FALSE(Parse(f, &p).ok());
  }
  {
    // No next header: parses, nothing after.
    std::vector<uint8_t> f = Build(V6Spec(IPPROTO_DSTOPTS), Bytes({59, 0, 1, 4, 0, 0, 0, 0}));
    ASSERT_TRUE(Parse(f, &p).ok());
    EXPECT_EQ(p.l4, L4Kind::kNone);
    EXPECT_EQ(p.payload_len, 0u);
  }
}

// A chain of destination-options headers: kMaxIpv6ExtHeaders pass, one more
// is refused; a chain long enough to exhaust any budget ends all the same.
TEST(FrameTest, BoundsIpv6ExtensionHeaderCount) {
  for (int count : {kMaxIpv6ExtHeaders, kMaxIpv6ExtHeaders + 1, 1000}) {
    std::vector<uint8_t> p;
    for (int i = 0; i < count; ++i) {
      Append(p, Bytes({i + 1 == count ? int{IPPROTO_UDP} : int{IPPROTO_DSTOPTS}, 0, 1, 4, 0, 0, 0,
                       0}));
    }
    Append(p, Bytes({0, 1, 0, 2, 0, 8, 0, 0}));
    std::vector<uint8_t> f = Build(V6Spec(IPPROTO_DSTOPTS), p);
    ParsedFrame parsed;
    EXPECT_EQ(Parse(f, &parsed).ok(), count <= kMaxIpv6ExtHeaders) << count;
  }
}

TEST(FrameTest, RefusesBadArp) {
  std::vector<uint8_t> f = ArpRequest();
  f[18] = 8;  // Hardware length 8.
  ParsedFrame p;
  EXPECT_FALSE(Parse(f, &p).ok());
  f = ArpRequest();
  f[17] = 0xdd;  // IPv6 protocol type.
  EXPECT_FALSE(Parse(f, &p).ok());
}

TEST(FrameTest, UnknownEtherTypeAndProtocolParse) {
  std::vector<uint8_t> f = UdpV4();
  PutBe16(f, 12, 0x88cc);  // LLDP.
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kNone);
  EXPECT_EQ(p.payload_offset, 14u);
  std::vector<uint8_t> g = Build(V4Spec(IPPROTO_SCTP), Payload(12));
  ASSERT_TRUE(Parse(g, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kOther);
  EXPECT_EQ(p.ip.protocol, IPPROTO_SCTP);
  EXPECT_EQ(p.payload_len, 12u);
  std::vector<uint8_t> short_eth = Bytes({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x88});
  EXPECT_FALSE(Parse(short_eth, &p).ok());
}

// Headers written into iovecs of odd sizes at an offset (as behind a
// virtio-net header) come out as in one buffer.
TEST(FrameTest, BuildsIntoSplitIovecsAtAnOffset) {
  FrameSpec s = V4Spec(IPPROTO_TCP);
  s.tcp_options = kSynOptions;
  s.tcp_seq = 7;
  const std::vector<uint8_t> want = Build(s, Payload(301));
  const size_t hlen = FrameHeadersLen(s);
  ASSERT_EQ(hlen, 74u);
  for (size_t piece : {1, 3, 7, 13, 64}) {
    std::vector<uint8_t> buf(12 + want.size(), 0xee);
    std::memcpy(buf.data() + 12 + hlen, want.data() + hlen, 301);
    std::vector<iovec> iov = Split(buf, piece);
    absl::StatusOr<size_t> len = BuildFrame(s, iov, 12, 301);
    ASSERT_TRUE(len.ok());
    EXPECT_EQ(*len, want.size());
    EXPECT_EQ(std::vector<uint8_t>(buf.begin() + 12, buf.end()), want) << piece;
  }
}

TEST(FrameTest, GuestCsumLeavesTheFieldZeroButNeverForUdpOverIpv6) {
  FrameSpec s = V4Spec(IPPROTO_UDP);
  s.l4_checksum = false;
  std::vector<uint8_t> f = Build(s, Payload(20));
  EXPECT_EQ(GetBe16(f, 14 + 20 + 6), 0);
  s = V6Spec(IPPROTO_TCP);
  s.l4_checksum = false;
  f = Build(s, Payload(20));
  EXPECT_EQ(GetBe16(f, 14 + 40 + 16), 0);
  s = V6Spec(IPPROTO_UDP);
  s.l4_checksum = false;
  f = Build(s, Payload(20));
  EXPECT_EQ(GetBe16(f, 14 + 40 + 6), 0xffff);
  s.l4_checksum = true;
  f = Build(s, Payload(20));
  EXPECT_NE(GetBe16(f, 14 + 40 + 6), 0);
}

// A partial checksum finished as a NEEDS_CSUM reader does (the sum from
// the L4 header to the end, complemented, into the field) is the full one.
TEST(FrameTest, PartialChecksumIsThePseudoHeaderSum) {
  for (const FrameSpec& base :
       {V4Spec(IPPROTO_TCP), V6Spec(IPPROTO_TCP), V4Spec(IPPROTO_UDP), V6Spec(IPPROTO_UDP)}) {
    for (size_t len : {0, 1, 1448, 65000}) {
      FrameSpec full = base;
      if (len > 65535 - 60) continue;
      const std::vector<uint8_t> want = Build(full, Payload(len));
      FrameSpec partial = base;
      partial.l4_partial = true;
      std::vector<uint8_t> f = Build(partial, Payload(len));
      const size_t l4 = 14 + (base.ipv6 ? 40 : 20);
      const size_t at = l4 + (base.protocol == IPPROTO_TCP ? 16 : 6);
      EXPECT_NE(f, want);
      const uint16_t c = InternetChecksum(f.data() + l4, f.size() - l4);
      PutBe16(f, at, c == 0 && base.protocol == IPPROTO_UDP ? 0xffff : c);
      EXPECT_EQ(f, want) << base.ipv6 << " " << int{base.protocol} << " " << len;
    }
  }
}

TEST(FrameTest, BuildRefusesWhatDoesNotFit) {
  std::vector<uint8_t> buf(100);
  std::vector<iovec> iov = Split(buf, 30);
  FrameSpec s = V4Spec(IPPROTO_UDP);
  EXPECT_TRUE(BuildFrame(s, iov, 0, 58).ok());
  EXPECT_FALSE(BuildFrame(s, iov, 0, 59).ok());
  EXPECT_FALSE(BuildFrame(s, iov, 101, 0).ok());
  EXPECT_FALSE(BuildFrame(s, iov, 0, 65536).ok());
  s.protocol = IPPROTO_TCP;
  const std::vector<uint8_t> three = Bytes({1, 1, 1});
  s.tcp_options = three;
  EXPECT_FALSE(BuildFrame(s, iov, 0, 0).ok());
  s = V4Spec(IPPROTO_ICMP);
  EXPECT_FALSE(BuildFrame(s, iov, 0, 3).ok());
  // IPv4 caps the whole packet, IPv6 the payload.
  std::vector<uint8_t> big(70000);
  std::vector<iovec> big_iov = Split(big);
  s = V4Spec(IPPROTO_UDP);
  EXPECT_TRUE(BuildFrame(s, big_iov, 0, 65535 - 28).ok());
  EXPECT_FALSE(BuildFrame(s, big_iov, 0, 65535 - 27).ok());
  s.ipv6 = true;
  EXPECT_TRUE(BuildFrame(s, big_iov, 0, 65535 - 8).ok());
  EXPECT_FALSE(BuildFrame(s, big_iov, 0, 65535 - 7).ok());
}

// Each drop writes a line, within the rate limit: after a quiet second the
// limiter has room again.
TEST(FrameTest, DropsAreLogged) {
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const uint64_t before = log::LinesWritten(log::Level::kInfo);
  std::vector<uint8_t> f = UdpV4();
  f[14] = 0x44;
  ParsedFrame p;
  EXPECT_FALSE(Parse(f, &p).ok());
  EXPECT_GT(log::LinesWritten(log::Level::kInfo), before);
  // A flood is limited: far fewer lines than frames.
  const uint64_t start = log::LinesWritten(log::Level::kInfo);
  for (int i = 0; i < 1000; ++i) (void)Parse(f, &p);
  EXPECT_LT(log::LinesWritten(log::Level::kInfo) - start, 50u);
}

}  // namespace
}  // namespace vunet::net
