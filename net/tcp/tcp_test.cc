#include "net/tcp/tcp.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/config/config.h"
#include "net/config/port_forward.h"
#include "net/flow/flow.h"
#include "net/forward/forward.h"
#include "net/migrate/repair_control.h"
#include "net/migrate/state_stream.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/repair/testing/repair_testing.h"
#include "net/testing/test_frames.h"
#include "net/testing/world.h"
#include "net/translate/translator.h"
#include "vu/common.h"
#include "vu/testing/guest_rx.h"

namespace vunet::net {
namespace {

using testing::EpollWatcher;
using testing::Ip4;
using testing::ManualClock;
using testing::TranslatorWorld;
using vu::testing::GuestRxRing;

constexpr uint16_t kGuestPort = 40000;

// The test's clock: timers fire only when a test moves it and expires them.
int64_t& fake_now = ManualClock::now_ns;

// A segment as the guest sees it.
struct Seg {
  uint8_t flags = 0;
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint16_t window = 0;
  uint16_t sport = 0;
  uint16_t dport = 0;
  TcpOptions options;
  std::vector<uint8_t> payload;
  bool checksum_ok = false;
  vu::VirtioNetHdr hdr;  // Its virtio-net header, as the guest's driver read it.
};

std::optional<Seg> ParseSeg(const GuestRxRing::Frame& f) {
  std::vector<uint8_t> frame = f.bytes;
  ParsedFrame p;
  if (!testing::Parse(frame, &p).ok() || p.l4 != L4Kind::kTcp) return std::nullopt;
  Seg s;
  s.flags = p.tcp.flags;
  s.seq = p.tcp.seq;
  s.ack = p.tcp.ack;
  s.window = p.tcp.window;
  s.sport = p.src_port;
  s.dport = p.dst_port;
  s.options = p.tcp.options;
  s.payload.assign(frame.begin() + p.payload_offset,
                   frame.begin() + p.payload_offset + p.payload_len);
  const iovec iov = {frame.data(), frame.size()};
  s.checksum_ok =
      (p.l3 == L3Kind::kIpv4
           ? L4ChecksumV4(p.ip.src4, p.ip.dst4, IPPROTO_TCP, {&iov, 1}, p.l4_offset, p.l4_len)
           : L4ChecksumV6(p.ip.src6, p.ip.dst6, IPPROTO_TCP, {&iov, 1}, p.l4_offset, p.l4_len)) ==
      0;
  s.hdr = f.hdr;
  return s;
}

std::vector<uint8_t> Pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed * 131 + i * 7 + (i >> 9));
  return v;
}

// Where the first difference is, for a readable failure.
std::string Compare(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  if (got == want) return "";
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return "got " + std::to_string(got.size()) + " bytes, want " + std::to_string(want.size()) +
         "; first difference at byte " + std::to_string(i);
}

// A host listener on 127.0.0.1 and its port.
struct HostListener {
  HostListener() : fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(fd.get(), 16), 0);
    socklen_t len = sizeof(a);
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  // The next connection, with a receive timeout so that a test cannot hang.
  UniqueFd Accept() {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, 2000) != 1) return UniqueFd();
    UniqueFd c(accept4(fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    timeval tv{2, 0};
    setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return c;
  }
  UniqueFd fd;
  uint16_t port = 0;
};

// A port nobody listens on.
uint16_t ClosedPort() {
  HostListener l;
  return l.port;  // Closed when l goes.
}

struct Options {
  bool peek_off = true;
  bool mergeable = true;
  bool guest_csum = false;
  uint32_t queue_size = 256;  // The guest's receive ring.
  int buffers = 64;           // Receive buffers of 2048 bytes posted at the start.
};

// The translator in a TranslatorWorld (net/testing/world.h): real loopback
// sockets on the host side; on the guest side the one receive ring every
// segment reaches the guest through, data and control alike, in order.
class TcpTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { Make({.peek_off = GetParam()}); }

  // `rules`, if set, replaces the forwarding rules the guest's
  // configuration gives.
  void Make(const Options& o, TcpTranslatorOptions topts = {}, size_t capacity = 64,
            std::optional<ForwardRules> rules = std::nullopt) {
    tcp_.reset();
    TranslatorWorld::Options w;
    w.rx.queue_size = o.queue_size;
    w.rx.mergeable = o.mergeable;
    w.rx.guest_csum = o.guest_csum;
    w.flows = capacity;
    w.clock = ManualClock::Now;
    world_ = std::make_unique<TranslatorWorld>(w);
    if (rules.has_value()) {
      world_->forward = std::make_unique<Forwarding>(*rules, world_->guest.guest_mac);
    }
    topts.use_peek_off = o.peek_off;
    absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(world_->Env(), topts);
    ASSERT_TRUE(t.ok()) << t.status();
    tcp_ = std::move(*t);
    if (o.peek_off) {
      // Where the kernel lacks it the translator says so; the fallback is
      // then what both parameters test.
      if (!tcp_->peek_offset()) GTEST_LOG_(INFO) << "no SO_PEEK_OFF for TCP on this kernel";
    } else {
      EXPECT_FALSE(tcp_->peek_offset());
    }
    ring().Post(o.buffers, 2048);
  }

  void TearDown() override {
    tcp_.reset();
    if (world_ != nullptr) {
      EXPECT_EQ(watcher().watching(), 0u) << "sockets left watched";
      EXPECT_EQ(ring().rx().stats().writer_bugs, 0u)
          << "the translator broke the RxQueue's contract";
    }
  }

  GuestRxRing& ring() { return world_->ring; }
  FlowTable& flows() { return *world_->flows; }
  EpollWatcher& watcher() { return world_->watcher; }
  const GuestConfig& guest() const { return world_->guest; }

  // A frame from the guest (10.0.2.15:sport) to dst:dport.
  std::vector<uint8_t> Frame(uint8_t flags, uint32_t seq, uint32_t ack,
                             const std::vector<uint8_t>& payload = {}, uint16_t window = 65535,
                             uint16_t dport = 0, const std::vector<uint8_t>& options = {},
                             uint16_t sport = kGuestPort) {
    FrameSpec s;
    s.src_mac = kDefaultGuestMac;
    s.dst_mac = kDefaultGatewayMac;
    s.src4 = guest().addr4;
    s.dst4 = dst_;
    s.protocol = IPPROTO_TCP;
    s.src_port = sport;
    s.dst_port = dport != 0 ? dport : dport_;
    s.tcp_seq = seq;
    s.tcp_ack = ack;
    s.tcp_flags = flags;
    s.tcp_window = window;
    s.tcp_options = options;
    return testing::Build(s, payload);
  }

  // One guest frame to the translator, as the dispatcher hands it over (the
  // guest's identity sees it first).
  void Deliver(const std::vector<iovec>& iov) {
    ParsedFrame p;
    ASSERT_TRUE(ParseFrame(iov, &p).ok());
    world_->forward->guest().Learn(p);
    tcp_->OnFrame(vu::VirtioNetHdr{}, iov, p);
  }

  // Frames delivered as one transmit batch: every frame stays in place until
  // OnBatchEnd, as guest memory does.
  void SendBatch(std::vector<std::vector<uint8_t>> frames) {
    std::vector<std::vector<iovec>> iovs;
    iovs.reserve(frames.size());
    for (std::vector<uint8_t>& f : frames) iovs.push_back(testing::Split(f, 700));
    for (const std::vector<iovec>& iov : iovs) Deliver(iov);
    tcp_->OnBatchEnd();
  }

  void Send(std::vector<uint8_t> frame, bool batch_end = true) {
    // Cut in pieces so that headers and payload straddle buffers.
    const std::vector<iovec> iov = testing::Split(frame, 700);
    Deliver(iov);
    if (batch_end) tcp_->OnBatchEnd();
  }

  // The end of a loop iteration, as the backend's (Backend::FlushRx): the
  // RxQueue is flushed, and if a writer was told to wait for that flush (its
  // buffers were held by frames not yet published) it writes again.
  void EndIteration() {
    if (ring().rx().Flush()) tcp_->OnRxAvailable();
  }

  // Every segment that reached the guest since the last call, in the ring's
  // order, after the iteration's flush. The guest's driver posts a buffer
  // again for each one it took (unless refill_ is false), without a kick:
  // tests call OnRxAvailable where they mean the guest to kick.
  std::vector<Seg> Segments() {
    EndIteration();
    const int empty_before = ring().returned_empty();
    int used = 0;
    std::vector<Seg> out;
    for (const GuestRxRing::Frame& f : ring().Take()) {
      used += f.buffers;
      std::optional<Seg> s = ParseSeg(f);
      EXPECT_TRUE(s.has_value());
      if (s) out.push_back(*s);
    }
    used += ring().returned_empty() - empty_before;
    if (refill_ && used > 0) ring().Post(used);
    for (const Seg& s : out) EXPECT_TRUE(s.checksum_ok) << "bad checksum";
    return out;
  }

  // Polls the sockets until `done` says so (collecting segments into
  // *segs) or two seconds pass.
  bool Pump(std::vector<Seg>* segs, const std::function<bool()>& done) {
    for (int i = 0; i < 200; ++i) {
      watcher().Poll(tcp_.get(), 10);
      for (Seg& s : Segments()) segs->push_back(s);
      if (done()) return true;
    }
    return false;
  }

  // Waits for a segment with all of `flags`.
  std::optional<Seg> WaitFor(uint8_t flags) {
    std::vector<Seg> segs;
    std::optional<Seg> found;
    Pump(&segs, [&] {
      for (const Seg& s : segs) {
        if ((s.flags & flags) == flags) {
          found = s;
          return true;
        }
      }
      return false;
    });
    return found;
  }

  // Host data for the guest: pumps until `n` bytes arrived, acking each
  // batch with `window` (0: do not ack) and posting receive buffers (with a
  // kick). Every segment seen goes to *seen, in order, if given.
  std::vector<uint8_t> ReceiveData(size_t n, uint16_t window = 65535,
                                   std::vector<Seg>* seen = nullptr) {
    std::vector<uint8_t> got;
    std::vector<Seg> segs;
    Pump(&segs, [&] {
      for (const Seg& s : segs) {
        if (seen != nullptr) seen->push_back(s);
        if (s.payload.empty()) continue;
        EXPECT_EQ(s.seq, guest_ack_) << "data out of order";
        if (s.seq != guest_ack_) continue;
        got.insert(got.end(), s.payload.begin(), s.payload.end());
        guest_ack_ += static_cast<uint32_t>(s.payload.size());
      }
      segs.clear();
      if (window != 0) {
        Send(Frame(kTcpAck, guest_seq_, guest_ack_, {}, window));
        ring().Post(64);
        tcp_->OnRxAvailable();
      }
      return got.size() >= n;
    });
    return got;
  }

  // As ReceiveData, but the way a guest's stack takes what comes: bytes it
  // has already are dropped, and a segment past the next byte it expects is
  // dropped and answered at once with a duplicate ACK. *out_of_order counts
  // those.
  std::vector<uint8_t> GuestReceives(size_t n, int* out_of_order) {
    std::vector<uint8_t> got;
    std::vector<Seg> segs;
    Pump(&segs, [&] {
      for (const Seg& s : segs) {
        if (s.payload.empty()) continue;
        if (static_cast<int32_t>(s.seq - guest_ack_) > 0) {
          ++*out_of_order;
          Send(Frame(kTcpAck, guest_seq_, guest_ack_));
          continue;
        }
        const uint32_t have = guest_ack_ - s.seq;
        if (have >= s.payload.size()) continue;
        got.insert(got.end(), s.payload.begin() + have, s.payload.end());
        guest_ack_ += static_cast<uint32_t>(s.payload.size() - have);
      }
      segs.clear();
      Send(Frame(kTcpAck, guest_seq_, guest_ack_));
      ring().Post(64);
      tcp_->OnRxAvailable();
      return got.size() >= n;
    });
    return got;
  }

  // The guest connects to dst_:dport_ and the host accepts. Returns the
  // host's end.
  UniqueFd Establish(HostListener& host, uint8_t ws = 7, bool sack = false) {
    dport_ = host.port;
    std::vector<uint8_t> opts = {2, 4, 0x05, 0xb4};  // MSS 1460.
    if (ws != 0xff) opts.insert(opts.end(), {1, 3, 3, ws});
    if (sack) opts.insert(opts.end(), {1, 1, 4, 2});
    Send(Frame(kTcpSyn, guest_isn_, 0, {}, 65535, 0, opts));
    std::optional<Seg> synack = WaitFor(kTcpSyn | kTcpAck);
    EXPECT_TRUE(synack.has_value());
    if (!synack) return UniqueFd();
    EXPECT_EQ(synack->ack, guest_isn_ + 1);
    our_isn_ = synack->seq;
    guest_seq_ = guest_isn_ + 1;
    guest_ack_ = our_isn_ + 1;
    UniqueFd h = host.Accept();
    EXPECT_TRUE(h.valid());
    Send(Frame(kTcpAck, guest_seq_, guest_ack_));
    return h;
  }

  // Expires the flow timers at fake_now.
  void Expire() {
    flows().Expire(fake_now, [&](FlowId id) { tcp_->OnTimer(id, fake_now); });
  }

  // Declared before the translator, which uses it until it goes.
  std::unique_ptr<TranslatorWorld> world_;
  std::unique_ptr<TcpTranslator> tcp_;
  bool refill_ = true;
  in_addr dst_ = Ip4("10.0.2.2");
  uint16_t dport_ = 0;
  uint32_t guest_isn_ = 1000;
  uint32_t guest_seq_ = 0;
  uint32_t guest_ack_ = 0;
  uint32_t our_isn_ = 0;
};

INSTANTIATE_TEST_SUITE_P(PeekOffset, TcpTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "PeekOff" : "Fallback";
                         });

TEST_P(TcpTest, ConnectRefusedIsReset) {
  dport_ = ClosedPort();
  Send(Frame(kTcpSyn, 5000, 0));
  std::optional<Seg> rst = WaitFor(kTcpRst);
  ASSERT_TRUE(rst.has_value());
  EXPECT_TRUE(rst->flags & kTcpAck);
  EXPECT_EQ(rst->ack, 5001u);
  EXPECT_EQ(rst->sport, dport_);
  EXPECT_EQ(rst->dport, kGuestPort);
  EXPECT_EQ(flows().size(), 0u);
  EXPECT_EQ(tcp_->stats().connect_failures, 1u);
}

// -o/--outbound-if4: connections to other hosts leave from the binding
// (here an interface that does not exist: the guest gets an RST and no flow
// stays); connections to the host's loopback (the gateway) are left alone.
TEST_P(TcpTest, OutboundBindingAppliesToOtherHostsOnly) {
  TcpTranslatorOptions o;
  o.outbound.ifname4 = "nosuch0";
  Make({.peek_off = GetParam()}, o);
  dst_ = Ip4("192.0.2.1");
  dport_ = 80;
  Send(Frame(kTcpSyn, 5000, 0));
  std::optional<Seg> rst = WaitFor(kTcpRst);
  ASSERT_TRUE(rst.has_value());
  EXPECT_EQ(rst->ack, 5001u);
  EXPECT_EQ(flows().size(), 0u);
  EXPECT_EQ(tcp_->stats().connects, 0u);

  dst_ = guest().gateway4;
  HostListener host;
  EXPECT_TRUE(Establish(host).valid());
  EXPECT_EQ(tcp_->stats().connects, 1u);
}

// DNS over TCP follows the forwarding rules' DNS forwards as UDP does (the
// gateway standing for a resolver on the host's loopback, --dns-forward):
// here the gateway's port 53 to a listener of the test's in the resolver's
// place; the guest sees the gateway's port 53 answer.
TEST_P(TcpTest, DnsGoesWhereTheRulesSendIt) {
  HostListener resolver;
  ForwardRules rules = RulesFromConfig(testing::TestGuest(), {});
  rules.dns = {{Endpoint{InetAddr::V4(testing::TestGuest().gateway4), 53},
                Endpoint{InetAddr::V4(Ip4("127.0.0.1")), resolver.port}}};
  Make({.peek_off = GetParam()}, {}, 64, rules);
  dst_ = guest().gateway4;
  dport_ = 53;
  Send(Frame(kTcpSyn, guest_isn_, 0));
  std::optional<Seg> synack = WaitFor(kTcpSyn | kTcpAck);
  ASSERT_TRUE(synack.has_value());
  EXPECT_EQ(synack->sport, 53);
  guest_seq_ = guest_isn_ + 1;
  guest_ack_ = synack->seq + 1;
  UniqueFd h = resolver.Accept();
  ASSERT_TRUE(h.valid());
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  const std::vector<uint8_t> query = Pattern(40, 53);
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, query));
  std::vector<uint8_t> got(query.size());
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), static_cast<ssize_t>(got.size()));
  EXPECT_EQ(got, query);
}

TEST_P(TcpTest, SynAckAfterConnectWithOptions) {
  HostListener host;
  dport_ = host.port;
  Send(Frame(kTcpSyn, 7000, 0, {}, 29200, 0, {2, 4, 0x05, 0xb4, 1, 3, 3, 9, 4, 2, 0, 0}));
  std::optional<Seg> synack = WaitFor(kTcpSyn | kTcpAck);
  ASSERT_TRUE(synack.has_value());
  EXPECT_EQ(synack->ack, 7001u);
  EXPECT_TRUE(synack->options.has_mss);
  EXPECT_EQ(synack->options.mss, 65520 - 40);
  EXPECT_TRUE(synack->options.has_window_scale);
  EXPECT_EQ(synack->options.window_scale, 7);
  EXPECT_TRUE(synack->options.sack_permitted);  // The guest offered it.
  EXPECT_FALSE(synack->options.has_timestamps);
  EXPECT_GT(synack->window, 0);

  // A retransmitted SYN gets the SYN-ACK again.
  Send(Frame(kTcpSyn, 7000, 0));
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags, kTcpSyn | kTcpAck);
  EXPECT_EQ(segs[0].seq, synack->seq);
}

TEST_P(TcpTest, NoWindowScaleWithoutTheGuests) {
  HostListener host;
  UniqueFd h = Establish(host, 0xff);
  ASSERT_TRUE(h.valid());
  // Unscaled: the window field is bytes.
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, {'x'}));
  std::vector<Seg> segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_GT(segs.back().window, 128);
}

TEST_P(TcpTest, DataBothWays) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  EXPECT_EQ(tcp_->stats().established, 1u);

  // Guest to host, in two segments.
  const std::vector<uint8_t> a = Pattern(3000, 1);
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, std::vector<uint8_t>(a.begin(), a.begin() + 1400)),
       false);
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_ + 1400, guest_ack_,
             std::vector<uint8_t>(a.begin() + 1400, a.end())));
  guest_seq_ += 3000;
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u) << "one ACK per batch";
  EXPECT_EQ(segs[0].flags, kTcpAck);
  EXPECT_EQ(segs[0].ack, guest_seq_);
  EXPECT_EQ(segs[0].seq, guest_ack_);
  std::vector<uint8_t> got(3000);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 3000);
  EXPECT_EQ(got, a);

  // Host to guest: segments of the guest's MSS.
  const std::vector<uint8_t> b = Pattern(5000, 2);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 5000);
  std::vector<uint8_t> received = ReceiveData(5000);
  EXPECT_EQ(received, b);
  EXPECT_EQ(tcp_->stats().bytes_to_guest, 5000u);
  EXPECT_GE(tcp_->stats().frames_to_guest, 4u);  // MSS 1460.
}

// The guest's keepalive probes (its last byte again: sequence rcv_nxt - 1,
// no payload or one byte of it) get an ACK from us and never reach the host
// socket; the host socket has keepalives of its own.
TEST_P(TcpTest, KeepaliveProbesAreAnsweredHereAndHostSocketsKeepAlive) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, {'a'}));
  guest_seq_ += 1;
  Segments();
  char c;
  ASSERT_EQ(recv(h.get(), &c, 1, 0), 1);
  for (const std::vector<uint8_t>& probe : {std::vector<uint8_t>{}, std::vector<uint8_t>{'z'}}) {
    Send(Frame(kTcpAck, guest_seq_ - 1, guest_ack_, probe));
    std::vector<Seg> segs = Segments();
    ASSERT_EQ(segs.size(), 1u) << "the probe is answered";
    EXPECT_EQ(segs[0].flags, kTcpAck);
    EXPECT_EQ(segs[0].ack, guest_seq_);
    EXPECT_TRUE(segs[0].payload.empty());
  }
  EXPECT_EQ(recv(h.get(), &c, 1, MSG_DONTWAIT), -1) << "nothing of the probes reached the host";
  EXPECT_EQ(tcp_->stats().bytes_from_guest, 1u);
  // The translator's socket: the fd in this process bound where the host's
  // peer is.
  sockaddr_in peer{};
  socklen_t len = sizeof(peer);
  ASSERT_EQ(getpeername(h.get(), reinterpret_cast<sockaddr*>(&peer), &len), 0);
  int ours = -1;
  for (int fd = 3; fd < 1024 && ours < 0; ++fd) {
    sockaddr_in name{};
    socklen_t n = sizeof(name);
    if (fd != h.get() && getsockname(fd, reinterpret_cast<sockaddr*>(&name), &n) == 0 &&
        name.sin_family == AF_INET && name.sin_port == peer.sin_port &&
        name.sin_addr.s_addr == peer.sin_addr.s_addr) {
      ours = fd;
    }
  }
  ASSERT_GE(ours, 0);
  int keepalive = 0;
  len = sizeof(keepalive);
  ASSERT_EQ(getsockopt(ours, SOL_SOCKET, SO_KEEPALIVE, &keepalive, &len), 0);
  EXPECT_EQ(keepalive, 1);
}

TEST_P(TcpTest, GuestCsumLeavesChecksumToTheGuest) {
  Make({.peek_off = GetParam(), .guest_csum = true});
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  ASSERT_EQ(send(h.get(), "hello", 5, 0), 5);
  // (Not through Segments(): the data segment's checksum is the guest's to
  // fill in, so it is not checked.)
  std::optional<Seg> seg;
  for (int i = 0; i < 100 && !seg; ++i) {
    watcher().Poll(tcp_.get(), 10);
    EndIteration();
    for (const GuestRxRing::Frame& f : ring().Take()) seg = ParseSeg(f);
  }
  ASSERT_TRUE(seg.has_value());
  EXPECT_EQ(seg->payload, std::vector<uint8_t>({'h', 'e', 'l', 'l', 'o'}));
  EXPECT_EQ(seg->hdr.flags, vu::kVirtioNetHdrFDataValid);
  // Control segments come through the same ring with complete checksums,
  // and say so.
  Send(Frame(kTcpSyn, 99999, 0));  // A challenge ACK.
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_TRUE(segs[0].checksum_ok);
  EXPECT_EQ(segs[0].hdr.flags, vu::kVirtioNetHdrFDataValid);
}

TEST_P(TcpTest, OutOfOrderAndDuplicateSegmentsAreAckedNotSent) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> d = Pattern(200, 4);
  // Ahead of what we expect: held, not sent; an ACK of the expected sequence.
  Send(Frame(kTcpAck, guest_seq_ + 100, guest_ack_,
             std::vector<uint8_t>(d.begin() + 100, d.begin() + 150)));
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].ack, guest_seq_);
  EXPECT_EQ(tcp_->stats().out_of_order, 1u);
  EXPECT_EQ(tcp_->stats().bytes_from_guest, 0u);
  // In order, then again (retransmitted), then overlapping.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, std::vector<uint8_t>(d.begin(), d.begin() + 100)));
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, std::vector<uint8_t>(d.begin(), d.begin() + 100)));
  Send(Frame(kTcpAck, guest_seq_ + 50, guest_ack_, std::vector<uint8_t>(d.begin() + 50, d.end())));
  segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 200);
  std::vector<uint8_t> got(200);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 200);
  EXPECT_EQ(got, d);
  EXPECT_EQ(tcp_->stats().bytes_from_guest, 200u);
}

TEST_P(TcpTest, SegmentsAheadAreHeldUntilTheHoleFills) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> d = Pattern(1010, 6);
  auto piece = [&](size_t from, size_t to) {
    return Frame(kTcpAck, guest_seq_ + from, guest_ack_,
                 std::vector<uint8_t>(d.begin() + from, d.begin() + to));
  };
  // As a guest sends after a retransmission timeout: new data first, the
  // hole's retransmission after it, in one batch; and a segment whose hole
  // stays open.
  SendBatch({piece(200, 300), piece(100, 200), piece(0, 100), piece(1000, 1010)});
  std::vector<uint8_t> got(300);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 300);
  EXPECT_EQ(got, std::vector<uint8_t>(d.begin(), d.begin() + 300));
  EXPECT_EQ(tcp_->stats().out_of_order, 3u);
  EXPECT_EQ(tcp_->stats().ooo_held, 3u);
  EXPECT_EQ(tcp_->stats().bytes_from_guest, 300u);
  std::vector<Seg> segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 300);
  // The far segment is held: once the hole before it fills, it goes on with
  // the segment that filled it, and the ACK covers both.
  SendBatch({piece(300, 1000)});
  got.resize(710);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 710);
  EXPECT_EQ(got, std::vector<uint8_t>(d.begin() + 300, d.end()));
  EXPECT_EQ(tcp_->stats().ooo_delivered, 210u);
  segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 1010);
}

// reorder.bytes 0 (--tcp-reorder-bytes 0): no pool; a segment past a hole is
// dropped and answered with a duplicate ACK, and the stream goes on when the
// guest sends it again.
TEST_P(TcpTest, WithoutAPoolSegmentsAheadAreDroppedAndSentAgain) {
  TcpTranslatorOptions o;
  o.reorder.bytes = 0;
  Make({.peek_off = GetParam()}, o);
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> d = Pattern(300, 7);
  auto piece = [&](size_t from, size_t to) {
    return Frame(kTcpAck, guest_seq_ + from, guest_ack_,
                 std::vector<uint8_t>(d.begin() + from, d.begin() + to));
  };
  SendBatch({piece(100, 200), piece(0, 100)});
  std::vector<uint8_t> got(100);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 100);
  EXPECT_EQ(got, std::vector<uint8_t>(d.begin(), d.begin() + 100));
  EXPECT_EQ(tcp_->stats().ooo_held, 0u);
  EXPECT_EQ(tcp_->stats().ooo_dropped, 1u);
  std::vector<Seg> segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 100);
  SendBatch({piece(100, 300)});
  got.resize(200);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 200);
  EXPECT_EQ(got, std::vector<uint8_t>(d.begin() + 100, d.end()));
  segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 300);
}

TEST_P(TcpTest, DuplicateAcksForAHoleFollowDataTakenAndDataSent) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // In one batch: a segment in order, then (one lost) three past the hole.
  // The first ACK moves to the hole; three duplicates of it follow.
  SendBatch({Frame(kTcpAck, guest_seq_, guest_ack_, Pattern(100, 1)),
             Frame(kTcpAck, guest_seq_ + 200, guest_ack_, Pattern(100, 3)),
             Frame(kTcpAck, guest_seq_ + 300, guest_ack_, Pattern(100, 4)),
             Frame(kTcpAck, guest_seq_ + 400, guest_ack_, Pattern(100, 5))});
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 4u);
  for (const Seg& s : segs) {
    EXPECT_EQ(s.ack, guest_seq_ + 100);
    EXPECT_TRUE(s.payload.empty());
  }
  // With host data to send in the same flush: the data segments carry the
  // ACK, and three pure duplicates come after them.
  ASSERT_EQ(send(h.get(), "reply", 5, 0), 5);
  watcher().Poll(tcp_.get(), 100);
  for (const Seg& s : Segments()) guest_ack_ += static_cast<uint32_t>(s.payload.size());
  ASSERT_EQ(send(h.get(), "more", 4, 0), 4);
  usleep(20000);  // In the socket before the batch (its EPOLLIN not yet handled).
  SendBatch({Frame(kTcpAck, guest_seq_ + 300, guest_ack_, Pattern(100, 4)),
             Frame(kTcpAck, guest_seq_ + 400, guest_ack_, Pattern(100, 5)),
             Frame(kTcpAck, guest_seq_ + 500, guest_ack_, Pattern(100, 6))});
  watcher().Poll(tcp_.get(), 100);
  segs = Segments();
  size_t pure = 0;
  size_t data = 0;
  for (const Seg& s : segs) {
    EXPECT_EQ(s.ack, guest_seq_ + 100);
    (s.payload.empty() ? pure : data) += 1;
  }
  // Data and control segments share the ring, in the order they were
  // written: the guest sees the duplicates after the data, not before.
  EXPECT_EQ(data, 1u);
  EXPECT_GE(pure, 3u);
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs[0].payload, std::vector<uint8_t>({'m', 'o', 'r', 'e'})) << "the data first";
}

TEST_P(TcpTest, EachSegmentDroppedPastAHoleGetsADuplicateAck) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // The first segment of the window was lost: the four after it are
  // held, and the guest gets three duplicate ACKs of the hole (enough for
  // its fast retransmit) in the same batch rather than one.
  std::vector<std::vector<uint8_t>> batch;
  for (uint32_t i = 1; i <= 4; ++i) {
    batch.push_back(Frame(kTcpAck, guest_seq_ + 100 * i, guest_ack_, Pattern(100, i)));
  }
  SendBatch(batch);
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 3u);
  for (const Seg& s : segs) {
    EXPECT_EQ(s.ack, guest_seq_);
    EXPECT_EQ(s.window, segs[0].window) << "duplicates carry the same window";
  }
  EXPECT_EQ(tcp_->stats().out_of_order, 4u);
  // The hole's retransmission: in order again, one ACK of everything.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, Pattern(100, 0)));
  segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].ack, guest_seq_ + 500);
  EXPECT_EQ(tcp_->stats().ooo_delivered, 400u);
}

TEST_P(TcpTest, ThreeDuplicateAcksRetransmitFromTheSocket) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> b = Pattern(4000, 5);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 4000);
  // Receive without acking.
  std::vector<Seg> segs;
  size_t bytes = 0;
  Pump(&segs, [&] {
    bytes = 0;
    for (const Seg& s : segs) bytes += s.payload.size();
    return bytes >= 4000;
  });
  ASSERT_EQ(bytes, 4000u);
  // The first segment "lost": the guest acks only the start, three times
  // more.
  for (int i = 0; i < 4; ++i) Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  EXPECT_EQ(tcp_->stats().fast_retransmits, 1u);
  std::vector<Seg> again = Segments();
  std::vector<uint8_t> resent;
  for (const Seg& s : again) {
    if (s.payload.empty()) continue;
    if (resent.empty()) {
      EXPECT_EQ(s.seq, guest_ack_);
    }
    resent.insert(resent.end(), s.payload.begin(), s.payload.end());
  }
  EXPECT_EQ(resent, b);
  // A further duplicate does not start another.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  EXPECT_EQ(tcp_->stats().fast_retransmits, 1u);
  // Acking everything discards it from the socket: nothing more comes.
  guest_ack_ += 4000;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  for (const Seg& s : Segments()) EXPECT_TRUE(s.payload.empty());
  // New data continues the sequence.
  ASSERT_EQ(send(h.get(), "more", 4, 0), 4);
  EXPECT_EQ(ReceiveData(4), std::vector<uint8_t>({'m', 'o', 'r', 'e'}));
}

// A SACK option with these [left, right) blocks, behind two NOPs.
std::vector<uint8_t> SackOption(std::initializer_list<std::pair<uint32_t, uint32_t>> blocks) {
  std::vector<uint8_t> o = {1, 1, 5, static_cast<uint8_t>(2 + 8 * blocks.size())};
  for (const auto& [left, right] : blocks) {
    for (const uint32_t edge : {left, right}) {
      for (int shift = 24; shift >= 0; shift -= 8) o.push_back(static_cast<uint8_t>(edge >> shift));
    }
  }
  return o;
}

TEST_P(TcpTest, SackPermittedOnlyWhenTheGuestOffersIt) {
  HostListener host;
  dport_ = host.port;
  Send(Frame(kTcpSyn, 7000, 0, {}, 29200, 0, {2, 4, 0x05, 0xb4}));
  std::optional<Seg> synack = WaitFor(kTcpSyn | kTcpAck);
  ASSERT_TRUE(synack.has_value());
  EXPECT_FALSE(synack->options.sack_permitted);
}

TEST_P(TcpTest, DuplicateAcksCarrySackBlocksForWhatIsHeld) {
  HostListener host;
  UniqueFd h = Establish(host, 7, /*sack=*/true);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> d = Pattern(1000, 8);
  auto piece = [&](size_t from, size_t to) {
    return Frame(kTcpAck, guest_seq_ + from, guest_ack_,
                 std::vector<uint8_t>(d.begin() + from, d.begin() + to));
  };
  // Two holes: [0, 100) and [300, 500); the latest segment taken is [800, 900).
  SendBatch({piece(100, 300), piece(500, 700), piece(700, 800), piece(800, 900)});
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 3u);
  for (const Seg& seg : segs) {
    EXPECT_EQ(seg.ack, guest_seq_);
    ASSERT_EQ(seg.options.sack_count, 2);
    EXPECT_EQ(seg.options.sack[0].left, guest_seq_ + 500);  // Holds the latest.
    EXPECT_EQ(seg.options.sack[0].right, guest_seq_ + 900);
    EXPECT_EQ(seg.options.sack[1].left, guest_seq_ + 100);
    EXPECT_EQ(seg.options.sack[1].right, guest_seq_ + 300);
  }
  EXPECT_GE(tcp_->stats().sack_sent, 3u);
  // The first hole fills: the ACK moves to the second, its SACK shows the rest.
  SendBatch({piece(0, 100)});
  segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 300);
  ASSERT_EQ(segs.back().options.sack_count, 1);
  EXPECT_EQ(segs.back().options.sack[0].left, guest_seq_ + 500);
  // The second: everything goes to the socket, no SACK left.
  SendBatch({piece(300, 500), piece(900, 1000)});
  segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 1000);
  EXPECT_EQ(segs.back().options.sack_count, 0);
  std::vector<uint8_t> got(1000);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 1000);
  EXPECT_EQ(got, d);
}

TEST_P(TcpTest, TheGuestsSackResendsOnlyTheHoles) {
  HostListener host;
  UniqueFd h = Establish(host, 7, /*sack=*/true);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> b = Pattern(14600, 9);  // Ten segments of 1460.
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), static_cast<ssize_t>(b.size()));
  std::vector<Seg> segs;
  size_t bytes = 0;
  Pump(&segs, [&] {
    bytes = 0;
    for (const Seg& seg : segs) bytes += seg.payload.size();
    return bytes >= b.size();
  });
  ASSERT_EQ(bytes, b.size());
  // Segments 0 and 3-4 "lost": the guest acks nothing, SACKs 1-2 and 5-9.
  const uint32_t base = guest_ack_;
  Send(Frame(kTcpAck, guest_seq_, base, {}, 65535, 0,
             SackOption({{base + 5 * 1460, base + 10 * 1460}, {base + 1460, base + 3 * 1460}})));
  EXPECT_EQ(tcp_->stats().recoveries, 1u);
  std::vector<std::pair<uint32_t, size_t>> resent;
  for (const Seg& seg : Segments()) {
    if (!seg.payload.empty()) resent.push_back({seg.seq - base, seg.payload.size()});
  }
  const std::vector<std::pair<uint32_t, size_t>> holes = {
      {0, 1460}, {3 * 1460, 1460}, {4 * 1460, 1460}};
  EXPECT_EQ(resent, holes);
  EXPECT_EQ(tcp_->stats().sack_retransmits, 3u);
  // A partial ACK (the first hole arrived) resends nothing more: the other
  // hole went already.
  Send(Frame(kTcpAck, guest_seq_, base + 3 * 1460, {}, 65535, 0,
             SackOption({{base + 5 * 1460, base + 10 * 1460}})));
  for (const Seg& seg : Segments()) EXPECT_TRUE(seg.payload.empty());
  // Everything acknowledged: the recovery ends, new data goes on.
  guest_ack_ = base + static_cast<uint32_t>(b.size());
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  ASSERT_EQ(send(h.get(), "next", 4, 0), 4);
  EXPECT_EQ(ReceiveData(4), std::vector<uint8_t>({'n', 'e', 'x', 't'}));
}

TEST_P(TcpTest, HostileSackBlocksAreRefusedAndCounted) {
  HostListener host;
  UniqueFd h = Establish(host, 7, /*sack=*/true);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> b = Pattern(2920, 10);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), static_cast<ssize_t>(b.size()));
  std::vector<Seg> segs;
  Pump(&segs, [&] {
    size_t n = 0;
    for (const Seg& seg : segs) n += seg.payload.size();
    return n >= b.size();
  });
  const uint32_t base = guest_ack_;
  // Past what we sent, reversed, straddling the end, absurdly long.
  Send(Frame(kTcpAck, guest_seq_, base, {}, 65535, 0,
             SackOption({{base + 5000, base + 6000},
                         {base + 2000, base + 1000},
                         {base + 2000, base + 3000},
                         {base - 0x40000000u, base + 100}})));
  EXPECT_EQ(tcp_->stats().sack_invalid, 4u);
  EXPECT_EQ(tcp_->stats().recoveries, 0u);
  for (const Seg& seg : Segments()) EXPECT_TRUE(seg.payload.empty()) << "nothing resent";
  // A duplicate report below snd_una (D-SACK) is no news, not an error.
  Send(Frame(kTcpAck, guest_seq_, base + 1460, {}, 65535, 0, SackOption({{base, base + 1460}})));
  EXPECT_EQ(tcp_->stats().sack_invalid, 4u);
  // Malformed option lengths are ignored by the parser: no blocks at all.
  Send(Frame(kTcpAck, guest_seq_, base + 1460, {}, 65535, 0, {1, 1, 5, 9, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(tcp_->stats().malformed, 0u);
  guest_ack_ = base + 2920;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
}

TEST_P(TcpTest, OutOfOrderFloodsSpendTheBudgetAndTheMemoryComesBack) {
  TcpTranslatorOptions o;
  o.reorder = {.bytes = 8 * 2048, .chunk_size = 2048, .max_segments = 64, .max_per_flow = 64};
  Make({.peek_off = GetParam()}, o);
  HostListener host;
  UniqueFd h = Establish(host, 7, /*sack=*/true);
  ASSERT_TRUE(h.valid());
  // Segments past a hole that never fills, far more than the pool holds.
  std::vector<std::vector<uint8_t>> batch;
  for (uint32_t i = 1; i <= 40; ++i) {
    batch.push_back(Frame(kTcpAck, guest_seq_ + 1000 * i, guest_ack_, Pattern(1000, i)));
  }
  SendBatch(batch);
  EXPECT_EQ(tcp_->stats().ooo_held, 8u);  // One 2 KiB chunk each: the pool's eight.
  EXPECT_EQ(tcp_->stats().ooo_dropped, 32u);
  // Past the window we offered: refused before the pool is asked.
  Send(Frame(kTcpAck, guest_seq_ + 0x10000000u, guest_ack_, Pattern(100, 1)));
  EXPECT_EQ(tcp_->stats().ooo_beyond_window, 1u);
  Segments();
  // The guest resets the flow: what it held is freed.
  Send(Frame(kTcpRst | kTcpAck, guest_seq_, guest_ack_));
  EXPECT_EQ(flows().size(), 0u);
  // A new flow has the whole pool again.
  HostListener host2;
  guest_isn_ = 50000;
  UniqueFd h2 = Establish(host2, 7, /*sack=*/true);
  ASSERT_TRUE(h2.valid());
  batch.clear();
  for (uint32_t i = 1; i <= 8; ++i) {
    batch.push_back(Frame(kTcpAck, guest_seq_ + 1000 * i, guest_ack_, Pattern(1000, i)));
  }
  SendBatch(batch);
  EXPECT_EQ(tcp_->stats().ooo_held, 16u);
  EXPECT_EQ(tcp_->stats().ooo_dropped, 32u);
}

TEST_P(TcpTest, RetransmissionTimerResendsAndBacksOff) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  ASSERT_EQ(send(h.get(), "abcdef", 6, 0), 6);
  std::vector<Seg> segs;
  ASSERT_TRUE(Pump(&segs, [&] { return !segs.empty(); }));
  // No ACK: after the timeout the data comes again.
  fake_now += 1'000'000'000;
  Expire();
  segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].seq, guest_ack_);
  EXPECT_EQ(segs[0].payload, std::vector<uint8_t>({'a', 'b', 'c', 'd', 'e', 'f'}));
  EXPECT_EQ(tcp_->stats().timer_retransmits, 1u);
  // Backed off: not after one more second, but after two.
  fake_now += 1'000'000'000;
  Expire();
  EXPECT_TRUE(Segments().empty());
  fake_now += 1'000'000'000;
  Expire();
  EXPECT_EQ(Segments().size(), 1u);
  // After max_retransmits the flow is reset both ways.
  for (int i = 0; i < 20; ++i) {
    fake_now += 60'000'000'000;
    Expire();
  }
  EXPECT_EQ(flows().size(), 0u);
  char c;
  EXPECT_EQ(recv(h.get(), &c, 1, 0), -1);
  EXPECT_EQ(errno, ECONNRESET);
}

TEST_P(TcpTest, RetransmissionTimeoutFollowsTheMeasuredRoundTrip) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // The guest acks the first data 10 ms after it went out: a round trip
  // measured, the timeout now 200 ms (the floor) rather than the initial 1 s.
  ASSERT_EQ(send(h.get(), "abc", 3, 0), 3);
  std::vector<Seg> segs;
  ASSERT_TRUE(Pump(&segs, [&] { return !segs.empty(); }));
  fake_now += 10'000'000;
  guest_ack_ += 3;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  ASSERT_EQ(send(h.get(), "def", 3, 0), 3);
  segs.clear();
  ASSERT_TRUE(Pump(&segs, [&] { return !segs.empty(); }));
  fake_now += 190'000'000;
  Expire();
  EXPECT_TRUE(Segments().empty());
  fake_now += 12'000'000;
  Expire();
  segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].seq, guest_ack_);
  EXPECT_EQ(tcp_->stats().timer_retransmits, 1u);
  // Backed off from there: 400 ms.
  fake_now += 350'000'000;
  Expire();
  EXPECT_TRUE(Segments().empty());
  fake_now += 60'000'000;
  Expire();
  EXPECT_EQ(Segments().size(), 1u);
}

TEST_P(TcpTest, LostDataIsResentAfterTheHostClosed) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // The host writes and closes (an HTTP/1.0 answer); what reached the guest
  // is lost, and the guest acks nothing.
  const std::vector<uint8_t> b = Pattern(5000, 11);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 5000);
  ASSERT_EQ(shutdown(h.get(), SHUT_WR), 0);
  std::vector<Seg> segs;
  size_t sent = 0;
  ASSERT_TRUE(Pump(&segs, [&] {
    sent = 0;
    for (const Seg& s : segs) sent += s.payload.size();
    return sent == b.size();
  }));
  for (const Seg& s : segs) EXPECT_FALSE(s.flags & kTcpFin) << "FIN before the data was acked";
  // The timer resends every byte from the socket, though its peer is gone.
  fake_now += 1'000'000'000;
  Expire();
  segs = Segments();
  std::vector<uint8_t> again;
  for (const Seg& s : segs) {
    EXPECT_EQ(s.seq, guest_ack_ + again.size());
    again.insert(again.end(), s.payload.begin(), s.payload.end());
  }
  EXPECT_EQ(again, b);
  EXPECT_EQ(tcp_->stats().timer_retransmits, 1u);
  // Three duplicate ACKs of the first 1000 bytes resend the rest.
  guest_ack_ += 1000;
  for (int i = 0; i < 4; ++i) Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  again.clear();
  for (const Seg& s : Segments()) again.insert(again.end(), s.payload.begin(), s.payload.end());
  EXPECT_EQ(again, std::vector<uint8_t>(b.begin() + 1000, b.end()));
  EXPECT_EQ(tcp_->stats().fast_retransmits, 1u);
  // Once all is acked our FIN follows.
  guest_ack_ += 4000;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  std::optional<Seg> fin = WaitFor(kTcpFin);
  ASSERT_TRUE(fin.has_value());
  EXPECT_EQ(fin->seq, guest_ack_);
}

TEST_P(TcpTest, TimeoutsWithoutReceiveBuffersCountOnlyAtTheMaximum) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  ASSERT_EQ(send(h.get(), "abcdef", 6, 0), 6);
  std::vector<Seg> segs;
  ASSERT_TRUE(Pump(&segs, [&] { return !segs.empty(); }));
  // The guest stops (no receive buffers, no ACKs) for ten minutes, longer
  // than ten retransmission timeouts: its data was not lost, so the flow
  // stays (the backoff to the maximum costs it nothing).
  ring().StopQueue();
  for (int i = 0; i < 10; ++i) {
    fake_now += 60'000'000'000;
    Expire();
  }
  EXPECT_EQ(flows().size(), 1u);
  EXPECT_GE(tcp_->stats().rx_waits, 1u);
  ring().StartQueue();
  tcp_->OnRxAvailable();
  EXPECT_EQ(ReceiveData(6), std::vector<uint8_t>({'a', 'b', 'c', 'd', 'e', 'f'}));
  // A guest that never comes back: at the maximum timeout its expiries
  // count, and the flow ends in some fifteen minutes more.
  ASSERT_EQ(send(h.get(), "ghi", 3, 0), 3);
  ASSERT_TRUE(Pump(&segs, [&] { return segs.size() > 1; }));
  ring().StopQueue();
  for (int i = 0; i < 40 && flows().size() > 0; ++i) {
    fake_now += 60'000'000'000;
    Expire();
  }
  EXPECT_EQ(flows().size(), 0u);
  EXPECT_EQ(tcp_->stats().timeouts, 1u);
}

TEST_P(TcpTest, HalfClosedTimeouts) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // The guest closed its side; the host peer takes ten minutes to answer.
  Send(Frame(kTcpAck | kTcpFin, guest_seq_, guest_ack_));
  ++guest_seq_;
  fake_now += 600'000'000'000;
  Expire();
  ASSERT_EQ(flows().size(), 1u);
  ASSERT_EQ(send(h.get(), "late", 4, 0), 4);
  EXPECT_EQ(ReceiveData(4), std::vector<uint8_t>({'l', 'a', 't', 'e'}));
  // The host closes too; the guest, whose FIN came first, acks ours, and
  // the flow ends.
  ASSERT_EQ(shutdown(h.get(), SHUT_WR), 0);
  std::optional<Seg> fin = WaitFor(kTcpFin);
  ASSERT_TRUE(fin.has_value());
  Send(Frame(kTcpAck, guest_seq_, guest_ack_ + 1));
  EXPECT_EQ(flows().size(), 0u);

  // The host closes first and the guest stays silent: the half-closed
  // timeout (60 s) ends it.
  UniqueFd h2 = Establish(host);
  ASSERT_TRUE(h2.valid());
  ASSERT_EQ(shutdown(h2.get(), SHUT_WR), 0);
  fin = WaitFor(kTcpFin);
  ASSERT_TRUE(fin.has_value());
  Send(Frame(kTcpAck, guest_seq_, guest_ack_ + 1));
  ASSERT_EQ(flows().size(), 1u);
  fake_now += 59'000'000'000;
  Expire();
  EXPECT_EQ(flows().size(), 1u);
  fake_now += 2'000'000'000;
  Expire();
  EXPECT_EQ(flows().size(), 0u);
  EXPECT_EQ(tcp_->stats().timeouts, 1u);
}

TEST_P(TcpTest, GuestWindowIsRespectedAndZeroWindowProbed) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // A window of 1000 bytes (scale 7: field 7 is 896 bytes).
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, {}, 7));
  const std::vector<uint8_t> b = Pattern(3000, 6);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 3000);
  std::vector<Seg> segs;
  Pump(&segs, [&] { return !segs.empty(); });
  size_t bytes = 0;
  for (const Seg& s : segs) bytes += s.payload.size();
  EXPECT_EQ(bytes, 896u);
  // Acked with a zero window: nothing more, a probe on the timer.
  guest_ack_ += 896;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, {}, 0));
  watcher().Poll(tcp_.get(), 50);
  EXPECT_TRUE(Segments().empty());
  fake_now += 2'000'000'000;
  Expire();
  segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_TRUE(segs[0].payload.empty());
  EXPECT_EQ(segs[0].seq, guest_ack_ - 1);
  EXPECT_EQ(tcp_->stats().zero_window_probes, 1u);
  // The window opens: the rest comes.
  std::vector<uint8_t> rest = ReceiveData(3000 - 896);
  EXPECT_EQ(rest, std::vector<uint8_t>(b.begin() + 896, b.end()));
}

TEST_P(TcpTest, GuestWithoutReceiveBuffersWaits) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  ring().StopQueue();
  const std::vector<uint8_t> b = Pattern(20000, 7);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 20000);
  watcher().Poll(tcp_.get(), 100);
  EXPECT_TRUE(Segments().empty());
  EXPECT_GE(tcp_->stats().rx_waits, 1u);
  ring().StartQueue();
  tcp_->OnRxAvailable();
  EXPECT_EQ(ReceiveData(20000), b);
}

TEST_P(TcpTest, FullRingWaitsForBuffers) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // Take every posted buffer out of play: the guest does not post them
  // again as it reads them (ReceiveData posts more).
  refill_ = false;
  const std::vector<uint8_t> b = Pattern(300000, 8);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 300000);
  std::vector<Seg> segs;
  Pump(&segs, [&] { return tcp_->stats().rx_waits > 0; });
  std::vector<uint8_t> got;
  for (const Seg& s : segs) {
    ASSERT_EQ(s.seq, guest_ack_ + got.size());
    got.insert(got.end(), s.payload.begin(), s.payload.end());
  }
  EXPECT_LT(got.size(), b.size());
  guest_ack_ += static_cast<uint32_t>(got.size());
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  std::vector<uint8_t> rest = ReceiveData(b.size() - got.size());
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(got, b);
}

// Data segments committed in a loop iteration and the RST of a host reset
// seen later in the same iteration go out in one flush, in that order: the
// guest gets every byte, then the RST at the sequence number after them.
TEST_P(TcpTest, DataThenHostResetReachTheGuestInOrder) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> b = Pattern(6000, 14);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 6000);
  // Peeked into the ring and committed; not yet flushed.
  for (int i = 0; i < 200 && tcp_->stats().bytes_to_guest < b.size(); ++i) {
    watcher().Poll(tcp_.get(), 10);
  }
  ASSERT_EQ(tcp_->stats().bytes_to_guest, b.size());
  const size_t data_frames = ring().rx().pending_frames();
  ASSERT_GE(data_frames, 5u);  // MSS 1460.
  const linger l = {1, 0};
  setsockopt(h.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  h.reset();
  for (int i = 0; i < 200 && flows().size() > 0; ++i) watcher().Poll(tcp_.get(), 10);
  ASSERT_EQ(flows().size(), 0u);
  EXPECT_EQ(tcp_->stats().host_resets, 1u);
  const uint64_t flushes = ring().rx().stats().flushes;
  std::vector<Seg> segs = Segments();
  EXPECT_EQ(ring().rx().stats().flushes, flushes + 1) << "one flush for the data and the RST";
  ASSERT_EQ(segs.size(), data_frames + 1);
  std::vector<uint8_t> got;
  for (size_t i = 0; i < data_frames; ++i) {
    EXPECT_EQ(segs[i].flags & (kTcpRst | kTcpFin), 0) << "segment " << i;
    EXPECT_EQ(segs[i].seq, guest_ack_ + got.size()) << "segment " << i;
    got.insert(got.end(), segs[i].payload.begin(), segs[i].payload.end());
  }
  EXPECT_EQ(got, b);
  const Seg& rst = segs.back();
  EXPECT_EQ(rst.flags, kTcpRst | kTcpAck);
  EXPECT_EQ(rst.seq, guest_ack_ + b.size());
  EXPECT_TRUE(rst.payload.empty());
}

// The guest's driver stops the receive queue mid-transfer (after the
// iteration's flush) and starts it again two minutes later. What the guest
// acknowledged is not sent again; what it had received but not acknowledged
// is (the retransmission timer rewound while the queue was stopped); the
// host's data waits in the socket meanwhile, the flow survives the
// timeouts, and every byte arrives in order.
TEST_P(TcpTest, QueueStoppedAndRestartedMidTransfer) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> b = Pattern(300000, 15);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 300000);
  std::vector<uint8_t> got = ReceiveData(50000);
  ASSERT_GE(got.size(), 50000u);
  // ReceiveData's last ACK brought more segments; this flush publishes them.
  // The guest takes them, then its driver stops the queue.
  uint32_t received = guest_ack_;
  for (const Seg& s : Segments()) {
    if (s.payload.empty()) continue;
    ASSERT_EQ(s.seq, received);
    got.insert(got.end(), s.payload.begin(), s.payload.end());
    received += static_cast<uint32_t>(s.payload.size());
  }
  ASSERT_GT(received, guest_ack_) << "nothing in flight at the stop";
  ring().StopQueue();
  // It acknowledges half of what it got before it stopped.
  guest_ack_ += (received - guest_ack_) / 2;
  const uint32_t acked = guest_ack_;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  // The host sends more; nothing reaches the guest.
  const std::vector<uint8_t> late = Pattern(20000, 16);
  ASSERT_EQ(send(h.get(), late.data(), late.size(), 0), 20000);
  watcher().Poll(tcp_.get(), 50);
  for (int i = 0; i < 4; ++i) {
    fake_now += 30'000'000'000;
    Expire();
    watcher().Poll(tcp_.get(), 0);
  }
  EXPECT_TRUE(Segments().empty());
  EXPECT_EQ(flows().size(), 1u);
  EXPECT_GE(tcp_->stats().rx_waits, 1u);
  EXPECT_GE(tcp_->stats().timer_retransmits, 1u);
  // The queue runs again (the backend calls OnRxAvailable when it starts).
  ring().StartQueue();
  tcp_->OnRxAvailable();
  std::vector<Seg> segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs[0].seq, acked) << "from the first byte not acknowledged";
  // The guest drops what it has, takes the rest.
  guest_ack_ = received;
  int out_of_order = 0;
  std::vector<uint8_t> rest = GuestReceives(b.size() + late.size() - got.size(), &out_of_order);
  got.insert(got.end(), rest.begin(), rest.end());
  std::vector<uint8_t> want = b;
  want.insert(want.end(), late.begin(), late.end());
  EXPECT_EQ(Compare(got, want), "");
  EXPECT_EQ(out_of_order, 0);
  EXPECT_EQ(flows().size(), 1u);
}

// The guest's driver stops the receive queue while segments are committed
// but not yet flushed: RxQueue::Stop publishes them first, so the
// translator, which counted them as sent, loses nothing, and the flow that
// waited for buffers goes on where it was once the queue runs again.
TEST_P(TcpTest, QueueStoppedBeforeItsFlushLosesNothing) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> b = Pattern(300000, 17);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 300000);
  std::vector<Seg> segs;
  ASSERT_TRUE(Pump(&segs, [&] { return !segs.empty(); }));
  std::vector<uint8_t> got;
  for (const Seg& s : segs) {
    ASSERT_EQ(s.seq, guest_ack_ + got.size());
    got.insert(got.end(), s.payload.begin(), s.payload.end());
  }
  guest_ack_ += static_cast<uint32_t>(got.size());
  // Its ACK, and its kick for the buffers it posted again, bring more,
  // committed in this iteration, until the ring is dry again; the queue
  // stops before the flush.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  tcp_->OnRxAvailable();
  ASSERT_GT(ring().rx().pending_frames(), 0u);
  const uint64_t sent = tcp_->stats().bytes_to_guest;
  ring().StopQueue();
  ring().StartQueue();
  ring().Post(64);
  tcp_->OnRxAvailable();
  EXPECT_GT(tcp_->stats().bytes_to_guest, sent) << "the waiting flow resumed";
  int out_of_order = 0;
  std::vector<uint8_t> rest = GuestReceives(b.size() - got.size(), &out_of_order);
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(Compare(got, b), "");
  EXPECT_EQ(out_of_order, 0);
  EXPECT_EQ(tcp_->stats().fast_retransmits, 0u);
  EXPECT_EQ(tcp_->stats().timer_retransmits, 0u);
}

// As above, but the flow was not waiting for buffers when the queue stopped:
// the segments committed before the stop reach the guest all the same, and
// nothing needs the retransmission timer.
TEST_P(TcpTest, QueueStoppedBeforeItsFlushStillDelivers) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> b = Pattern(5000, 19);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 5000);
  for (int i = 0; i < 200 && tcp_->stats().bytes_to_guest < b.size(); ++i) {
    watcher().Poll(tcp_.get(), 10);
  }
  ASSERT_EQ(ring().rx().pending_frames(), 4u);  // MSS 1460.
  ring().StopQueue();
  ring().StartQueue();
  tcp_->OnRxAvailable();
  EXPECT_EQ(ReceiveData(b.size()), b);
  fake_now += 1'000'000'000;
  Expire();
  EXPECT_EQ(tcp_->stats().timer_retransmits, 0u);
}

// A ring of eight receive buffers, mergeable or not: the translator writes
// what fits, waits for the guest to post more (or for the flush that frees
// what it holds), and a bulk transfer still arrives byte for byte and in
// order, with the host's FIN after the last byte.
TEST_P(TcpTest, TinyRingBulkTransferCompletes) {
  for (const bool mergeable : {true, false}) {
    SCOPED_TRACE(mergeable ? "mergeable" : "one buffer per frame");
    Make({.peek_off = GetParam(), .mergeable = mergeable, .queue_size = 8, .buffers = 8});
    HostListener host;
    UniqueFd h = Establish(host);
    ASSERT_TRUE(h.valid());
    const std::vector<uint8_t> b = Pattern(300000, 18);
    ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 300000);
    ASSERT_EQ(shutdown(h.get(), SHUT_WR), 0);
    std::vector<Seg> seen;
    std::vector<uint8_t> got = ReceiveData(b.size(), 65535, &seen);
    EXPECT_EQ(Compare(got, b), "");
    for (const Seg& s : seen) EXPECT_EQ(s.flags & (kTcpFin | kTcpRst), 0) << "before the data";
    EXPECT_GE(tcp_->stats().rx_waits, 1u);
    std::optional<Seg> fin = WaitFor(kTcpFin);
    ASSERT_TRUE(fin.has_value());
    EXPECT_EQ(fin->seq, guest_ack_);
    EXPECT_TRUE(fin->payload.empty());
    EXPECT_EQ(tcp_->stats().control_dropped, 0u);
    Send(Frame(kTcpAck | kTcpFin, guest_seq_, guest_ack_ + 1));
    EXPECT_EQ(flows().size(), 0u);
    EXPECT_EQ(ring().rx().stats().writer_bugs, 0u);
  }
}

TEST_P(TcpTest, HalfCloseBothWays) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // The guest's FIN (with data): the host reads the data, then EOF, and
  // can still send.
  Send(Frame(kTcpAck | kTcpFin, guest_seq_, guest_ack_, {'b', 'y', 'e'}));
  guest_seq_ += 4;
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].ack, guest_seq_);
  char buf[8];
  ASSERT_EQ(recv(h.get(), buf, sizeof(buf), MSG_WAITALL), 3);
  ASSERT_EQ(send(h.get(), "late", 4, 0), 4);
  EXPECT_EQ(ReceiveData(4), std::vector<uint8_t>({'l', 'a', 't', 'e'}));
  // The host closes: our FIN once everything is acked; its ACK ends the flow.
  h.reset();
  std::optional<Seg> fin = WaitFor(kTcpFin);
  ASSERT_TRUE(fin.has_value());
  EXPECT_EQ(fin->seq, guest_ack_);
  Send(Frame(kTcpAck, guest_seq_, guest_ack_ + 1));
  EXPECT_EQ(flows().size(), 0u);
  EXPECT_EQ(tcp_->stats().closed, 1u);
}

TEST_P(TcpTest, HostClosesFirstThenGuest) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  ASSERT_EQ(send(h.get(), "data", 4, 0), 4);
  ASSERT_EQ(shutdown(h.get(), SHUT_WR), 0);
  // Data first; the FIN only once the data is acked.
  std::vector<Seg> segs;
  Pump(&segs, [&] { return !segs.empty(); });
  for (const Seg& s : segs) EXPECT_FALSE(s.flags & kTcpFin);
  guest_ack_ += 4;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_));
  std::optional<Seg> fin = WaitFor(kTcpFin);
  ASSERT_TRUE(fin.has_value());
  EXPECT_EQ(fin->seq, guest_ack_);
  // The guest acks our FIN and still sends; then its own FIN ends the flow.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_ + 1, {'o', 'k'}));
  Send(Frame(kTcpAck | kTcpFin, guest_seq_ + 2, guest_ack_ + 1));
  EXPECT_EQ(flows().size(), 0u);
  char buf[4];
  EXPECT_EQ(recv(h.get(), buf, sizeof(buf), MSG_WAITALL), 2);
  EXPECT_EQ(recv(h.get(), buf, sizeof(buf), 0), 0);
}

TEST_P(TcpTest, GuestResetResetsTheHost) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  Send(Frame(kTcpRst, guest_seq_, 0));
  EXPECT_EQ(flows().size(), 0u);
  char c;
  EXPECT_EQ(recv(h.get(), &c, 1, 0), -1);
  EXPECT_EQ(errno, ECONNRESET);
}

TEST_P(TcpTest, HostResetResetsTheGuest) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const linger l = {1, 0};
  setsockopt(h.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  h.reset();
  std::optional<Seg> rst = WaitFor(kTcpRst);
  ASSERT_TRUE(rst.has_value());
  EXPECT_EQ(rst->seq, guest_ack_);
  EXPECT_EQ(flows().size(), 0u);
}

TEST_P(TcpTest, SegmentsOfNoFlowGetRst) {
  dport_ = 80;
  Send(Frame(kTcpAck, 100, 555, {'x'}));
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags, kTcpRst);
  EXPECT_EQ(segs[0].seq, 555u);
  Send(Frame(kTcpFin, 100, 0));
  segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags, kTcpRst | kTcpAck);
  EXPECT_EQ(segs[0].ack, 101u);
  // An RST for no flow is ignored.
  Send(Frame(kTcpRst, 100, 0));
  EXPECT_TRUE(Segments().empty());
  EXPECT_EQ(flows().size(), 0u);
}

TEST_P(TcpTest, UnusableDestinationsAreRefused) {
  for (const char* d : {"0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"}) {
    dst_ = Ip4(d);
    dport_ = 80;
    Send(Frame(kTcpSyn, 1, 0));
    std::vector<Seg> segs = Segments();
    ASSERT_EQ(segs.size(), 1u) << d;
    EXPECT_EQ(segs[0].flags, kTcpRst | kTcpAck) << d;
  }
  EXPECT_EQ(tcp_->stats().refused_destination, 4u);
  EXPECT_EQ(flows().size(), 0u);
}

TEST_P(TcpTest, FullTableRefusesWithRst) {
  Make({.peek_off = GetParam()}, {}, 2);
  HostListener host;
  dport_ = host.port;
  for (uint16_t p = 0; p < 3; ++p) {
    Send(Frame(kTcpSyn, 1, 0, {}, 65535, 0, {}, static_cast<uint16_t>(kGuestPort + p)));
  }
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags, kTcpRst | kTcpAck);
  EXPECT_EQ(segs[0].dport, kGuestPort + 2);
  EXPECT_EQ(tcp_->stats().refused_full, 1u);
  EXPECT_EQ(flows().size(), 2u);
}

TEST_P(TcpTest, HostileAcksAndSyns) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // An ACK of data never sent: answered with an ACK, not taken.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_ + 100000, {'z'}));
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].ack, guest_seq_ + 1);  // The data was in order.
  guest_seq_ += 1;
  // A SYN on the established flow: a challenge ACK.
  Send(Frame(kTcpSyn, 99999, 0));
  segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags, kTcpAck);
  EXPECT_EQ(segs[0].ack, guest_seq_);
  // A segment without ACK is dropped.
  Send(Frame(0, guest_seq_, 0, {'q'}));
  EXPECT_TRUE(Segments().empty());
  // The flow still works.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, {'o', 'k'}));
  char buf[3];
  ASSERT_EQ(recv(h.get(), buf, 3, MSG_WAITALL), 3);
  EXPECT_EQ(std::string(buf, 3), "zok");
}

TEST_P(TcpTest, IdleTimeoutResetsBothWays) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  fake_now += int64_t{7200} * 1'000'000'000 - 1'000'000'000;
  Expire();
  EXPECT_EQ(flows().size(), 1u);
  fake_now += 2'000'000'000;
  Expire();
  EXPECT_EQ(flows().size(), 0u);
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_TRUE(segs[0].flags & kTcpRst);
  EXPECT_EQ(tcp_->stats().timeouts, 1u);
}

TEST_P(TcpTest, ConnectTimeout) {
  // A SYN to an address that never answers (TEST-NET-1): the handshake
  // timeout resets it.
  dst_ = Ip4("192.0.2.1");
  dport_ = 9;
  Send(Frame(kTcpSyn, 1, 0));
  EXPECT_EQ(flows().size(), 1u);
  fake_now += 11'000'000'000;
  Expire();
  EXPECT_EQ(flows().size(), 0u);
  std::vector<Seg> segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().flags, kTcpRst | kTcpAck);
  EXPECT_EQ(segs.back().ack, 2u);
}

TEST_P(TcpTest, PartialSendIsAckedAtOnceWithDuplicates) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // The host does not read: the guest sends far past any window until the
  // socket takes part of a segment.
  const std::vector<uint8_t> chunk = Pattern(60000, 9);
  uint64_t sent = 0;
  for (int i = 0; i < 400 && tcp_->stats().partial_sends == 0; ++i) {
    Send(Frame(kTcpAck, guest_seq_, guest_ack_, chunk));
    for (const Seg& s : Segments()) guest_seq_ = s.ack;
    sent = guest_seq_ - (guest_isn_ + 1);
  }
  ASSERT_GE(tcp_->stats().partial_sends, 1u);
  // The socket's buffer is full: the advertised window is small, and a
  // window update comes once the host reads.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, chunk));
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 4u) << "an ACK and three duplicates";
  for (const Seg& s : segs) {
    EXPECT_EQ(s.ack, segs[0].ack);
    EXPECT_EQ(s.window, segs[0].window);
  }
  guest_seq_ = segs[0].ack;
  sent = guest_seq_ - (guest_isn_ + 1);
  std::vector<uint8_t> buf(sent);
  ASSERT_EQ(recv(h.get(), buf.data(), buf.size(), MSG_WAITALL), static_cast<ssize_t>(sent));
  for (size_t i = 0; i < sent; ++i) {
    ASSERT_EQ(buf[i], chunk[i % chunk.size()]) << "byte " << i;
  }
  // Space opened: a window update, on EPOLLOUT or the window timer.
  std::vector<Seg> updates;
  bool updated = Pump(&updates, [&] {
    fake_now += 100'000'000;
    Expire();
    for (const Seg& s : updates) {
      if (s.window > segs[0].window) return true;
    }
    return false;
  });
  EXPECT_TRUE(updated);
  EXPECT_GE(tcp_->stats().window_updates, 1u);
}

TEST_P(TcpTest, InboundForward) {
  TcpTranslatorOptions o;
  PortForward f;
  f.host_port = 0;  // Any free port: listen_ports() tells.
  f.guest_port = 8080;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards.push_back(f);
  Make({.peek_off = GetParam()}, o);
  ASSERT_EQ(tcp_->listen_ports().size(), 1u);
  const uint16_t port = tcp_->listen_ports()[0];

  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  sockaddr_in mine{};
  socklen_t len = sizeof(mine);
  getsockname(client.get(), reinterpret_cast<sockaddr*>(&mine), &len);

  std::optional<Seg> syn = WaitFor(kTcpSyn);
  ASSERT_TRUE(syn.has_value());
  EXPECT_FALSE(syn->flags & kTcpAck);
  EXPECT_EQ(syn->dport, 8080);
  EXPECT_EQ(syn->sport, ntohs(mine.sin_port));
  EXPECT_TRUE(syn->options.has_mss);
  EXPECT_TRUE(syn->options.has_window_scale);
  EXPECT_EQ(tcp_->stats().accepted, 1u);
  // From the host's loopback, so from the gateway's address: the guest
  // answers to it.
  dst_ = guest().gateway4;
  const uint16_t sport = syn->sport;
  our_isn_ = syn->seq;
  guest_seq_ = 50000;
  guest_ack_ = our_isn_ + 1;
  Send(Frame(kTcpSyn | kTcpAck, guest_seq_ - 1, guest_ack_, {}, 65535, sport,
             {2, 4, 0x05, 0xb4, 1, 3, 3, 7}, 8080));
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags, kTcpAck);
  EXPECT_EQ(segs[0].ack, guest_seq_);
  EXPECT_EQ(tcp_->stats().established, 1u);

  // Data both ways.
  dport_ = sport;
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, {'h', 'i'}, 65535, sport, {}, 8080));
  char buf[2];
  timeval tv{2, 0};
  setsockopt(client.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ASSERT_EQ(recv(client.get(), buf, 2, MSG_WAITALL), 2);
  EXPECT_EQ(std::string(buf, 2), "hi");
}

TEST_P(TcpTest, InboundRefusedByTheGuest) {
  TcpTranslatorOptions o;
  PortForward f;
  f.guest_port = 22;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards.push_back(f);
  Make({.peek_off = GetParam()}, o);
  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(tcp_->listen_ports()[0]);
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  std::optional<Seg> syn = WaitFor(kTcpSyn);
  ASSERT_TRUE(syn.has_value());
  dst_ = guest().gateway4;
  Send(Frame(kTcpRst | kTcpAck, 0, syn->seq + 1, {}, 0, syn->sport, {}, 22));
  EXPECT_EQ(flows().size(), 0u);
  EXPECT_EQ(tcp_->stats().refused_by_guest, 1u);
  char c;
  timeval tv{2, 0};
  setsockopt(client.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  EXPECT_EQ(recv(client.get(), &c, 1, 0), -1);
  EXPECT_EQ(errno, ECONNRESET);
}

TEST_P(TcpTest, InboundSynIsResentUntilAnswered) {
  TcpTranslatorOptions o;
  PortForward f;
  f.guest_port = 22;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards.push_back(f);
  Make({.peek_off = GetParam()}, o);
  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(tcp_->listen_ports()[0]);
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  std::optional<Seg> syn = WaitFor(kTcpSyn);
  ASSERT_TRUE(syn.has_value());
  fake_now += 1'000'000'000;
  Expire();
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags, kTcpSyn);
  EXPECT_EQ(segs[0].seq, syn->seq);
  // Unanswered to the end: the host's connection is reset.
  for (int i = 0; i < 12; ++i) {
    fake_now += 30'000'000'000;
    Expire();
  }
  EXPECT_EQ(flows().size(), 0u);
}

TEST_P(TcpTest, ShutdownClosesEverything) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  tcp_->Shutdown();
  EXPECT_EQ(flows().size(), 0u);
  EXPECT_EQ(watcher().watching(), 0u);
  EXPECT_NE(tcp_->StatsLine().find("1 established"), std::string::npos) << tcp_->StatsLine();
}

// IPv6: a SYN to our link-local address reaches the host's ::1.
TEST_P(TcpTest, Ipv6ToTheGatewayReachesLoopback) {
  UniqueFd l(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  if (bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  ASSERT_EQ(listen(l.get(), 4), 0);
  socklen_t len = sizeof(a);
  getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &len);
  // The guest of TestGuest(): fd00::15, its gateway fe80::1 (ours).
  FrameSpec s;
  s.ipv6 = true;
  s.src_mac = kDefaultGuestMac;
  s.dst_mac = kDefaultGatewayMac;
  s.src6 = guest().addr6;
  s.dst6 = guest().our_link_local6;
  s.protocol = IPPROTO_TCP;
  s.src_port = kGuestPort;
  s.dst_port = ntohs(a.sin6_port);
  s.tcp_seq = 300;
  s.tcp_flags = kTcpSyn;
  s.tcp_window = 65535;
  Send(testing::Build(s, {}));
  std::optional<Seg> synack = WaitFor(kTcpSyn | kTcpAck);
  ASSERT_TRUE(synack.has_value());
  EXPECT_EQ(synack->options.mss, 65520 - 60);
  EXPECT_FALSE(synack->options.has_window_scale);  // The guest offered none.
  pollfd p{l.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 2000), 1);
  UniqueFd h(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(h.valid());
  s.tcp_seq = 301;
  s.tcp_ack = synack->seq + 1;
  s.tcp_flags = kTcpAck;
  Send(testing::Build(s, {'v', '6'}));
  char buf[2];
  timeval tv{2, 0};
  setsockopt(h.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ASSERT_EQ(recv(h.get(), buf, 2, MSG_WAITALL), 2);
  EXPECT_EQ(std::string(buf, 2), "v6");
  // IPv6 destinations we do not connect to.
  for (const char* d : {"::1", "ff02::1", "fe80::99", "::ffff:1.2.3.4"}) {
    s.dst6 = testing::Ip6(d);
    s.tcp_flags = kTcpSyn;
    s.tcp_ack = 0;
    Send(testing::Build(s, {}));
  }
  EXPECT_EQ(tcp_->stats().refused_destination, 4u);
}

// A forward for every address: one dual-stack socket; an IPv4 client (seen
// v4-mapped) becomes an IPv4 flow, an IPv6 one an IPv6 flow, each from the
// gateway's address of its family.
TEST_P(TcpTest, DualStackForward) {
  TcpTranslatorOptions o;
  PortForward f;
  f.guest_port = 8080;  // family AF_UNSPEC, host port 0: any free one.
  o.forwards.push_back(f);
  Make({.peek_off = GetParam()}, o);
  ASSERT_EQ(tcp_->listen_ports().size(), 1u);
  const uint16_t port = tcp_->listen_ports()[0];

  UniqueFd c4(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  ASSERT_EQ(connect(c4.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  std::vector<uint8_t> raw;
  for (int i = 0; i < 100 && raw.empty(); ++i) {
    watcher().Poll(tcp_.get(), 10);
    std::vector<std::vector<uint8_t>> frames = ring().TakeBytes();
    if (!frames.empty()) raw = frames[0];
  }
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(raw, &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kIpv4);
  EXPECT_EQ(p.ip.src4.s_addr, guest().gateway4.s_addr);
  EXPECT_EQ(p.ip.dst4.s_addr, guest().addr4.s_addr);
  EXPECT_EQ(p.dst_port, 8080);
  EXPECT_EQ(p.tcp.flags, kTcpSyn);

  UniqueFd c6(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 a6{};
  a6.sin6_family = AF_INET6;
  a6.sin6_addr = in6addr_loopback;
  a6.sin6_port = htons(port);
  if (connect(c6.get(), reinterpret_cast<sockaddr*>(&a6), sizeof(a6)) != 0) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  raw.clear();
  for (int i = 0; i < 100 && raw.empty(); ++i) {
    watcher().Poll(tcp_.get(), 10);
    std::vector<std::vector<uint8_t>> frames = ring().TakeBytes();
    if (!frames.empty()) raw = frames[0];
  }
  ASSERT_TRUE(testing::Parse(raw, &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kIpv6);
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.src6, &guest().our_link_local6));
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.dst6, &guest().addr6));
  EXPECT_EQ(tcp_->stats().accepted, 2u);
}

TEST(TcpCreateTest, RefusesBadEnvAndOptions) {
  TranslatorEnv env;
  EXPECT_FALSE(TcpTranslator::Create(env, {}).ok());
  TranslatorWorld world;
  env = world.Env();
  EXPECT_TRUE(TcpTranslator::Create(env, {}).ok());
  // Each service is needed.
  for (int missing = 0; missing < 5; ++missing) {
    TranslatorEnv e = world.Env();
    switch (missing) {
      case 0:
        e.flows = nullptr;
        break;
      case 1:
        e.rx = nullptr;
        break;
      case 2:
        e.watcher = nullptr;
        break;
      case 3:
        e.forward = nullptr;
        break;
      case 4:
        e.guest = nullptr;
        break;
    }
    EXPECT_FALSE(TcpTranslator::Create(e, {}).ok()) << "service " << missing << " missing";
  }
  TcpTranslatorOptions o;
  o.window_scale = 15;
  EXPECT_FALSE(TcpTranslator::Create(env, o).ok());
  o = {};
  o.rto_max_ns = 1;
  EXPECT_FALSE(TcpTranslator::Create(env, o).ok());
  env.first_kind = 10;
  EXPECT_FALSE(TcpTranslator::Create(env, {}).ok());
}

// ---------------------------------------------------------------------------
// Live migration: the connection's flow state and its socket's repair image
// go from this translator (the source) to a new one in a new world (the
// destination), as FramePath carries them in the state stream.

// Sets repair mode itself (the test runs as root), as the helper would.
class DirectRepair : public RepairControl {
 public:
  bool available() const override { return available_; }
  absl::Status SetRepair(absl::Span<const int> fds, RepairMode mode) override {
    ++calls;
    for (const int fd : fds) {
      const int v = static_cast<int>(mode);
      if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &v, sizeof(v)) != 0) {
        return absl::ErrnoToStatus(errno, "TCP_REPAIR");
      }
    }
    return absl::OkStatus();
  }
  bool available_ = true;
  int calls = 0;
};

class TcpMigrationTest : public TcpTest {
 protected:
  void SetUp() override {
    // A network namespace of the process's own, where it may use repair
    // mode (Bazel's sandbox grants no CAP_NET_ADMIN over the host's).
    const std::string& why = testing::RepairUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << why;
    TcpTest::SetUp();
  }
  void TearDown() override {
    source_tcp_.reset();
    if (source_world_ != nullptr) {
      EXPECT_EQ(source_world_->watcher.watching(), 0u);
    }
    TcpTest::TearDown();
  }

  // The source's state as a stream, its guest's queue stopped first (the
  // device is suspended when the frontend saves).
  std::string Save(RepairControl* repair) {
    ring().StopQueue();
    StateWriter out;
    EXPECT_TRUE(tcp_->SaveState(out, repair).ok());
    return out.Finish();
  }

  // A destination: a new world and translator take the stream; the old ones
  // stay as source_world_ and source_tcp_.
  absl::Status Load(const std::string& stream, RepairControl* repair,
                    TcpTranslatorOptions topts = {}) {
    source_world_ = std::move(world_);
    source_tcp_ = std::move(tcp_);
    TranslatorWorld::Options w;
    w.clock = ManualClock::Now;
    world_ = std::make_unique<TranslatorWorld>(w);
    topts.use_peek_off = GetParam();
    tcp_ = TcpTranslator::Create(world_->Env(), topts).value();
    ring().StopQueue();  // Not running until the guest resumes.
    absl::Status s = ForEachRecord(
        {reinterpret_cast<const uint8_t*>(stream.data()), stream.size()},
        [&](const RecordHeader& h, StateReader& in) { return tcp_->StageRecord(h, in); });
    if (!s.ok()) {
      tcp_->DiscardStaged();
      return s;
    }
    tcp_->ApplyStaged(repair);
    return absl::OkStatus();
  }

  // The guest runs at the destination.
  void Resume() {
    ring().StartQueue();
    ring().Post(64, 2048);
    tcp_->OnRxStart();
    tcp_->OnRxAvailable();
  }

  // Reads what the host peer has, until `n` bytes or a second of quiet.
  static std::vector<uint8_t> HostReads(int fd, size_t n) {
    std::vector<uint8_t> got;
    uint8_t buf[65536];
    while (got.size() < n) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 1000) != 1) break;
      const ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (r <= 0) break;
      got.insert(got.end(), buf, buf + r);
    }
    return got;
  }

  // What the host reads in `ms` milliseconds, looking every 10 ms (no
  // translator runs meanwhile: the source lingers, frozen).
  static std::vector<uint8_t> HostReadsFor(int fd, int ms) {
    std::vector<uint8_t> got;
    uint8_t buf[65536];
    for (int i = 0; i < ms / 10; ++i) {
      const ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (r > 0) got.insert(got.end(), buf, buf + r);
      usleep(10'000);
    }
    return got;
  }

  std::unique_ptr<TranslatorWorld> source_world_;
  std::unique_ptr<TcpTranslator> source_tcp_;
};

INSTANTIATE_TEST_SUITE_P(PeekOffset, TcpMigrationTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "PeekOff" : "Fallback";
                         });

// Data queued both ways at the switch-over: the guest's bytes the host peer
// has not read (in the socket's send queue), the host's bytes the guest has
// been sent but not acknowledged (in its receive queue, past the peek
// offset) and more it has not been sent. After the move every byte arrives
// once, in order, both ways, and the peer sees neither FIN nor RST.
TEST_P(TcpMigrationTest, AnEstablishedConnectionMovesWithItsQueues) {
  HostListener host;
  UniqueFd h = Establish(host, 7, /*sack=*/true);
  ASSERT_TRUE(h.valid());
  // Guest to host, unread by the host.
  const std::vector<uint8_t> up = Pattern(60000, 21);
  for (size_t off = 0; off < up.size(); off += 1400) {
    const size_t n = std::min<size_t>(1400, up.size() - off);
    Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_,
               std::vector<uint8_t>(up.begin() + off, up.begin() + off + n)));
    guest_seq_ += static_cast<uint32_t>(n);
  }
  // Host to guest: some taken and acknowledged, some in flight unacknowledged.
  const std::vector<uint8_t> down = Pattern(200000, 22);
  ASSERT_EQ(send(h.get(), down.data(), down.size(), 0), 200000);
  std::vector<uint8_t> got = ReceiveData(30000);
  ASSERT_GE(got.size(), 30000u);
  uint32_t received = guest_ack_;
  for (const Seg& s : Segments()) {
    if (s.payload.empty() || s.seq != received) continue;
    got.insert(got.end(), s.payload.begin(), s.payload.end());
    received += static_cast<uint32_t>(s.payload.size());
  }
  DirectRepair repair;
  const std::string stream = Save(&repair);
  EXPECT_EQ(tcp_->stats().migrated_out, 1u);
  EXPECT_EQ(tcp_->stats().migration_resets, 0u);
  // The host goes on sending while the frozen socket lingers: none of it
  // may be taken (and acknowledged) there, or it would be lost.
  const std::vector<uint8_t> late = Pattern(40000, 24);
  ASSERT_EQ(send(h.get(), late.data(), late.size(), MSG_DONTWAIT), 40000);
  usleep(50'000);
  tcp_->OnMigratedOut(/*linger=*/false);  // Closed in repair mode: silently.
  std::vector<uint8_t> down_all = down;
  down_all.insert(down_all.end(), late.begin(), late.end());
  ASSERT_TRUE(Load(stream, &repair).ok());
  EXPECT_EQ(tcp_->stats().migrated_in, 1u);
  EXPECT_EQ(flows().size(), 1u);
  // The peer noticed nothing.
  char c;
  EXPECT_EQ(recv(h.get(), &c, 1, MSG_PEEK | MSG_DONTWAIT), 1) << "its data is there to read";
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(h.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  EXPECT_EQ(err, 0);
  // The guest resumes: it had taken `received`, acknowledged less.
  Resume();
  guest_ack_ = received;
  int out_of_order = 0;
  std::vector<uint8_t> rest = GuestReceives(down_all.size() - got.size(), &out_of_order);
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(Compare(got, down_all), "");
  // And sends more, after what the source had taken.
  const std::vector<uint8_t> more = Pattern(3000, 23);
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, more));
  std::vector<uint8_t> want = up;
  want.insert(want.end(), more.begin(), more.end());
  EXPECT_EQ(Compare(HostReads(h.get(), want.size()), want), "");
  EXPECT_EQ(tcp_->stats().host_resets, 0u);
  EXPECT_EQ(tcp_->stats().restore_failures, 0u);
}

// After its dump the source's socket, kept in repair mode (lingering), still
// receives from the host peer; it must not take (and acknowledge) anything,
// or those bytes would be lost: they must reach the guest through the
// destination, whose timestamps go on from the source's.
TEST_P(TcpMigrationTest, NothingTheHostSendsAfterTheDumpIsLost) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> early = Pattern(3000, 31);
  ASSERT_EQ(send(h.get(), early.data(), early.size(), 0), 3000);
  std::vector<uint8_t> got = ReceiveData(early.size());  // Taken and acknowledged.
  ASSERT_EQ(got.size(), early.size());
  DirectRepair repair;
  const std::string stream = Save(&repair);
  const std::vector<uint8_t> late = Pattern(50000, 32);
  ASSERT_EQ(send(h.get(), late.data(), late.size(), MSG_DONTWAIT), 50000);
  usleep(700'000);  // The source's socket sees it go by, and answers a window probe.
  tcp_->OnMigratedOut(false);
  ASSERT_TRUE(Load(stream, &repair).ok());
  Resume();
  int out_of_order = 0;
  std::vector<uint8_t> rest = GuestReceives(late.size(), &out_of_order);
  EXPECT_EQ(Compare(rest, late), "");
  // And the host hears the guest.
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, Pattern(100, 33)));
  EXPECT_EQ(Compare(HostReads(h.get(), 100), Pattern(100, 33)), "");
}

// The source's socket, once dumped, must send nothing new: guest bytes it
// still had queued (here held back by a pacing rate) are the image's unsent
// ones, which the destination sends. Had the source let some out after the
// dump, the host's ACKs for them would be for bytes the destination has not
// sent yet, which its kernel drops with the window updates they carry, and
// the connection would stall for good. Every byte arrives once, in order.
// The host's reader is slow: its window closed, most of the guest's data
// waits unsent in our socket at the dump. The reader goes on while the
// source lingers: its window updates must not let the source send what the
// image calls unsent (the destination then refused the peer's ACKs of it, and
// both ends waited for ever: the QEMU migration test's stall).
TEST_P(TcpMigrationTest, TheSourceTakesNoWindowUpdateAfterTheDump) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> up = Pattern(3 << 20, 44);
  // As much as the translator takes (what it acknowledged; the rest is sent
  // again from there); the host reads nothing yet.
  const uint32_t first = guest_seq_;
  size_t off = 0;
  for (int round = 0, stuck = 0; round < 400 && off < up.size() && stuck < 5; ++round) {
    std::vector<std::vector<uint8_t>> batch;
    for (int i = 0; i < 32 && off < up.size(); ++i) {
      const size_t n = std::min<size_t>(1400, up.size() - off);
      batch.push_back(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_,
                            std::vector<uint8_t>(up.begin() + off, up.begin() + off + n)));
      guest_seq_ += static_cast<uint32_t>(n);
      off += n;
    }
    SendBatch(batch);
    usleep(2'000);
    uint32_t acked = first;
    for (const Seg& seg : Segments()) acked = std::max(acked, seg.ack);
    stuck = acked - first == off ? 0 : stuck + 1;
    guest_seq_ = acked;
    off = acked - first;
  }
  ASSERT_GT(off, size_t{1} << 20);
  usleep(100'000);
  DirectRepair repair;
  const std::string stream = Save(&repair);
  EXPECT_EQ(tcp_->stats().migrated_out, 1u);
  // The host reads while the source lingers.
  std::vector<uint8_t> got = HostReadsFor(h.get(), 1000);
  printf("the host read %zu bytes while the source lingered\n", got.size());
  tcp_->OnMigratedOut(/*linger=*/false);
  ASSERT_TRUE(Load(stream, &repair).ok());
  Resume();
  // The translator writes the rest of the unsent bytes as the socket takes
  // them: its loop runs while the host reads.
  std::vector<Seg> segs;
  uint8_t buf[65536];
  Pump(&segs, [&] {
    for (ssize_t r; (r = recv(h.get(), buf, sizeof(buf), MSG_DONTWAIT)) > 0;) {
      got.insert(got.end(), buf, buf + r);
    }
    return got.size() >= off;
  });
  EXPECT_EQ(got.size(), off);
  EXPECT_EQ(Compare(got, std::vector<uint8_t>(up.begin(), up.begin() + off)), "");
}

TEST_P(TcpMigrationTest, TheSourceSendsNothingQueuedAfterTheDump) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // Our socket for this connection: the one whose address the host's peer is.
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  ASSERT_EQ(getpeername(h.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len), 0);
  int ours = -1;
  for (int fd = 3; fd < 1024 && ours < 0; ++fd) {
    sockaddr_storage name{};
    socklen_t len = sizeof(name);
    if (fd != h.get() && getsockname(fd, reinterpret_cast<sockaddr*>(&name), &len) == 0 &&
        len == peer_len && memcmp(&name, &peer, len) == 0) {
      ours = fd;
    }
  }
  ASSERT_GE(ours, 0);
  // Bytes a second: after the first segment, the next waits 0.7 s.
  const unsigned rate = 2000;
  ASSERT_EQ(setsockopt(ours, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, sizeof(rate)), 0);
  const std::vector<uint8_t> up = Pattern(60000, 41);
  for (size_t off = 0; off < up.size(); off += 1400) {
    const size_t n = std::min<size_t>(1400, up.size() - off);
    Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_,
               std::vector<uint8_t>(up.begin() + off, up.begin() + off + n)));
    guest_seq_ += static_cast<uint32_t>(n);
    if (off == 0) usleep(20'000);
  }
  usleep(100'000);
  DirectRepair repair;
  const std::string stream = Save(&repair);
  EXPECT_EQ(tcp_->stats().migrated_out, 1u);
  // The host reads whatever comes while the source lingers.
  std::vector<uint8_t> got = HostReadsFor(h.get(), 1200);
  printf("the host read %zu bytes before the source let go\n", got.size());
  // What the pacing let out before the dump; nothing after it.
  EXPECT_LT(got.size(), up.size() / 4);
  tcp_->OnMigratedOut(/*linger=*/false);
  ASSERT_TRUE(Load(stream, &repair).ok());
  EXPECT_EQ(tcp_->stats().migrated_in, 1u);
  Resume();
  const std::vector<uint8_t> rest = HostReads(h.get(), up.size() - got.size());
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(Compare(got, up), "");
  // Both ways still move.
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, Pattern(100, 42)));
  EXPECT_EQ(Compare(HostReads(h.get(), 100), Pattern(100, 42)), "");
  const std::vector<uint8_t> down = Pattern(5000, 43);
  ASSERT_EQ(send(h.get(), down.data(), down.size(), 0), 5000);
  int out_of_order = 0;
  EXPECT_EQ(Compare(GuestReceives(down.size(), &out_of_order), down), "");
}

// No helper: the connection cannot move. The guest, at the destination,
// gets an RST that fits its sequence space once its queue runs; the host
// peer gets one when the source lets the flow go.
TEST_P(TcpMigrationTest, WithoutAHelperBothEndsAreReset) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::string stream = Save(nullptr);
  EXPECT_EQ(tcp_->stats().migration_resets, 1u);
  tcp_->OnMigratedOut(false);
  char c;
  EXPECT_EQ(recv(h.get(), &c, 1, 0), -1);
  EXPECT_EQ(errno, ECONNRESET);
  ASSERT_TRUE(Load(stream, nullptr).ok());
  EXPECT_EQ(flows().size(), 0u);
  Resume();
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].flags & kTcpRst, kTcpRst);
  EXPECT_EQ(segs[0].seq, our_isn_ + 1);
  EXPECT_EQ(segs[0].ack, guest_seq_);
  EXPECT_EQ(segs[0].dport, kGuestPort);
}

// Both ends on one host: while the source holds the connection (lingering
// in case the migration fails), the destination cannot restore it, and
// waits; once the source lets go (its frontend left) it does, and the
// guest's stream goes on.
TEST_P(TcpMigrationTest, TheDestinationWaitsForALingeringSourceOnTheSameHost) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // Host data the guest was never sent: in the socket at the dump, restored
  // into its receive queue, where no EPOLLIN edge will announce it.
  const std::vector<uint8_t> queued = Pattern(5000, 4);
  ASSERT_EQ(send(h.get(), queued.data(), queued.size(), 0), 5000);
  usleep(20'000);
  DirectRepair repair;
  const std::string stream = Save(&repair);
  tcp_->OnMigratedOut(/*linger=*/true);
  TcpTranslator* source = tcp_.get();
  ASSERT_TRUE(Load(stream, &repair).ok());
  EXPECT_EQ(tcp_->stats().migrated_in, 0u);
  EXPECT_EQ(flows().size(), 1u) << "waiting";
  Resume();
  // Segments of the guest meanwhile are dropped: it sends them again.
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, Pattern(100, 1)));
  fake_now += 20'000'000;
  Expire();
  EXPECT_EQ(tcp_->stats().migrated_in, 0u);
  source->OnMigratedOut(false);  // The source's frontend left.
  fake_now += 20'000'000;
  Expire();
  EXPECT_EQ(tcp_->stats().migrated_in, 1u);
  // Sent at once: the guest says nothing meanwhile (it waits for data).
  std::vector<uint8_t> got;
  for (const Seg& seg : Segments()) got.insert(got.end(), seg.payload.begin(), seg.payload.end());
  EXPECT_EQ(Compare(got, queued), "") << "nothing more came from the host";
  guest_ack_ += static_cast<uint32_t>(got.size());
  const std::vector<uint8_t> data = Pattern(5000, 2);
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, data));
  EXPECT_EQ(Compare(HostReads(h.get(), data.size()), data), "");
  ASSERT_EQ(send(h.get(), "ok", 2, 0), 2);
  EXPECT_EQ(ReceiveData(2), (std::vector<uint8_t>{'o', 'k'}));
}

// The migration failed after the save: the source's guest runs again and
// the frozen connection goes on where it stood.
TEST_P(TcpMigrationTest, AnAbortedMigrationResumesAtTheSource) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  DirectRepair repair;
  (void)Save(&repair);
  tcp_->OnMigratedOut(/*linger=*/true);
  ASSERT_EQ(send(h.get(), "late", 4, 0), 4);  // Arrives while frozen.
  watcher().Poll(tcp_.get(), 20);
  ring().StartQueue();
  tcp_->OnMigrationAborted(&repair);
  tcp_->OnRxAvailable();
  EXPECT_EQ(ReceiveData(4), (std::vector<uint8_t>{'l', 'a', 't', 'e'}));
  Send(Frame(kTcpAck | kTcpPsh, guest_seq_, guest_ack_, Pattern(10, 3)));
  EXPECT_EQ(Compare(HostReads(h.get(), 10), Pattern(10, 3)), "");
}

// Records a hostile stream could carry: refused at staging, nothing applied.
TEST_P(TcpMigrationTest, HostileRecordsAreRefusedAndNothingIsApplied) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  DirectRepair repair;
  const std::string good = Save(&repair);
  tcp_->OnMigratedOut(false);
  // Every single-byte change inside the flow record that the checksum is
  // recomputed for: either refused, or a flow that is still self-consistent.
  const size_t body = kStateHeaderLen + kRecordHeaderLen;
  const size_t end = good.size() - kRecordHeaderLen - 8;
  int refused = 0;
  for (size_t i = body; i < end; i += 7) {
    std::string bad = good.substr(0, end);
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    // Re-frame with a valid end record, as an attacker would.
    StateWriter w;
    std::string resealed(bad.substr(kStateHeaderLen));
    const std::string header = w.Finish().substr(0, kStateHeaderLen);
    std::string stream = header + resealed;
    const uint32_t crc = Crc32c({reinterpret_cast<const uint8_t*>(stream.data()), stream.size()});
    const uint8_t end_record[16] = {0xff,
                                    0xff,
                                    0,
                                    0,
                                    8,
                                    0,
                                    0,
                                    0,
                                    1,
                                    0,
                                    0,
                                    0,
                                    static_cast<uint8_t>(crc),
                                    static_cast<uint8_t>(crc >> 8),
                                    static_cast<uint8_t>(crc >> 16),
                                    static_cast<uint8_t>(crc >> 24)};
    stream.append(reinterpret_cast<const char*>(end_record), sizeof(end_record));
    TranslatorWorld::Options wo;
    wo.clock = ManualClock::Now;
    TranslatorWorld dest(wo);
    auto t = TcpTranslator::Create(dest.Env(), {}).value();
    const absl::Status s = ForEachRecord(
        {reinterpret_cast<const uint8_t*>(stream.data()), stream.size()},
        [&](const RecordHeader& hd, StateReader& in) { return t->StageRecord(hd, in); });
    if (!s.ok()) {
      ++refused;
      t->DiscardStaged();
      EXPECT_EQ(dest.flows->size(), 0u);
    } else {
      t->ApplyStaged(&repair);  // The kernel may refuse it: then a reset.
    }
    t->Shutdown();
  }
  EXPECT_GT(refused, 0);
}

TEST(TcpCreateTest, ListenFailureNamesThePort) {
  HostListener busy;  // Not SO_REUSEADDR-compatible: listening.
  TranslatorWorld world;
  TcpTranslatorOptions o;
  PortForward f;
  f.host_port = busy.port;
  f.guest_port = 80;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards.push_back(f);
  absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(world.Env(), o);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(std::to_string(busy.port)), std::string::npos) << t.status();
  EXPECT_EQ(world.watcher.watching(), 0u);
}

// "all" and exclusion-only specs (PortForward::weak) skip ports in use; a
// weak forward that binds nothing fails.
TEST(TcpCreateTest, WeakForwardsSkipPortsInUse) {
  HostListener busy;
  const uint16_t free_port = ClosedPort();
  TranslatorWorld world;
  const TranslatorEnv env = world.Env();
  PortForward f;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  f.weak = true;
  TcpTranslatorOptions o;
  f.host_port = f.guest_port = busy.port;
  o.forwards.push_back(f);
  f.host_port = f.guest_port = free_port;
  o.forwards.push_back(f);
  absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(env, o);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->listen_ports(), std::vector<uint16_t>{free_port});
  t->reset();

  o.forwards.pop_back();
  t = TcpTranslator::Create(env, o);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("none of the 1 ports"), std::string::npos) << t.status();
  EXPECT_EQ(world.watcher.watching(), 0u);
}

// --freebind: a bind address the host does not have (TEST-NET-1) is taken.
TEST(TcpCreateTest, FreebindListensOnAnAddressNotConfigured) {
  TranslatorWorld world;
  const TranslatorEnv env = world.Env();
  PortForward f;
  f.family = AF_INET;
  f.bind4 = Ip4("192.0.2.1");
  f.host_port = f.guest_port = ClosedPort();
  TcpTranslatorOptions o;
  o.forwards.push_back(f);
  EXPECT_FALSE(TcpTranslator::Create(env, o).ok());
  o.forwards[0].freebind = true;
  absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(env, o);
  EXPECT_TRUE(t.ok()) << t.status();
}

}  // namespace
}  // namespace vunet::net
