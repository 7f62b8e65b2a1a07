// The TCP translator's segments to the guest, its batches and its timers.

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
  // The RxQueue keeps it behind the data segments committed before it.
  FrameSpec s = SpecFor(key, c);
  s.tcp_seq = seq;
  s.tcp_ack = (flags & kTcpAck) ? c.rcv_nxt : 0;
  s.tcp_flags = flags;
  s.tcp_window = window;
  s.tcp_options = options;
  const absl::StatusOr<size_t> len = BuildFrame(s, absl::MakeSpan(control_), 0);
  if (!len.ok() || !env_.rx->Send(absl::MakeConstSpan(control_, *len)).ok()) {
    ++stats_.control_dropped;
    return false;
  }
  return true;
}

size_t TcpTranslator::SackOption(const Conn& c, uint8_t* out) {
  if (!c.sack_ok || c.ooo.count == 0) return 0;
  TcpReorder::Block blocks[kMaxSackBlocks];
  const size_t n = reorder_->Blocks(c.ooo, blocks, kMaxSackBlocks);
  if (n == 0) return 0;
  out[0] = 1;  // NOP, NOP: the blocks aligned on 4 bytes.
  out[1] = 1;
  out[2] = 5;
  out[3] = static_cast<uint8_t>(2 + 8 * n);
  uint8_t* p = out + 4;
  for (size_t i = 0; i < n; ++i) {
    for (const uint32_t edge : {blocks[i].start, blocks[i].end}) {
      *p++ = static_cast<uint8_t>(edge >> 24);
      *p++ = static_cast<uint8_t>(edge >> 16);
      *p++ = static_cast<uint8_t>(edge >> 8);
      *p++ = static_cast<uint8_t>(edge);
    }
  }
  return 4 + 8 * n;
}

void TcpTranslator::SendAck(FlowId id, Conn* c, int64_t now, int copies) {
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  const uint16_t window = AdvertiseWindow(id, c, space, sndbuf, now);
  const uint32_t seq = c->snd_high + (c->fin_sent ? 1 : 0);
  uint8_t sack[4 + 8 * kMaxSackBlocks];
  const size_t sack_len = SackOption(*c, sack);
  for (int i = 0; i < copies; ++i) {
    if (!SendControl(*env_.flows->Key(id), *c, seq, kTcpAck, window,
                     absl::MakeConstSpan(sack, sack_len))) {
      break;
    }
    if (sack_len > 0) ++stats_.sack_sent;
  }
  c->rcv_acked = c->rcv_nxt;
  c->ack_due = false;
}

size_t TcpTranslator::SynOptions(bool v4, const Conn& c, uint8_t* out) const {
  const uint16_t mss = OurMss(v4, env_.guest->mtu);
  size_t n = 0;
  out[n++] = 2;
  out[n++] = 4;
  out[n++] = static_cast<uint8_t>(mss >> 8);
  out[n++] = static_cast<uint8_t>(mss);
  // Window scaling only if the guest offered it (RFC 7323 2.2): in our SYN,
  // our_ws says we offer it.
  if (c.guest_ws != 0 || c.our_ws != 0) {
    out[n++] = 1;
    out[n++] = 3;
    out[n++] = 3;
    out[n++] = c.our_ws;
  }
  // SACK permitted: in a SYN-ACK if the guest offered it, in our SYN if we
  // offer it.
  if (c.state == Conn::State::kSynSent ? options_.sack : c.sack_ok) {
    out[n++] = 1;
    out[n++] = 1;
    out[n++] = 4;
    out[n++] = 2;
  }
  return n;
}

void TcpTranslator::SendSynAck(FlowId id, Conn* c) {
  uint8_t opts[kSynOptionsLen];
  const size_t len = SynOptions(env_.flows->Key(id)->is_v4(), *c, opts);
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  c->wnd_sent = std::min<uint32_t>(space, 65535);
  SendControl(*env_.flows->Key(id), *c, c->isn, kTcpSyn | kTcpAck,
              static_cast<uint16_t>(c->wnd_sent), absl::MakeConstSpan(opts, len));
  c->rcv_acked = c->rcv_nxt;
}

void TcpTranslator::SendSyn(FlowId id, Conn* c) {
  uint8_t opts[kSynOptionsLen];
  const size_t len = SynOptions(env_.flows->Key(id)->is_v4(), *c, opts);
  uint32_t sndbuf = 0;
  const uint32_t space = FreeSendSpace(*c, &sndbuf);
  c->wnd_sent = std::min<uint32_t>(space, 65535);
  SendControl(*env_.flows->Key(id), *c, c->isn, kTcpSyn, static_cast<uint16_t>(c->wnd_sent),
              absl::MakeConstSpan(opts, len));
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
  if (!len.ok() || !env_.rx->Send(absl::MakeConstSpan(control_, *len)).ok()) {
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
  for (size_t i = 0; i < pending_count_; ++i) {
    Conn* c = env_.flows->Data<Conn>(pending_[i]);
    if (c == nullptr) continue;
    c->in_pending = false;
    c->tx_due = false;
    // Duplicates for the segments dropped past a hole must be pure ACKs of
    // an acknowledgement the guest already had: after our data segments (a
    // guest does not count those), and after one more ACK if the
    // acknowledgement moved in this batch.
    if (c->dups_owed > 0) {
      const bool moved = c->ack_due && c->rcv_acked != c->rcv_nxt;
      SendAck(pending_[i], c, now, (moved ? 1 : 0) + c->dups_owed);
    } else if (c->ack_due) {
      SendAck(pending_[i], c, now);
    }
    c->dups_owed = 0;
    UpdateTimer(pending_[i], c);
  }
  pending_count_ = 0;
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
  if (c == nullptr || c->frozen) return;
  c->timer_at = 0;
  if (c->socket_pending) {
    // A migrated connection whose source socket held its addresses.
    const uint64_t before = stats_.migrated_in;
    RestoreSockets(restore_repair_, now_ns);
    if (stats_.migrated_in != before) {
      VUNET_LOG_RATELIMITED(kInfo,
                            "tcp: migration: %d connections restored once their source let go; "
                            "%d restores in progress",
                            stats_.migrated_in - before, restores_.size());
    }
    return;
  }
  if (c->rto_at != 0 && now_ns >= c->rto_at) {
    c->rto_at = 0;
    if (!OnRto(id, c, now_ns)) {
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
    return;
  }
  UpdateTimer(id, c);
}

}  // namespace vunet::net
