#include "net/tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/checksum.h"
#include "net/config.h"
#include "net/flow.h"
#include "net/frame.h"
#include "net/test_frames.h"
#include "net/translator.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"

namespace vunet::net {
namespace {

using testing::Ip4;
using virtio::GuestMemory;
using virtio::Virtqueue;
using virtio::VirtqUsedElem;
using virtio::testing::DriverMemory;
using virtio::testing::DriverQueue;

constexpr size_t kHdr = sizeof(vu::VirtioNetHdr);
constexpr uint16_t kGuestPort = 40000;

// The test's clock: timers fire only when a test moves it and expires them.
int64_t fake_now = 1'000'000'000;
int64_t FakeClock() { return fake_now; }

// The guest's receive queue over driver-side rings, as a guest fills it.
class FakeRx : public GuestRx {
 public:
  explicit FakeRx(bool mergeable = true, bool guest_csum = false) {
    mem_ = DriverMemory::Create(64 << 20).value();
    EXPECT_TRUE(mem_->MapInto(&memory_).ok());
    driver_ = std::make_unique<DriverQueue>(mem_.get(), 256);
    EXPECT_TRUE(vq_.Start(&memory_, driver_->DeviceConfig(memory_).value()).ok());
    config_.mergeable_rx = mergeable;
    config_.guest_csum = guest_csum;
    config_.vnet_hdr_len = kHdr;
  }

  Virtqueue* queue() override { return running_ ? &vq_ : nullptr; }
  const vu::NetConfig& config() const override { return config_; }
  void OnFrameWritten(absl::Span<const iovec>, size_t, size_t len) override {
    ++written_;
    written_bytes_ += len;
  }

  // Posts `n` receive buffers of `size` bytes (as many as the ring takes).
  void Post(int n, uint32_t size = 2048) {
    for (int i = 0; i < n && driver_->free_descriptors() > 0; ++i) {
      uint64_t gpa;
      auto& pool = free_[size];
      if (!pool.empty()) {
        gpa = pool.back();
        pool.pop_back();
      } else {
        gpa = mem_->Alloc(size, 8).value();
      }
      const DriverQueue::Buffer b{gpa, size, true};
      const std::optional<uint16_t> head = driver_->AddChain({&b, 1});
      ASSERT_TRUE(head.has_value());
      posted_[*head] = b;
    }
    driver_->Publish();
  }

  // The frames the device wrote since the last call (virtio-net header
  // stripped); their buffers go back to the pool (not reposted).
  std::vector<std::vector<uint8_t>> Take() {
    std::vector<std::vector<uint8_t>> frames;
    while (std::optional<VirtqUsedElem> e = driver_->PopUsed()) {
      std::vector<uint8_t> bytes = Read(*e);
      if (bytes.size() < kHdr) {
        ADD_FAILURE() << "used entry of " << bytes.size() << " bytes";
        continue;
      }
      vu::VirtioNetHdr hdr;
      std::memcpy(&hdr, bytes.data(), kHdr);
      last_hdr_ = hdr;
      for (uint16_t i = 1; i < hdr.num_buffers; ++i) {
        std::optional<VirtqUsedElem> more = driver_->PopUsed();
        if (!more) {
          ADD_FAILURE() << "num_buffers " << hdr.num_buffers << " but fewer used";
          break;
        }
        std::vector<uint8_t> m = Read(*more);
        bytes.insert(bytes.end(), m.begin(), m.end());
      }
      frames.emplace_back(bytes.begin() + kHdr, bytes.end());
    }
    return frames;
  }

  size_t posted() const { return posted_.size(); }
  bool running_ = true;
  int written_ = 0;
  size_t written_bytes_ = 0;
  vu::VirtioNetHdr last_hdr_;

 private:
  std::vector<uint8_t> Read(const VirtqUsedElem& e) {
    const DriverQueue::Buffer b = posted_.at(e.id);
    posted_.erase(e.id);
    free_[b.len].push_back(b.gpa);
    EXPECT_LE(e.len, b.len);
    const uint8_t* p = mem_->Host(b.gpa);
    return std::vector<uint8_t>(p, p + std::min<uint32_t>(e.len, b.len));
  }

  std::unique_ptr<DriverMemory> mem_;
  GuestMemory memory_;
  std::unique_ptr<DriverQueue> driver_;
  Virtqueue vq_;
  vu::NetConfig config_;
  std::map<uint16_t, DriverQueue::Buffer> posted_;
  std::map<uint32_t, std::vector<uint64_t>> free_;
};

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

// An epoll set of the test's own.
class LocalWatcher : public SocketWatcher {
 public:
  LocalWatcher() : epoll_(epoll_create1(EPOLL_CLOEXEC)) {}
  absl::Status Watch(int fd, uint32_t events, uint64_t tag) override {
    epoll_event ev{events, {.u64 = tag}};
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return absl::InternalError("add");
    watched_.insert(fd);
    return absl::OkStatus();
  }
  absl::Status Modify(int fd, uint32_t events, uint64_t tag) override {
    epoll_event ev{events, {.u64 = tag}};
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return absl::InternalError("mod");
    return absl::OkStatus();
  }
  void Unwatch(int fd) override {
    EXPECT_EQ(watched_.erase(fd), 1u) << "fd " << fd << " unwatched but not watched";
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  }
  // Delivers the events ready within `timeout_ms`; returns how many.
  int Poll(Translator* t, int timeout_ms) {
    epoll_event ev[64];
    const int n = epoll_wait(epoll_.get(), ev, 64, timeout_ms);
    for (int i = 0; i < n; ++i) t->OnSocketEvent(ev[i].data.u64, ev[i].events);
    return n < 0 ? 0 : n;
  }
  size_t watched() const { return watched_.size(); }

 private:
  UniqueFd epoll_;
  std::set<int> watched_;
};

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
  bool data_path = false;  // Came through the receive buffers, not the reply sender.
};

std::optional<Seg> ParseSeg(std::vector<uint8_t> frame) {
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
  return s;
}

std::vector<uint8_t> Pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed * 131 + i * 7 + (i >> 9));
  return v;
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
};

class TcpTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { Make({.peek_off = GetParam()}); }

  void Make(const Options& o, TcpTranslatorOptions topts = {}, size_t capacity = 64) {
    tcp_.reset();
    rx_ = std::make_unique<FakeRx>(o.mergeable, o.guest_csum);
    flows_ = FlowTable::Create({.capacity = capacity, .seed = 1}).value();
    guest_.addr4 = Ip4("10.0.2.15");
    guest_.gateway4 = Ip4("10.0.2.2");
    guest_.mtu = 65520;
    TranslatorEnv env;
    env.flows = flows_.get();
    env.rx = rx_.get();
    env.watcher = &watcher_;
    env.replies = &replies_;
    env.guest = &guest_;
    env.first_kind = 64;
    env.clock = FakeClock;
    topts.use_peek_off = o.peek_off;
    absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(env, topts);
    ASSERT_TRUE(t.ok()) << t.status();
    tcp_ = std::move(*t);
    if (o.peek_off) {
      // Where the kernel lacks it the translator says so; the fallback is
      // then what both parameters test.
      if (!tcp_->peek_offset()) GTEST_LOG_(INFO) << "no SO_PEEK_OFF for TCP on this kernel";
    } else {
      EXPECT_FALSE(tcp_->peek_offset());
    }
    rx_->Post(64, 2048);
  }

  void TearDown() override {
    tcp_.reset();
    EXPECT_EQ(watcher_.watched(), 0u) << "sockets left watched";
  }

  // A frame from the guest (10.0.2.15:sport) to dst:dport.
  std::vector<uint8_t> Frame(uint8_t flags, uint32_t seq, uint32_t ack,
                             const std::vector<uint8_t>& payload = {}, uint16_t window = 65535,
                             uint16_t dport = 0, std::vector<uint8_t> options = {},
                             uint16_t sport = kGuestPort) {
    FrameSpec s;
    s.src_mac = kDefaultGuestMac;
    s.dst_mac = kDefaultGatewayMac;
    s.src4 = guest_.addr4;
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

  // Frames delivered as one transmit batch: every frame stays in place until
  // OnBatchEnd, as guest memory does.
  void SendBatch(std::vector<std::vector<uint8_t>> frames) {
    std::vector<std::vector<iovec>> iovs;
    for (std::vector<uint8_t>& f : frames) iovs.push_back(testing::Split(f, 700));
    for (const std::vector<iovec>& iov : iovs) {
      ParsedFrame p;
      ASSERT_TRUE(ParseFrame(iov, &p).ok());
      tcp_->OnFrame(vu::VirtioNetHdr{}, iov, p);
    }
    tcp_->OnBatchEnd();
  }

  void Send(std::vector<uint8_t> frame, bool batch_end = true) {
    ParsedFrame p;
    // Cut in pieces so that headers and payload straddle buffers.
    const std::vector<iovec> iov = testing::Split(frame, 700);
    ASSERT_TRUE(ParseFrame(iov, &p).ok());
    tcp_->OnFrame(vu::VirtioNetHdr{}, iov, p);
    if (batch_end) tcp_->OnBatchEnd();
  }

  // Every segment that reached the guest since the last call.
  std::vector<Seg> Segments() {
    std::vector<Seg> out;
    for (std::vector<uint8_t>& f : replies_.frames) {
      std::optional<Seg> s = ParseSeg(f);
      EXPECT_TRUE(s.has_value());
      if (s) out.push_back(*s);
    }
    replies_.frames.clear();
    for (std::vector<uint8_t>& f : rx_->Take()) {
      std::optional<Seg> s = ParseSeg(f);
      EXPECT_TRUE(s.has_value());
      if (s) {
        s->data_path = true;
        out.push_back(*s);
      }
    }
    for (const Seg& s : out) EXPECT_TRUE(s.checksum_ok) << "bad checksum";
    return out;
  }

  // Polls the sockets until `done` says so (collecting segments into
  // *segs) or two seconds pass.
  bool Pump(std::vector<Seg>* segs, const std::function<bool()>& done) {
    for (int i = 0; i < 200; ++i) {
      watcher_.Poll(tcp_.get(), 10);
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
  // batch with `window` (0: do not ack).
  std::vector<uint8_t> ReceiveData(size_t n, uint16_t window = 65535) {
    std::vector<uint8_t> got;
    std::vector<Seg> segs;
    Pump(&segs, [&] {
      for (const Seg& s : segs) {
        if (s.payload.empty()) continue;
        EXPECT_TRUE(s.data_path);
        EXPECT_EQ(s.seq, guest_ack_) << "data out of order";
        if (s.seq != guest_ack_) continue;
        got.insert(got.end(), s.payload.begin(), s.payload.end());
        guest_ack_ += static_cast<uint32_t>(s.payload.size());
      }
      segs.clear();
      if (window != 0) {
        Send(Frame(kTcpAck, guest_seq_, guest_ack_, {}, window));
        rx_->Post(64);
        tcp_->OnRxAvailable();
      }
      return got.size() >= n;
    });
    return got;
  }

  // The guest connects to dst_:dport_ and the host accepts. Returns the
  // host's end.
  UniqueFd Establish(HostListener& host, uint8_t ws = 7) {
    dport_ = host.port;
    std::vector<uint8_t> opts = {2, 4, 0x05, 0xb4};  // MSS 1460.
    if (ws != 0xff) opts.insert(opts.end(), {1, 3, 3, ws});
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
    flows_->Expire(fake_now, [&](FlowId id) { tcp_->OnTimer(id, fake_now); });
  }

  LocalWatcher watcher_;
  RecordingSender replies_;
  std::unique_ptr<FakeRx> rx_;
  std::unique_ptr<FlowTable> flows_;
  GuestConfig guest_;
  std::unique_ptr<TcpTranslator> tcp_;
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
  EXPECT_EQ(flows_->size(), 0u);
  EXPECT_EQ(tcp_->stats().connect_failures, 1u);
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
  EXPECT_FALSE(synack->options.sack_permitted);
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

TEST_P(TcpTest, GuestCsumLeavesChecksumToTheGuest) {
  Make({.peek_off = GetParam(), .guest_csum = true});
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  ASSERT_EQ(send(h.get(), "hello", 5, 0), 5);
  std::optional<Seg> seg;
  for (int i = 0; i < 100 && !seg; ++i) {
    watcher_.Poll(tcp_.get(), 10);
    for (std::vector<uint8_t>& f : rx_->Take()) seg = ParseSeg(f);
  }
  ASSERT_TRUE(seg.has_value());
  EXPECT_EQ(seg->payload, std::vector<uint8_t>({'h', 'e', 'l', 'l', 'o'}));
  EXPECT_EQ(rx_->last_hdr_.flags, vu::kVirtioNetHdrFDataValid);
}

TEST_P(TcpTest, OutOfOrderAndDuplicateSegmentsAreAckedNotSent) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // Ahead of what we expect: dropped, ACK of the expected sequence.
  Send(Frame(kTcpAck, guest_seq_ + 100, guest_ack_, Pattern(50, 3)));
  std::vector<Seg> segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].ack, guest_seq_);
  EXPECT_EQ(tcp_->stats().out_of_order, 1u);
  // In order, then again (retransmitted), then overlapping.
  const std::vector<uint8_t> d = Pattern(200, 4);
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

TEST_P(TcpTest, SegmentsAheadAreTakenWhenTheirBatchFillsTheHole) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  const std::vector<uint8_t> d = Pattern(300, 6);
  auto piece = [&](size_t from, size_t to) {
    return Frame(kTcpAck, guest_seq_ + from, guest_ack_,
                 std::vector<uint8_t>(d.begin() + from, d.begin() + to));
  };
  // As a guest sends after a retransmission timeout: new data first, the
  // hole's retransmission after it, in one batch; and a segment whose hole
  // is never filled.
  SendBatch({piece(200, 300), piece(100, 200), piece(0, 100),
             Frame(kTcpAck, guest_seq_ + 1000, guest_ack_, Pattern(10, 7))});
  std::vector<uint8_t> got(300);
  ASSERT_EQ(recv(h.get(), got.data(), got.size(), MSG_WAITALL), 300);
  EXPECT_EQ(got, d);
  EXPECT_EQ(tcp_->stats().out_of_order, 3u);
  EXPECT_EQ(tcp_->stats().reordered, 2u);
  EXPECT_EQ(tcp_->stats().bytes_from_guest, 300u);
  std::vector<Seg> segs = Segments();
  ASSERT_FALSE(segs.empty());
  EXPECT_EQ(segs.back().ack, guest_seq_ + 300);
  // Nothing is kept past the batch: the far segment is gone.
  SendBatch({});
  EXPECT_EQ(tcp_->stats().bytes_from_guest, 300u);
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
  watcher_.Poll(tcp_.get(), 100);
  for (const Seg& s : Segments()) guest_ack_ += static_cast<uint32_t>(s.payload.size());
  ASSERT_EQ(send(h.get(), "more", 4, 0), 4);
  usleep(20000);  // In the socket before the batch (its EPOLLIN not yet handled).
  SendBatch({Frame(kTcpAck, guest_seq_ + 300, guest_ack_, Pattern(100, 4)),
             Frame(kTcpAck, guest_seq_ + 400, guest_ack_, Pattern(100, 5)),
             Frame(kTcpAck, guest_seq_ + 500, guest_ack_, Pattern(100, 6))});
  watcher_.Poll(tcp_.get(), 100);
  segs = Segments();
  size_t pure = 0;
  size_t data = 0;
  for (const Seg& s : segs) {
    EXPECT_EQ(s.ack, guest_seq_ + 100);
    (s.payload.empty() ? pure : data) += 1;
  }
  // (SendControl flushes data segments into the ring before each control
  // segment, so the guest sees the duplicates after the data.)
  EXPECT_EQ(data, 1u);
  EXPECT_GE(pure, 3u);
}

TEST_P(TcpTest, EachSegmentDroppedPastAHoleGetsADuplicateAck) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // The first segment of the window was lost: the four after it are
  // dropped, and the guest gets three duplicate ACKs of the hole (enough
  // for its fast retransmit) in the same batch rather than one.
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
  // The hole's retransmission: in order again, one ACK.
  Send(Frame(kTcpAck, guest_seq_, guest_ack_, Pattern(100, 0)));
  segs = Segments();
  ASSERT_EQ(segs.size(), 1u);
  EXPECT_EQ(segs[0].ack, guest_seq_ + 100);
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
  EXPECT_EQ(flows_->size(), 0u);
  char c;
  EXPECT_EQ(recv(h.get(), &c, 1, 0), -1);
  EXPECT_EQ(errno, ECONNRESET);
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
  rx_->running_ = false;
  for (int i = 0; i < 10; ++i) {
    fake_now += 60'000'000'000;
    Expire();
  }
  EXPECT_EQ(flows_->size(), 1u);
  EXPECT_GE(tcp_->stats().rx_waits, 1u);
  rx_->running_ = true;
  tcp_->OnRxAvailable();
  EXPECT_EQ(ReceiveData(6), std::vector<uint8_t>({'a', 'b', 'c', 'd', 'e', 'f'}));
  // A guest that never comes back: at the maximum timeout its expiries
  // count, and the flow ends in some fifteen minutes more.
  ASSERT_EQ(send(h.get(), "ghi", 3, 0), 3);
  ASSERT_TRUE(Pump(&segs, [&] { return segs.size() > 1; }));
  rx_->running_ = false;
  for (int i = 0; i < 40 && flows_->size() > 0; ++i) {
    fake_now += 60'000'000'000;
    Expire();
  }
  EXPECT_EQ(flows_->size(), 0u);
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
  ASSERT_EQ(flows_->size(), 1u);
  ASSERT_EQ(send(h.get(), "late", 4, 0), 4);
  EXPECT_EQ(ReceiveData(4), std::vector<uint8_t>({'l', 'a', 't', 'e'}));
  // The host closes too; the guest, whose FIN came first, acks ours, and
  // the flow ends.
  ASSERT_EQ(shutdown(h.get(), SHUT_WR), 0);
  std::optional<Seg> fin = WaitFor(kTcpFin);
  ASSERT_TRUE(fin.has_value());
  Send(Frame(kTcpAck, guest_seq_, guest_ack_ + 1));
  EXPECT_EQ(flows_->size(), 0u);

  // The host closes first and the guest stays silent: the half-closed
  // timeout (60 s) ends it.
  UniqueFd h2 = Establish(host);
  ASSERT_TRUE(h2.valid());
  ASSERT_EQ(shutdown(h2.get(), SHUT_WR), 0);
  fin = WaitFor(kTcpFin);
  ASSERT_TRUE(fin.has_value());
  Send(Frame(kTcpAck, guest_seq_, guest_ack_ + 1));
  ASSERT_EQ(flows_->size(), 1u);
  fake_now += 59'000'000'000;
  Expire();
  EXPECT_EQ(flows_->size(), 1u);
  fake_now += 2'000'000'000;
  Expire();
  EXPECT_EQ(flows_->size(), 0u);
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
  watcher_.Poll(tcp_.get(), 50);
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
  rx_->running_ = false;
  const std::vector<uint8_t> b = Pattern(20000, 7);
  ASSERT_EQ(send(h.get(), b.data(), b.size(), 0), 20000);
  watcher_.Poll(tcp_.get(), 100);
  EXPECT_TRUE(Segments().empty());
  EXPECT_GE(tcp_->stats().rx_waits, 1u);
  rx_->running_ = true;
  tcp_->OnRxAvailable();
  EXPECT_EQ(ReceiveData(20000), b);
}

TEST_P(TcpTest, FullRingWaitsForBuffers) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  // Take every posted buffer out of play.
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
  EXPECT_EQ(flows_->size(), 0u);
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
  EXPECT_EQ(flows_->size(), 0u);
  char buf[4];
  EXPECT_EQ(recv(h.get(), buf, sizeof(buf), MSG_WAITALL), 2);
  EXPECT_EQ(recv(h.get(), buf, sizeof(buf), 0), 0);
}

TEST_P(TcpTest, GuestResetResetsTheHost) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  Send(Frame(kTcpRst, guest_seq_, 0));
  EXPECT_EQ(flows_->size(), 0u);
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
  EXPECT_EQ(flows_->size(), 0u);
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
  EXPECT_EQ(flows_->size(), 0u);
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
  EXPECT_EQ(flows_->size(), 0u);
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
  EXPECT_EQ(flows_->size(), 2u);
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
  EXPECT_EQ(flows_->size(), 1u);
  fake_now += 2'000'000'000;
  Expire();
  EXPECT_EQ(flows_->size(), 0u);
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
  EXPECT_EQ(flows_->size(), 1u);
  fake_now += 11'000'000'000;
  Expire();
  EXPECT_EQ(flows_->size(), 0u);
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
  dst_ = guest_.gateway4;
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
  dst_ = guest_.gateway4;
  Send(Frame(kTcpRst | kTcpAck, 0, syn->seq + 1, {}, 0, syn->sport, {}, 22));
  EXPECT_EQ(flows_->size(), 0u);
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
  EXPECT_EQ(flows_->size(), 0u);
}

TEST_P(TcpTest, ShutdownClosesEverything) {
  HostListener host;
  UniqueFd h = Establish(host);
  ASSERT_TRUE(h.valid());
  tcp_->Shutdown();
  EXPECT_EQ(flows_->size(), 0u);
  EXPECT_EQ(watcher_.watched(), 0u);
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
  guest_.addr6 = testing::Ip6("fd00::2");
  guest_.our_link_local6 = testing::Ip6("fe80::1");
  guest_.gateway6 = testing::Ip6("fe80::1");

  FrameSpec s;
  s.ipv6 = true;
  s.src_mac = kDefaultGuestMac;
  s.dst_mac = kDefaultGatewayMac;
  s.src6 = guest_.addr6;
  s.dst6 = guest_.our_link_local6;
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
  guest_.addr6 = testing::Ip6("fd00::2");
  guest_.our_link_local6 = testing::Ip6("fe80::1");
  guest_.gateway6 = testing::Ip6("fe80::1");
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
    watcher_.Poll(tcp_.get(), 10);
    if (!replies_.frames.empty()) raw = replies_.frames[0];
  }
  replies_.frames.clear();
  ParsedFrame p;
  ASSERT_TRUE(testing::Parse(raw, &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kIpv4);
  EXPECT_EQ(p.ip.src4.s_addr, guest_.gateway4.s_addr);
  EXPECT_EQ(p.ip.dst4.s_addr, guest_.addr4.s_addr);
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
    watcher_.Poll(tcp_.get(), 10);
    if (!replies_.frames.empty()) raw = replies_.frames[0];
  }
  ASSERT_TRUE(testing::Parse(raw, &p).ok());
  EXPECT_EQ(p.l3, L3Kind::kIpv6);
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.src6, &guest_.our_link_local6));
  EXPECT_TRUE(IN6_ARE_ADDR_EQUAL(&p.ip.dst6, &guest_.addr6));
  EXPECT_EQ(tcp_->stats().accepted, 2u);
}

TEST(TcpCreateTest, RefusesBadEnvAndOptions) {
  TranslatorEnv env;
  EXPECT_FALSE(TcpTranslator::Create(env, {}).ok());
  auto flows = FlowTable::Create({.capacity = 4}).value();
  FakeRx rx;
  LocalWatcher watcher;
  RecordingSender replies;
  GuestConfig guest;
  env.flows = flows.get();
  env.rx = &rx;
  env.watcher = &watcher;
  env.replies = &replies;
  env.guest = &guest;
  EXPECT_TRUE(TcpTranslator::Create(env, {}).ok());
  TcpTranslatorOptions o;
  o.window_scale = 15;
  EXPECT_FALSE(TcpTranslator::Create(env, o).ok());
  o = {};
  o.rto_max_ns = 1;
  EXPECT_FALSE(TcpTranslator::Create(env, o).ok());
  env.first_kind = 10;
  EXPECT_FALSE(TcpTranslator::Create(env, {}).ok());
}

TEST(TcpCreateTest, ListenFailureNamesThePort) {
  HostListener busy;  // Not SO_REUSEADDR-compatible: listening.
  auto flows = FlowTable::Create({.capacity = 4}).value();
  FakeRx rx;
  LocalWatcher watcher;
  RecordingSender replies;
  GuestConfig guest;
  TranslatorEnv env{
      .flows = flows.get(), .rx = &rx, .watcher = &watcher, .replies = &replies, .guest = &guest};
  TcpTranslatorOptions o;
  PortForward f;
  f.host_port = busy.port;
  f.guest_port = 80;
  f.family = AF_INET;
  f.bind4 = Ip4("127.0.0.1");
  o.forwards.push_back(f);
  absl::StatusOr<std::unique_ptr<TcpTranslator>> t = TcpTranslator::Create(env, o);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(std::to_string(busy.port)), std::string::npos) << t.status();
  EXPECT_EQ(watcher.watched(), 0u);
}

// "all" and exclusion-only specs (PortForward::weak) skip ports in use; a
// weak forward that binds nothing fails.
TEST(TcpCreateTest, WeakForwardsSkipPortsInUse) {
  HostListener busy;
  const uint16_t free_port = ClosedPort();
  auto flows = FlowTable::Create({.capacity = 4}).value();
  FakeRx rx;
  LocalWatcher watcher;
  RecordingSender replies;
  GuestConfig guest;
  TranslatorEnv env{
      .flows = flows.get(), .rx = &rx, .watcher = &watcher, .replies = &replies, .guest = &guest};
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
}

// --freebind: a bind address the host does not have (TEST-NET-1) is taken.
TEST(TcpCreateTest, FreebindListensOnAnAddressNotConfigured) {
  auto flows = FlowTable::Create({.capacity = 4}).value();
  FakeRx rx;
  LocalWatcher watcher;
  RecordingSender replies;
  GuestConfig guest;
  TranslatorEnv env{
      .flows = flows.get(), .rx = &rx, .watcher = &watcher, .replies = &replies, .guest = &guest};
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
