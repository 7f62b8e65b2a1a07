// The vhost-user receive path of the UDP translator: datagrams read from a
// host socket straight into the guest's receive buffers, headers written in
// front, committed to the RxQueue (which the owner flushes once per loop
// iteration).
//
// A datagram must land in receive buffers reserved for it, each frame in a
// reservation of its own, and reservations are committed in order or handed
// back from the tail. With mergeable buffers a datagram takes as many
// buffers as its size needs, so the size must be known before reserving, or
// one recvmmsg would leave unused buffers between frames. The receiver
// learns the sizes first:
//
//   1. recvmmsg(MSG_PEEK | MSG_TRUNC) with empty buffers on a socket with
//      SO_PEEK_OFF set: each peek returns the full length of the next
//      datagram and moves the peek offset past it, so one call reports the
//      sizes (and senders) of up to `batch` queued datagrams;
//   2. per datagram, the owner's Prepare says which headers go in front
//      (or drops it), and RxQueue::Reserve takes exactly the room it needs;
//   3. one recvmmsg(MSG_TRUNC) reads them into the collected iovecs, behind
//      header room (virtio-net header, Ethernet, IP, UDP); a datagram that is
//      dropped is read into no buffer at all (discarded by truncation);
//   4. BuildFrame writes the headers (the UDP checksum computed over the
//      iovecs, or left to the guest with DATA_VALID when it negotiated
//      GUEST_CSUM), and RxQueue::Commit.
// Real reads move the peek offset back by what they consume, so it returns
// to zero when every peeked datagram was read; when some were not (the
// guest ran out of buffers) it is reset. A zero-length datagram that was
// peeked but not read is skipped by later peeks at offset zero (the kernel
// marks it peeked), so in that case the socket is read one datagram at a
// time, without the offset, until those are consumed.
//
// Where SO_PEEK_OFF does not behave so (ProbeUdpPeekOffset), each round
// peeks and reads one datagram. Reads are checked against the peeks; a
// mismatch (which the above should make impossible) delivers what fits,
// hands unused buffers back with a zero length, and is counted.
//
// Segmentation offload (GUEST_USO4/6): once the guest negotiated USO for
// either IP version, each socket read here gets UDP_GRO, so the kernel may
// hand over several datagrams of one sender as one, with their size in a
// control message (when the sender used UDP_SEGMENT, or a device's GRO
// merged them). Such a datagram goes to a guest with USO for the frame's IP
// version as one frame: gso_type UDP_L4, gso_size the datagrams' size,
// hdr_len, a partial checksum (NEEDS_CSUM, the pseudo-header's sum over the
// whole length in the field), the UDP length the whole. To a guest without
// USO for that version (a dual-stack oddity, or a renegotiation while the
// socket lives) it is read into a buffer of ours and sent one datagram per
// frame (RxQueue::Send: a copy, on this rare path only); it then takes a
// round of its own.
//
// No allocation per datagram: every array is sized at construction.
// Datagrams too large for the guest's IP version (or for its receive
// buffers without mergeable buffers, or for the receiver's pools) are
// dropped and counted.
//
//   UdpVuReceiver rx(UdpVuReceiver::Options{});
//   UdpRxSocketState state = {.peek_offset = EnablePeekOffset(fd)};
//   UdpVuReceiver::Result r = rx.Receive(&rx_queue, fd, &state, /*want_peer=*/false,
//       [&](const sockaddr_storage&, socklen_t, size_t len, FrameSpec* spec) {
//         *spec = flow_spec;
//         return true;
//       });
//   if (r.outcome == UdpVuReceiver::Outcome::kNoRoom) { /* wait for buffers */ }

#ifndef VUNET_NET_UDP_VU_H_
#define VUNET_NET_UDP_VU_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "net/packet/frame.h"
#include "vu/common.h"
#include "vu/rx_queue.h"

namespace vunet::net {

// The largest UDP payload of one IP packet (no jumbograms).
inline constexpr size_t kUdpMaxPayload4 = 65535 - kIpv4MinHeaderLen - kUdpHeaderLen;  // 65507
inline constexpr size_t kUdpMaxPayload6 = 65535 - kUdpHeaderLen;                      // 65527

// True if SO_PEEK_OFF on UDP sockets of `family` reports consecutive
// datagrams' full lengths to MSG_PEEK | MSG_TRUNC reads and returns to zero
// as they are read, as the batched peek relies on (checked on a loopback
// socket pair). False where the family is unsupported.
bool ProbeUdpPeekOffset(int family);

// Sets SO_PEEK_OFF to 0 on `fd`; false if the kernel refuses.
bool EnablePeekOffset(int fd);

// What the receiver keeps per socket between wake-ups (the owner stores it).
struct UdpRxSocketState {
  // SO_PEEK_OFF is set and usable: sizes are peeked in batches.
  bool batched = false;
  // Datagrams still to be read one at a time with the peek offset off
  // (see the file comment); batched again once they are consumed.
  uint8_t single_left = 0;
  // UDP_GRO is on (coalesced datagrams come with their segment size), or
  // the kernel refused it (not tried again).
  bool gro = false;
  bool gro_refused = false;
};

class UdpVuReceiver {
 public:
  static constexpr size_t kMaxBatch = 32;

  struct Options {
    size_t batch = kMaxBatch;  // Datagrams per wake-up, 1..kMaxBatch.
    // iovec entries one round's reservations may span: at least the
    // RxQueue's max_iov.
    size_t max_iov = vu::RxQueue::Options().max_iov;
  };

  struct Stats {
    uint64_t wakeups = 0;
    uint64_t frames = 0;         // Frames delivered to the guest (a USO frame counts once).
    uint64_t uso_frames = 0;     // Of those, coalesced datagrams sent as one (UDP_L4).
    uint64_t split = 0;          // Coalesced datagrams sent one datagram a frame.
    uint64_t split_dropped = 0;  // Their datagrams the guest had no room for.
    uint64_t bytes = 0;          // Their payload bytes.
    uint64_t refused = 0;        // Dropped because Prepare said so.
    // Dropped: larger than the guest's IP version carries, than one
    // receive buffer without mergeable buffers, or than the pools hold.
    uint64_t too_big = 0;
    uint64_t no_room = 0;      // Wake-ups that found too few receive buffers.
    uint64_t recv_errors = 0;  // Socket errors reported by reads.
    uint64_t mismatches = 0;   // Reads that differed from their peeks.
    uint64_t peek_resets = 0;  // Peek offsets reset after a partial round.
  };

  enum class Outcome {
    kDrained,  // The socket had no more datagrams.
    kBudget,   // `batch` read (or a pool filled): more may wait; come back.
    kNoRoom,   // The guest has no receive buffers (or no running queue):
               // the rest waits in the socket until it posts some.
    kError,    // The socket reported an error (`error`): read its error
               // queue, then come back.
  };

  struct Result {
    size_t frames = 0;
    Outcome outcome = Outcome::kDrained;
    int error = 0;  // errno, with kError.
  };

  // Says what a datagram becomes: `peer` is its sender as recvmsg reports it
  // (empty unless want_peer), `len` its payload length. Fills `spec` (the
  // frame's MACs, addresses, ports, IP version; protocol UDP) and returns
  // true, or returns false to drop the datagram. May be called again for the
  // same datagram if its read disagrees with its peek.
  using PrepareFn = absl::FunctionRef<bool(const sockaddr_storage& peer, socklen_t peer_len,
                                           size_t len, FrameSpec* spec)>;

  explicit UdpVuReceiver(const Options& options);
  UdpVuReceiver(const UdpVuReceiver&) = delete;
  UdpVuReceiver& operator=(const UdpVuReceiver&) = delete;

  // Reads up to options.batch datagrams from `fd` (non-blocking) into
  // frames committed to `rx`. `state` is the socket's (see
  // UdpRxSocketState).
  Result Receive(vu::RxQueue* rx, int fd, UdpRxSocketState* state, bool want_peer,
                 PrepareFn prepare);

  const Stats& stats() const { return stats_; }
  const Options& options() const { return options_; }

 private:
  struct Slot {
    FrameSpec spec;
    size_t len = 0;      // Peeked payload length.
    uint16_t gso = 0;    // Coalesced datagrams' size (UDP_GRO), 0 for one datagram.
    size_t hdr_len = 0;  // vnet header + FrameHeadersLen(spec).
    // Its buffers, or nullptr: a datagram dropped is read into nothing.
    const vu::RxQueue::Reservation* room = nullptr;
  };

  // Sets the peek offset of `fd` (-1 turns it off). False on failure.
  static bool SetPeekOffset(int fd, int value);
  // UDP_GRO on `fd` once the guest negotiated USO (see the file comment).
  static void EnableGro(int fd, const vu::NetConfig& config, UdpRxSocketState* state);
  // Writes the headers of slot `s`'s frame (`len` payload bytes read into
  // `iov`, its reservation) and commits it; false if it could not.
  bool Commit(vu::RxQueue* rx, const Slot& s, absl::Span<const iovec> iov, size_t len);
  // After a round: the peek offset back to zero unless every one of the
  // `peeked` datagrams was read (see the file comment).
  void UpdatePeekOffset(int fd, UdpRxSocketState* state, bool batch_peek, size_t peeked,
                        size_t consumed, bool mismatch);
  // Sends the coalesced datagram in split_datagram_[0..len) one datagram
  // (of `gso` bytes, the last shorter) a frame; returns the frames sent.
  size_t SendSplit(vu::RxQueue* rx, FrameSpec spec, size_t len, uint16_t gso);

  // Room for a UDP_GRO control message.
  union GroCmsg {
    cmsghdr header;
    char bytes[CMSG_SPACE(sizeof(int))];
  };

  Options options_;
  Stats stats_;
  std::unique_ptr<iovec[]> scratch_;  // Per slot: its payload part, for recvmmsg.
  Slot slots_[kMaxBatch];
  mmsghdr peek_[kMaxBatch];
  mmsghdr msgs_[kMaxBatch];
  sockaddr_storage peek_peer_[kMaxBatch];
  sockaddr_storage peer_[kMaxBatch];
  GroCmsg peek_cmsg_[kMaxBatch];
  GroCmsg cmsg_[kMaxBatch];
  // A coalesced datagram for a guest without USO, and one of its frames.
  std::unique_ptr<uint8_t[]> split_datagram_;
  std::unique_ptr<uint8_t[]> split_frame_;
  iovec split_iov_ = {};
};

}  // namespace vunet::net

#endif  // VUNET_NET_UDP_VU_H_
