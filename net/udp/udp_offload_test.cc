// The UDP translator with segmentation offloads: a guest's UDP_L4 frames
// (HOST_USO) sent as UDP_SEGMENT messages, or datagram by datagram where
// the socket refuses that.

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/testing/test_frames.h"
#include "net/testing/world.h"
#include "net/udp/udp.h"
#include "vu/common.h"
#include "vu/testing/guest_rx.h"

namespace vunet::net {
namespace {

using testing::Build;
using testing::Split;
using testing::TranslatorWorld;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  return v;
}

// A UDP socket on the loopback of `family`, port chosen by the kernel.
struct HostSocket {
  explicit HostSocket(int family) {
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
    ok = bind(fd.get(), reinterpret_cast<sockaddr*>(&a), len) == 0 &&
         getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0;
    port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&a)->sin_port
                                   : reinterpret_cast<sockaddr_in6*>(&a)->sin6_port);
  }
  // One datagram, or nullopt after `timeout_ms`.
  std::optional<std::vector<uint8_t>> Receive(int timeout_ms = 2000) {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return std::nullopt;
    std::vector<uint8_t> buf(70000);
    const ssize_t n = recv(fd.get(), buf.data(), buf.size(), 0);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
  UniqueFd fd;
  uint16_t port = 0;
  bool ok = false;
};

// The guest's datagrams and the translator they reach, as the dispatcher
// hands them over (each checked by CheckGuestOffload there).
struct Guest {
  explicit Guest(bool uso = true, bool mergeable = true) {
    TranslatorWorld::Options o;
    o.rx.guest_csum = true;
    o.rx.guest_uso = uso;
    o.rx.mergeable = mergeable;
    o.rx.memory = 128 << 20;
    o.clock = &testing::ManualClock::Now;
    world = std::make_unique<TranslatorWorld>(o);
    udp = UdpTranslator::Create(world->Env(), {}).value();
  }
  ~Guest() { udp->Shutdown(); }

  // A frame from the guest to the gateway's `port` (IPv4 or IPv6), with the
  // header its driver writes for `gso_size` (0: none).
  std::pair<std::vector<uint8_t>, vu::VirtioNetHdr> Frame(bool v6, uint16_t port, uint16_t sport,
                                                          const std::vector<uint8_t>& payload,
                                                          uint16_t gso_size) {
    FrameSpec s;
    s.src_mac = world->guest.guest_mac;
    s.dst_mac = world->guest.gateway_mac;
    s.ipv6 = v6;
    s.src4 = world->guest.addr4;
    s.dst4 = world->guest.gateway4;
    s.src6 = world->guest.addr6;
    s.dst6 = world->guest.our_link_local6;
    s.src_port = sport;
    s.dst_port = port;
    vu::VirtioNetHdr h;
    if (gso_size != 0) {
      h.flags = vu::kVirtioNetHdrFNeedsCsum;
      h.gso_type = virtio::kVirtioNetHdrGsoUdpL4;
      h.gso_size = gso_size;
      h.csum_start = v6 ? 54 : 34;
      h.csum_offset = 6;
      h.hdr_len = static_cast<uint16_t>(h.csum_start + 8);
    }
    return {Build(s, payload), h};
  }

  // One transmit batch, each frame in iovec entries of `piece` bytes (more
  // than UIO_MAXIOV make a frame no socket takes).
  void SendBatch(std::vector<std::pair<std::vector<uint8_t>, vu::VirtioNetHdr>>&& frames,
                 size_t piece = 7) {
    std::vector<std::vector<iovec>> iovs;
    for (auto& [bytes, hdr] : frames) {
      iovs.push_back(Split(bytes, piece));
      ParsedFrame parsed;
      ASSERT_TRUE(ParseFrame(iovs.back(), &parsed).ok());
      world->forward->guest().Learn(parsed);
      udp->OnFrame(hdr, iovs.back(), parsed);
    }
    udp->OnBatchEnd();
  }

  // Polls until `n` frames reached the guest (or 2 s passed).
  std::vector<vu::testing::GuestRxRing::Frame> Receive(size_t n) {
    std::vector<vu::testing::GuestRxRing::Frame> got;
    for (int waited = 0; got.size() < n && waited < 2000; waited += 10) {
      world->watcher.Poll(udp.get(), 10);
      for (auto& f : world->ring.Take()) got.push_back(std::move(f));
    }
    return got;
  }

  std::unique_ptr<TranslatorWorld> world;
  std::unique_ptr<UdpTranslator> udp;
};

// Sends `payload` from `from` to `to` as one message with UDP_SEGMENT
// (datagrams of `gso_size`): over the loopback, a receiver with UDP_GRO
// gets it whole.
void SendSegmented(int from, const sockaddr_storage& to, socklen_t to_len,
                   const std::vector<uint8_t>& payload, uint16_t gso_size) {
  iovec iov = {const_cast<uint8_t*>(payload.data()), payload.size()};
  union {
    cmsghdr header;
    char bytes[CMSG_SPACE(sizeof(uint16_t))];
  } control = {};
  msghdr m{};
  m.msg_name = const_cast<sockaddr_storage*>(&to);
  m.msg_namelen = to_len;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control.bytes;
  m.msg_controllen = sizeof(control.bytes);
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_UDP;
  c->cmsg_type = UDP_SEGMENT;
  c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
  std::memcpy(CMSG_DATA(c), &gso_size, sizeof(gso_size));
  ASSERT_EQ(sendmsg(from, &m, 0), static_cast<ssize_t>(payload.size())) << strerror(errno);
}

// A datagram the guest sent reaches `host`; returns where it came from (the
// translator's socket), for replies.
sockaddr_storage OpenFlow(Guest& g, HostSocket& host, bool v6, socklen_t* len) {
  g.SendBatch({g.Frame(v6, host.port, 42000, {1, 2, 3}, 0)});
  sockaddr_storage from{};
  *len = sizeof(from);
  pollfd p{host.fd.get(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 2000), 1);
  char buf[16];
  EXPECT_EQ(recvfrom(host.fd.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), len),
            3);
  return from;
}

// The UDP payload of a guest frame, with its partial checksum finished and
// checked.
std::vector<uint8_t> GuestPayload(const vu::testing::GuestRxRing::Frame& f, bool* checksum_ok) {
  std::vector<uint8_t> frame = f.bytes;
  if (f.hdr.flags & vu::kVirtioNetHdrFNeedsCsum) {
    const size_t start = f.hdr.csum_start;
    const uint16_t c = InternetChecksum(frame.data() + start, frame.size() - start);
    testing::PutBe16(frame, start + f.hdr.csum_offset, c == 0 ? 0xffff : c);
  }
  ParsedFrame p;
  EXPECT_TRUE(testing::Parse(frame, &p).ok());
  const iovec iov = {frame.data(), frame.size()};
  *checksum_ok =
      (f.hdr.flags & vu::kVirtioNetHdrFDataValid) ||
      (p.l3 == L3Kind::kIpv4
           ? L4ChecksumV4(p.ip.src4, p.ip.dst4, IPPROTO_UDP, {&iov, 1}, p.l4_offset, p.l4_len)
           : L4ChecksumV6(p.ip.src6, p.ip.dst6, IPPROTO_UDP, {&iov, 1}, p.l4_offset, p.l4_len)) ==
          0;
  return std::vector<uint8_t>(
      frame.begin() + static_cast<ptrdiff_t>(p.payload_offset),
      frame.begin() + static_cast<ptrdiff_t>(p.payload_offset + p.payload_len));
}

bool HaveIpv6Loopback() {
  HostSocket s(AF_INET6);
  return s.ok;
}

// Expects `payload` at the host in datagrams of `gso_size` (the last
// shorter), in order.
void ExpectDatagrams(HostSocket& host, const std::vector<uint8_t>& payload, size_t gso_size) {
  for (size_t off = 0; off < payload.size(); off += gso_size) {
    const size_t len = std::min(gso_size, payload.size() - off);
    std::optional<std::vector<uint8_t>> got = host.Receive();
    ASSERT_TRUE(got.has_value()) << "datagram at " << off << " missing";
    EXPECT_EQ(*got, std::vector<uint8_t>(payload.begin() + static_cast<ptrdiff_t>(off),
                                         payload.begin() + static_cast<ptrdiff_t>(off + len)))
        << "datagram at " << off;
  }
}

TEST(UdpOffloadTest, SegmentedFramesReachTheHostAsTheirDatagrams) {
  for (bool v6 : {false, true}) {
    if (v6 && !HaveIpv6Loopback()) continue;
    Guest g;
    HostSocket host(v6 ? AF_INET6 : AF_INET);
    ASSERT_TRUE(host.ok);
    // 10 full datagrams and a short one, in 97-byte iovec entries (headers
    // and datagrams straddle them); a 64 KiB one of 1472-byte datagrams.
    const std::vector<uint8_t> payload = Pattern(10 * 1200 + 345, 3);
    g.SendBatch({g.Frame(v6, host.port, 41000, payload, 1200)}, 97);
    ExpectDatagrams(host, payload, 1200);
    const std::vector<uint8_t> big = Pattern(v6 ? 65527 : 65507, 9);
    g.SendBatch({g.Frame(v6, host.port, 41000, big, 1472)}, 1000);
    ExpectDatagrams(host, big, 1472);
    EXPECT_FALSE(host.Receive(50).has_value());
    const UdpTranslator::Stats& s = g.udp->stats();
    EXPECT_EQ(s.tx_segmented, 2u);
    EXPECT_EQ(s.tx_datagrams, 11u + (big.size() + 1471) / 1472);
    EXPECT_EQ(s.tx_split, 0u);
    EXPECT_EQ(s.malformed, 0u);
  }
}

// Segmented and plain datagrams of one batch to two sockets: one sendmmsg
// per socket, each message with its own segmentation, in order.
TEST(UdpOffloadTest, SegmentedAndPlainDatagramsShareABatch) {
  Guest g;
  HostSocket a(AF_INET);
  HostSocket b(AF_INET);
  const std::vector<uint8_t> p1 = Pattern(5000, 1), p2 = Pattern(100, 2), p3 = Pattern(3000, 3);
  g.SendBatch({g.Frame(false, a.port, 41001, p1, 1000), g.Frame(false, b.port, 41002, p2, 0),
               g.Frame(false, a.port, 41001, p2, 0), g.Frame(false, b.port, 41002, p3, 1400)});
  ExpectDatagrams(a, p1, 1000);
  ExpectDatagrams(a, p2, 100);
  ExpectDatagrams(b, p2, 100);
  ExpectDatagrams(b, p3, 1400);
  EXPECT_EQ(g.udp->stats().tx_datagrams, 5u + 1 + 1 + 3);
  // A request of one datagram's worth is that datagram.
  g.SendBatch({g.Frame(false, a.port, 41001, p2, 100)});
  ExpectDatagrams(a, p2, 100);
  EXPECT_EQ(g.udp->stats().tx_segmented, 2u);
}

// More segments than UDP_SEGMENT takes (UDP_MAX_SEGMENTS) or than we would
// send one by one: dropped and counted, nothing sent.
TEST(UdpOffloadTest, TooManySegmentsAreDropped) {
  Guest g;
  HostSocket host(AF_INET);
  g.SendBatch({g.Frame(false, host.port, 41003, Pattern(300, 4), 1)});
  EXPECT_FALSE(host.Receive(100).has_value());
  EXPECT_EQ(g.udp->stats().tx_errors, 1u);
  EXPECT_EQ(g.udp->stats().tx_split, 1u);
  // A segmentation request that is not UDP's, or of size 0, is refused.
  auto [frame, hdr] = g.Frame(false, host.port, 41003, Pattern(300, 4), 100);
  hdr.gso_type = virtio::kVirtioNetHdrGsoTcpv4;
  g.SendBatch({{frame, hdr}});
  hdr.gso_type = virtio::kVirtioNetHdrGsoUdpL4;
  hdr.gso_size = 0;
  g.SendBatch({{frame, hdr}});
  EXPECT_EQ(g.udp->stats().malformed, 2u);
  EXPECT_FALSE(host.Receive(100).has_value());
}

// Datagrams the host sends with UDP_SEGMENT reach a guest with USO as one
// frame (UDP_L4, gso_size theirs, the checksum partial), over IPv4 and
// IPv6, in mergeable and in big receive buffers.
TEST(UdpOffloadTest, CoalescedDatagramsReachAUsoGuestAsOneFrame) {
  for (bool mergeable : {true, false}) {
    for (bool v6 : {false, true}) {
      if (v6 && !HaveIpv6Loopback()) continue;
      SCOPED_TRACE(std::string(v6 ? "IPv6" : "IPv4") + (mergeable ? ", mergeable" : ", big"));
      Guest g(/*uso=*/true, mergeable);
      g.world->ring.Post(64, mergeable ? 2048 : 65562);
      HostSocket host(v6 ? AF_INET6 : AF_INET);
      socklen_t len;
      const sockaddr_storage to = OpenFlow(g, host, v6, &len);
      const std::vector<uint8_t> payload = Pattern(10 * 1000 + 500, 5);
      SendSegmented(host.fd.get(), to, len, payload, 1000);
      std::vector<vu::testing::GuestRxRing::Frame> frames = g.Receive(1);
      ASSERT_EQ(frames.size(), 1u);
      const vu::VirtioNetHdr& h = frames[0].hdr;
      EXPECT_EQ(h.gso_type, virtio::kVirtioNetHdrGsoUdpL4);
      EXPECT_EQ(h.gso_size, 1000);
      EXPECT_EQ(h.flags, vu::kVirtioNetHdrFNeedsCsum);
      EXPECT_EQ(h.csum_start, v6 ? 54 : 34);
      EXPECT_EQ(h.csum_offset, 6);
      EXPECT_EQ(h.hdr_len, h.csum_start + 8);
      bool checksum_ok = false;
      EXPECT_EQ(GuestPayload(frames[0], &checksum_ok), payload);
      EXPECT_TRUE(checksum_ok);
      EXPECT_EQ(g.udp->rx_stats().uso_frames, 1u);
      // A plain datagram after it is a plain frame.
      SendSegmented(host.fd.get(), to, len, Pattern(700, 6), 1000);
      frames = g.Receive(1);
      ASSERT_EQ(frames.size(), 1u);
      EXPECT_EQ(frames[0].hdr.gso_type, vu::kVirtioNetHdrGsoNone);
      EXPECT_EQ(GuestPayload(frames[0], &checksum_ok), Pattern(700, 6));
    }
  }
}

// A guest without USO gets one datagram a frame, as before: the socket has
// no UDP_GRO and the kernel segments.
TEST(UdpOffloadTest, WithoutUsoEachDatagramIsAFrame) {
  Guest g(/*uso=*/false);
  g.world->ring.Post(64, 2048);
  HostSocket host(AF_INET);
  socklen_t len;
  const sockaddr_storage to = OpenFlow(g, host, false, &len);
  const std::vector<uint8_t> payload = Pattern(10 * 1000 + 500, 7);
  SendSegmented(host.fd.get(), to, len, payload, 1000);
  std::vector<vu::testing::GuestRxRing::Frame> frames = g.Receive(11);
  ASSERT_EQ(frames.size(), 11u);
  std::vector<uint8_t> all;
  for (const auto& f : frames) {
    EXPECT_EQ(f.hdr.gso_type, vu::kVirtioNetHdrGsoNone);
    bool ok = false;
    std::vector<uint8_t> p = GuestPayload(f, &ok);
    EXPECT_TRUE(ok);
    EXPECT_LE(p.size(), 1000u);
    all.insert(all.end(), p.begin(), p.end());
  }
  EXPECT_EQ(all, payload);
  EXPECT_EQ(g.udp->rx_stats().uso_frames, 0u);
}

// Coalesced datagrams for a guest that no longer takes USO (it renegotiated
// while the socket lived), or too many for one frame: one datagram a
// frame, copied.
TEST(UdpOffloadTest, CoalescedDatagramsAreSplitForAGuestWithoutUso) {
  Guest g(/*uso=*/true);
  g.world->ring.Post(128, 2048);
  HostSocket host(AF_INET);
  socklen_t len;
  const sockaddr_storage to = OpenFlow(g, host, false, &len);
  vu::NetConfig config = g.world->ring.config();
  config.guest_uso4 = config.guest_uso6 = false;
  g.world->ring.rx().Start(&g.world->ring.vq(), config);
  const std::vector<uint8_t> payload = Pattern(10 * 1000 + 500, 8);
  SendSegmented(host.fd.get(), to, len, payload, 1000);
  std::vector<vu::testing::GuestRxRing::Frame> frames = g.Receive(11);
  ASSERT_EQ(frames.size(), 11u);
  std::vector<uint8_t> all;
  for (const auto& f : frames) {
    EXPECT_EQ(f.hdr.gso_type, vu::kVirtioNetHdrGsoNone);
    bool ok = false;
    std::vector<uint8_t> p = GuestPayload(f, &ok);
    EXPECT_TRUE(ok);
    all.insert(all.end(), p.begin(), p.end());
  }
  EXPECT_EQ(all, payload);
  EXPECT_EQ(g.udp->rx_stats().split, 1u);
  EXPECT_EQ(g.udp->rx_stats().split_dropped, 0u);
}

bool WriteFile(const char* path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  return static_cast<bool>(f.flush());
}

// In a child process, in user and network namespaces of its own with the
// loopback's MTU at 1500: segments of 2000 bytes do not fit the route, so
// the socket refuses UDP_SEGMENT (EINVAL); the datagrams go one by one
// (fragmented by IP) and arrive whole. Exit status 0 on success, 77 where
// no namespaces can be made.
int SplitInNamespace() {
  const uid_t uid = geteuid();
  const gid_t gid = getegid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0) return 77;
  if (!WriteFile("/proc/self/setgroups", "deny") ||
      !WriteFile("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1") ||
      !WriteFile("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1")) {
    return 77;
  }
  UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  if (ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) return 2;
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) return 3;
  ifr.ifr_mtu = 1500;
  if (ioctl(s.get(), SIOCSIFMTU, &ifr) != 0) return 4;
  Guest g;
  HostSocket host(AF_INET);
  if (!host.ok) return 5;
  const std::vector<uint8_t> payload = Pattern(5 * 2000 + 10, 7);
  g.SendBatch({g.Frame(false, host.port, 41004, payload, 2000)}, 500);
  for (size_t off = 0; off < payload.size(); off += 2000) {
    const size_t len = std::min<size_t>(2000, payload.size() - off);
    std::optional<std::vector<uint8_t>> got = host.Receive();
    if (!got.has_value() ||
        *got != std::vector<uint8_t>(payload.begin() + static_cast<ptrdiff_t>(off),
                                     payload.begin() + static_cast<ptrdiff_t>(off + len))) {
      std::fprintf(stderr, "datagram at %zu missing or wrong; %s\n", off,
                   g.udp->StatsLine().c_str());
      return 6;
    }
  }
  const UdpTranslator::Stats& st = g.udp->stats();
  if (st.tx_split != 1 || st.tx_datagrams != 6 || st.tx_errors != 0) {
    std::fprintf(
        stderr, "split %lu, datagrams %lu, errors %lu\n", static_cast<unsigned long>(st.tx_split),
        static_cast<unsigned long>(st.tx_datagrams), static_cast<unsigned long>(st.tx_errors));
    return 7;
  }
  return 0;
}

TEST(UdpOffloadTest, RefusedSegmentationGoesDatagramByDatagram) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(SplitInNamespace());
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "no user and network namespaces here";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the child's line above";
}

}  // namespace
}  // namespace vunet::net
