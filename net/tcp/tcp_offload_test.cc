// The TCP translator with segmentation offloads: segments of up to 64 KiB
// both ways, over IPv4 and IPv6, with mergeable receive buffers and with the
// big ones a guest posts without them; and the same guest with the offloads
// turned off.

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/packet/checksum.h"
#include "net/packet/frame.h"
#include "net/tcp/tcp.h"
#include "net/testing/test_frames.h"
#include "net/testing/world.h"
#include "vu/common.h"
#include "vu/testing/guest_rx.h"

namespace vunet::net {
namespace {

using testing::ManualClock;
using testing::TranslatorWorld;
using vu::testing::GuestRxRing;

constexpr uint16_t kGuestPort = 40000;
// What a guest's driver posts without mergeable buffers once it takes TSO.
constexpr uint32_t kBigBuffer = 65562;
constexpr size_t kMaxPayload4 = 65535 - 40;
constexpr size_t kMaxPayload6 = 65535 - 60;

// A segment as the guest's stack takes it, the partial checksum finished.
struct Seg {
  uint8_t flags = 0;
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint16_t window = 0;
  std::vector<uint8_t> payload;
  size_t headers = 0;
  bool checksum_ok = false;
  vu::VirtioNetHdr hdr;
};

std::optional<Seg> ParseSeg(const GuestRxRing::Frame& f) {
  std::vector<uint8_t> frame = f.bytes;
  if (f.hdr.flags & vu::kVirtioNetHdrFNeedsCsum) {
    // As the guest's stack would: sum from csum_start, into the field.
    const size_t start = f.hdr.csum_start;
    const size_t at = start + f.hdr.csum_offset;
    if (at + 2 > frame.size()) return std::nullopt;
    const uint16_t c = InternetChecksum(frame.data() + start, frame.size() - start);
    testing::PutBe16(frame, at, c);
  }
  ParsedFrame p;
  if (!testing::Parse(frame, &p).ok() || p.l4 != L4Kind::kTcp) return std::nullopt;
  Seg s;
  s.flags = p.tcp.flags;
  s.seq = p.tcp.seq;
  s.ack = p.tcp.ack;
  s.window = p.tcp.window;
  s.payload.assign(frame.begin() + p.payload_offset,
                   frame.begin() + p.payload_offset + p.payload_len);
  s.headers = p.payload_offset;
  const iovec iov = {frame.data(), frame.size()};
  s.checksum_ok =
      (f.hdr.flags & vu::kVirtioNetHdrFDataValid) ||
      (p.l3 == L3Kind::kIpv4
           ? L4ChecksumV4(p.ip.src4, p.ip.dst4, IPPROTO_TCP, {&iov, 1}, p.l4_offset, p.l4_len)
           : L4ChecksumV6(p.ip.src6, p.ip.dst6, IPPROTO_TCP, {&iov, 1}, p.l4_offset, p.l4_len)) ==
          0;
  s.hdr = f.hdr;
  return s;
}

uint8_t PatternByte(size_t i) { return static_cast<uint8_t>(i * 7 + (i >> 11)); }

// The first byte of `got` that is not the pattern's, or its size.
size_t FirstDifference(const std::vector<uint8_t>& got) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != PatternByte(i)) return i;
  }
  return got.size();
}

struct Config {
  bool mergeable = true;
  bool v6 = false;
  bool tso = true;
};

// A host listener on the loopback of the guest flow's IP version.
struct HostListener {
  explicit HostListener(bool v6)
      : fd(socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_storage a{};
    socklen_t len;
    if (v6) {
      auto* s6 = reinterpret_cast<sockaddr_in6*>(&a);
      s6->sin6_family = AF_INET6;
      s6->sin6_addr = in6addr_loopback;
      len = sizeof(*s6);
    } else {
      auto* s4 = reinterpret_cast<sockaddr_in*>(&a);
      s4->sin_family = AF_INET;
      s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof(*s4);
    }
    ok = bind(fd.get(), reinterpret_cast<sockaddr*>(&a), len) == 0 && listen(fd.get(), 4) == 0 &&
         getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0;
    port = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&a)->sin6_port
                    : reinterpret_cast<sockaddr_in*>(&a)->sin_port);
  }
  UniqueFd Accept() {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, 2000) != 1) return UniqueFd();
    return UniqueFd(accept4(fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  }
  UniqueFd fd;
  uint16_t port = 0;
  bool ok = false;
};

class TcpOffloadTest : public ::testing::TestWithParam<std::tuple<bool, bool>> {
 protected:
  void SetUp() override {
    Make({.mergeable = std::get<0>(GetParam()), .v6 = std::get<1>(GetParam())});
  }

  void Make(const Config& s) {
    tcp_.reset();
    setup_ = s;
    TranslatorWorld::Options w;
    w.rx.mergeable = s.mergeable;
    w.rx.guest_csum = true;
    w.rx.guest_tso = s.tso;
    w.rx.memory = 128 << 20;
    w.clock = ManualClock::Now;
    world_ = std::make_unique<TranslatorWorld>(w);
    absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(world_->Env(), {});
    ASSERT_TRUE(t.ok()) << t.status();
    tcp_ = std::move(*t);
    Post(s.mergeable ? 256 : 64);
  }

  void TearDown() override {
    tcp_.reset();
    if (world_ != nullptr) {
      EXPECT_EQ(ring().rx().stats().writer_bugs, 0u);
    }
  }

  GuestRxRing& ring() { return world_->ring; }
  size_t mss() const { return setup_.v6 ? 1440 : 1460; }
  size_t max_payload() const { return setup_.v6 ? kMaxPayload6 : kMaxPayload4; }
  int Post(int n) { return ring().Post(n, setup_.mergeable ? 2048 : kBigBuffer); }

  std::vector<uint8_t> Frame(uint8_t flags, uint32_t seq, uint32_t ack, size_t payload_len = 0,
                             size_t payload_from = 0, uint16_t window = 65535,
                             const std::vector<uint8_t>& options = {}) {
    FrameSpec s;
    s.src_mac = kDefaultGuestMac;
    s.dst_mac = kDefaultGatewayMac;
    s.ipv6 = setup_.v6;
    s.src4 = world_->guest.addr4;
    s.dst4 = testing::Ip4("10.0.2.2");
    s.src6 = world_->guest.addr6;
    s.dst6 = world_->guest.our_link_local6;
    s.protocol = IPPROTO_TCP;
    s.src_port = kGuestPort;
    s.dst_port = dport_;
    s.tcp_seq = seq;
    s.tcp_ack = ack;
    s.tcp_flags = flags;
    s.tcp_window = window;
    s.tcp_options = options;
    std::vector<uint8_t> payload(payload_len);
    for (size_t i = 0; i < payload_len; ++i) payload[i] = PatternByte(payload_from + i);
    return testing::Build(s, payload);
  }

  // Frames from the guest as one transmit batch, each in iovec entries of
  // `piece` bytes (as many descriptors), with its header.
  void SendBatch(std::vector<std::pair<std::vector<uint8_t>, vu::VirtioNetHdr>>&& frames,
                 size_t piece = 1000) {
    std::vector<std::vector<iovec>> iovs;
    for (auto& [frame, hdr] : frames) {
      iovs.push_back(testing::Split(frame, piece));
      ParsedFrame p;
      ASSERT_TRUE(ParseFrame(iovs.back(), &p).ok());
      world_->forward->guest().Learn(p);
      tcp_->OnFrame(hdr, iovs.back(), p);
    }
    tcp_->OnBatchEnd();
  }
  void Send(std::vector<uint8_t> frame, const vu::VirtioNetHdr& hdr = {}) {
    SendBatch({{std::move(frame), hdr}});
  }

  // The header a guest's driver sends a 64 KiB segment with.
  vu::VirtioNetHdr GsoHeader() const {
    vu::VirtioNetHdr h;
    h.flags = vu::kVirtioNetHdrFNeedsCsum;
    h.gso_type = setup_.v6 ? virtio::kVirtioNetHdrGsoTcpv6 : virtio::kVirtioNetHdrGsoTcpv4;
    h.gso_size = static_cast<uint16_t>(mss());
    h.csum_start = setup_.v6 ? 54 : 34;
    h.csum_offset = 16;
    h.hdr_len = static_cast<uint16_t>(h.csum_start + 20);
    return h;
  }

  std::vector<Seg> Segments() {
    if (ring().rx().Flush()) tcp_->OnRxAvailable();
    int used = 0;
    std::vector<Seg> out;
    for (const GuestRxRing::Frame& f : ring().Take()) {
      used += f.buffers;
      std::optional<Seg> s = ParseSeg(f);
      EXPECT_TRUE(s.has_value());
      if (!s) continue;
      EXPECT_TRUE(s->checksum_ok) << "bad checksum";
      if (!setup_.mergeable) {
        EXPECT_LE(f.bytes.size() + 12, kBigBuffer);
      }
      out.push_back(*s);
    }
    if (used > 0) Post(used);
    return out;
  }

  // The guest connects (MSS of a 1500-byte MTU, window scale 7 unless
  // `ws` is 0xff) and the host accepts.
  UniqueFd Establish(HostListener& host, uint8_t ws = 7, uint16_t window = 65535) {
    dport_ = host.port;
    const uint16_t m = static_cast<uint16_t>(mss());
    std::vector<uint8_t> opts = {2, 4, static_cast<uint8_t>(m >> 8), static_cast<uint8_t>(m)};
    if (ws != 0xff) opts.insert(opts.end(), {1, 3, 3, ws});
    Send(Frame(kTcpSyn, 1000, 0, 0, 0, window, opts));
    std::optional<Seg> synack;
    for (int i = 0; i < 200 && !synack; ++i) {
      world_->watcher.Poll(tcp_.get(), 10);
      for (const Seg& s : Segments()) {
        if ((s.flags & (kTcpSyn | kTcpAck)) == (kTcpSyn | kTcpAck)) synack = s;
      }
    }
    EXPECT_TRUE(synack.has_value());
    if (!synack) return UniqueFd();
    guest_seq_ = 1001;
    guest_ack_ = synack->seq + 1;
    UniqueFd h = host.Accept();
    EXPECT_TRUE(h.valid());
    Send(Frame(kTcpAck, guest_seq_, guest_ack_, 0, 0, window));
    return h;
  }

  // The host writes `total` bytes of the pattern while the guest takes
  // what comes, acking with `window` each round; returns the segments.
  std::vector<Seg> HostToGuest(int host, size_t total, uint16_t window, std::vector<uint8_t>* got) {
    std::vector<Seg> all;
    size_t written = 0;
    std::vector<uint8_t> chunk(256 * 1024);
    for (int round = 0; round < 2000 && got->size() < total; ++round) {
      if (written < total) {
        const size_t n = std::min(chunk.size(), total - written);
        for (size_t i = 0; i < n; ++i) chunk[i] = PatternByte(written + i);
        const ssize_t w = send(host, chunk.data(), n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) written += static_cast<size_t>(w);
      }
      world_->watcher.Poll(tcp_.get(), written < total ? 0 : 5);
      for (Seg& s : Segments()) {
        if (s.payload.empty()) continue;
        EXPECT_EQ(s.seq, guest_ack_) << "out of order";
        if (s.seq != guest_ack_) continue;
        got->insert(got->end(), s.payload.begin(), s.payload.end());
        guest_ack_ += static_cast<uint32_t>(s.payload.size());
        all.push_back(std::move(s));
      }
      Send(Frame(kTcpAck, guest_seq_, guest_ack_, 0, 0, window));
      tcp_->OnRxAvailable();
    }
    return all;
  }

  bool Skip(const HostListener& host) const { return setup_.v6 && !host.ok; }

  std::unique_ptr<TranslatorWorld> world_;
  std::unique_ptr<TcpTranslator> tcp_;
  Config setup_;
  uint16_t dport_ = 0;
  uint32_t guest_seq_ = 0;
  uint32_t guest_ack_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Buffers, TcpOffloadTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<bool, bool>>& p) {
                           return std::string(std::get<0>(p.param) ? "Mergeable" : "BigBuffers") +
                                  (std::get<1>(p.param) ? "Ipv6" : "Ipv4");
                         });

// Host data reaches the guest in segments of up to 64 KiB, each longer than
// the MSS one with the offload's fields, every byte in order.
TEST_P(TcpOffloadTest, HostDataGoesInSegmentsOfUpTo64KiB) {
  HostListener host(setup_.v6);
  if (Skip(host)) GTEST_SKIP() << "no IPv6 loopback";
  ASSERT_TRUE(host.ok);
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  constexpr size_t kTotal = 32 << 20;
  std::vector<uint8_t> got;
  const std::vector<Seg> segs = HostToGuest(h.get(), kTotal, 65535, &got);
  ASSERT_EQ(got.size(), kTotal);
  EXPECT_EQ(FirstDifference(got), kTotal) << "the first byte that differs";
  size_t largest = 0;
  size_t offloaded = 0;
  for (const Seg& s : segs) {
    largest = std::max(largest, s.payload.size());
    ASSERT_LE(s.payload.size(), max_payload());
    if (s.payload.size() > mss()) {
      ++offloaded;
      EXPECT_EQ(s.hdr.gso_type,
                setup_.v6 ? virtio::kVirtioNetHdrGsoTcpv6 : virtio::kVirtioNetHdrGsoTcpv4);
      EXPECT_EQ(s.hdr.gso_size, mss());
      EXPECT_EQ(s.hdr.hdr_len, s.headers);
      EXPECT_EQ(s.hdr.flags, vu::kVirtioNetHdrFNeedsCsum);
      EXPECT_EQ(s.hdr.csum_start, s.headers - 20);
      EXPECT_EQ(s.hdr.csum_offset, 16);
    } else {
      EXPECT_EQ(s.hdr.gso_type, vu::kVirtioNetHdrGsoNone);
      EXPECT_EQ(s.hdr.flags, vu::kVirtioNetHdrFDataValid);
    }
  }
  EXPECT_GT(offloaded, 0u);
  EXPECT_EQ(ring().rx().stats().gso_frames, offloaded);
  EXPECT_GT(largest, 32768u) << "segments stayed small";
  // Fewer frames than MSS-sized segments would have taken, by far.
  EXPECT_LT(segs.size(), kTotal / mss() / 4);
}

// The guest's window bounds each segment, whatever the offload allows.
TEST_P(TcpOffloadTest, TheGuestsWindowBoundsTheSegments) {
  HostListener host(setup_.v6);
  if (Skip(host)) GTEST_SKIP() << "no IPv6 loopback";
  constexpr uint16_t kWindow = 20000;
  UniqueFd h = Establish(host, 0xff, kWindow);  // No window scale: windows are bytes.
  ASSERT_TRUE(h.valid());
  std::vector<uint8_t> got;
  const std::vector<Seg> segs = HostToGuest(h.get(), 1 << 20, kWindow, &got);
  ASSERT_EQ(got.size(), size_t{1} << 20);
  bool offloaded = false;
  for (const Seg& s : segs) {
    EXPECT_LE(s.payload.size(), kWindow);
    offloaded |= s.hdr.gso_type != vu::kVirtioNetHdrGsoNone;
  }
  EXPECT_TRUE(offloaded);
}

// A guest that turned TSO off gets segments of its MSS, as before.
TEST_P(TcpOffloadTest, WithoutTsoSegmentsAreOfTheMss) {
  Make({.mergeable = setup_.mergeable, .v6 = setup_.v6, .tso = false});
  HostListener host(setup_.v6);
  if (Skip(host)) GTEST_SKIP() << "no IPv6 loopback";
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  std::vector<uint8_t> got;
  const std::vector<Seg> segs = HostToGuest(h.get(), 1 << 20, 65535, &got);
  ASSERT_EQ(got.size(), size_t{1} << 20);
  EXPECT_EQ(FirstDifference(got), got.size()) << "the first byte that differs";
  for (const Seg& s : segs) {
    EXPECT_LE(s.payload.size(), mss());
    EXPECT_EQ(s.hdr.gso_type, vu::kVirtioNetHdrGsoNone);
  }
}

// 64 KiB segments from the guest, each in 66 iovec entries with the header
// its driver writes: one sendmsg each; the guest sends past the window, so
// the socket takes parts of segments, which are acknowledged at once and
// sent again from there; every byte reaches the host once, in order.
TEST_P(TcpOffloadTest, GuestSegmentsOf64KiBWithPartialTakes) {
  HostListener host(setup_.v6);
  if (Skip(host)) GTEST_SKIP() << "no IPv6 loopback";
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  constexpr size_t kTotal = 4 << 20;
  const uint32_t first = guest_seq_;
  std::vector<uint8_t> got;
  std::vector<uint8_t> buf(128 << 10);
  for (int round = 0; round < 50000 && got.size() < kTotal; ++round) {
    // Two segments a batch from what was acknowledged: when the socket
    // takes part of the first, the second is past a hole and dropped.
    std::vector<std::pair<std::vector<uint8_t>, vu::VirtioNetHdr>> batch;
    for (size_t sent = guest_seq_ - first; sent < kTotal && batch.size() < 2;) {
      const size_t len = std::min(max_payload(), kTotal - sent);
      vu::VirtioNetHdr hdr = GsoHeader();
      if (len <= mss()) hdr = vu::VirtioNetHdr{};
      batch.emplace_back(Frame(kTcpAck, first + static_cast<uint32_t>(sent), guest_ack_, len, sent),
                         hdr);
      sent += len;
    }
    if (!batch.empty()) SendBatch(std::move(batch));
    for (const Seg& s : Segments()) {
      // The guest goes on from what was acknowledged (resending the rest).
      if (static_cast<int32_t>(s.ack - guest_seq_) > 0) guest_seq_ = s.ack;
    }
    // The host reads nothing until its socket has filled, then slowly.
    if (tcp_->stats().partial_sends > 0 && round % 2 == 0) {
      const ssize_t n = recv(h.get(), buf.data(), buf.size(), MSG_DONTWAIT);
      if (n > 0) got.insert(got.end(), buf.begin(), buf.begin() + n);
    }
    world_->watcher.Poll(tcp_.get(), 0);
  }
  buf.resize(1 << 20);
  for (int i = 0; i < 200 && got.size() < kTotal; ++i) {
    const ssize_t n = recv(h.get(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n > 0) {
      got.insert(got.end(), buf.begin(), buf.begin() + n);
    } else {
      usleep(5000);
    }
  }
  ASSERT_EQ(got.size(), kTotal);
  EXPECT_EQ(FirstDifference(got), kTotal) << "the first byte that differs";
  EXPECT_EQ(tcp_->stats().bytes_from_guest, kTotal);
  EXPECT_GT(tcp_->stats().partial_sends, 0u);
}

}  // namespace
}  // namespace vunet::net
