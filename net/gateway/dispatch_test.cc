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

class RecordingSender : public ReplySender {
 public:
  absl::Status Send(absl::Span<const uint8_t> frame) override {
    if (fail) return absl::UnavailableError("no room");
    frames.emplace_back(frame.begin(), frame.end());
    return absl::OkStatus();
  }
  bool fail = false;
  std::vector<std::vector<uint8_t>> frames;
};

class RecordingNext : public ParsedFrameSink {
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

TEST(DispatchTest, AnswersArpDhcpAndNdp) {
  Handlers h;
  RecordingSender sender;
  RecordingNext next;
  Dispatcher d(h.All(), &sender, &next);
  Feed(d, ArpRequest());
  Feed(d, DhcpDiscover());
  Feed(d, Icmp6(133, {}));
  Feed(d, NeighborSolicitation());
  ASSERT_EQ(sender.frames.size(), 4u);
  EXPECT_EQ(EtherType(sender.frames[0]), kEtherTypeArp);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(sender.frames[1], &p).ok());
  EXPECT_EQ(p.dst_port, kDhcpClientPort);
  ASSERT_TRUE(testing::Parse(sender.frames[2], &p).ok());
  EXPECT_EQ(p.icmp.type, 134);
  ASSERT_TRUE(testing::Parse(sender.frames[3], &p).ok());
  EXPECT_EQ(p.icmp.type, 136);
  EXPECT_EQ(d.stats().frames, 4u);
  EXPECT_EQ(d.stats().replies, 4u);
  EXPECT_TRUE(next.frames.empty());
}

TEST(DispatchTest, PassesTheRestOnParsed) {
  Handlers h;
  RecordingSender sender;
  RecordingNext next;
  Dispatcher d(h.All(), &sender, &next);
  const std::vector<uint8_t> syn = TcpSyn();
  Feed(d, syn);
  Feed(d, Icmp6(128, {0, 1, 0, 1}));  // Echo request: not NDP.
  ASSERT_EQ(next.frames.size(), 2u);
  EXPECT_EQ(next.frames[0], syn.size());
  EXPECT_EQ(next.parsed_[0].l4, L4Kind::kTcp);
  EXPECT_EQ(next.parsed_[0].dst_port, 443);
  EXPECT_EQ(d.stats().passed_on, 2u);
  d.OnBatchEnd();
  EXPECT_EQ(next.batches, 1);
  EXPECT_TRUE(sender.frames.empty());
}

TEST(DispatchTest, DropsMalformedAndCountsTheUnwanted) {
  Handlers h;
  RecordingSender sender;
  Dispatcher d({}, &sender);  // No handlers, no next.
  Feed(d, {});
  std::vector<uint8_t> truncated = TcpSyn();
  truncated.resize(40);
  Feed(d, truncated);
  Feed(d, ArpRequest());
  Feed(d, TcpSyn());
  Feed(d, DhcpDiscover());
  d.OnBatchEnd();
  EXPECT_EQ(d.stats().frames, 5u);
  EXPECT_EQ(d.stats().malformed, 2u);
  EXPECT_EQ(d.stats().ignored, 3u);
  EXPECT_TRUE(sender.frames.empty());
}

TEST(DispatchTest, ReplyDroppedWhenTheGuestHasNoRoom) {
  Handlers h;
  RecordingSender sender;
  sender.fail = true;
  Dispatcher d(h.All(), &sender);
  Feed(d, ArpRequest());
  EXPECT_EQ(d.stats().send_failures, 1u);
  EXPECT_EQ(d.stats().replies, 0u);
}

TEST(DispatchTest, PartialChecksumFlagReachesNdp) {
  Handlers h;
  RecordingSender sender;
  Dispatcher d(h.All(), &sender);
  std::vector<uint8_t> ns = NeighborSolicitation();
  ns[14 + 40 + 2] ^= 0x55;  // Checksum field, as a guest with CSUM offload might leave it.
  Feed(d, ns);
  EXPECT_EQ(sender.frames.size(), 0u);
  Feed(d, ns, vu::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(sender.frames.size(), 1u);
}

TEST(DispatchTest, Dhcpv6GoesToTheDhcpv6Server) {
  Handlers h;
  RecordingSender sender;
  RecordingNext next;
  Dispatcher d(h.All(), &sender, &next);
  Feed(d, Dhcpv6Solicit());
  ASSERT_EQ(sender.frames.size(), 1u);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(sender.frames[0], &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kIpv6);
  EXPECT_EQ(p.src_port, kDhcpv6ServerPort);
  EXPECT_EQ(p.dst_port, kDhcpv6ClientPort);
  EXPECT_EQ(sender.frames[0][p.payload_offset], 7);  // Reply, with Rapid Commit.
  EXPECT_TRUE(next.frames.empty());

  // A malformed one is taken too (and dropped), not passed on.
  std::vector<uint8_t> bad = Dhcpv6Solicit();
  bad[14 + 40 + 8 + 6] = 0xff;  // Client ID length past the message.
  Feed(d, bad);
  EXPECT_EQ(sender.frames.size(), 1u);
  EXPECT_TRUE(next.frames.empty());
  EXPECT_EQ(d.stats().replies, 1u);
}

TEST(DispatchTest, Dhcpv6WithoutAServerFallsThrough) {
  Handlers h;
  RecordingSender sender;
  RecordingNext next;
  Dispatcher::Handlers handlers = h.All();
  handlers.dhcpv6 = nullptr;
  Dispatcher d(handlers, &sender, &next);
  Feed(d, Dhcpv6Solicit());
  EXPECT_TRUE(sender.frames.empty());
  ASSERT_EQ(next.frames.size(), 1u);
  EXPECT_EQ(next.parsed_[0].dst_port, kDhcpv6ServerPort);
  Dispatcher alone({}, &sender);
  Feed(alone, Dhcpv6Solicit());
  EXPECT_EQ(alone.stats().ignored, 1u);
}

TEST(DispatchTest, PartialChecksumFlagReachesDhcpv6) {
  Handlers h;
  RecordingSender sender;
  Dispatcher d(h.All(), &sender);
  std::vector<uint8_t> solicit = Dhcpv6Solicit();
  solicit[14 + 40 + 6] ^= 0x55;  // UDP checksum field.
  Feed(d, solicit);
  EXPECT_EQ(sender.frames.size(), 0u);
  Feed(d, solicit, vu::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(sender.frames.size(), 1u);
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
  DriverQueue rx_driver(mem.get(), 64);
  DriverQueue tx_driver(mem.get(), 64);
  virtio::Virtqueue rx, tx;
  ASSERT_TRUE(rx.Start(&memory, rx_driver.DeviceConfig(memory).value()).ok());
  ASSERT_TRUE(tx.Start(&memory, tx_driver.DeviceConfig(memory).value()).ok());

  const uint64_t rx_buf = mem->Alloc(1526).value();
  ASSERT_TRUE(rx_driver.AddChain({{rx_buf, 1526, true}}).has_value());
  rx_driver.Publish();

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
  vu::NetConfig config;
  config.guest_csum = guest_csum;
  VirtqueueReplySender sender(&config, &rx);
  Dispatcher d(h.All(), &sender);
  vu::TxHandler handler;
  EXPECT_EQ(handler.Process(config, &tx, &d), 1u);
  EXPECT_EQ(d.stats().replies, 1u);

  std::optional<virtio::VirtqUsedElem> used = rx_driver.PopUsed();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->len, 12u + vu::kEthMinFrame);
  std::vector<uint8_t> reply(kArpReplyLen);
  mem->Read(rx_buf + 12, reply.data(), reply.size());
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(reply, &p).ok());
  EXPECT_EQ(p.arp.op, 2);
  EXPECT_EQ(p.arp.sha, kGatewayMac);
  EXPECT_EQ(p.dst_mac, kGuestMac);
  // With GUEST_CSUM the guest is told our checksums need no checking.
  vu::VirtioNetHdr hdr;
  mem->Read(rx_buf, &hdr, sizeof(hdr));
  EXPECT_EQ(hdr.flags, guest_csum ? vu::kVirtioNetHdrFDataValid : 0);
}

INSTANTIATE_TEST_SUITE_P(GuestCsum, DispatchRingTest, ::testing::Bool());

}  // namespace
}  // namespace vunet::net
