#include "net/udp.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/checksum.h"
#include "net/flow.h"
#include "net/frame.h"
#include "net/test_frames.h"
#include "net/udp_vu.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"

namespace vunet::net {
namespace {

using testing::Build;
using testing::Ip4;
using testing::Ip6;
using testing::Split;

constexpr MacAddr kGuestMac = {{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
constexpr MacAddr kGatewayMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};

int64_t fake_now = 1'000'000'000;
int64_t FakeClock() { return fake_now; }

GuestConfig TestGuest() {
  GuestConfig g;
  g.guest_mac = kGuestMac;
  g.gateway_mac = kGatewayMac;
  g.addr4 = Ip4("10.0.2.15");
  g.prefix_len4 = 24;
  g.gateway4 = Ip4("10.0.2.2");
  g.addr6 = Ip6("fd00::15");
  g.gateway6 = Ip6("fe80::1");
  g.our_link_local6 = Ip6("fe80::1");
  g.dns4 = {g.gateway4};
  return g;
}

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

// Watches sockets in a real epoll set and hands events to the translator.
class EpollWatcher : public SocketWatcher {
 public:
  EpollWatcher() : epoll_(epoll_create1(EPOLL_CLOEXEC)) {}
  absl::Status Watch(int fd, uint32_t events, uint64_t tag) override {
    return Ctl(EPOLL_CTL_ADD, fd, events, tag);
  }
  absl::Status Modify(int fd, uint32_t events, uint64_t tag) override {
    ++modifies;
    return Ctl(EPOLL_CTL_MOD, fd, events, tag);
  }
  void Unwatch(int fd) override {
    ++unwatched;
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }
  // Dispatches what is ready within `timeout_ms`; returns the events.
  int Pump(Translator* t, int timeout_ms = 0) {
    epoll_event ev[64];
    const int n = epoll_wait(epoll_.get(), ev, 64, timeout_ms);
    for (int i = 0; i < n; ++i) t->OnSocketEvent(ev[i].data.u64, ev[i].events);
    return n < 0 ? 0 : n;
  }
  int watched = 0;
  int modifies = 0;
  int unwatched = 0;

 private:
  absl::Status Ctl(int op, int fd, uint32_t events, uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    if (epoll_ctl(epoll_.get(), op, fd, &ev) != 0) return absl::ErrnoToStatus(errno, "epoll_ctl");
    if (op == EPOLL_CTL_ADD) ++watched;
    return absl::OkStatus();
  }
  UniqueFd epoll_;
};

class RecordingSender : public ReplySender {
 public:
  absl::Status Send(absl::Span<const uint8_t> frame) override {
    frames.emplace_back(frame.begin(), frame.end());
    return absl::OkStatus();
  }
  std::vector<std::vector<uint8_t>> frames;
};

// The guest's receive ring, driven from the driver side.
class TestRx : public GuestRx {
 public:
  struct Options {
    bool mergeable = true;
    bool guest_csum = false;
    uint32_t buffer_size = 1526;
    uint32_t descriptors = 1;  // Per buffer, splitting it evenly.
    uint32_t ring = 256;
  };

  explicit TestRx(const Options& o) : options_(o) {
    mem_ = virtio::testing::DriverMemory::Create(96 << 20).value();
    EXPECT_TRUE(mem_->MapInto(&memory_).ok());
    driver_ = std::make_unique<virtio::testing::DriverQueue>(mem_.get(), o.ring);
    EXPECT_TRUE(vq_.Start(&memory_, driver_->DeviceConfig(memory_).value()).ok());
    config_.mergeable_rx = o.mergeable;
    config_.guest_csum = o.guest_csum;
    config_.vnet_hdr_len = sizeof(vu::VirtioNetHdr);
    for (uint32_t i = 0; i < o.ring; ++i) free_.push_back(mem_->Alloc(o.buffer_size).value());
  }

  virtio::Virtqueue* queue() override { return running ? &vq_ : nullptr; }
  const vu::NetConfig& config() const override { return config_; }
  void OnFrameWritten(absl::Span<const iovec>, size_t, size_t len) override {
    ++written;
    written_bytes += len;
  }
  void OnBroken() override { ++broken; }

  // Posts up to `n` buffers (all free ones by default).
  void Post(size_t n = SIZE_MAX) {
    const uint32_t piece = options_.buffer_size / options_.descriptors;
    while (n-- > 0 && !free_.empty() && driver_->free_descriptors() >= options_.descriptors) {
      const uint64_t gpa = free_.back();
      std::vector<virtio::testing::DriverQueue::Buffer> chain;
      for (uint32_t d = 0; d < options_.descriptors; ++d) {
        const uint32_t len =
            d + 1 == options_.descriptors ? options_.buffer_size - piece * d : piece;
        chain.push_back({gpa + uint64_t{piece} * d, len, true});
      }
      const std::optional<uint16_t> head = driver_->AddChain(chain);
      if (!head.has_value()) break;
      free_.pop_back();
      owner_[*head] = gpa;
    }
    driver_->Publish();
  }

  struct Frame {
    vu::VirtioNetHdr hdr;
    std::vector<uint8_t> data;  // Ethernet frame.
  };
  // Every frame returned so far (buffers go back to the free list).
  std::vector<Frame> Frames() {
    std::vector<Frame> out;
    while (std::optional<virtio::VirtqUsedElem> used = driver_->PopUsed()) {
      const uint64_t gpa = Release(used->id);
      if (used->len < sizeof(vu::VirtioNetHdr)) {
        ++holes;
        continue;
      }
      EXPECT_LE(used->len, options_.buffer_size);
      Frame f;
      std::memcpy(&f.hdr, mem_->Host(gpa), sizeof(f.hdr));
      const uint8_t* p = mem_->Host(gpa);
      f.data.assign(p + sizeof(f.hdr), p + used->len);
      const uint16_t buffers = options_.mergeable ? f.hdr.num_buffers : 1;
      EXPECT_GE(buffers, 1);
      for (uint16_t b = 1; b < buffers; ++b) {
        std::optional<virtio::VirtqUsedElem> more = driver_->PopUsed();
        EXPECT_TRUE(more.has_value());
        if (!more.has_value()) break;
        const uint64_t g2 = Release(more->id);
        const uint8_t* q = mem_->Host(g2);
        f.data.insert(f.data.end(), q, q + more->len);
      }
      out.push_back(std::move(f));
    }
    return out;
  }

  bool running = true;
  int written = 0;
  size_t written_bytes = 0;
  int broken = 0;
  int holes = 0;
  virtio::Virtqueue& vq() { return vq_; }

 private:
  uint64_t Release(uint16_t head) {
    const uint64_t gpa = owner_.at(head);
    owner_.erase(head);
    free_.push_back(gpa);
    return gpa;
  }

  Options options_;
  std::unique_ptr<virtio::testing::DriverMemory> mem_;
  virtio::GuestMemory memory_;
  std::unique_ptr<virtio::testing::DriverQueue> driver_;
  virtio::Virtqueue vq_;
  vu::NetConfig config_;
  std::vector<uint64_t> free_;
  std::map<uint16_t, uint64_t> owner_;
};

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

class UdpTest : public ::testing::Test {
 protected:
  void Start(TestRx::Options rx = {}, UdpTranslatorOptions options = {}, size_t capacity = 64) {
    rx_ = std::make_unique<TestRx>(rx);
    guest_ = TestGuest();
    flows_ = FlowTable::Create({.capacity = capacity, .seed = 1}).value();
    TranslatorEnv env;
    env.flows = flows_.get();
    env.rx = rx_.get();
    env.watcher = &watcher_;
    env.replies = &replies_;
    env.guest = &guest_;
    env.first_kind = 64;
    env.clock = &FakeClock;
    absl::StatusOr<std::unique_ptr<UdpTranslator>> udp = UdpTranslator::Create(env, options);
    ASSERT_TRUE(udp.ok()) << udp.status();
    udp_ = std::move(*udp);
  }
  void TearDown() override {
    if (udp_ != nullptr) udp_->Shutdown();
  }

  FrameSpec GuestSpec(in_addr dst, uint16_t sport, uint16_t dport) {
    FrameSpec s;
    s.src_mac = kGuestMac;
    s.dst_mac = kGatewayMac;
    s.src4 = guest_.addr4;
    s.dst4 = dst;
    s.src_port = sport;
    s.dst_port = dport;
    return s;
  }
  FrameSpec GuestSpec6(const in6_addr& dst, uint16_t sport, uint16_t dport) {
    FrameSpec s;
    s.src_mac = kGuestMac;
    s.dst_mac = kGatewayMac;
    s.ipv6 = true;
    s.src6 = guest_.addr6;
    s.dst6 = dst;
    s.src_port = sport;
    s.dst_port = dport;
    return s;
  }

  // Feeds frames as one transmit batch, each cut into `piece`-byte iovecs.
  void SendBatch(const std::vector<std::pair<FrameSpec, std::vector<uint8_t>>>& datagrams,
                 size_t piece = 0) {
    std::vector<std::vector<uint8_t>> frames;
    frames.reserve(datagrams.size());
    for (const auto& [spec, payload] : datagrams) frames.push_back(Build(spec, payload));
    std::vector<std::vector<iovec>> iovs;
    for (auto& f : frames) iovs.push_back(Split(f, piece));
    for (auto& iov : iovs) {
      ParsedFrame parsed;
      ASSERT_TRUE(ParseFrame(iov, &parsed).ok());
      udp_->OnFrame(vu::VirtioNetHdr{}, iov, parsed);
    }
    udp_->OnBatchEnd();
  }
  void Send(const FrameSpec& spec, const std::vector<uint8_t>& payload, size_t piece = 0) {
    SendBatch({{spec, payload}}, piece);
  }

  // Pumps events until `n` frames arrived or `timeout_ms` passed.
  std::vector<TestRx::Frame> ReceiveFrames(size_t n, int timeout_ms = 2000) {
    std::vector<TestRx::Frame> got;
    for (int waited = 0; got.size() < n && waited < timeout_ms; waited += 10) {
      watcher_.Pump(udp_.get(), 10);
      for (TestRx::Frame& f : rx_->Frames()) got.push_back(std::move(f));
    }
    return got;
  }

  GuestConfig guest_;
  std::unique_ptr<TestRx> rx_;
  std::unique_ptr<FlowTable> flows_;
  EpollWatcher watcher_;
  RecordingSender replies_;
  std::unique_ptr<UdpTranslator> udp_;
};

TEST_F(UdpTest, GatewayReachesHostLoopbackAndRepliesComeBack) {
  Start();
  rx_->Post();
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
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].data, true);
  EXPECT_EQ(d.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(d.parsed.ip.dst4.s_addr, guest_.addr4.s_addr);
  EXPECT_EQ(d.parsed.src_port, host.port);
  EXPECT_EQ(d.parsed.dst_port, 40000);
  EXPECT_TRUE(d.parsed.dst_mac == kGuestMac);
  EXPECT_TRUE(d.parsed.src_mac == kGatewayMac);
  EXPECT_EQ(d.payload, answer);
  EXPECT_TRUE(d.checksum_ok);
  EXPECT_EQ(frames[0].hdr.flags, 0);
  EXPECT_EQ(rx_->written, 1);
  EXPECT_EQ(udp_->stats().tx_datagrams, 1u);
  EXPECT_EQ(udp_->stats().rx_datagrams, 1u);
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
  rx_->Post();
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
  std::vector<TestRx::Frame> frames = ReceiveFrames(std::size(kSizes));
  ASSERT_EQ(frames.size(), std::size(kSizes));
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    GuestDatagram d = ParseGuest(frames[i].data, !c.guest_csum);
    EXPECT_EQ(d.payload, Pattern(kSizes[i], static_cast<uint8_t>(100 + i))) << kSizes[i];
    EXPECT_TRUE(d.checksum_ok) << kSizes[i];
    EXPECT_EQ(frames[i].hdr.flags, c.guest_csum ? vu::kVirtioNetHdrFDataValid : 0);
  }
  EXPECT_EQ(rx_->holes, 0);
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
  rx_->Post();
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 41001, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(9000, 1));
  host.SendTo(from, Pattern(1472, 2));
  host.SendTo(from, Pattern(1473, 3));  // 1526 - 12 - 42 = 1472 fits; 1473 does not.
  host.SendTo(from, Pattern(10, 4));
  std::vector<TestRx::Frame> frames = ReceiveFrames(2);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(ParseGuest(frames[0].data, true).payload, Pattern(1472, 2));
  EXPECT_EQ(ParseGuest(frames[1].data, true).payload, Pattern(10, 4));
  EXPECT_EQ(udp_->rx_stats().too_big, 2u);
  EXPECT_EQ(rx_->holes, 0);
}

TEST_F(UdpTest, DatagramLargerThanTheWholeRingIsDroppedAndTheRestFlows) {
  // Sixteen 1526-byte buffers hold about 24 KB: a 30000-byte datagram can
  // never fit, however long it waits, and must not hold up the socket.
  Start({.mergeable = true, .buffer_size = 1526, .ring = 16});
  rx_->Post();
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 41003, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(30000, 1));
  host.SendTo(from, Pattern(9000, 2));
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(ParseGuest(frames[0].data, true).payload, Pattern(9000, 2));
  EXPECT_EQ(udp_->rx_stats().too_big, 1u);
  EXPECT_EQ(rx_->holes, 0);
}

TEST_F(UdpTest, ManyQueuedDatagramsInOrderAcrossWakeups) {
  for (bool peek : {true, false}) {
    SCOPED_TRACE(peek);
    UdpTranslatorOptions o;
    o.batch_peek = peek;
    Start({.mergeable = true, .buffer_size = 1526}, o);
    rx_->Post();
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
    std::vector<TestRx::Frame> frames;
    for (int round = 0; round < 200 && frames.size() < kCount; ++round) {
      for (TestRx::Frame& f : ReceiveFrames(kCount - frames.size(), 20)) {
        frames.push_back(std::move(f));
      }
      rx_->Post();
      udp_->OnRxAvailable();
    }
    ASSERT_EQ(frames.size(), static_cast<size_t>(kCount));
    for (int i = 0; i < kCount; ++i) {
      EXPECT_EQ(ParseGuest(frames[i].data, true).payload,
                Pattern(SizeOf(i), static_cast<uint8_t>(i)))
          << i;
    }
    EXPECT_EQ(rx_->holes, 0);
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
    rx_->Post(1);
    HostSocket host;
    Send(GuestSpec(guest_.gateway4, 41003, host.port), {1});
    sockaddr_storage from;
    ASSERT_TRUE(host.Receive(&from).has_value());
    constexpr int kCount = 40;
    auto size_of = [](int i) -> size_t { return i % 3 == 0 ? 0 : i % 5 == 0 ? 3000 : 100 + i; };
    for (int i = 0; i < kCount; ++i)
      host.SendTo(from, Pattern(size_of(i), static_cast<uint8_t>(i)));
    std::vector<TestRx::Frame> frames;
    for (int round = 0; round < 400 && frames.size() < kCount; ++round) {
      watcher_.Pump(udp_.get(), 5);
      for (TestRx::Frame& f : rx_->Frames()) frames.push_back(std::move(f));
      rx_->Post(1 + round % 3);
      udp_->OnRxAvailable();
    }
    ASSERT_EQ(frames.size(), static_cast<size_t>(kCount));
    for (int i = 0; i < kCount; ++i) {
      EXPECT_EQ(ParseGuest(frames[i].data, true).payload,
                Pattern(size_of(i), static_cast<uint8_t>(i)))
          << i;
    }
    EXPECT_GT(udp_->rx_stats().no_room, 0u);
    EXPECT_EQ(rx_->holes, 0);
    EXPECT_EQ(udp_->rx_stats().mismatches, 0u);
    udp_->Shutdown();
  }
}

TEST_F(UdpTest, NoQueueLeavesDataInTheSocket) {
  Start();
  rx_->running = false;
  HostSocket host;
  Send(GuestSpec(guest_.gateway4, 41004, host.port), {1});
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(50, 5));
  watcher_.Pump(udp_.get(), 100);
  EXPECT_EQ(watcher_.Pump(udp_.get(), 50), 0);  // Unwatched for input meanwhile.
  rx_->running = true;
  rx_->Post();
  udp_->OnRxAvailable();
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(ParseGuest(frames[0].data, true).payload, Pattern(50, 5));
}

TEST_F(UdpTest, ScatteredGuestFramesAndInterleavedFlowsKeepOrder) {
  Start();
  HostSocket a, b;
  std::vector<std::pair<FrameSpec, std::vector<uint8_t>>> batch;
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

TEST_F(UdpTest, PortUnreachableReachesTheGuest) {
  Start();
  rx_->Post();
  uint16_t closed;
  {
    HostSocket s;
    closed = s.port;
  }
  const std::vector<uint8_t> payload = Pattern(20, 3);
  Send(GuestSpec(guest_.gateway4, 43000, closed), payload);
  for (int i = 0; i < 100 && replies_.frames.empty(); ++i) watcher_.Pump(udp_.get(), 10);
  ASSERT_EQ(replies_.frames.size(), 1u);
  std::vector<uint8_t>& f = replies_.frames[0];
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(f, &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmp);
  EXPECT_EQ(p.icmp.type, 3);
  EXPECT_EQ(p.icmp.code, 3);
  EXPECT_EQ(p.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(p.ip.dst4.s_addr, guest_.addr4.s_addr);
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
}

TEST_F(UdpTest, PortUnreachableOverIpv6) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  Start();
  rx_->Post();
  uint16_t closed;
  {
    HostSocket s(AF_INET6);
    closed = s.port;
  }
  Send(GuestSpec6(guest_.gateway6, 43001, closed), Pattern(10, 1));
  for (int i = 0; i < 100 && replies_.frames.empty(); ++i) watcher_.Pump(udp_.get(), 10);
  ASSERT_EQ(replies_.frames.size(), 1u);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(replies_.frames[0], &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmpv6);
  EXPECT_EQ(p.icmp.type, 1);
  EXPECT_EQ(p.icmp.code, 4);
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.src6, &guest_.gateway6));
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.dst6, &guest_.addr6));
  const std::vector<iovec> iov = Split(replies_.frames[0]);
  EXPECT_EQ(L4ChecksumV6(p.ip.src6, p.ip.dst6, IPPROTO_ICMPV6, iov, p.l4_offset, p.l4_len), 0);
}

TEST_F(UdpTest, Ipv6BothWays) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  Start();
  rx_->Post();
  HostSocket host(AF_INET6);
  Send(GuestSpec6(guest_.gateway6, 44000, host.port), Pattern(65527, 1));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = host.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, Pattern(65527, 1));
  host.SendTo(from, Pattern(65527, 2));
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].data, true);
  EXPECT_EQ(d.payload, Pattern(65527, 2));
  EXPECT_TRUE(d.checksum_ok);
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&d.parsed.ip.src6, &guest_.gateway6));
}

TEST_F(UdpTest, Ipv6WithGuestCsumNeverCarriesAZeroChecksum) {
  // Linux drops UDP over IPv6 whose checksum field is zero, data valid or not.
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  Start({.guest_csum = true});
  rx_->Post();
  HostSocket host(AF_INET6);
  Send(GuestSpec6(guest_.gateway6, 44001, host.port), Pattern(10, 1));
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(1000, 2));
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].hdr.flags, vu::kVirtioNetHdrFDataValid);
  GuestDatagram d = ParseGuest(frames[0].data, false);
  EXPECT_EQ(d.payload, Pattern(1000, 2));
  EXPECT_TRUE(d.checksum_ok);
}

TEST_F(UdpTest, DnsGoesToTheHostResolverAndExpiresSoonAfterTheAnswer) {
  HostSocket resolver;
  UdpTranslatorOptions o;
  o.dns = {
      {UdpEndpoint::V4(Ip4("10.0.2.2"), 53), UdpEndpoint::V4(Ip4("127.0.0.1"), resolver.port)}};
  Start({}, o);
  rx_->Post();
  const std::vector<uint8_t> query = Pattern(40, 7);
  Send(GuestSpec(guest_.gateway4, 45000, 53), query);
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = resolver.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, query);
  resolver.SendTo(from, Pattern(120, 8));
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].data, true);
  EXPECT_EQ(d.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(d.parsed.src_port, 53);
  EXPECT_EQ(d.parsed.dst_port, 45000);
  EXPECT_EQ(d.payload, Pattern(120, 8));

  const FlowId id =
      flows_->Find(FlowKey::V4(FlowProto::kUdp, guest_.addr4, 45000, guest_.gateway4, 53));
  ASSERT_TRUE(id.valid());
  EXPECT_EQ(flows_->Deadline(id), fake_now + o.dns_timeout_ns);
  const int64_t later = fake_now + o.dns_timeout_ns;
  flows_->Expire(later, [&](FlowId f) { udp_->OnTimer(f, later); });
  EXPECT_EQ(udp_->flow_count(), 0u);
  EXPECT_EQ(udp_->stats().flows_expired, 1u);
}

TEST_F(UdpTest, IdleFlowsExpireAndActivityKeepsThemAlive) {
  UdpTranslatorOptions o;
  o.idle_timeout_ns = 1'000'000'000;
  Start({}, o);
  HostSocket host;
  const int64_t t0 = fake_now;
  Send(GuestSpec(guest_.gateway4, 46000, host.port), {1});
  ASSERT_TRUE(host.Receive().has_value());
  fake_now = t0 + 600'000'000;
  Send(GuestSpec(guest_.gateway4, 46000, host.port), {2});
  ASSERT_TRUE(host.Receive().has_value());
  int64_t now = t0 + 1'000'000'000;
  flows_->Expire(now, [&](FlowId f) { udp_->OnTimer(f, now); });
  EXPECT_EQ(udp_->flow_count(), 1u);  // Re-armed for 1.6 s.
  now = t0 + 1'600'000'000;
  flows_->Expire(now, [&](FlowId f) { udp_->OnTimer(f, now); });
  EXPECT_EQ(udp_->flow_count(), 0u);
  EXPECT_EQ(watcher_.unwatched, 1);
  fake_now = t0;
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
  rx_->Post();
  EXPECT_EQ(udp_->listener_count(), 1u);
  HostSocket peer;
  peer.SendTo(Loopback(AF_INET, port), Pattern(77, 1));
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].data, true);
  EXPECT_EQ(d.payload, Pattern(77, 1));
  EXPECT_EQ(d.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);  // Loopback peer: the gateway.
  EXPECT_EQ(d.parsed.src_port, peer.port);
  EXPECT_EQ(d.parsed.ip.dst4.s_addr, guest_.addr4.s_addr);
  EXPECT_EQ(d.parsed.dst_port, 5353);
  EXPECT_EQ(udp_->stats().flows_inbound, 1u);

  Send(GuestSpec(guest_.gateway4, 5353, peer.port), Pattern(88, 2));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> reply = peer.Receive(&from);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(*reply, Pattern(88, 2));
  EXPECT_EQ(PortOf(from), port);
  EXPECT_EQ(udp_->stats().flows_opened, 0u);  // The forward's flow, not a new one.
}

// A datagram forwarded in before the guest sent any UDP goes to the MAC the
// owner learned from the guest's other frames (libvirt's MACs are random),
// not to the one configured at start.
TEST_F(UdpTest, InboundForwardGoesToTheOwnersLearnedMac) {
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
  rx_->Post();
  const MacAddr learned = {{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}};
  guest_.guest_mac = learned;  // What the backend's MAC learner does.
  HostSocket peer;
  peer.SendTo(Loopback(AF_INET, port), Pattern(77, 1));
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].data, true);
  EXPECT_EQ(d.parsed.dst_mac, learned);
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
  rx_->Post();
  EXPECT_EQ(udp_->listener_count(), 2u);
  uint16_t peer_port;
  {
    HostSocket peer(AF_INET6);
    peer_port = peer.port;
    peer.SendTo(Loopback(AF_INET6, port), Pattern(500, 1));
    std::vector<TestRx::Frame> frames = ReceiveFrames(1);
    ASSERT_EQ(frames.size(), 1u);
    GuestDatagram d = ParseGuest(frames[0].data, true);
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
  for (int i = 0; i < 100 && replies_.frames.empty(); ++i) watcher_.Pump(udp_.get(), 10);
  ASSERT_EQ(replies_.frames.size(), 1u);
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(replies_.frames[0], &p).ok());
  EXPECT_EQ(p.l4, L4Kind::kIcmpv6);
  EXPECT_EQ(p.icmp.type, 1);
  EXPECT_EQ(p.icmp.code, 4);
  // Quoted: the guest's port and the peer's.
  const size_t q = p.l4_offset + 8 + 40;
  ASSERT_GE(replies_.frames[0].size(), q + 8);
  EXPECT_EQ(testing::GetBe16(replies_.frames[0], q), 6000);
  EXPECT_EQ(testing::GetBe16(replies_.frames[0], q + 2), peer_port);
}

// A guest on IPv4 whose DNS server stands for a resolver on IPv6.
TEST_F(UdpTest, DnsAcrossIpVersions) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  HostSocket resolver(AF_INET6);
  UdpTranslatorOptions o;
  o.dns = {
      {UdpEndpoint::V4(Ip4("10.0.2.2"), 53), UdpEndpoint::V6(in6addr_loopback, resolver.port)}};
  Start({}, o);
  rx_->Post();
  Send(GuestSpec(guest_.gateway4, 45001, 53), Pattern(30, 1));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = resolver.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, Pattern(30, 1));
  resolver.SendTo(from, Pattern(90, 2));
  std::vector<TestRx::Frame> frames = ReceiveFrames(1);
  ASSERT_EQ(frames.size(), 1u);
  GuestDatagram d = ParseGuest(frames[0].data, true);
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
  gso.gso_type = 5;  // VIRTIO_NET_HDR_GSO_UDP_L4: never offered.
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
}

TEST_F(UdpTest, OtherProtocolsPassOn) {
  Start();
  FrameSpec tcp = GuestSpec(guest_.gateway4, 1, 2);
  tcp.protocol = IPPROTO_TCP;
  Send(tcp, {});
  EXPECT_EQ(udp_->stats().ignored, 1u);
  EXPECT_EQ(udp_->stats().tx_datagrams, 0u);
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

TEST_F(UdpTest, WeakForwardBindingNothingFails) {
  HostSocket busy;
  auto flows = FlowTable::Create({.capacity = 4}).value();
  GuestConfig guest = TestGuest();
  TestRx rx({});
  TranslatorEnv env{.flows = flows.get(),
                    .rx = &rx,
                    .watcher = &watcher_,
                    .replies = &replies_,
                    .guest = &guest,
                    .clock = &FakeClock};
  UdpTranslatorOptions o;
  PortForward f;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  f.weak = true;
  f.host_port = f.guest_port = busy.port;
  o.forwards.push_back(f);
  absl::StatusOr<std::unique_ptr<UdpTranslator>> udp = UdpTranslator::Create(env, o);
  ASSERT_FALSE(udp.ok());
  EXPECT_NE(udp.status().message().find("none of the 1 ports"), std::string::npos) << udp.status();
}

TEST(UdpDnsForwardsTest, LoopbackResolversBehindTheGateway) {
  GuestConfig g = TestGuest();
  g.gateway6 = Ip6("fd00::1");
  g.dns6 = {g.gateway6};
  config_internal::Resolver host;
  host.dns4 = {Ip4("192.0.2.1"), Ip4("127.0.0.53"), Ip4("127.0.0.1")};
  host.dns6 = {Ip6("::1")};
  std::vector<UdpDnsForward> f = UdpDnsForwards(g, host);
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0].guest.ToString(), "10.0.2.2:53");
  EXPECT_EQ(f[0].host.ToString(), "127.0.0.53:53");
  EXPECT_EQ(f[1].guest.ToString(), "[fd00::1]:53");
  EXPECT_EQ(f[1].host.ToString(), "[::1]:53");
  // A guest not given the gateway as its DNS server needs no forward.
  g.dns4 = {Ip4("192.0.2.1")};
  g.dns6.clear();
  EXPECT_TRUE(UdpDnsForwards(g, host).empty());
}

TEST(UdpPeekTest, ProbeMatchesThisKernel) {
  // Linux has had SO_PEEK_OFF for UDP since 4.11; the batched path relies on it.
  EXPECT_TRUE(ProbeUdpPeekOffset(AF_INET));
}

}  // namespace
}  // namespace vunet::net
