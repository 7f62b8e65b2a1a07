// The TCP translator's internals, shared by its source files (tcp.cc: the
// guest's segments and the flows' lives; tcp_host.cc: the host side;
// tcp_output.cc: segments to the guest, batches and timers). Not part of
// the API: only //net/tcp includes it.

#ifndef VUNET_NET_TCP_TCP_INTERNAL_H_
#define VUNET_NET_TCP_TCP_INTERNAL_H_

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "base/unique_fd.h"
#include "net/flow/flow.h"
#include "net/packet/frame.h"
#include "net/repair/tcp_socket_image.h"
#include "net/tcp/tcp.h"
#include "net/tcp/tcp_reorder.h"

namespace vunet::net {
namespace tcp_internal {

// The most iovec entries one sendmsg takes (UIO_MAXIOV).
inline constexpr size_t kMaxSendIov = 1024;
inline constexpr size_t kScratchSize = 65536;
inline constexpr int kAcceptBatch = 64;
// Our SYN and SYN-ACK options at most: MSS (4 bytes), NOP and window scale
// (4), NOP, NOP and SACK permitted (4).
inline constexpr size_t kSynOptionsLen = 12;
// SACK blocks we send at most (no timestamps: 4 fit beside two NOPs), and
// the guest's SACKed ranges we keep (the lowest: they bound the holes; a
// range a guest reported once and we let go could look like a hole later,
// and be resent for nothing).
inline constexpr size_t kMaxSackBlocks = 4;
inline constexpr size_t kMaxSacked = 10;
// Events of a connection's socket. Edge-triggered: data peeked stays in the
// socket until the guest acknowledges it, so level-triggered EPOLLIN would
// fire for it again and again; new data, new send space and the peer's
// shutdown each wake us once, and every other reason to look again (the
// guest's ACKs, receive buffers, timers) comes from our side.
inline constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

inline bool SeqLt(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }
inline bool SeqGt(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) > 0; }
inline uint32_t SeqMin(uint32_t a, uint32_t b) { return SeqLt(a, b) ? a : b; }
inline uint32_t SeqMax(uint32_t a, uint32_t b) { return SeqGt(a, b) ? a : b; }

inline void SetInt(int fd, int level, int name, int value) {
  (void)setsockopt(fd, level, name, &value, sizeof(value));
}

// A connection's host socket: no Nagle (the guest's stack already chose its
// segment sizes), and keepalives (a host peer that vanished is found, and
// the guest reset, as the guest's own stack would find it: the kernel's
// tcp_keepalive_* settings, two hours by default).
inline void SetUpConnectionSocket(int fd) {
  SetInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  SetInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
}

// Closes with a reset rather than a FIN.
inline void SetLingerZero(int fd) {
  const linger l = {1, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

// The segment size we send the guest: its MSS option (RFC 879's default
// without one), within what our MTU carries; at least 64 bytes, so that a
// guest cannot make us cut data into crumbs.
inline uint16_t SegmentSize(bool v4, const TcpOptions& options, uint32_t mtu) {
  const uint32_t ours = mtu > (v4 ? 40u : 60u) ? mtu - (v4 ? 40u : 60u) : 1u;
  uint32_t mss = options.has_mss ? options.mss : (v4 ? 536u : 1220u);
  mss = std::max<uint32_t>(mss, 64);
  return static_cast<uint16_t>(std::clamp<uint32_t>(std::min(mss, ours), 1, 65535));
}

inline uint16_t OurMss(bool v4, uint32_t mtu) {
  const uint32_t overhead = v4 ? 40 : 60;
  return static_cast<uint16_t>(std::clamp<uint32_t>(mtu > overhead ? mtu - overhead : 1, 1, 65535));
}

// The window below which we watch the socket for send space to open.
inline uint32_t LowWindow(uint32_t sndbuf) { return std::min<uint32_t>(sndbuf / 4, 256 * 1024); }

// What freezing a migrated socket's receive side changed (tcp_migrate.cc),
// to undo if the migration fails: a socket filter dropping everything, or
// a closed window and a shrunk receive buffer.
struct FreezeUndo {
  // A filter keeps the peer's segments out: only the send window is undone.
  // `attached`: the filter is ours to take off (else the repair helper's,
  // which it takes off as repair mode ends).
  bool filtered = false;
  bool attached = false;
  tcp_repair_window window{};
  int rcvbuf = 0;
};

}  // namespace tcp_internal

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
  // Segments past a hole in this batch (up to 3): each owes the guest a
  // duplicate ACK, so that it resends the hole at once (RFC 5681 4.2) rather
  // than after a timeout.
  uint8_t dups_owed = 0;
  // Migration. Source: the socket is in repair mode and its image went to
  // the destination; the flow waits, unwatched, for the outcome. Destination:
  // the socket is not restored yet (its source still holds the connection),
  // or not all its unsent bytes are written: the guest's data waits.
  bool frozen = false;
  bool restoring = false;
  // Destination: no connected socket yet (its source still holds the
  // connection's addresses); fd, if valid, is one in repair mode waiting to
  // connect.
  bool socket_pending = false;
  bool sack_ok = false;      // SACK agreed in the handshake.
  bool in_recovery = false;  // Resending the holes the guest's SACKs show.
  uint8_t sacked_count = 0;  // Ranges in `sacked`.
  uint8_t retries = 0;       // Retransmission timeouts in a row.
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
  int64_t rto = 0;  // The current retransmission timeout.
  // Round-trip time to the guest: the smoothed estimate and its mean
  // deviation (0 before the first sample), and the sample being taken: the
  // time new data up to rtt_seq went out (0: none; a retransmission voids it).
  // Microseconds, to keep the flow within its slot.
  int64_t rtt_start = 0;
  uint32_t rtt_seq = 0;
  uint32_t srtt_us = 0;
  uint32_t rttvar_us = 0;
  int64_t rto_at = 0;        // Retransmission, SYN resend or zero-window probe; 0: none.
  int64_t wnd_at = 0;        // Next look at a low window; 0: none.
  int64_t wnd_interval = 0;  // And the interval after it.
  int64_t timer_at = 0;      // The flow table's timer as armed; 0: none.
  FlowId wait_prev;          // The rx-wait list's links.
  FlowId wait_next;
  // Guest to host: segments past a hole, held.
  TcpReorder::Queue ooo;
  // Host to guest: what the guest's SACKs say it holds beyond snd_una,
  // sorted, merged, within (snd_una, snd_high]; the recovery's end (snd_high
  // when it began) and the next byte it may resend.
  struct Range {
    uint32_t start;
    uint32_t end;
  } sacked[tcp_internal::kMaxSacked] = {};
  uint32_t recovery_point = 0;
  uint32_t rexmit_next = 0;
  // snd_nxt when holes were last resent: a SACK of data sent after that,
  // with the first hole still open, says the resent segment was lost too.
  uint32_t rexmit_mark = 0;
};

// A connection read from the stream, not yet restored.
struct TcpTranslator::Staged {
  FlowKey key;
  MacAddr guest_mac;
  uint8_t flags = 0;
  uint8_t guest_ws = 0;
  uint8_t our_ws = 0;
  uint16_t mss = 0;
  uint32_t isn = 0, snd_una = 0, snd_nxt = 0, snd_high = 0;
  uint32_t rcv_nxt = 0, rcv_acked = 0, guest_wnd = 0, wnd_sent = 0;
  int64_t idle_left_ns = 0;
  TcpSocketImage image;
  int64_t dumped_at_ns = 0;  // CLOCK_REALTIME at the source's dump.
};

// A connection being restored here: its image until the socket holds all
// of it.
struct TcpTranslator::Restore {
  FlowId id;
  TcpSocketImage image;
  size_t unsent_done = 0;  // Bytes of image.unsent the new socket took.
  int64_t give_up_at = 0;  // While the source still holds the addresses.
  bool inbound = false;
  // Its flow's fd is in repair mode, bound, waiting for connect() to find
  // the addresses free: a retry is that call alone, without the helper.
  bool in_repair = false;
};

// Source: a socket frozen for the migration, and how to thaw it.
struct TcpTranslator::Frozen {
  FlowId id;
  tcp_internal::FreezeUndo undo;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TCP_TCP_INTERNAL_H_
