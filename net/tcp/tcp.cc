#include "net/tcp/tcp.h"

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
#include "base/iov.h"
#include "base/log.h"
#include "net/tcp/tcp_internal.h"

namespace vunet::net {

using namespace tcp_internal;  // NOLINT(build/namespaces): this translator's own internals.

absl::StatusOr<std::unique_ptr<TcpTranslator>> TcpTranslator::Create(
    const TranslatorEnv& env, const TcpTranslatorOptions& options) {
  if (env.flows == nullptr || env.rx == nullptr || env.watcher == nullptr ||
      env.forward == nullptr || env.guest == nullptr) {
    return absl::InvalidArgumentError("TCP translator: flows, rx, watcher, forward, guest needed");
  }
  if (env.first_kind < 64 || env.first_kind > 256 - kKindsPerTranslator) {
    return absl::InvalidArgumentError("TCP translator: first_kind out of range");
  }
  const TcpTranslatorOptions& o = options;
  if (o.handshake_timeout_ns <= 0 || o.idle_timeout_ns <= 0 || o.half_closed_timeout_ns <= 0 ||
      o.rto_initial_ns <= 0 || o.rto_max_ns < o.rto_initial_ns || o.rto_min_ns <= 0 ||
      o.rto_min_ns > o.rto_max_ns || o.max_retransmits < 1 || o.max_retransmits > 100 ||
      o.window_check_initial_ns <= 0 || o.window_check_max_ns < o.window_check_initial_ns) {
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
  absl::StatusOr<std::unique_ptr<TcpRxWriter>> writer = TcpRxWriter::Create(
      {.max_frames = o.rx_max_frames, .discard_size = t->peek_off_ ? 0 : o.discard_buffer});
  if (!writer.ok()) return writer.status();
  t->writer_ = std::move(*writer);
  if (getrandom(&t->isn_state_, sizeof(t->isn_state_), 0) != sizeof(t->isn_state_)) {
    return absl::InternalError(absl::StrFormat("getrandom: %s", strerror(errno)));
  }
  if (o.reorder.bytes > 0) {
    absl::StatusOr<std::unique_ptr<TcpReorder>> reorder = TcpReorder::Create(o.reorder);
    if (!reorder.ok()) return reorder.status();
    t->reorder_ = std::move(*reorder);
  } else {
    VUNET_LOG(kInfo, "tcp: no out-of-order pool: segments past a hole are dropped, and sent again");
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
      scratch_(new uint8_t[kScratchSize]) {}

TcpTranslator::~TcpTranslator() { Shutdown(); }

absl::Status TcpTranslator::Listen(const PortForward& f, uint32_t* bound) {
  const ForwardRules& rules = env_.forward->rules();
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
    } else if (!rules.ipv6) {
      s = ListenOne(AF_INET, reinterpret_cast<sockaddr*>(&sin), sizeof(sin), f, guest_port, true,
                    &skipped);
    } else {
      // One dual-stack socket (IPv6 only with -6); plain IPv4 where the host
      // has no IPv6.
      sin6.sin6_addr = in6addr_any;
      s = ListenOne(AF_INET6, reinterpret_cast<sockaddr*>(&sin6), sizeof(sin6), f, guest_port,
                    !rules.ipv4, &skipped);
      if (absl::IsUnavailable(s) && rules.ipv4) {
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
    if (const std::optional<Endpoint> e = Endpoint::FromSockaddr(bound, bound_len)) {
      bound_port = e->port;
    }
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

void TcpTranslator::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                            const ParsedFrame& parsed) {
  (void)hdr;
  if (parsed.l4 != L4Kind::kTcp) return;  // The dispatcher routes only TCP here.
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

void TcpTranslator::OnBatchEnd() { FlushPending(); }

void TcpTranslator::NewFromGuest(const ParsedFrame& parsed, const FlowKey& key, int64_t now) {
  const uint8_t flags = parsed.tcp.flags;
  if (flags & kTcpRst) return;
  if ((flags & (kTcpSyn | kTcpAck | kTcpFin)) != kTcpSyn) {
    RefuseSegment(parsed);
    return;
  }
  Refusal why;
  const std::optional<Endpoint> dst =
      env_.forward->Outbound(FlowProto::kTcp, Endpoint{key.remote(), key.remote_port}, &why);
  if (!dst.has_value()) {
    ++stats_.refused_destination;
    VUNET_LOG_RATELIMITED(kInfo, "tcp: %s refused: %s", key.ToString(), RefusalName(why));
    RefuseSegment(parsed);
    return;
  }
  sockaddr_storage to;
  const socklen_t to_len = dst->ToSockaddr(&to);
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
  c->sack_ok = options_.sack && parsed.tcp.options.sack_permitted;
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
  SetUpConnectionSocket(fd);
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
  // Migrated here, its socket not restored yet: the guest sends again.
  if (c->socket_pending) return;
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
  c->sack_ok = options_.sack && parsed.tcp.options.sack_permitted;
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
    if (c->rtt_start != 0 && !SeqLt(ack, c->rtt_seq)) {
      SampleRtt(c, now - c->rtt_start);
      c->rtt_start = 0;
    }
    c->rto = CurrentRto(*c);
    c->rto_at = c->snd_una != c->snd_high ? now + c->rto : 0;
    c->tx_due = true;
    if (c->in_recovery && !SeqLt(c->snd_una, c->recovery_point)) c->in_recovery = false;
  }
  c->guest_wnd = wnd;
  if (c->sack_ok) {
    const uint32_t sacked_high =
        c->sacked_count > 0 ? c->sacked[c->sacked_count - 1].end : c->snd_una;
    UpdateScoreboard(c, parsed.tcp.options);
    // In a recovery, a SACK above what was known shows more holes to resend.
    if (c->in_recovery && c->sacked_count > 0 &&
        SeqGt(c->sacked[c->sacked_count - 1].end, sacked_high)) {
      c->tx_due = true;
      // Data sent after our last resend has arrived, and the first hole is
      // still open: that resend was lost too (the link keeps order).
      if (SeqGt(c->rexmit_next, c->snd_una) &&
          SeqGt(c->sacked[c->sacked_count - 1].end, c->rexmit_mark)) {
        c->rexmit_next = c->snd_una;
      }
    }
    // The first SACK that shows a later segment arrived: what lies in the
    // holes before it was lost; resend those alone.
    if (!c->in_recovery && c->sacked_count > 0 && c->snd_una != c->snd_high) {
      ++stats_.recoveries;
      c->rtt_start = 0;  // Karn: an ACK past a resend times nothing.
      c->in_recovery = true;
      c->recovery_point = c->snd_high;
      c->rexmit_next = c->snd_una;
      c->dup_acks = 3;  // No go-back-N on top.
      c->tx_due = true;
    }
  }
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
    // from the socket (with SACK, only the segment at snd_una: the guest
    // holds what follows). Once per loss: further duplicates wait for the
    // ACK to move.
    ++stats_.fast_retransmits;
    c->rtt_start = 0;
    if (c->sack_ok) {
      c->in_recovery = true;
      c->recovery_point = c->snd_high;
      c->rexmit_next = c->snd_una;
    } else {
      c->snd_nxt = c->snd_una;
      if (peek_off_) SetInt(c->fd.get(), SOL_SOCKET, SO_PEEK_OFF, 0);
    }
    c->tx_due = true;
  }
  if (c->in_recovery && acked > 0) c->tx_due = true;  // A partial ACK: the next hole.
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

void TcpTranslator::Hold(Conn* c, absl::Span<const iovec> frame, const ParsedFrame& parsed) {
  const size_t len = parsed.payload_len;
  if (len == 0) return;  // A FIN past a hole: the guest sends it again.
  const uint32_t seq = parsed.tcp.seq;
  // Within the window we offered (the socket will take what we hold).
  if (SeqGt(seq + static_cast<uint32_t>(len), c->rcv_nxt + c->wnd_sent)) {
    ++stats_.ooo_beyond_window;
    return;
  }
  if (reorder_ == nullptr) {  // No pool: the guest sends it again.
    ++stats_.ooo_dropped;
    return;
  }
  switch (reorder_->Insert(&c->ooo, c->rcv_nxt, seq, frame, parsed.payload_offset, len)) {
    case TcpReorder::Result::kHeld:
      ++stats_.ooo_held;
      break;
    case TcpReorder::Result::kDuplicate:
      break;
    case TcpReorder::Result::kNoRoom:
      ++stats_.ooo_dropped;
      VUNET_LOG_RATELIMITED(kInfo, "tcp: out-of-order pool full (%d bytes held): segment dropped",
                            reorder_->stats().bytes_now);
      break;
  }
}

bool TcpTranslator::DeliverHeld(FlowId id, Conn* c) {
  for (;;) {
    size_t n = 0;
    const size_t bytes = reorder_->Contiguous(c->ooo, c->rcv_nxt, send_iov_.get(), kMaxSendIov, &n);
    if (bytes == 0) return true;
    msghdr msg{};
    msg.msg_iov = send_iov_.get();
    msg.msg_iovlen = n;
    ssize_t r;
    do {
      r = sendmsg(c->fd.get(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == ENOMEM) {
        return true;  // EPOLLOUT brings us back.
      }
      VUNET_LOG_RATELIMITED(kInfo, "tcp: %s: send: %s", env_.flows->Key(id)->ToString(),
                            strerror(errno));
      ++stats_.host_resets;
      ResetGuest(id, c);
      Close(id, c, true);
      return false;
    }
    const size_t taken = static_cast<size_t>(r);
    c->rcv_nxt += static_cast<uint32_t>(taken);
    stats_.bytes_from_guest += taken;
    stats_.ooo_delivered += taken;
    reorder_->Advance(&c->ooo, c->rcv_nxt);
    c->ack_due = true;
    MarkPending(id, c);
    if (taken < bytes) return true;  // The socket is full: EPOLLOUT.
  }
}

void TcpTranslator::UpdateScoreboard(Conn* c, const TcpOptions& options) {
  // The ranges as offsets past snd_una, old and new together.
  Conn::Range all[kMaxSacked + 4];
  size_t n = 0;
  const uint32_t una = c->snd_una;
  const uint32_t span = c->snd_high - una;
  for (uint8_t i = 0; i < c->sacked_count; ++i) {
    const uint32_t a = c->sacked[i].start - una;
    const uint32_t b = c->sacked[i].end - una;
    // Acknowledged since: gone, or cut at snd_una.
    if (static_cast<int32_t>(b) <= 0) continue;
    all[n++] = {static_cast<int32_t>(a) < 0 ? 0 : a, b};
  }
  for (uint8_t i = 0; i < options.sack_count && i < 4; ++i) {
    const uint32_t a = options.sack[i].left - una;
    const uint32_t b = options.sack[i].right - una;
    // A duplicate report (D-SACK, RFC 2883) lies at or below snd_una: no news.
    if (static_cast<int32_t>(b) <= 0) continue;
    // Within what we sent, and not reversed: else the guest is confused or
    // hostile, and the block says nothing we can use.
    if (static_cast<int32_t>(a) < 0 || a >= b || b > span) {
      ++stats_.sack_invalid;
      continue;
    }
    all[n++] = {a, b};
  }
  // A handful: an insertion sort (std::sort's unrolled paths trip gcc's -O2
  // array-bounds analysis on so small an array).
  for (size_t i = 1; i < n; ++i) {
    const Conn::Range r = all[i];
    size_t j = i;
    for (; j > 0 && all[j - 1].start > r.start; --j) all[j] = all[j - 1];
    all[j] = r;
  }
  size_t out = 0;
  for (size_t i = 0; i < n; ++i) {
    if (out > 0 && all[i].start <= c->sacked[out - 1].end) {
      c->sacked[out - 1].end = std::max(c->sacked[out - 1].end, all[i].end);
      continue;
    }
    if (out == kMaxSacked) break;  // The lowest matter: they bound the holes.
    c->sacked[out++] = all[i];
  }
  for (size_t i = 0; i < out; ++i) {
    c->sacked[i].start += una;
    c->sacked[i].end += una;
  }
  c->sacked_count = static_cast<uint8_t>(out);
}

void TcpTranslator::ProcessData(FlowId id, Conn* c, absl::Span<const iovec> frame,
                                const ParsedFrame& parsed, int64_t now) {
  const bool fin = parsed.tcp.flags & kTcpFin;
  const size_t len = parsed.payload_len;
  if (len == 0 && !fin) {
    // A bare segment before what we expect: a keepalive probe (RFC 1122
    // 4.2.3.6; Linux sends its last byte's sequence number, no data). It
    // is answered here, the host socket none the wiser.
    if (SeqLt(parsed.tcp.seq, c->rcv_nxt)) {
      c->ack_due = true;
      MarkPending(id, c);
    }
    return;
  }
  if (c->restoring) {
    // The bytes the source had taken go to the new socket first.
    c->ack_due = true;
    MarkPending(id, c);
    return;
  }
  const uint32_t seq = parsed.tcp.seq;
  if (c->guest_fin || SeqGt(seq, c->rcv_nxt)) {
    // After the guest's FIN, or out of order: an ACK of what we expect. Out
    // of order, the segment is held until the hole fills, and owes the guest
    // a duplicate ACK (with SACK blocks for what we hold).
    if (!c->guest_fin) {
      ++stats_.out_of_order;
      Hold(c, frame, parsed);
      if (c->dups_owed < 3) ++c->dups_owed;
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
    size_t n = 0;
    IovSlice(frame.data(), frame.size(), parsed.payload_offset + skip, want, send_iov_.get(), &n,
             kMaxSendIov);
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
  // What this segment joined to what is held goes on at once.
  if (c->ooo.count > 0 && !DeliverHeld(id, c)) return;
  if (fin && c->ooo.count > 0) {
    // A FIN while bytes past it are held (or a hole before them remains):
    // the guest's stream ends here; what it sent beyond is not data.
    reorder_->Clear(&c->ooo);
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

void TcpTranslator::Close(FlowId id, Conn* c, bool reset_host) {
  if (c->restoring) EndRestore(id);
  RemoveRxWait(c);
  if (reorder_ != nullptr) reorder_->Clear(&c->ooo);
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
      "%d partial sends; %d out of order: %d held, %d dropped (pool full), %d past the window, "
      "%d bytes delivered once the hole filled; %d ACKs with SACK; retransmits %d fast, %d into "
      "SACK holes over %d recoveries, %d on timer; %d SACK blocks refused; %d window updates, "
      "%d zero-window probes, %d waits for rx buffers, %d control segments dropped, "
      "%d malformed; SO_PEEK_OFF %s",
      s.connects, s.connect_failures, s.accepted, s.refused_by_guest, s.established, s.closed,
      s.refused_full, s.refused_destination, s.guest_resets, s.host_resets, s.no_flow_resets,
      s.timeouts, s.bytes_from_guest, s.bytes_to_guest, s.frames_to_guest, s.partial_sends,
      s.out_of_order, s.ooo_held, s.ooo_dropped, s.ooo_beyond_window, s.ooo_delivered, s.sack_sent,
      s.fast_retransmits, s.sack_retransmits, s.recoveries, s.timer_retransmits, s.sack_invalid,
      s.window_updates, s.zero_window_probes, s.rx_waits, s.control_dropped, s.malformed,
      peek_off_ ? "on" : "off");
}

}  // namespace vunet::net
