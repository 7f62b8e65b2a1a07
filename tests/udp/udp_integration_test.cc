// The UDP translator in the real backend, in-process: a vhost-user frontend
// (//tools/vu_frontend) plays the guest over the backend's UNIX socket, and
// real UDP sockets on the host's loopback are the other end.

#include <arpa/inet.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/config/config.h"
#include "net/config/port_forward.h"
#include "net/forward/forward.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/packet/inet.h"
#include "net/udp/udp.h"
#include "tools/vu_frontend/frontend.h"
#include "tools/vu_frontend/net_header.h"
#include "tools/vunet/backend.h"

namespace vunet {
namespace {

using net::FrameSpec;
using vu_frontend::Bit;
using vu_frontend::Frontend;
using vu_frontend::FrontendOptions;

constexpr net::MacAddr kGuestMac = {{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
constexpr net::MacAddr kGatewayMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};

in_addr Ip4(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return a;
}
in6_addr Ip6(const char* s) {
  in6_addr a{};
  inet_pton(AF_INET6, s, &a);
  return a;
}

net::GuestConfig TestGuest() {
  net::GuestConfig g;
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
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  return fd.valid() && bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
}

std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = static_cast<uint8_t>(x >> 16);
  }
  return v;
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

uint16_t PortOf(const sockaddr_storage& a) {
  return ntohs(a.ss_family == AF_INET ? reinterpret_cast<const sockaddr_in&>(a).sin_port
                                      : reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
}

// A UDP socket on the host's loopback.
class HostSocket {
 public:
  explicit HostSocket(int family = AF_INET, uint16_t port = 0) : family_(family) {
    fd_.reset(socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    const int big = 4 << 20;
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    setsockopt(fd_.get(), SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    sockaddr_storage a = Loopback(family, port);
    socklen_t len = family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
    EXPECT_EQ(bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), len), 0) << strerror(errno);
    EXPECT_EQ(getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
    port_ = PortOf(a);
  }
  uint16_t port() const { return port_; }
  int fd() const { return fd_.get(); }

  std::optional<std::vector<uint8_t>> Receive(sockaddr_storage* from = nullptr,
                                              absl::Duration timeout = absl::Seconds(5)) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) != 1) {
      return std::nullopt;
    }
    std::vector<uint8_t> buf(70000);
    sockaddr_storage f{};
    socklen_t len = sizeof(f);
    const ssize_t n =
        recvfrom(fd_.get(), buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&f), &len);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    if (from != nullptr) *from = f;
    return buf;
  }
  void SendTo(const sockaddr_storage& to, absl::Span<const uint8_t> data) {
    const socklen_t len = to.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
    ASSERT_EQ(
        sendto(fd_.get(), data.data(), data.size(), 0, reinterpret_cast<const sockaddr*>(&to), len),
        static_cast<ssize_t>(data.size()))
        << strerror(errno);
  }

 private:
  UniqueFd fd_;
  int family_;
  uint16_t port_ = 0;
};

// A datagram (or an ICMP error) as the guest received it.
struct GuestFrame {
  net::ParsedFrame parsed;
  std::vector<uint8_t> frame;
  std::vector<uint8_t> payload;
  uint8_t vnet_flags = 0;
  bool checksum_ok = false;
};

class UdpIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/vunet_udp_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/vunet.sock";
    guest_ = TestGuest();
  }
  void TearDown() override {
    frontend_.reset();
    StopBackend();
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }

  // The backend with the UDP translator alone on its frame path (and ARP),
  // guest flows forwarded by the rules the guest's configuration gives, or
  // by `forward`.
  void StartBackend(const net::UdpTranslatorOptions& udp = {},
                    std::optional<net::ForwardRules> forward = std::nullopt) {
    tools::BackendOptions o;
    o.socket_path = path_;
    o.path.arp = {.gateway_mac = kGatewayMac, .guest_addr = guest_.addr4};
    o.path.tcp.reset();
    o.path.icmp.reset();
    o.path.udp = udp;
    o.send_ra = false;
    o.guest = guest_;
    o.forward = forward.has_value() ? *forward : net::RulesFromConfig(guest_, {});
    o.max_flows = 4096;
    absl::StatusOr<std::unique_ptr<tools::Backend>> b = tools::Backend::Create(o);
    ASSERT_TRUE(b.ok()) << b.status();
    backend_ = std::move(*b);
    thread_ = std::thread([this] { run_status_ = backend_->Run(); });
  }
  void StopBackend() {
    if (backend_ == nullptr) return;
    backend_->Stop();
    if (thread_.joinable()) thread_.join();
    EXPECT_TRUE(run_status_.ok()) << run_status_;
  }
  // Counters are the loop thread's: read them once it has stopped.
  const net::UdpTranslator& StoppedUdp() {
    StopBackend();
    return *backend_->path()->udp();
  }

  void Connect(const FrontendOptions& options = {}) {
    absl::StatusOr<std::unique_ptr<Frontend>> f = Frontend::Create(options);
    ASSERT_TRUE(f.ok()) << f.status();
    frontend_ = std::move(*f);
    absl::Status s = frontend_->Connect(path_, absl::Seconds(5));
    ASSERT_TRUE(s.ok()) << s;
    s = frontend_->Negotiate();
    ASSERT_TRUE(s.ok()) << s;
  }

  FrameSpec Spec4(in_addr dst, uint16_t sport, uint16_t dport) const {
    FrameSpec s;
    s.src_mac = kGuestMac;
    s.dst_mac = kGatewayMac;
    s.src4 = guest_.addr4;
    s.dst4 = dst;
    s.src_port = sport;
    s.dst_port = dport;
    return s;
  }
  FrameSpec Spec6(const in6_addr& dst, uint16_t sport, uint16_t dport) const {
    FrameSpec s = Spec4(in_addr{}, sport, dport);
    s.ipv6 = true;
    s.src6 = guest_.addr6;
    s.dst6 = dst;
    return s;
  }

  static std::vector<uint8_t> Frame(const FrameSpec& spec, absl::Span<const uint8_t> payload) {
    const size_t h = net::FrameHeadersLen(spec);
    std::vector<uint8_t> f(h + payload.size());
    if (!payload.empty()) std::memcpy(f.data() + h, payload.data(), payload.size());
    EXPECT_TRUE(net::BuildFrame(spec, absl::MakeSpan(f), payload.size()).ok());
    return f;
  }

  // Sends the frames from the guest, waiting for ring room as needed.
  void SendAll(const std::vector<std::vector<uint8_t>>& frames) {
    std::vector<absl::Span<const uint8_t>> spans(frames.begin(), frames.end());
    size_t done = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (done < spans.size()) {
      absl::StatusOr<size_t> sent = frontend_->SendFrames(absl::MakeConstSpan(spans).subspan(done));
      ASSERT_TRUE(sent.ok()) << sent.status();
      done += *sent;
      if (done < spans.size()) {
        ASSERT_LT(absl::Now(), deadline) << "transmit ring stuck";
        ASSERT_TRUE(frontend_->WaitTx(absl::Milliseconds(100)).ok());
      }
    }
  }
  void Send(const FrameSpec& spec, absl::Span<const uint8_t> payload) {
    SendAll({Frame(spec, payload)});
  }

  // Up to `n` frames of UDP (or ICMP, with `icmp`) for the guest.
  std::vector<GuestFrame> Receive(size_t n, absl::Duration timeout = absl::Seconds(10),
                                  bool icmp = false) {
    std::vector<GuestFrame> out;
    const bool csum = frontend_->has_feature(vu_frontend::kVirtioNetFGuestCsum);
    const absl::Time deadline = absl::Now() + timeout;
    while (out.size() < n && absl::Now() < deadline) {
      absl::StatusOr<size_t> got = frontend_->ReceiveFrames(
          n - out.size(), deadline - absl::Now(), [&](const vu_frontend::ReceivedFrame& f) {
            GuestFrame g;
            g.frame.assign(f.data.begin(), f.data.end());
            g.vnet_flags = f.header.flags;
            const iovec iov = {g.frame.data(), g.frame.size()};
            if (!net::ParseFrame({&iov, 1}, &g.parsed).ok()) return;
            const bool udp = g.parsed.l4 == net::L4Kind::kUdp;
            if (udp == icmp) return;
            if (udp) {
              g.payload.assign(g.frame.begin() + g.parsed.payload_offset,
                               g.frame.begin() + g.parsed.payload_offset + g.parsed.payload_len);
              const uint16_t field = static_cast<uint16_t>(g.frame[g.parsed.l4_offset + 6] << 8 |
                                                           g.frame[g.parsed.l4_offset + 7]);
              if (csum) {
                // Left to the guest: zero, but never over IPv6 (zero is refused there).
                const uint16_t unset = g.parsed.l3 == net::L3Kind::kIpv4 ? 0 : 0xffff;
                g.checksum_ok = field == unset && (g.vnet_flags & virtio::kVirtioNetHdrFDataValid);
              } else if (g.parsed.l3 == net::L3Kind::kIpv4) {
                g.checksum_ok =
                    net::L4ChecksumV4(g.parsed.ip.src4, g.parsed.ip.dst4, IPPROTO_UDP, {&iov, 1},
                                      g.parsed.l4_offset, g.parsed.l4_len) == 0;
              } else {
                g.checksum_ok =
                    net::L4ChecksumV6(g.parsed.ip.src6, g.parsed.ip.dst6, IPPROTO_UDP, {&iov, 1},
                                      g.parsed.l4_offset, g.parsed.l4_len) == 0;
              }
            }
            out.push_back(std::move(g));
          });
      if (!got.ok()) {
        ADD_FAILURE() << got.status();
        break;
      }
    }
    return out;
  }

  net::GuestConfig guest_;
  std::string dir_;
  std::string path_;
  std::unique_ptr<tools::Backend> backend_;
  std::thread thread_;
  absl::Status run_status_;
  std::unique_ptr<Frontend> frontend_;
};

struct BufferCase {
  const char* name;
  bool mergeable;
  bool guest_csum;
  uint32_t buffer_size;
  uint32_t descriptors;
};

class UdpSizesTest : public UdpIntegrationTest, public ::testing::WithParamInterface<BufferCase> {};

TEST_P(UdpSizesTest, DatagramsBothWaysByteExact) {
  const BufferCase c = GetParam();
  StartBackend();
  FrontendOptions fo;
  fo.features = vu_frontend::kDefaultFeatures;
  if (!c.mergeable) fo.features &= ~Bit(vu_frontend::kVirtioNetFMrgRxbuf);
  if (c.guest_csum) fo.features |= Bit(vu_frontend::kVirtioNetFGuestCsum);
  fo.rx_buffer_size = c.buffer_size;
  fo.rx_descriptors = c.descriptors;
  fo.queue_size = c.buffer_size > 8192 ? 64 : 256;
  Connect(fo);
  ASSERT_EQ(frontend_->has_feature(vu_frontend::kVirtioNetFMrgRxbuf), c.mergeable);

  HostSocket host;
  const size_t kSizes[] = {1, 1472, 9000, 65507};
  sockaddr_storage from{};
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    const std::vector<uint8_t> payload = Pattern(kSizes[i], static_cast<uint32_t>(i));
    Send(Spec4(guest_.gateway4, 40000, host.port()), payload);
    std::optional<std::vector<uint8_t>> got = host.Receive(&from);
    ASSERT_TRUE(got.has_value()) << kSizes[i];
    EXPECT_EQ(*got, payload) << "guest to host, " << kSizes[i] << " bytes";
  }
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    const std::vector<uint8_t> payload = Pattern(kSizes[i], static_cast<uint32_t>(100 + i));
    host.SendTo(from, payload);
    std::vector<GuestFrame> frames = Receive(1);
    ASSERT_EQ(frames.size(), 1u) << kSizes[i];
    const GuestFrame& f = frames[0];
    EXPECT_EQ(f.payload, payload) << "host to guest, " << kSizes[i] << " bytes";
    EXPECT_TRUE(f.checksum_ok) << kSizes[i];
    EXPECT_EQ(f.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
    EXPECT_EQ(f.parsed.ip.dst4.s_addr, guest_.addr4.s_addr);
    EXPECT_EQ(f.parsed.src_port, host.port());
    EXPECT_EQ(f.parsed.dst_port, 40000);
  }
  EXPECT_EQ(frontend_->stats().rx_dropped, 0u);
  const net::UdpTranslator& udp = StoppedUdp();
  EXPECT_EQ(udp.stats().tx_datagrams, std::size(kSizes));
  EXPECT_EQ(udp.rx_stats().frames, std::size(kSizes));
  EXPECT_EQ(udp.rx_stats().too_big, 0u);
  EXPECT_EQ(udp.rx_stats().mismatches, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Buffers, UdpSizesTest,
    ::testing::Values(BufferCase{"Mergeable1526", true, false, 1526, 1},
                      BufferCase{"Mergeable4096", true, false, 4096, 1},
                      BufferCase{"Mergeable4096GuestCsum", true, true, 4096, 1},
                      BufferCase{"Mergeable4096In4Descriptors", true, false, 4096, 4},
                      // Without mergeable buffers a 64 KiB datagram needs a
                      // buffer that big: one descriptor, or a chain of 4 KiB.
                      BufferCase{"Single65562", false, false, 65562, 1},
                      BufferCase{"Chain17x4096", false, true, 17 * 4096, 17}),
    [](const ::testing::TestParamInfo<BufferCase>& info) { return info.param.name; });

// Without mergeable buffers, what does not fit the guest's buffers is
// dropped, counted, and does not disturb what follows.
TEST_F(UdpIntegrationTest, SmallBuffersWithoutMergeableDropWhatDoesNotFit) {
  StartBackend();
  FrontendOptions fo;
  fo.features = vu_frontend::kDefaultFeatures & ~Bit(vu_frontend::kVirtioNetFMrgRxbuf);
  fo.rx_buffer_size = 1526;
  Connect(fo);
  HostSocket host;
  Send(Spec4(guest_.gateway4, 40001, host.port()), Pattern(1, 1));
  sockaddr_storage from;
  ASSERT_TRUE(host.Receive(&from).has_value());
  host.SendTo(from, Pattern(9000, 2));
  host.SendTo(from, Pattern(1472, 3));
  host.SendTo(from, Pattern(65507, 4));
  host.SendTo(from, Pattern(1, 5));
  std::vector<GuestFrame> frames = Receive(2);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].payload, Pattern(1472, 3));
  EXPECT_EQ(frames[1].payload, Pattern(1, 5));
  EXPECT_EQ(StoppedUdp().rx_stats().too_big, 2u);
}

// 10,000 datagrams each way, paced by what the other end has taken: none lost.
TEST_F(UdpIntegrationTest, TenThousandDatagramsWithoutLoss) {
  StartBackend();
  Connect();
  HostSocket host;
  constexpr int kCount = 10000;
  constexpr int kBurst = 100;
  constexpr size_t kSize = 1000;
  sockaddr_storage from{};
  int received = 0;
  for (int sent = 0; sent < kCount; sent += kBurst) {
    std::vector<std::vector<uint8_t>> frames;
    for (int i = sent; i < sent + kBurst; ++i) {
      std::vector<uint8_t> p = Pattern(kSize, static_cast<uint32_t>(i));
      frames.push_back(Frame(Spec4(guest_.gateway4, 40002, host.port()), p));
    }
    SendAll(frames);
    for (; received < sent + kBurst; ++received) {
      std::optional<std::vector<uint8_t>> got = host.Receive(&from);
      ASSERT_TRUE(got.has_value()) << "guest to host: lost after " << received;
      ASSERT_EQ(*got, Pattern(kSize, static_cast<uint32_t>(received))) << received;
    }
  }
  received = 0;
  for (int sent = 0; sent < kCount; sent += kBurst) {
    for (int i = sent; i < sent + kBurst; ++i) {
      host.SendTo(from, Pattern(kSize, static_cast<uint32_t>(kCount + i)));
    }
    std::vector<GuestFrame> frames = Receive(kBurst);
    ASSERT_EQ(frames.size(), static_cast<size_t>(kBurst)) << "host to guest: after " << received;
    for (const GuestFrame& f : frames) {
      ASSERT_EQ(f.payload, Pattern(kSize, static_cast<uint32_t>(kCount + received))) << received;
      ++received;
    }
  }
  const net::UdpTranslator& udp = StoppedUdp();
  EXPECT_EQ(udp.stats().tx_datagrams, static_cast<uint64_t>(kCount));
  EXPECT_EQ(udp.stats().tx_buffer_full, 0u);
  EXPECT_EQ(udp.rx_stats().frames, static_cast<uint64_t>(kCount));
}

// 10,000 datagrams each way at a steady 5,000 a second, the sender never
// waiting for the receiver (which reads concurrently): none lost, each in
// order and byte-exact. The rate leaves the readers tens of milliseconds of
// slack on a loaded machine: the host socket holds some 200 of them
// (net.core.rmem_max caps its buffer), the guest's ring 256.
TEST_F(UdpIntegrationTest, TenThousandDatagramsAtAPacedRate) {
  StartBackend();
  Connect();
  HostSocket host;
  constexpr int kCount = 10000;
  constexpr int kPerTick = 5;  // Every millisecond.
  constexpr size_t kSize = 1200;
  // Guest to host: the test thread sends, a host thread receives.
  sockaddr_storage from{};
  int received = 0;
  bool in_order = true;
  std::thread reader([&] {
    // Cheap per datagram (one receive buffer, reused), so that the reader
    // keeps up under the sanitizers too.
    std::vector<uint8_t> buf(kSize + 1);
    std::vector<uint8_t> want;
    for (; received < kCount; ++received) {
      pollfd p{host.fd(), POLLIN, 0};
      if (poll(&p, 1, 5000) != 1) return;
      socklen_t len = sizeof(from);
      const ssize_t n =
          recvfrom(host.fd(), buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
      want = Pattern(kSize, static_cast<uint32_t>(received));
      in_order = in_order && n == static_cast<ssize_t>(kSize) &&
                 std::memcmp(buf.data(), want.data(), kSize) == 0;
    }
  });
  const absl::Time start = absl::Now();
  for (int sent = 0; sent < kCount; sent += kPerTick) {
    std::vector<std::vector<uint8_t>> frames;
    for (int i = sent; i < sent + kPerTick; ++i) {
      frames.push_back(Frame(Spec4(guest_.gateway4, 40003, host.port()),
                             Pattern(kSize, static_cast<uint32_t>(i))));
    }
    SendAll(frames);
    absl::SleepFor(start + absl::Milliseconds(sent / kPerTick + 1) - absl::Now());
  }
  reader.join();
  EXPECT_EQ(received, kCount) << "guest to host";
  EXPECT_TRUE(in_order) << "guest to host: a datagram out of order or changed";
  // Host to guest: a host thread sends at the same rate, the test thread
  // receives as the guest.
  std::thread writer([&] {
    const absl::Time begin = absl::Now();
    for (int sent = 0; sent < kCount; sent += kPerTick) {
      for (int i = sent; i < sent + kPerTick; ++i) {
        host.SendTo(from, Pattern(kSize, static_cast<uint32_t>(kCount + i)));
      }
      absl::SleepFor(begin + absl::Milliseconds(sent / kPerTick + 1) - absl::Now());
    }
  });
  int got = 0;
  while (got < kCount) {
    std::vector<GuestFrame> frames = Receive(kCount - got, absl::Seconds(5));
    if (frames.empty()) break;
    for (const GuestFrame& f : frames) {
      ASSERT_EQ(f.payload, Pattern(kSize, static_cast<uint32_t>(kCount + got))) << got;
      ASSERT_TRUE(f.checksum_ok) << got;
      ++got;
    }
  }
  writer.join();
  EXPECT_EQ(got, kCount) << "host to guest";
  const net::UdpTranslator& udp = StoppedUdp();
  EXPECT_EQ(udp.stats().tx_buffer_full, 0u);
  EXPECT_EQ(udp.rx_stats().too_big + udp.rx_stats().refused, 0u);
}

TEST_F(UdpIntegrationTest, ManyFlowsAtOnce) {
  StartBackend();
  Connect();
  HostSocket a, b;
  constexpr int kFlows = 300;
  std::vector<std::vector<uint8_t>> frames;
  frames.reserve(kFlows);
  for (int i = 0; i < kFlows; ++i) {
    frames.push_back(
        Frame(Spec4(guest_.gateway4, static_cast<uint16_t>(20000 + i), i % 2 ? a.port() : b.port()),
              Pattern(64, static_cast<uint32_t>(i))));
  }
  SendAll(frames);
  // Each host socket answers every sender, echoing its datagram.
  for (HostSocket* s : {&a, &b}) {
    for (int i = 0; i < kFlows / 2; ++i) {
      sockaddr_storage from;
      std::optional<std::vector<uint8_t>> got = s->Receive(&from);
      ASSERT_TRUE(got.has_value());
      s->SendTo(from, *got);
    }
  }
  std::vector<GuestFrame> back = Receive(kFlows);
  ASSERT_EQ(back.size(), static_cast<size_t>(kFlows));
  std::vector<bool> seen(kFlows);
  for (const GuestFrame& f : back) {
    const int i = f.parsed.dst_port - 20000;
    ASSERT_GE(i, 0);
    ASSERT_LT(i, kFlows);
    EXPECT_FALSE(seen[i]);
    seen[i] = true;
    EXPECT_EQ(f.payload, Pattern(64, static_cast<uint32_t>(i)));
    EXPECT_EQ(f.parsed.src_port, i % 2 ? a.port() : b.port());
  }
  EXPECT_EQ(backend_->flows() != nullptr, true);
  const net::UdpTranslator& udp = StoppedUdp();
  EXPECT_EQ(udp.stats().flows_opened, static_cast<uint64_t>(kFlows));
}

TEST_F(UdpIntegrationTest, InboundForwardRepliesToTheSender) {
  uint16_t port;
  {
    HostSocket probe;
    port = probe.port();
  }
  net::UdpTranslatorOptions udp;
  absl::StatusOr<std::vector<net::PortForward>> f =
      net::ParsePortForwards(absl::StrCat("127.0.0.1/", port, ":7000"));
  ASSERT_TRUE(f.ok()) << f.status();
  udp.forwards = *f;
  StartBackend(udp);
  Connect();
  HostSocket peer;
  peer.SendTo(Loopback(AF_INET, port), Pattern(1200, 1));
  std::vector<GuestFrame> frames = Receive(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload, Pattern(1200, 1));
  EXPECT_EQ(frames[0].parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(frames[0].parsed.src_port, peer.port());
  EXPECT_EQ(frames[0].parsed.dst_port, 7000);
  EXPECT_TRUE(frames[0].checksum_ok);

  Send(Spec4(guest_.gateway4, 7000, peer.port()), Pattern(65507, 2));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> reply = peer.Receive(&from);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(*reply, Pattern(65507, 2));
  EXPECT_EQ(PortOf(from), port);
}

TEST_F(UdpIntegrationTest, DnsThroughTheHostResolver) {
  HostSocket resolver;
  // As RulesFromConfig maps the gateway for a resolver on the host's
  // loopback, but to a port of ours: the real resolvers' port 53 is not.
  net::ForwardRules forward = net::RulesFromConfig(guest_, {});
  forward.dns = {{{net::InetAddr::V4(guest_.gateway4), 53},
                  {net::InetAddr::V4(Ip4("127.0.0.1")), resolver.port()}}};
  StartBackend({}, forward);
  Connect();
  const std::vector<uint8_t> query = Pattern(33, 7);
  Send(Spec4(guest_.gateway4, 53000, 53), query);
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = resolver.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, query);
  resolver.SendTo(from, Pattern(200, 8));
  std::vector<GuestFrame> frames = Receive(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload, Pattern(200, 8));
  EXPECT_EQ(frames[0].parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(frames[0].parsed.src_port, 53);
  EXPECT_EQ(frames[0].parsed.dst_port, 53000);
}

TEST_F(UdpIntegrationTest, PortUnreachableReachesTheGuest) {
  StartBackend();
  Connect();
  uint16_t closed;
  {
    HostSocket probe;
    closed = probe.port();
  }
  Send(Spec4(guest_.gateway4, 40003, closed), Pattern(16, 1));
  std::vector<GuestFrame> frames = Receive(1, absl::Seconds(10), /*icmp=*/true);
  ASSERT_EQ(frames.size(), 1u);
  const GuestFrame& f = frames[0];
  EXPECT_EQ(f.parsed.l4, net::L4Kind::kIcmp);
  EXPECT_EQ(f.parsed.icmp.type, 3);
  EXPECT_EQ(f.parsed.icmp.code, 3);
  EXPECT_EQ(f.parsed.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(f.parsed.ip.dst4.s_addr, guest_.addr4.s_addr);
  // The quoted UDP header names the guest's ports.
  const size_t udp = f.parsed.l4_offset + 8 + 20;
  ASSERT_GE(f.frame.size(), udp + 8);
  EXPECT_EQ(f.frame[udp] << 8 | f.frame[udp + 1], 40003);
  EXPECT_EQ(f.frame[udp + 2] << 8 | f.frame[udp + 3], closed);
}

TEST_F(UdpIntegrationTest, Ipv6BothWays) {
  if (!HaveIpv6Loopback()) GTEST_SKIP() << "no IPv6 loopback";
  StartBackend();
  Connect();
  HostSocket host(AF_INET6);
  Send(Spec6(guest_.gateway6, 40004, host.port()), Pattern(9000, 1));
  sockaddr_storage from;
  std::optional<std::vector<uint8_t>> got = host.Receive(&from);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, Pattern(9000, 1));
  host.SendTo(from, Pattern(9000, 2));
  std::vector<GuestFrame> frames = Receive(1);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload, Pattern(9000, 2));
  EXPECT_TRUE(frames[0].checksum_ok);
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&frames[0].parsed.ip.src6, &guest_.gateway6));
}

// Sends `payload` as UDP_SEGMENT datagrams of `gso_size` from `fd` to `to`.
void SendSegmented(int fd, const sockaddr_storage& to, absl::Span<const uint8_t> payload,
                   uint16_t gso_size) {
  iovec iov = {const_cast<uint8_t*>(payload.data()), payload.size()};
  union {
    cmsghdr header;
    char bytes[CMSG_SPACE(sizeof(uint16_t))];
  } control = {};
  msghdr m{};
  m.msg_name = const_cast<sockaddr_storage*>(&to);
  m.msg_namelen = to.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control.bytes;
  m.msg_controllen = sizeof(control.bytes);
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_UDP;
  c->cmsg_type = UDP_SEGMENT;
  c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
  std::memcpy(CMSG_DATA(c), &gso_size, sizeof(gso_size));
  ASSERT_EQ(sendmsg(fd, &m, 0), static_cast<ssize_t>(payload.size())) << strerror(errno);
}

// UDP segmentation offload both ways through the real backend and a
// frontend that negotiated it (the test guest's 6.1 kernel has no USO): a
// UDP_L4 frame from the guest reaches the host as its datagrams; datagrams a
// host sender coalesced (UDP_SEGMENT) reach the guest as one UDP_L4 frame
// whose header the driver's checks pass. IPv4 and IPv6.
TEST_F(UdpIntegrationTest, SegmentationOffloadBothWays) {
  StartBackend();
  FrontendOptions fo;
  fo.features = vu_frontend::kDefaultFeatures | vu_frontend::kOffloadFeatures;
  fo.rx_buffer_size = 4096;
  Connect(fo);
  ASSERT_TRUE(frontend_->has_feature(vu_frontend::kVirtioNetFHostUso));
  ASSERT_TRUE(frontend_->has_feature(vu_frontend::kVirtioNetFGuestUso4));
  ASSERT_TRUE(frontend_->has_feature(vu_frontend::kVirtioNetFGuestUso6));
  for (bool v6 : {false, true}) {
    if (v6 && !HaveIpv6Loopback()) continue;
    SCOPED_TRACE(v6 ? "IPv6" : "IPv4");
    HostSocket host(v6 ? AF_INET6 : AF_INET);
    const uint16_t sport = v6 ? 40011 : 40010;
    const FrameSpec spec = v6 ? Spec6(guest_.gateway6, sport, host.port())
                              : Spec4(guest_.gateway4, sport, host.port());
    // Guest to host: 20 datagrams of 1200 bytes and one of 100, one frame.
    const std::vector<uint8_t> up = Pattern(20 * 1200 + 100, 3);
    const std::vector<uint8_t> frame = Frame(spec, up);
    std::optional<virtio::VirtioNetHdr> hdr = vu_frontend::OffloadHeader(frame, 1200);
    ASSERT_TRUE(hdr.has_value());
    ASSERT_EQ(hdr->gso_type, vu_frontend::kGsoUdpL4);
    const vu_frontend::TxFrame tx{.header = *hdr, .data = frame};
    ASSERT_EQ(frontend_->SendFramesWithHeaders({&tx, 1}).value(), 1u);
    sockaddr_storage from{};
    for (size_t off = 0; off < up.size(); off += 1200) {
      std::optional<std::vector<uint8_t>> got = host.Receive(&from);
      ASSERT_TRUE(got.has_value()) << "datagram at " << off;
      EXPECT_EQ(*got, std::vector<uint8_t>(up.begin() + off,
                                           up.begin() + std::min(up.size(), off + 1200)));
    }
    // Host to guest: 30 datagrams of 1000 bytes coalesced.
    const std::vector<uint8_t> down = Pattern(30 * 1000, 4);
    SendSegmented(host.fd(), from, down, 1000);
    absl::StatusOr<vu_frontend::OwnedFrame> f = frontend_->ReceiveFrameWithHeader(absl::Seconds(5));
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(vu_frontend::CheckHeader(f->header, f->data, frontend_->features(),
                                       vu_frontend::Direction::kToGuest),
              vu_frontend::HeaderProblem::kNone);
    EXPECT_EQ(f->header.gso_type, vu_frontend::kGsoUdpL4);
    EXPECT_EQ(f->header.gso_size, 1000);
    net::ParsedFrame p;
    const iovec iov = {f->data.data(), f->data.size()};
    ASSERT_TRUE(net::ParseFrame({&iov, 1}, &p).ok());
    EXPECT_EQ(std::vector<uint8_t>(f->data.begin() + p.payload_offset,
                                   f->data.begin() + p.payload_offset + p.payload_len),
              down);
  }
  const net::UdpTranslator& udp = StoppedUdp();
  EXPECT_GE(udp.stats().tx_segmented, 1u);
  EXPECT_GE(udp.rx_stats().uso_frames, 1u);
  EXPECT_EQ(backend_->dispatch_stats().offload_refused, 0u);
}

}  // namespace
}  // namespace vunet
