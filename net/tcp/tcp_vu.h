// The TCP translator's receive path: data a host socket holds, peeked
// (MSG_PEEK) by the kernel straight into the guest's receive buffers, with
// Ethernet/IP/TCP headers written in front of each segment.
//
// One PeekToGuest call serves one flow: it reserves receive buffers for up to
// `max_frames` segments of at most `mss` payload bytes in the RxQueue (room
// for the virtio-net header and the frame's headers left in front of each;
// to a guest that negotiated GUEST_TSO4/6 for the flow's IP version, of up
// to 64 KiB of IP packet each, see below),
// builds one iovec array over the payload areas of all of them (skipping each
// header area), peeks once, writes the headers (BuildFrame) of the segments
// the data filled and commits them; reservations the data did not reach go
// back. Nothing is published here: the owner's loop flushes the RxQueue once
// per iteration. The data stays in the socket; the caller discards it once
// the guest acknowledges it.
//
// Where the kernel has SO_PEEK_OFF for TCP (Linux 6.9 on), the socket's peek
// offset is where the peek starts and the caller keeps it at the first byte
// not yet sent; otherwise the caller passes `skip`, the bytes already sent,
// and the peek reads them again into a discard buffer first.
//
// Segmentation offload: to a guest with GUEST_TSO4 (IPv4) or GUEST_TSO6
// (IPv6), a segment carries as much as its receive buffers hold (mergeable
// or not), the guest's window allows and one IP packet of 64 KiB carries
// (65535 bytes with its header, IPv6 too, so that the frame fits the
// receive buffers a driver without mergeable buffers posts);
// one longer than `mss` goes with gso_type TCPV4 or TCPV6, gso_size `mss`
// (the MSS the guest announced), hdr_len the headers' length, and its
// checksum partial (NEEDS_CSUM, csum_start at the TCP header, csum_offset at
// its checksum field, the pseudo-header's sum in the field), so that the
// guest's stack takes it as one, as from its own GRO. Shorter ones go as
// without the offload (DATA_VALID with GUEST_CSUM). Building a 64 KiB
// segment costs what a short one does: headers only, the payload is never
// read.
//
// Every pool is sized at Create; a call allocates nothing.
//
//   absl::StatusOr<std::unique_ptr<TcpRxWriter>> w = TcpRxWriter::Create({});
//   TcpSegments seg{.frame = spec, .seq = snd_nxt, .mss = 1460, .max_bytes = room};
//   TcpPeekResult r = (*w)->PeekToGuest(&rx_queue, fd, seg);

#ifndef VUNET_NET_TCP_VU_H_
#define VUNET_NET_TCP_VU_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "net/packet/frame.h"
#include "vu/rx_queue.h"

namespace vunet::net {

struct TcpRxPools {
  // Segments per peek (at most the RxQueue's reservations).
  size_t max_frames = 64;
  size_t discard_size = 0;  // Bytes of the discard buffer (0: SO_PEEK_OFF in use).
};

// The segments of one peek.
struct TcpSegments {
  // Addresses, ports, ack, window and flags (ACK; PSH is added on the last
  // segment). protocol must be IPPROTO_TCP, tcp_options empty; tcp_seq and
  // l4_checksum are set here.
  FrameSpec frame;
  uint32_t seq = 0;  // Of the first byte peeked.
  // The guest's MSS: payload bytes per segment, at most; with GUEST_TSO4/6,
  // the gso_size of longer segments.
  size_t mss = 536;
  size_t max_bytes = 0;  // Bytes to peek, at most (the guest's window).
  size_t skip = 0;       // Bytes before them in the socket (without SO_PEEK_OFF).
};

struct TcpPeekResult {
  size_t bytes = 0;   // Data written into the guest's buffers.
  size_t frames = 0;  // Segments written.
  // The peek found no more data and the peer shut down its side: recvmsg
  // returned 0 (SO_PEEK_OFF), or only the `skip` bytes with nothing after.
  bool eof = false;
  bool no_new_data = false;  // Only `skip` bytes came back (or EAGAIN).
  bool no_room = false;      // Not even one segment's buffers were available.
  bool full = false;         // Every byte asked for came back: more may wait.
  int error = 0;             // errno of a failed recvmsg other than EAGAIN; EPROTO if a
                             // segment could not be built after the peek (the flow
                             // must end: the peek offset moved past it).
};

class TcpRxWriter {
 public:
  // The most iovec entries one recvmsg takes (UIO_MAXIOV).
  static constexpr size_t kMaxRecvIov = 1024;

  // kInvalidArgument for empty pools.
  static absl::StatusOr<std::unique_ptr<TcpRxWriter>> Create(const TcpRxPools& pools);

  // Peeks up to seg.max_bytes from `fd` into segments committed to `rx`
  // (see the file comment).
  TcpPeekResult PeekToGuest(vu::RxQueue* rx, int fd, const TcpSegments& seg);

  // The most bytes `skip` may be.
  size_t max_skip() const;

 private:
  struct Frame {
    const vu::RxQueue::Reservation* room;
    size_t cap;  // Payload bytes it holds.
  };

  explicit TcpRxWriter(const TcpRxPools& pools);

  TcpRxPools pools_;
  std::unique_ptr<Frame[]> frames_;
  std::unique_ptr<iovec[]> recv_iov_;
  std::unique_ptr<uint8_t[]> discard_;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TCP_VU_H_
