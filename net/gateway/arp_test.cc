#include "net/gateway/arp.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "net/packet/frame.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

using testing::Append;
using testing::Bytes;
using testing::Ip4;
using testing::Mac;
using testing::Parse;

const MacAddr kGuestMac = Mac(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const MacAddr kGatewayMac = Mac(0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55);

ArpConfig Config() {
  ArpConfig c;
  c.gateway_mac = kGatewayMac;
  c.guest_addr = Ip4("10.0.2.15");
  return c;
}

// An ARP frame as a Linux guest sends it: broadcast, sender = the guest.
std::vector<uint8_t> Arp(int op, const std::vector<uint8_t>& spa, const std::vector<uint8_t>& tpa,
                         MacAddr sha = kGuestMac) {
  std::vector<uint8_t> f = Bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
  Append(f, std::vector<uint8_t>(sha.bytes, sha.bytes + 6));
  Append(f, Bytes({0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op}));
  Append(f, std::vector<uint8_t>(sha.bytes, sha.bytes + 6));
  Append(f, spa);
  Append(f, Bytes({0, 0, 0, 0, 0, 0}));
  Append(f, tpa);
  return f;
}

absl::StatusOr<size_t> Answer(std::vector<uint8_t> frame, std::vector<uint8_t>* reply) {
  ParsedFrame p;
  if (!Parse(frame, &p, 5).ok()) return 0;
  reply->assign(64, 0xee);
  return ArpReply(Config(), p, absl::MakeSpan(*reply));
}

TEST(ArpTest, AnswersForTheGateway) {
  std::vector<uint8_t> reply;
  absl::StatusOr<size_t> n = Answer(Arp(1, Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 2})), &reply);
  ASSERT_TRUE(n.ok());
  ASSERT_EQ(*n, 42u);
  std::vector<uint8_t> want = Bytes({0x52, 0x54, 0x00, 0x12, 0x34, 0x56,  // To the guest,
                                     0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55,  // from the gateway.
                                     0x08, 0x06, 0,    1,    0x08, 0,    6,  4, 0, 2,  // Reply.
                                     0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55, 10, 0, 2, 2,
                                     0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 15});
  EXPECT_EQ(std::vector<uint8_t>(reply.begin(), reply.begin() + 42), want);
  // The reply parses, and says what it should.
  std::vector<uint8_t> r(reply.begin(), reply.begin() + 42);
  ParsedFrame p;
  ASSERT_TRUE(Parse(r, &p).ok());
  EXPECT_EQ(p.arp.op, 2);
  EXPECT_EQ(p.arp.sha, kGatewayMac);
  EXPECT_EQ(p.arp.spa.s_addr, Ip4("10.0.2.2").s_addr);
}

TEST(ArpTest, AnswersForAnyOtherAddress) {
  for (const auto& tpa : {Bytes({10, 0, 2, 3}), Bytes({10, 0, 2, 255}), Bytes({8, 8, 8, 8}),
                          Bytes({192, 168, 1, 1})}) {
    std::vector<uint8_t> reply;
    absl::StatusOr<size_t> n = Answer(Arp(1, Bytes({10, 0, 2, 15}), tpa), &reply);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, kArpReplyLen);
    EXPECT_EQ(std::vector<uint8_t>(reply.begin() + 28, reply.begin() + 32), tpa);
  }
}

TEST(ArpTest, AnswersAProbeFromNoAddress) {
  // A probe (sender 0.0.0.0) for an address we stand for: the answer tells
  // the guest the address is taken.
  std::vector<uint8_t> reply;
  absl::StatusOr<size_t> n = Answer(Arp(1, Bytes({0, 0, 0, 0}), Bytes({10, 0, 2, 2})), &reply);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, kArpReplyLen);
  EXPECT_EQ(std::vector<uint8_t>(reply.begin() + 38, reply.begin() + 42), Bytes({0, 0, 0, 0}));
}

TEST(ArpTest, IgnoresWhatIsNotOurs) {
  std::vector<uint8_t> reply;
  // The guest's own address (its duplicate-address probe), gratuitous ARP,
  // 0.0.0.0, a reply, an unknown op, a multicast sender.
  EXPECT_EQ(*Answer(Arp(1, Bytes({0, 0, 0, 0}), Bytes({10, 0, 2, 15})), &reply), 0u);
  EXPECT_EQ(*Answer(Arp(1, Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 15})), &reply), 0u);
  EXPECT_EQ(*Answer(Arp(1, Bytes({10, 0, 2, 16}), Bytes({10, 0, 2, 16})), &reply), 0u);
  EXPECT_EQ(*Answer(Arp(1, Bytes({10, 0, 2, 15}), Bytes({0, 0, 0, 0})), &reply), 0u);
  EXPECT_EQ(*Answer(Arp(2, Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 2})), &reply), 0u);
  EXPECT_EQ(*Answer(Arp(3, Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 2})), &reply), 0u);
  EXPECT_EQ(
      *Answer(Arp(1, Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 2}), Mac(0x01, 0, 0x5e, 0, 0, 1)),
              &reply),
      0u);
}

TEST(ArpTest, IgnoresOtherFrames) {
  ParsedFrame p;  // Not parsed from anything: no L3.
  uint8_t out[kArpReplyLen];
  EXPECT_EQ(*ArpReply(Config(), p, out), 0u);
  p.l3 = L3Kind::kIpv4;
  EXPECT_EQ(*ArpReply(Config(), p, out), 0u);
}

TEST(ArpTest, RefusesAShortBuffer) {
  std::vector<uint8_t> f = Arp(1, Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 2}));
  ParsedFrame p;
  ASSERT_TRUE(Parse(f, &p).ok());
  uint8_t out[kArpReplyLen - 1];
  EXPECT_FALSE(ArpReply(Config(), p, out).ok());
}

// Malformed ARP never reaches ArpReply: ParseFrame refuses it.
TEST(ArpTest, TruncatedRequestsAreRefusedByTheParser) {
  std::vector<uint8_t> f = Arp(1, Bytes({10, 0, 2, 15}), Bytes({10, 0, 2, 2}));
  for (size_t len = 14; len < f.size(); ++len) {
    std::vector<uint8_t> prefix(f.begin(), f.begin() + static_cast<ptrdiff_t>(len));
    ParsedFrame p;
    EXPECT_FALSE(Parse(prefix, &p).ok());
  }
}

}  // namespace
}  // namespace vunet::net
