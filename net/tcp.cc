#include "net/tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "base/log.h"

namespace vunet::net {
namespace {

// The most iovec entries one sendmsg takes (UIO_MAXIOV).
constexpr size_t kMaxSendIov = 1024;
constexpr size_t kScratchSize = 65536;
constexpr int kAcceptBatch = 64;
// Our SYN and SYN-ACK options: MSS (4 bytes), NOP and window scale (4).
constexpr size_t kSynOptionsLen = 8;
// Events of a connection's socket. Edge-triggered: data peeked stays in the
// socket until the guest acknowledges it, so level-triggered EPOLLIN would
// fire for it again and again; new data, new send space and the peer's
// shutdown each wake us once, and every other reason to look again (the
// guest's ACKs, receive buffers, timers) comes from our side.
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

bool SeqLt(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }
bool SeqGt(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) > 0; }
uint32_t SeqMin(uint32_t a, uint32_t b) { return SeqLt(a, b) ? a : b; }
uint32_t SeqMax(uint32_t a, uint32_t b) { return SeqGt(a, b) ? a : b; }

uint8_t Byte0(const in_addr& a) { return reinterpret_cast<const uint8_t*>(&a.s_addr)[0]; }

// Appends the entries covering [offset, offset + len) of `in` to out[0..max).
// Returns the entries written; *covered gets the bytes they hold.
size_t SubIov(absl::Span<const iovec> in, size_t offset, size_t len, iovec* out, size_t max,
              size_t* covered) {
  size_t n = 0;
  *covered = 0;
  for (const iovec& v : in) {
    if (*covered == len || n == max) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const size_t take = std::min(v.iov_len - offset, len - *covered);
    out[n++] = {static_cast<uint8_t*>(v.iov_base) + offset, take};
    *covered += take;
    offset = 0;
  }
  return n;
}

void SetInt(int fd, int level, int name, int value) {
  (void)setsockopt(fd, level, name, &value, sizeof(value));
}

// Closes with a reset rather than a FIN.
void SetLingerZero(int fd) {
  const linger l = {1, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

// The segment size we send the guest: its MSS option (RFC 879's default
// without one), within what our MTU carries; at least 64 bytes, so that a
// guest cannot make us cut data into crumbs.
uint16_t SegmentSize(bool v4, const TcpOptions& options, uint32_t mtu) {
  const uint32_t ours = mtu > (v4 ? 40u : 60u) ? mtu - (v4 ? 40u : 60u) : 1u;
  uint32_t mss = options.has_mss ? options.mss : (v4 ? 536u : 1220u);
  mss = std::max<uint32_t>(mss, 64);
  return static_cast<uint16_t>(std::clamp<uint32_t>(std::min(mss, ours), 1, 65535));
}

uint16_t OurMss(bool v4, uint32_t mtu) {
  const uint32_t overhead = v4 ? 40 : 60;
  return static_cast<uint16_t>(std::clamp<uint32_t>(mtu > overhead ? mtu - overhead : 1, 1, 65535));
}

// Where a guest's SYN goes on the host; false for destinations we do not
// connect to.
bool HostDestination(const ParsedFrame& p, const GuestConfig& g, sockaddr_storage* to,
                     socklen_t* len) {
  *to = {};
  if (p.dst_port == 0) return false;
  if (p.l3 == L3Kind::kIpv4) {
    if (g.ipv6_only) return false;
    sockaddr_in* sin = reinterpret_cast<sockaddr_in*>(to);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(p.dst_port);
    *len = sizeof(*sin);
    const in_addr& d = p.ip.dst4;
    if (g.gateway4.s_addr != 0 && d.s_addr == g.gateway4.s_addr) {
      sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      return true;
    }
    if (d.s_addr == 0 || Byte0(d) == 127 || Byte0(d) >= 224) return false;
    sin->sin_addr = d;
    return true;
  }
  if (g.ipv4_only) return false;
  sockaddr_in6* sin6 = reinterpret_cast<sockaddr_in6*>(to);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(p.dst_port);
  *len = sizeof(*sin6);
  const in6_addr& d = p.ip.dst6;
  if ((!IN6_IS_ADDR_UNSPECIFIED(&g.gateway6) && !IN6_IS_ADDR_LINKLOCAL(&g.gateway6) &&
       IN6_ARE_ADDR_EQUAL(&d, &g.gateway6)) ||
      (!IN6_IS_ADDR_UNSPECIFIED(&g.our_link_local6) &&
       IN6_ARE_ADDR_EQUAL(&d, &g.our_link_local6))) {
    sin6->sin6_addr = in6addr_loopback;
    return true;
  }
  if (IN6_IS_ADDR_UNSPECIFIED(&d) || IN6_IS_ADDR_LOOPBACK(&d) || IN6_IS_ADDR_MULTICAST(&d) ||
      IN6_IS_ADDR_LINKLOCAL(&d) || IN6_IS_ADDR_V4MAPPED(&d)) {
    return false;
  }
  sin6->sin6_addr = d;
  return true;
}

// The address inbound connections from the host itself appear to come from.
in6_addr GatewaySource6(const GuestConfig& g) {
  if (!IN6_IS_ADDR_UNSPECIFIED(&g.gateway6) && !IN6_IS_ADDR_LINKLOCAL(&g.gateway6)) {
    return g.gateway6;
  }
  return g.our_link_local6;
}

// Splits a socket address into an address (v4-mapped IPv6 unmapped) and a
// port. False for other families.
bool SplitAddress(const sockaddr_storage& ss, bool* v4, in_addr* a4, in6_addr* a6, uint16_t* port) {
  if (ss.ss_family == AF_INET) {
    const sockaddr_in* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    *v4 = true;
    *a4 = sin->sin_addr;
    *port = ntohs(sin->sin_port);
    return true;
  }
  if (ss.ss_family == AF_INET6) {
    const sockaddr_in6* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    *port = ntohs(sin6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      *v4 = true;
      std::memcpy(&a4->s_addr, &sin6->sin6_addr.s6_addr[12], 4);
    } else {
      *v4 = false;
      *a6 = sin6->sin6_addr;
    }
    return true;
  }
  return false;
}

// The window below which we watch the socket for send space to open.
uint32_t LowWindow(uint32_t sndbuf) { return std::min<uint32_t>(sndbuf / 4, 256 * 1024); }

}  // namespace

// A connection's state, in its flow's data slot.
struct TcpTranslator::Conn {
  enum class State : uint8_t {
    kConnecting,  // The guest's SYN taken; connect() in progress.
    kSynAckSent,  // connect() succeeded; our SYN-ACK awaits the guest's ACK.
    kSynSent,     // Inbound: our SYN awaits the guest's SYN-ACK.
    kEstablished,
  };

  UniqueFd fd;
  State state = State::kConnecting;
  bool watched = false;
  bool guest_fin = false;   // The guest's FIN taken: the socket is shut for writing.
  bool host_rdhup = false;  // The host peer shut down its side (EPOLLRDHUP).
  bool host_eof = false;    // ... and every byte before that was sent to the guest.
  bool fin_sent = false;    // Our FIN (at snd_nxt) went to the guest.
  bool fin_acked = false;
  bool in_pending = false;
  bool in_rx_wait = false;
  bool ack_due = false;    // An ACK is owed to the guest at the batch's end.
  bool tx_due = false;     // Host data may go to the guest at the batch's end.
  bool wnd_watch = false;  // We advertised a low window: watching it open.
  uint8_t guest_ws = 0;    // Shift of the guest's windows.
  uint8_t our_ws = 0;      // Shift of ours.
  uint8_t dup_acks = 0;    // 3 once a fast retransmit was made, until the ACK moves.
  // Segments past a hole dropped in this batch (up to 3): each owes the
  // guest a duplicate ACK, so that it retransmits the hole at once (RFC 5681
  // 4.2) rather than after a timeout.
  uint8_t holes_dropped = 0;
  uint8_t retries = 0;  // Retransmission timeouts in a row.
  MacAddr guest_mac;
  uint16_t mss = 536;  // Payload per segment to the guest.
  // Host to guest: our initial sequence number; the first byte the guest has
  // not acknowledged (the socket's first byte); the next byte to send (the
  // socket's peek offset); the highest byte sent so far.
  uint32_t isn = 0;
  uint32_t snd_una = 0;
  uint32_t snd_nxt = 0;
  uint32_t snd_high = 0;
  // Guest to host: the next byte we expect, and the acknowledgement our
  // latest ACK or data segment carried.
  uint32_t rcv_nxt = 0;
  uint32_t rcv_acked = 0;
  uint32_t guest_wnd = 0;  // Bytes, scaled.
  uint32_t wnd_sent = 0;   // The window we advertised last, bytes.
  int64_t last_activity = 0;
  int64_t rto = 0;           // The current retransmission timeout.
  int64_t rto_at = 0;        // Retransmission, SYN resend or zero-window probe; 0: none.
  int64_t wnd_at = 0;        // Next look at a low window; 0: none.
  int64_t wnd_interval = 0;  // And the interval after it.
  int64_t timer_at = 0;      // The flow table's timer as armed; 0: none.
  FlowId wait_prev;          // The rx-wait list's links.
  FlowId wait_next;
};

absl::StatusOr<std::unique_ptr<TcpTranslator>> TcpTranslator::Create(
    const TranslatorEnv& env, const TcpTranslatorOptions& options) {
  if (env.flows == nullptr || env.rx == nullptr || env.watcher == nullptr ||
      env.replies == nullptr || env.guest == nullptr) {
    return absl::InvalidArgumentError("TCP translator: flows, rx, watcher, replies, guest needed");
  }
  if (env.first_kind < 64 || env.first_kind > 256 - kKindsPerTranslator) {
    return absl::InvalidArgumentError("TCP translator: first_kind out of range");
  }
  const TcpTranslatorOptions& o = options;
  if (o.handshake_timeout_ns <= 0 || o.idle_timeout_ns <= 0 || o.half_closed_timeout_ns <= 0 ||
      o.rto_initial_ns <= 0 || o.rto_max_ns < o.rto_initial_ns || o.max_retransmits < 1 ||
      o.max_retransmits > 100 || o.window_check_initial_ns <= 0 ||
      o.window_check_max_ns < o.window_check_initial_ns) {
    return absl::InvalidArgumentError("TCP translator: timeouts must be positive and ordered");
  }
  if (o.window_scale > 14 || o.max_pending < 1 || o.discard_buffer < 1 || o.listen_backlog < 1) {
    return absl::InvalidArgumentError("TCP translator: window_scale, max_pending or buffers");
  }
  std::unique_ptr<TcpTranslator> t(new TcpTranslator(env, options));
  if (t->env_.clock == nullptr) t->env_.clock = MonotonicNowNs;

  if (o.use_peek_off) {
    UniqueFd probe(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const int zero = 0;
    t->peek_off_ =
        probe.valid() && setsockopt(probe.get(), SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) == 0;
  }
  absl::StatusOr<std::unique_ptr<TcpRxWriter>> writer =
      TcpRxWriter::Create({.max_frames = o.rx_max_frames,
                           .max_elems = o.rx_max_elems,
                           .max_iov = o.rx_max_iov,
                           .discard_size = t->peek_off_ ? 0 : o.discard_buffer});
  if (!writer.ok()) return writer.status();
  t->writer_ = std::move(*writer);
  if (getrandom(&t->isn_state_, sizeof(t->isn_state_), 0) != sizeof(t->isn_state_)) {
    return absl::InternalError(absl::StrFormat("getrandom: %s", strerror(errno)));
  }
  t->reserve_fd_.reset(eventfd(0, EFD_CLOEXEC));
  // "all" and exclusion-only specs are weak: ports that cannot be bound are
  // skipped, as long as some can.
  uint64_t weak_ports = 0, weak_bound = 0;
  for (const PortForward& f : o.forwards) {
    uint32_t bound = 0;
    if (absl::Status s = t->Listen(f, &bound); !s.ok()) return s;
    if (f.weak) {
      weak_ports += f.count;
      weak_bound += bound;
    }
  }
  if (weak_ports > 0 && weak_bound == 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "-t: none of the %d ports to forward could be bound (in use, or privileged)", weak_ports));
  }
  if (weak_bound < weak_ports) {
    VUNET_LOG(kInfo, "-t: %d of %d ports forwarded; the others are in use or privileged",
              weak_bound, weak_ports);
  }
  return t;
}

TcpTranslator::TcpTranslator(const TranslatorEnv& env, const TcpTranslatorOptions& options)
    : env_(env),
      options_(options),
      send_iov_(new iovec[kMaxSendIov]),
      pending_(new FlowId[options.max_pending]),
      deferred_(new Deferred[kMaxDeferred]),
      scratch_(new uint8_t[kScratchSize]) {}

TcpTranslator::~TcpTranslator() { Shutdown(); }

absl::Status TcpTranslator::Listen(const PortForward& f, uint32_t* bound) {
  const GuestConfig& g = *env_.guest;
  if (f.count < 1 || f.count > 65536 || uint32_t{f.host_port} + f.count - 1 > 65535 ||
      uint32_t{f.guest_port} + f.count - 1 > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("-t %d: bad port range (%d ports)", f.host_port, f.count));
  }
  for (uint32_t i = 0; i < f.count; ++i) {
    const uint16_t host_port = static_cast<uint16_t>(f.host_port + i);
    const uint16_t guest_port = static_cast<uint16_t>(f.guest_port + i);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(host_port);
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(host_port);
    absl::Status s;
    bool skipped = false;
    if (f.family == AF_INET) {
      sin.sin_addr = f.bind4;
      s = ListenOne(AF_INET, reinterpret_cast<sockaddr*>(&sin), sizeof(sin), f, guest_port, true,
                    &skipped);
    } else if (f.family == AF_INET6) {
      sin6.sin6_addr = f.bind6;
      s = ListenOne(AF_INET6, reinterpret_cast<sockaddr*>(&sin6), sizeof(sin6), f, guest_port, true,
                    &skipped);
    } else if (g.ipv4_only) {
      s = ListenOne(AF_INET, reinterpret_cast<sockaddr*>(&sin), sizeof(sin), f, guest_port, true,
                    &skipped);
    } else {
      // One dual-stack socket (IPv6 only with -6); plain IPv4 where the host
      // has no IPv6.
      sin6.sin6_addr = in6addr_any;
      s = ListenOne(AF_INET6, reinterpret_cast<sockaddr*>(&sin6), sizeof(sin6), f, guest_port,
                    g.ipv6_only, &skipped);
      if (absl::IsUnavailable(s) && !g.ipv6_only) {
        s = ListenOne(AF_INET, reinterpret_cast<sockaddr*>(&sin), sizeof(sin), f, guest_port, true,
                      &skipped);
      }
    }
    if (!s.ok()) return s;
    if (!skipped) ++*bound;
  }
  return absl::OkStatus();
}

absl::Status TcpTranslator::ListenOne(int family, const sockaddr* addr, socklen_t len,
                                      const PortForward& forward, uint16_t guest_port, bool v6only,
                                      bool* skipped) {
  const std::string& ifname = forward.ifname;
  const uint16_t port =
      ntohs(family == AF_INET ? reinterpret_cast<const sockaddr_in*>(addr)->sin_port
                              : reinterpret_cast<const sockaddr_in6*>(addr)->sin6_port);
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    const int err = errno;
    if (err == EAFNOSUPPORT) return absl::UnavailableError("no IPv6 on this host");
    return absl::ErrnoToStatus(err, absl::StrFormat("-t %d: socket", port));
  }
  SetInt(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1);
  if (family == AF_INET6) SetInt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, v6only ? 1 : 0);
  if (forward.freebind) {
    if (family == AF_INET) SetInt(fd.get(), IPPROTO_IP, IP_FREEBIND, 1);
    if (family == AF_INET6) SetInt(fd.get(), IPPROTO_IPV6, IPV6_FREEBIND, 1);
  }
  if (!ifname.empty() && setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE, ifname.c_str(),
                                    static_cast<socklen_t>(ifname.size())) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("-t %d: bind to %s", port, ifname));
  }
  if (bind(fd.get(), addr, len) != 0) {
    const int err = errno;
    if (err == EADDRNOTAVAIL && family == AF_INET6) {
      return absl::UnavailableError("no IPv6 address to bind");
    }
    if (forward.weak && (err == EADDRINUSE || err == EACCES)) {
      VUNET_LOG(kDebug, "-t %d: not forwarded: %s", port, strerror(err));
      *skipped = true;
      return absl::OkStatus();
    }
    return absl::ErrnoToStatus(err, absl::StrFormat("-t %d: bind", port));
  }
  if (listen(fd.get(), options_.listen_backlog) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("-t %d: listen", port));
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  uint16_t bound_port = port;
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &bound_len) == 0) {
    bool v4;
    in_addr a4;
    in6_addr a6;
    (void)SplitAddress(bound, &v4, &a4, &a6, &bound_port);
  }
  const uint32_t index = static_cast<uint32_t>(listeners_.size());
  const uint64_t tag =
      FlowRef(FlowId{index, 1}, static_cast<uint8_t>(env_.first_kind + kListenKind)).u64();
  if (absl::Status s = env_.watcher->Watch(fd.get(), EPOLLIN, tag); !s.ok()) {
    return absl::Status(s.code(), absl::StrFormat("-t %d: %s", port, s.message()));
  }
  listeners_.push_back(Listener{std::move(fd), bound_port, guest_port});
  return absl::OkStatus();
}

std::vector<uint16_t> TcpTranslator::listen_ports() const {
  std::vector<uint16_t> ports;
  for (const Listener& l : listeners_) ports.push_back(l.host_port);
  return ports;
}

uint64_t TcpTranslator::Tag(FlowId id) const {
  return FlowRef(id, static_cast<uint8_t>(env_.first_kind + kSocketKind)).u64();
}

uint32_t TcpTranslator::NewIsn() {
  // splitmix64 over a random seed: unpredictable enough for sequence numbers
  // a guest only sees for its own connections.
  uint64_t z = (isn_state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

// ---------------------------------------------------------------------------
// Guest segments.

void TcpTranslator::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                            const ParsedFrame& parsed) {
  if (parsed.l4 != L4Kind::kTcp) {
    if (env_.next != nullptr) env_.next->OnFrame(hdr, frame, parsed);
    return;
  }
  ++stats_.segments;
  const std::optional<FlowKey> key = FlowKey::FromFrame(parsed);
  if (!key.has_value()) {
    ++stats_.malformed;
    return;
  }
  const int64_t now = Now();
  const FlowId id = env_.flows->Find(*key);
  Conn* c = id.valid() ? env_.flows->Data<Conn>(id) : nullptr;
  if (c == nullptr) {
    NewFromGuest(parsed, *key, now);
    return;
  }
  c->last_activity = now;
  Segment(id, c, frame, parsed, now);
}

void TcpTranslator::OnBatchEnd() {
  RetryDeferred();
  FlushPending();
  if (env_.next != nullptr) env_.next->OnBatchEnd();
}

void TcpTranslator::RetryDeferred() {
  if (deferred_count_ == 0) return;
  retrying_ = true;
  const int64_t now = Now();
  // Each pass takes every segment now in order; one that fills a hole may
  // make others in order, so pass again while any was taken.
  bool progress = true;
  while (progress) {
    progress = false;
    for (size_t i = 0; i < deferred_count_; ++i) {
      Deferred& d = deferred_[i];
      if (!d.id.valid()) continue;
      Conn* c = env_.flows->Data<Conn>(d.id);
      if (c == nullptr || c->state != Conn::State::kEstablished || c->guest_fin) {
        d.id = FlowId{};
        continue;
      }
      if (SeqGt(d.parsed.tcp.seq, c->rcv_nxt)) continue;  // Still a hole before it: later.
      const FlowId id = d.id;
      d.id = FlowId{};
      ++stats_.reordered;
      ProcessData(id, c, d.frame, d.parsed, now);
      progress = true;
    }
  }
  // What is left stays past a hole: dropped, each worth a duplicate ACK.
  for (size_t i = 0; i < deferred_count_; ++i) {
    if (!deferred_[i].id.valid()) continue;
    Conn* c = env_.flows->Data<Conn>(deferred_[i].id);
    if (c == nullptr) continue;
    if (c->holes_dropped < 3) ++c->holes_dropped;
    MarkPending(deferred_[i].id, c);  // Its ACKs go out in this flush.
  }
  deferred_count_ = 0;
  retrying_ = false;
}

void TcpTranslator::NewFromGuest(const ParsedFrame& parsed, const FlowKey& key, int64_t now) {
  const uint8_t flags = parsed.tcp.flags;
  if (flags & kTcpRst) return;
  if ((flags & (kTcpSyn | kTcpAck | kTcpFin)) != kTcpSyn) {
    RefuseSegment(parsed);
    return;
  }
  sockaddr_storage to;
  socklen_t to_len = 0;
  if (!HostDestination(parsed, *env_.guest, &to, &to_len)) {
    ++stats_.refused_destination;
    VUNET_LOG_RATELIMITED(kInfo, "tcp: %s refused: destination not served", key.ToString());
    RefuseSegment(parsed);
    return;
  }
  const absl::StatusOr<FlowId> added = env_.flows->Insert(key);
  if (!added.ok()) {
    // The table counted and logged a full table.
    if (absl::IsResourceExhausted(added.status())) ++stats_.refused_full;
    RefuseSegment(parsed);
    return;
  }
  const FlowId id = *added;
  Conn* c = env_.flows->Emplace<Conn>(id);
  const bool v4 = key.is_v4();
  c->state = Conn::State::kConnecting;
  c->guest_mac = parsed.src_mac;
  c->rcv_nxt = parsed.tcp.seq + 1;
  c->isn = NewIsn();
  c->snd_una = c->isn;
  c->snd_nxt = c->snd_high = c->isn + 1;
  c->mss = SegmentSize(v4, parsed.tcp.options, env_.guest->mtu);
  if (parsed.tcp.options.has_window_scale) {
    c->guest_ws = std::min<uint8_t>(parsed.tcp.options.window_scale, 14);
    c->our_ws = options_.window_scale;
  }
  c->guest_wnd = parsed.tcp.window;  // Never scaled in a SYN.
  c->last_activity = now;
  c->rto = options_.rto_initial_ns;

  c->fd.reset(socket(v4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!c->fd.valid()) {
    VUNET_LOG_RATELIMITED(kWarning, "tcp: socket: %s", strerror(errno));
    RefuseSegment(parsed);
    Close(id, c, false);
    return;
  }
  const int fd = c->fd.get();
  SetInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  if (peek_off_) SetInt(fd, SOL_SOCKET, SO_PEEK_OFF, 0);
  if (absl::Status s = BindOutbound(fd, reinterpret_cast<const sockaddr*>(&to), options_.outbound);
      !s.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "tcp: %s: %s", key.ToString(), s.message());
    RefuseSegment(parsed);
    Close(id, c, false);
    return;
  }
  ++stats_.connects;
  const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&to), to_len);
  if (rc != 0 && errno != EINPROGRESS) {
    ++stats_.connect_failures;
    RefuseSegment(parsed);
    Close(id, c, false);
    return;
  }
  if (absl::Status s = env_.watcher->Watch(fd, kSocketEvents, Tag(id)); !s.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "tcp: %s: %s", key.ToString(), s.ToString());
    RefuseSegment(parsed);
    Close(id, c, true);
    return;
  }
  c->watched = true;
  if (rc == 0) {
    ConnectDone(id, c, now);
  } else {
    UpdateTimer(id, c);
  }
}

void TcpTranslator::Segment(FlowId id, Conn* c, absl::Span<const iovec> frame,
                            const ParsedFrame& parsed, int64_t now) {
  const uint8_t flags = parsed.tcp.flags;
  switch (c->state) {
    case Conn::State::kConnecting:
      // Retransmitted SYNs wait for connect(); an RST means the guest gave up.
      if (flags & kTcpRst) {
        ++stats_.guest_resets;
        Close(id, c, true);
      }
      return;
    case Conn::State::kSynSent:
      SegmentInSynSent(id, c, parsed, now);
      return;
    case Conn::State::kSynAckSent:
      if (!SegmentInSynAckSent(id, c, parsed, now)) return;
      break;
    case Conn::State::kEstablished:
      break;
  }
  if (flags & kTcpRst) {
    // Only the guest writes into this ring, so there is no blind attacker to
    // check the sequence number against.
    ++stats_.guest_resets;
    Close(id, c, true);
    return;
  }
  if (flags & kTcpSyn) {
    // A SYN on an established flow: a challenge ACK (RFC 5961 4), which is
    // also what a guest that lost our ACK of its SYN-ACK needs.
    SendAck(id, c, now);
    return;
  }
  if ((flags & kTcpAck) == 0) return;
  ProcessAck(id, c, parsed, now);
  c = env_.flows->Data<Conn>(id);  // The ACK may have ended the flow.
  if (c == nullptr) return;
  ProcessData(id, c, frame, parsed, now);
}

void TcpTranslator::SegmentInSynSent(FlowId id, Conn* c, const ParsedFrame& parsed, int64_t now) {
  const uint8_t flags = parsed.tcp.flags;
  const bool ack_ok = (flags & kTcpAck) && parsed.tcp.ack == c->isn + 1;
  if (flags & kTcpRst) {
    if (ack_ok || (flags & kTcpAck) == 0) {
      ++stats_.refused_by_guest;
      Close(id, c, true);
    }
    return;
  }
  if ((flags & (kTcpSyn | kTcpAck)) != (kTcpSyn | kTcpAck)) {
    if (flags & kTcpAck) RefuseSegment(parsed);
    return;
  }
  if (!ack_ok) {
    ++stats_.malformed;
    RefuseSegment(parsed);
    return;
  }
  const bool v4 = env_.flows->Key(id)->is_v4();
  c->rcv_nxt = parsed.tcp.seq + 1;
  c->mss = SegmentSize(v4, parsed.tcp.options, env_.guest->mtu);
  if (parsed.tcp.options.has_window_scale) {
    c->guest_ws = std::min<uint8_t>(parsed.tcp.options.window_scale, 14);
  } else {
    c->guest_ws = 0;
    c->our_ws = 0;
  }
  c->guest_wnd = parsed.tcp.window;  // Not scaled in a SYN-ACK either.
  c->snd_una = c->snd_nxt = c->snd_high = c->isn + 1;
  c->state = Conn::State::kEstablished;
  c->rto_at = 0;
  c->retries = 0;
  c->rto = options_.rto_initial_ns;
  ++stats_.established;
  SendAck(id, c, now);
  // Data the host peer sent meanwhile.
  c->tx_due = true;
  MarkPending(id, c);
}

bool TcpTranslator::SegmentInSynAckSent(FlowId id, Conn* c, const ParsedFrame& parsed,
                                        int64_t now) {
  (void)now;
  const uint8_t flags = parsed.tcp.flags;
  if (flags & kTcpRst) {
    ++stats_.guest_resets;
    Close(id, c, true);
    return false;
  }
  if (flags & kTcpSyn) {
    // Our SYN-ACK was lost: the guest sends its SYN again.
    if ((flags & kTcpAck) == 0 && parsed.tcp.seq + 1 == c->rcv_nxt) SendSynAck(id, c);
    return false;
  }
  if ((flags & kTcpAck) == 0) return false;
  if (parsed.tcp.ack != c->isn + 1) {
    ++stats_.malformed;
    RefuseSegment(parsed);
    return false;
  }
  c->state = Conn::State::kEstablished;
  c->snd_una = c->snd_nxt = c->snd_high = c->isn + 1;
  c->guest_wnd = uint32_t{parsed.tcp.window} << c->guest_ws;
  ++stats_.established;
  // The host peer may have spoken first (a banner) while we waited.
  c->tx_due = true;
  MarkPending(id, c);
  return true;
}

void TcpTranslator::ProcessAck(FlowId id, Conn* c, const ParsedFrame& parsed, int64_t now) {
  const uint32_t ack = parsed.tcp.ack;
  const uint32_t snd_max = c->snd_high + (c->fin_sent ? 1 : 0);
  if (SeqGt(ack, snd_max) || SeqLt(ack, c->snd_una)) {
    // An ACK of data never sent is answered with an ACK (RFC 793); an old
    // one carries nothing we can trust (its window may be stale).
    if (SeqGt(ack, snd_max)) {
      ++stats_.malformed;
      c->ack_due = true;
      MarkPending(id, c);
    }
    return;
  }
  const uint32_t old_wnd = c->guest_wnd;
  const uint32_t wnd = uint32_t{parsed.tcp.window} << c->guest_ws;
  const uint32_t data_end = SeqMin(ack, c->snd_high);
  const uint32_t acked = data_end - c->snd_una;
  if (acked > 0) {
    if (!Discard(c, acked)) {
      ++stats_.host_resets;
      ResetGuest(id, c);
      Close(id, c, true);
      return;
    }
    c->snd_una = data_end;
    // The socket's peek offset dropped by as much, down to 0 at most.
    c->snd_nxt = SeqMax(c->snd_nxt, c->snd_una);
    c->dup_acks = 0;
    c->retries = 0;
    c->rto = options_.rto_initial_ns;
    c->rto_at = c->snd_una != c->snd_high ? now + c->rto : 0;
    c->tx_due = true;
  }
  c->guest_wnd = wnd;
  if (c->fin_sent && !c->fin_acked && ack == snd_max) {
    c->fin_acked = true;
    c->rto_at = 0;
    if (c->guest_fin) {  // Both directions are done.
      // The guest's FIN (a simultaneous close) may not be acknowledged yet:
      // without it the guest retransmits the FIN and meets an RST.
      if (c->ack_due) SendAck(id, c, now);
      Close(id, c, false);
      return;
    }
  }
  if (acked == 0 && parsed.payload_len == 0 && (parsed.tcp.flags & (kTcpFin | kTcpSyn)) == 0 &&
      c->snd_una != c->snd_high && wnd == old_wnd && wnd > 0 && c->dup_acks < 3 &&
      ++c->dup_acks == 3) {
    // Three duplicate ACKs: what follows snd_una was lost; send it again
    // from the socket. Once per loss: further duplicates wait for the ACK to
    // move.
    ++stats_.fast_retransmits;
    c->snd_nxt = c->snd_una;
    if (peek_off_) SetInt(c->fd.get(), SOL_SOCKET, SO_PEEK_OFF, 0);
    c->tx_due = true;
  }
  if (wnd > old_wnd) c->tx_due = true;
  if (c->tx_due) MarkPending(id, c);
}

bool TcpTranslator::Discard(Conn* c, size_t n) {
  while (n > 0) {
    ssize_t r;
    if (trunc_discard_) {
      r = recv(c->fd.get(), nullptr, n, MSG_DONTWAIT | MSG_TRUNC);
    } else {
      r = recv(c->fd.get(), scratch_.get(), std::min(n, kScratchSize), MSG_DONTWAIT);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (trunc_discard_ && (errno == EFAULT || errno == EINVAL || errno == EOPNOTSUPP)) {
        trunc_discard_ = false;  // A kernel that copies anyway: read into scratch.
        continue;
      }
      VUNET_LOG_RATELIMITED(kInfo, "tcp: discarding acknowledged data: %s", strerror(errno));
      return false;
    }
    if (r == 0) return false;
    n -= std::min(n, static_cast<size_t>(r));
  }
  return true;
}

void TcpTranslator::ProcessData(FlowId id, Conn* c, absl::Span<const iovec> frame,
                                const ParsedFrame& parsed, int64_t now) {
  const bool fin = parsed.tcp.flags & kTcpFin;
  const size_t len = parsed.payload_len;
  if (len == 0 && !fin) return;
  const uint32_t seq = parsed.tcp.seq;
  if (c->guest_fin || SeqGt(seq, c->rcv_nxt)) {
    // After the guest's FIN, or out of order: an ACK of what we expect. Out
    // of order, it is tried again at the end of the batch (see Deferred).
    if (!c->guest_fin) {
      ++stats_.out_of_order;
      if (deferred_count_ < kMaxDeferred && !retrying_) {
        deferred_[deferred_count_++] = Deferred{id, frame, parsed};
      } else if (c->holes_dropped < 3) {
        ++c->holes_dropped;
      }
    }
    c->ack_due = true;
    MarkPending(id, c);
    return;
  }
  const uint32_t skip = c->rcv_nxt - seq;
  if (skip > len || (skip == len && !fin)) {  // Taken already.
    c->ack_due = true;
    MarkPending(id, c);
    return;
  }
  const size_t want = len - skip;
  size_t taken = 0;
  if (want > 0) {
    size_t covered = 0;
    const size_t n =
        SubIov(frame, parsed.payload_offset + skip, want, send_iov_.get(), kMaxSendIov, &covered);
    msghdr msg{};
    msg.msg_iov = send_iov_.get();
    msg.msg_iovlen = n;
    ssize_t r;
    do {
      r = sendmsg(c->fd.get(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != ENOMEM) {
        VUNET_LOG_RATELIMITED(kInfo, "tcp: %s: send: %s", env_.flows->Key(id)->ToString(),
                              strerror(errno));
        ++stats_.host_resets;
        ResetGuest(id, c);
        Close(id, c, true);
        return;
      }
      r = 0;
    }
    taken = static_cast<size_t>(r);
    c->rcv_nxt += static_cast<uint32_t>(taken);
    stats_.bytes_from_guest += taken;
  }
  if (taken < want) {
    // The guest learns at once, with duplicates of the ACK so that it
    // resends from there rather than wait for its retransmission timeout.
    ++stats_.partial_sends;
    SendAck(id, c, now, 4);
    return;
  }
  if (fin) {
    (void)shutdown(c->fd.get(), SHUT_WR);
    c->guest_fin = true;
    c->rcv_nxt += 1;
    if (c->fin_acked) {
      SendAck(id, c, now);
      Close(id, c, false);
      return;
    }
    UpdateTimer(id, c);
  }
  c->ack_due = true;
  MarkPending(id, c);
}

// ---------------------------------------------------------------------------
// Host side.

void TcpTranslator::OnSocketEvent(uint64_t tag, uint32_t events) {
  const FlowRef ref = FlowRef::FromU64(tag);
  const uint8_t kind = static_cast<uint8_t>(ref.kind() - env_.first_kind);
  if (kind == kListenKind) {
    OnListen(ref.id().index);
    return;
  }
  if (kind != kSocketKind) return;
  const FlowId id = env_.flows->FindByRef(ref);
  Conn* c = id.valid() ? env_.flows->Data<Conn>(id) : nullptr;
  if (c == nullptr) return;
  const int64_t now = Now();
  // Edge-triggered: a shutdown seen now is not reported again.
  if (events & (EPOLLRDHUP | EPOLLHUP)) c->host_rdhup = true;
  if (c->state == Conn::State::kConnecting) {
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ConnectDone(id, c, now);
    writer_->Flush(env_.rx);
    return;
  }
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof(err);
    (void)getsockopt(c->fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      VUNET_LOG_RATELIMITED(kInfo, "tcp: %s: %s", env_.flows->Key(id)->ToString(), strerror(err));
      ++stats_.host_resets;
      ResetGuest(id, c);
      Close(id, c, false);
      writer_->Flush(env_.rx);
      return;
    }
  }
  if (c->state != Conn::State::kEstablished) return;  // Sent once established.
  c->last_activity = now;
  if ((events & EPOLLOUT) && c->wnd_watch) CheckWindow(id, c, now);
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
    if (c->in_rx_wait) {
      // Its turn comes with the receive buffers.
    } else {
      SendData(id, c, now);
    }
  }
  c = env_.flows->Data<Conn>(id);
  if (c != nullptr) UpdateTimer(id, c);
  writer_->Flush(env_.rx);
}

void TcpTranslator::ConnectDone(FlowId id, Conn* c, int64_t now) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(c->fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) {
    ++stats_.connect_failures;
    VUNET_LOG_RATELIMITED(kDebug, "tcp: %s: connect: %s", env_.flows->Key(id)->ToString(),
                          strerror(err));
    SendControl(*env_.flows->Key(id), *c, 0, kTcpRst | kTcpAck, 0);
    Close(id, c, false);
    return;
  }
  c->state = Conn::State::kSynAckSent;
  c->last_activity = now;
  SendSynAck(id, c);
  UpdateTimer(id, c);
}

void TcpTranslator::OnListen(uint32_t index) {
  if (index >= listeners_.size() || !listeners_[index].fd.valid()) return;
  const Listener& l = listeners_[index];
  const int64_t now = Now();
  for (int i = 0; i < kAcceptBatch; ++i) {
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    const int fd =
        accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        // Refuse one with the fd kept for this, or the listener stays
        // readable and the loop spins.
        VUNET_LOG_RATELIMITED(kWarning, "tcp: out of file descriptors: connection refused");
        reserve_fd_.reset();
        const int refused = accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (refused >= 0) {
          SetLingerZero(refused);
          close(refused);
        }
        reserve_fd_.reset(eventfd(0, EFD_CLOEXEC));
        if (refused >= 0) continue;
      }
      break;
    }
    Inbound(l, UniqueFd(fd), peer, now);
  }
  writer_->Flush(env_.rx);
}

void TcpTranslator::Inbound(const Listener& l, UniqueFd fd, const sockaddr_storage& peer,
                            int64_t now) {
  const GuestConfig& g = *env_.guest;
  bool v4 = false;
  in_addr peer4{};
  in6_addr peer6{};
  uint16_t peer_port = 0;
  auto refuse = [&](const char* why) {
    VUNET_LOG_RATELIMITED(kInfo, "tcp: inbound connection to guest port %d refused: %s",
                          l.guest_port, why);
    SetLingerZero(fd.get());
  };
  if (!SplitAddress(peer, &v4, &peer4, &peer6, &peer_port)) return refuse("unknown family");
  FlowKey key;
  if (v4) {
    if (g.ipv6_only || g.addr4.s_addr == 0) return refuse("the guest has no IPv4 address");
    in_addr src = peer4;
    if (Byte0(peer4) == 127 || peer4.s_addr == g.addr4.s_addr) {
      if (g.gateway4.s_addr == 0) return refuse("no gateway address to come from");
      src = g.gateway4;
    }
    key = FlowKey::V4(FlowProto::kTcp, g.addr4, l.guest_port, src, peer_port);
  } else {
    if (g.ipv4_only || IN6_IS_ADDR_UNSPECIFIED(&g.addr6)) {
      return refuse("the guest has no IPv6 address");
    }
    in6_addr src = peer6;
    if (IN6_IS_ADDR_LOOPBACK(&peer6) || IN6_ARE_ADDR_EQUAL(&peer6, &g.addr6)) {
      src = GatewaySource6(g);
      if (IN6_IS_ADDR_UNSPECIFIED(&src)) return refuse("no gateway address to come from");
    }
    key = FlowKey::V6(FlowProto::kTcp, g.addr6, l.guest_port, src, peer_port);
  }
  const absl::StatusOr<FlowId> added = env_.flows->Insert(key);
  if (!added.ok()) {
    if (absl::IsResourceExhausted(added.status())) ++stats_.refused_full;
    return refuse(absl::IsResourceExhausted(added.status()) ? "flow table full" : "flow in use");
  }
  const FlowId id = *added;
  // The host-side key: our socket's end and its peer.
  sockaddr_storage local{};
  socklen_t local_len = sizeof(local);
  bool lv4;
  in_addr l4{};
  in6_addr l6{};
  uint16_t lport = 0;
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &local_len) == 0 &&
      SplitAddress(local, &lv4, &l4, &l6, &lport) && lv4 == v4) {
    (void)env_.flows->SetHostKey(id,
                                 v4 ? FlowKey::V4(FlowProto::kTcp, l4, lport, peer4, peer_port)
                                    : FlowKey::V6(FlowProto::kTcp, l6, lport, peer6, peer_port));
  }
  Conn* c = env_.flows->Emplace<Conn>(id);
  c->fd = std::move(fd);
  c->state = Conn::State::kSynSent;
  c->guest_mac = g.guest_mac;
  c->isn = NewIsn();
  c->snd_una = c->isn;
  c->snd_nxt = c->snd_high = c->isn + 1;
  c->our_ws = options_.window_scale;
  c->mss = SegmentSize(v4, TcpOptions{}, g.mtu);
  c->last_activity = now;
  c->rto = options_.rto_initial_ns;
  const int sfd = c->fd.get();
  SetInt(sfd, IPPROTO_TCP, TCP_NODELAY, 1);
  if (peek_off_) SetInt(sfd, SOL_SOCKET, SO_PEEK_OFF, 0);
  if (absl::Status s = env_.watcher->Watch(sfd, kSocketEvents, Tag(id)); !s.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "tcp: %s: %s", key.ToString(), s.ToString());
    Close(id, c, true);
    return;
  }
  c->watched = true;
  ++stats_.accepted;
  SendSyn(id, c);
  c->rto_at = now + c->rto;
  UpdateTimer(id, c);
}

bool TcpTranslator::SendData(FlowId id, Conn* c, int64_t now) {
  c->tx_due = false;
  if (c->state != Conn::State::kEstablished || c->fin_sent) return true;
  const FlowKey& key = *env_.flows->Key(id);
  bool have_window = false;
  TcpSegments seg;
  for (;;) {
    // After end of file only a retransmission (snd_nxt rewound) has data
    // left to peek; otherwise our FIN follows once everything is acked.
    if (c->host_eof && c->snd_nxt == c->snd_high) {
      if (c->snd_una == c->snd_high) SendFin(id, c, now);
      return true;
    }
    const uint32_t in_flight = c->snd_nxt - c->snd_una;
    if (in_flight >= c->guest_wnd) {
      // The guest's window is full. A zero window with nothing in flight
      // is probed on the timer; otherwise its ACKs open it.
      if (c->guest_wnd == 0 && c->rto_at == 0) {
        c->rto_at = now + c->rto;
        UpdateTimer(id, c);
      }
      return true;
    }
    size_t room = c->guest_wnd - in_flight;
    if (!peek_off_) {
      const size_t max_skip = writer_->max_skip();
      if (in_flight >= max_skip) return true;
      room = std::min(room, max_skip - in_flight);
    }
    if (!have_window) {
      uint32_t sndbuf = 0;
      const uint32_t space = FreeSendSpace(*c, &sndbuf);
      seg.frame = SpecFor(key, *c);
      seg.frame.tcp_flags = kTcpAck;
      seg.frame.tcp_window = AdvertiseWindow(id, c, space, sndbuf, now);
      seg.mss = c->mss;
      have_window = true;
    }
    seg.frame.tcp_ack = c->rcv_nxt;
    seg.seq = c->snd_nxt;
    seg.max_bytes = room;
    seg.skip = peek_off_ ? 0 : in_flight;
    const TcpPeekResult r = writer_->PeekToGuest(env_.rx, c->fd.get(), seg);
    if (r.error != 0) {
      VUNET_LOG_RATELIMITED(kInfo, "tcp: %s: receive: %s", key.ToString(), strerror(r.error));
      ++stats_.host_resets;
      ResetGuest(id, c);
      Close(id, c, /*reset_host=*/r.error == EPROTO);  // EPROTO: our fault, not the socket's.
      return false;
    }
    if (r.no_room) {
      ++stats_.rx_waits;
      AddRxWait(id, c);
      return true;
    }
    if (r.bytes > 0) {
      c->snd_nxt += static_cast<uint32_t>(r.bytes);
      c->snd_high = SeqMax(c->snd_high, c->snd_nxt);
      c->ack_due = false;  // The segments carried it.
      c->rcv_acked = c->rcv_nxt;
      stats_.bytes_to_guest += r.bytes;
      stats_.frames_to_guest += r.frames;
      if (c->rto_at == 0) {
        c->rto_at = now + c->rto;
        UpdateTimer(id, c);
      }
    }
    if (r.eof || (r.no_new_data && c->host_rdhup)) {
      if (c->host_eof && c->snd_nxt != c->snd_high) {
        // The socket ended before the bytes it sent once: cannot happen
        // while our accounting holds.
        VUNET_LOG_RATELIMITED(kError, "tcp: %s: data to resend is gone", key.ToString());
        ++stats_.host_resets;
        ResetGuest(id, c);
        Close(id, c, true);
        return false;
      }
      c->host_eof = true;
      continue;
    }
    // Asked-for bytes all came: more may wait. After the peer's shutdown,
    // one more peek finds where its data ends.
    if (!r.full && !(c->host_rdhup && r.bytes > 0)) return true;
  }
}

void TcpTranslator::CheckWindow(FlowId id, Conn* c, int64_t now) {
  c->wnd_at = 0;
  if (!c->wnd_watch || c->guest_fin) {
    c->wnd_watch = false;
    return;
  }
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  if (space >= LowWindow(sndbuf) && space > c->wnd_sent) {
    ++stats_.window_updates;
    SendAck(id, c, now);  // Ends the watch (the window is no longer low).
    return;
  }
  c->wnd_interval = std::min(c->wnd_interval * 2, options_.window_check_max_ns);
  c->wnd_at = now + c->wnd_interval;
  UpdateTimer(id, c);
}

bool TcpTranslator::OnRto(FlowId id, Conn* c, int64_t now) {
  auto backoff = [&] {
    c->rto = std::min(c->rto * 2, options_.rto_max_ns);
    c->rto_at = now + c->rto;
  };
  auto give_up = [&] {
    ++stats_.timeouts;
    ResetGuest(id, c);
    Close(id, c, true);
  };
  switch (c->state) {
    case Conn::State::kSynSent:
      if (++c->retries > options_.max_retransmits) {
        give_up();
        return false;
      }
      SendSyn(id, c);
      backoff();
      return true;
    case Conn::State::kConnecting:
    case Conn::State::kSynAckSent:
      return true;  // The guest retransmits its SYN; the idle timeout ends these.
    case Conn::State::kEstablished:
      break;
  }
  if (c->guest_wnd == 0 && !c->fin_sent) {
    // Zero window: a probe with the byte before the window (RFC 9293
    // 3.8.6.1), which the guest answers with an ACK and its window.
    ++stats_.zero_window_probes;
    SendControl(*env_.flows->Key(id), *c, c->snd_una - 1, kTcpAck, c->wnd_sent >> c->our_ws);
    backoff();
    return true;
  }
  if (c->snd_una != c->snd_high || (c->fin_sent && !c->fin_acked)) {
    if (++c->retries > options_.max_retransmits) {
      give_up();
      return false;
    }
    ++stats_.timer_retransmits;
    backoff();
    if (c->fin_sent) {
      uint32_t sndbuf = 0;
      const uint32_t space = FreeSendSpace(*c, &sndbuf);
      SendControl(*env_.flows->Key(id), *c, c->snd_nxt, kTcpFin | kTcpAck,
                  AdvertiseWindow(id, c, space, sndbuf, now));
      return true;
    }
    c->snd_nxt = c->snd_una;
    if (peek_off_) SetInt(c->fd.get(), SOL_SOCKET, SO_PEEK_OFF, 0);
    if (!SendData(id, c, now)) return false;
    // A guest with no receive buffers (stopped, or busy) lost nothing: its
    // wait counts towards giving up only once the timeout has backed off to
    // its maximum (a guest gone for good still ends its flows, in some 15
    // minutes rather than 10).
    if (c->in_rx_wait && c->rto < options_.rto_max_ns) --c->retries;
    return true;
  }
  return SendData(id, c, now);  // The window opened meanwhile.
}

// ---------------------------------------------------------------------------
// Segments to the guest.

FrameSpec TcpTranslator::SpecFor(const FlowKey& key, const Conn& c) const {
  FrameSpec s;
  s.src_mac = env_.guest->gateway_mac;
  s.dst_mac = c.guest_mac;
  if (key.is_v4()) {
    s.src4 = key.remote4();
    s.dst4 = key.local4();
  } else {
    s.ipv6 = true;
    s.src6 = key.remote_addr;
    s.dst6 = key.local_addr;
  }
  s.protocol = IPPROTO_TCP;
  s.src_port = key.remote_port;
  s.dst_port = key.local_port;
  return s;
}

bool TcpTranslator::SendControl(const FlowKey& key, const Conn& c, uint32_t seq, uint8_t flags,
                                uint16_t window, absl::Span<const uint8_t> options) {
  // Data segments written before this one go first.
  writer_->Flush(env_.rx);
  FrameSpec s = SpecFor(key, c);
  s.tcp_seq = seq;
  s.tcp_ack = (flags & kTcpAck) ? c.rcv_nxt : 0;
  s.tcp_flags = flags;
  s.tcp_window = window;
  s.tcp_options = options;
  const absl::StatusOr<size_t> len = BuildFrame(s, absl::MakeSpan(control_), 0);
  if (!len.ok() || !env_.replies->Send(absl::MakeConstSpan(control_, *len)).ok()) {
    ++stats_.control_dropped;
    return false;
  }
  return true;
}

void TcpTranslator::SendAck(FlowId id, Conn* c, int64_t now, int copies) {
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  const uint16_t window = AdvertiseWindow(id, c, space, sndbuf, now);
  const uint32_t seq = c->snd_high + (c->fin_sent ? 1 : 0);
  for (int i = 0; i < copies; ++i) {
    if (!SendControl(*env_.flows->Key(id), *c, seq, kTcpAck, window)) break;
  }
  c->rcv_acked = c->rcv_nxt;
  c->ack_due = false;
}

void TcpTranslator::SendSynAck(FlowId id, Conn* c) {
  const bool v4 = env_.flows->Key(id)->is_v4();
  const uint16_t mss = OurMss(v4, env_.guest->mtu);
  uint8_t opts[kSynOptionsLen] = {
      2, 4, static_cast<uint8_t>(mss >> 8), static_cast<uint8_t>(mss), 1, 3, 3, c->our_ws};
  // Window scaling only if the guest offered it (RFC 7323 2.2).
  const bool ws = c->guest_ws != 0 || c->our_ws != 0;
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  c->wnd_sent = std::min<uint32_t>(space, 65535);
  SendControl(*env_.flows->Key(id), *c, c->isn, kTcpSyn | kTcpAck,
              static_cast<uint16_t>(c->wnd_sent),
              absl::MakeConstSpan(opts, ws ? kSynOptionsLen : 4));
  c->rcv_acked = c->rcv_nxt;
}

void TcpTranslator::SendSyn(FlowId id, Conn* c) {
  const bool v4 = env_.flows->Key(id)->is_v4();
  const uint16_t mss = OurMss(v4, env_.guest->mtu);
  const uint8_t opts[kSynOptionsLen] = {
      2, 4, static_cast<uint8_t>(mss >> 8), static_cast<uint8_t>(mss), 1, 3, 3, c->our_ws};
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  c->wnd_sent = std::min<uint32_t>(space, 65535);
  SendControl(*env_.flows->Key(id), *c, c->isn, kTcpSyn, static_cast<uint16_t>(c->wnd_sent), opts);
}

void TcpTranslator::SendFin(FlowId id, Conn* c, int64_t now) {
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  const uint16_t window = AdvertiseWindow(id, c, space, sndbuf, now);
  c->fin_sent = true;
  c->ack_due = false;
  SendControl(*env_.flows->Key(id), *c, c->snd_nxt, kTcpFin | kTcpAck, window);
  c->rcv_acked = c->rcv_nxt;
  c->rto_at = now + c->rto;
  UpdateTimer(id, c);
}

void TcpTranslator::ResetGuest(FlowId id, Conn* c) {
  SendControl(*env_.flows->Key(id), *c, c->snd_high + (c->fin_sent ? 1 : 0), kTcpRst | kTcpAck, 0);
}

void TcpTranslator::RefuseSegment(const ParsedFrame& p) {
  ++stats_.no_flow_resets;
  writer_->Flush(env_.rx);
  FrameSpec s;
  s.src_mac = env_.guest->gateway_mac;
  s.dst_mac = p.src_mac;
  if (p.l3 == L3Kind::kIpv4) {
    s.src4 = p.ip.dst4;
    s.dst4 = p.ip.src4;
  } else {
    s.ipv6 = true;
    s.src6 = p.ip.dst6;
    s.dst6 = p.ip.src6;
  }
  s.protocol = IPPROTO_TCP;
  s.src_port = p.dst_port;
  s.dst_port = p.src_port;
  if (p.tcp.flags & kTcpAck) {
    s.tcp_seq = p.tcp.ack;
    s.tcp_flags = kTcpRst;
  } else {
    s.tcp_seq = 0;
    s.tcp_ack = p.tcp.seq + static_cast<uint32_t>(p.payload_len) +
                ((p.tcp.flags & kTcpSyn) ? 1 : 0) + ((p.tcp.flags & kTcpFin) ? 1 : 0);
    s.tcp_flags = kTcpRst | kTcpAck;
  }
  const absl::StatusOr<size_t> len = BuildFrame(s, absl::MakeSpan(control_), 0);
  if (!len.ok() || !env_.replies->Send(absl::MakeConstSpan(control_, *len)).ok()) {
    ++stats_.control_dropped;
  }
}

uint32_t TcpTranslator::FreeSendSpace(const Conn& c, uint32_t* sndbuf) const {
  // The socket takes data while the memory its queue is charged (wmem_queued:
  // the data and the kernel's per-packet overhead) is below SO_SNDBUF. So the
  // free memory is scaled by the share of the queue's memory that is data.
  uint32_t mem[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof(mem);
  int outq = 0;
  if (getsockopt(c.fd.get(), SOL_SOCKET, SO_MEMINFO, mem, &len) != 0 ||
      len <= SK_MEMINFO_WMEM_QUEUED * sizeof(uint32_t)) {
    *sndbuf = 0;
    return 0;
  }
  if (ioctl(c.fd.get(), SIOCOUTQ, &outq) != 0 || outq < 0) outq = 0;
  *sndbuf = mem[SK_MEMINFO_SNDBUF];
  const uint64_t queued = mem[SK_MEMINFO_WMEM_QUEUED];
  if (queued >= *sndbuf) return 0;
  const uint64_t free = *sndbuf - queued;
  // With nothing queued yet, assume a quarter goes to overhead.
  if (queued == 0 || outq == 0) return static_cast<uint32_t>(free - free / 4);
  return static_cast<uint32_t>(free * std::min<uint64_t>(outq, queued) / queued);
}

uint16_t TcpTranslator::AdvertiseWindow(FlowId id, Conn* c, uint32_t window, uint32_t sndbuf,
                                        int64_t now) {
  const uint32_t max = uint32_t{65535} << c->our_ws;
  const uint16_t field = static_cast<uint16_t>(std::min(window, max) >> c->our_ws);
  c->wnd_sent = uint32_t{field} << c->our_ws;
  if (c->wnd_sent < LowWindow(sndbuf) && !c->guest_fin) {
    if (!c->wnd_watch) {
      c->wnd_watch = true;
      c->wnd_interval = options_.window_check_initial_ns;
      c->wnd_at = now + c->wnd_interval;
      UpdateTimer(id, c);
    }
  } else {
    c->wnd_watch = false;
    c->wnd_at = 0;
  }
  return field;
}

// ---------------------------------------------------------------------------
// Batches, waiting flows, timers.

void TcpTranslator::MarkPending(FlowId id, Conn* c) {
  if (c->in_pending) return;
  if (pending_count_ == options_.max_pending) FlushPending();
  pending_[pending_count_++] = id;
  c->in_pending = true;
}

void TcpTranslator::FlushPending() {
  if (pending_count_ == 0) return;
  const int64_t now = Now();
  // Data first: its segments carry the ACK too.
  for (size_t i = 0; i < pending_count_; ++i) {
    Conn* c = env_.flows->Data<Conn>(pending_[i]);
    if (c != nullptr && c->tx_due && !c->in_rx_wait) SendData(pending_[i], c, now);
  }
  writer_->Flush(env_.rx);
  for (size_t i = 0; i < pending_count_; ++i) {
    Conn* c = env_.flows->Data<Conn>(pending_[i]);
    if (c == nullptr) continue;
    c->in_pending = false;
    c->tx_due = false;
    // Duplicates for the segments dropped past a hole must be pure ACKs of
    // an acknowledgement the guest already had: after our data segments (a
    // guest does not count those), and after one more ACK if the
    // acknowledgement moved in this batch.
    if (c->holes_dropped > 0) {
      const bool moved = c->ack_due && c->rcv_acked != c->rcv_nxt;
      SendAck(pending_[i], c, now, (moved ? 1 : 0) + c->holes_dropped);
    } else if (c->ack_due) {
      SendAck(pending_[i], c, now);
    }
    c->holes_dropped = 0;
    UpdateTimer(pending_[i], c);
  }
  pending_count_ = 0;
}

void TcpTranslator::AddRxWait(FlowId id, Conn* c) {
  if (c->in_rx_wait) return;
  c->in_rx_wait = true;
  c->wait_next = FlowId{};
  c->wait_prev = rx_wait_tail_;
  if (rx_wait_tail_.valid()) {
    env_.flows->Data<Conn>(rx_wait_tail_)->wait_next = id;
  } else {
    rx_wait_head_ = id;
  }
  rx_wait_tail_ = id;
}

void TcpTranslator::RemoveRxWait(Conn* c) {
  if (!c->in_rx_wait) return;
  if (c->wait_prev.valid()) {
    env_.flows->Data<Conn>(c->wait_prev)->wait_next = c->wait_next;
  } else {
    rx_wait_head_ = c->wait_next;
  }
  if (c->wait_next.valid()) {
    env_.flows->Data<Conn>(c->wait_next)->wait_prev = c->wait_prev;
  } else {
    rx_wait_tail_ = c->wait_prev;
  }
  c->wait_prev = c->wait_next = FlowId{};
  c->in_rx_wait = false;
}

void TcpTranslator::OnRxAvailable() {
  const int64_t now = Now();
  // From the head, until a flow finds the buffers gone again (it goes back
  // to the tail, and the rest wait with it).
  while (rx_wait_head_.valid()) {
    const FlowId id = rx_wait_head_;
    Conn* c = env_.flows->Data<Conn>(id);
    RemoveRxWait(c);
    if (!SendData(id, c, now)) continue;
    UpdateTimer(id, c);
    if (c->in_rx_wait) break;
  }
  writer_->Flush(env_.rx);
}

int64_t TcpTranslator::IdleTimeout(const Conn& c) const {
  if (c.state != Conn::State::kEstablished) return options_.handshake_timeout_ns;
  // Only once the host's side ended: while the guest alone has closed, the
  // host peer may take its time to answer (as a host socket would let it).
  if (c.fin_sent) return options_.half_closed_timeout_ns;  // Sent after the host's end of file.
  return options_.idle_timeout_ns;
}

void TcpTranslator::UpdateTimer(FlowId id, Conn* c) {
  // The idle deadline moves with every segment; the table's timer is only
  // moved earlier here, and a timer that fires early re-arms itself.
  int64_t at = c->last_activity + IdleTimeout(*c);
  if (c->rto_at != 0) at = std::min(at, c->rto_at);
  if (c->wnd_at != 0) at = std::min(at, c->wnd_at);
  if (c->timer_at == 0 || at < c->timer_at) {
    env_.flows->SetTimer(id, at);
    c->timer_at = at;
  }
}

void TcpTranslator::OnTimer(FlowId id, int64_t now_ns) {
  Conn* c = env_.flows->Data<Conn>(id);
  if (c == nullptr) return;
  c->timer_at = 0;
  if (c->rto_at != 0 && now_ns >= c->rto_at) {
    c->rto_at = 0;
    if (!OnRto(id, c, now_ns)) {
      writer_->Flush(env_.rx);
      return;
    }
  }
  if (c->wnd_at != 0 && now_ns >= c->wnd_at) CheckWindow(id, c, now_ns);
  if (now_ns - c->last_activity >= IdleTimeout(*c)) {
    ++stats_.timeouts;
    VUNET_LOG_RATELIMITED(kDebug, "tcp: %s: timed out", env_.flows->Key(id)->ToString());
    if (c->state == Conn::State::kConnecting) {
      ++stats_.connect_failures;
      SendControl(*env_.flows->Key(id), *c, 0, kTcpRst | kTcpAck, 0);
    } else {
      ResetGuest(id, c);
    }
    Close(id, c, true);
    writer_->Flush(env_.rx);
    return;
  }
  UpdateTimer(id, c);
  writer_->Flush(env_.rx);
}

void TcpTranslator::Close(FlowId id, Conn* c, bool reset_host) {
  RemoveRxWait(c);
  if (c->fd.valid()) {
    if (c->watched) env_.watcher->Unwatch(c->fd.get());
    if (reset_host) SetLingerZero(c->fd.get());
    c->fd.reset();
  }
  env_.flows->Remove(id);
  if (!shutting_down_) ++stats_.closed;
}

void TcpTranslator::Shutdown() {
  shutting_down_ = true;
  if (env_.flows != nullptr) {
    env_.flows->ForEach([&](FlowId id) {
      Conn* c = env_.flows->Data<Conn>(id);
      if (c != nullptr) Close(id, c, true);
    });
  }
  pending_count_ = 0;
  for (Listener& l : listeners_) {
    if (!l.fd.valid()) continue;
    env_.watcher->Unwatch(l.fd.get());
    l.fd.reset();
  }
}

std::string TcpTranslator::StatsLine() const {
  const TcpStats& s = stats_;
  return absl::StrFormat(
      "tcp: %d connects (%d failed), %d accepted (%d refused by the guest), %d established, "
      "%d closed; refused: %d table full, %d destination; resets: %d from the guest, %d from "
      "the host, %d for no flow; %d timeouts; bytes %d from the guest, %d to it in %d segments; "
      "%d partial sends, %d out of order (%d taken at the end of their batch); retransmits %d "
      "fast, %d on timer; %d window updates, "
      "%d zero-window probes, %d waits for rx buffers, %d control segments dropped, "
      "%d malformed; SO_PEEK_OFF %s",
      s.connects, s.connect_failures, s.accepted, s.refused_by_guest, s.established, s.closed,
      s.refused_full, s.refused_destination, s.guest_resets, s.host_resets, s.no_flow_resets,
      s.timeouts, s.bytes_from_guest, s.bytes_to_guest, s.frames_to_guest, s.partial_sends,
      s.out_of_order, s.reordered, s.fast_retransmits, s.timer_retransmits, s.window_updates,
      s.zero_window_probes, s.rx_waits, s.control_dropped, s.malformed, peek_off_ ? "on" : "off");
}

}  // namespace vunet::net
