// The TCP translator's host side: socket events, connects and inbound
// connections, host data to the guest, retransmission.

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
#include "net/tcp/tcp.h"
#include "net/tcp/tcp_internal.h"

namespace vunet::net {

using namespace tcp_internal;  // NOLINT(build/namespaces): this translator's own internals.

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
  if (c == nullptr || c->frozen) return;
  const int64_t now = Now();
  if (c->restoring && (events & EPOLLOUT) && ContinueRestore(id, c)) {
    EndRestore(id);
    c = env_.flows->Data<Conn>(id);
    if (c == nullptr) return;
  }
  // Edge-triggered: a shutdown seen now is not reported again.
  if (events & (EPOLLRDHUP | EPOLLHUP)) c->host_rdhup = true;
  if (c->state == Conn::State::kConnecting) {
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ConnectDone(id, c, now);
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
      return;
    }
  }
  if (c->state != Conn::State::kEstablished) return;  // Sent once established.
  c->last_activity = now;
  if ((events & EPOLLOUT) && c->ooo.count > 0) {
    // Held bytes the socket had no room for.
    if (!DeliverHeld(id, c)) return;
    if (c->ack_due) SendAck(id, c, now);
  }
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
    Inbound(l, UniqueFd(fd), peer, len, now);
  }
}

void TcpTranslator::Inbound(const Listener& l, UniqueFd fd, const sockaddr_storage& peer,
                            socklen_t peer_len, int64_t now) {
  auto refuse = [&](const char* why) {
    VUNET_LOG_RATELIMITED(kInfo, "tcp: inbound connection to guest port %d refused: %s",
                          l.guest_port, why);
    SetLingerZero(fd.get());
  };
  const std::optional<Endpoint> from = Endpoint::FromSockaddr(peer, peer_len);
  if (!from.has_value()) return refuse("unknown family");
  const int family = from->addr.family();
  const ForwardRules& rules = env_.forward->rules();
  const InetAddr& guest = env_.forward->guest().address(family);
  if ((family == AF_INET ? !rules.ipv4 : !rules.ipv6) || guest.empty()) {
    return refuse(family == AF_INET ? "the guest has no IPv4 address"
                                    : "the guest has no IPv6 address");
  }
  const InetAddr src = env_.forward->InboundSource(from->addr, family);
  if (src.empty()) return refuse("no gateway address to come from");
  const FlowKey key = FlowKey::Of(FlowProto::kTcp, guest, l.guest_port, src, from->port);
  const absl::StatusOr<FlowId> added = env_.flows->Insert(key);
  if (!added.ok()) {
    if (absl::IsResourceExhausted(added.status())) ++stats_.refused_full;
    return refuse(absl::IsResourceExhausted(added.status()) ? "flow table full" : "flow in use");
  }
  const FlowId id = *added;
  // The host-side key: our socket's end and its peer.
  sockaddr_storage local{};
  socklen_t local_len = sizeof(local);
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &local_len) == 0) {
    const std::optional<Endpoint> ours = Endpoint::FromSockaddr(local, local_len);
    if (ours.has_value() && ours->addr.family() == family) {
      (void)env_.flows->SetHostKey(
          id, FlowKey::Of(FlowProto::kTcp, ours->addr, ours->port, from->addr, from->port));
    }
  }
  Conn* c = env_.flows->Emplace<Conn>(id);
  c->fd = std::move(fd);
  c->state = Conn::State::kSynSent;
  c->guest_mac = env_.forward->guest().mac();
  c->isn = NewIsn();
  c->snd_una = c->isn;
  c->snd_nxt = c->snd_high = c->isn + 1;
  c->our_ws = options_.window_scale;
  c->mss = SegmentSize(family == AF_INET, TcpOptions{}, env_.guest->mtu);
  c->last_activity = now;
  c->rto = options_.rto_initial_ns;
  const int sfd = c->fd.get();
  SetUpConnectionSocket(sfd);
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

bool TcpTranslator::RetransmitHoles(FlowId id, Conn* c, int64_t now) {
  // The holes: what lies below the highest SACKed byte and is not SACKed
  // (RFC 6675's lost segments), from where the last pass stopped. Without
  // blocks (three plain duplicate ACKs), the segment at snd_una.
  uint32_t limit = c->sacked_count > 0 ? c->sacked[c->sacked_count - 1].end
                                       : c->snd_una + SeqMin(c->mss, c->snd_high - c->snd_una);
  limit = SeqMin(limit, c->recovery_point);
  uint32_t from = SeqMax(c->rexmit_next, c->snd_una);
  const FlowKey& key = *env_.flows->Key(id);
  TcpSegments seg;
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  seg.frame = SpecFor(key, *c);
  seg.frame.tcp_flags = kTcpAck;
  seg.frame.tcp_window = AdvertiseWindow(id, c, space, sndbuf, now);
  seg.frame.tcp_ack = c->rcv_nxt;
  seg.mss = c->mss;
  uint8_t next_range = 0;
  bool sent = false;
  while (SeqLt(from, limit)) {
    // Skip what the guest holds; the hole ends where its next range starts.
    while (next_range < c->sacked_count && !SeqGt(c->sacked[next_range].end, from)) ++next_range;
    uint32_t end = limit;
    if (next_range < c->sacked_count) {
      const Conn::Range& r = c->sacked[next_range];
      if (!SeqGt(r.start, from)) {
        from = r.end;
        continue;
      }
      end = SeqMin(end, r.start);
    }
    const uint32_t offset = from - c->snd_una;
    if (peek_off_) {
      SetInt(c->fd.get(), SOL_SOCKET, SO_PEEK_OFF, static_cast<int>(offset));
      seg.skip = 0;
    } else if (offset > writer_->max_skip()) {
      // Too deep to reach with the discard buffer: back to go-back-N.
      c->in_recovery = false;
      c->snd_nxt = c->snd_una;
      return true;
    } else {
      seg.skip = offset;
    }
    seg.seq = from;
    seg.max_bytes = end - from;
    const TcpPeekResult r = writer_->PeekToGuest(env_.rx, c->fd.get(), seg);
    if (peek_off_) {
      SetInt(c->fd.get(), SOL_SOCKET, SO_PEEK_OFF, static_cast<int>(c->snd_nxt - c->snd_una));
    }
    if (r.error != 0 || r.eof) {
      VUNET_LOG_RATELIMITED(kInfo, "tcp: %s: resending a hole: %s", key.ToString(),
                            strerror(r.error != 0 ? r.error : EIO));
      ++stats_.host_resets;
      ResetGuest(id, c);
      Close(id, c, /*reset_host=*/true);
      return false;
    }
    if (r.no_room) {
      ++stats_.rx_waits;
      AddRxWait(id, c);
      break;
    }
    stats_.sack_retransmits += r.frames;
    stats_.bytes_to_guest += r.bytes;
    stats_.frames_to_guest += r.frames;
    from += static_cast<uint32_t>(r.bytes);
    sent |= r.bytes > 0;
    if (r.bytes < seg.max_bytes) break;  // The guest's buffers ran out.
  }
  c->rexmit_next = from;
  if (sent) {
    c->rexmit_mark = c->snd_nxt;
    c->ack_due = false;  // The segments carried it.
    c->rcv_acked = c->rcv_nxt;
    c->rto_at = now + c->rto;
    UpdateTimer(id, c);
  }
  return true;
}

bool TcpTranslator::SendData(FlowId id, Conn* c, int64_t now) {
  c->tx_due = false;
  if (c->state != Conn::State::kEstablished || c->fin_sent) return true;
  if (c->in_recovery && SeqLt(c->rexmit_next, c->recovery_point)) {
    if (!RetransmitHoles(id, c, now)) return false;
    if (c->in_rx_wait) return true;
  }
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
      if (SeqGt(c->snd_nxt, c->snd_high) && c->rtt_start == 0 && !c->in_recovery) {
        c->rtt_start = now;  // Time the first new byte's way to the guest and back.
        c->rtt_seq = c->snd_nxt;
      }
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

void TcpTranslator::SampleRtt(Conn* c, int64_t rtt_ns) {
  const int64_t rtt = std::clamp<int64_t>(rtt_ns / 1000, 1, UINT32_MAX / 8);
  if (c->srtt_us == 0) {
    c->srtt_us = static_cast<uint32_t>(rtt);
    c->rttvar_us = static_cast<uint32_t>(rtt / 2);
    return;
  }
  const int64_t srtt = c->srtt_us;
  const int64_t err = rtt > srtt ? rtt - srtt : srtt - rtt;
  c->rttvar_us = static_cast<uint32_t>(c->rttvar_us + (err - int64_t{c->rttvar_us}) / 4);
  c->srtt_us = static_cast<uint32_t>(std::max<int64_t>(srtt + (rtt - srtt) / 8, 1));
}

int64_t TcpTranslator::CurrentRto(const Conn& c) const {
  if (c.srtt_us == 0) return options_.rto_initial_ns;
  const int64_t rto_ns = (int64_t{c.srtt_us} + 4 * int64_t{c.rttvar_us}) * 1000;
  return std::clamp(rto_ns, options_.rto_min_ns, options_.rto_max_ns);
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
    c->rtt_start = 0;
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
    // After a timeout the guest's SACKs are not to be trusted (it may have
    // dropped what it held, RFC 2018 8): everything goes again.
    c->in_recovery = false;
    c->sacked_count = 0;
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

void TcpTranslator::OnRxStart() {
  const int64_t now = Now();
  // Connections a migration could not bring here end first.
  for (const PendingReset& r : pending_resets_) ResetLater(r.key, r.guest_mac, r.seq, r.ack);
  pending_resets_.clear();
  env_.flows->ForEach([&](FlowId id) {
    const FlowKey* key = env_.flows->Key(id);
    if (key == nullptr || key->proto != FlowProto::kTcp) return;
    Conn* c = env_.flows->Data<Conn>(id);
    if (c == nullptr || c->state != Conn::State::kEstablished || c->frozen || c->socket_pending ||
        !c->fd.valid()) {
      return;
    }
    if (c->snd_una != c->snd_high && !c->fin_sent) {
      c->snd_nxt = c->snd_una;
      if (peek_off_) SetInt(c->fd.get(), SOL_SOCKET, SO_PEEK_OFF, 0);
      c->in_recovery = false;
      c->sacked_count = 0;
      c->retries = 0;
      c->rto = options_.rto_initial_ns;
      c->rto_at = now + c->rto;
    }
    // Data may sit in the socket with no edge to come for it (a socket
    // restored by a migration with its receive queue full; a queue that
    // stopped while the guest's window was full).
    c->tx_due = true;
    c->ack_due = true;
    MarkPending(id, c);
  });
  FlushPending();
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
}

}  // namespace vunet::net
