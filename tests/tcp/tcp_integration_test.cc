// The TCP translator in the real backend (tools/vunet/backend.h), run
// in-process on its own thread and driven through its vhost-user socket by
// vu_frontend::Frontend, against real host sockets on the loopback. The
// guest is scripted (tests/tcp/scripted_guest.h).

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/config/config.h"
#include "net/config/port_forward.h"
#include "net/forward/forward.h"
#include "net/tcp/tcp.h"
#include "net/translate/frame_path.h"
#include "tests/tcp/scripted_guest.h"
#include "tools/vu_frontend/frontend.h"
#include "tools/vunet/backend.h"

namespace vunet::tcp_testing {
namespace {

using tools::Backend;
using tools::BackendOptions;

in_addr V4(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return a;
}

// The bytes of a transfer: position-dependent, so that a byte in the wrong
// place shows.
std::vector<uint8_t> Pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < len; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = static_cast<uint8_t>(x >> 16);
  }
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

void SetTimeouts(int fd, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// A listener on the host's loopback.
class HostListener {
 public:
  explicit HostListener(int backlog = 128) : fd_(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(fd_.get(), backlog), 0);
    socklen_t len = sizeof(a);
    getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  // On ::1 (ok() false where the host has no IPv6 loopback).
  struct V6 {};
  explicit HostListener(V6) : fd_(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    socklen_t len = sizeof(a);
    ok_ = bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
          listen(fd_.get(), 16) == 0 &&
          getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0;
    port_ = ntohs(a.sin6_port);
  }
  bool ok() const { return ok_; }
  // The next connection (blocking, with 10 s timeouts), or an invalid fd.
  UniqueFd Accept(int timeout_ms = 10000) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return UniqueFd();
    UniqueFd c(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    SetTimeouts(c.get(), 10);
    return c;
  }
  int fd() const { return fd_.get(); }
  uint16_t port() const { return port_; }

 private:
  UniqueFd fd_;
  uint16_t port_ = 0;
  bool ok_ = true;
};

// Reads until EOF (or an error, or `limit` bytes).
std::vector<uint8_t> ReadAll(int fd, size_t limit = SIZE_MAX) {
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 16);
  while (out.size() < limit) {
    const ssize_t n = recv(fd, buf.data(), std::min(buf.size(), limit - out.size()), 0);
    if (n <= 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  return out;
}

// A thread joined when it goes out of scope, so that a failed assertion
// cannot leave one running (std::terminate). Every host-side thread here
// ends on its own: its sockets have timeouts.
class Thread {
 public:
  template <typename F>
  explicit Thread(F f) : t_(std::move(f)) {}
  ~Thread() { join(); }
  void join() {
    if (t_.joinable()) t_.join();
  }

 private:
  std::thread t_;
};

bool WriteAll(int fd, const std::vector<uint8_t>& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

class TcpIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/vunet_tcp_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/vunet.sock";
  }

  void TearDown() override {
    guest_.reset();
    frontend_.reset();
    Stop();
    backend_.reset();
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }

  void Start(const net::TcpTranslatorOptions& tcp = {},
             const vu_frontend::FrontendOptions& fo = Frontend(), uint32_t mtu = 65520) {
    BackendOptions o;
    o.socket_path = path_;
    o.guest.addr4 = V4("10.0.2.15");
    o.guest.gateway4 = V4("10.0.2.2");
    inet_pton(AF_INET6, "fd00::15", &o.guest.addr6);
    o.guest.prefix_len6 = 64;
    inet_pton(AF_INET6, "fe80::1", &o.guest.gateway6);
    inet_pton(AF_INET6, "fe80::1", &o.guest.our_link_local6);
    o.guest.mtu = mtu;
    o.send_ra = false;
    // The frame path: ARP and the TCP translator only.
    o.path.arp = {.gateway_mac = net::kDefaultGatewayMac, .guest_addr = o.guest.addr4};
    o.path.tcp = tcp;
    o.path.udp.reset();
    o.path.icmp.reset();
    // The gateway's address stands for the host's loopback.
    o.forward = net::RulesFromConfig(o.guest, {});
    absl::StatusOr<std::unique_ptr<Backend>> b = Backend::Create(o);
    ASSERT_TRUE(b.ok()) << b.status();
    backend_ = std::move(*b);
    thread_ = std::thread([this] { run_status_ = backend_->Run(); });

    absl::StatusOr<std::unique_ptr<vu_frontend::Frontend>> f = vu_frontend::Frontend::Create(fo);
    ASSERT_TRUE(f.ok()) << f.status();
    frontend_ = std::move(*f);
    ASSERT_TRUE(frontend_->Connect(path_, absl::Seconds(5)).ok());
    absl::Status s = frontend_->Negotiate();
    ASSERT_TRUE(s.ok()) << s;
    GuestAddress a;
    a.guest4 = V4("10.0.2.15");
    inet_pton(AF_INET6, "fd00::15", &a.guest6);
    guest_ = std::make_unique<ScriptedGuest>(frontend_.get(), a);
  }

  static vu_frontend::FrontendOptions Frontend() {
    vu_frontend::FrontendOptions fo;
    fo.queue_size = 1024;
    fo.rx_buffer_size = 4096;
    return fo;
  }

  // Stops the backend (its translator's counters are then safe to read).
  void Stop() {
    if (backend_ == nullptr || !thread_.joinable()) return;
    backend_->Stop();
    thread_.join();
    EXPECT_TRUE(run_status_.ok()) << run_status_;
  }

  const net::TcpStats& Stats() { return Tcp()->stats(); }
  net::TcpTranslator* Tcp() { return backend_->path()->tcp(); }

  Endpoint Gateway(uint16_t port) const { return Endpoint::V4("10.0.2.2", port); }

  std::string dir_;
  std::string path_;
  std::unique_ptr<Backend> backend_;
  std::thread thread_;
  absl::Status run_status_;
  std::unique_ptr<vu_frontend::Frontend> frontend_;
  std::unique_ptr<ScriptedGuest> guest_;
};

TEST_F(TcpIntegrationTest, ConnectRefusedIsReset) {
  uint16_t port;
  {
    HostListener closed;
    port = closed.port();
  }
  Start();
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(port), 40000, {}, absl::Seconds(5));
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::IsUnavailable(c.status())) << c.status();
  Stop();
  EXPECT_EQ(Stats().connect_failures, 1u);
}

TEST_F(TcpIntegrationTest, BulkGuestToHost) {
  Start();
  HostListener host;
  const std::vector<uint8_t> data = Pattern(8 << 20, 1);
  std::vector<uint8_t> got;
  Thread reader([&] {
    UniqueFd h = host.Accept();
    got = ReadAll(h.get());
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40001, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->peer_options().mss, 65520 - 40);
  const absl::Time t0 = absl::Now();
  absl::Status s = (*c)->Write(data, absl::Seconds(60));
  EXPECT_TRUE(s.ok()) << s;
  s = (*c)->Shutdown(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
  reader.join();
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  EXPECT_EQ(Compare(got, data), "");
  std::printf("guest -> host: %zu bytes in %.3f s (%.0f Mbit/s); guest timeouts %lu\n", data.size(),
              secs, data.size() * 8 / secs / 1e6,
              static_cast<unsigned long>((*c)->stats().timeouts));
  // The host closed after EOF: our FIN, and the flow ends with its ACK.
  s = (*c)->WaitFin(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
  (*c)->Pump().IgnoreError();
  absl::SleepFor(absl::Milliseconds(100));
  Stop();
  EXPECT_EQ(Stats().bytes_from_guest, data.size());
  EXPECT_EQ(Stats().closed, 1u);
}

TEST_F(TcpIntegrationTest, BulkHostToGuest) {
  Start();
  HostListener host;
  const std::vector<uint8_t> data = Pattern(8 << 20, 2);
  Thread writer([&] {
    UniqueFd h = host.Accept();
    EXPECT_TRUE(WriteAll(h.get(), data));
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40002, {});
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::Time t0 = absl::Now();
  absl::Status s = (*c)->WaitFin(absl::Seconds(60));
  EXPECT_TRUE(s.ok()) << s;
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  writer.join();
  std::vector<uint8_t> got = (*c)->TakeReceived();
  EXPECT_EQ(Compare(got, data), "");
  std::printf("host -> guest: %zu bytes in %.3f s (%.0f Mbit/s)\n", data.size(), secs,
              data.size() * 8 / secs / 1e6);
  s = (*c)->Shutdown(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
  absl::SleepFor(absl::Milliseconds(100));
  Stop();
  EXPECT_GE(Stats().bytes_to_guest, data.size());
  EXPECT_EQ(Stats().closed, 1u);
}

TEST_F(TcpIntegrationTest, BulkBothWaysAtOnceWithSmallMss) {
  Start();
  HostListener host;
  const std::vector<uint8_t> up = Pattern(4 << 20, 3);
  const std::vector<uint8_t> down = Pattern(4 << 20, 4);
  std::vector<uint8_t> got_up;
  Thread server([&] {
    UniqueFd h = host.Accept();
    std::thread w([&] {
      EXPECT_TRUE(WriteAll(h.get(), down));
      shutdown(h.get(), SHUT_WR);
    });
    got_up = ReadAll(h.get());
    w.join();
  });
  GuestTcp::Options o;
  o.mss = 1460;
  o.window = 1 << 20;
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40003, o);
  ASSERT_TRUE(c.ok()) << c.status();
  GuestTcp& t = **c;
  t.Queue(up);
  t.QueueFin();
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!(t.all_acked() && t.fin_received()) && !t.reset_received() && absl::Now() < deadline) {
    ASSERT_TRUE(guest_->Poll(absl::Milliseconds(5)).ok());
    ASSERT_TRUE(t.Pump().ok());
  }
  EXPECT_TRUE(t.all_acked());
  EXPECT_TRUE(t.fin_received());
  server.join();
  EXPECT_EQ(Compare(got_up, up), "");
  EXPECT_EQ(Compare(t.TakeReceived(), down), "");
  Stop();
}

TEST_F(TcpIntegrationTest, HalfCloseGuestFirst) {
  Start();
  HostListener host;
  std::vector<uint8_t> request;
  const std::vector<uint8_t> response = Pattern(200000, 5);
  Thread server([&] {
    UniqueFd h = host.Accept();
    request = ReadAll(h.get());  // Until the guest's FIN.
    EXPECT_TRUE(WriteAll(h.get(), response));
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40004, {});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<uint8_t> req = Pattern(1000, 6);
  ASSERT_TRUE((*c)->Write(req, absl::Seconds(10)).ok());
  ASSERT_TRUE((*c)->Shutdown(absl::Seconds(10)).ok());
  // Half-closed: the response still comes, then the host's FIN.
  absl::Status s = (*c)->WaitFin(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
  server.join();
  EXPECT_EQ(request, req);
  EXPECT_EQ(Compare((*c)->TakeReceived(), response), "");
  (*c)->Pump().IgnoreError();  // Our ACK of the FIN ends the flow.
  absl::SleepFor(absl::Milliseconds(100));
  Stop();
  EXPECT_EQ(Stats().closed, 1u);
  EXPECT_EQ(Stats().host_resets + Stats().guest_resets, 0u);
}

TEST_F(TcpIntegrationTest, HalfCloseHostFirst) {
  Start();
  HostListener host;
  std::vector<uint8_t> late;
  std::atomic<bool> shut{false};
  Thread server([&] {
    UniqueFd h = host.Accept();
    EXPECT_TRUE(WriteAll(h.get(), {'b', 'y', 'e'}));
    shutdown(h.get(), SHUT_WR);
    shut = true;
    late = ReadAll(h.get());  // The guest still sends, then closes.
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40005, {});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE((*c)->WaitFin(absl::Seconds(10)).ok());
  EXPECT_EQ((*c)->TakeReceived(), std::vector<uint8_t>({'b', 'y', 'e'}));
  const std::vector<uint8_t> more = Pattern(300000, 7);
  ASSERT_TRUE((*c)->Write(more, absl::Seconds(10)).ok());
  ASSERT_TRUE((*c)->Shutdown(absl::Seconds(10)).ok());
  server.join();
  EXPECT_EQ(Compare(late, more), "");
  absl::SleepFor(absl::Milliseconds(100));
  Stop();
  EXPECT_EQ(Stats().closed, 1u);
}

TEST_F(TcpIntegrationTest, GuestResetResetsTheHost) {
  Start();
  HostListener host;
  int err = 0;
  Thread server([&] {
    UniqueFd h = host.Accept();
    char c;
    if (recv(h.get(), &c, 1, 0) < 0) err = errno;
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40006, {});
  ASSERT_TRUE(c.ok()) << c.status();
  absl::SleepFor(absl::Milliseconds(50));
  ASSERT_TRUE((*c)->Reset().ok());
  server.join();
  EXPECT_EQ(err, ECONNRESET);
  Stop();
  EXPECT_EQ(Stats().guest_resets, 1u);
}

TEST_F(TcpIntegrationTest, HostResetResetsTheGuest) {
  Start();
  HostListener host;
  std::atomic<bool> established{false};
  Thread server([&] {
    UniqueFd h = host.Accept();
    // Reset once the guest has its connection (before, it would be refused).
    for (int i = 0; i < 1000 && !established; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const linger l = {1, 0};
    setsockopt(h.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40007, {});
  established = true;
  ASSERT_TRUE(c.ok()) << c.status();
  server.join();
  absl::Status s = (*c)->WaitReset(absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
  Stop();
  EXPECT_EQ(Stats().host_resets, 1u);
}

// A host reader that stops, then reads slowly, then fast: the guest must
// follow the window it is given (window updates, duplicate ACKs when the
// socket took part), not stall or fall back to timeouts.
TEST_F(TcpIntegrationTest, WindowFullHostReaderStopsThenReads) {
  Start();
  HostListener host;
  const std::vector<uint8_t> data = Pattern(16 << 20, 8);
  std::vector<uint8_t> got;
  Thread reader([&] {
    UniqueFd h = host.Accept();
    int small = 64 * 1024;  // The host's receive buffer: fills quickly.
    setsockopt(h.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // Not reading.
    std::vector<uint8_t> buf(16384);
    const auto slow_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    while (std::chrono::steady_clock::now() < slow_until) {  // Slow.
      const ssize_t n = recv(h.get(), buf.data(), buf.size(), 0);
      if (n <= 0) return;
      got.insert(got.end(), buf.begin(), buf.begin() + n);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::vector<uint8_t> rest = ReadAll(h.get());  // Fast.
    got.insert(got.end(), rest.begin(), rest.end());
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40008, {});
  ASSERT_TRUE(c.ok()) << c.status();
  const absl::Time t0 = absl::Now();
  absl::Status s = (*c)->Write(data, absl::Seconds(60));
  EXPECT_TRUE(s.ok()) << s;
  ASSERT_TRUE((*c)->Shutdown(absl::Seconds(10)).ok());
  reader.join();
  EXPECT_EQ(Compare(got, data), "");
  const GuestTcp::Stats& gs = (*c)->stats();
  std::printf(
      "window-full transfer: %.2f s; guest: %lu timeouts, %lu fast retransmits, %lu probes\n",
      absl::ToDoubleSeconds(absl::Now() - t0), static_cast<unsigned long>(gs.timeouts),
      static_cast<unsigned long>(gs.fast_retransmits), static_cast<unsigned long>(gs.probes));
  // Settled: the guest was told about the window, it did not time out its
  // way through (a few timeouts at the stop itself are tolerated).
  EXPECT_LE(gs.timeouts, 5u);
  Stop();
  std::printf("translator: %lu partial sends, %lu window updates\n",
              static_cast<unsigned long>(Stats().partial_sends),
              static_cast<unsigned long>(Stats().window_updates));
  EXPECT_GE(Stats().window_updates, 1u);
}

// The guest stops taking frames (its receive ring fills), then resumes:
// every byte still arrives, in order.
TEST_F(TcpIntegrationTest, GuestNotReadingThenReading) {
  vu_frontend::FrontendOptions fo = Frontend();
  // 64 KiB of receive buffers: less than the guest's window, and less than
  // the unacknowledged data vunet's socket holds (its receive buffer starts
  // at 128 KiB, half of it for data), so the ring, not the socket, runs dry.
  fo.queue_size = 16;
  Start({}, fo);
  HostListener host;
  const std::vector<uint8_t> data = Pattern(8 << 20, 9);
  Thread writer([&] {
    UniqueFd h = host.Accept();
    EXPECT_TRUE(WriteAll(h.get(), data));
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40009, {});
  ASSERT_TRUE(c.ok()) << c.status();
  // Read a little, then nothing for a second: the ring fills and stays full.
  ASSERT_TRUE((*c)->Read(100000, absl::Seconds(10)).ok());
  absl::SleepFor(absl::Seconds(1));
  absl::Status s = (*c)->WaitFin(absl::Seconds(60));
  EXPECT_TRUE(s.ok()) << s;
  writer.join();
  std::vector<uint8_t> got = (*c)->TakeReceived();
  got.insert(got.begin(), data.begin(), data.begin() + 100000);
  EXPECT_EQ(Compare(got, data), "");
  EXPECT_EQ((*c)->stats().out_of_order, 0u);
  Stop();
  EXPECT_GE(Stats().rx_waits, 1u);
}

// A receive ring of eight buffers through the real loop: the translator
// fills it with frames the loop publishes at the end of the iteration
// (RxQueue::Flush, then a retry for the writers it held back) and waits for
// the guest's kick; a bulk transfer still arrives byte for byte, in order,
// the host's FIN after it, and the queue saw no contract violation.
TEST_F(TcpIntegrationTest, BulkHostToGuestThroughEightReceiveBuffers) {
  vu_frontend::FrontendOptions fo = Frontend();
  fo.queue_size = 8;
  Start({}, fo);
  HostListener host;
  const std::vector<uint8_t> data = Pattern(2 << 20, 14);
  Thread writer([&] {
    UniqueFd h = host.Accept();
    EXPECT_TRUE(WriteAll(h.get(), data));
  });
  GuestTcp::Options o;
  o.mss = 1460;  // Many segments: eight to a ring.
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40012, o);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Status s = (*c)->WaitFin(absl::Seconds(60));
  EXPECT_TRUE(s.ok()) << s;
  writer.join();
  EXPECT_EQ(Compare((*c)->TakeReceived(), data), "");
  EXPECT_EQ((*c)->stats().out_of_order, 0u);
  EXPECT_EQ((*c)->stats().timeouts, 0u);
  ASSERT_TRUE((*c)->Shutdown(absl::Seconds(10)).ok());
  absl::SleepFor(absl::Milliseconds(100));
  Stop();
  EXPECT_EQ(Stats().closed, 1u);
  EXPECT_GE(Stats().rx_waits, 1u);
  EXPECT_EQ(backend_->rx_stats().writer_bugs, 0u);
  EXPECT_EQ(backend_->rx_stats().never_fits, 0u);
  // One used-index update per iteration with frames, two at most when a
  // flush let a held-back writer write again.
  EXPECT_LE(backend_->stats().rx_flushes, 2 * backend_->stats().rx_iterations);
}

// The guest loses one data segment and acks what it has: the duplicate ACKs
// bring the data again from the socket.
TEST_F(TcpIntegrationTest, RetransmitAfterADroppedFrame) {
  Start();
  HostListener host;
  const std::vector<uint8_t> data = Pattern(4 << 20, 10);
  Thread writer([&] {
    UniqueFd h = host.Accept();
    EXPECT_TRUE(WriteAll(h.get(), data));
  });
  int data_segments = 0;
  guest_->drop = [&](const Segment& s) { return !s.payload.empty() && ++data_segments == 5; };
  GuestTcp::Options o;
  o.mss = 8000;  // Many segments per window: the ones after the loss make duplicate ACKs.
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40010, o);
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Status s = (*c)->WaitFin(absl::Seconds(30));
  EXPECT_TRUE(s.ok()) << s;
  writer.join();
  EXPECT_EQ(guest_->dropped(), 1u);
  EXPECT_EQ(Compare((*c)->TakeReceived(), data), "");
  EXPECT_GE((*c)->stats().out_of_order, 3u);
  Stop();
  EXPECT_GE(Stats().fast_retransmits, 1u);
}

// The last segment of a burst is lost: no duplicate ACKs follow, the timer
// sends it again.
TEST_F(TcpIntegrationTest, RetransmitOnTheTimer) {
  net::TcpTranslatorOptions o;
  o.rto_initial_ns = 200'000'000;
  Start(o);
  HostListener host;
  const std::vector<uint8_t> data = Pattern(5000, 11);
  UniqueFd h;
  Thread accept([&] { h = host.Accept(); });
  GuestTcp::Options go;
  go.mss = 1000;
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Connect(guest_.get(), Gateway(host.port()), 40011, go);
  ASSERT_TRUE(c.ok()) << c.status();
  accept.join();
  bool dropped = false;
  guest_->drop = [&](const Segment& s) {
    // The segment that ends with the last byte (the pattern's tail is unique).
    if (dropped || s.payload.empty() || s.payload.size() > data.size()) return false;
    dropped = std::equal(s.payload.begin(), s.payload.end(), data.end() - s.payload.size());
    return dropped;
  };
  ASSERT_TRUE(WriteAll(h.get(), data));
  absl::StatusOr<std::vector<uint8_t>> got = (*c)->Read(data.size(), absl::Seconds(10));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(dropped);
  EXPECT_EQ(Compare(*got, data), "");
  Stop();
  EXPECT_GE(Stats().timer_retransmits, 1u);
}

// A thousand connections at once, each echoed by the host.
TEST_F(TcpIntegrationTest, ThousandConcurrentConnections) {
  constexpr int kConnections = 1000;
  Start();
  HostListener host(1024);
  std::atomic<bool> stop{false};
  std::atomic<int> echoed{0};
  // The host: one epoll loop that accepts, echoes and closes after EOF.
  Thread server([&] {
    UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
    fcntl(host.fd(), F_SETFL, O_NONBLOCK);
    epoll_event ev{EPOLLIN, {.fd = host.fd()}};
    epoll_ctl(ep.get(), EPOLL_CTL_ADD, host.fd(), &ev);
    std::map<int, std::vector<uint8_t>> pending;  // Bytes read, to echo.
    char buf[4096];
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    while (!stop && std::chrono::steady_clock::now() < give_up) {
      epoll_event evs[64];
      const int n = epoll_wait(ep.get(), evs, 64, 20);
      for (int i = 0; i < n; ++i) {
        const int fd = evs[i].data.fd;
        if (fd == host.fd()) {
          for (;;) {
            const int c = accept4(host.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (c < 0) break;
            epoll_event cev{EPOLLIN, {.fd = c}};
            epoll_ctl(ep.get(), EPOLL_CTL_ADD, c, &cev);
          }
          continue;
        }
        for (;;) {
          const ssize_t r = recv(fd, buf, sizeof(buf), 0);
          if (r > 0) {
            // Small messages: the socket always has room for the echo.
            EXPECT_EQ(send(fd, buf, r, MSG_NOSIGNAL), r);
            continue;
          }
          if (r == 0) {
            epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
            close(fd);
            ++echoed;
          }
          break;
        }
      }
    }
  });
  std::vector<std::unique_ptr<GuestTcp>> conns;
  std::vector<std::vector<uint8_t>> messages;
  GuestTcp::Options o;
  o.window = 65535;
  for (int i = 0; i < kConnections; ++i) {
    conns.push_back(
        GuestTcp::Open(guest_.get(), Gateway(host.port()), static_cast<uint16_t>(20000 + i), o));
    messages.push_back(Pattern(100 + i, 1000 + i));
  }
  // Each sends its message and its FIN once established; done when its echo
  // and the host's FIN are in.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::vector<bool> queued(kConnections, false);
  int done = 0;
  while (done < kConnections && absl::Now() < deadline) {
    ASSERT_TRUE(guest_->Poll(absl::Milliseconds(5)).ok());
    done = 0;
    for (int i = 0; i < kConnections; ++i) {
      GuestTcp& c = *conns[i];
      ASSERT_FALSE(c.reset_received()) << "connection " << i << " reset";
      if (c.established() && !queued[i]) {
        c.Queue(messages[i]);
        c.QueueFin();
        queued[i] = true;
      }
      ASSERT_TRUE(c.Pump().ok());
      if (c.all_acked() && c.fin_received() && queued[i]) ++done;
    }
  }
  EXPECT_EQ(done, kConnections);
  for (int i = 0; i < kConnections; ++i) {
    EXPECT_EQ(conns[i]->TakeReceived(), messages[i]) << "connection " << i;
  }
  // The final ACKs of the hosts' FINs.
  for (auto& c : conns) ASSERT_TRUE(c->Pump().ok());
  absl::SleepFor(absl::Milliseconds(200));
  stop = true;
  server.join();
  EXPECT_EQ(echoed.load(), kConnections);
  Stop();
  EXPECT_EQ(Stats().established, static_cast<uint64_t>(kConnections));
  EXPECT_EQ(Stats().closed, static_cast<uint64_t>(kConnections));
}

TEST_F(TcpIntegrationTest, InboundForward) {
  net::TcpTranslatorOptions o;
  net::PortForward f;
  f.host_port = 0;  // A free port: listen_ports() tells which.
  f.guest_port = 8080;
  f.family = AF_INET;
  f.bind4 = V4("127.0.0.1");
  o.forwards.push_back(f);
  Start(o);
  ASSERT_EQ(Tcp()->listen_ports().size(), 1u);
  const uint16_t port = Tcp()->listen_ports()[0];

  const std::vector<uint8_t> request = Pattern(3000, 12);
  const std::vector<uint8_t> response = Pattern(2 << 20, 13);
  std::vector<uint8_t> got;
  Thread client([&] {
    UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    SetTimeouts(s.get(), 10);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    ASSERT_EQ(connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_TRUE(WriteAll(s.get(), request));
    got = ReadAll(s.get());
  });
  absl::StatusOr<std::unique_ptr<GuestTcp>> c =
      GuestTcp::Accept(guest_.get(), 8080, {}, absl::Seconds(10));
  ASSERT_TRUE(c.ok()) << c.status();
  // From the host's loopback, so from the gateway's address.
  EXPECT_EQ((*c)->remote().addr4.s_addr, V4("10.0.2.2").s_addr);
  EXPECT_TRUE((*c)->peer_options().has_window_scale);
  absl::StatusOr<std::vector<uint8_t>> req = (*c)->Read(request.size(), absl::Seconds(10));
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(*req, request);
  ASSERT_TRUE((*c)->Write(response, absl::Seconds(30)).ok());
  ASSERT_TRUE((*c)->Shutdown(absl::Seconds(10)).ok());
  client.join();
  EXPECT_EQ(Compare(got, response), "");
  ASSERT_TRUE((*c)->WaitFin(absl::Seconds(10)).ok());
  (*c)->Pump().IgnoreError();
  absl::SleepFor(absl::Milliseconds(100));
  Stop();
  EXPECT_EQ(Stats().accepted, 1u);
  EXPECT_EQ(Stats().closed, 1u);
}

TEST_F(TcpIntegrationTest, InboundRefusedByTheGuest) {
  net::TcpTranslatorOptions o;
  net::PortForward f;
  f.guest_port = 22;
  f.family = AF_INET;
  f.bind4 = V4("127.0.0.1");
  o.forwards.push_back(f);
  Start(o);
  const uint16_t port = Tcp()->listen_ports()[0];
  int err = 0;
  Thread client([&] {
    UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    SetTimeouts(s.get(), 10);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    ASSERT_EQ(connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    char c;
    if (recv(s.get(), &c, 1, 0) < 0) err = errno;
  });
  std::optional<Segment> syn;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!syn && absl::Now() < deadline) {
    ASSERT_TRUE(guest_->Poll(absl::Milliseconds(20)).ok());
    syn = guest_->TakeSyn(22);
  }
  ASSERT_TRUE(syn.has_value());
  ASSERT_TRUE(GuestTcp::Refuse(guest_.get(), *syn).ok());
  client.join();
  EXPECT_EQ(err, ECONNRESET);
  Stop();
  EXPECT_EQ(Stats().refused_by_guest, 1u);
}

// --- Segmentation offloads -------------------------------------------------

// A frontend asking for the defaults and `offloads` (of kOffloadFeatures:
// whichever the backend offers are negotiated, with their prerequisites).
// Without mergeable buffers, receive buffers a driver posts for TSO.
vu_frontend::FrontendOptions WithOffloads(uint64_t offloads, bool mergeable = true) {
  vu_frontend::FrontendOptions fo;
  fo.queue_size = 256;
  fo.features = vu_frontend::kDefaultFeatures | offloads;
  if (mergeable) {
    fo.rx_buffer_size = 4096;
  } else {
    fo.features &= ~vu_frontend::Bit(vu_frontend::kVirtioNetFMrgRxbuf);
    fo.rx_buffer_size = vu_frontend::kBigPacketBufferSize;
    fo.rx_buffers = 128;
  }
  return fo;
}

struct Transfer {
  std::vector<uint8_t> up;    // What the host received.
  std::vector<uint8_t> down;  // What the guest received.
  GuestTcp::Stats guest;
};

// `up` from the guest and `down` from the host over one connection at once
// (the guest at MTU 1500: MSS 1460, or 1440 over IPv6), each side closing
// after its data.
Transfer BothWays(ScriptedGuest* guest, HostListener& host, const Endpoint& to, uint16_t local_port,
                  const std::vector<uint8_t>& up, const std::vector<uint8_t>& down) {
  Transfer t;
  Thread host_side([&] {
    UniqueFd h = host.Accept();
    if (!h.valid()) return;
    Thread writer([&] {
      EXPECT_TRUE(WriteAll(h.get(), down));
      shutdown(h.get(), SHUT_WR);
    });
    t.up = ReadAll(h.get());
  });
  GuestTcp::Options o;
  o.mss = to.v6 ? 1440 : 1460;
  absl::StatusOr<std::unique_ptr<GuestTcp>> c = GuestTcp::Connect(guest, to, local_port, o);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return t;
  absl::Status s = (*c)->Write(up, absl::Seconds(60));
  EXPECT_TRUE(s.ok()) << s;
  s = (*c)->Shutdown(absl::Seconds(30));
  EXPECT_TRUE(s.ok()) << s;
  s = (*c)->WaitFin(absl::Seconds(60));
  EXPECT_TRUE(s.ok()) << s;
  host_side.join();
  t.down = (*c)->TakeReceived();
  t.guest = (*c)->stats();
  (*c)->Pump().IgnoreError();
  return t;
}

// A guest at MTU 1500 with every offload: 64 KiB segments both ways (TSO
// requests from it, TSO frames to it), over IPv4 and IPv6, every byte
// checked; the headers the backend wrote pass the driver's checks.
TEST_F(TcpIntegrationTest, OffloadsBothWaysAtMtu1500) {
  Start({}, WithOffloads(vu_frontend::kOffloadFeatures), 1500);
  ASSERT_TRUE(frontend_->has_feature(virtio::kVirtioNetFHostTso4));
  ASSERT_TRUE(frontend_->has_feature(virtio::kVirtioNetFGuestTso6));
  guest_->tso_segment = 65000;  // An IPv6 frame of it fits max_frame_size.
  const std::vector<uint8_t> up = Pattern(16 << 20, 21), down = Pattern(16 << 20, 22);
  HostListener host4;
  Transfer t = BothWays(guest_.get(), host4, Gateway(host4.port()), 40100, up, down);
  EXPECT_EQ(Compare(t.up, up), "");
  EXPECT_EQ(Compare(t.down, down), "");
  HostListener host6{HostListener::V6{}};
  if (host6.ok()) {
    t = BothWays(guest_.get(), host6, Endpoint::V6("fe80::1", host6.port()), 40101, up, down);
    EXPECT_EQ(Compare(t.up, up), "");
    EXPECT_EQ(Compare(t.down, down), "");
  }
  EXPECT_EQ(guest_->bad_headers(), 0u);
  EXPECT_EQ(guest_->bad_checksums(), 0u);
  EXPECT_GT(guest_->gso_sent(), 100u);
  EXPECT_GT(guest_->gso_received(), 100u);
  EXPECT_GT(guest_->largest_received(), 32768u);
  Stop();
  EXPECT_GT(backend_->dispatch_stats().gso_routed, 100u);
  EXPECT_EQ(backend_->dispatch_stats().offload_refused, 0u);
  EXPECT_GT(backend_->rx_stats().gso_frames, 100u);
  EXPECT_EQ(backend_->rx_stats().writer_bugs, 0u);
}

// A frontend (or guest) that takes any part of the offloads, or none, or
// big receive buffers instead of mergeable ones: everything still works,
// and the backend sends only what was negotiated (the scripted guest drops
// frames whose headers the features do not allow, and counts them).
TEST_F(TcpIntegrationTest, OffloadsTurnedOffInAnyPart) {
  using vu_frontend::Bit;
  const uint64_t csum = Bit(virtio::kVirtioNetFCsum) | Bit(virtio::kVirtioNetFGuestCsum);
  struct Case {
    const char* name;
    uint64_t offloads;
    bool mergeable = true;
  };
  const Case cases[] = {
      {"none", 0},
      {"checksums only", csum},
      {"CSUM only", Bit(virtio::kVirtioNetFCsum)},
      {"from the guest only", Bit(virtio::kVirtioNetFCsum) | Bit(virtio::kVirtioNetFHostTso4) |
                                  Bit(virtio::kVirtioNetFHostTso6) |
                                  Bit(virtio::kVirtioNetFHostEcn)},
      {"to the guest only", Bit(virtio::kVirtioNetFGuestCsum) | Bit(virtio::kVirtioNetFGuestTso4) |
                                Bit(virtio::kVirtioNetFGuestTso6)},
      {"TSO without the checksum features",
       Bit(virtio::kVirtioNetFHostTso4) | Bit(virtio::kVirtioNetFGuestTso4)},
      {"IPv6 only", csum | Bit(virtio::kVirtioNetFHostTso6) | Bit(virtio::kVirtioNetFGuestTso6)},
      {"all, big receive buffers", vu_frontend::kOffloadFeatures, false},
      // A driver must not take GUEST_TSO so (the frontend declines it).
      {"guest TSO, small buffers without mergeable", csum | Bit(virtio::kVirtioNetFGuestTso4),
       false},
  };
  uint16_t port = 40200;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    vu_frontend::FrontendOptions fo = WithOffloads(c.offloads, c.mergeable);
    if (std::string(c.name).find("small buffers") != std::string::npos) fo.rx_buffer_size = 2048;
    Start({}, fo, 1500);
    guest_->tso_segment = 65000;  // An IPv6 frame of it fits max_frame_size.
    const std::vector<uint8_t> up = Pattern(2 << 20, port), down = Pattern(2 << 20, port + 1);
    HostListener host;
    Transfer t = BothWays(guest_.get(), host, Gateway(host.port()), port++, up, down);
    EXPECT_EQ(Compare(t.up, up), "");
    EXPECT_EQ(Compare(t.down, down), "");
    EXPECT_EQ(guest_->bad_headers(), 0u);
    EXPECT_EQ(guest_->bad_checksums(), 0u);
    const bool guest_tso = frontend_->has_feature(virtio::kVirtioNetFGuestTso4) &&
                           frontend_->has_feature(virtio::kVirtioNetFGuestCsum);
    const bool host_tso = frontend_->has_feature(virtio::kVirtioNetFHostTso4);
    EXPECT_EQ(guest_->gso_received() > 0, guest_tso);
    EXPECT_EQ(guest_->gso_sent() > 0, host_tso);
    guest_.reset();
    frontend_.reset();
    Stop();
    EXPECT_EQ(backend_->dispatch_stats().offload_refused, 0u);
    EXPECT_EQ(backend_->rx_stats().gso_frames > 0, guest_tso);
    backend_.reset();
    unlink(path_.c_str());
  }
}

}  // namespace
}  // namespace vunet::tcp_testing
