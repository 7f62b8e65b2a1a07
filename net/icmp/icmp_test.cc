#include "net/icmp/icmp.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/config/config.h"
#include "net/flow/flow.h"
#include "net/forward/forward.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/packet/inet.h"
#include "net/testing/test_frames.h"
#include "net/testing/world.h"

namespace vunet::net {
namespace {

using testing::Build;
using testing::Ip4;
using testing::Ip6;
using testing::ManualClock;
using testing::Split;
using testing::TranslatorWorld;

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

// The guest of these tests: 10.0.2.15/24 behind 10.0.2.2, and 2001:db8::2
// behind a global gateway 2001:db8::1; our link-local address is fe80::1.
// The gateway's addresses and ours stand for the host.
GuestConfig IcmpGuest() {
  GuestConfig g = testing::TestGuest();
  g.addr6 = Ip6("2001:db8::2");
  g.gateway6 = Ip6("2001:db8::1");
  g.our_link_local6 = Ip6("fe80::1");
  return g;
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
  const GuestConfig g = IcmpGuest();
  FrameSpec s;
  s.src_mac = g.guest_mac;
  s.dst_mac = g.gateway_mac;
  s.src4 = Ip4("10.0.2.15");
  s.dst4 = Ip4(dst);
  s.protocol = IPPROTO_ICMP;
  return Build(s, EchoMessage(type, id, seq, data_len, code));
}

std::vector<uint8_t> Echo6(const char* dst, uint16_t id, uint16_t seq, size_t data_len = 56,
                           uint8_t type = 128, const char* src = "2001:db8::2") {
  const GuestConfig g = IcmpGuest();
  FrameSpec s;
  s.src_mac = g.guest_mac;
  s.dst_mac = g.gateway_mac;
  s.ipv6 = true;
  s.src6 = Ip6(src);
  s.dst6 = Ip6(dst);
  s.protocol = IPPROTO_ICMPV6;
  return Build(s, EchoMessage(type, id, seq, data_len));
}

// An echo request to `dst` (either version).
std::vector<uint8_t> EchoTo(const InetAddr& dst, uint16_t id, uint16_t seq) {
  const std::string text = dst.ToString();
  return dst.is_v4() ? Echo4(text.c_str(), id, seq) : Echo6(text.c_str(), id, seq);
}

FlowKey KeyOf(std::vector<uint8_t> frame) {
  ParsedFrame p;
  EXPECT_TRUE(testing::Parse(frame, &p).ok());
  const std::optional<FlowKey> key = FlowKey::FromFrame(p);
  EXPECT_TRUE(key.has_value());
  return key.value_or(FlowKey{});
}

// Checks `reply` is an echo reply from `src` to the guest carrying `request`'s
// identifier, sequence and data, with valid checksums.
void ExpectReply(std::vector<uint8_t> reply, const std::vector<uint8_t>& request) {
  const GuestConfig g = IcmpGuest();
  ParsedFrame r, q;
  ASSERT_TRUE(testing::Parse(reply, &r).ok());  // Checks the IPv4 header checksum.
  std::vector<uint8_t> req = request;
  ASSERT_TRUE(testing::Parse(req, &q).ok());
  EXPECT_EQ(r.dst_mac, g.guest_mac);
  EXPECT_EQ(r.src_mac, g.gateway_mac);
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

// The peers of this network namespace's connected ping sockets of `family`,
// from /proc/net/icmp or /proc/net/icmp6 (addresses printed as the kernel
// holds them, 32 bits at a time).
std::vector<InetAddr> PingSocketPeers(int family) {
  std::ifstream in(family == AF_INET ? "/proc/net/icmp" : "/proc/net/icmp6");
  std::vector<InetAddr> peers;
  std::string line;
  std::getline(in, line);  // The header.
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string sl, local, remote;
    if (!(fields >> sl >> local >> remote)) continue;
    const std::string hex = remote.substr(0, remote.find(':'));
    if (family == AF_INET && hex.size() == 8) {
      in_addr a;
      a.s_addr = static_cast<uint32_t>(std::strtoul(hex.c_str(), nullptr, 16));
      peers.push_back(InetAddr::V4(a));
    } else if (family == AF_INET6 && hex.size() == 32) {
      in6_addr a;
      for (int i = 0; i < 4; ++i) {
        const uint32_t w =
            static_cast<uint32_t>(std::strtoul(hex.substr(i * 8, 8).c_str(), nullptr, 16));
        std::memcpy(&a.s6_addr[i * 4], &w, 4);
      }
      peers.push_back(InetAddr::V6(a));
    }
  }
  return peers;
}

class IcmpTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_now_ = ManualClock::now_ns; }
  void TearDown() override {
    icmp_.reset();
    ManualClock::now_ns = saved_now_;
  }

  // A world (64 receive buffers posted) and the translator in it.
  void Start(const IcmpEchoOptions& options = {}, GuestConfig guest = IcmpGuest(),
             size_t flows = 64) {
    TranslatorWorld::Options o;
    o.guest = std::move(guest);
    o.flows = flows;
    o.clock = &ManualClock::Now;
    world_ = std::make_unique<TranslatorWorld>(o);
    world_->ring.Post(64);
    absl::StatusOr<std::unique_ptr<IcmpEcho>> icmp = IcmpEcho::Create(world_->Env(), options);
    ASSERT_TRUE(icmp.ok()) << icmp.status();
    icmp_ = std::move(*icmp);
  }

  // Parses `frame` and gives it to the translator as the dispatcher would
  // (the guest's identity sees it first), in 13-byte pieces so that nothing
  // relies on contiguous frames.
  void Feed(std::vector<uint8_t> frame, uint8_t hdr_flags = 0) {
    const std::vector<iovec> iov = Split(frame, 13);
    ParsedFrame parsed;
    ASSERT_TRUE(ParseFrame(iov, &parsed).ok());
    world_->forward->guest().Learn(parsed);
    vu::VirtioNetHdr hdr{};
    hdr.flags = hdr_flags;
    icmp_->OnFrame(hdr, iov, parsed);
    icmp_->OnBatchEnd();
  }

  // Polls the sockets and reads the guest's ring until `want` replies have
  // arrived in all (or 2 s pass).
  void Collect(size_t want) {
    for (int round = 0; round < 200 && replies_.size() < want; ++round) {
      world_->watcher.Poll(icmp_.get(), 10);
      for (std::vector<uint8_t>& f : world_->ring.TakeBytes()) replies_.push_back(std::move(f));
    }
    world_->ring.Post(64 - static_cast<int>(world_->ring.posted()));
  }

  void Expire(int64_t now) {
    world_->flows->Expire(now, [&](FlowId id) { icmp_->OnTimer(id, now); });
  }

  FlowId Find(const std::vector<uint8_t>& request) { return world_->flows->Find(KeyOf(request)); }

  uint64_t TagOf(FlowId id) {
    return FlowRef(id, static_cast<uint8_t>(world_->Env().first_kind + IcmpEcho::kSocketKind))
        .u64();
  }

  int64_t saved_now_ = 0;
  std::unique_ptr<TranslatorWorld> world_;
  std::unique_ptr<IcmpEcho> icmp_;
  std::vector<std::vector<uint8_t>> replies_;
};

TEST(IcmpEchoProbe, ProbeSaysWhatToDo) {
  const absl::Status s = IcmpEcho::ProbePingSockets(AF_INET);
  if (s.ok()) return;
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(s.message()).find("net.ipv4.ping_group_range"), std::string::npos);
}

TEST(IcmpEchoCreate, RejectsBadOptionsAndAnIncompleteEnvironment) {
  TranslatorWorld world;
  EXPECT_EQ(IcmpEcho::Create(world.Env(), {.max_sockets = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IcmpEcho::Create(world.Env(), {.max_sockets = kMaxIcmpSockets + 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IcmpEcho::Create(world.Env(), {.new_sockets_per_second = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IcmpEcho::Create(world.Env(), {.idle_timeout_ns = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  TranslatorEnv env = world.Env();
  env.forward = nullptr;
  EXPECT_EQ(IcmpEcho::Create(env, {}).status().code(), absl::StatusCode::kInvalidArgument);
  env = world.Env();
  env.rx = nullptr;
  EXPECT_EQ(IcmpEcho::Create(env, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IcmpEcho::Create(world.Env(40), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(IcmpTest, EchoToTheGatewayV4) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  const std::vector<uint8_t> request = Echo4("10.0.2.2", 0x1234, 7, 1001);  // Odd length.
  Feed(request);
  EXPECT_EQ(icmp_->stats().requests, 1u);
  ASSERT_EQ(icmp_->socket_count(), 1u);
  EXPECT_EQ(world_->watcher.watching(), 1u);
  Collect(1);
  ASSERT_EQ(replies_.size(), 1u);
  ExpectReply(replies_[0], request);
  EXPECT_EQ(world_->ring.rx().stats().sends, 1u);

  // A second request with the same identifier reuses the socket.
  const std::vector<uint8_t> again = Echo4("10.0.2.2", 0x1234, 8, 0);
  Feed(again);
  EXPECT_EQ(icmp_->socket_count(), 1u);
  EXPECT_EQ(world_->watcher.adds, 1);
  Collect(2);
  ASSERT_EQ(replies_.size(), 2u);
  ExpectReply(replies_[1], again);
  EXPECT_EQ(icmp_->stats().replies, 2u);
}

// -o/--outbound-if4: requests to other hosts leave from the binding (here
// an interface that does not exist: no socket, counted); requests to the
// host's loopback (the gateway) are left alone.
TEST_F(IcmpTest, OutboundBindingAppliesToOtherHostsOnly) {
  SKIP_WITHOUT_PING_SOCKETS();
  IcmpEchoOptions o;
  o.outbound.ifname4 = "nosuch0";
  Start(o);
  Feed(Echo4("192.0.2.1", 0x1234, 1));
  EXPECT_EQ(icmp_->stats().socket_errors, 1u);
  EXPECT_EQ(icmp_->socket_count(), 0u);
  EXPECT_EQ(world_->watcher.watching(), 0u);
  const std::vector<uint8_t> request = Echo4("10.0.2.2", 0x1234, 2);
  Feed(request);
  Collect(1);
  ASSERT_EQ(replies_.size(), 1u);
  ExpectReply(replies_[0], request);
  EXPECT_EQ(icmp_->stats().socket_errors, 1u);
}

TEST_F(IcmpTest, EchoToTheGatewayV6) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  if (!icmp_->ipv6_enabled()) GTEST_SKIP() << "no IPv6 ping sockets on this host";
  const std::vector<uint8_t> global = Echo6("2001:db8::1", 0xbeef, 1, 99);
  const std::vector<uint8_t> ll = Echo6("fe80::1", 0xbeef, 2, 8, 128, "fe80::5054:ff:fe12:3456");
  Feed(global);
  Feed(ll);
  EXPECT_EQ(icmp_->socket_count(), 2u);  // Two destinations.
  Collect(2);
  ASSERT_EQ(replies_.size(), 2u);
  // One reply per socket; the order between sockets is the poll's.
  for (const auto& f : replies_) {
    std::vector<uint8_t> copy = f;
    ParsedFrame p;
    ASSERT_TRUE(testing::Parse(copy, &p).ok());
    ExpectReply(f, p.icmp.seq == 1 ? global : ll);
  }
}

TEST_F(IcmpTest, SeveralIdentifiersAtOnce) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  const uint16_t ids[] = {1, 2, 0xffff, 0};
  for (uint16_t id : ids) Feed(Echo4("10.0.2.2", id, static_cast<uint16_t>(id ^ 5)));
  EXPECT_EQ(icmp_->socket_count(), 4u);
  Collect(4);
  ASSERT_EQ(replies_.size(), 4u);
  std::vector<bool> seen(4);
  for (const auto& f : replies_) {
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

// A request opens a flow in the shared table, keyed by the guest's address,
// its identifier and the destination as it addressed it, with an idle timer;
// the same three reuse it, any other opens another.
TEST_F(IcmpTest, ARequestOpensAFlowInTheSharedTable) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start({.idle_timeout_ns = 5'000'000'000});
  const std::vector<uint8_t> request = Echo4("10.0.2.2", 0x4242, 1);
  Feed(request);
  const FlowId id = Find(request);
  ASSERT_TRUE(id.valid());
  const FlowKey* key = world_->flows->Key(id);
  ASSERT_NE(key, nullptr);
  EXPECT_EQ(key->proto, FlowProto::kIcmp);
  EXPECT_EQ(key->local_port, 0x4242);
  EXPECT_EQ(key->local4().s_addr, Ip4("10.0.2.15").s_addr);
  EXPECT_EQ(key->remote4().s_addr, Ip4("10.0.2.2").s_addr);  // As the guest addressed it.
  EXPECT_EQ(world_->flows->size(), 1u);
  EXPECT_EQ(world_->flows->Deadline(id), ManualClock::now_ns + 5'000'000'000);
  EXPECT_EQ(world_->watcher.watching(), 1u);

  Feed(Echo4("10.0.2.2", 0x4242, 2));
  EXPECT_EQ(world_->flows->size(), 1u);
  EXPECT_EQ(Find(Echo4("10.0.2.2", 0x4242, 2)), id);
  Feed(Echo4("10.0.2.2", 0x4243, 1));  // Another identifier.
  EXPECT_EQ(world_->flows->size(), 2u);
  EXPECT_EQ(icmp_->socket_count(), 2u);
  Collect(3);
  EXPECT_EQ(replies_.size(), 3u);

  icmp_->Shutdown();
  EXPECT_EQ(world_->flows->size(), 0u);
  EXPECT_EQ(world_->watcher.watching(), 0u);
  EXPECT_EQ(icmp_->socket_count(), 0u);
}

// Idle flows end by the table's timer: a request or a reply keeps a flow
// alive (its timer is re-armed when it fires), and one idle for the whole
// timeout is closed with its socket.
TEST_F(IcmpTest, TheIdleTimerEndsAFlow) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start({.idle_timeout_ns = 1'000'000'000});
  const int64_t t0 = ManualClock::now_ns;
  const std::vector<uint8_t> first = Echo4("10.0.2.2", 1, 1);
  const std::vector<uint8_t> second = Echo4("10.0.2.2", 2, 1);
  const std::vector<uint8_t> third = Echo4("10.0.2.2", 3, 1);
  const std::vector<uint8_t> fourth = Echo4("10.0.2.2", 4, 1);
  Feed(first);
  Feed(fourth);
  Collect(2);
  ManualClock::now_ns = t0 + 500'000'000;
  Feed(second);
  Collect(3);
  Feed(third);
  ManualClock::now_ns = t0 + 600'000'000;
  Collect(4);  // The third's reply is read at 0.6 s.
  ASSERT_EQ(replies_.size(), 4u);
  ManualClock::now_ns = t0 + 700'000'000;
  Feed(Echo4("10.0.2.2", 4, 2));  // The fourth's request at 0.7 s.
  EXPECT_EQ(icmp_->socket_count(), 4u);

  Expire(t0 + 1'000'000'000 - FlowTable::kTickNs);
  EXPECT_EQ(icmp_->socket_count(), 4u);
  Expire(t0 + 1'000'000'000);
  EXPECT_EQ(icmp_->socket_count(), 3u);
  EXPECT_FALSE(Find(first).valid());
  EXPECT_EQ(world_->watcher.removes, 1);
  Expire(t0 + 1'500'000'000);
  EXPECT_EQ(icmp_->socket_count(), 2u);
  EXPECT_FALSE(Find(second).valid());
  EXPECT_TRUE(Find(third).valid());  // Its reply came at 0.6 s.
  Expire(t0 + 1'600'000'000);
  EXPECT_EQ(icmp_->socket_count(), 1u);
  EXPECT_FALSE(Find(third).valid());
  EXPECT_TRUE(Find(fourth).valid());  // Its request came at 0.7 s.
  Expire(t0 + 1'700'000'000);
  EXPECT_EQ(icmp_->socket_count(), 0u);
  EXPECT_EQ(icmp_->stats().expired, 4u);
  EXPECT_EQ(world_->flows->size(), 0u);
  EXPECT_EQ(world_->watcher.watching(), 0u);
}

TEST_F(IcmpTest, MaxSocketsEvictsTheLeastRecentlyUsed) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start({.max_sockets = 2});
  const std::vector<uint8_t> ten = Echo4("10.0.2.2", 10, 1);
  const std::vector<uint8_t> twenty = Echo4("10.0.2.2", 20, 1);
  Feed(ten);
  Feed(twenty);
  EXPECT_EQ(world_->watcher.adds, 2);
  Collect(2);
  replies_.clear();
  const FlowId evicted = Find(twenty);
  ASSERT_TRUE(evicted.valid());
  Feed(Echo4("10.0.2.2", 10, 2));  // 10 is now the more recent.
  Feed(Echo4("10.0.2.2", 30, 1));  // Evicts 20.
  EXPECT_EQ(icmp_->socket_count(), 2u);
  EXPECT_EQ(icmp_->stats().evicted, 1u);
  EXPECT_EQ(world_->watcher.removes, 1);
  EXPECT_EQ(world_->watcher.watching(), 2u);
  EXPECT_FALSE(Find(twenty).valid());
  EXPECT_TRUE(Find(ten).valid());
  EXPECT_TRUE(Find(Echo4("10.0.2.2", 30, 1)).valid());
  EXPECT_EQ(world_->flows->size(), 2u);
  Collect(2);
  ASSERT_EQ(replies_.size(), 2u);
  std::vector<uint16_t> got = {IdOf(replies_[0]), IdOf(replies_[1])};
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<uint16_t>{10, 30}));
  // An event for the evicted flow's socket, already queued, is stale.
  const uint64_t replies = icmp_->stats().replies;
  icmp_->OnSocketEvent(TagOf(evicted), EPOLLIN);
  EXPECT_EQ(icmp_->stats().replies, replies);
  EXPECT_TRUE(world_->ring.Take().empty());

  // The list goes on: a request for 30 leaves 10 the oldest.
  Feed(Echo4("10.0.2.2", 30, 2));
  Feed(Echo4("10.0.2.2", 40, 1));
  EXPECT_EQ(icmp_->stats().evicted, 2u);
  EXPECT_FALSE(Find(ten).valid());
  EXPECT_TRUE(Find(Echo4("10.0.2.2", 30, 1)).valid());
}

TEST_F(IcmpTest, AFullTableIsCounted) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start({}, IcmpGuest(), /*flows=*/1);
  Feed(Echo4("10.0.2.2", 1, 1));
  Feed(Echo4("10.0.2.2", 2, 1));
  EXPECT_EQ(icmp_->stats().table_full, 1u);
  EXPECT_EQ(icmp_->stats().requests, 1u);
  EXPECT_EQ(icmp_->socket_count(), 1u);
  EXPECT_EQ(world_->watcher.watching(), 1u);
}

TEST_F(IcmpTest, NewSocketsAreRateLimited) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start({.max_sockets = 16, .new_sockets_per_second = 4});
  // A guest cycling identifiers: a burst of 4 sockets, then nothing new.
  for (uint16_t id = 1; id <= 10; ++id) Feed(Echo4("10.0.2.2", id, 1));
  EXPECT_EQ(world_->watcher.adds, 4);
  EXPECT_EQ(icmp_->stats().rate_limited, 6u);
  EXPECT_EQ(world_->flows->size(), 4u);
  // Existing sockets still carry requests.
  Feed(Echo4("10.0.2.2", 1, 2));
  EXPECT_EQ(icmp_->stats().rate_limited, 6u);
  // Half a second refills two.
  ManualClock::now_ns += 500'000'000;
  for (uint16_t id = 11; id <= 14; ++id) Feed(Echo4("10.0.2.2", id, 1));
  EXPECT_EQ(world_->watcher.adds, 6);
  EXPECT_EQ(icmp_->stats().rate_limited, 8u);
}

TEST_F(IcmpTest, MalformedRequestsDropped) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  // ICMPv6 of 4..7 bytes parses, but is too short for an echo.
  std::vector<uint8_t> short6 = Echo6("2001:db8::1", 1, 1, 0);
  short6.resize(short6.size() - 2);
  testing::PutBe16(short6, 18, 6);  // Payload length.
  Feed(short6);
  // A code other than 0.
  Feed(Echo4("10.0.2.2", 1, 1, 8, 8, 1));
  // A bad checksum.
  std::vector<uint8_t> bad = Echo4("10.0.2.2", 1, 1);
  bad[14 + 20 + 8] ^= 1;
  Feed(bad);
  EXPECT_EQ(icmp_->stats().malformed, 3u);
  EXPECT_EQ(world_->flows->size(), 0u);
  // The same with the checksum left partial by the guest is sent.
  Feed(bad, vu::kVirtioNetHdrFNeedsCsum);
  EXPECT_EQ(icmp_->stats().malformed, 3u);
  EXPECT_EQ(icmp_->stats().requests, 1u);
}

TEST_F(IcmpTest, NonEchoIgnored) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  Feed(Echo4("10.0.2.2", 1, 1, 8, /*type=*/0));   // Echo reply.
  Feed(Echo4("10.0.2.2", 1, 1, 8, /*type=*/13));  // Timestamp.
  Feed(Echo6("2001:db8::1", 1, 1, 8, /*type=*/129));
  Feed(Echo6("2001:db8::1", 1, 1, 8, /*type=*/135));
  EXPECT_EQ(icmp_->stats().ignored, 4u);
  EXPECT_EQ(icmp_->socket_count(), 0u);
  EXPECT_EQ(world_->flows->size(), 0u);
  EXPECT_TRUE(world_->ring.Take().empty());
}

TEST_F(IcmpTest, RefusedDestinationsAreCounted) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  Feed(Echo4("127.0.0.1", 1, 1));
  Feed(Echo4("255.255.255.255", 1, 1));
  Feed(Echo4("224.0.0.1", 1, 1));
  Feed(Echo6("::1", 1, 1));
  Feed(Echo6("ff02::1", 1, 1));
  Feed(Echo6("fe80::2", 1, 1));  // Link-local, not ours.
  EXPECT_EQ(icmp_->stats().bad_destination, 6u);
  EXPECT_EQ(icmp_->stats().requests, 0u);
  EXPECT_EQ(icmp_->socket_count(), 0u);
  EXPECT_EQ(world_->flows->size(), 0u);
  EXPECT_EQ(world_->watcher.adds, 0);
}

// ICMP echo follows the forwarding policy TCP and UDP follow: what it
// refuses for them it refuses here, and the addresses that stand for the
// host reach the host's loopback, the reply coming back from the address
// the guest pinged.
TEST_F(IcmpTest, TheForwardingRulesOfTcpAndUdpHold) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  struct Case {
    const char* dst;
    const char* host;  // Where it goes on the host; "" if refused.
  };
  const Case kCases[] = {
      {"127.0.0.1", ""},  // The guest's own loopback, not the host's.
      {"::1", ""},
      {"0.0.0.0", ""},
      {"::", ""},
      {"0.1.2.3", ""},
      {"224.0.0.1", ""},
      {"ff02::1", ""},
      {"255.255.255.255", ""},
      {"10.0.2.255", ""},  // The guest's subnet broadcast.
      {"240.0.0.1", ""},
      {"fe80::99", ""},
      {"::ffff:127.0.0.1", ""},
      {"10.0.2.2", "127.0.0.1"},  // The gateway.
      {"2001:db8::1", "::1"},
      {"fe80::1", "::1"},  // Our link-local address.
  };
  uint64_t refused = 0;
  uint16_t id = 100;
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.dst);
    const InetAddr dst = InetAddr::Parse(c.dst).value();
    // The policy's verdict, the same for the three protocols.
    const std::optional<Endpoint> icmp = world_->forward->Outbound(FlowProto::kIcmp, {dst, 0});
    const std::optional<Endpoint> tcp = world_->forward->Outbound(FlowProto::kTcp, {dst, 80});
    const std::optional<Endpoint> udp = world_->forward->Outbound(FlowProto::kUdp, {dst, 80});
    EXPECT_EQ(icmp.has_value(), tcp.has_value());
    EXPECT_EQ(icmp.has_value(), udp.has_value());
    if (*c.host == '\0') {
      EXPECT_FALSE(icmp.has_value());
    } else {
      ASSERT_TRUE(icmp.has_value());
      EXPECT_EQ(icmp->addr, InetAddr::Parse(c.host).value());
      EXPECT_EQ(tcp->addr, icmp->addr);
    }
    if (dst.is_v6() && !icmp_->ipv6_enabled()) continue;

    const std::vector<uint8_t> request = EchoTo(dst, ++id, 1);
    Feed(request);
    if (!icmp.has_value()) {
      EXPECT_EQ(icmp_->stats().bad_destination, ++refused);
      EXPECT_FALSE(Find(request).valid());
      continue;
    }
    EXPECT_EQ(icmp_->stats().bad_destination, refused);
    EXPECT_TRUE(Find(request).valid());
    // The socket is connected to the host's loopback.
    const std::vector<InetAddr> peers = PingSocketPeers(dst.family());
    EXPECT_NE(std::find(peers.begin(), peers.end(), icmp->addr), peers.end());
    EXPECT_EQ(std::find(peers.begin(), peers.end(), dst), peers.end());
    replies_.clear();
    Collect(1);
    ASSERT_EQ(replies_.size(), 1u);
    ExpectReply(replies_[0], request);  // From the address the guest pinged.
  }
  EXPECT_GT(refused, 0u);
}

TEST_F(IcmpTest, DisabledFamilyIgnored) {
  SKIP_WITHOUT_PING_SOCKETS();
  GuestConfig g = IcmpGuest();
  g.ipv4_only = true;
  Start({}, g);
  EXPECT_FALSE(icmp_->ipv6_enabled());
  Feed(Echo6("2001:db8::1", 1, 1));
  EXPECT_EQ(icmp_->stats().ignored, 1u);
  EXPECT_EQ(icmp_->stats().bad_destination, 0u);
  EXPECT_EQ(icmp_->socket_count(), 0u);
}

// A reply the guest has no room for is dropped, as on a wire, and counted.
TEST_F(IcmpTest, ReplyWithoutRoomIsDropped) {
  SKIP_WITHOUT_PING_SOCKETS();
  Start();
  world_->ring.StopQueue();
  Feed(Echo4("10.0.2.2", 1, 1));
  for (int i = 0; i < 200 && icmp_->stats().reply_dropped == 0; ++i) {
    world_->watcher.Poll(icmp_.get(), 10);
  }
  EXPECT_EQ(icmp_->stats().reply_dropped, 1u);
  EXPECT_EQ(icmp_->stats().replies, 0u);
  world_->ring.StartQueue();
  EXPECT_TRUE(world_->ring.Take().empty());
}

}  // namespace
}  // namespace vunet::net
