// One TCP connection taken out of a socket and put into another with the
// kernel's repair mode (TCP_REPAIR), for live migration: the peer sees
// nothing, neither a reset nor a lost or repeated byte.
//
// In repair mode a socket's state can be read and written directly: sequence
// numbers, the negotiated options, the windows, the bytes in both queues;
// bind() and connect() just set the addresses (no SYN), and close() drops the
// socket without a FIN or a reset. Entering and leaving repair mode needs
// CAP_NET_ADMIN, which vunet asks of a helper (repair_channel.h); everything
// here works on sockets the caller has already put in the right mode.
//
// On the source, with the connection's peer traffic still flowing:
//   channel.Set(fds, RepairMode::kOn, timeout);
//   for each fd: image = DumpTcpSocket(fd); then close(fd)   // silently gone
// On the destination:
//   UniqueFd fd = NewTcpSocketForRestore(image);
//   channel.Set({fd}, RepairMode::kOn, timeout);
//   RestoreTcpSocket(fd, image);
//   channel.Set({fd}, RepairMode::kOff, timeout);
//   size_t done = FinishTcpRestore(fd, image, 0);             // and on EPOLLOUT
//   while done < image.unsent.size(): done = FinishTcpRestore(fd, image, done);
//
// Same host (source and destination backends side by side): the destination
// cannot restore a connection while the source's socket for it lives
// (connect() in repair mode fails with EADDRNOTAVAIL, reported here as
// kAlreadyExists); the source must close its sockets first.
//
// What the kernel cannot restore: a connection in the middle of its
// handshake or already closed (refused when dumping), urgent data, ECN. A
// half-closed connection is restored: see fin_sent and peer_fin.

#ifndef VUNET_NET_REPAIR_TCP_SOCKET_IMAGE_H_
#define VUNET_NET_REPAIR_TCP_SOCKET_IMAGE_H_

#include <netinet/tcp.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "net/packet/inet.h"

namespace vunet::net {

// Everything needed to recreate one TCP connection.
struct TcpSocketImage {
  // The largest send or receive queue dumped or restored, each: a larger one
  // is refused (kResourceExhausted) rather than allocated.
  static constexpr size_t kMaxQueueBytes = size_t{16} << 20;

  // The socket's domain, AF_INET or AF_INET6. An AF_INET6 socket may have
  // IPv4 endpoints (an IPv4 peer of a dual-stack socket, v4-mapped).
  int family = 0;
  Endpoint local;
  Endpoint remote;

  // Sequence numbers as on the wire. The send queue, in sequence space:
  // [send_seq, +unacked) sent and not yet acknowledged by the peer, then
  // [.., +unsent) not yet sent, then our FIN if fin_sent. The receive queue:
  // [recv_seq, +received) received and acknowledged but not yet read by the
  // application, then the peer's FIN if peer_fin.
  uint32_t send_seq = 0;
  uint32_t recv_seq = 0;
  std::vector<uint8_t> unacked;
  std::vector<uint8_t> unsent;
  std::vector<uint8_t> received;

  // We shut down our side (the socket was in FIN_WAIT1, FIN_WAIT2, CLOSING or
  // LAST_ACK): FinishTcpRestore sends the FIN again, after `unsent`.
  bool fin_sent = false;
  // The peer shut down its side (CLOSE_WAIT, CLOSING or LAST_ACK): the
  // restored socket reads `received`, then end of stream.
  bool peer_fin = false;

  // Options negotiated in the handshake.
  uint32_t mss = 0;  // The peer's MSS (the kernel's mss_clamp).
  bool window_scaling = false;
  uint8_t send_window_scale = 0;  // The peer's shift, applied to windows it sends.
  uint8_t recv_window_scale = 0;  // Ours, applied to windows we send.
  bool sack_permitted = false;
  bool timestamps = false;
  // The socket's current TCP timestamp (TCP_TIMESTAMP), so the peer sees
  // timestamps go on from where they were. Opaque: the kernel's encoding
  // (from Linux 6.7 its low bit says microsecond timestamps).
  uint32_t timestamp = 0;

  // The windows (TCP_REPAIR_WINDOW): what the peer last offered us and when,
  // the largest it ever offered, what we offered it.
  tcp_repair_window window{};

  // The source socket's send buffer (SO_SNDBUF, as the kernel accounts it):
  // the least the restored socket is given if its own cannot hold `unacked`
  // (see RestoreTcpSocket).
  uint32_t send_buffer = 0;

  friend bool operator==(const TcpSocketImage& a, const TcpSocketImage& b);
  friend bool operator!=(const TcpSocketImage& a, const TcpSocketImage& b) { return !(a == b); }

  // One line for logs: endpoints, sequences, queue sizes, options.
  std::string ToString() const;
};

// Reads the connection of `fd`, a TCP socket already in repair mode, leaving
// it as it found it (still in repair mode, nothing read out of its queues).
// Refused: a socket not in repair mode (kFailedPrecondition), not TCP
// (kInvalidArgument), not connected or in its handshake (kFailedPrecondition,
// naming the state), a queue above `max_queue_bytes` (kResourceExhausted;
// at most kMaxQueueBytes whatever is asked). A peer still sending while this
// runs is taken into account (the receive queue is read again until it stops
// changing; kUnavailable if it never does).
absl::StatusOr<TcpSocketImage> DumpTcpSocket(
    int fd, size_t max_queue_bytes = TcpSocketImage::kMaxQueueBytes);

// A new socket to restore `image` into: the image's family, non-blocking,
// close-on-exec, SO_REUSEADDR; an AF_INET6 one also takes IPv4 (v4-mapped)
// addresses. Not yet in repair mode: the caller puts it there (RepairChannel).
absl::StatusOr<UniqueFd> NewTcpSocketForRestore(const TcpSocketImage& image);

// Restores `image` into `fd` (from NewTcpSocketForRestore, now in repair
// mode): sequence numbers, the local address bound, the peer connected (no
// SYN: the socket becomes ESTABLISHED), MSS, window scaling, SACK and
// timestamps, the timestamp clock, the sent-but-unacknowledged bytes and the
// received bytes into their queues, the windows. The not-yet-sent bytes are
// left to FinishTcpRestore, after repair mode is off, so they are sent at
// once rather than after a retransmission timeout. Nothing is acknowledged
// in repair mode, so a new socket's send buffer may be too small for the
// unacknowledged bytes: it is then set (SO_SNDBUF) to hold them, and to at
// least image.send_buffer, which fixes it for the connection's life (the
// kernel no longer tunes it); net.core.wmem_max caps it, and a queue that
// still does not fit fails (kUnavailable, saying so).
//
// Errors: kInvalidArgument for an image that cannot be right (families that
// do not match, no addresses, a window scale above 14, queues above
// kMaxQueueBytes); kFailedPrecondition if `fd` is not in repair mode;
// kAlreadyExists if another socket on this host still holds the same local
// and remote address and port (the source's, when migrating to the same
// host): `fd` is then bound and may be given to RestoreTcpSocket again once
// that socket is gone (a retry costs a connect(), no helper round trip);
// otherwise the failing step with the kernel's errno (e.g. bind: "Cannot
// assign requested address" when this host lacks the local address). After
// any other error `fd` is unusable: close it (in repair mode, so nothing is
// sent).
absl::Status RestoreTcpSocket(int fd, const TcpSocketImage& image);

// After RestoreTcpSocket and repair mode off: sends image.unsent from byte
// `offset` on, as normal data, as far as the socket takes it now (it is
// non-blocking); once all of it is taken, shuts our side down if
// image.fin_sent. Returns how many bytes of image.unsent the socket has
// taken in all (offset plus what this call wrote): call again with that on
// EPOLLOUT until it equals image.unsent.size(). Errors: the socket's
// (kInvalidArgument if offset is past the end).
absl::StatusOr<size_t> FinishTcpRestore(int fd, const TcpSocketImage& image, size_t offset);

}  // namespace vunet::net

#endif  // VUNET_NET_REPAIR_TCP_SOCKET_IMAGE_H_
