#include "tools/vu_frontend/net_header.h"

#include <cstdint>
#include <optional>
#include <vector>

#include "gtest/gtest.h"

namespace vunet::vu_frontend {
namespace {

using virtio::kVirtioNetHdrFDataValid;
using virtio::kVirtioNetHdrFNeedsCsum;

constexpr uint64_t kCsums = Bit(kVirtioNetFCsum) | Bit(kVirtioNetFGuestCsum);
constexpr uint64_t kAll = kCsums | kGsoFeatures;

// An Ethernet frame carrying TCP (protocol 6) or UDP (17) over IPv4 or IPv6
// with `payload` bytes and a TCP header of `tcp_header` bytes, its IP length
// set; `pad_to` pads the frame with zeros as Ethernet does.
std::vector<uint8_t> Frame(int ip_version, uint8_t protocol, size_t payload, size_t tcp_header = 20,
                           size_t pad_to = 0) {
  const size_t ip_header = ip_version == 4 ? 20 : 40;
  const size_t l4_header = protocol == 6 ? tcp_header : 8;
  std::vector<uint8_t> frame(14 + ip_header + l4_header + payload);
  frame[12] = ip_version == 4 ? 0x08 : 0x86;
  frame[13] = ip_version == 4 ? 0x00 : 0xdd;
  uint8_t* ip = frame.data() + 14;
  if (ip_version == 4) {
    const size_t total = ip_header + l4_header + payload;
    ip[0] = 0x45;
    ip[2] = static_cast<uint8_t>(total >> 8);
    ip[3] = static_cast<uint8_t>(total);
    ip[6] = 0x40;  // Don't fragment.
    ip[8] = 64;
    ip[9] = protocol;
  } else {
    const size_t length = l4_header + payload;
    ip[0] = 0x60;
    ip[4] = static_cast<uint8_t>(length >> 8);
    ip[5] = static_cast<uint8_t>(length);
    ip[6] = protocol;
    ip[7] = 64;
  }
  uint8_t* l4 = ip + ip_header;
  if (protocol == 6) {
    l4[12] = static_cast<uint8_t>((tcp_header / 4) << 4);
    l4[13] = 0x18;  // PSH|ACK.
  }
  if (frame.size() < pad_to) frame.resize(pad_to);
  return frame;
}

TEST(WithPrerequisitesTest, DropsFeaturesWhoseRequirementsAreMissing) {
  EXPECT_EQ(WithPrerequisites(kAll), kAll);
  EXPECT_EQ(WithPrerequisites(0), 0u);
  // No GUEST_CSUM: no GUEST_TSO*, GUEST_USO*, and so no GUEST_ECN either.
  EXPECT_EQ(WithPrerequisites(kAll & ~Bit(kVirtioNetFGuestCsum)),
            Bit(kVirtioNetFCsum) | kHostGsoFeatures);
  EXPECT_EQ(WithPrerequisites(kAll & ~Bit(kVirtioNetFCsum)),
            Bit(kVirtioNetFGuestCsum) | kGuestGsoFeatures);
  // ECN needs one of the TSO bits of its direction.
  EXPECT_EQ(WithPrerequisites(kCsums | Bit(kVirtioNetFHostEcn) | Bit(kVirtioNetFGuestEcn) |
                              Bit(kVirtioNetFHostUso)),
            kCsums | Bit(kVirtioNetFHostUso));
  EXPECT_EQ(WithPrerequisites(kCsums | Bit(kVirtioNetFGuestTso6) | Bit(kVirtioNetFGuestEcn)),
            kCsums | Bit(kVirtioNetFGuestTso6) | Bit(kVirtioNetFGuestEcn));
  // Bits it does not know of stay.
  EXPECT_EQ(WithPrerequisites(Bit(15) | Bit(32)), Bit(15) | Bit(32));
}

TEST(ClassifyFrameTest, TcpAndUdpOverBothIpVersions) {
  FrameInfo info = ClassifyFrame(Frame(4, 6, 1000, 32));
  EXPECT_EQ(info.ether_type, 0x0800);
  EXPECT_EQ(info.ip_version, 4);
  EXPECT_TRUE(info.is_tcp());
  EXPECT_FALSE(info.is_udp());
  EXPECT_EQ(info.l4_offset, 34);
  EXPECT_EQ(info.l4_header_size, 32);
  EXPECT_EQ(info.payload_size, 1000u);
  EXPECT_EQ(info.tcp_flags, 0x18);

  info = ClassifyFrame(Frame(6, 17, 65000));
  EXPECT_EQ(info.ip_version, 6);
  EXPECT_TRUE(info.is_udp());
  EXPECT_EQ(info.l4_offset, 54);
  EXPECT_EQ(info.l4_header_size, 8);
  EXPECT_EQ(info.payload_size, 65000u);

  // A pure ACK padded to the Ethernet minimum carries no payload.
  info = ClassifyFrame(Frame(4, 6, 0, 20, 60));
  EXPECT_TRUE(info.is_tcp());
  EXPECT_EQ(info.payload_size, 0u);
  // An IP length past the frame: what the frame holds.
  std::vector<uint8_t> cut = Frame(4, 6, 100);
  cut.resize(cut.size() - 10);
  EXPECT_EQ(ClassifyFrame(cut).payload_size, 90u);
}

TEST(ClassifyFrameTest, WhatIsNotTcpOrUdp) {
  EXPECT_EQ(ClassifyFrame({}).ether_type, 0);
  std::vector<uint8_t> arp(60);
  arp[12] = 0x08;
  arp[13] = 0x06;
  FrameInfo info = ClassifyFrame(arp);
  EXPECT_EQ(info.ether_type, 0x0806);
  EXPECT_EQ(info.ip_version, 0);

  info = ClassifyFrame(Frame(4, 1, 56));  // ICMP.
  EXPECT_EQ(info.ip_version, 4);
  EXPECT_EQ(info.protocol, 1);
  EXPECT_FALSE(info.is_tcp() || info.is_udp());

  std::vector<uint8_t> fragment = Frame(4, 17, 100);
  fragment[14 + 6] = 0x20;  // More fragments.
  info = ClassifyFrame(fragment);
  EXPECT_TRUE(info.fragment);
  EXPECT_FALSE(info.is_udp());

  std::vector<uint8_t> hop_by_hop = Frame(6, 6, 100);
  hop_by_hop[14 + 6] = 0;
  EXPECT_FALSE(ClassifyFrame(hop_by_hop).is_tcp());

  std::vector<uint8_t> bad_offset = Frame(4, 6, 100);
  bad_offset[34 + 12] = 0x40;  // Data offset 4.
  EXPECT_FALSE(ClassifyFrame(bad_offset).is_tcp());
  std::vector<uint8_t> header_past_frame = Frame(4, 6, 0, 60);
  header_past_frame.resize(34 + 40);
  EXPECT_FALSE(ClassifyFrame(header_past_frame).is_tcp());

  std::vector<uint8_t> bad_ihl = Frame(4, 6, 100);
  bad_ihl[14] = 0x44;
  EXPECT_EQ(ClassifyFrame(bad_ihl).ip_version, 0);
  std::vector<uint8_t> wrong_version = Frame(6, 6, 100);
  wrong_version[14] = 0x40;
  EXPECT_EQ(ClassifyFrame(wrong_version).ip_version, 0);
}

TEST(OffloadHeaderTest, SegmentationByProtocol) {
  std::optional<VirtioNetHdr> h = OffloadHeader(Frame(4, 6, 65000, 32), 1448);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->flags, kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(h->csum_start, 34);
  EXPECT_EQ(h->csum_offset, 16);
  EXPECT_EQ(h->gso_type, kGsoTcpv4);
  EXPECT_EQ(h->gso_size, 1448);
  EXPECT_EQ(h->hdr_len, 34 + 32);
  EXPECT_EQ(h->num_buffers, 0);

  h = OffloadHeader(Frame(6, 6, 3000), 1440, /*ecn=*/true);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->gso_type, kGsoTcpv6 | kGsoEcn);
  EXPECT_EQ(h->hdr_len, 74);

  h = OffloadHeader(Frame(4, 17, 8000), 1472);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->gso_type, kGsoUdpL4);
  EXPECT_EQ(h->csum_offset, 6);
  EXPECT_EQ(h->hdr_len, 42);

  // Not larger than one segment, or no segment size: a partial checksum only.
  for (uint16_t gso_size : {0, 1448}) {
    h = OffloadHeader(Frame(4, 6, 1448), gso_size, /*ecn=*/true);
    ASSERT_TRUE(h);
    EXPECT_EQ(h->gso_type, kGsoNone);
    EXPECT_EQ(h->gso_size, 0);
    EXPECT_EQ(h->hdr_len, 0);
    EXPECT_EQ(h->flags, kVirtioNetHdrFNeedsCsum);
  }

  EXPECT_FALSE(OffloadHeader(Frame(6, 17, 3000), 1000, /*ecn=*/true));
  EXPECT_FALSE(OffloadHeader(Frame(4, 1, 3000), 1000));
  EXPECT_FALSE(OffloadHeader({}, 1000));
}

TEST(CheckHeaderTest, WellFormedHeadersPass) {
  const std::vector<uint8_t> tcp4 = Frame(4, 6, 20000);
  const std::vector<uint8_t> udp6 = Frame(6, 17, 20000);
  for (Direction d : {Direction::kToBackend, Direction::kToGuest}) {
    EXPECT_EQ(CheckHeader({}, tcp4, 0, d), HeaderProblem::kNone);
    EXPECT_EQ(CheckHeader(*OffloadHeader(tcp4, 0), tcp4, kCsums, d), HeaderProblem::kNone);
    EXPECT_EQ(CheckHeader(*OffloadHeader(tcp4, 1448, true), tcp4, kAll, d), HeaderProblem::kNone);
    EXPECT_EQ(CheckHeader(*OffloadHeader(udp6, 1400), udp6, kAll, d), HeaderProblem::kNone);
  }
  // To the guest, DATA_VALID is a checksum state too, with or without GSO.
  VirtioNetHdr valid = *OffloadHeader(tcp4, 1448);
  valid.flags = kVirtioNetHdrFDataValid;
  EXPECT_EQ(CheckHeader(valid, tcp4, kAll, Direction::kToGuest), HeaderProblem::kNone);
  EXPECT_EQ(CheckHeader(valid, tcp4, kAll, Direction::kToBackend),
            HeaderProblem::kDataValidToBackend);
  // Without GSO, gso_size and hdr_len are not looked at.
  VirtioNetHdr stray;
  stray.hdr_len = 60000;
  EXPECT_EQ(CheckHeader(stray, tcp4, 0, Direction::kToGuest), HeaderProblem::kNone);
}

TEST(CheckHeaderTest, EachProblem) {
  const std::vector<uint8_t> tcp4 = Frame(4, 6, 20000);
  const std::vector<uint8_t> tcp6 = Frame(6, 6, 20000);
  const std::vector<uint8_t> udp4 = Frame(4, 17, 20000);
  const VirtioNetHdr gso4 = *OffloadHeader(tcp4, 1448);
  const auto check = [](VirtioNetHdr h, const std::vector<uint8_t>& frame, uint64_t features,
                        Direction d = Direction::kToGuest) {
    return CheckHeader(h, frame, features, d);
  };
  VirtioNetHdr h = gso4;
  h.flags |= 4;  // RSC_INFO: never negotiated.
  EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kUnknownFlags);
  EXPECT_EQ(check(gso4, tcp4, kAll & ~Bit(kVirtioNetFGuestCsum)),
            HeaderProblem::kChecksumNotNegotiated);
  EXPECT_EQ(check(gso4, tcp4, kAll & ~Bit(kVirtioNetFCsum), Direction::kToBackend),
            HeaderProblem::kChecksumNotNegotiated);
  h = gso4;
  h.csum_offset = static_cast<uint16_t>(tcp4.size() - h.csum_start - 1);
  EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kChecksumOutOfRange);
  h.csum_offset = 0xffff;
  h.csum_start = 0xffff;  // No wrap-around.
  EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kChecksumOutOfRange);
  for (uint8_t type : {2, 6, 0x7f, 0x80}) {
    h = gso4;
    h.gso_type = type;
    EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kGsoUnknownType) << int{type};
  }
  EXPECT_EQ(check(gso4, tcp4, kAll & ~Bit(kVirtioNetFGuestTso4)), HeaderProblem::kGsoNotNegotiated);
  EXPECT_EQ(check(gso4, tcp4, kAll & ~Bit(kVirtioNetFHostTso4), Direction::kToBackend),
            HeaderProblem::kGsoNotNegotiated);
  // GUEST_USO4 and 6 go by the frame's IP version; HOST_USO covers both.
  const VirtioNetHdr uso4 = *OffloadHeader(udp4, 1400);
  EXPECT_EQ(check(uso4, udp4, kAll & ~Bit(kVirtioNetFGuestUso6)), HeaderProblem::kNone);
  EXPECT_EQ(check(uso4, udp4, kAll & ~Bit(kVirtioNetFGuestUso4)), HeaderProblem::kGsoNotNegotiated);
  EXPECT_EQ(check(uso4, udp4, kAll & ~Bit(kVirtioNetFHostUso), Direction::kToBackend),
            HeaderProblem::kGsoNotNegotiated);
  h = uso4;
  h.gso_type = kGsoUdp;  // UFO.
  EXPECT_EQ(check(h, udp4, kAll), HeaderProblem::kGsoNotNegotiated);
  h = uso4;
  h.gso_type |= kGsoEcn;
  EXPECT_EQ(check(h, udp4, kAll), HeaderProblem::kEcnNotNegotiated);
  h = gso4;
  h.gso_type |= kGsoEcn;
  EXPECT_EQ(check(h, tcp4, kAll & ~Bit(kVirtioNetFGuestEcn)), HeaderProblem::kEcnNotNegotiated);
  EXPECT_EQ(check(h, tcp4, kAll & ~Bit(kVirtioNetFGuestEcn), Direction::kToBackend),
            HeaderProblem::kNone);
  EXPECT_EQ(check(gso4, tcp6, kAll), HeaderProblem::kGsoProtocolMismatch);
  EXPECT_EQ(check(gso4, udp4, kAll), HeaderProblem::kGsoProtocolMismatch);
  EXPECT_EQ(check(uso4, tcp4, kAll), HeaderProblem::kGsoProtocolMismatch);
  h = gso4;
  h.gso_size = 0;
  EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kGsoZeroSize);
  h = gso4;
  h.flags = 0;
  EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kGsoWithoutChecksum);
  EXPECT_EQ(check(h, tcp4, kAll, Direction::kToBackend), HeaderProblem::kGsoWithoutChecksum);
  h = gso4;
  h.hdr_len = static_cast<uint16_t>(tcp4.size() + 1);
  EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kHdrLenPastFrame);
  h.hdr_len = static_cast<uint16_t>(tcp4.size());
  EXPECT_EQ(check(h, tcp4, kAll), HeaderProblem::kNone);

  EXPECT_STREQ(HeaderProblemName(HeaderProblem::kGsoZeroSize), "gso_size 0");
}

TEST(TunOffloadFlagsTest, FromTheHostSideFeatures) {
  EXPECT_EQ(TunOffloadFlags(0), 0u);
  EXPECT_EQ(TunOffloadFlags(kAll & ~Bit(kVirtioNetFCsum)), 0u);
  EXPECT_EQ(TunOffloadFlags(Bit(kVirtioNetFCsum)), kTunFCsum);
  // What the guest side takes needs no flag.
  EXPECT_EQ(TunOffloadFlags(kCsums | kGuestGsoFeatures), kTunFCsum);
  EXPECT_EQ(TunOffloadFlags(kAll),
            kTunFCsum | kTunFTso4 | kTunFTso6 | kTunFTsoEcn | kTunFUso4 | kTunFUso6);
  EXPECT_EQ(TunOffloadFlags(Bit(kVirtioNetFCsum) | Bit(kVirtioNetFHostTso6)),
            kTunFCsum | kTunFTso6);
  EXPECT_EQ(TunOffloadFlags(Bit(kVirtioNetFCsum) | Bit(kVirtioNetFHostEcn)), kTunFCsum);
  EXPECT_EQ(TunOffloadFlags(Bit(kVirtioNetFCsum) | Bit(kVirtioNetFHostUso)),
            kTunFCsum | kTunFUso4 | kTunFUso6);
  EXPECT_EQ(TunOffloadNames(0), "none");
  EXPECT_EQ(TunOffloadNames(TunOffloadFlags(kAll)), "CSUM|TSO4|TSO6|TSO_ECN|USO4|USO6");
}

}  // namespace
}  // namespace vunet::vu_frontend
