#include "tests/guest/guest_frames.h"

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "gtest/gtest.h"

namespace vunet::guest_test {
namespace {

const Mac kGuestMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
const Mac kGatewayMac = {0x02, 0x00, 0x0a, 0x00, 0x02, 0x02};
const Ipv4Addr kGuestIp = {10, 0, 2, 15};
const Ipv4Addr kGatewayIp = {10, 0, 2, 2};

std::vector<uint8_t> EthHeader(const Mac& dst, const Mac& src, uint16_t type) {
  std::vector<uint8_t> f(dst.begin(), dst.end());
  f.insert(f.end(), src.begin(), src.end());
  f.push_back(static_cast<uint8_t>(type >> 8));
  f.push_back(static_cast<uint8_t>(type));
  return f;
}

std::vector<uint8_t> ArpRequest(const Ipv4Addr& target) {
  std::vector<uint8_t> f = EthHeader({0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, kGuestMac, 0x0806);
  const uint8_t fixed[] = {0, 1, 8, 0, 6, 4, 0, 1};
  f.insert(f.end(), std::begin(fixed), std::end(fixed));
  f.insert(f.end(), kGuestMac.begin(), kGuestMac.end());
  f.insert(f.end(), kGuestIp.begin(), kGuestIp.end());
  f.insert(f.end(), 6, 0);
  f.insert(f.end(), target.begin(), target.end());
  return f;
}

// An IPv4 datagram with `proto` and `payload`, checksummed.
std::vector<uint8_t> Ipv4Frame(uint8_t proto, const std::vector<uint8_t>& payload,
                               const Ipv4Addr& dst = kGatewayIp) {
  std::vector<uint8_t> f = EthHeader(kGatewayMac, kGuestMac, 0x0800);
  const size_t total = 20 + payload.size();
  std::vector<uint8_t> ip = {0x45,
                             0,
                             static_cast<uint8_t>(total >> 8),
                             static_cast<uint8_t>(total),
                             0,
                             1,
                             0x40,
                             0,
                             64,
                             proto,
                             0,
                             0};
  ip.insert(ip.end(), kGuestIp.begin(), kGuestIp.end());
  ip.insert(ip.end(), dst.begin(), dst.end());
  const uint16_t sum = InternetChecksum(ip);
  ip[10] = static_cast<uint8_t>(sum >> 8);
  ip[11] = static_cast<uint8_t>(sum);
  f.insert(f.end(), ip.begin(), ip.end());
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

std::vector<uint8_t> EchoRequest() {
  std::vector<uint8_t> icmp = {8, 0, 0, 0, 0x12, 0x34, 0, 1, 'h', 'e', 'l', 'l', 'o'};
  const uint16_t sum = InternetChecksum(icmp);
  icmp[2] = static_cast<uint8_t>(sum >> 8);
  icmp[3] = static_cast<uint8_t>(sum);
  return Ipv4Frame(1, icmp);
}

TEST(ParseFrameTest, ArpRequest) {
  const std::vector<uint8_t> f = ArpRequest(kGatewayIp);
  const FrameInfo info = ParseFrame(f, f.size());
  EXPECT_TRUE(info.arp);
  EXPECT_EQ(info.ether_type, kEtherTypeArp);
  EXPECT_EQ(info.arp_op, 1);
  EXPECT_EQ(info.arp_sender_ip, kGuestIp);
  EXPECT_EQ(info.arp_target_ip, kGatewayIp);
  EXPECT_EQ(info.ToString(),
            "len 42 52:54:00:12:34:56 -> ff:ff:ff:ff:ff:ff type 0x0806 arp request who-has "
            "10.0.2.2 tell 10.0.2.15");
}

TEST(ParseFrameTest, Udp) {
  const std::vector<uint8_t> f = Ipv4Frame(17, {0x30, 0x39, 0x13, 0x89, 0, 9, 0, 0, 'x'});
  const FrameInfo info = ParseFrame(f, f.size());
  EXPECT_TRUE(info.ip);
  EXPECT_TRUE(info.udp);
  EXPECT_EQ(info.udp_src_port, 12345);
  EXPECT_EQ(info.udp_dst_port, 5001);
  EXPECT_NE(info.ToString().find("udp sport 12345 dport 5001"), std::string::npos);
}

TEST(ParseFrameTest, Icmpv6AfterHopByHop) {
  // An MLDv2 report: hop-by-hop header (8 bytes) then ICMPv6 type 143.
  std::vector<uint8_t> f = EthHeader({0x33, 0x33, 0, 0, 0, 0x16}, kGuestMac, 0x86dd);
  std::vector<uint8_t> ip6 = {0x60, 0, 0, 0, 0, 16, 0 /* hop-by-hop */, 1};
  ip6.insert(ip6.end(), 32, 0);
  const uint8_t hbh[] = {58, 0, 5, 2, 0, 0, 1, 0};
  ip6.insert(ip6.end(), std::begin(hbh), std::end(hbh));
  const uint8_t mld[] = {143, 0, 0, 0, 0, 0, 0, 0};
  ip6.insert(ip6.end(), std::begin(mld), std::end(mld));
  f.insert(f.end(), ip6.begin(), ip6.end());
  const FrameInfo info = ParseFrame(f, f.size());
  EXPECT_TRUE(info.icmp);
  EXPECT_EQ(info.ip_proto, kIpProtoIcmpv6);
  EXPECT_EQ(info.icmp_type, 143);
}

TEST(ParseFrameTest, TruncatedFramesAreSafe) {
  const std::vector<uint8_t> frames[] = {ArpRequest(kGatewayIp), EchoRequest(),
                                         Ipv4Frame(17, {1, 2, 3, 4, 5, 6, 7, 8})};
  for (const std::vector<uint8_t>& f : frames) {
    for (size_t len = 0; len <= f.size(); ++len) {
      // Only the first len bytes exist (a heap copy, so that ASan sees overreads).
      std::vector<uint8_t> prefix(f.begin(), f.begin() + len);
      const FrameInfo info = ParseFrame(prefix, f.size());
      EXPECT_EQ(info.length, f.size());
      if (len < kEthHeaderLen) {
        EXPECT_FALSE(info.ethernet);
      }
      uint8_t out[2048];
      BuildArpReply(info, kGatewayMac, kGatewayIp, out);
      // An echo request cut short is never answered.
      if (len < f.size()) {
        EXPECT_EQ(BuildEchoReply(info, prefix, kGatewayMac, kGatewayIp, out), 0u);
      }
    }
  }
}

TEST(ParseFrameTest, BadIpv4HeaderLength) {
  std::vector<uint8_t> f = Ipv4Frame(17, {0, 1, 0, 2, 0, 8, 0, 0});
  f[kEthHeaderLen] = 0x4f;  // IHL 60 bytes: more than the frame holds.
  EXPECT_FALSE(ParseFrame(f, f.size()).ip);
  f[kEthHeaderLen] = 0x44;  // IHL 16 bytes: less than the minimum.
  EXPECT_FALSE(ParseFrame(f, f.size()).ip);
}

TEST(BuildArpReplyTest, AnswersOnlyForOurAddress) {
  uint8_t out[kArpFrameLen];
  const std::vector<uint8_t> other = ArpRequest({10, 0, 2, 3});
  EXPECT_EQ(BuildArpReply(ParseFrame(other, other.size()), kGatewayMac, kGatewayIp, out), 0u);

  const std::vector<uint8_t> req = ArpRequest(kGatewayIp);
  ASSERT_EQ(BuildArpReply(ParseFrame(req, req.size()), kGatewayMac, kGatewayIp, out), kArpFrameLen);
  const FrameInfo reply = ParseFrame(out, sizeof(out));
  EXPECT_TRUE(reply.arp);
  EXPECT_EQ(reply.arp_op, 2);
  EXPECT_EQ(reply.dst, kGuestMac);
  EXPECT_EQ(reply.src, kGatewayMac);
  EXPECT_EQ(reply.arp_sender_mac, kGatewayMac);
  EXPECT_EQ(reply.arp_sender_ip, kGatewayIp);
  EXPECT_EQ(reply.arp_target_ip, kGuestIp);
}

TEST(BuildEchoReplyTest, SwapsAndChecksums) {
  const std::vector<uint8_t> req = EchoRequest();
  uint8_t out[256];
  const size_t n = BuildEchoReply(ParseFrame(req, req.size()), req, kGatewayMac, kGatewayIp, out);
  ASSERT_EQ(n, req.size());
  const FrameInfo reply = ParseFrame({out, n}, n);
  EXPECT_TRUE(reply.icmp);
  EXPECT_EQ(reply.icmp_type, 0);
  EXPECT_EQ(reply.dst, kGuestMac);
  EXPECT_EQ(reply.ipv4_src, kGatewayIp);
  EXPECT_EQ(reply.ipv4_dst, kGuestIp);
  // A correct checksum sums (with itself included) to zero.
  EXPECT_EQ(InternetChecksum({out + kEthHeaderLen, 20}), 0);
  EXPECT_EQ(InternetChecksum({out + kEthHeaderLen + 20, n - kEthHeaderLen - 20}), 0);
  // The payload is kept.
  EXPECT_EQ(std::vector<uint8_t>(out + n - 5, out + n),
            std::vector<uint8_t>(req.end() - 5, req.end()));
  // Not to us: no answer.
  const std::vector<uint8_t> elsewhere = Ipv4Frame(1, {8, 0, 0, 0, 0, 0, 0, 0}, {10, 0, 2, 3});
  EXPECT_EQ(BuildEchoReply(ParseFrame(elsewhere, elsewhere.size()), elsewhere, kGatewayMac,
                           kGatewayIp, out),
            0u);
}

TEST(ParseTest, MacAndIp) {
  EXPECT_EQ(ParseMac("02:00:0a:00:02:02"), kGatewayMac);
  EXPECT_FALSE(ParseMac("02:00:0a:00:02").has_value());
  EXPECT_FALSE(ParseMac("02:00:0a:00:02:02:03").has_value());
  EXPECT_EQ(ParseIpv4("10.0.2.2"), kGatewayIp);
  EXPECT_FALSE(ParseIpv4("10.0.2").has_value());
  EXPECT_EQ(MacToString(kGatewayMac), "02:00:0a:00:02:02");
}

}  // namespace
}  // namespace vunet::guest_test
