#include "net/icmp/icmp.h"

#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/testing/test_frames.h"

namespace vunet::net {
namespace {

using testing::Build;
using testing::Ip4;
using testing::Ip6;
using testing::Mac;
using testing::Split;

const MacAddr kGuestMac = Mac(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const MacAddr kGatewayMac = Mac(0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55);

// Ping sockets need net.ipv4.ping_group_range to include our group. If the
// host's does not, a private network namespace (where we are allowed to set
// it, as root) serves: only loopback is used.
std::string* ping_skip_reason = nullptr;

bool EnablePingInPrivateNetns(std::string* why) {
  if (unshare(CLONE_NEWNET) != 0) {
    *why = std::string("unshare(CLONE_NEWNET): ") + strerror(errno);
    return false;
  }
  const int f = open("/proc/sys/net/ipv4/ping_group_range", O_WRONLY | O_CLOEXEC);
  if (f < 0) {
    *why = std::string("open ping_group_range: ") + strerror(errno);
    return false;
  }
  // Only our own group: under Bazel's sandbox we are in a user namespace,
  // where the range must consist of groups mapped in it.
  const std::string range = std::to_string(getgid()) + " " + std::to_string(getgid());
  const bool wrote = write(f, range.data(), range.size()) == static_cast<ssize_t>(range.size());
  const int err = errno;
  close(f);
  if (!wrote) {
    *why = std::string("writing ping_group_range: ") + strerror(err);
    return false;
  }
  UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  if (!s.valid() || ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) {
    *why = "SIOCGIFFLAGS lo";
    return false;
  }
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) {
    *why = std::string("bringing lo up: ") + strerror(errno);
    return false;
  }
  return true;
}

class Environment : public ::testing::Environment {
 public:
  void SetUp() override {
    const absl::Status probe = IcmpEcho::ProbePingSockets(AF_INET);
    if (probe.ok()) return;
    std::string why;
    if (EnablePingInPrivateNetns(&why) && IcmpEcho::ProbePingSockets(AF_INET).ok()) {
      fprintf(stderr, "ping sockets not permitted on the host (%s); testing in a private netns\n",
              probe.ToString().c_str());
      return;
    }
    ping_skip_reason = new std::string(probe.ToString() + "; no private netns either: " + why);
  }
};
const auto* const kEnvironment = ::testing::AddGlobalTestEnvironment(new Environment);

#define SKIP_WITHOUT_PING_SOCKETS()                                     \
  do {                                                                  \
    if (ping_skip_reason != nullptr) GTEST_SKIP() << *ping_skip_reason; \
  } while (0)

class Replies : public ReplySender {
 public:
  absl::Status Send(absl::Span<const uint8_t> frame) override {
    frames.emplace_back(frame.begin(), frame.end());
    return absl::OkStatus();
  }
  std::vector<std::vector<uint8_t>> frames;
};

class Observer : public IcmpEcho::SocketObserver {
 public:
  bool OnSocketOpened(int fd) override {
    opened.push_back(fd);
    return true;
  }
  void OnSocketClosing(int fd) override { closed.push_back(fd); }
  std::vector<int> opened, closed;
};

class Next : public ParsedFrameSink {
 public:
  void OnFrame(const vu::VirtioNetHdr&, absl::Span<const iovec>, const ParsedFrame&) override {
    ++frames;
  }
  void OnBatchEnd() override { ++batches; }
  int frames = 0;
  int batches = 0;
};

IcmpEchoConfig Config() {
  IcmpEchoConfig c;
  c.gateway_mac = kGatewayMac;
  c.gateway4 = Ip4("10.0.2.2");
  c.gateway6 = Ip6("2001:db8::1");
  c.gateway_ll6 = Ip6("fe80::1");
  return c;
}

std::vector<uint8_t> EchoMessage(uint8_t type, uint16_t id, uint16_t seq, size_t data_len,
                                 uint8_t code = 0) {
  std::vector<uint8_t> m = {type,
                            code,
                            0,
                            0,
                            static_cast<uint8_t>(id >> 8),
                            static_cast<uint8_t>(id),
                            static_cast<uint8_t>(seq >> 8),
                            static_cast<uint8_t>(seq)};
  for (size_t i = 0; i < data_len; ++i) m.push_back(static_cast<uint8_t>(i * 7 + 3));
  return m;
}

std::vector<uint8_t> Echo4(const char* dst, uint16_t id, uint16_t seq, size_t data_len = 56,
                           uint8_t type = 8, uint8_t code = 0) {
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kGatewayMac;
  s.src4 = Ip4("10.0.2.15");
  s.dst4 = Ip4(dst);
  s.protocol = IPPROTO_ICMP;
  return Build(s, EchoMessage(type, id, seq, data_len, code));
}

std::vector<uint8_t> Echo6(const char* dst, uint16_t id, uint16_t seq, size_t data_len = 56,
                           uint8_t type = 128, const char* src = "2001:db8::2") {
  FrameSpec s;
  s.src_mac = kGuestMac;
  s.dst_mac = kGatewayMac;
  s.ipv6 = true;
  s.src6 = Ip6(src);
  s.dst6 = Ip6(dst);
  s.protocol = IPPROTO_ICMPV6;
  return Build(s, EchoMessage(type, id, seq, data_len));
}

// Parses `frame` and gives it to `icmp` as the dispatcher would, in 13-byte
// pieces so that nothing relies on contiguous frames.
void Feed(IcmpEcho* icmp, std::vector<uint8_t> frame, uint8_t hdr_flags = 0) {
  const std::vector<iovec> iov = Split(frame, 13);
  ParsedFrame parsed;
  ASSERT_TRUE(ParseFrame(iov, &parsed).ok());
  vu::VirtioNetHdr hdr{};
  hdr.flags = hdr_flags;
  icmp->OnFrame(hdr, iov, parsed);
}

// Polls the sockets until `want` replies have been read (or 2 s pass).
void Collect(IcmpEcho* icmp, Replies* replies, size_t want) {
  for (int round = 0; round < 200 && replies->frames.size() < want; ++round) {
    std::vector<pollfd> fds;
    for (int fd : icmp->SocketFds()) fds.push_back({fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), 10) <= 0) continue;
    for (const pollfd& p : fds) {
      if (p.revents & POLLIN) icmp->OnReadable(p.fd);
    }
  }
}

// Checks `reply` is an echo reply from `src` to the guest carrying `request`'s
// identifier, sequence and data, with valid checksums.
void ExpectReply(std::vector<uint8_t> reply, const std::vector<uint8_t>& request) {
  ParsedFrame r, q;
  ASSERT_TRUE(testing::Parse(reply, &r).ok());  // Checks the IPv4 header checksum.
  std::vector<uint8_t> req = request;
  ASSERT_TRUE(testing::Parse(req, &q).ok());
  EXPECT_EQ(r.dst_mac, kGuestMac);
  EXPECT_EQ(r.src_mac, kGatewayMac);
  EXPECT_EQ(r.l3, q.l3);
  if (q.l3 == L3Kind::kIpv4) {
    EXPECT_EQ(r.l4, L4Kind::kIcmp);
    EXPECT_EQ(r.icmp.type, 0);
    EXPECT_EQ(r.ip.src4.s_addr, q.ip.dst4.s_addr);
    EXPECT_EQ(r.ip.dst4.s_addr, q.ip.src4.s_addr);
    EXPECT_EQ(InternetChecksum(reply.data() + r.l4_offset, r.l4_len), 0);
  } else {
    EXPECT_EQ(r.l4, L4Kind::kIcmpv6);
    EXPECT_EQ(r.icmp.type, 129);
    EXPECT_EQ(0, std::memcmp(&r.ip.src6, &q.ip.dst6, 16));
    EXPECT_EQ(0, std::memcmp(&r.ip.dst6, &q.ip.src6, 16));
    const iovec iov = {reply.data(), reply.size()};
    EXPECT_EQ(L4ChecksumV6(r.ip.src6, r.ip.dst6, IPPROTO_ICMPV6, absl::MakeConstSpan(&iov, 1),
                           r.l4_offset, r.l4_len),
              0);
  }
  EXPECT_EQ(r.icmp.code, 0);
  EXPECT_EQ(r.icmp.id, q.icmp.id);
  EXPECT_EQ(r.icmp.seq, q.icmp.seq);
  ASSERT_EQ(r.l4_len, q.l4_len);
  EXPECT_EQ(0, std::memcmp(reply.data() + r.l4_offset + 8, request.data() + q.l4_offset + 8,
                           q.l4_len - 8));
}

uint16_t IdOf(std::vector<uint8_t> frame) {
  ParsedFrame p;
  EXPECT_TRUE(testing::Parse(frame, &p).ok());
  return p.icmp.id;
}

TEST(IcmpEcho, ProbeSaysWhatToDo) {
  const absl::Status s = IcmpEcho::ProbePingSockets(AF_INET);
  if (s.ok()) return;
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(s.message()).find("net.ipv4.ping_group_range"), std::string::npos);
}

TEST(IcmpEcho, CreateRejectsBadTableSize) {
  Replies replies;
  IcmpEchoConfig c = Config();
  c.max_sockets = 0;
  EXPECT_EQ(IcmpEcho::Create(c, &replies).status().code(), absl::StatusCode::kInvalidArgument);
  c.max_sockets = kMaxIcmpSockets + 1;
  EXPECT_EQ(IcmpEcho::Create(c, &replies).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IcmpEcho, EchoToTheGatewayV4) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  Observer observer;
  auto icmp = IcmpEcho::Create(Config(), &replies, nullptr, &observer);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  const std::vector<uint8_t> request = Echo4("10.0.2.2", 0x1234, 7, 1001);  // Odd length.
  Feed(icmp->get(), request);
  EXPECT_EQ((*icmp)->stats().requests, 1u);
  ASSERT_EQ((*icmp)->socket_count(), 1u);
  EXPECT_EQ(observer.opened, (*icmp)->SocketFds());
  Collect(icmp->get(), &replies, 1);
  ASSERT_EQ(replies.frames.size(), 1u);
  ExpectReply(replies.frames[0], request);

  // A second request with the same identifier reuses the socket.
  const std::vector<uint8_t> again = Echo4("10.0.2.2", 0x1234, 8, 0);
  Feed(icmp->get(), again);
  EXPECT_EQ((*icmp)->socket_count(), 1u);
  Collect(icmp->get(), &replies, 2);
  ASSERT_EQ(replies.frames.size(), 2u);
  ExpectReply(replies.frames[1], again);
  EXPECT_EQ((*icmp)->stats().replies, 2u);
}

TEST(IcmpEcho, EchoToTheGatewayV6) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  auto icmp = IcmpEcho::Create(Config(), &replies);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  if (!(*icmp)->ipv6_enabled()) GTEST_SKIP() << "no IPv6 ping sockets on this host";
  const std::vector<uint8_t> global = Echo6("2001:db8::1", 0xbeef, 1, 99);
  const std::vector<uint8_t> ll = Echo6("fe80::1", 0xbeef, 2, 8, 128, "fe80::5054:ff:fe12:3456");
  Feed(icmp->get(), global);
  Feed(icmp->get(), ll);
  EXPECT_EQ((*icmp)->socket_count(), 2u);  // Two destinations.
  Collect(icmp->get(), &replies, 2);
  ASSERT_EQ(replies.frames.size(), 2u);
  // One reply per socket; the order between sockets is the poll's.
  for (const auto& f : replies.frames) {
    std::vector<uint8_t> copy = f;
    ParsedFrame p;
    ASSERT_TRUE(testing::Parse(copy, &p).ok());
    ExpectReply(f, p.icmp.seq == 1 ? global : ll);
  }
}

TEST(IcmpEcho, SeveralIdentifiersAtOnce) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  auto icmp = IcmpEcho::Create(Config(), &replies);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  const uint16_t ids[] = {1, 2, 0xffff, 0};
  for (uint16_t id : ids) Feed(icmp->get(), Echo4("10.0.2.2", id, static_cast<uint16_t>(id ^ 5)));
  EXPECT_EQ((*icmp)->socket_count(), 4u);
  Collect(icmp->get(), &replies, 4);
  ASSERT_EQ(replies.frames.size(), 4u);
  std::vector<bool> seen(4);
  for (const auto& f : replies.frames) {
    const uint16_t id = IdOf(f);
    for (int i = 0; i < 4; ++i) {
      if (ids[i] == id) {
        EXPECT_FALSE(seen[i]);
        seen[i] = true;
        ExpectReply(f, Echo4("10.0.2.2", id, static_cast<uint16_t>(id ^ 5)));
      }
    }
  }
  EXPECT_EQ(seen, std::vector<bool>(4, true));
}

TEST(IcmpEcho, FullTableEvictsTheLeastRecentlyUsed) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  Observer observer;
  IcmpEchoConfig c = Config();
  c.max_sockets = 2;
  auto icmp = IcmpEcho::Create(c, &replies, nullptr, &observer);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  Feed(icmp->get(), Echo4("10.0.2.2", 10, 1));
  Feed(icmp->get(), Echo4("10.0.2.2", 20, 1));
  ASSERT_EQ(observer.opened.size(), 2u);
  Collect(icmp->get(), &replies, 2);
  replies.frames.clear();
  Feed(icmp->get(), Echo4("10.0.2.2", 10, 2));  // 10 is now the more recent.
  Feed(icmp->get(), Echo4("10.0.2.2", 30, 1));  // Evicts 20.
  EXPECT_EQ((*icmp)->socket_count(), 2u);
  EXPECT_EQ((*icmp)->stats().evicted, 1u);
  ASSERT_EQ(observer.closed.size(), 1u);
  EXPECT_EQ(observer.closed[0], observer.opened[1]);
  Collect(icmp->get(), &replies, 2);
  ASSERT_EQ(replies.frames.size(), 2u);
  std::vector<uint16_t> got = {IdOf(replies.frames[0]), IdOf(replies.frames[1])};
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<uint16_t>{10, 30}));
  // A stale fd (already closed) is not in the table.
  EXPECT_EQ((*icmp)->OnReadable(observer.closed[0] + 1000), 0u);
}

int64_t fake_now = 0;
int64_t FakeClock() { return fake_now; }

TEST(IcmpEcho, SweepClosesIdleSockets) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  Observer observer;
  IcmpEchoConfig c = Config();
  c.clock = &FakeClock;
  c.idle_timeout_ns = 1000;
  auto icmp = IcmpEcho::Create(c, &replies, nullptr, &observer);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  fake_now = 5000;
  Feed(icmp->get(), Echo4("10.0.2.2", 1, 1));
  fake_now = 5500;
  Feed(icmp->get(), Echo4("10.0.2.2", 2, 1));
  EXPECT_EQ((*icmp)->Sweep(5999), 0u);
  EXPECT_EQ((*icmp)->Sweep(6000), 1u);
  EXPECT_EQ((*icmp)->socket_count(), 1u);
  EXPECT_EQ(observer.closed, std::vector<int>{observer.opened[0]});
  EXPECT_EQ((*icmp)->Sweep(6500), 1u);
  EXPECT_EQ((*icmp)->socket_count(), 0u);
  EXPECT_EQ((*icmp)->stats().expired, 2u);
}

TEST(IcmpEcho, NewSocketsAreRateLimited) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  Observer observer;
  IcmpEchoConfig c = Config();
  c.clock = &FakeClock;
  c.max_sockets = 16;
  c.new_sockets_per_second = 4;
  auto icmp = IcmpEcho::Create(c, &replies, nullptr, &observer);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  fake_now = 1'000'000'000;
  // A guest cycling identifiers: a burst of 4 sockets, then nothing new.
  for (uint16_t id = 1; id <= 10; ++id) Feed(icmp->get(), Echo4("10.0.2.2", id, 1));
  EXPECT_EQ(observer.opened.size(), 4u);
  EXPECT_EQ((*icmp)->stats().rate_limited, 6u);
  // Existing sockets still carry requests.
  Feed(icmp->get(), Echo4("10.0.2.2", 1, 2));
  EXPECT_EQ((*icmp)->stats().rate_limited, 6u);
  // Half a second refills two.
  fake_now += 500'000'000;
  for (uint16_t id = 11; id <= 14; ++id) Feed(icmp->get(), Echo4("10.0.2.2", id, 1));
  EXPECT_EQ(observer.opened.size(), 6u);
  EXPECT_EQ((*icmp)->stats().rate_limited, 8u);
}

TEST(IcmpEcho, MalformedRequestsDropped) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  auto icmp = IcmpEcho::Create(Config(), &replies);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  // ICMPv6 of 4..7 bytes parses, but is too short for an echo.
  std::vector<uint8_t> short6 = Echo6("2001:db8::1", 1, 1, 0);
  short6.resize(short6.size() - 2);
  testing::PutBe16(short6, 18, 6);  // Payload length.
  Feed(icmp->get(), short6);
  // A code other than 0.
  Feed(icmp->get(), Echo4("10.0.2.2", 1, 1, 8, 8, 1));
  // A bad checksum.
  std::vector<uint8_t> bad = Echo4("10.0.2.2", 1, 1);
  bad[14 + 20 + 8] ^= 1;
  Feed(icmp->get(), bad);
  EXPECT_EQ((*icmp)->stats().malformed, 3u);
  // The same with the checksum left partial by the guest is sent.
  Feed(icmp->get(), bad, vu::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ((*icmp)->stats().malformed, 3u);
  EXPECT_EQ((*icmp)->stats().requests, 1u);
}

TEST(IcmpEcho, NonEchoIgnoredAndOtherFramesPassedOn) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  Next next;
  auto icmp = IcmpEcho::Create(Config(), &replies, &next);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  Feed(icmp->get(), Echo4("10.0.2.2", 1, 1, 8, /*type=*/0));   // Echo reply.
  Feed(icmp->get(), Echo4("10.0.2.2", 1, 1, 8, /*type=*/13));  // Timestamp.
  Feed(icmp->get(), Echo6("2001:db8::1", 1, 1, 8, /*type=*/129));
  Feed(icmp->get(), Echo6("2001:db8::1", 1, 1, 8, /*type=*/135));
  EXPECT_EQ((*icmp)->stats().ignored, 4u);
  EXPECT_EQ((*icmp)->socket_count(), 0u);

  FrameSpec udp;
  udp.src_mac = kGuestMac;
  udp.dst_mac = kGatewayMac;
  udp.src4 = Ip4("10.0.2.15");
  udp.dst4 = Ip4("10.0.2.2");
  udp.src_port = 1000;
  udp.dst_port = 53;
  Feed(icmp->get(), Build(udp, {1, 2, 3}));
  (*icmp)->OnBatchEnd();
  EXPECT_EQ(next.frames, 1);
  EXPECT_EQ(next.batches, 1);
  EXPECT_EQ((*icmp)->stats().passed_on, 1u);
  EXPECT_TRUE(replies.frames.empty());
}

TEST(IcmpEcho, DestinationsTheHostCannotStandForDropped) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  auto icmp = IcmpEcho::Create(Config(), &replies);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  Feed(icmp->get(), Echo4("127.0.0.1", 1, 1));
  Feed(icmp->get(), Echo4("255.255.255.255", 1, 1));
  Feed(icmp->get(), Echo4("224.0.0.1", 1, 1));
  Feed(icmp->get(), Echo6("::1", 1, 1));
  Feed(icmp->get(), Echo6("ff02::1", 1, 1));
  Feed(icmp->get(), Echo6("fe80::2", 1, 1));  // Link-local, not the gateway's.
  EXPECT_EQ((*icmp)->stats().bad_destination, 6u);
  EXPECT_EQ((*icmp)->socket_count(), 0u);
}

TEST(IcmpEcho, DisabledFamilyIgnored) {
  SKIP_WITHOUT_PING_SOCKETS();
  Replies replies;
  IcmpEchoConfig c = Config();
  c.ipv6 = false;
  auto icmp = IcmpEcho::Create(c, &replies);
  ASSERT_TRUE(icmp.ok()) << icmp.status();
  Feed(icmp->get(), Echo6("2001:db8::1", 1, 1));
  EXPECT_EQ((*icmp)->stats().ignored, 1u);
  EXPECT_EQ((*icmp)->socket_count(), 0u);
}

}  // namespace
}  // namespace vunet::net
