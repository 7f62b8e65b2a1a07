#include "net/gateway/dispatch.h"

#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "net/testing/test_frames.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/testing/guest_rx.h"

namespace vunet::net {
namespace {

using testing::Append;
using testing::Build;
using testing::Bytes;
using testing::Ip4;
using testing::Ip6;
using testing::Mac;
using testing::Split;

const MacAddr kGuestMac = Mac(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const MacAddr kGatewayMac = Mac(0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55);

std::vector<uint8_t> ArpRequest() {
  std::vector<uint8_t> f = Bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
  Append(f, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  Append(f, Bytes({0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1}));
  Append(f, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  Append(f, Bytes({10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2}));
  return f;
}

std::vector<uint8_t> DhcpDiscover() {
  std::vector<uint8_t> m = Bytes({1, 1, 6, 0, 1, 2, 3, 4, 0, 0, 0, 0});
  m.resize(28, 0);
  Append(m, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  m.resize(236, 0);
  Append(m, Bytes({99, 130, 83, 99, 53, 1, 1, 255}));
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kBroadcastMac;
  s.dst4 = Ip4("255.255.255.255");
  s.src_port = 68;
  s.dst_port = 67;
  return Build(s, m);
}

std::vector<uint8_t> Icmp6(uint8_t type, const std::vector<uint8_t>& body) {
  FrameSpec s;
  s.ipv6 = true;
  s.src_mac = kGuestMac;
  s.dst_mac = Mac(0x33, 0x33, 0, 0, 0, 2);
  s.src6 = Ip6("fe80::5054:ff:fe12:3456");
  s.dst6 = Ip6("ff02::2");
  s.ttl = 255;
  s.protocol = IPPROTO_ICMPV6;
  std::vector<uint8_t> m = Bytes({type, 0, 0, 0, 0, 0, 0, 0});
  Append(m, body);
  return Build(s, m);
}

std::vector<uint8_t> NeighborSolicitation() {
  in6_addr target = Ip6("fe80::1");
  return Icmp6(135, std::vector<uint8_t>(target.s6_addr, target.s6_addr + 16));
}

// A DHCPv6 Solicit from the guest: Client ID (DUID-LL), IA_NA, Rapid Commit.
std::vector<uint8_t> Dhcpv6Solicit() {
  FrameSpec s;
  s.ipv6 = true;
  s.src_mac = kGuestMac;
  s.dst_mac = Mac(0x33, 0x33, 0, 1, 0, 2);
  s.src6 = Ip6("fe80::5054:ff:fe12:3456");
  s.dst6 = Ip6("ff02::1:2");
  s.ttl = 1;
  s.src_port = 546;
  s.dst_port = 547;
  std::vector<uint8_t> m = Bytes({1, 0x12, 0x34, 0x56});
  Append(m, Bytes({0, 1, 0, 10, 0, 3, 0, 1}));
  Append(m, std::vector<uint8_t>(kGuestMac.bytes, kGuestMac.bytes + 6));
  Append(m, Bytes({0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 14, 0, 0}));
  return Build(s, m);
}

std::vector<uint8_t> TcpSyn() {
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kGatewayMac;
  s.src4 = Ip4("10.0.2.15");
  s.dst4 = Ip4("93.184.216.34");
  s.protocol = IPPROTO_TCP;
  s.src_port = 40000;
  s.dst_port = 443;
  s.tcp_flags = kTcpSyn;
  return Build(s, {});
}

class RecordingSink : public ParsedFrameSink {
 public:
  void OnFrame(const vu::VirtioNetHdr&, absl::Span<const iovec> frame,
               const ParsedFrame& parsed) override {
    parsed_.push_back(parsed);
    frames.push_back(IovSize(frame));
  }
  void OnBatchEnd() override { ++batches; }
  static size_t IovSize(absl::Span<const iovec> iov) {
    size_t n = 0;
    for (const iovec& v : iov) n += v.iov_len;
    return n;
  }
  std::vector<ParsedFrame> parsed_;
  std::vector<size_t> frames;
  int batches = 0;
};

struct Handlers {
  Handlers() {
    arp.gateway_mac = kGatewayMac;
    arp.guest_addr = Ip4("10.0.2.15");
    DhcpConfig d;
    d.gateway_mac = kGatewayMac;
    d.gateway_addr = Ip4("10.0.2.2");
    d.guest_addr = Ip4("10.0.2.15");
    dhcp = std::make_unique<DhcpServer>(DhcpServer::Create(d).value());
    NdpConfig n;
    n.gateway_mac = kGatewayMac;
    n.gateway_ll = Ip6("fe80::1");
    n.prefix = Ip6("2001:db8::");
    ndp = std::make_unique<NdpResponder>(NdpResponder::Create(n).value());
    Dhcpv6Config d6;
    d6.gateway_mac = kGatewayMac;
    d6.gateway_ll = Ip6("fe80::1");
    d6.guest_addr = Ip6("2001:db8::15");
    dhcpv6 = std::make_unique<Dhcpv6Server>(Dhcpv6Server::Create(d6).value());
  }
  Dispatcher::Handlers All() const {
    return {.arp = &arp, .dhcp = dhcp.get(), .ndp = ndp.get(), .dhcpv6 = dhcpv6.get()};
  }

  ArpConfig arp;
  std::unique_ptr<DhcpServer> dhcp;
  std::unique_ptr<NdpResponder> ndp;
  std::unique_ptr<Dhcpv6Server> dhcpv6;
};

void Feed(Dispatcher& d, std::vector<uint8_t> frame, uint8_t flags = 0) {
  vu::VirtioNetHdr hdr;
  hdr.flags = flags;
  std::vector<iovec> iov = Split(frame, 5);
  d.OnFrame(hdr, iov);
}

uint16_t EtherType(const std::vector<uint8_t>& f) { return testing::GetBe16(f, 12); }

// A guest that negotiated VIRTIO_NET_F_CSUM, and one with every offload.
vu::NetConfig CsumConfig() {
  vu::NetConfig c;
  c.csum = true;
  return c;
}
vu::NetConfig OffloadConfig() {
  vu::NetConfig c = CsumConfig();
  c.host_tso4 = c.host_tso6 = c.host_ecn = c.host_uso = true;
  return c;
}

// The guest's receive ring, with room for replies.
struct Guest {
  Guest() { ring.Post(32); }
  std::vector<std::vector<uint8_t>> Replies() { return ring.TakeBytes(); }
  vu::testing::GuestRxRing ring;
};

TEST(DispatchTest, AnswersArpDhcpAndNdp) {
  Handlers h;
  Guest guest;
  RecordingSink tcp;
  Dispatcher d(h.All(), &guest.ring.rx());
  d.Route(L4Kind::kTcp, &tcp);
  Feed(d, ArpRequest());
  Feed(d, DhcpDiscover());
  Feed(d, Icmp6(133, {}));
  Feed(d, NeighborSolicitation());
  std::vector<std::vector<uint8_t>> replies = guest.Replies();
  ASSERT_EQ(replies.size(), 4u);
  EXPECT_EQ(EtherType(replies[0]), kEtherTypeArp);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(replies[1], &p).ok());
  EXPECT_EQ(p.dst_port, kDhcpClientPort);
  ASSERT_TRUE(testing::Parse(replies[2], &p).ok());
  EXPECT_EQ(p.icmp.type, 134);
  ASSERT_TRUE(testing::Parse(replies[3], &p).ok());
  EXPECT_EQ(p.icmp.type, 136);
  EXPECT_EQ(d.stats().frames, 4u);
  EXPECT_EQ(d.stats().replies, 4u);
  EXPECT_TRUE(tcp.frames.empty());
}

std::vector<uint8_t> Udp(uint16_t port) {
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kGatewayMac;
  s.src4 = Ip4("10.0.2.15");
  s.dst4 = Ip4("10.0.2.2");
  s.protocol = IPPROTO_UDP;
  s.src_port = 40000;
  s.dst_port = port;
  return Build(s, {1, 2, 3});
}

TEST(DispatchTest, RoutesByProtocolAndEndsEachBatchOnce) {
  Handlers h;
  Guest guest;
  RecordingSink tcp, udp, icmp;
  Dispatcher d(h.All(), &guest.ring.rx());
  d.Route(L4Kind::kTcp, &tcp);
  d.Route(L4Kind::kUdp, &udp);
  d.Route(L4Kind::kIcmpv6, &icmp);  // The same route as kIcmp.
  const std::vector<uint8_t> syn = TcpSyn();
  Feed(d, syn);
  Feed(d, Icmp6(128, {0, 1, 0, 1}));  // Echo request: not NDP.
  Feed(d, syn);
  d.OnBatchEnd();
  ASSERT_EQ(tcp.frames.size(), 2u);
  EXPECT_EQ(tcp.frames[0], syn.size());
  EXPECT_EQ(tcp.parsed_[0].l4, L4Kind::kTcp);
  EXPECT_EQ(tcp.parsed_[0].dst_port, 443);
  ASSERT_EQ(icmp.frames.size(), 1u);
  EXPECT_EQ(icmp.parsed_[0].l4, L4Kind::kIcmpv6);
  EXPECT_EQ(d.stats().routed, 3u);
  // Each sink that had frames hears of the batch's end once; the others not.
  EXPECT_EQ(tcp.batches, 1);
  EXPECT_EQ(icmp.batches, 1);
  EXPECT_EQ(udp.batches, 0);
  Feed(d, Udp(5353));
  d.OnBatchEnd();
  d.OnBatchEnd();
  EXPECT_EQ(udp.frames.size(), 1u);
  EXPECT_EQ(udp.batches, 1);
  EXPECT_EQ(tcp.batches, 1);
  EXPECT_TRUE(guest.Replies().empty());
}

TEST(DispatchTest, DropsMalformedAndCountsTheUnroutedByProtocol) {
  Guest guest;
  Dispatcher d({}, &guest.ring.rx());  // No services, no routes.
  Feed(d, {});
  std::vector<uint8_t> truncated = TcpSyn();
  truncated.resize(40);
  Feed(d, truncated);
  Feed(d, ArpRequest());
  Feed(d, TcpSyn());
  Feed(d, DhcpDiscover());
  Feed(d, Icmp6(128, {0, 1, 0, 1}));
  d.OnBatchEnd();
  EXPECT_EQ(d.stats().frames, 6u);
  EXPECT_EQ(d.stats().malformed, 2u);
  EXPECT_EQ(d.stats().other_dropped, 1u);  // ARP.
  EXPECT_EQ(d.stats().tcp_dropped, 1u);
  EXPECT_EQ(d.stats().udp_dropped, 1u);
  EXPECT_EQ(d.stats().icmp_dropped, 1u);
  EXPECT_TRUE(guest.Replies().empty());
}

TEST(DispatchTest, ReplyDroppedWhenTheGuestHasNoRoom) {
  Handlers h;
  vu::testing::GuestRxRing ring;  // Nothing posted.
  Dispatcher d(h.All(), &ring.rx());
  Feed(d, ArpRequest());
  EXPECT_EQ(d.stats().send_failures, 1u);
  EXPECT_EQ(d.stats().replies, 0u);
}

TEST(DispatchTest, PartialChecksumFlagReachesNdp) {
  Handlers h;
  Guest guest;
  Dispatcher d(h.All(), &guest.ring.rx());
  d.SetNetConfig(CsumConfig());
  std::vector<uint8_t> ns = NeighborSolicitation();
  ns[14 + 40 + 2] ^= 0x55;  // Checksum field, as a guest with CSUM offload might leave it.
  Feed(d, ns);
  EXPECT_EQ(guest.Replies().size(), 0u);
  Feed(d, ns, vu::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(guest.Replies().size(), 1u);
}

TEST(DispatchTest, Dhcpv6GoesToTheDhcpv6Server) {
  Handlers h;
  Guest guest;
  RecordingSink udp;
  Dispatcher d(h.All(), &guest.ring.rx());
  d.Route(L4Kind::kUdp, &udp);
  Feed(d, Dhcpv6Solicit());
  std::vector<std::vector<uint8_t>> replies = guest.Replies();
  ASSERT_EQ(replies.size(), 1u);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(replies[0], &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kIpv6);
  EXPECT_EQ(p.src_port, kDhcpv6ServerPort);
  EXPECT_EQ(p.dst_port, kDhcpv6ClientPort);
  EXPECT_EQ(replies[0][p.payload_offset], 7);  // Reply, with Rapid Commit.
  EXPECT_TRUE(udp.frames.empty());

  // A malformed one is taken too (and dropped), not routed.
  std::vector<uint8_t> bad = Dhcpv6Solicit();
  bad[14 + 40 + 8 + 6] = 0xff;  // Client ID length past the message.
  Feed(d, bad);
  EXPECT_TRUE(guest.Replies().empty());
  EXPECT_TRUE(udp.frames.empty());
  EXPECT_EQ(d.stats().replies, 1u);
}

TEST(DispatchTest, Dhcpv6WithoutAServerFallsThrough) {
  Handlers h;
  Guest guest;
  RecordingSink udp;
  Dispatcher::Handlers handlers = h.All();
  handlers.dhcpv6 = nullptr;
  Dispatcher d(handlers, &guest.ring.rx());
  d.Route(L4Kind::kUdp, &udp);
  Feed(d, Dhcpv6Solicit());
  EXPECT_TRUE(guest.Replies().empty());
  ASSERT_EQ(udp.frames.size(), 1u);
  EXPECT_EQ(udp.parsed_[0].dst_port, kDhcpv6ServerPort);
  Dispatcher alone({}, &guest.ring.rx());
  Feed(alone, Dhcpv6Solicit());
  EXPECT_EQ(alone.stats().udp_dropped, 1u);
}

TEST(DispatchTest, PartialChecksumFlagReachesDhcpv6) {
  Handlers h;
  Guest guest;
  Dispatcher d(h.All(), &guest.ring.rx());
  d.SetNetConfig(CsumConfig());
  std::vector<uint8_t> solicit = Dhcpv6Solicit();
  solicit[14 + 40 + 6] ^= 0x55;  // UDP checksum field.
  Feed(d, solicit);
  EXPECT_EQ(guest.Replies().size(), 0u);
  Feed(d, solicit, vu::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(guest.Replies().size(), 1u);
}

TEST(DispatchTest, TheGuestsIdentityIsLearnedFromEveryFrame) {
  Guest guest;
  GuestIdentity identity(MacAddr{}, InetAddr(), InetAddr());
  Dispatcher d({}, &guest.ring.rx(), &identity);
  Feed(d, TcpSyn());
  EXPECT_EQ(identity.mac(), kGuestMac);
  EXPECT_EQ(identity.address(AF_INET), InetAddr::V4(Ip4("10.0.2.15")));
  Feed(d, Dhcpv6Solicit());
  EXPECT_EQ(identity.link_local6(), InetAddr::V6(Ip6("fe80::5054:ff:fe12:3456")));
  EXPECT_TRUE(identity.address(AF_INET6).empty());
}

// The whole path: a guest queues an ARP request on its transmit ring, the
// transmit handler hands it to the dispatcher, and the reply arrives in the
// buffer the guest posted on its receive ring.
class DispatchRingTest : public ::testing::TestWithParam<bool> {};

TEST_P(DispatchRingTest, ThroughRealRings) {
  const bool guest_csum = GetParam();
  using virtio::testing::DriverMemory;
  using virtio::testing::DriverQueue;
  auto mem = DriverMemory::Create(16 << 20).value();
  virtio::GuestMemory memory;
  ASSERT_TRUE(mem->MapInto(&memory).ok());
  DriverQueue tx_driver(mem.get(), 64);
  virtio::Virtqueue tx;
  ASSERT_TRUE(tx.Start(&memory, tx_driver.DeviceConfig(memory).value()).ok());
  vu::testing::GuestRxRing guest({.mergeable = false, .guest_csum = guest_csum});
  guest.Post(1, 1526);

  std::vector<uint8_t> bytes(sizeof(vu::VirtioNetHdr), 0);
  Append(bytes, ArpRequest());
  const uint64_t tx_hdr = mem->Alloc(12).value();
  const uint64_t tx_frame = mem->Alloc(bytes.size()).value();
  mem->Write(tx_hdr, bytes.data(), 12);
  mem->Write(tx_frame, bytes.data() + 12, bytes.size() - 12);
  ASSERT_TRUE(tx_driver
                  .AddChain({{tx_hdr, 12, false},
                             {tx_frame, static_cast<uint32_t>(bytes.size() - 12), false}})
                  .has_value());
  tx_driver.Publish();

  Handlers h;
  Dispatcher d(h.All(), &guest.rx());
  vu::TxHandler handler;
  EXPECT_EQ(handler.Process(guest.config(), &tx, &d), 1u);
  EXPECT_EQ(d.stats().replies, 1u);

  std::vector<vu::testing::GuestRxRing::Frame> frames = guest.Take();
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].bytes.size(), vu::kEthMinFrame);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(frames[0].bytes, &p).ok());
  EXPECT_EQ(p.arp.op, 2);
  EXPECT_EQ(p.arp.sha, kGatewayMac);
  EXPECT_EQ(p.dst_mac, kGuestMac);
  // With GUEST_CSUM the guest is told our checksums need no checking.
  EXPECT_EQ(frames[0].hdr.flags, guest_csum ? vu::kVirtioNetHdrFDataValid : 0);
}

INSTANTIATE_TEST_SUITE_P(GuestCsum, DispatchRingTest, ::testing::Bool());

}  // namespace
}  // namespace vunet::net

namespace vunet::net {
namespace {

// A TCP segment (or UDP datagram) of `payload` bytes from the guest, with
// the header its driver would send it with, segmented by `gso_size`.
struct GsoFrame {
  std::vector<uint8_t> bytes;
  vu::VirtioNetHdr hdr;
};
GsoFrame MakeGso(uint8_t protocol, bool ipv6, size_t payload, uint16_t gso_size) {
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kGatewayMac;
  s.ipv6 = ipv6;
  s.src4 = Ip4("10.0.2.15");
  s.dst4 = Ip4("10.0.2.2");
  s.src6 = Ip6("2001:db8::15");
  s.dst6 = Ip6("2001:db8::2");
  s.protocol = protocol;
  s.src_port = 40000;
  s.dst_port = 5201;
  s.tcp_flags = kTcpAck;
  GsoFrame f;
  f.bytes = Build(s, std::vector<uint8_t>(payload, 0x42));
  const size_t l4 = 14 + (ipv6 ? 40 : 20);
  f.hdr.flags = vu::kVirtioNetHdrFNeedsCsum;
  f.hdr.csum_start = static_cast<uint16_t>(l4);
  f.hdr.csum_offset = protocol == IPPROTO_TCP ? 16 : 6;
  if (gso_size == 0) return f;
  f.hdr.gso_type = protocol == IPPROTO_UDP ? virtio::kVirtioNetHdrGsoUdpL4
                   : ipv6                  ? virtio::kVirtioNetHdrGsoTcpv6
                                           : virtio::kVirtioNetHdrGsoTcpv4;
  f.hdr.gso_size = gso_size;
  f.hdr.hdr_len = static_cast<uint16_t>(l4 + (protocol == IPPROTO_TCP ? 20 : 8));
  return f;
}

// Routes TCP and UDP to recording sinks and keeps the headers they got.
struct GsoWorld {
  class HeaderSink : public RecordingSink {
   public:
    void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                 const ParsedFrame& parsed) override {
      headers.push_back(hdr);
      RecordingSink::OnFrame(hdr, frame, parsed);
    }
    std::vector<vu::VirtioNetHdr> headers;
  };
  GsoWorld() : d({}, &guest.ring.rx(), &identity) {
    d.Route(L4Kind::kTcp, &tcp);
    d.Route(L4Kind::kUdp, &udp);
  }
  // The frame in iovec entries of `piece` bytes, as many descriptors would.
  void Feed(GsoFrame f, size_t piece = 1000) {
    std::vector<iovec> iov = Split(f.bytes, piece);
    d.OnFrame(f.hdr, iov);
    d.OnBatchEnd();
  }
  Guest guest;
  GuestIdentity identity{MacAddr{}, InetAddr(), InetAddr()};
  Dispatcher d;
  HeaderSink tcp;
  HeaderSink udp;
};

TEST(DispatchOffloadTest, SegmentationRequestsReachTheirTranslatorWhole) {
  GsoWorld w;
  w.d.SetNetConfig(OffloadConfig());
  // 64 KiB TCP over IPv4 and IPv6 in 66 iovec entries, a UDP datagram to
  // segment.
  w.Feed(MakeGso(IPPROTO_TCP, false, 65535 - 40, 1448));
  w.Feed(MakeGso(IPPROTO_TCP, true, 65535 - 20, 1428));
  w.Feed(MakeGso(IPPROTO_UDP, false, 14000, 1400), 7);
  ASSERT_EQ(w.tcp.frames.size(), 2u);
  EXPECT_EQ(w.tcp.frames[0], 14u + 65535);
  EXPECT_EQ(w.tcp.frames[1], 14u + 40 + 65535);
  EXPECT_EQ(w.tcp.parsed_[0].payload_len, 65535u - 40);
  EXPECT_EQ(w.tcp.headers[0].gso_type, virtio::kVirtioNetHdrGsoTcpv4);
  EXPECT_EQ(w.tcp.headers[0].gso_size, 1448);
  EXPECT_EQ(w.tcp.headers[1].gso_type, virtio::kVirtioNetHdrGsoTcpv6);
  ASSERT_EQ(w.udp.frames.size(), 1u);
  EXPECT_EQ(w.udp.headers[0].gso_type, virtio::kVirtioNetHdrGsoUdpL4);
  EXPECT_EQ(w.udp.parsed_[0].payload_len, 14000u);
  EXPECT_EQ(w.d.stats().offload_refused, 0u);
  EXPECT_EQ(w.d.stats().routed, 3u);
}

// One hostile header per problem: each refused, counted under its problem,
// never routed, and the guest not learned from it.
TEST(DispatchOffloadTest, HostileHeadersAreRefusedAndCounted) {
  struct Bad {
    OffloadProblem problem;
    GsoFrame frame;
    bool negotiated = true;
  };
  std::vector<Bad> bad;
  auto tcp4 = [] { return MakeGso(IPPROTO_TCP, false, 20000, 1448); };
  GsoFrame f = tcp4();
  bad.push_back({OffloadProblem::kChecksumNotNegotiated, f, false});
  f = tcp4();
  f.hdr.csum_start = 0xfff0;
  bad.push_back({OffloadProblem::kChecksumOutOfRange, f});
  f = tcp4();
  f.hdr.gso_type = 2;
  bad.push_back({OffloadProblem::kGsoUnknownType, f});
  f = MakeGso(IPPROTO_UDP, true, 20000, 1000);
  bad.push_back({OffloadProblem::kGsoNotNegotiated, f});  // HOST_USO off below.
  f = MakeGso(IPPROTO_TCP, true, 20000, 1448);
  f.hdr.gso_type = virtio::kVirtioNetHdrGsoTcpv4;
  bad.push_back({OffloadProblem::kGsoProtocolMismatch, f});
  f = tcp4();
  f.hdr.flags = 0;
  bad.push_back({OffloadProblem::kGsoWithoutChecksum, f});
  f = tcp4();
  f.hdr.csum_offset = 6;
  bad.push_back({OffloadProblem::kGsoChecksumField, f});
  f = tcp4();
  f.hdr.gso_size = 0;
  bad.push_back({OffloadProblem::kGsoZeroSize, f});
  f = tcp4();
  f.hdr.gso_size = 20001;
  bad.push_back({OffloadProblem::kGsoSizePastPayload, f});
  f = tcp4();
  f.hdr.hdr_len = 30000;
  bad.push_back({OffloadProblem::kHdrLenPastFrame, f});
  f = tcp4();
  f.bytes.resize(f.bytes.size() + 64);  // Descriptors longer than the IP packet.
  bad.push_back({OffloadProblem::kGsoLengthMismatch, f});

  for (const Bad& b : bad) {
    GsoWorld w;
    vu::NetConfig config = b.negotiated ? OffloadConfig() : vu::NetConfig();
    config.host_uso = false;
    w.d.SetNetConfig(config);
    w.Feed(b.frame);
    const size_t i = static_cast<size_t>(b.problem);
    EXPECT_EQ(w.d.stats().offload_refused, 1u) << OffloadProblemName(b.problem);
    EXPECT_EQ(w.d.stats().offload_refused_by[i], 1u) << OffloadProblemName(b.problem);
    EXPECT_EQ(w.d.stats().routed, 0u) << OffloadProblemName(b.problem);
    EXPECT_TRUE(w.tcp.frames.empty() && w.udp.frames.empty());
    EXPECT_EQ(w.identity.mac(), MacAddr{}) << OffloadProblemName(b.problem);
  }
}

TEST(DispatchOffloadTest, WithoutTheFeaturesOnlyPlainFramesPass) {
  GsoWorld w;  // No SetNetConfig: nothing negotiated.
  GsoFrame f = MakeGso(IPPROTO_TCP, false, 1000, 0);
  f.hdr = vu::VirtioNetHdr{};
  w.Feed(f);
  EXPECT_EQ(w.tcp.frames.size(), 1u);
  w.Feed(MakeGso(IPPROTO_TCP, false, 5000, 1448));
  EXPECT_EQ(w.tcp.frames.size(), 1u);
  EXPECT_EQ(w.d.stats().offload_refused, 1u);
  // Checksum offload alone: a partial checksum passes, segmentation not.
  w.d.SetNetConfig(CsumConfig());
  f = MakeGso(IPPROTO_UDP, false, 1000, 0);
  w.Feed(f);
  EXPECT_EQ(w.udp.frames.size(), 1u);
  w.Feed(MakeGso(IPPROTO_UDP, false, 5000, 1000));
  EXPECT_EQ(w.udp.frames.size(), 1u);
  EXPECT_EQ(w.d.stats().offload_refused, 2u);
  EXPECT_EQ(w.d.stats().offload_refused_by[static_cast<size_t>(OffloadProblem::kGsoNotNegotiated)],
            1u);
}

}  // namespace
}  // namespace vunet::net
