#include "net/udp/udp.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/config/config.h"
#include "net/flow/flow.h"
#include "net/forward/forward.h"
#include "net/migrate/state_stream.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/packet/inet.h"
#include "net/testing/test_frames.h"
#include "net/testing/world.h"
#include "net/udp/udp_vu.h"
#include "vu/common.h"
#include "vu/testing/guest_rx.h"

namespace vunet::net {
namespace {

using testing::Build;
using testing::Ip4;
using testing::Ip6;
using testing::ManualClock;
using testing::Split;
using testing::TranslatorWorld;
using vu::testing::GuestRxRing;

bool HaveIpv6Loopback() {
  UniqueFd fd(socket(AF_INET6, SOCK_DGRAM, 0));
  if (!fd.valid()) return false;
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  return bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
}

// A UDP socket on the host's loopback, port chosen by the kernel.
struct HostSocket {
  UniqueFd fd;
  uint16_t port = 0;
  int family = AF_INET;

  explicit HostSocket(int fam = AF_INET) : family(fam) {
    fd.reset(socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    const int big = 4 << 20;
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    sockaddr_storage a{};
    socklen_t len;
    if (family == AF_INET) {
      auto* sin = reinterpret_cast<sockaddr_in*>(&a);
      sin->sin_family = AF_INET;
      sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof(*sin);
    } else {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_addr = in6addr_loopback;
      len = sizeof(*sin6);
    }
    EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&a), len), 0) << strerror(errno);
    EXPECT_EQ(getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&a)->sin_port
                                   : reinterpret_cast<sockaddr_in6*>(&a)->sin6_port);
  }

  // One datagram, or nullopt after `timeout_ms`.
  std::optional<std::vector<uint8_t>> Receive(sockaddr_storage* from = nullptr,
                                              int timeout_ms = 2000) {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return std::nullopt;
    std::vector<uint8_t> buf(70000);
    sockaddr_storage f{};
    socklen_t len = sizeof(f);
    const ssize_t n =
        recvfrom(fd.get(), buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&f), &len);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    if (from != nullptr) *from = f;
    return buf;
  }

  void SendTo(const sockaddr_storage& to, const std::vector<uint8_t>& data) {
    const socklen_t len = to.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
    ASSERT_EQ(
        sendto(fd.get(), data.data(), data.size(), 0, reinterpret_cast<const sockaddr*>(&to), len),
        static_cast<ssize_t>(data.size()))
        << strerror(errno);
  }
};

uint16_t PortOf(const sockaddr_storage& a) {
  return ntohs(a.ss_family == AF_INET ? reinterpret_cast<const sockaddr_in&>(a).sin_port
                                      : reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
}

sockaddr_storage Loopback(int family, uint16_t port) {
  sockaddr_storage a{};
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&a);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons(port);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_loopback;
    sin6->sin6_port = htons(port);
  }
  return a;
}

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  return v;
}

// A datagram as the guest sees it.
struct GuestDatagram {
  ParsedFrame parsed;
  std::vector<uint8_t> payload;
  bool checksum_ok = false;
};

GuestDatagram ParseGuest(std::vector<uint8_t>& frame, bool expect_checksum) {
  GuestDatagram d;
  const std::vector<iovec> iov = Split(frame);
  EXPECT_TRUE(ParseFrame(iov, &d.parsed).ok());
  if (d.parsed.l4 != L4Kind::kUdp) return d;
  d.payload.assign(frame.begin() + d.parsed.payload_offset,
                   frame.begin() + d.parsed.payload_offset + d.parsed.payload_len);
  const uint16_t field = testing::GetBe16(frame, d.parsed.l4_offset + 6);
  if (!expect_checksum) {
    // Left to the guest (data valid): zero, but never over IPv6.
    d.checksum_ok = field == (d.parsed.l3 == L3Kind::kIpv4 ? 0 : 0xffff);
  } else if (d.parsed.l3 == L3Kind::kIpv4) {
    d.checksum_ok = L4ChecksumV4(d.parsed.ip.src4, d.parsed.ip.dst4, IPPROTO_UDP, iov,
                                 d.parsed.l4_offset, d.parsed.l4_len) == 0;
  } else {
    d.checksum_ok = L4ChecksumV6(d.parsed.ip.src6, d.parsed.ip.dst6, IPPROTO_UDP, iov,
                                 d.parsed.l4_offset, d.parsed.l4_len) == 0;
  }
  return d;
}

// The guest's receive buffers: what it posts each time.
struct Buffers {
  bool mergeable = true;
  bool guest_csum = false;
  uint32_t buffer_size = 1526;
  uint32_t descriptors = 1;  // Per buffer, splitting it evenly.
  uint32_t ring = 256;
};

class UdpTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_now_ = ManualClock::now_ns; }
  void TearDown() override {
    if (udp_ != nullptr) udp_->Shutdown();
    ManualClock::now_ns = saved_now_;
  }

  // A world and a translator in it. `rules`, if set, replaces the
  // forwarding rules the guest's configuration gives.
  void Start(Buffers b = {}, const UdpTranslatorOptions& options = {}, size_t capacity = 64,
             std::optional<ForwardRules> rules = std::nullopt,
             GuestConfig guest = testing::TestGuest()) {
    if (udp_ != nullptr) udp_->Shutdown();
    udp_.reset();
    buffers_ = b;
    TranslatorWorld::Options o;
    o.guest = std::move(guest);
    o.rx.queue_size = b.ring;
    o.rx.mergeable = b.mergeable;
    o.rx.guest_csum = b.guest_csum;
    o.rx.memory = 96 << 20;
    o.flows = capacity;
    o.clock = &ManualClock::Now;
    world_ = std::make_unique<TranslatorWorld>(o);
    if (rules.has_value()) {
      world_->forward = std::make_unique<Forwarding>(*rules, world_->guest.guest_mac);
    }
    guest_ = world_->guest;
    absl::StatusOr<std::unique_ptr<UdpTranslator>> udp =
        UdpTranslator::Create(world_->Env(), options);
    ASSERT_TRUE(udp.ok()) << udp.status();
    udp_ = std::move(*udp);
  }

  // The rules the test guest's configuration gives, with DNS to the gateway
  // mapped to `resolver` (a port of ours: the real resolvers' port 53 is not).
  ForwardRules RulesWithDns(const Endpoint& guest_dns, const Endpoint& resolver) {
    GuestConfig g = testing::TestGuest();
    ForwardRules r = RulesFromConfig(g, {});
    r.dns = {{guest_dns, resolver}};
    return r;
  }

  // Posts up to `n` receive buffers (as many as the ring takes by default).
  void Post(size_t n = SIZE_MAX) {
    GuestRxRing& ring = world_->ring;
    if (buffers_.descriptors == 1) {
      ring.Post(static_cast<int>(std::min<size_t>(n, buffers_.ring)), buffers_.buffer_size);
      return;
    }
    const uint32_t piece = buffers_.buffer_size / buffers_.descriptors;
    std::vector<uint32_t> sizes(buffers_.descriptors, piece);
    sizes.back() = buffers_.buffer_size - piece * (buffers_.descriptors - 1);
    while (n-- > 0 && ring.driver().free_descriptors() >= buffers_.descriptors) {
      if (!ring.PostChain(sizes)) break;
    }
  }

  FrameSpec GuestSpec(in_addr dst, uint16_t sport, uint16_t dport) {
    FrameSpec s;
    s.src_mac = guest_.guest_mac;
    s.dst_mac = guest_.gateway_mac;
    s.src4 = guest_.addr4;
    s.dst4 = dst;
    s.src_port = sport;
    s.dst_port = dport;
    return s;
  }
  FrameSpec GuestSpec6(const in6_addr& dst, uint16_t sport, uint16_t dport) {
    FrameSpec s;
    s.src_mac = guest_.guest_mac;
    s.dst_mac = guest_.gateway_mac;
    s.ipv6 = true;
    s.src6 = guest_.addr6;
    s.dst6 = dst;
    s.src_port = sport;
    s.dst_port = dport;
    return s;
  }

  // Feeds frames as one transmit batch, each cut into `piece`-byte iovecs,
  // as the dispatcher does: each frame shown to the guest's identity first.
  void SendBatch(const std::vector<std::pair<FrameSpec, std::vector<uint8_t>>>& datagrams,
                 size_t piece = 0) {
    std::vector<std::vector<uint8_t>> frames;
    frames.reserve(datagrams.size());
    for (const auto& [spec, payload] : datagrams) frames.push_back(Build(spec, payload));
    std::vector<std::vector<iovec>> iovs;
    iovs.reserve(frames.size());
    for (auto& f : frames) iovs.push_back(Split(f, piece));
    for (auto& iov : iovs) {
      ParsedFrame parsed;
      ASSERT_TRUE(ParseFrame(iov, &parsed).ok());
      world_->forward->guest().Learn(parsed);
      udp_->OnFrame(vu::VirtioNetHdr{}, iov, parsed);
    }
    udp_->OnBatchEnd();
  }
  void Send(const FrameSpec& spec, const std::vector<uint8_t>& payload, size_t piece = 0) {
    SendBatch({{spec, payload}}, piece);
  }

  // Polls events until `n` frames reached the guest or `timeout_ms` passed.
  std::vector<GuestRxRing::Frame> ReceiveFrames(size_t n, int timeout_ms = 2000) {
    std::vector<GuestRxRing::Frame> got;
    for (int waited = 0; got.size() < n && waited < timeout_ms; waited += 10) {
      world_->watcher.Poll(udp_.get(), 10);
      for (GuestRxRing::Frame& f : world_->ring.Take()) got.push_back(std::move(f));
    }
    return got;
  }

  // Receive buffers a frame of `payload` UDP bytes over IPv4 takes.
  size_t BuffersFor(size_t payload) const {
    const size_t need = std::max<size_t>(
        sizeof(vu::VirtioNetHdr) + kEthHeaderLen + kIpv4MinHeaderLen + kUdpHeaderLen + payload,
        sizeof(vu::VirtioNetHdr) + vu::kEthMinFrame);
    return (need + buffers_.buffer_size - 1) / buffers_.buffer_size;
  }

  void Expire(int64_t now) {
    world_->flows->Expire(now, [&](FlowId f) { udp_->OnTimer(f, now); });
  }

  int64_t saved_now_ = 0;
  Buffers buffers_;
  GuestConfig guest_;
  std::unique_ptr<TranslatorWorld> world_;
  std::unique_ptr<UdpTranslator> udp_;
};

TEST_F(UdpTest, GatewayReachesHostLoopbackAndRepliesComeBack) {
  Start();
  Post();
  HostSocket host;
  const std::vector<uint8_t> query = Pattern(100, 1);
  Send(GuestSpec(guest_.gateway4, 40000, host.port), query);
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = host.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, query);
  EXPECT_EQ(reinterpret_cast<sockaddr_in&>(from).sin_addr.s_addr, htonl(INADDR_LOOPBACK));
  EXPECT_EQ(udp_->flow_count(), 1u);

  const std::vector<uint8_t> answer = Pattern(333, 9);
  host.SendTo(from, answer);
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].bytes, true);
  EXPECT_EQ(d.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(d.parsed.ip.dst4.s_addr, guest_.addr4.s_addr);
  EXPECT_EQ(d.parsed.src_port, host.port);
  EXPECT_EQ(d.parsed.dst_port, 40000);
  EXPECT_TRUE(d.parsed.dst_mac == guest_.guest_mac);
  EXPECT_TRUE(d.parsed.src_mac == guest_.gateway_mac);
  EXPECT_EQ(d.payload, answer);
  EXPECT_TRUE(d.checksum_ok);
  EXPECT_EQ(frames[0].hdr.flags, 0);
  EXPECT_EQ(world_->ring.rx().stats().frames, 1u);
  EXPECT_EQ(udp_->stats().tx_datagrams, 1u);
  EXPECT_EQ(udp_->stats().rx_datagrams, 1u);
}

// Nothing reaches the guest before the owner's loop flushes the RxQueue.
TEST_F(UdpTest, FramesWaitForTheFlush) {
  Start();
  Post();
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 40001, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(10, 1));
  for (int i = 0; i < 200 && world_->ring.rx().pending_frames() == 0; ++i) {
    world_->watcher.Poll(udp_.get(), 10);
  }
  ASSERT_EQ(world_->ring.rx().pending_frames(), 1u);
  EXPECT_FALSE(world_->ring.driver().PopUsed().has_value());
  std::vector<GuestRxRing::Frame> frames = world_->ring.Take();
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(ParseGuest(frames[0].bytes, true).payload, Pattern(10, 1));
}

struct SizeCase {
  bool mergeable;
  bool guest_csum;
  uint32_t buffer_size;
  uint32_t descriptors;
  bool batch_peek;
};

class UdpSizeTest : public UdpTest, public ::testing::WithParamInterface<SizeCase> {};

TEST_P(UdpSizeTest, EverySizeBothWaysByteExact) {
  const SizeCase c = GetParam();
  UdpTranslatorOptions o;
  o.batch_peek = c.batch_peek;
  Start({.mergeable = c.mergeable,
         .guest_csum = c.guest_csum,
         .buffer_size = c.buffer_size,
         .descriptors = c.descriptors},
        o);
  Post();
  HostSocket host;
  const size_t kSizes[] = {0, 1, 1472, 9000, 65507};
  sockaddr_storage from{};
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    const std::vector<uint8_t> payload = Pattern(kSizes[i], static_cast<uint8_t>(i));
    // Scattered into 700-byte pieces, as a guest's buffers may be.
    Send(GuestSpec(guest_.gateway4, 41000, host.port), payload, 700);
    std::optional<std::vector<uint8_t>> got = host.Receive(&from);
    ASSERT_TRUE(got.has_value()) << kSizes[i];
    EXPECT_EQ(*got, payload) << kSizes[i];
  }
  // And back, all queued at once.
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    host.SendTo(from, Pattern(kSizes[i], static_cast<uint8_t>(100 + i)));
  }
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(std::size(kSizes));
  ASSERT_EQ(frames.size(), std::size(kSizes));
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    GuestDatagram d = ParseGuest(frames[i].bytes, !c.guest_csum);
    EXPECT_EQ(d.payload, Pattern(kSizes[i], static_cast<uint8_t>(100 + i))) << kSizes[i];
    EXPECT_TRUE(d.checksum_ok) << kSizes[i];
    EXPECT_EQ(frames[i].hdr.flags, c.guest_csum ? vu::kVirtioNetHdrFDataValid : 0);
    // With mergeable buffers a datagram spans exactly the buffers it needs.
    EXPECT_EQ(frames[i].buffers, c.mergeable ? BuffersFor(kSizes[i]) : 1u) << kSizes[i];
  }
  EXPECT_EQ(world_->ring.returned_empty(), 0);
  EXPECT_EQ(udp_->rx_stats().mismatches, 0u);
}

INSTANTIATE_TEST_SUITE_P(Buffers, UdpSizeTest,
                         ::testing::Values(SizeCase{true, false, 1526, 1, true},
                                           SizeCase{true, true, 4096, 1, true},
                                           SizeCase{true, false, 4096, 2, false},
                                           // Without mergeable buffers: 64 KiB buffers, one
                                           // descriptor or sixteen.
                                           SizeCase{false, false, 65600, 1, true},
                                           SizeCase{false, true, 65600, 16, true},
                                           SizeCase{false, false, 65600, 16, false}));

TEST_F(UdpTest, WithoutMergeableBuffersTooBigIsDroppedAndTheRestFlows) {
  Start({.mergeable = false, .buffer_size = 1526});
  Post();
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 41001, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(9000, 1));
  host.SendTo(from, Pattern(1472, 2));
  host.SendTo(from, Pattern(1473, 3));  // 1526 - 12 - 42 = 1472 fits; 1473 does not.
  host.SendTo(from, Pattern(10, 4));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(2);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(ParseGuest(frames[0].bytes, true).payload, Pattern(1472, 2));
  EXPECT_EQ(ParseGuest(frames[1].bytes, true).payload, Pattern(10, 4));
  EXPECT_EQ(udp_->rx_stats().too_big, 2u);
  EXPECT_EQ(world_->ring.returned_empty(), 0);
}

TEST_F(UdpTest, DatagramLargerThanTheWholeRingIsDroppedAndTheRestFlows) {
  // Sixteen 1526-byte buffers hold about 24 KB: a 30000-byte datagram can
  // never fit, however long it waits, and must not hold up the socket.
  Start({.mergeable = true, .buffer_size = 1526, .ring = 16});
  Post();
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 41003, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(30000, 1));
  host.SendTo(from, Pattern(9000, 2));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(ParseGuest(frames[0].bytes, true).payload, Pattern(9000, 2));
  EXPECT_EQ(udp_->rx_stats().too_big, 1u);
  EXPECT_EQ(world_->ring.returned_empty(), 0);
}

TEST_F(UdpTest, ManyQueuedDatagramsInOrderAcrossWakeups) {
  for (bool peek : {true, false}) {
    SCOPED_TRACE(peek);
    UdpTranslatorOptions o;
    o.batch_peek = peek;
    Start({.mergeable = true, .buffer_size = 1526}, o);
    Post();
    HostSocket host;
    Send(GuestSpec(guest_.gateway4, 41002, host.port), {1});
    sockaddr_storage from;
    ASSERT_TRUE(host.Receive(&from).has_value());
    constexpr int kCount = 100;
    // Up to three buffers each, with empty ones among them.
    auto SizeOf = [](int i) -> size_t { return i % 7 == 3 ? 0 : static_cast<size_t>(i) * 37; };
    for (int i = 0; i < kCount; ++i) {
      host.SendTo(from, Pattern(SizeOf(i), static_cast<uint8_t>(i)));
    }
    std::vector<GuestRxRing::Frame> frames;
    for (int round = 0; round < 200 && frames.size() < kCount; ++round) {
      for (GuestRxRing::Frame& f : ReceiveFrames(kCount - frames.size(), 20)) {
        frames.push_back(std::move(f));
      }
      Post();
      udp_->OnRxAvailable();
    }
    ASSERT_EQ(frames.size(), static_cast<size_t>(kCount));
    for (int i = 0; i < kCount; ++i) {
      EXPECT_EQ(ParseGuest(frames[i].bytes, true).payload,
                Pattern(SizeOf(i), static_cast<uint8_t>(i)))
          << i;
    }
    EXPECT_EQ(world_->ring.returned_empty(), 0);
    EXPECT_EQ(udp_->rx_stats().mismatches, 0u);
    udp_->Shutdown();
  }
}

// The guest posts buffers a few at a time: datagrams wait in the socket
// (unwatched) and come when buffers do, in order, none lost, including
// empty ones that were peeked and had to wait.
TEST_F(UdpTest, WaitsForReceiveBuffers) {
  for (bool peek : {true, false}) {
    SCOPED_TRACE(peek);
    UdpTranslatorOptions o;
    o.batch_peek = peek;
    Start({.mergeable = true, .buffer_size = 1526}, o);
    Post(1);
    HostSocket host;
    Send(GuestSpec(guest_.gateway4, 41003, host.port), {1});
    sockaddr_storage from;
    ASSERT_TRUE(host.Receive(&from).has_value());
    constexpr int kCount = 40;
    auto size_of = [](int i) -> size_t { return i % 3 == 0 ? 0 : i % 5 == 0 ? 3000 : 100 + i; };
    for (int i = 0; i < kCount; ++i) {
      host.SendTo(from, Pattern(size_of(i), static_cast<uint8_t>(i)));
    }
    std::vector<GuestRxRing::Frame> frames;
    for (int round = 0; round < 400 && frames.size() < kCount; ++round) {
      world_->watcher.Poll(udp_.get(), 5);
      for (GuestRxRing::Frame& f : world_->ring.Take()) frames.push_back(std::move(f));
      Post(1 + round % 3);
      udp_->OnRxAvailable();
    }
    ASSERT_EQ(frames.size(), static_cast<size_t>(kCount));
    for (int i = 0; i < kCount; ++i) {
      EXPECT_EQ(ParseGuest(frames[i].bytes, true).payload,
                Pattern(size_of(i), static_cast<uint8_t>(i)))
          << i;
    }
    EXPECT_GT(udp_->rx_stats().no_room, 0u);
    EXPECT_EQ(world_->ring.returned_empty(), 0);
    EXPECT_EQ(udp_->rx_stats().mismatches, 0u);
    udp_->Shutdown();
  }
}

TEST_F(UdpTest, NoQueueLeavesDataInTheSocket) {
  Start();
  world_->ring.StopQueue();
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 41004, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(50, 5));
  world_->watcher.Poll(udp_.get(), 100);
  EXPECT_EQ(world_->watcher.Poll(udp_.get(), 50), 0);  // Unwatched for input meanwhile.
  world_->ring.StartQueue();
  Post();
  udp_->OnRxAvailable();
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(ParseGuest(frames[0].bytes, true).payload, Pattern(50, 5));
}

TEST_F(UdpTest, ScatteredGuestFramesAndInterleavedFlowsKeepOrder) {
  Start();
  HostSocket a, b;
  std::vector<std::pair<FrameSpec, std::vector<uint8_t>>> batch;
  batch.reserve(20);
  for (int i = 0; i < 20; ++i) {
    batch.push_back({GuestSpec(guest_.gateway4, 42000, i % 2 ? a.port : b.port),
                     Pattern(200 + i, static_cast<uint8_t>(i))});
  }
  SendBatch(batch, 1);  // One byte per iovec.
  for (int i = 0; i < 20; ++i) {
    HostSocket& s = i % 2 ? a : b;
    std::optional<std::vector<uint8_t>> got = s.Receive();
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(*got, Pattern(200 + i, static_cast<uint8_t>(i)));
  }
  EXPECT_EQ(udp_->flow_count(), 2u);
}

// ICMP errors reach the guest through the receive queue, as every frame does.
TEST_F(UdpTest, PortUnreachableReachesTheGuest) {
  Start();
  Post();
  uint16_t closed;
  {
    HostSocket s;
    closed = s.port;
  }
  const std::vector<uint8_t> payload = Pattern(20, 3);
  Send(GuestSpec(guest_.gateway4, 43000, closed), payload);
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  std::vector<uint8_t>& f = frames[0].bytes;
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(f, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmp);
  EXPECT_EQ(p.icmp.type, 3);
  EXPECT_EQ(p.icmp.code, 3);
  EXPECT_EQ(p.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(p.ip.dst4.s_addr, guest_.addr4.s_addr);
  EXPECT_TRUE(p.dst_mac == guest_.guest_mac);
  EXPECT_EQ(InternetChecksum(f.data() + p.l4_offset, p.l4_len), 0);
  // The quote: the guest's IPv4 and UDP headers, then its payload.
  const size_t q = p.l4_offset + 8;
  ASSERT_GE(f.size(), q + 28 + payload.size());
  EXPECT_EQ(f[q], 0x45);
  EXPECT_EQ(f[q + 9], IPPROTO_UDP);
  EXPECT_EQ(std::memcmp(&f[q + 12], &guest_.addr4, 4), 0);
  EXPECT_EQ(std::memcmp(&f[q + 16], &guest_.gateway4, 4), 0);
  EXPECT_EQ(InternetChecksum(&f[q], 20), 0);
  EXPECT_EQ(testing::GetBe16(f, q + 20), 43000);
  EXPECT_EQ(testing::GetBe16(f, q + 22), closed);
  EXPECT_EQ(std::vector<uint8_t>(f.begin() + q + 28, f.begin() + q + 28 + payload.size()), payload);
  EXPECT_EQ(udp_->stats().icmp_sent, 1u);
  EXPECT_EQ(world_->ring.rx().stats().sends, 1u);
}

// Without receive buffers an ICMP error is dropped (as on a wire) and
// counted; it does not wait.
TEST_F(UdpTest, PortUnreachableWithoutRoomIsDropped) {
  Start();
  uint16_t closed;
  {
    HostSocket s;
    closed = s.port;
  }
  Send(GuestSpec(guest_.gateway4, 43002, closed), Pattern(20, 3));
  for (int i = 0; i < 100 && udp_->stats().icmp_ignored == 0; ++i) {
    world_->watcher.Poll(udp_.get(), 10);
  }
  EXPECT_EQ(udp_->stats().icmp_ignored, 1u);
  EXPECT_EQ(udp_->stats().icmp_sent, 0u);
  Post();
  EXPECT_TRUE(world_->ring.Take().empty());
}

TEST_F(UdpTest, PortUnreachableOverIpv6) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  Start();
  Post();
  uint16_t closed;
  {
    HostSocket s(AF_INET6);
    closed = s.port;
  }
  Send(GuestSpec6(guest_.gateway6, 43001, closed), Pattern(10, 1));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(frames[0].bytes, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmpv6);
  EXPECT_EQ(p.icmp.type, 1);
  EXPECT_EQ(p.icmp.code, 4);
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.src6, &guest_.gateway6));
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.dst6, &guest_.addr6));
  const std::vector<iovec> iov = Split(frames[0].bytes);
  EXPECT_EQ(L4ChecksumV6(p.ip.src6, p.ip.dst6, IPPROTO_ICMPV6, iov, p.l4_offset, p.l4_len), 0);
}

TEST_F(UdpTest, Ipv6BothWays) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  Start();
  Post();
  HostSocket host(AF_INET6);
  Send(GuestSpec6(guest_.gateway6, 44000, host.port), Pattern(65527, 1));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = host.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, Pattern(65527, 1));
  host.SendTo(from, Pattern(65527, 2));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].bytes, true);
  EXPECT_EQ(d.payload, Pattern(65527, 2));
  EXPECT_TRUE(d.checksum_ok);
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&d.parsed.ip.src6, &guest_.gateway6));
}

TEST_F(UdpTest, Ipv6WithGuestCsumNeverCarriesAZeroChecksum) {
  // Linux drops UDP over IPv6 whose checksum field is zero, data valid or not.
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  Start({.guest_csum = true});
  Post();
  HostSocket host(AF_INET6);
  Send(GuestSpec6(guest_.gateway6, 44001, host.port), Pattern(10, 1));
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(1000, 2));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].hdr.flags, vu::kVirtioNetHdrFDataValid);
  GuestDatagram d = ParseGuest(frames[0].bytes, false);
  EXPECT_EQ(d.payload, Pattern(1000, 2));
  EXPECT_TRUE(d.checksum_ok);
}

TEST_F(UdpTest, DnsGoesToTheHostResolverAndExpiresSoonAfterTheAnswer) {
  HostSocket resolver;
  UdpTranslatorOptions o;
  Start({}, o, 64,
        RulesWithDns({InetAddr::V4(Ip4("10.0.2.2")), 53},
                     {InetAddr::V4(Ip4("127.0.0.1")), resolver.port}));
  Post();
  const std::vector<uint8_t> query = Pattern(40, 7);
  Send(GuestSpec(guest_.gateway4, 45000, 53), query);
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = resolver.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, query);
  resolver.SendTo(from, Pattern(120, 8));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].bytes, true);
  EXPECT_EQ(d.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(d.parsed.src_port, 53);
  EXPECT_EQ(d.parsed.dst_port, 45000);
  EXPECT_EQ(d.payload, Pattern(120, 8));

  const FlowId id =
      world_->flows->Find(FlowKey::V4(FlowProto::kUdp, guest_.addr4, 45000, guest_.gateway4, 53));
  ASSERT_TRUE(id.valid());
  const int64_t now = ManualClock::now_ns;
  EXPECT_EQ(world_->flows->Deadline(id), now + o.dns_timeout_ns);
  Expire(now + o.dns_timeout_ns - FlowTable::kTickNs);
  EXPECT_EQ(udp_->flow_count(), 1u);
  Expire(now + o.dns_timeout_ns);
  EXPECT_EQ(udp_->flow_count(), 0u);
  EXPECT_EQ(udp_->stats().flows_expired, 1u);
}

TEST_F(UdpTest, IdleFlowsExpireAndActivityKeepsThemAlive) {
  UdpTranslatorOptions o;
  o.idle_timeout_ns = 1'000'000'000;
  Start({}, o);
  HostSocket host;
  const int64_t t0 = ManualClock::now_ns;
  Send(GuestSpec(guest_.gateway4, 46000, host.port), {1});
  ASSERT_TRUE(host.Receive().has_value());
  EXPECT_EQ(world_->watcher.watching(), 1u);
  ManualClock::now_ns = t0 + 600'000'000;
  Send(GuestSpec(guest_.gateway4, 46000, host.port), {2});
  ASSERT_TRUE(host.Receive().has_value());
  Expire(t0 + 1'000'000'000);
  EXPECT_EQ(udp_->flow_count(), 1u);  // Re-armed for 1.6 s.
  Expire(t0 + 1'600'000'000);
  EXPECT_EQ(udp_->flow_count(), 0u);
  EXPECT_EQ(world_->watcher.removes, 1);
  EXPECT_EQ(world_->watcher.watching(), 0u);
  EXPECT_EQ(world_->flows->size(), 0u);
}

TEST_F(UdpTest, InboundForwardAndReplyToTheSender) {
  uint16_t port;
  {
    HostSocket probe;
    port = probe.port;  // Free a moment ago.
  }
  UdpTranslatorOptions o;
  PortForward f;
  f.host_port = port;
  f.guest_port = 5353;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards = {f};
  Start({}, o);
  Post();
  EXPECT_EQ(udp_->listener_count(), 1u);
  HostSocket peer;
  peer.SendTo(Loopback(AF_INET, port), Pattern(77, 1));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].bytes, true);
  EXPECT_EQ(d.payload, Pattern(77, 1));
  EXPECT_EQ(d.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);  // Loopback peer: the gateway.
  EXPECT_EQ(d.parsed.src_port, peer.port);
  EXPECT_EQ(d.parsed.ip.dst4.s_addr, guest_.addr4.s_addr);
  EXPECT_EQ(d.parsed.dst_port, 5353);
  EXPECT_TRUE(d.parsed.dst_mac == guest_.guest_mac);
  EXPECT_EQ(udp_->stats().flows_inbound, 1u);

  Send(GuestSpec(guest_.gateway4, 5353, peer.port), Pattern(88, 2));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> reply = peer.Receive(&from);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(*reply, Pattern(88, 2));
  EXPECT_EQ(PortOf(from), port);
  EXPECT_EQ(udp_->stats().flows_opened, 0u);  // The forward's flow, not a new one.
}

// Inbound flows go to the guest as its frames show it (the dispatcher
// shows every frame to Forwarding::guest()), not as it was configured.
TEST_F(UdpTest, InboundForwardReachesTheAddressAndMacTheGuestUses) {
  uint16_t port;
  {
    HostSocket probe;
    port = probe.port;
  }
  UdpTranslatorOptions o;
  PortForward f;
  f.host_port = port;
  f.guest_port = 5354;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards = {f};
  Start({}, o);
  Post();
  // The guest picked another address and MAC than it was given.
  const MacAddr mac = testing::Mac(0x52, 0x54, 0x00, 0xab, 0xcd, 0xef);
  guest_.addr4 = Ip4("10.0.2.77");
  guest_.guest_mac = mac;
  HostSocket other;
  Send(GuestSpec(guest_.gateway4, 46001, other.port), {1});
  ASSERT_TRUE(other.Receive().has_value());
  EXPECT_TRUE(world_->forward->guest().mac() == mac);

  HostSocket peer;
  peer.SendTo(Loopback(AF_INET, port), Pattern(30, 1));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].bytes, true);
  EXPECT_EQ(d.payload, Pattern(30, 1));
  EXPECT_EQ(d.parsed.ip.dst4.s_addr, Ip4("10.0.2.77").s_addr);
  EXPECT_TRUE(d.parsed.dst_mac == mac);
  EXPECT_EQ(d.parsed.dst_port, 5354);
}

// A datagram forwarded in before the guest sent any UDP goes to the MAC the
// guest's other frames showed (libvirt's MACs are random), not to the one
// configured at start.
TEST_F(UdpTest, InboundForwardBeforeAnyGuestUdpGoesToTheLearnedMac) {
  uint16_t port;
  {
    HostSocket probe;
    port = probe.port;  // Free a moment ago.
  }
  UdpTranslatorOptions o;
  PortForward f;
  f.host_port = port;
  f.guest_port = 5353;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards = {f};
  Start({}, o);
  Post();
  // An ARP request, say: the dispatcher shows every frame to the identity.
  const MacAddr learned = testing::Mac(0x52, 0x54, 0x00, 0xab, 0xcd, 0xef);
  ParsedFrame arp;
  arp.src_mac = learned;
  arp.l3 = L3Kind::kArp;
  world_->forward->guest().Learn(arp);
  HostSocket peer;
  peer.SendTo(Loopback(AF_INET, port), Pattern(77, 1));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].bytes, true);
  EXPECT_TRUE(d.parsed.dst_mac == learned);
  EXPECT_EQ(udp_->stats().flows_opened, 0u);  // No guest UDP yet.
}

// -o/--outbound-if4: flows to other hosts leave from the binding (here an
// interface that does not exist: the flow is not opened); flows to the
// host's loopback (the gateway's address) are left alone.
TEST_F(UdpTest, OutboundBindingAppliesToOtherHostsOnly) {
  UdpTranslatorOptions o;
  o.outbound.ifname4 = "nosuch0";
  Start({}, o);
  Post();
  Send(GuestSpec(Ip4("192.0.2.1"), 48010, 9), {1});
  EXPECT_EQ(udp_->stats().socket_errors, 1u);
  EXPECT_EQ(udp_->flow_count(), 0u);
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 48011, host.port), {2});
  ASSERT_TRUE(host.Receive().has_value());
  EXPECT_EQ(udp_->flow_count(), 1u);
  EXPECT_EQ(udp_->stats().socket_errors, 1u);
}

// A migrated flow (RestoreOutbound) keeps its local port where this host has
// it free, and leaves from -o/--outbound-if4's binding as a new flow would:
// to the host's loopback the binding does not apply; to another host (here
// the gateway itself, with --no-map-gw) through an interface that does not
// exist, the flow is not restored.
TEST_F(UdpTest, MigratedFlowsKeepTheirPortAndFollowTheOutboundBinding) {
  Start();
  Post();
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 48020, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  const uint16_t port = PortOf(from);
  StateWriter w;
  ASSERT_TRUE(udp_->SaveState(w, nullptr).ok());
  const std::string stream = w.Finish();
  udp_->OnMigratedOut(/*linger=*/false);

  // Stages every record of `stream` with the translator, then applies them.
  auto restore = [&] {
    ASSERT_TRUE(ForEachRecord(
                    absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(stream.data()),
                                              stream.size()),
                    [&](const RecordHeader& h, StateReader& r) { return udp_->StageRecord(h, r); })
                    .ok());
    udp_->ApplyStaged(nullptr);
  };
  UdpTranslatorOptions bound;
  bound.outbound.ifname4 = "nosuch0";
  Start({}, bound);  // The source's socket is gone with its world.
  Post();
  restore();
  ASSERT_EQ(udp_->flow_count(), 1u);
  Send(GuestSpec(guest_.gateway4, 48020, host.port), {2});
  ASSERT_TRUE(host.Receive(&from).has_value());
  EXPECT_EQ(PortOf(from), port);
  EXPECT_EQ(udp_->stats().flows_opened, 0u);  // The migrated flow, not a new one.

  DestinationMap no_map_gw;
  no_map_gw.map_gateway = false;
  Start({}, bound, 64, RulesFromConfig(testing::TestGuest(), {}, no_map_gw));
  restore();
  EXPECT_EQ(udp_->flow_count(), 0u);
  EXPECT_EQ(udp_->stats().socket_errors, 1u);
}

// An unqualified spec binds both versions; an IPv6 peer on the host's
// loopback reaches the guest from the gateway, and an answer to a peer that
// has gone comes back as ICMPv6 port unreachable.
TEST_F(UdpTest, InboundForwardOverIpv6AndUnreachablePeer) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  uint16_t port;
  {
    HostSocket probe(AF_INET6);
    port = probe.port;
  }
  UdpTranslatorOptions o;
  PortForward f;
  f.host_port = port;
  f.guest_port = 6000;
  o.forwards = {f};
  Start({}, o);
  Post();
  EXPECT_EQ(udp_->listener_count(), 2u);
  uint16_t peer_port;
  {
    HostSocket peer(AF_INET6);
    peer_port = peer.port;
    peer.SendTo(Loopback(AF_INET6, port), Pattern(500, 1));
    std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
    ASSERT_EQ(frames.size(), 1u);
    GuestDatagram d = ParseGuest(frames[0].bytes, true);
    EXPECT_EQ(d.payload, Pattern(500, 1));
    EXPECT_TRUE(d.checksum_ok);
    EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&d.parsed.ip.src6, &guest_.gateway6));
    EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&d.parsed.ip.dst6, &guest_.addr6));
    EXPECT_EQ(d.parsed.src_port, peer.port);
    EXPECT_EQ(d.parsed.dst_port, 6000);
    Send(GuestSpec6(guest_.gateway6, 6000, peer.port), Pattern(600, 2));
    sockaddr_storage from;
    std::optional<std::vector<uint8_t>> reply = peer.Receive(&from);
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(*reply, Pattern(600, 2));
    EXPECT_EQ(PortOf(from), port);
  }
  // The peer's socket is closed now.
  Send(GuestSpec6(guest_.gateway6, 6000, peer_port), Pattern(10, 3));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  std::vector<uint8_t>& icmp = frames[0].bytes;
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(icmp, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmpv6);
  EXPECT_EQ(p.icmp.type, 1);
  EXPECT_EQ(p.icmp.code, 4);
  // Quoted: the guest's port and the peer's.
  const size_t q = p.l4_offset + 8 + 40;
  ASSERT_GE(icmp.size(), q + 8);
  EXPECT_EQ(testing::GetBe16(icmp, q), 6000);
  EXPECT_EQ(testing::GetBe16(icmp, q + 2), peer_port);
}

// A guest on IPv4 whose DNS server stands for a resolver on IPv6.
TEST_F(UdpTest, DnsAcrossIpVersions) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  HostSocket resolver(AF_INET6);
  Start({}, {}, 64,
        RulesWithDns({InetAddr::V4(Ip4("10.0.2.2")), 53},
                     {InetAddr::V6(in6addr_loopback), resolver.port}));
  Post();
  Send(GuestSpec(guest_.gateway4, 45001, 53), Pattern(30, 1));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = resolver.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, Pattern(30, 1));
  resolver.SendTo(from, Pattern(90, 2));
  std::vector<GuestRxRing::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].bytes, true);
  EXPECT_EQ(d.parsed.l3, L3Kind::kIpv4);
  EXPECT_EQ(d.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(d.parsed.src_port, 53);
  EXPECT_EQ(d.payload, Pattern(90, 2));
}

TEST_F(UdpTest, SegmentationOffloadAndPortZeroRefused) {
  Start();
  HostSocket host;
  std::vector<uint8_t> frame = Build(GuestSpec(guest_.gateway4, 49000, host.port), Pattern(10, 1));
  std::vector<iovec> iov = Split(frame);
  ParsedFrame parsed;
  ASSERT_TRUE(ParseFrame(iov, &parsed).ok());
  vu::VirtioNetHdr gso{};
  gso.gso_type = 5;  // VIRTIO_NET_HDR_GSO_UDP_L4 with gso_size 0 (udp_offload_test has more).
  udp_->OnFrame(gso, iov, parsed);
  udp_->OnBatchEnd();
  Send(GuestSpec(guest_.gateway4, 0, host.port), {1});
  Send(GuestSpec(guest_.gateway4, 49000, 0), {1});
  EXPECT_EQ(udp_->stats().malformed, 3u);
  EXPECT_FALSE(host.Receive(nullptr, 100).has_value());
  EXPECT_EQ(udp_->flow_count(), 0u);
}

TEST_F(UdpTest, FullTableDropsNewFlows) {
  Start({}, {}, /*capacity=*/2);
  HostSocket host;
  for (uint16_t p = 0; p < 3; ++p) Send(GuestSpec(guest_.gateway4, 47000 + p, host.port), {1});
  EXPECT_TRUE(host.Receive().has_value());
  EXPECT_TRUE(host.Receive().has_value());
  EXPECT_FALSE(host.Receive(nullptr, 100).has_value());
  EXPECT_EQ(udp_->stats().table_full, 1u);
  EXPECT_EQ(udp_->flow_count(), 2u);
}

TEST_F(UdpTest, MaxFlowsBoundsUdpAlone) {
  UdpTranslatorOptions o;
  o.max_flows = 1;
  Start({}, o);
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 47100, host.port), {1});
  Send(GuestSpec(guest_.gateway4, 47101, host.port), {1});
  EXPECT_TRUE(host.Receive().has_value());
  EXPECT_FALSE(host.Receive(nullptr, 100).has_value());
  EXPECT_EQ(udp_->stats().table_full, 1u);
}

TEST_F(UdpTest, DestinationsNotTranslated) {
  Start();
  for (const char* dst : {"0.0.0.0", "127.0.0.1", "224.0.0.251", "255.255.255.255", "10.0.2.255"}) {
    Send(GuestSpec(Ip4(dst), 48000, 5353), {1});
  }
  Send(GuestSpec6(Ip6("ff02::fb"), 48000, 5353), {1});
  Send(GuestSpec6(Ip6("fe80::99"), 48000, 5353), {1});
  Send(GuestSpec6(Ip6("::1"), 48000, 5353), {1});
  EXPECT_EQ(udp_->stats().bad_destination, 8u);
  EXPECT_EQ(udp_->flow_count(), 0u);
  EXPECT_EQ(world_->watcher.adds, 0);
}

// Each destination's fate is the forwarding policy's: the translator
// refuses exactly what Forwarding::Outbound refuses.
TEST_F(UdpTest, RefusesWhatTheForwardingPolicyRefuses) {
  Start();
  int refused = 0;
  for (const char* dst :
       {"0.0.0.0", "0.1.2.3", "127.0.0.1", "224.0.0.251", "240.0.0.1", "255.255.255.255",
        "10.0.2.255", "::", "::1", "ff02::fb", "fe80::99", "::ffff:127.0.0.1"}) {
    SCOPED_TRACE(dst);
    const InetAddr a = InetAddr::Parse(dst).value();
    ASSERT_FALSE(world_->forward->Outbound(FlowProto::kUdp, {a, 5353}).has_value());
    if (a.is_v4()) {
      Send(GuestSpec(a.v4(), 48001, 5353), {1});
    } else {
      Send(GuestSpec6(a.v6(), 48001, 5353), {1});
    }
    EXPECT_EQ(udp_->stats().bad_destination, static_cast<uint64_t>(++refused));
  }
  EXPECT_EQ(udp_->flow_count(), 0u);
}

// -4: the guest's IPv6 datagrams are ignored, and counted.
TEST_F(UdpTest, FamilyTurnedOffIsIgnored) {
  GuestConfig g = testing::TestGuest();
  g.ipv4_only = true;
  Start({}, {}, 64, std::nullopt, g);
  HostSocket host;
  Send(GuestSpec6(guest_.gateway6, 48002, host.port), {1});
  EXPECT_EQ(udp_->stats().ignored, 1u);
  EXPECT_EQ(udp_->stats().bad_destination, 0u);
  EXPECT_EQ(udp_->flow_count(), 0u);
}

// "all" and exclusion-only specs (PortForward::weak) skip ports in use; a
// weak forward that binds nothing fails. --freebind binds an address the
// host does not have.
TEST_F(UdpTest, WeakForwardsSkipPortsInUseAndFreebind) {
  HostSocket busy;
  uint16_t free_port;
  {
    HostSocket probe;
    free_port = probe.port;  // Free a moment ago.
  }
  UdpTranslatorOptions o;
  PortForward f;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  f.weak = true;
  f.host_port = f.guest_port = busy.port;
  o.forwards.push_back(f);
  f.host_port = f.guest_port = free_port;
  o.forwards.push_back(f);
  f.weak = false;
  f.freebind = true;
  f.bind4 = Ip4("192.0.2.1");  // TEST-NET-1: not the host's.
  o.forwards.push_back(f);
  Start({}, o);
  EXPECT_EQ(udp_->listener_count(), 2u);
}

TEST(UdpCreateTest, WeakForwardBindingNothingFails) {
  HostSocket busy;
  TranslatorWorld world;
  UdpTranslatorOptions o;
  PortForward f;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  f.weak = true;
  f.host_port = f.guest_port = busy.port;
  o.forwards.push_back(f);
  absl::StatusOr<std::unique_ptr<UdpTranslator>> udp = UdpTranslator::Create(world.Env(), o);
  ASSERT_FALSE(udp.ok());
  EXPECT_NE(udp.status().message().find("none of the 1 ports"), std::string::npos) << udp.status();
  EXPECT_EQ(world.watcher.watching(), 0u);
}

// Where the guest was given the gateway as its DNS server in place of a
// resolver on the host's loopback, the forwarding rules map the gateway's
// port 53 to that resolver: the first loopback one, per IP version.
TEST(UdpDnsRulesTest, LoopbackResolversBehindTheGateway) {
  GuestConfig g = testing::TestGuest();
  g.dns4 = {g.gateway4};
  g.gateway6 = Ip6("fd00::1");
  g.dns6 = {g.gateway6};
  config_internal::Resolver host;
  host.dns4 = {Ip4("192.0.2.1"), Ip4("127.0.0.53"), Ip4("127.0.0.1")};
  host.dns6 = {Ip6("::1")};
  const ForwardRules r = RulesFromConfig(g, host);
  ASSERT_EQ(r.dns.size(), 2u);
  EXPECT_EQ(r.dns[0].guest.ToString(), "10.0.2.2:53");
  EXPECT_EQ(r.dns[0].host.ToString(), "127.0.0.53:53");
  EXPECT_EQ(r.dns[1].guest.ToString(), "[fd00::1]:53");
  EXPECT_EQ(r.dns[1].host.ToString(), "[::1]:53");
  // A guest not given the gateway as its DNS server needs no forward.
  g.dns4 = {Ip4("192.0.2.1")};
  g.dns6.clear();
  EXPECT_TRUE(RulesFromConfig(g, host).dns.empty());
}

TEST(UdpTranslatorCreate, RefusesAnIncompleteEnvironment) {
  TranslatorWorld world;
  TranslatorEnv env = world.Env();
  env.forward = nullptr;
  EXPECT_EQ(UdpTranslator::Create(env, {}).status().code(), absl::StatusCode::kInvalidArgument);
  env = world.Env();
  env.rx = nullptr;
  EXPECT_EQ(UdpTranslator::Create(env, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UdpPeekTest, ProbeMatchesThisKernel) {
  // Linux has had SO_PEEK_OFF for UDP since 4.11; the batched path relies on it.
  EXPECT_TRUE(ProbeUdpPeekOffset(AF_INET));
}

}  // namespace
}  // namespace vunet::net
