// Fuzzes the whole frame path of the backend, composed by FramePath exactly
// as tools/vunet composes it: the Dispatcher (ARP, DHCP, NDP, DHCPv6) routing
// to ICMP echo, TCP and UDP, against real host sockets and the guest's
// receive queue (RxQueue over a ring in driver-laid-out memory).
//
// Hermetic: LLVMFuzzerInitialize moves the process into user and network
// namespaces of its own (loopback only, brought up), so connects and sends
// reach nothing but the harness's own peers; where the kernel allows no such
// namespaces it runs no input at all (saying so once). Every input starts
// from the same state: what an earlier one left in the peers' sockets is
// drained first.
// The peers: TCP listeners on 127.0.0.1:80 and [::1]:80 (the gateway's
// port 80), UDP sockets on port 53 (the DNS the guest is given, forwarded)
// and 7 (an echo); other ports are closed (RST, port unreachable).
//
// Input: one byte of set-up (bit 0 mergeable receive buffers, bit 1
// GUEST_CSUM, bit 2 the receive queue starts stopped, bits 3-4 the receive
// buffer size, bit 5 MTU 1500 rather than 65520, bit 6 a migration state
// to load first, bit 7 that state raw), then, with bit 6, a u16 length
// (little-endian) and that many bytes of state: the records of a stream
// (net/migrate/state_stream.h), which the harness seals with a header and
// an end record of the right count and checksum (so the fuzzer explores
// what the translators make of records, not CRC-32C), or with bit 7 the
// whole stream as given. FramePath::LoadState loads it, TCP connections
// restored in repair mode (the harness's namespace lets it set TCP_REPAIR
// itself, as the privileged helper would); then operations until the
// input ends, each one byte:
//   low 3 bits  what
//   0  a guest frame: u16 length (little-endian), the frame. Bit 3: make it
//      answer the latest TCP segment we sent the guest (its ports swapped,
//      its ack = that segment's end), so handshakes and transfers go on.
//      Bit 4: cut it into iovecs of (length % 61 + 1) bytes. Bit 5: its
//      virtio-net header says NEEDS_CSUM. Frames of one batch stay in place
//      until the batch ends, as guest memory does.
//   1  end of the transmit batch (OnBatchEnd)
//   2  the event loop: epoll events to the translators, peers served
//   3  the clock advances u16 milliseconds; flow timers expire
//   4  a host peer acts: u8 peer, u8 action (write, shut down, reset, close,
//      read all)
//   5  a host client: connect to the -t forward, or a datagram to the -u one
//   6  the guest takes what we wrote (each frame must parse) and reposts
//   7  the receive queue stops or restarts
// Checked: every frame committed to the receive queue (replies and data
// alike, through the RxQueue's observer) parses; the ring's used entries
// are well formed (GuestRxRing aborts otherwise); after the input, with
// everything shut down, no fd is left open.

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/iov.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "net/config/config.h"
#include "net/config/port_forward.h"
#include "net/flow/flow.h"
#include "net/forward/forward.h"
#include "net/gateway/from_config.h"
#include "net/migrate/repair_control.h"
#include "net/migrate/state_stream.h"
#include "net/packet/frame.h"
#include "net/translate/frame_path.h"
#include "net/translate/translator.h"
#include "vu/rx_queue.h"
#include "vu/testing/guest_rx.h"

namespace {

using namespace vunet;
using namespace vunet::net;

constexpr uint16_t kTcpPeerPort = 80;
constexpr uint16_t kDnsPort = 53;
constexpr uint16_t kEchoPort = 7;
constexpr uint16_t kTcpForwardPort = 8080;
constexpr uint16_t kUdpForwardPort = 5000;
constexpr uint32_t kRing = 128;
constexpr uint64_t kMemory = 16 << 20;
constexpr size_t kMaxPeers = 16;
constexpr size_t kMaxFrames = 512;  // Per input, so that an input ends.

int64_t g_now = 1'000'000'000;
bool g_stats = false;  // TRANSLATORS_FUZZ_STATS=1: each input's counters on stderr.
int64_t FakeClock() { return g_now; }

void Die(const char* what) {
  std::fprintf(stderr, "translators_fuzz: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

bool WriteFile(const char* path, const std::string& text) {
  UniqueFd fd(open(path, O_WRONLY | O_CLOEXEC));
  return fd.valid() &&
         write(fd.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size());
}

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

bool Parses(const iovec* iov, size_t n) {
  ParsedFrame p;
  return ParseFrame(absl::MakeConstSpan(iov, n), &p).ok();
}

// The latest TCP segment we sent the guest, for frames that answer it.
struct LastSegment {
  bool valid = false;
  uint16_t src_port = 0;  // Ours.
  uint16_t dst_port = 0;  // The guest's.
  uint32_t end = 0;       // seq + payload (+1 for SYN or FIN).
} g_last;

void Remember(absl::Span<const iovec> frame) {
  ParsedFrame p;
  if (!ParseFrame(frame, &p).ok() || p.l4 != L4Kind::kTcp) return;
  g_last.valid = true;
  g_last.src_port = p.src_port;
  g_last.dst_port = p.dst_port;
  g_last.end = p.tcp.seq + static_cast<uint32_t>(p.payload_len) +
               ((p.tcp.flags & (kTcpSyn | kTcpFin)) != 0 ? 1 : 0);
}

// Sees every frame the receive queue commits: it must parse where it
// stands, its bytes in guest memory.
class CheckingObserver : public vu::RxQueue::Observer {
 public:
  void OnFrameToGuest(absl::Span<const iovec> iov, size_t offset, size_t len) override {
    iovec view[64];
    size_t n = 0;
    Check(IovSlice(iov.data(), iov.size(), offset, len, view, &n, 64) == len);
    Check(Parses(view, n));
    Remember(absl::MakeConstSpan(view, n));
  }
  void OnBroken() override {}  // The harness's ring never breaks: a bug if it did.
};

// The event loop's epoll set: translators' tags carry their kind in the top
// byte, which the frame path routes.
class Loop : public SocketWatcher {
 public:
  Loop() : epoll_(epoll_create1(EPOLL_CLOEXEC)) { Check(epoll_.valid()); }

  absl::Status Watch(int fd, uint32_t events, uint64_t tag) override {
    return Ctl(EPOLL_CTL_ADD, fd, events, tag);
  }
  absl::Status Modify(int fd, uint32_t events, uint64_t tag) override {
    return Ctl(EPOLL_CTL_MOD, fd, events, tag);
  }
  void Unwatch(int fd) override { epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

  void Run(FramePath* path) {
    epoll_event ev[64];
    const int n = epoll_wait(epoll_.get(), ev, 64, 0);
    for (int i = 0; i < n; ++i) Check(path->OnSocketEvent(ev[i].data.u64, ev[i].events));
  }

 private:
  absl::Status Ctl(int op, int fd, uint32_t events, uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    if (epoll_ctl(epoll_.get(), op, fd, &ev) != 0) return absl::InternalError("epoll_ctl");
    return absl::OkStatus();
  }
  UniqueFd epoll_;
};

// The host's side, made once in the namespace.
struct Host {
  UniqueFd tcp4, tcp6;    // Listeners on port 80.
  UniqueFd dns4, dns6;    // UDP on port 53.
  UniqueFd echo4, echo6;  // UDP on port 7.
};
Host* g_host = nullptr;
bool g_no_namespaces = false;

UniqueFd Bound(int family, int type, uint16_t port) {
  UniqueFd fd(socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) Die("socket");
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage a{};
  socklen_t len;
  if (family == AF_INET) {
    auto* s = reinterpret_cast<sockaddr_in*>(&a);
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->sin_port = htons(port);
    len = sizeof(*s);
  } else {
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    auto* s = reinterpret_cast<sockaddr_in6*>(&a);
    s->sin6_family = AF_INET6;
    s->sin6_addr = in6addr_loopback;
    s->sin6_port = htons(port);
    len = sizeof(*s);
  }
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), len) != 0) Die("bind");
  if (type == SOCK_STREAM && listen(fd.get(), 64) != 0) Die("listen");
  return fd;
}

// Reads every datagram waiting on `fd`; answers each with its own bytes.
void Echo(int fd) {
  uint8_t buf[65536];
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage from{};
    socklen_t len = sizeof(from);
    const ssize_t n =
        recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) return;
    (void)sendto(fd, buf, static_cast<size_t>(n), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from),
                 len);
  }
}

// Everything one input uses; destroyed before the fd check.
struct World {
  static constexpr uint32_t kSizes[] = {1526, 2048, 4096, 65562};

  explicit World(uint8_t setup)
      : buffer_size(kSizes[(setup >> 3) & 3]),
        ring({.queue_size = kRing,
              .mergeable = (setup & 1) != 0,
              .guest_csum = (setup & 2) != 0,
              .memory = kMemory}) {
    guest.guest_mac = kDefaultGuestMac;
    SetFallback4(&guest);
    SetFallback6(&guest);
    guest.dns4 = {guest.gateway4};
    guest.dns6 = {guest.gateway6};
    guest.search_domains = {"example.org"};
    guest.mtu = (setup & 0x20) ? 1500 : kDefaultMtu;
    ring.rx().set_observer(&observer);
    ring.Post(kRing, buffer_size);
    if (setup & 4) ring.StopQueue();
    flows = FlowTable::Create({.capacity = 32, .seed = 1}).value();
    // DNS to the gateway reaches the loopback peers on port 53.
    config_internal::Resolver resolvers;
    in_addr lo4;
    lo4.s_addr = htonl(INADDR_LOOPBACK);
    resolvers.dns4 = {lo4};
    resolvers.dns6 = {in6addr_loopback};
    forward = std::make_unique<Forwarding>(RulesFromConfig(guest, resolvers), guest.guest_mac);

    FramePathOptions o;
    o.arp = ToArpConfig(guest);
    o.dhcp = ToDhcpConfig(guest);
    o.ndp = ToNdpConfig(guest);
    o.dhcpv6 = ToDhcpv6Config(guest);
    o.udp->forwards = ParsePortForwards("127.0.0.1/5000").value();
    o.udp->socket_buffer = 1 << 20;
    o.tcp->forwards = ParsePortForwards("127.0.0.1/8080:80").value();
    o.tcp->max_pending = 64;
    o.icmp->max_sockets = 4;
    path = FramePath::Create({.flows = flows.get(),
                              .rx = &ring.rx(),
                              .watcher = &loop,
                              .forward = forward.get(),
                              .guest = &guest,
                              .clock = FakeClock},
                             o)
               .value();
    // The guest may leave checksums partial (NEEDS_CSUM frames).
    vu::NetConfig net = ring.config();
    net.csum = true;
    path->SetNetConfig(net);
  }
  ~World() {
    if (g_stats) {
      for (const std::string& line : path->StatsLines()) std::fprintf(stderr, "%s\n", line.c_str());
    }
    path.reset();
    flows.reset();
  }

  // The end of a loop iteration: what was written is published, and writers
  // told to wait for that write again.
  void Flush() {
    if (ring.rx().Flush()) {
      path->OnRxAvailable();
      ring.rx().Flush();
    }
  }

  void Pump() {
    loop.Run(path.get());
    path->OnRxAvailable();
    Flush();
  }

  void Expire() {
    flows->Expire(g_now, [&](FlowId id) { path->OnTimer(id, g_now); });
    Flush();
  }

  // The guest takes what was published and posts its buffers again.
  void Consume() {
    ring.Take();
    ring.Post(kRing, buffer_size);
  }

  void Toggle() {
    if (ring.queue_running()) {
      ring.StopQueue();
    } else {
      ring.StartQueue();
      path->OnRxStart();  // As the backend does when the queue starts.
      Pump();
    }
  }

  const uint32_t buffer_size;
  GuestConfig guest;
  CheckingObserver observer;
  Loop loop;
  vu::testing::GuestRxRing ring;
  std::unique_ptr<FlowTable> flows;
  std::unique_ptr<Forwarding> forward;
  std::unique_ptr<FramePath> path;
};

// Host connections: accepted from the listeners, or ours to the forwards.
struct Peers {
  std::vector<UniqueFd> tcp;
  UniqueFd udp_client;

  void Accept() {
    for (int listener : {g_host->tcp4.get(), g_host->tcp6.get()}) {
      while (tcp.size() < kMaxPeers) {
        const int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        tcp.emplace_back(fd);
      }
    }
  }

  void Act(uint8_t which, uint8_t action) {
    if (tcp.empty()) return;
    UniqueFd& p = tcp[which % tcp.size()];
    if (!p.valid()) return;
    static uint8_t data[65536];
    switch (action % 6) {
      case 0:
      case 1: {
        const size_t n = (action % 2 == 0 ? 100 : 60000) + which;
        for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(i * 7 + which);
        (void)send(p.get(), data, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        break;
      }
      case 2:
        shutdown(p.get(), SHUT_WR);
        break;
      case 3: {
        const linger l = {1, 0};
        setsockopt(p.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        p.reset();
        break;
      }
      case 4:
        p.reset();
        break;
      case 5:
        while (recv(p.get(), data, sizeof(data), MSG_DONTWAIT) > 0) {
        }
        break;
    }
  }

  void Client(uint8_t what) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (what % 2 == 0) {
      if (tcp.size() >= kMaxPeers) return;
      UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      a.sin_port = htons(kTcpForwardPort);
      (void)connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
      tcp.push_back(std::move(fd));
    } else {
      if (!udp_client.valid())
        udp_client.reset(socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      a.sin_port = htons(kUdpForwardPort);
      uint8_t payload[1500] = {};
      (void)sendto(udp_client.get(), payload, (what * 13u) % sizeof(payload), MSG_DONTWAIT,
                   reinterpret_cast<sockaddr*>(&a), sizeof(a));
    }
  }

  void Serve() {
    Accept();
    Echo(g_host->dns4.get());
    Echo(g_host->dns6.get());
    Echo(g_host->echo4.get());
    Echo(g_host->echo6.get());
  }
};

// Leaves the host's sockets as an input found them: connections nobody
// accepted closed, datagrams nobody read discarded.
void DrainPeers() {
  for (int listener : {g_host->tcp4.get(), g_host->tcp6.get()}) {
    for (;;) {
      const int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) break;
      close(fd);
    }
  }
  uint8_t buf[2048];
  for (int fd :
       {g_host->dns4.get(), g_host->dns6.get(), g_host->echo4.get(), g_host->echo6.get()}) {
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC) >= 0) {
    }
  }
}

// Answering the latest segment: its ports swapped, the ack its end.
void Answer(std::vector<uint8_t>* frame) {
  if (!g_last.valid) return;
  const iovec iov = {frame->data(), frame->size()};
  ParsedFrame p;
  if (!ParseFrame(absl::MakeConstSpan(&iov, 1), &p).ok() || p.l4 != L4Kind::kTcp) return;
  uint8_t* tcp = frame->data() + p.l4_offset;
  const uint16_t sport = htons(g_last.dst_port), dport = htons(g_last.src_port);
  const uint32_t ack = htonl(g_last.end);
  std::memcpy(tcp, &sport, 2);
  std::memcpy(tcp + 2, &dport, 2);
  std::memcpy(tcp + 8, &ack, 4);
}

// Sets TCP_REPAIR itself: the harness owns its network namespace.
class DirectRepair : public RepairControl {
 public:
  bool available() const override { return true; }
  absl::Status SetRepair(absl::Span<const int> fds, RepairMode mode) override {
    for (const int fd : fds) {
      const int v = static_cast<int>(mode);
      if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &v, sizeof(v)) != 0) {
        return absl::InternalError("TCP_REPAIR");
      }
    }
    return absl::OkStatus();
  }
};

// The records in `body` as a whole stream: the header before them, an end
// record after them that counts the records the framing walks and sums
// everything.
std::string Seal(absl::Span<const uint8_t> body) {
  StateWriter w;
  std::string stream = w.Finish();
  stream.resize(kStateHeaderLen);
  stream.append(reinterpret_cast<const char*>(body.data()), body.size());
  uint32_t count = 0;
  for (size_t pos = 0; pos + kRecordHeaderLen <= body.size();) {
    const uint32_t len = body[pos + 4] | body[pos + 5] << 8 | body[pos + 6] << 16 |
                         static_cast<uint32_t>(body[pos + 7]) << 24;
    if (len > body.size() - pos - kRecordHeaderLen) break;
    pos += kRecordHeaderLen + len;
    ++count;
  }
  const uint32_t crc = Crc32c({reinterpret_cast<const uint8_t*>(stream.data()), stream.size()});
  // The end record: type 0xffff, flags 0, length 8, the count, the sum.
  for (const uint32_t v : {uint32_t{0xffff}, uint32_t{8}, count, crc}) {
    for (int b = 0; b < 4; ++b) stream.push_back(static_cast<char>(v >> (8 * b)));
  }
  return stream;
}

size_t OpenFds() {
  size_t n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return 0;
  while (const dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n - 1;  // The directory's own.
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Our own namespaces, or nothing: the translators connect to whatever the
  // input names. The uid and gid map to ours, so files libFuzzer writes
  // (corpus, crashes) are ours.
  const uid_t uid = geteuid();
  const gid_t gid = getegid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0) {
    std::fprintf(stderr,
                 "translators_fuzz: no user and network namespaces here (unshare: %s): no input "
                 "is run\n",
                 std::strerror(errno));
    g_no_namespaces = true;
    return 0;
  }
  if (!WriteFile("/proc/self/setgroups", "deny") ||
      !WriteFile("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1") ||
      !WriteFile("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1")) {
    Die("uid_map");
  }
  UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  if (ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) Die("SIOCGIFFLAGS lo");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) Die("bringing lo up");
  // Ping sockets for every group, in this namespace only (best effort).
  (void)WriteFile("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
  g_stats = std::getenv("TRANSLATORS_FUZZ_STATS") != nullptr;
  if (!g_stats) log::SetLevel(log::Level::kError);
  g_host = new Host;
  g_host->tcp4 = Bound(AF_INET, SOCK_STREAM, kTcpPeerPort);
  g_host->tcp6 = Bound(AF_INET6, SOCK_STREAM, kTcpPeerPort);
  g_host->dns4 = Bound(AF_INET, SOCK_DGRAM, kDnsPort);
  g_host->dns6 = Bound(AF_INET6, SOCK_DGRAM, kDnsPort);
  g_host->echo4 = Bound(AF_INET, SOCK_DGRAM, kEchoPort);
  g_host->echo6 = Bound(AF_INET6, SOCK_DGRAM, kEchoPort);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || g_no_namespaces) return 0;
  DrainPeers();
  const size_t fds_before = OpenFds();
  g_now = 1'000'000'000;
  g_last = {};
  {
    World world(data[0]);
    Peers peers;
    std::vector<std::vector<uint8_t>> batch;  // Frames in place until the batch ends.
    std::vector<std::vector<iovec>> batch_iov;
    size_t frames = 0;
    auto end_batch = [&] {
      world.path->sink()->OnBatchEnd();
      world.Flush();
      batch.clear();
      batch_iov.clear();
    };
    size_t pos = 1;
    if ((data[0] & 0x40) && size - pos >= 2) {
      size_t len = data[pos] | size_t{data[pos + 1]} << 8;
      pos += 2;
      len = std::min(len, size - pos);
      const absl::Span<const uint8_t> state(data + pos, len);
      pos += len;
      const std::string sealed = (data[0] & 0x80) ? std::string() : Seal(state);
      DirectRepair repair;
      const absl::Status loaded = world.path->LoadState(
          (data[0] & 0x80)
              ? state
              : absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(sealed.data()), sealed.size()),
          &repair);
      if (g_stats) std::fprintf(stderr, "state: %s\n", loaded.ToString().c_str());
    }
    while (pos < size) {
      const uint8_t op = data[pos++];
      switch (op & 7) {
        case 0: {
          if (size - pos < 2) {
            pos = size;
            break;
          }
          size_t len = data[pos] | size_t{data[pos + 1]} << 8;
          pos += 2;
          if (len > size - pos) len = size - pos;
          if (++frames > kMaxFrames) {
            pos = size;
            break;
          }
          batch.emplace_back(data + pos, data + pos + len);
          pos += len;
          std::vector<uint8_t>& f = batch.back();
          if (op & 8) Answer(&f);
          std::vector<iovec> iov;
          const size_t piece = (op & 0x10) ? len % 61 + 1 : f.size();
          for (size_t at = 0; at < f.size(); at += piece) {
            iov.push_back({f.data() + at, std::min(piece, f.size() - at)});
          }
          batch_iov.push_back(std::move(iov));
          vu::VirtioNetHdr hdr;
          if (op & 0x20) hdr.flags = vu::kVirtioNetHdrFNeedsCsum;
          world.path->sink()->OnFrame(hdr, batch_iov.back());
          break;
        }
        case 1:
          end_batch();
          break;
        case 2:
          peers.Serve();
          world.Pump();
          break;
        case 3:
          if (size - pos < 2) {
            pos = size;
            break;
          }
          g_now += int64_t{data[pos] | data[pos + 1] << 8} * 1'000'000;
          pos += 2;
          world.Expire();
          break;
        case 4:
          if (size - pos < 2) {
            pos = size;
            break;
          }
          peers.Accept();
          peers.Act(data[pos], data[pos + 1]);
          pos += 2;
          break;
        case 5:
          peers.Client(op >> 3);
          break;
        case 6:
          world.Consume();
          world.Pump();
          break;
        case 7:
          world.Toggle();
          break;
      }
    }
    if (!batch.empty()) end_batch();
  }
  // Every socket, epoll set and memfd of the input is closed again.
  Check(OpenFds() == fds_before);
  return 0;
}
