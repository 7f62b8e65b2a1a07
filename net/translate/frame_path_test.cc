#include "net/translate/frame_path.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "net/gateway/from_config.h"
#include "net/packet/checksum.h"
#include "net/testing/test_frames.h"
#include "net/testing/world.h"

namespace vunet::net {
namespace {

using testing::Build;
using testing::Ip4;
using vu::testing::GuestRxRing;

constexpr uint16_t kGuestPort = 41000;

std::vector<uint8_t> Pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed * 131 + i * 7 + (i >> 9));
  return v;
}

UniqueFd Loopback(int type, uint16_t* port) {
  UniqueFd fd(socket(AF_INET, type | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  if (type == SOCK_STREAM) {
    EXPECT_EQ(listen(fd.get(), 4), 0);
  }
  socklen_t len = sizeof(a);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

// A guest at MTU 1500 behind the test gateway, its frames built by hand.
class Guest {
 public:
  explicit Guest(const GuestConfig& g) : g_(g) {}

  FrameSpec Spec(uint8_t protocol, uint16_t dport) const {
    FrameSpec s;
    s.src_mac = g_.guest_mac;
    s.dst_mac = g_.gateway_mac;
    s.src4 = g_.addr4;
    s.dst4 = g_.gateway4;
    s.protocol = protocol;
    s.src_port = kGuestPort;
    s.dst_port = dport;
    return s;
  }
  std::vector<uint8_t> Tcp(uint16_t dport, uint8_t flags, uint32_t seq, uint32_t ack) const {
    FrameSpec s = Spec(IPPROTO_TCP, dport);
    s.tcp_flags = flags;
    s.tcp_seq = seq;
    s.tcp_ack = ack;
    s.tcp_window = 65535;
    return Build(s, {});
  }
  std::vector<uint8_t> Udp(uint16_t dport, const std::vector<uint8_t>& payload) const {
    return Build(Spec(IPPROTO_UDP, dport), payload);
  }
  std::vector<uint8_t> ArpRequest() const {
    std::vector<uint8_t> f(42, 0);
    std::memset(f.data(), 0xff, 6);
    std::memcpy(f.data() + 6, g_.guest_mac.bytes, 6);
    f[12] = 0x08, f[13] = 0x06;
    const uint8_t arp[] = {0, 1, 8, 0, 6, 4, 0, 1};
    std::memcpy(f.data() + 14, arp, sizeof(arp));
    std::memcpy(f.data() + 22, g_.guest_mac.bytes, 6);
    std::memcpy(f.data() + 28, &g_.addr4, 4);
    std::memcpy(f.data() + 38, &g_.gateway4, 4);
    return f;
  }
  std::vector<uint8_t> DhcpDiscover() const {
    FrameSpec s;
    s.src_mac = g_.guest_mac;
    s.dst_mac = kBroadcastMac;
    s.src4 = Ip4("0.0.0.0");
    s.dst4 = Ip4("255.255.255.255");
    s.protocol = IPPROTO_UDP;
    s.src_port = 68;
    s.dst_port = 67;
    std::vector<uint8_t> m(240, 0);
    m[0] = 1, m[1] = 1, m[2] = 6;
    m[4] = 0x12, m[5] = 0x34;
    std::memcpy(&m[28], g_.guest_mac.bytes, 6);
    m[236] = 99, m[237] = 130, m[238] = 83, m[239] = 99;
    const uint8_t opts[] = {53, 1, 1, 255};
    m.insert(m.end(), opts, opts + sizeof(opts));
    return Build(s, m);
  }

 private:
  GuestConfig g_;
};

// Control replies (ARP, DHCP), TCP data and UDP datagrams interleaved into
// one small receive ring: every used entry is checked, in order, byte for
// byte, and nothing is lost, duplicated or reordered within its stream.
TEST(FramePath, InterleavesControlTcpAndUdpInOneSmallRing) {
  testing::TranslatorWorld::Options wo;
  wo.guest.mtu = 1500;
  wo.rx = {.queue_size = 16, .mergeable = true};
  testing::TranslatorWorld world(wo);
  FramePathOptions o;
  o.arp = ToArpConfig(world.guest);
  o.dhcp = ToDhcpConfig(world.guest);
  o.icmp.reset();
  auto path = FramePath::Create({.flows = world.flows.get(),
                                 .rx = &world.ring.rx(),
                                 .watcher = &world.watcher,
                                 .forward = world.forward.get(),
                                 .guest = &world.guest},
                                o);
  ASSERT_TRUE(path.ok()) << path.status();
  FramePath& p = **path;
  Guest guest(world.guest);

  uint16_t tcp_port = 0, udp_port = 0;
  UniqueFd listener = Loopback(SOCK_STREAM, &tcp_port);
  UniqueFd udp_host = Loopback(SOCK_DGRAM, &udp_port);

  // Sends a transmit batch, as the transmit handler would.
  auto send = [&](std::vector<std::vector<uint8_t>> frames) {
    std::vector<std::vector<iovec>> iovs;
    iovs.reserve(frames.size());
    for (std::vector<uint8_t>& f : frames) iovs.push_back(testing::Split(f, 300));
    for (const std::vector<iovec>& iov : iovs) p.sink()->OnFrame(vu::VirtioNetHdr{}, iov);
    p.sink()->OnBatchEnd();
  };
  // The end of a loop iteration, as the backend's.
  auto flush = [&] {
    if (world.ring.rx().Flush()) {
      p.OnRxAvailable();
      world.ring.rx().Flush();
    }
  };

  world.ring.Post(16, 2048);
  const uint32_t isn = 1000;
  send({guest.Tcp(tcp_port, kTcpSyn, isn, 0)});
  pollfd pf{listener.get(), POLLIN, 0};
  ASSERT_EQ(poll(&pf, 1, 2000), 1);
  UniqueFd peer(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(peer.valid());

  const std::vector<uint8_t> data = Pattern(300'000, 1);
  size_t written = 0;
  std::vector<uint8_t> got_tcp;
  uint32_t our_seq = 0;  // The translator's, learned from its SYN-ACK.
  bool established = false;
  int arp_replies = 0, dhcp_replies = 0, udp_got = 0, udp_sent = 0;
  size_t entries = 0;
  for (int round = 0; round < 4000 && (got_tcp.size() < data.size() || udp_got < 50); ++round) {
    world.watcher.Poll([&](uint64_t tag, uint32_t events) { p.OnSocketEvent(tag, events); });
    p.OnRxAvailable();
    flush();
    // The guest reads everything published, checks each frame, and posts
    // as many buffers back: the ring stays small and full.
    int taken = 0;
    for (GuestRxRing::Frame& f : world.ring.Take()) {
      ++taken;
      entries += f.buffers;
      ParsedFrame parsed;
      ASSERT_TRUE(testing::Parse(f.bytes, &parsed).ok());
      EXPECT_EQ(parsed.dst_mac, world.guest.guest_mac);
      if (parsed.l3 == L3Kind::kArp) {
        EXPECT_EQ(parsed.arp.op, 2);
        ++arp_replies;
      } else if (parsed.l4 == L4Kind::kUdp && parsed.src_port == 67) {
        ++dhcp_replies;
      } else if (parsed.l4 == L4Kind::kUdp) {
        EXPECT_EQ(parsed.src_port, udp_port);
        const std::vector<uint8_t> want = Pattern(100 + udp_got, 1000 + udp_got);
        ASSERT_EQ(parsed.payload_len, want.size()) << "datagram " << udp_got;
        EXPECT_TRUE(std::equal(want.begin(), want.end(), f.bytes.begin() + parsed.payload_offset));
        ++udp_got;
      } else if (parsed.l4 == L4Kind::kTcp) {
        ASSERT_EQ(parsed.dst_port, kGuestPort);
        if (parsed.tcp.flags & kTcpSyn) {
          our_seq = parsed.tcp.seq + 1;
          established = true;
          continue;
        }
        if (parsed.payload_len == 0) continue;
        // In order: every byte exactly once.
        ASSERT_EQ(parsed.tcp.seq, our_seq + static_cast<uint32_t>(got_tcp.size()));
        got_tcp.insert(got_tcp.end(), f.bytes.begin() + parsed.payload_offset,
                       f.bytes.begin() + parsed.payload_offset + parsed.payload_len);
      }
    }
    world.ring.Post(taken, 2048);
    if (established && written < data.size()) {
      const ssize_t n = ::send(peer.get(), data.data() + written,
                               std::min<size_t>(data.size() - written, 20000), MSG_DONTWAIT);
      if (n > 0) written += static_cast<size_t>(n);
    }
    char echo[2048];
    sockaddr_in from{};
    socklen_t from_len = sizeof(from);
    const ssize_t e = recvfrom(udp_host.get(), echo, sizeof(echo), MSG_DONTWAIT,
                               reinterpret_cast<sockaddr*>(&from), &from_len);
    if (e > 0) sendto(udp_host.get(), echo, e, 0, reinterpret_cast<sockaddr*>(&from), from_len);
    // The guest's next batch: control requests, a datagram, its ACK.
    std::vector<std::vector<uint8_t>> batch;
    if (round % 3 == 0) batch.push_back(guest.ArpRequest());
    if (round % 7 == 0) batch.push_back(guest.DhcpDiscover());
    if (udp_sent < 50 && round % 2 == 0) {
      batch.push_back(guest.Udp(udp_port, Pattern(100 + udp_sent, 1000 + udp_sent)));
      ++udp_sent;
    }
    if (established) {
      batch.push_back(
          guest.Tcp(tcp_port, kTcpAck, isn + 1, our_seq + static_cast<uint32_t>(got_tcp.size())));
    }
    send(batch);
  }
  EXPECT_EQ(got_tcp.size(), data.size());
  EXPECT_TRUE(got_tcp == data);
  EXPECT_EQ(udp_got, 50);
  EXPECT_GT(arp_replies, 10);
  EXPECT_GT(dhcp_replies, 5);
  EXPECT_EQ(world.ring.returned_empty(), 0);
  EXPECT_EQ(world.ring.rx().stats().writer_bugs, 0u);
  // Every used entry was accounted to a frame (num_buffers).
  EXPECT_GE(entries, static_cast<size_t>(world.ring.rx().stats().frames));
}

}  // namespace
}  // namespace vunet::net
