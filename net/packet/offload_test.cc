#include "net/packet/offload.h"

#include <netinet/in.h>

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "net/packet/frame.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

using testing::Build;
using testing::Ip4;
using testing::Ip6;
using testing::Parse;
using virtio::VirtioNetHdr;

constexpr GuestOffloads kAll = {.csum = true, .tso4 = true, .tso6 = true, .ecn = true, .uso = true};

FrameSpec Spec(uint8_t protocol, bool ipv6) {
  FrameSpec s;
  s.ipv6 = ipv6;
  s.src4 = Ip4("10.0.2.15");
  s.dst4 = Ip4("10.0.2.2");
  s.src6 = Ip6("fd00::15");
  s.dst6 = Ip6("fd00::2");
  s.protocol = protocol;
  s.src_port = 40000;
  s.dst_port = 80;
  s.tcp_flags = kTcpAck;
  return s;
}

struct Case {
  std::vector<uint8_t> bytes;
  ParsedFrame parsed;
  VirtioNetHdr hdr;  // As a Linux guest's driver writes it for the frame.
};

// A frame of `payload` bytes with the header a driver sends it with:
// segmented by `gso_size` when that is not 0.
Case Make(uint8_t protocol, bool ipv6, size_t payload, uint16_t gso_size) {
  Case c;
  c.bytes = Build(Spec(protocol, ipv6), std::vector<uint8_t>(payload, 0x5a));
  EXPECT_TRUE(Parse(c.bytes, &c.parsed).ok());
  c.hdr.flags = virtio::kVirtioNetHdrFNeedsCsum;
  c.hdr.csum_start = static_cast<uint16_t>(c.parsed.l4_offset);
  c.hdr.csum_offset = protocol == IPPROTO_TCP ? 16 : 6;
  if (gso_size != 0) {
    c.hdr.gso_type = protocol == IPPROTO_UDP ? virtio::kVirtioNetHdrGsoUdpL4
                     : ipv6                  ? virtio::kVirtioNetHdrGsoTcpv6
                                             : virtio::kVirtioNetHdrGsoTcpv4;
    c.hdr.gso_size = gso_size;
    c.hdr.hdr_len = static_cast<uint16_t>(c.parsed.payload_offset);
  }
  return c;
}

OffloadProblem Check(const Case& c, const GuestOffloads& negotiated = kAll) {
  return CheckGuestOffload(c.hdr, c.parsed, negotiated);
}

TEST(OffloadTest, WellFormedFramesPass) {
  // 64 KiB segments of each type, and frames without segmentation.
  EXPECT_EQ(Check(Make(IPPROTO_TCP, false, 65535 - 40, 1448)), OffloadProblem::kNone);
  EXPECT_EQ(Check(Make(IPPROTO_TCP, true, 65535 - 20, 1428)), OffloadProblem::kNone);
  EXPECT_EQ(Check(Make(IPPROTO_UDP, false, 65535 - 28, 1472)), OffloadProblem::kNone);
  EXPECT_EQ(Check(Make(IPPROTO_UDP, true, 8000, 1000)), OffloadProblem::kNone);
  EXPECT_EQ(Check(Make(IPPROTO_TCP, false, 100, 0)), OffloadProblem::kNone);
  // One segment's worth is still a segmentation request.
  EXPECT_EQ(Check(Make(IPPROTO_TCP, false, 1448, 1448)), OffloadProblem::kNone);
  // ECN on TCP with HOST_ECN.
  Case ecn = Make(IPPROTO_TCP, false, 4000, 1000);
  ecn.hdr.gso_type |= virtio::kVirtioNetHdrGsoEcn;
  EXPECT_EQ(Check(ecn), OffloadProblem::kNone);
  // No flags at all, nothing negotiated.
  Case plain = Make(IPPROTO_TCP, false, 100, 0);
  plain.hdr = VirtioNetHdr{};
  EXPECT_EQ(Check(plain, GuestOffloads{}), OffloadProblem::kNone);
  // Flags a device does not know are ignored (DATA_VALID is the device's).
  plain.hdr.flags = virtio::kVirtioNetHdrFDataValid | 0x40;
  EXPECT_EQ(Check(plain, GuestOffloads{}), OffloadProblem::kNone);
  // A hdr_len shorter than the headers is only a poor hint.
  Case hint = Make(IPPROTO_TCP, false, 4000, 1000);
  hint.hdr.hdr_len = 0;
  EXPECT_EQ(Check(hint), OffloadProblem::kNone);
}

TEST(OffloadTest, ChecksumWithoutTheFeature) {
  Case c = Make(IPPROTO_TCP, false, 100, 0);
  EXPECT_EQ(Check(c, GuestOffloads{}), OffloadProblem::kChecksumNotNegotiated);
}

TEST(OffloadTest, ChecksumOutOfRange) {
  Case c = Make(IPPROTO_UDP, false, 100, 0);
  c.hdr.csum_start = static_cast<uint16_t>(c.bytes.size() - 1);
  c.hdr.csum_offset = 0;
  EXPECT_EQ(Check(c), OffloadProblem::kChecksumOutOfRange);
  c.hdr.csum_start = 0xffff;
  c.hdr.csum_offset = 0xffff;
  EXPECT_EQ(Check(c), OffloadProblem::kChecksumOutOfRange);
  // The last two bytes are still in range.
  c.hdr.csum_start = static_cast<uint16_t>(c.bytes.size() - 2);
  c.hdr.csum_offset = 0;
  EXPECT_EQ(Check(c), OffloadProblem::kNone);
}

TEST(OffloadTest, UnknownGsoType) {
  for (uint8_t type : {2, 3, 6, 0x7f, 0x80, 0x85, 0xff}) {
    Case c = Make(IPPROTO_UDP, false, 4000, 1000);
    c.hdr.gso_type = type;
    EXPECT_EQ(Check(c), OffloadProblem::kGsoUnknownType) << int{type};
  }
}

TEST(OffloadTest, GsoWithoutTheFeature) {
  GuestOffloads no_tso4 = kAll;
  no_tso4.tso4 = false;
  EXPECT_EQ(Check(Make(IPPROTO_TCP, false, 4000, 1000), no_tso4),
            OffloadProblem::kGsoNotNegotiated);
  EXPECT_EQ(Check(Make(IPPROTO_TCP, true, 4000, 1000), no_tso4), OffloadProblem::kNone);
  GuestOffloads no_tso6 = kAll;
  no_tso6.tso6 = false;
  EXPECT_EQ(Check(Make(IPPROTO_TCP, true, 4000, 1000), no_tso6), OffloadProblem::kGsoNotNegotiated);
  GuestOffloads no_uso = kAll;
  no_uso.uso = false;
  EXPECT_EQ(Check(Make(IPPROTO_UDP, true, 4000, 1000), no_uso), OffloadProblem::kGsoNotNegotiated);
  GuestOffloads no_ecn = kAll;
  no_ecn.ecn = false;
  Case ecn = Make(IPPROTO_TCP, false, 4000, 1000);
  ecn.hdr.gso_type |= virtio::kVirtioNetHdrGsoEcn;
  EXPECT_EQ(Check(ecn, no_ecn), OffloadProblem::kGsoNotNegotiated);
  // Nothing negotiated: the checksum flag fails first.
  EXPECT_EQ(Check(ecn, GuestOffloads{}), OffloadProblem::kChecksumNotNegotiated);
}

TEST(OffloadTest, GsoTypeNotTheFramesProtocol) {
  Case v6 = Make(IPPROTO_TCP, true, 4000, 1000);
  v6.hdr.gso_type = virtio::kVirtioNetHdrGsoTcpv4;
  EXPECT_EQ(Check(v6), OffloadProblem::kGsoProtocolMismatch);
  Case v4 = Make(IPPROTO_TCP, false, 4000, 1000);
  v4.hdr.gso_type = virtio::kVirtioNetHdrGsoTcpv6;
  EXPECT_EQ(Check(v4), OffloadProblem::kGsoProtocolMismatch);
  v4.hdr.gso_type = virtio::kVirtioNetHdrGsoUdpL4;
  EXPECT_EQ(Check(v4), OffloadProblem::kGsoProtocolMismatch);
  Case udp = Make(IPPROTO_UDP, false, 4000, 1000);
  udp.hdr.gso_type = virtio::kVirtioNetHdrGsoTcpv4;
  EXPECT_EQ(Check(udp), OffloadProblem::kGsoProtocolMismatch);
  // An ARP frame asking for TSO.
  Case arp;
  arp.parsed.frame_len = 60;
  arp.parsed.l3 = L3Kind::kArp;
  arp.hdr.gso_type = virtio::kVirtioNetHdrGsoTcpv4;
  arp.hdr.gso_size = 1;
  EXPECT_EQ(Check(arp), OffloadProblem::kGsoProtocolMismatch);
  // ECN on a UDP type is no type at all.
  udp.hdr.gso_type = virtio::kVirtioNetHdrGsoUdpL4 | virtio::kVirtioNetHdrGsoEcn;
  EXPECT_EQ(Check(udp), OffloadProblem::kGsoUnknownType);
}

TEST(OffloadTest, GsoWithoutAPartialChecksum) {
  Case c = Make(IPPROTO_TCP, false, 4000, 1000);
  c.hdr.flags = 0;
  EXPECT_EQ(Check(c), OffloadProblem::kGsoWithoutChecksum);
  c.hdr.flags = virtio::kVirtioNetHdrFDataValid;
  EXPECT_EQ(Check(c), OffloadProblem::kGsoWithoutChecksum);
}

TEST(OffloadTest, GsoChecksumOffTheTransportHeader) {
  Case c = Make(IPPROTO_TCP, false, 4000, 1000);
  c.hdr.csum_start = 14;
  EXPECT_EQ(Check(c), OffloadProblem::kGsoChecksumField);
  c = Make(IPPROTO_UDP, true, 4000, 1000);
  c.hdr.csum_offset = 16;
  EXPECT_EQ(Check(c), OffloadProblem::kGsoChecksumField);
}

TEST(OffloadTest, GsoSizeZero) {
  Case c = Make(IPPROTO_TCP, true, 4000, 1000);
  c.hdr.gso_size = 0;
  EXPECT_EQ(Check(c), OffloadProblem::kGsoZeroSize);
}

TEST(OffloadTest, GsoSizeLargerThanThePayload) {
  Case c = Make(IPPROTO_TCP, false, 4000, 4001);
  EXPECT_EQ(Check(c), OffloadProblem::kGsoSizePastPayload);
  c = Make(IPPROTO_UDP, false, 100, 0xffff);
  EXPECT_EQ(Check(c), OffloadProblem::kGsoSizePastPayload);
  // A segment without payload has nothing to segment.
  c = Make(IPPROTO_TCP, false, 0, 1);
  EXPECT_EQ(Check(c), OffloadProblem::kGsoSizePastPayload);
}

TEST(OffloadTest, HdrLenPastTheFrame) {
  Case c = Make(IPPROTO_TCP, false, 4000, 1000);
  c.hdr.hdr_len = static_cast<uint16_t>(c.bytes.size() + 1);
  EXPECT_EQ(Check(c), OffloadProblem::kHdrLenPastFrame);
  c.hdr.hdr_len = static_cast<uint16_t>(c.bytes.size());
  EXPECT_EQ(Check(c), OffloadProblem::kNone);
}

TEST(OffloadTest, IpLengthDisagreeingWithTheFrame) {
  // Bytes after the IP packet: padding for a plain frame, refused when the
  // frame is to be segmented.
  Case c = Make(IPPROTO_TCP, false, 60000, 1448);
  c.bytes.resize(c.bytes.size() + 100);
  ASSERT_TRUE(Parse(c.bytes, &c.parsed).ok());
  EXPECT_EQ(Check(c), OffloadProblem::kGsoLengthMismatch);
  c.hdr.gso_type = virtio::kVirtioNetHdrGsoNone;
  EXPECT_EQ(Check(c), OffloadProblem::kNone);
  // A UDP length shorter than the IP payload.
  Case u = Make(IPPROTO_UDP, true, 4000, 1000);
  testing::PutBe16(u.bytes, 14 + 40 + 4, 8 + 3000);
  ASSERT_TRUE(Parse(u.bytes, &u.parsed).ok());
  EXPECT_EQ(Check(u), OffloadProblem::kGsoLengthMismatch);
}

TEST(OffloadTest, EveryProblemHasAName) {
  for (size_t i = 0; i < kOffloadProblemCount; ++i) {
    EXPECT_STRNE(OffloadProblemName(static_cast<OffloadProblem>(i)), "?") << i;
  }
}

}  // namespace
}  // namespace vunet::net
