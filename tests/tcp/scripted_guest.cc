#include "tests/tcp/scripted_guest.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "net/packet/checksum.h"

namespace vunet::tcp_testing {
namespace {

constexpr uint8_t kSynAck = net::kTcpSyn | net::kTcpAck;

std::vector<uint8_t> SynOptions(uint16_t mss, uint8_t ws) {
  std::vector<uint8_t> o = {2, 4, static_cast<uint8_t>(mss >> 8), static_cast<uint8_t>(mss)};
  if (ws != 0xff) o.insert(o.end(), {1, 3, 3, ws});
  return o;
}

}  // namespace

Endpoint Endpoint::V4(const char* addr, uint16_t port) {
  Endpoint e;
  inet_pton(AF_INET, addr, &e.addr4);
  e.port = port;
  return e;
}

Endpoint Endpoint::V6(const char* addr, uint16_t port) {
  Endpoint e;
  e.v6 = true;
  inet_pton(AF_INET6, addr, &e.addr6);
  e.port = port;
  return e;
}

ScriptedGuest::ScriptedGuest(vu_frontend::Frontend* frontend, const GuestAddress& address)
    : frontend_(frontend), address_(address) {}

std::vector<uint8_t> ScriptedGuest::Build(const Endpoint& remote, uint16_t local_port, uint32_t seq,
                                          uint32_t ack, uint8_t flags, uint16_t window,
                                          absl::Span<const uint8_t> payload,
                                          absl::Span<const uint8_t> options) const {
  net::FrameSpec s;
  s.src_mac = address_.guest_mac;
  s.dst_mac = address_.gateway_mac;
  if (remote.v6) {
    s.ipv6 = true;
    s.src6 = address_.guest6;
    s.dst6 = remote.addr6;
  } else {
    s.src4 = address_.guest4;
    s.dst4 = remote.addr4;
  }
  s.protocol = IPPROTO_TCP;
  s.src_port = local_port;
  s.dst_port = remote.port;
  s.tcp_seq = seq;
  s.tcp_ack = ack;
  s.tcp_flags = flags;
  s.tcp_window = window;
  s.tcp_options = options;
  const size_t hlen = net::FrameHeadersLen(s);
  std::vector<uint8_t> f(hlen + payload.size());
  if (!payload.empty()) std::memcpy(f.data() + hlen, payload.data(), payload.size());
  (void)net::BuildFrame(s, absl::MakeSpan(f), payload.size());
  return f;
}

bool ScriptedGuest::tso(bool v6) const {
  return tso_segment > 0 &&
         frontend_->has_feature(v6 ? virtio::kVirtioNetFHostTso6 : virtio::kVirtioNetFHostTso4);
}

absl::Status ScriptedGuest::Send(const std::vector<std::vector<uint8_t>>& frames,
                                 uint16_t gso_size) {
  std::vector<vu_frontend::TxFrame> tx;
  for (const std::vector<uint8_t>& f : frames) {
    vu_frontend::TxFrame t{.header = {}, .data = f};
    if (gso_size != 0) {
      if (std::optional<virtio::VirtioNetHdr> h = vu_frontend::OffloadHeader(f, gso_size)) {
        t.header = *h;
        if (h->gso_type != virtio::kVirtioNetHdrGsoNone) ++gso_sent_;
      }
    }
    tx.push_back(t);
  }
  absl::Span<const vu_frontend::TxFrame> rest(tx);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!rest.empty()) {
    absl::StatusOr<size_t> sent = frontend_->SendFramesWithHeaders(rest);
    if (!sent.ok()) return sent.status();
    rest.remove_prefix(*sent);
    if (rest.empty()) break;
    if (absl::Now() > deadline) return absl::DeadlineExceededError("no transmit room for 10 s");
    absl::StatusOr<size_t> back = frontend_->WaitTx(absl::Milliseconds(50));
    if (!back.ok()) return back.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> ScriptedGuest::Poll(absl::Duration timeout) {
  return frontend_->ReceiveFrames(
      4096, timeout, [&](const vu_frontend::ReceivedFrame& f) { Deliver(f.data, f.header); });
}

void ScriptedGuest::Deliver(absl::Span<const uint8_t> received,
                            const virtio::VirtioNetHdr& header) {
  if (vu_frontend::CheckHeader(header, received, frontend_->features(),
                               vu_frontend::Direction::kToGuest) !=
      vu_frontend::HeaderProblem::kNone) {
    ++bad_headers_;
    return;
  }
  const bool data_valid = (header.flags & virtio::kVirtioNetHdrFDataValid) != 0;
  std::vector<uint8_t> frame(received.begin(), received.end());
  if (header.flags & virtio::kVirtioNetHdrFNeedsCsum) {
    // The checksum from csum_start on, into the field (CheckHeader bounded
    // both), as a guest's stack finishes it.
    const size_t start = header.csum_start;
    const uint16_t c = net::InternetChecksum(frame.data() + start, frame.size() - start);
    frame[start + header.csum_offset] = static_cast<uint8_t>(c >> 8);
    frame[start + header.csum_offset + 1] = static_cast<uint8_t>(c);
  }
  if (header.gso_type != virtio::kVirtioNetHdrGsoNone) ++gso_received_;
  largest_received_ = std::max(largest_received_, frame.size());
  iovec iov = {frame.data(), frame.size()};
  net::ParsedFrame p;
  if (!net::ParseFrame({&iov, 1}, &p).ok() || p.l4 != net::L4Kind::kTcp) return;
  Segment s;
  s.remote.v6 = p.l3 == net::L3Kind::kIpv6;
  s.remote.addr4 = p.ip.src4;
  s.remote.addr6 = p.ip.src6;
  s.remote.port = p.src_port;
  s.local_port = p.dst_port;
  s.seq = p.tcp.seq;
  s.ack = p.tcp.ack;
  s.flags = p.tcp.flags;
  s.window = p.tcp.window;
  s.options = p.tcp.options;
  s.payload.assign(frame.begin() + p.payload_offset,
                   frame.begin() + p.payload_offset + p.payload_len);
  s.checksum_ok =
      data_valid || (s.remote.v6 ? net::L4ChecksumV6(p.ip.src6, p.ip.dst6, IPPROTO_TCP, {&iov, 1},
                                                     p.l4_offset, p.l4_len)
                                 : net::L4ChecksumV4(p.ip.src4, p.ip.dst4, IPPROTO_TCP, {&iov, 1},
                                                     p.l4_offset, p.l4_len)) == 0;
  ++segments_;
  if (!s.checksum_ok) {
    ++bad_checksums_;
    return;  // As a guest's stack would.
  }
  if (drop && drop(s)) {
    ++dropped_;
    return;
  }
  auto it = connections_.find(RouteKey(s.local_port, s.remote.port));
  if (it != connections_.end()) {
    it->second->OnSegment(s);
  } else {
    unclaimed_.push_back(std::move(s));
  }
}

std::optional<Segment> ScriptedGuest::TakeSyn(uint16_t local_port) {
  for (auto it = unclaimed_.begin(); it != unclaimed_.end(); ++it) {
    if (it->local_port == local_port && (it->flags & kSynAck) == net::kTcpSyn) {
      Segment s = std::move(*it);
      unclaimed_.erase(it);
      return s;
    }
  }
  return std::nullopt;
}

void ScriptedGuest::Register(GuestTcp* c) {
  connections_[RouteKey(c->local_port(), c->remote().port)] = c;
}

void ScriptedGuest::Unregister(GuestTcp* c) {
  auto it = connections_.find(RouteKey(c->local_port(), c->remote().port));
  if (it != connections_.end() && it->second == c) connections_.erase(it);
}

// ---------------------------------------------------------------------------

GuestTcp::GuestTcp(ScriptedGuest* guest, const Endpoint& remote, uint16_t local_port,
                   const Options& options)
    : guest_(guest), remote_(remote), local_port_(local_port), options_(options) {
  isn_ = options.isn != 0 ? options.isn : 0x1000'0000u + uint32_t{local_port} * 104729u;
  progress_at_ = absl::Now();
}

GuestTcp::~GuestTcp() {
  if (registered_) guest_->Unregister(this);
}

std::unique_ptr<GuestTcp> GuestTcp::Open(ScriptedGuest* guest, const Endpoint& remote,
                                         uint16_t local_port, const Options& options) {
  std::unique_ptr<GuestTcp> c(new GuestTcp(guest, remote, local_port, options));
  guest->Register(c.get());
  c->registered_ = true;
  c->state_ = State::kSynSent;
  const std::vector<uint8_t> opts = SynOptions(options.mss, options.window_scale);
  (void)guest->Send({c->Frame(c->isn_, net::kTcpSyn, {}, opts)});
  ++c->stats_.segments_sent;
  return c;
}

absl::StatusOr<std::unique_ptr<GuestTcp>> GuestTcp::Connect(ScriptedGuest* guest,
                                                            const Endpoint& remote,
                                                            uint16_t local_port,
                                                            const Options& options,
                                                            absl::Duration timeout) {
  std::unique_ptr<GuestTcp> c = Open(guest, remote, local_port, options);
  absl::Status s = c->Loop(timeout, [&] { return c->established(); });
  if (!s.ok()) {
    if (c->reset_) return absl::UnavailableError("connection refused (RST)");
    return s;
  }
  return c;
}

absl::StatusOr<std::unique_ptr<GuestTcp>> GuestTcp::Accept(ScriptedGuest* guest,
                                                           uint16_t local_port,
                                                           const Options& options,
                                                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::optional<Segment> syn = guest->TakeSyn(local_port);
  while (!syn.has_value()) {
    if (absl::Now() > deadline) return absl::DeadlineExceededError("no SYN");
    absl::StatusOr<size_t> n = guest->Poll(absl::Milliseconds(20));
    if (!n.ok()) return n.status();
    syn = guest->TakeSyn(local_port);
  }
  std::unique_ptr<GuestTcp> c(new GuestTcp(guest, syn->remote, local_port, options));
  guest->Register(c.get());
  c->registered_ = true;
  c->rcv_nxt_ = syn->seq + 1;
  c->peer_options_ = syn->options;
  c->peer_mss_ = syn->options.has_mss ? syn->options.mss : 536;
  if (options.window_scale != 0xff && syn->options.has_window_scale) {
    c->our_ws_ = options.window_scale;
    c->peer_ws_ = syn->options.window_scale;
  }
  c->peer_wnd_ = syn->window;
  c->state_ = State::kSynReceived;
  const std::vector<uint8_t> opts =
      SynOptions(options.mss, syn->options.has_window_scale ? options.window_scale : 0xff);
  if (absl::Status s = guest->Send({c->Frame(c->isn_, kSynAck, {}, opts)}); !s.ok()) return s;
  if (absl::Status s =
          c->Loop(absl::Now() < deadline ? deadline - absl::Now() : absl::ZeroDuration(),
                  [&] { return c->established(); });
      !s.ok()) {
    return s;
  }
  return c;
}

absl::Status GuestTcp::Refuse(ScriptedGuest* guest, const Segment& syn) {
  return guest->Send(
      {guest->Build(syn.remote, syn.local_port, 0, syn.seq + 1, net::kTcpRst | net::kTcpAck, 0)});
}

std::vector<uint8_t> GuestTcp::Frame(uint32_t seq, uint8_t flags, absl::Span<const uint8_t> payload,
                                     absl::Span<const uint8_t> options) {
  return guest_->Build(remote_, local_port_, seq, (flags & net::kTcpAck) ? rcv_nxt_ : 0, flags,
                       (flags & net::kTcpSyn)
                           ? static_cast<uint16_t>(std::min<uint32_t>(options_.window, 65535))
                           : WindowField(),
                       payload, options);
}

uint16_t GuestTcp::WindowField() const {
  return static_cast<uint16_t>(std::min<uint32_t>(options_.window >> our_ws_, 65535));
}

void GuestTcp::Queue(absl::Span<const uint8_t> data) {
  out_.insert(out_.end(), data.begin(), data.end());
}

void GuestTcp::QueueFin() { fin_queued_ = true; }

bool GuestTcp::all_acked() const { return snd_una_ == out_.size() && (!fin_queued_ || fin_acked_); }

std::vector<uint8_t> GuestTcp::TakeReceived() { return std::exchange(received_, {}); }

void GuestTcp::OnSegment(const Segment& s) {
  if (state_ == State::kClosed) return;
  const absl::Time now = absl::Now();
  if (s.flags & net::kTcpRst) {
    reset_ = true;
    state_ = State::kClosed;
    return;
  }
  if (state_ == State::kSynSent) {
    if ((s.flags & kSynAck) != kSynAck || s.ack != isn_ + 1) return;
    rcv_nxt_ = s.seq + 1;
    peer_options_ = s.options;
    peer_mss_ = s.options.has_mss ? s.options.mss : 536;
    if (options_.window_scale != 0xff && s.options.has_window_scale) {
      our_ws_ = options_.window_scale;
      peer_ws_ = s.options.window_scale;
    }
    peer_wnd_ = s.window;
    last_wnd_ = peer_wnd_;
    state_ = State::kEstablished;
    ack_owed_ = true;
    progress_at_ = now;
    return;
  }
  if (state_ == State::kSynReceived) {
    if (s.flags & net::kTcpSyn) return;  // A retransmitted SYN: Pump resends the SYN-ACK.
    if (!(s.flags & net::kTcpAck) || s.ack != isn_ + 1) return;
    state_ = State::kEstablished;
    progress_at_ = now;
  }
  if (s.flags & net::kTcpSyn) {  // A SYN-ACK again: our ACK was lost.
    ack_owed_ = true;
    return;
  }
  if (s.flags & net::kTcpAck) {
    const int64_t delta = static_cast<int32_t>(s.ack - Seq(snd_una_));
    const uint32_t wnd = uint32_t{s.window} << peer_ws_;
    if (delta > 0) {
      uint64_t una = snd_una_ + static_cast<uint64_t>(delta);
      if (fin_sent_ && una == out_.size() + 1) {
        fin_acked_ = true;
        una = out_.size();
      }
      if (una <= snd_max_) {
        snd_una_ = una;
        snd_nxt_ = std::max(snd_nxt_, snd_una_);
        dup_acks_ = 0;
        progress_at_ = now;
      }
    } else if (delta == 0 && s.payload.empty() && !(s.flags & net::kTcpFin) &&
               snd_max_ > snd_una_ && wnd == last_wnd_ && ++dup_acks_ == 3) {
      ++stats_.fast_retransmits;
      snd_nxt_ = snd_una_;
    }
    if (peer_wnd_ == 0 && wnd > 0) progress_at_ = now;  // The window opened: restart the timer.
    peer_wnd_ = wnd;
    last_wnd_ = wnd;
  }
  const bool fin = s.flags & net::kTcpFin;
  if (s.payload.empty() && !fin) return;
  if (fin_received_) {
    ++dup_acks_owed_;
    return;
  }
  const int32_t ahead = static_cast<int32_t>(s.seq - rcv_nxt_);
  if (ahead > 0) {
    ++stats_.out_of_order;
    ++dup_acks_owed_;
    return;
  }
  const size_t skip = static_cast<size_t>(-static_cast<int64_t>(ahead));
  if (skip > s.payload.size() || (skip == s.payload.size() && !fin)) {
    ++stats_.duplicates;
    ++dup_acks_owed_;
    return;
  }
  received_.insert(received_.end(), s.payload.begin() + skip, s.payload.end());
  rcv_nxt_ += static_cast<uint32_t>(s.payload.size() - skip);
  if (fin) {
    fin_received_ = true;
    rcv_nxt_ += 1;
  }
  ack_owed_ = true;
}

absl::Status GuestTcp::Pump() {
  if (state_ == State::kClosed) return absl::OkStatus();
  const absl::Time now = absl::Now();
  std::vector<std::vector<uint8_t>> frames;
  if (state_ == State::kSynSent || state_ == State::kSynReceived) {
    if (now - progress_at_ > options_.rto) {
      const bool synack = state_ == State::kSynReceived;
      const std::vector<uint8_t> opts =
          SynOptions(options_.mss, synack && our_ws_ == 0 ? 0xff : options_.window_scale);
      frames.push_back(Frame(isn_, synack ? kSynAck : net::kTcpSyn, {}, opts));
      progress_at_ = now;
      ++stats_.timeouts;
    }
  } else {
    // Timer: go back to the first unacknowledged byte, or probe a zero window.
    const bool outstanding = snd_max_ > snd_una_ || (fin_sent_ && !fin_acked_);
    const bool waiting = snd_una_ < out_.size() || (fin_queued_ && !fin_acked_);
    if (waiting && now - progress_at_ > options_.rto) {
      if (peer_wnd_ == 0 && snd_una_ < out_.size()) {
        frames.push_back(Frame(Seq(snd_una_), net::kTcpAck, {out_.data() + snd_una_, 1}));
        ++stats_.probes;
      } else if (outstanding) {
        snd_nxt_ = snd_una_;
        fin_sent_ = false;
        ++stats_.timeouts;
      }
      progress_at_ = now;
    }
    // Duplicate ACKs first (pure, so the peer counts them), then data.
    for (int i = 0; i < std::min(dup_acks_owed_, 16); ++i) {
      frames.push_back(Frame(Seq(snd_max_) + (fin_sent_ ? 1 : 0), net::kTcpAck));
    }
    if (dup_acks_owed_ > 0) ack_owed_ = false;
    dup_acks_owed_ = 0;
    while (snd_nxt_ < out_.size() && frames.size() < 256) {
      const uint64_t in_flight = snd_nxt_ - snd_una_;
      if (in_flight >= peer_wnd_) break;
      const uint64_t segment = guest_->tso(remote_.v6) ? guest_->tso_segment : peer_mss_;
      const size_t len =
          std::min<uint64_t>({segment, out_.size() - snd_nxt_, uint64_t{peer_wnd_} - in_flight});
      if (snd_max_ <= snd_una_) progress_at_ = now;  // The timer starts with the first in flight.
      const bool last = snd_nxt_ + len == out_.size();
      frames.push_back(Frame(Seq(snd_nxt_), net::kTcpAck | (last ? net::kTcpPsh : 0),
                             {out_.data() + snd_nxt_, len}));
      stats_.bytes_sent += len;
      snd_nxt_ += len;
      snd_max_ = std::max(snd_max_, snd_nxt_);
      ack_owed_ = false;
    }
    if (fin_queued_ && !fin_sent_ && snd_nxt_ == out_.size()) {
      if (snd_max_ <= snd_una_) progress_at_ = now;
      frames.push_back(Frame(Seq(out_.size()), net::kTcpFin | net::kTcpAck));
      fin_sent_ = true;
      ack_owed_ = false;
    }
  }
  if (ack_owed_) {
    frames.push_back(Frame(Seq(snd_max_) + (fin_sent_ ? 1 : 0), net::kTcpAck));
    ack_owed_ = false;
  }
  if (frames.empty()) return absl::OkStatus();
  stats_.segments_sent += frames.size();
  return guest_->Send(frames, guest_->tso(remote_.v6) ? peer_mss_ : 0);
}

absl::Status GuestTcp::PollAndPump(absl::Duration timeout) {
  if (absl::Status s = Pump(); !s.ok()) return s;
  absl::StatusOr<size_t> n = guest_->Poll(timeout);
  if (!n.ok()) return n.status();
  return Pump();
}

absl::Status GuestTcp::Loop(absl::Duration timeout, const std::function<bool()>& done) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (done()) return absl::OkStatus();
    if (reset_) return absl::UnavailableError("connection reset");
    const absl::Time now = absl::Now();
    if (now > deadline) return absl::DeadlineExceededError("timed out");
    if (absl::Status s = PollAndPump(std::min(absl::Milliseconds(10), deadline - now)); !s.ok()) {
      return s;
    }
  }
}

absl::Status GuestTcp::Write(absl::Span<const uint8_t> data, absl::Duration timeout) {
  Queue(data);
  return Loop(timeout, [&] { return all_acked(); });
}

absl::StatusOr<std::vector<uint8_t>> GuestTcp::Read(size_t n, absl::Duration timeout) {
  if (absl::Status s = Loop(timeout, [&] { return received_.size() >= n || fin_received_; });
      !s.ok()) {
    return s;
  }
  const size_t take = std::min(n, received_.size());
  std::vector<uint8_t> out(received_.begin(), received_.begin() + take);
  received_.erase(received_.begin(), received_.begin() + take);
  return out;
}

absl::Status GuestTcp::Shutdown(absl::Duration timeout) {
  QueueFin();
  return Loop(timeout, [&] { return all_acked(); });
}

absl::Status GuestTcp::WaitFin(absl::Duration timeout) {
  return Loop(timeout, [&] { return fin_received_; });
}

absl::Status GuestTcp::WaitReset(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!reset_) {
    if (absl::Now() > deadline) return absl::DeadlineExceededError("no RST");
    if (absl::Status s = PollAndPump(absl::Milliseconds(10)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status GuestTcp::Reset() {
  state_ = State::kClosed;
  return guest_->Send({Frame(Seq(snd_max_), net::kTcpRst | net::kTcpAck)});
}

}  // namespace vunet::tcp_testing
