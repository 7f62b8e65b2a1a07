// Datagram rates through the UDP translator, against the host's loopback in
// the same run: the backend in-process on its own thread, //tools/vu_frontend
// playing the guest on the main thread, and a host socket served by a third.
//
//   bazel run -c opt //tests/udp:udp_rate -- --seconds=2 --sizes=64,1400
//
// For each payload size:
//   loopback     a sender thread (sendmmsg, 64 at a time) to a receiver
//                thread (recvmmsg), host sockets only: the baseline;
//   guest->host  the frontend sends as fast as its transmit ring allows to a
//                host socket on 127.0.0.1 (through the gateway address); the
//                rate is what the host socket received;
//   host->guest  a host sender thread sends as fast as it can to the flow's
//                socket; the rate is what the frontend received.
// Losses are reported where they happen, each as counted there: "socket" is
// what the receiving socket's kernel dropped for a full buffer (SO_MEMINFO's
// drop count of the host receiver, or /proc/net/udp's of vunet's flow
// socket), "vunet" what vunet counted itself (its send socket's buffer full,
// frames malformed, no flow room, too big, refused...), and "unaccounted"
// what was sent but neither received nor counted anywhere: a loss inside
// vunet nobody saw, which must be 0. These machines are shared and small;
// compare the ratios, not the absolute figures.

#include <arpa/inet.h>
#include <linux/sock_diag.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "net/config/config.h"
#include "net/forward/forward.h"
#include "net/packet/frame.h"
#include "net/udp/udp.h"
#include "tools/vu_frontend/frontend.h"
#include "tools/vunet/backend.h"

ABSL_FLAG(double, seconds, 2.0, "seconds per measurement");
ABSL_FLAG(std::string, sizes, "64,1400", "UDP payload sizes, comma-separated");
ABSL_FLAG(uint32_t, queue_size, 256, "ring entries of the frontend's queues");

namespace vunet {
namespace {

constexpr net::MacAddr kGuestMac = {{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
constexpr net::MacAddr kGatewayMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};
constexpr int kBatch = 64;

in_addr Ip4(const char* s) {
  in_addr a{};
  inet_pton(AF_INET, s, &a);
  return a;
}

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return a;
}

UniqueFd BoundSocket(uint16_t* port) {
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  const int big = 4 << 20;
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
  sockaddr_in a = Loopback(0);
  socklen_t len = sizeof(a);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), len) != 0 ||
      getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("bind");
    std::exit(1);
  }
  *port = ntohs(a.sin_port);
  return fd;
}

// Receives until `stop`, counting datagrams.
void ReceiveLoop(int fd, size_t size, const std::atomic<bool>* stop, uint64_t* count) {
  std::vector<uint8_t> buf(size_t{kBatch} * (size + 1));
  iovec iov[kBatch];
  mmsghdr msgs[kBatch];
  uint64_t n = 0;
  while (!stop->load(std::memory_order_relaxed)) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20) != 1) continue;
    for (int i = 0; i < kBatch; ++i) {
      iov[i] = {buf.data() + size_t(i) * (size + 1), size + 1};
      msgs[i] = {};
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    const int r = recvmmsg(fd, msgs, kBatch, MSG_DONTWAIT, nullptr);
    if (r > 0) n += static_cast<uint64_t>(r);
  }
  // What arrived before the stop and is still queued counts as received.
  for (;;) {
    for (int i = 0; i < kBatch; ++i) {
      msgs[i] = {};
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    const int r = recvmmsg(fd, msgs, kBatch, MSG_DONTWAIT, nullptr);
    if (r <= 0) break;
    n += static_cast<uint64_t>(r);
  }
  *count = n;
}

// Sends to `to` until `stop`, counting what the kernel took.
void SendLoop(int fd, const sockaddr_in& to, size_t size, const std::atomic<bool>* stop,
              uint64_t* count) {
  std::vector<uint8_t> payload(size, 0x5a);
  iovec iov = {payload.data(), size};
  mmsghdr msgs[kBatch];
  for (int i = 0; i < kBatch; ++i) {
    msgs[i] = {};
    msgs[i].msg_hdr.msg_name = const_cast<sockaddr_in*>(&to);
    msgs[i].msg_hdr.msg_namelen = sizeof(to);
    msgs[i].msg_hdr.msg_iov = &iov;
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  uint64_t n = 0;
  while (!stop->load(std::memory_order_relaxed)) {
    const int r = sendmmsg(fd, msgs, kBatch, 0);
    if (r > 0) n += static_cast<uint64_t>(r);
  }
  *count = n;
}

// Datagrams the kernel dropped at socket `fd` (a full receive buffer).
uint64_t SocketDrops(int fd) {
  uint32_t info[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof(info);
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, info, &len) != 0) return 0;
  return info[SK_MEMINFO_DROPS];
}

// The same for the IPv4 UDP socket bound to local `port` (someone else's):
// the last column of /proc/net/udp.
uint64_t ProcUdpDrops(uint16_t port) {
  std::ifstream in("/proc/net/udp");
  std::string line;
  std::getline(in, line);  // The header.
  char want[8];
  std::snprintf(want, sizeof(want), ":%04X", port);
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 13 || f[1].size() < 5 || f[1].substr(f[1].size() - 5) != want) continue;
    uint64_t drops = 0;
    (void)absl::SimpleAtoi(f.back(), &drops);
    return drops;
  }
  return 0;
}

struct Result {
  double rate = 0;  // Datagrams per second received.
  uint64_t sent = 0;
  uint64_t received = 0;
  uint64_t socket_dropped = 0;  // Counted by the receiving socket's kernel.
  uint64_t vunet_dropped = 0;   // Counted by vunet.
  double per_wakeup = 0;        // Host to guest: datagrams per socket wake-up.
};

Result Loopback(size_t size, absl::Duration duration) {
  uint16_t port;
  UniqueFd rx = BoundSocket(&port);
  uint16_t unused;
  UniqueFd tx = BoundSocket(&unused);
  std::atomic<bool> stop_rx{false}, stop_tx{false};
  Result r;
  std::thread receiver(ReceiveLoop, rx.get(), size, &stop_rx, &r.received);
  std::thread sender(SendLoop, tx.get(), Loopback(port), size, &stop_tx, &r.sent);
  absl::SleepFor(duration);
  stop_tx = true;
  sender.join();
  absl::SleepFor(absl::Milliseconds(100));
  stop_rx = true;
  receiver.join();
  r.socket_dropped = SocketDrops(rx.get());
  r.rate = static_cast<double>(r.received) / absl::ToDoubleSeconds(duration);
  return r;
}

// A backend on its own thread and a frontend connected to it.
class Setup {
 public:
  Setup() {
    char dir[] = "/tmp/vunet_udp_rate.XXXXXX";
    if (mkdtemp(dir) == nullptr) std::exit(1);
    dir_ = dir;
    path_ = dir_ + "/vunet.sock";
    guest_.guest_mac = kGuestMac;
    guest_.gateway_mac = kGatewayMac;
    guest_.addr4 = Ip4("10.0.2.15");
    guest_.gateway4 = Ip4("10.0.2.2");
    tools::BackendOptions o;
    o.socket_path = path_;
    // The UDP translator alone on the frame path (and ARP).
    o.path.arp = {.gateway_mac = kGatewayMac, .guest_addr = guest_.addr4};
    o.path.tcp.reset();
    o.path.icmp.reset();
    o.send_ra = false;
    o.guest = guest_;
    o.forward = net::RulesFromConfig(guest_, {});
    absl::StatusOr<std::unique_ptr<tools::Backend>> b = tools::Backend::Create(o);
    if (!b.ok()) {
      std::fprintf(stderr, "backend: %s\n", b.status().ToString().c_str());
      std::exit(1);
    }
    backend_ = std::move(*b);
    thread_ = std::thread([this] { (void)backend_->Run(); });
    vu_frontend::FrontendOptions fo;
    fo.queue_size = absl::GetFlag(FLAGS_queue_size);
    absl::StatusOr<std::unique_ptr<vu_frontend::Frontend>> f = vu_frontend::Frontend::Create(fo);
    if (!f.ok() || !(*f)->Connect(path_, absl::Seconds(5)).ok() || !(*f)->Negotiate().ok()) {
      std::fprintf(stderr, "frontend failed\n");
      std::exit(1);
    }
    frontend_ = std::move(*f);
  }
  ~Setup() {
    frontend_.reset();
    Stop();
    backend_.reset();
    rmdir(dir_.c_str());
  }
  void Stop() {
    backend_->Stop();
    if (thread_.joinable()) thread_.join();
  }
  const net::UdpTranslator& udp() const { return *backend_->path()->udp(); }
  // Guest frames vunet counted as dropped on their way to host sockets.
  uint64_t GuestFramesDropped() const {
    const net::UdpTranslator::Stats& u = udp().stats();
    return u.tx_buffer_full + u.tx_errors + u.table_full + u.bad_destination + u.malformed +
           u.socket_errors + backend_->dispatch_stats().malformed +
           backend_->dispatch_stats().udp_dropped + backend_->dispatch_stats().other_dropped;
  }

  std::vector<uint8_t> Frame(uint16_t dport, size_t size) const {
    net::FrameSpec s;
    s.src_mac = kGuestMac;
    s.dst_mac = kGatewayMac;
    s.src4 = guest_.addr4;
    s.dst4 = guest_.gateway4;
    s.src_port = 40000;
    s.dst_port = dport;
    const size_t h = net::FrameHeadersLen(s);
    std::vector<uint8_t> f(h + size, 0xa5);
    (void)net::BuildFrame(s, absl::MakeSpan(f), size);
    return f;
  }

  vu_frontend::Frontend* frontend() { return frontend_.get(); }

 private:
  std::string dir_;
  std::string path_;
  net::GuestConfig guest_;
  std::unique_ptr<tools::Backend> backend_;
  std::thread thread_;
  std::unique_ptr<vu_frontend::Frontend> frontend_;
};

Result GuestToHost(size_t size, absl::Duration duration) {
  Setup setup;
  uint16_t port;
  UniqueFd rx = BoundSocket(&port);
  std::atomic<bool> stop{false};
  Result r;
  std::thread receiver(ReceiveLoop, rx.get(), size, &stop, &r.received);
  const std::vector<uint8_t> frame = setup.Frame(port, size);
  std::vector<absl::Span<const uint8_t>> batch(kBatch, absl::MakeConstSpan(frame));
  vu_frontend::Frontend* f = setup.frontend();
  const absl::Time end = absl::Now() + duration;
  while (absl::Now() < end) {
    absl::StatusOr<size_t> sent = f->SendFrames(batch);
    if (!sent.ok()) break;
    r.sent += *sent;
    if (*sent < batch.size()) (void)f->WaitTx(absl::Milliseconds(1));
  }
  absl::SleepFor(absl::Milliseconds(200));
  stop = true;
  receiver.join();
  setup.Stop();
  r.socket_dropped = SocketDrops(rx.get());
  r.vunet_dropped = setup.GuestFramesDropped();
  r.rate = static_cast<double>(r.received) / absl::ToDoubleSeconds(duration);
  return r;
}

Result HostToGuest(size_t size, absl::Duration duration) {
  Setup setup;
  uint16_t port;
  UniqueFd host = BoundSocket(&port);
  vu_frontend::Frontend* f = setup.frontend();
  // One datagram from the guest makes the flow; its socket is the target.
  const std::vector<uint8_t> frame = setup.Frame(port, 1);
  const absl::Span<const uint8_t> one[] = {frame};
  (void)f->SendFrames(one);
  sockaddr_in from{};
  socklen_t len = sizeof(from);
  uint8_t byte;
  pollfd p{host.get(), POLLIN, 0};
  if (poll(&p, 1, 5000) != 1 ||
      recvfrom(host.get(), &byte, 1, 0, reinterpret_cast<sockaddr*>(&from), &len) != 1) {
    std::fprintf(stderr, "no priming datagram\n");
    std::exit(1);
  }
  std::atomic<bool> stop{false};
  Result r;
  std::thread sender(SendLoop, host.get(), from, size, &stop, &r.sent);
  const absl::Time start = absl::Now();
  const absl::Time end = start + duration;
  while (absl::Now() < end) {
    absl::StatusOr<size_t> got =
        f->ReceiveFrames(1024, absl::Milliseconds(10), [](const vu_frontend::ReceivedFrame&) {});
    if (!got.ok()) break;
    r.received += *got;
  }
  stop = true;
  sender.join();
  // What was queued when the sender stopped still counts as sent, not lost.
  for (;;) {
    absl::StatusOr<size_t> got =
        f->ReceiveFrames(1024, absl::Milliseconds(100), [](const vu_frontend::ReceivedFrame&) {});
    if (!got.ok() || *got == 0) break;
    r.received += *got;
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  r.socket_dropped = ProcUdpDrops(ntohs(from.sin_port));  // vunet's flow socket.
  setup.Stop();
  r.vunet_dropped = setup.udp().rx_stats().too_big + setup.udp().rx_stats().refused +
                    setup.udp().rx_stats().mismatches;
  const net::UdpVuReceiver::Stats& rx = setup.udp().rx_stats();
  r.per_wakeup = rx.wakeups > 0 ? static_cast<double>(rx.frames) / rx.wakeups : 0;
  r.rate = static_cast<double>(r.received) / seconds;
  return r;
}

// Sent but neither received nor counted as dropped anywhere.
uint64_t Unaccounted(const Result& r) {
  const uint64_t counted = r.received + r.socket_dropped + r.vunet_dropped;
  return r.sent > counted ? r.sent - counted : 0;
}

void Print(const char* what, size_t size, const Result& r, double baseline) {
  std::printf(
      "%5zu B  %-12s %12.0f /s  %6.2fx  sent %10llu  received %10llu  lost: socket %llu, vunet "
      "%llu, unaccounted %llu\n",
      size, what, r.rate, baseline > 0 ? r.rate / baseline : 0.0,
      static_cast<unsigned long long>(r.sent), static_cast<unsigned long long>(r.received),
      static_cast<unsigned long long>(r.socket_dropped),
      static_cast<unsigned long long>(r.vunet_dropped),
      static_cast<unsigned long long>(Unaccounted(r)));
  if (r.per_wakeup > 0) std::printf("         (%.1f datagrams per socket wake-up)\n", r.per_wakeup);
}

int Main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  log::SetLevel(log::Level::kWarning);
  const absl::Duration duration = absl::Seconds(absl::GetFlag(FLAGS_seconds));
  std::printf("payload  path         datagrams/s  vs loopback\n");
  bool failed = false;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_sizes), ',')) {
    size_t size;
    if (!absl::SimpleAtoi(s, &size) || size > net::kUdpMaxPayload4) {
      std::fprintf(stderr, "bad size %s\n", std::string(s).c_str());
      return 1;
    }
    const Result base = Loopback(size, duration);
    const Result up = GuestToHost(size, duration);
    const Result down = HostToGuest(size, duration);
    Print("loopback", size, base, base.rate);
    Print("guest->host", size, up, base.rate);
    Print("host->guest", size, down, base.rate);
    if (Unaccounted(up) > 0 || Unaccounted(down) > 0) {
      std::printf("FAIL: datagrams lost inside vunet without a count\n");
      failed = true;
    }
  }
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace vunet

int main(int argc, char** argv) { return vunet::Main(argc, argv); }
