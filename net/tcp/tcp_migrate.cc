// The TCP translator's part of a live migration (see tcp.h): each
// established connection travels as its flow's sequence state (guest side)
// and its host socket's repair image (host side, net/repair); the host peer
// sees neither a FIN nor a reset, and the guest sees its stream go on.

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "base/log.h"
#include "net/migrate/flow_fields.h"
#include "net/repair/socket_filter.h"
#include "net/repair/tcp_socket_image.h"
#include "net/tcp/tcp.h"
#include "net/tcp/tcp_internal.h"

namespace vunet::net {

using namespace tcp_internal;  // NOLINT(build/namespaces): this translator's own internals.

namespace {

// The flags byte of a flow record.
enum : uint8_t {
  kGuestFin = 1,
  kHostRdhup = 2,
  kHostEof = 4,
  kFinSent = 8,
  kFinAcked = 16,
  kSackOk = 32,
  kInbound = 64,
};

void WriteImage(StateWriter& w, const TcpSocketImage& im) {
  w.U8(im.family == AF_INET6 ? 6 : 4);
  WriteEndpoint(w, im.local);
  WriteEndpoint(w, im.remote);
  w.U32(im.send_seq);
  w.U32(im.recv_seq);
  w.Blob(im.unacked);
  w.Blob(im.unsent);
  w.Blob(im.received);
  w.U8(im.fin_sent);
  w.U8(im.peer_fin);
  w.U32(im.mss);
  w.U8(im.window_scaling);
  w.U8(im.send_window_scale);
  w.U8(im.recv_window_scale);
  w.U8(im.sack_permitted);
  w.U8(im.timestamps);
  w.U32(im.timestamp);
  w.U32(im.window.snd_wl1);
  w.U32(im.window.snd_wnd);
  w.U32(im.window.max_window);
  w.U32(im.window.rcv_wnd);
  w.U32(im.window.rcv_wup);
  w.U32(im.send_buffer);
}

std::vector<uint8_t> ReadQueue(StateReader& r) {
  absl::Span<const uint8_t> b = r.Blob(TcpSocketImage::kMaxQueueBytes);
  return std::vector<uint8_t>(b.begin(), b.end());
}

TcpSocketImage ReadImage(StateReader& r) {
  TcpSocketImage im;
  const uint8_t version = r.U8();
  im.family = version == 6 ? AF_INET6 : AF_INET;
  if (version != 4 && version != 6) r.Fail(absl::StrFormat("a socket of IP version %d", version));
  im.local = ReadEndpoint(r);
  im.remote = ReadEndpoint(r);
  im.send_seq = r.U32();
  im.recv_seq = r.U32();
  im.unacked = ReadQueue(r);
  im.unsent = ReadQueue(r);
  im.received = ReadQueue(r);
  im.fin_sent = r.Bool();
  im.peer_fin = r.Bool();
  im.mss = r.U32();
  im.window_scaling = r.Bool();
  im.send_window_scale = r.U8();
  im.recv_window_scale = r.U8();
  im.sack_permitted = r.Bool();
  im.timestamps = r.Bool();
  im.timestamp = r.U32();
  im.window.snd_wl1 = r.U32();
  im.window.snd_wnd = r.U32();
  im.window.max_window = r.U32();
  im.window.rcv_wnd = r.U32();
  im.window.rcv_wup = r.U32();
  im.send_buffer = r.U32();
  if (!r.ok()) return im;
  // The kernel checks what it is given too; these are what we rely on.
  if (im.local.addr.empty() || im.remote.addr.empty() || im.local.port == 0 ||
      im.remote.port == 0 || im.local.addr.family() != im.remote.addr.family() ||
      (im.family == AF_INET && im.local.addr.is_v6())) {
    r.Fail("a socket image whose endpoints are missing or do not match");
  } else if (im.send_window_scale > 14 || im.recv_window_scale > 14 || im.mss == 0 ||
             im.mss > 65535) {
    r.Fail("a socket image with a window scale above 14 or an MSS out of range");
  }
  return im;
}

int64_t RealtimeNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Stops a socket in repair mode from taking (and acknowledging) anything
// more from its peer: the kernel goes on receiving in repair mode, and
// what it acknowledged after the dump would never reach the destination.
// A socket filter that drops every segment keeps the peer's data (and its
// window probes) unanswered: it sends them again to the destination. Where
// the kernel refuses an unprivileged process socket filters (some do, with
// kernel.unprivileged_bpf_disabled), vunet-repair attached one as it put the
// socket into repair mode. Without either, the receive window is closed
// instead (a zero window and a receive buffer too small to open it again),
// which a window probe can still open by one segment while the receive
// queue is empty.
//
// Nor may it send anything new: repair mode does not stop transmission, and
// queued bytes the window (or the pacing timer) lets out after the dump are
// ones the image calls unsent. The destination would then get ACKs for bytes
// it has not sent yet, which the kernel drops, window updates and all: with
// its send window closed, each end waits for the other for ever (the QEMU
// migration test's stall). A zero send window, with the filter keeping the
// peer's window updates out, keeps them queued; window probes and
// retransmissions of bytes already sent, all the socket still sends, are
// repeats the peer ignores. (Without a filter the next update opens it.)
// Fills *undo with what Thaw needs; false if it could not be done.
bool FreezeSocket(int fd, FreezeUndo* undo) {
  socklen_t len = sizeof(undo->window);
  undo->attached = AttachDropAllFilter(fd);
  const int attach_error = errno;
  // Where the kernel refuses us socket filters, vunet-repair attached one
  // as it put the socket into repair mode (and takes it off with it).
  undo->filtered = undo->attached || HasSocketFilter(fd);
  if (undo->filtered) {
    // Read once nothing comes in: no ACK moves it meanwhile.
    if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &undo->window, &len) == 0) {
      tcp_repair_window halted = undo->window;
      halted.snd_wnd = 0;
      if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &halted, sizeof(halted)) == 0) {
        return true;
      }
    }
    if (undo->attached) DetachSocketFilter(fd);
    *undo = FreezeUndo{};
    return false;
  }
  VUNET_LOG_RATELIMITED(kWarning,
                        "tcp: migration: a dumped socket can only have its windows closed (a "
                        "socket filter was refused: %s; the repair helper attached none): the "
                        "peer's window updates may still let queued bytes out, and such a "
                        "connection stall at the destination",
                        strerror(attach_error));
  if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &undo->window, &len) != 0) return false;
  len = sizeof(undo->rcvbuf);
  if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &undo->rcvbuf, &len) != 0) return false;
  // rcv_wup + rcv_wnd is the window's right edge: both at the next byte.
  int q = TCP_RECV_QUEUE;
  int seq = 0;
  len = sizeof(seq);
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q)) != 0 ||
      getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, &len) != 0) {
    return false;
  }
  q = TCP_NO_QUEUE;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q));
  const uint32_t rcv_nxt = static_cast<uint32_t>(seq);
  tcp_repair_window closed = undo->window;
  closed.rcv_wup = rcv_nxt;
  closed.rcv_wnd = 0;
  closed.snd_wnd = 0;
  if (SeqGt(closed.snd_wl1, rcv_nxt)) closed.snd_wl1 = rcv_nxt;
  SetInt(fd, SOL_SOCKET, SO_RCVBUF, 1);  // The kernel's minimum.
  return setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &closed, sizeof(closed)) == 0;
}

// Undoes FreezeSocket (a failed migration, the socket still in repair
// mode): the windows as they were, the filter gone.
void ThawSocket(int fd, const FreezeUndo& undo) {
  if (undo.filtered) {
    (void)setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &undo.window, sizeof(undo.window));
    if (undo.attached) DetachSocketFilter(fd);
    return;
  }
  SetInt(fd, SOL_SOCKET, SO_RCVBUF, undo.rcvbuf / 2);  // getsockopt reports it doubled.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &undo.window, sizeof(undo.window));
}

}  // namespace

absl::Status TcpTranslator::SaveState(StateWriter& out, RepairControl* repair) {
  FlushPending();
  const int64_t now = Now();
  const bool can_repair = repair != nullptr && repair->available();
  std::vector<FlowId> movable;
  std::vector<int> fds;
  auto write_reset = [&](FlowId id, const Conn& c) {
    const size_t r = out.Begin(RecordType::kTcpReset);
    WriteKey(out, *env_.flows->Key(id));
    WriteMac(out, c.guest_mac);
    out.U32(c.snd_high + (c.fin_sent ? 1 : 0));
    out.U32(c.rcv_nxt);
    out.End(r);
    ++stats_.migration_resets;
  };
  env_.flows->ForEach([&](FlowId id) {
    Conn* c = env_.flows->Data<Conn>(id);
    if (c == nullptr || c->frozen) return;
    if (can_repair && c->state == Conn::State::kEstablished && c->fd.valid() &&
        !c->socket_pending) {
      movable.push_back(id);
      fds.push_back(c->fd.get());
    } else {
      write_reset(id, *c);
    }
  });
  if (!fds.empty()) {
    if (absl::Status s = repair->SetRepair(fds, RepairMode::kOn); !s.ok()) {
      // The sockets' modes are unknown: none of them can move. They stay
      // here (a failed migration goes on with them); the guest, if it does
      // move, gets resets.
      VUNET_LOG(kWarning, "tcp: migration: the repair helper failed: %s; %d connections reset",
                s.message(), movable.size());
      for (FlowId id : movable) write_reset(id, *env_.flows->Data<Conn>(id));
      return absl::OkStatus();
    }
  }
  std::vector<int> thaw;  // Dumps that failed: out of repair mode again.
  size_t bytes = 0;
  for (size_t i = 0; i < movable.size(); ++i) {
    const FlowId id = movable[i];
    Conn* c = env_.flows->Data<Conn>(id);
    // The dump peeks at the whole receive queue: from its start, and
    // without moving a peek offset.
    if (peek_off_) SetInt(fds[i], SOL_SOCKET, SO_PEEK_OFF, -1);
    FreezeUndo undo;
    const bool frozen = FreezeSocket(fds[i], &undo);
    absl::StatusOr<TcpSocketImage> image =
        frozen ? DumpTcpSocket(fds[i])
               : absl::InternalError("its socket cannot be stopped from receiving");
    // The window as it was before any freeze closed it.
    if (image.ok()) image->window = undo.window;
    const int64_t dumped_at = RealtimeNs();
    if (!image.ok()) {
      VUNET_LOG_RATELIMITED(kWarning, "tcp: migration: %s: %s: reset",
                            env_.flows->Key(id)->ToString(), image.status().message());
      thaw.push_back(fds[i]);
      if (frozen) ThawSocket(fds[i], undo);
      if (peek_off_) {
        SetInt(fds[i], SOL_SOCKET, SO_PEEK_OFF, static_cast<int>(c->snd_nxt - c->snd_una));
      }
      write_reset(id, *c);
      continue;
    }
    const size_t r = out.Begin(RecordType::kTcpFlow);
    WriteKey(out, *env_.flows->Key(id));
    WriteMac(out, c->guest_mac);
    const uint8_t flags = (c->guest_fin ? kGuestFin : 0) | (c->host_rdhup ? kHostRdhup : 0) |
                          (c->host_eof ? kHostEof : 0) | (c->fin_sent ? kFinSent : 0) |
                          (c->fin_acked ? kFinAcked : 0) | (c->sack_ok ? kSackOk : 0) |
                          (env_.flows->Key(id, FlowSide::kHost) != nullptr ? kInbound : 0);
    out.U8(flags);
    out.U8(c->guest_ws);
    out.U8(c->our_ws);
    out.U16(c->mss);
    for (uint32_t v : {c->isn, c->snd_una, c->snd_nxt, c->snd_high, c->rcv_nxt, c->rcv_acked,
                       c->guest_wnd, c->wnd_sent}) {
      out.U32(v);
    }
    WriteTimeLeft(out, c->last_activity + IdleTimeout(*c), now);
    WriteImage(out, *image);
    // When it was dumped (the wall clock: the only one two hosts share), so
    // the destination's TCP timestamps go on from where the source's got to
    // meanwhile (its ACKs after the dump carried later ones; the peer drops
    // segments with older ones, RFC 7323's PAWS).
    out.I64(dumped_at);
    out.End(r);
    frozen_.push_back(std::make_unique<Frozen>(Frozen{.id = id, .undo = undo}));
    bytes += image->unacked.size() + image->unsent.size() + image->received.size();
    // Frozen: nothing more happens to it here unless the migration fails.
    RemoveRxWait(c);
    if (c->watched) {
      env_.watcher->Unwatch(c->fd.get());
      c->watched = false;
    }
    env_.flows->CancelTimer(id);
    c->timer_at = 0;
    c->frozen = true;
    ++stats_.migrated_out;
  }
  if (!thaw.empty()) (void)repair->SetRepair(thaw, RepairMode::kOff);
  VUNET_LOG(kInfo, "tcp: migration: %d connections saved (%d bytes queued), %d to be reset",
            movable.size() - thaw.size(), bytes, stats_.migration_resets);
  return absl::OkStatus();
}

absl::Status TcpTranslator::StageRecord(const RecordHeader& header, StateReader& in) {
  if (staged_.size() + pending_resets_.size() >= env_.flows->capacity()) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("more TCP connections than the %d flows here", env_.flows->capacity()));
  }
  if (header.type == static_cast<uint16_t>(RecordType::kTcpReset)) {
    PendingReset r{.key = ReadKey(in), .guest_mac = ReadMac(in), .seq = in.U32(), .ack = in.U32()};
    if (in.ok() && r.key.proto != FlowProto::kTcp) in.Fail("a TCP reset for a flow not TCP");
    if (absl::Status s = in.Done(); !s.ok()) return s;
    // Kept with the staged: applied (or dropped) with them.
    auto f = std::make_unique<Staged>();
    f->key = r.key;
    f->guest_mac = r.guest_mac;
    f->snd_high = r.seq;
    f->rcv_nxt = r.ack;
    f->mss = 0;  // Marks a reset.
    staged_.push_back(std::move(f));
    return absl::OkStatus();
  }
  if (header.type != static_cast<uint16_t>(RecordType::kTcpFlow)) {
    return Translator::StageRecord(header, in);
  }
  auto f = std::make_unique<Staged>();
  f->key = ReadKey(in);
  f->guest_mac = ReadMac(in);
  f->flags = in.U8();
  f->guest_ws = in.U8();
  f->our_ws = in.U8();
  f->mss = in.U16();
  for (uint32_t* v : {&f->isn, &f->snd_una, &f->snd_nxt, &f->snd_high, &f->rcv_nxt, &f->rcv_acked,
                      &f->guest_wnd, &f->wnd_sent}) {
    *v = in.U32();
  }
  const int64_t now = Now();
  const int64_t deadline = ReadTimeLeft(in, now, options_.idle_timeout_ns);
  f->idle_left_ns = deadline == 0 ? options_.idle_timeout_ns : deadline - now;
  f->image = ReadImage(in);
  f->dumped_at_ns = in.I64();
  if (in.ok()) {
    // What the flow's state says must agree with itself and with the socket:
    // the bytes sent to the guest and not acknowledged are in the socket's
    // receive queue (and our FIN past them).
    const uint32_t in_flight = f->snd_high - f->snd_una;
    const uint64_t queued = f->image.received.size() + (f->image.peer_fin ? 1 : 0);
    if (f->key.proto != FlowProto::kTcp || f->key.local_port == 0 || f->key.remote_port == 0) {
      in.Fail("a TCP flow key that is not TCP, or has port 0");
    } else if (f->flags & ~uint8_t{0x7f}) {
      in.Fail(absl::StrFormat("unknown flow flags 0x%x", f->flags));
    } else if (f->guest_ws > 14 || f->our_ws > 14 || f->mss < 64) {
      in.Fail("a window scale above 14 or an MSS below 64");
    } else if (SeqLt(f->snd_nxt, f->snd_una) || SeqGt(f->snd_nxt, f->snd_high) ||
               in_flight > queued || SeqGt(f->rcv_acked, f->rcv_nxt)) {
      in.Fail("sequence numbers that do not fit each other or the socket's queues");
    }
  }
  if (absl::Status s = in.Done(); !s.ok()) return s;
  staged_.push_back(std::move(f));
  return absl::OkStatus();
}

void TcpTranslator::DiscardStaged() { staged_.clear(); }

void TcpTranslator::ResetLater(const FlowKey& key, const MacAddr& mac, uint32_t seq, uint32_t ack) {
  if (env_.rx->running()) {
    Conn c;
    c.guest_mac = mac;
    c.rcv_nxt = ack;
    SendControl(key, c, seq, kTcpRst | kTcpAck, 0);
    return;
  }
  pending_resets_.push_back({.key = key, .guest_mac = mac, .seq = seq, .ack = ack});
}

void TcpTranslator::ApplyStaged(RepairControl* repair) {
  restore_repair_ = repair;
  const int64_t now = Now();
  size_t resets = 0;
  for (std::unique_ptr<Staged>& f : staged_) {
    const bool reset = f->mss == 0;
    if (reset || env_.flows->Find(f->key).valid()) {
      ResetLater(f->key, f->guest_mac, f->snd_high, f->rcv_nxt);
      ++resets;
      continue;
    }
    absl::StatusOr<FlowId> added = env_.flows->Insert(f->key);
    if (!added.ok()) {
      ResetLater(f->key, f->guest_mac, f->snd_high, f->rcv_nxt);
      ++resets;
      continue;
    }
    Conn* c = env_.flows->Emplace<Conn>(*added);
    c->state = Conn::State::kEstablished;
    c->guest_mac = f->guest_mac;
    c->guest_fin = f->flags & kGuestFin;
    c->host_rdhup = f->flags & kHostRdhup;
    c->host_eof = f->flags & kHostEof;
    c->fin_sent = f->flags & kFinSent;
    c->fin_acked = f->flags & kFinAcked;
    c->sack_ok = f->flags & kSackOk;
    c->guest_ws = f->guest_ws;
    c->our_ws = f->our_ws;
    c->mss = f->mss;
    c->isn = f->isn;
    c->snd_una = f->snd_una;
    c->snd_nxt = f->snd_nxt;
    c->snd_high = f->snd_high;
    c->rcv_nxt = f->rcv_nxt;
    c->rcv_acked = f->rcv_acked;
    c->guest_wnd = f->guest_wnd;
    c->wnd_sent = f->wnd_sent;
    c->rto = options_.rto_initial_ns;
    c->last_activity = now + f->idle_left_ns - IdleTimeout(*c);
    c->restoring = true;
    c->socket_pending = true;
    auto r = std::make_unique<Restore>();
    r->id = *added;
    r->image = std::move(f->image);
    if (r->image.timestamps) {
      // The source's timestamp clock ran on after the dump: as much time as
      // the wall clocks say passed (bounded: two hosts' clocks may
      // disagree), in its units (the low bit set: microseconds).
      const int64_t elapsed_ns =
          std::clamp<int64_t>(RealtimeNs() - f->dumped_at_ns, 0, int64_t{600} * 1'000'000'000);
      const bool usec = r->image.timestamp & 1;
      r->image.timestamp += static_cast<uint32_t>(elapsed_ns / (usec ? 1000 : 1'000'000)) + 1;
      if (usec) r->image.timestamp |= 1;
    }
    r->give_up_at = now + options_.restore_wait_ns;
    r->inbound = f->flags & kInbound;
    restores_.push_back(std::move(r));
  }
  staged_.clear();
  RestoreSockets(repair, now);
  VUNET_LOG(kInfo,
            "tcp: migration: %d connections restored, %d waiting for their addresses, %d reset",
            stats_.migrated_in, restores_.size(), resets);
}

TcpTranslator::Restore* TcpTranslator::FindRestore(FlowId id) {
  for (std::unique_ptr<Restore>& r : restores_) {
    if (r->id == id) return r.get();
  }
  return nullptr;
}

void TcpTranslator::EndRestore(FlowId id) {
  // Marked, not erased: RestoreSockets may be walking the list (a flow it
  // restores can end inside ContinueRestore); it erases the marked ones.
  for (std::unique_ptr<Restore>& r : restores_) {
    if (r->id == id) r->id = FlowId{};
  }
  if (!in_restore_sockets_) {
    std::erase_if(restores_, [](const std::unique_ptr<Restore>& r) { return !r->id.valid(); });
  }
}

void TcpTranslator::RestoreSockets(RepairControl* repair, int64_t now) {
  // The flows without a socket yet.
  std::vector<Restore*> todo;
  for (std::unique_ptr<Restore>& r : restores_) {
    Conn* c = env_.flows->Data<Conn>(r->id);
    if (c != nullptr && c->socket_pending) todo.push_back(r.get());
  }
  if (todo.empty()) return;
  in_restore_sockets_ = true;
  auto fail = [&](Restore* r, absl::string_view why) {
    if (!r->id.valid()) return;  // Ended already.
    Conn* c = env_.flows->Data<Conn>(r->id);
    const FlowKey key = *env_.flows->Key(r->id);
    VUNET_LOG_RATELIMITED(kWarning, "tcp: migration: %s: %s: reset", key.ToString(), why);
    ++stats_.restore_failures;
    ResetLater(key, c->guest_mac, c->snd_high + (c->fin_sent ? 1 : 0), c->rcv_nxt);
    c->fd.reset();  // In repair mode if anywhere: closed without a word to the peer.
    env_.flows->Remove(r->id);
    r->id = FlowId{};
  };
  if (repair == nullptr || !repair->available()) {
    for (Restore* r : todo) fail(r, "no TCP_REPAIR helper is connected");
    in_restore_sockets_ = false;
    std::erase_if(restores_, [](const std::unique_ptr<Restore>& r) { return !r->id.valid(); });
    return;
  }
  // Sockets for those without one, all put in repair mode in one request.
  std::vector<int> fds;
  std::vector<Restore*> made;
  for (Restore* r : todo) {
    if (r->in_repair) continue;
    absl::StatusOr<UniqueFd> fd = NewTcpSocketForRestore(r->image);
    if (!fd.ok()) {
      fail(r, fd.status().message());
      continue;
    }
    fds.push_back(fd->get());
    env_.flows->Data<Conn>(r->id)->fd = std::move(*fd);
    made.push_back(r);
  }
  if (!fds.empty()) {
    if (absl::Status s = repair->SetRepair(fds, RepairMode::kOn); !s.ok()) {
      for (Restore* r : made) fail(r, s.message());
    } else {
      for (Restore* r : made) r->in_repair = true;
    }
  }
  std::vector<int> ready_fds;
  std::vector<Restore*> ready;
  for (Restore* r : todo) {
    if (!r->id.valid() || !r->in_repair) continue;
    Conn* c = env_.flows->Data<Conn>(r->id);
    const absl::Status s = RestoreTcpSocket(c->fd.get(), r->image);
    if (s.ok()) {
      ready_fds.push_back(c->fd.get());
      ready.push_back(r);
    } else if (absl::IsAlreadyExists(s) && now < r->give_up_at) {
      // Its source, on this host, still holds the connection: connect()
      // again soon, and only that, so that the addresses are ours within a
      // moment of the source letting go (the host's kernel answers the
      // peer's segments meanwhile with resets).
      c->timer_at = now + options_.restore_retry_ns;
      env_.flows->SetTimer(r->id, c->timer_at);
    } else {
      fail(r, s.message());
    }
  }
  if (!ready_fds.empty()) {
    if (absl::Status s = repair->SetRepair(ready_fds, RepairMode::kOff); !s.ok()) {
      for (Restore* r : ready) fail(r, s.message());
      ready.clear();
    }
  }
  for (Restore* r : ready) {
    Conn* c = env_.flows->Data<Conn>(r->id);
    const int fd = c->fd.get();
    c->socket_pending = false;
    SetUpConnectionSocket(fd);
    // The bytes the guest has been sent are peeked past.
    if (peek_off_) SetInt(fd, SOL_SOCKET, SO_PEEK_OFF, static_cast<int>(c->snd_nxt - c->snd_una));
    if (r->inbound) {
      (void)env_.flows->SetHostKey(
          r->id, FlowKey::Of(FlowProto::kTcp, r->image.local.addr, r->image.local.port,
                             r->image.remote.addr, r->image.remote.port));
    }
    if (absl::Status s = env_.watcher->Watch(fd, kSocketEvents, Tag(r->id)); !s.ok()) {
      fail(r, s.message());
      continue;
    }
    c->watched = true;
    ++stats_.migrated_in;
    // What its receive queue holds gets no EPOLLIN edge: send it (if the
    // guest's queue runs; else OnRxStart will), and tell the guest our
    // window. Bytes in flight to the guest go again if it does not
    // acknowledge them.
    c->tx_due = true;
    c->ack_due = true;
    MarkPending(r->id, c);
    if (c->snd_una != c->snd_high) c->rto_at = now + c->rto;
    c->timer_at = 0;
    UpdateTimer(r->id, c);
    if (r->id.valid() && ContinueRestore(r->id, c)) r->id = FlowId{};  // Done (or failed).
  }
  in_restore_sockets_ = false;
  std::erase_if(restores_, [](const std::unique_ptr<Restore>& r) { return !r->id.valid(); });
  if (env_.rx->running()) FlushPending();
}

bool TcpTranslator::ContinueRestore(FlowId id, Conn* c) {
  Restore* r = FindRestore(id);
  if (r == nullptr) {
    c->restoring = false;
    return true;
  }
  absl::StatusOr<size_t> done = FinishTcpRestore(c->fd.get(), r->image, r->unsent_done);
  if (!done.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "tcp: migration: %s: %s: reset",
                          env_.flows->Key(id)->ToString(), done.status().message());
    ++stats_.restore_failures;
    ResetLater(*env_.flows->Key(id), c->guest_mac, c->snd_high + (c->fin_sent ? 1 : 0), c->rcv_nxt);
    Close(id, c, true);
    return true;
  }
  r->unsent_done = *done;
  if (r->unsent_done < r->image.unsent.size()) return false;  // More on EPOLLOUT.
  c->restoring = false;
  return true;
}

void TcpTranslator::OnMigratedOut(bool linger) {
  if (linger) return;
  frozen_.clear();
  env_.flows->ForEach([&](FlowId id) {
    Conn* c = env_.flows->Data<Conn>(id);
    if (c == nullptr) return;
    // A frozen socket is in repair mode: closing it sends nothing. The
    // others' guests were told to reset: so are their peers.
    Close(id, c, !c->frozen);
  });
}

void TcpTranslator::OnMigrationAborted(RepairControl* repair) {
  std::vector<FlowId> ids;
  std::vector<int> fds;
  env_.flows->ForEach([&](FlowId id) {
    Conn* c = env_.flows->Data<Conn>(id);
    if (c == nullptr || !c->frozen) return;
    ids.push_back(id);
    fds.push_back(c->fd.get());
  });
  if (ids.empty()) return;
  for (const std::unique_ptr<Frozen>& f : frozen_) {
    if (const Conn* c = env_.flows->Data<Conn>(f->id); c != nullptr && c->frozen) {
      ThawSocket(c->fd.get(), f->undo);
    }
  }
  frozen_.clear();
  absl::Status s = repair != nullptr ? repair->SetRepair(fds, RepairMode::kOff)
                                     : absl::FailedPreconditionError("no repair helper");
  const int64_t now = Now();
  for (FlowId id : ids) {
    Conn* c = env_.flows->Data<Conn>(id);
    c->frozen = false;
    if (!s.ok() || !env_.watcher->Watch(c->fd.get(), kSocketEvents, Tag(id)).ok()) {
      VUNET_LOG_RATELIMITED(kWarning, "tcp: %s cannot resume after the migration failed: %s",
                            env_.flows->Key(id)->ToString(), s.message());
      ResetGuest(id, c);
      Close(id, c, true);
      continue;
    }
    c->watched = true;
    if (peek_off_)
      SetInt(c->fd.get(), SOL_SOCKET, SO_PEEK_OFF, static_cast<int>(c->snd_nxt - c->snd_una));
    c->last_activity = now;
    c->tx_due = true;
    c->ack_due = true;
    MarkPending(id, c);
    UpdateTimer(id, c);
  }
  VUNET_LOG(kInfo, "tcp: the migration failed: %d connections resume here", ids.size());
  FlushPending();
}

}  // namespace vunet::net
