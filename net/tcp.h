// The TCP flow translator: each of the guest's TCP connections becomes an
// ordinary host socket, with no TCP stack and no data buffering of our own.
// The host kernel does the TCP work on the host side; on the guest side we
// only map sequence numbers, acknowledgements and windows onto the socket's
// state.
//
// Guest-initiated connections: a SYN to any address becomes a non-blocking
// connect() (the gateway's addresses mean the host's loopback, 127.0.0.1 and
// ::1). The guest gets our SYN-ACK only once connect() succeeded, an RST when
// it failed. The SYN-ACK carries an MSS derived from the MTU (MTU - 40 for
// IPv4, - 60 for IPv6) and our window scale when the guest offered one; SACK
// and timestamps are declined (the guest sends neither afterwards).
//
// Guest to host: each segment's payload is sent with sendmsg straight from
// the guest-memory iovecs. Only what the socket took is acknowledged; when it
// took less, the guest gets the acknowledgement at once, repeated as
// duplicate ACKs so that it retransmits from there without waiting for a
// timeout. Segments already taken are dropped and answered with an ACK of
// what we expect; segments past it are tried again at the end of their
// transmit batch (a retransmission later in the batch may fill the hole),
// then dropped (nothing is kept past the batch), each answered with a
// duplicate ACK, up to three a batch, so that the guest retransmits the
// hole at once rather than after its timeout. The window advertised to the guest is the
// socket's free send space: SO_SNDBUF minus the memory its queue is charged
// (SO_MEMINFO), scaled by the share of that memory which is data (SIOCOUTQ),
// so that the socket takes what we offer; while it is low we watch for it to
// open (EPOLLOUT, and a short timer with backoff) and send a window update
// when it does.
//
// Host to guest: data is peeked from the socket (MSG_PEEK) straight into the
// guest's receive buffers (TcpRxWriter, net/tcp_vu.h), in segments of the
// guest's MSS, within the guest's window. It stays in the socket until the
// guest acknowledges it, and is then discarded (recv with MSG_TRUNC). Three
// duplicate ACKs, or the retransmission timer, rewind to the first unacked
// byte and send again from the socket. A zero window is probed on a timer.
// When the guest has no receive buffers the flow waits, its data in the
// socket, until OnRxAvailable.
//
// Close: FIN both ways with half-close (the guest's FIN shuts the socket
// down for writing; end of file from the host becomes our FIN once the guest
// has acknowledged every byte before it); the flow ends when both FINs are
// acknowledged. An RST from the guest closes the socket with SO_LINGER 0 (the
// host peer sees a reset); a reset on the host side (ECONNRESET, EPIPE, a
// socket error) becomes an RST to the guest. Idle flows time out: two hours
// established, shorter in the handshake and once the host's side has ended
// while the guest's is open. No TIME_WAIT.
//
// Inbound (-t): each PortForward listens on the host; an accepted connection
// becomes a SYN to the guest's address (from the peer's address, or from the
// gateway's when the peer is the host itself), established on the guest's
// SYN-ACK; a guest that refuses (RST) gets the accepted socket closed with a
// reset.
//
// Flows live in the owner's FlowTable (their state in the per-flow slot); a
// full table refuses new connections with an RST (counted, and the table
// logs it). Every pool is sized at Create; the data path allocates nothing.
// Guest frames are hostile: every sequence number, acknowledgement, length
// and option is checked against the flow's state; a segment for no known
// flow gets an RST (an RST for none is ignored). Checksums of the guest's
// segments are not verified: that would read every payload once more, and a
// wrong one can only corrupt the guest's own stream.
//
//   TcpTranslatorOptions options;
//   options.forwards = *ParsePortForwards("8080:80");
//   absl::StatusOr<std::unique_ptr<TcpTranslator>> tcp = TcpTranslator::Create(env, options);

#ifndef VUNET_NET_TCP_H_
#define VUNET_NET_TCP_H_

#include <netinet/in.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "net/dispatch.h"
#include "net/flow.h"
#include "net/frame.h"
#include "net/outbound.h"
#include "net/tcp_vu.h"
#include "net/translator.h"

namespace vunet::net {

struct TcpTranslatorOptions {
  // Inbound forwards (-t).
  std::vector<PortForward> forwards;
  // Source address and interface of connections to other hosts (-o,
  // --outbound-if4, --outbound-if6).
  OutboundBinding outbound;
  int listen_backlog = 128;

  // Timeouts.
  int64_t handshake_timeout_ns = 10'000'000'000;            // connect(), or our SYN unanswered.
  int64_t idle_timeout_ns = int64_t{7200} * 1'000'000'000;  // Established, no traffic.
  // The host's side ended and our FIN went out, the guest's side is still
  // open, no traffic. (While only the guest has closed, the idle timeout
  // applies: the host peer may take long to answer.)
  int64_t half_closed_timeout_ns = 60'000'000'000;
  // Retransmission to the guest: the first timeout, doubled on each expiry
  // up to the maximum; after max_retransmits in a row the flow is reset
  // (about 10 minutes, as Linux's tcp_retries2 gives). Expiries that found
  // no receive buffers to resend into count only once the timeout is at its
  // maximum.
  int64_t rto_initial_ns = 1'000'000'000;
  int64_t rto_max_ns = 60'000'000'000;
  int max_retransmits = 15;
  // How soon a low window is checked again (doubling up to the maximum)
  // when EPOLLOUT may not come.
  int64_t window_check_initial_ns = 1'000'000;
  int64_t window_check_max_ns = 64'000'000;

  // Pools: segments, receive elements and iovecs per peek; the discard
  // buffer used without SO_PEEK_OFF (it bounds the data in flight to
  // 32 times its size).
  size_t rx_max_frames = 64;
  size_t rx_max_elems = 1024;
  size_t rx_max_iov = 2048;
  size_t discard_buffer = size_t{1} << 20;
  // Flows with work left for the end of a guest batch (more are flushed
  // early).
  size_t max_pending = 1024;

  // Our window scale (the shift of the windows we advertise), 0..14.
  uint8_t window_scale = 7;
  // Use SO_PEEK_OFF where the kernel has it; false forces the fallback
  // (for tests).
  bool use_peek_off = true;
};

struct TcpStats {
  uint64_t segments = 0;          // TCP frames from the guest.
  uint64_t connects = 0;          // Host connect() calls for guest SYNs.
  uint64_t connect_failures = 0;  // Refused, unreachable, timed out.
  uint64_t accepted = 0;          // Inbound connections offered to the guest.
  uint64_t established = 0;
  uint64_t closed = 0;               // Ended (Shutdown's not counted).
  uint64_t refused_full = 0;         // The flow table was full: RST.
  uint64_t refused_destination = 0;  // Unusable destination or family: RST.
  uint64_t refused_by_guest = 0;     // Inbound connections the guest reset.
  uint64_t no_flow_resets = 0;       // RSTs for segments of no known flow.
  uint64_t guest_resets = 0;         // RSTs from the guest.
  uint64_t host_resets = 0;          // Host-side resets turned into RSTs.
  uint64_t timeouts = 0;             // Flows closed idle or unanswered.
  uint64_t bytes_from_guest = 0;     // Taken by host sockets.
  uint64_t bytes_to_guest = 0;       // Written into receive buffers (retransmits too).
  uint64_t frames_to_guest = 0;      // Data segments.
  uint64_t partial_sends = 0;        // Guest segments the socket took part of.
  uint64_t out_of_order = 0;         // Guest segments past the expected sequence.
  uint64_t reordered = 0;            // Of those, taken at the end of their batch.
  uint64_t fast_retransmits = 0;
  uint64_t timer_retransmits = 0;
  uint64_t window_updates = 0;
  uint64_t zero_window_probes = 0;
  uint64_t rx_waits = 0;         // Flows that found no receive buffers.
  uint64_t control_dropped = 0;  // Control segments the guest had no room for.
  uint64_t malformed = 0;        // Segments refused by the checks.
};

class TcpTranslator : public Translator {
 public:
  // Epoll kinds, relative to env.first_kind.
  static constexpr uint8_t kSocketKind = 0;
  static constexpr uint8_t kListenKind = 1;

  // Checks env and options, probes SO_PEEK_OFF, sizes the pools, and opens
  // and watches the listening sockets of the forwards. kInvalidArgument for
  // a missing service or an option out of range; a forward that cannot
  // listen (port in use, no such address) fails with the port named.
  static absl::StatusOr<std::unique_ptr<TcpTranslator>> Create(const TranslatorEnv& env,
                                                               const TcpTranslatorOptions& options);

  ~TcpTranslator() override;
  TcpTranslator(const TcpTranslator&) = delete;
  TcpTranslator& operator=(const TcpTranslator&) = delete;

  // ParsedFrameSink: TCP frames are ours, the rest go to env.next.
  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
               const ParsedFrame& parsed) override;
  void OnBatchEnd() override;

  // Translator.
  FlowProto proto() const override { return FlowProto::kTcp; }
  void OnSocketEvent(uint64_t tag, uint32_t events) override;
  void OnTimer(FlowId id, int64_t now_ns) override;
  void OnRxAvailable() override;
  void Shutdown() override;
  std::string StatsLine() const override;

  const TcpStats& stats() const { return stats_; }
  // Whether SO_PEEK_OFF is in use (probed at Create).
  bool peek_offset() const { return peek_off_; }
  // The listening sockets' local ports, in the order opened (for tests that
  // forward port 0).
  std::vector<uint16_t> listen_ports() const;

 private:
  struct Conn;
  struct Listener {
    UniqueFd fd;
    uint16_t host_port = 0;   // The port it listens on.
    uint16_t guest_port = 0;  // Where its connections go.
  };

  TcpTranslator(const TranslatorEnv& env, const TcpTranslatorOptions& options);
  // Listens on every port of `forward`; `*bound` counts the ports it could
  // (a weak forward skips those in use or privileged).
  absl::Status Listen(const PortForward& forward, uint32_t* bound);
  absl::Status ListenOne(int family, const sockaddr* addr, socklen_t len,
                         const PortForward& forward, uint16_t guest_port, bool v6only,
                         bool* skipped);

  int64_t Now() const { return env_.clock(); }
  uint64_t Tag(FlowId id) const;
  uint32_t NewIsn();

  // Guest segments.
  void NewFromGuest(const ParsedFrame& parsed, const FlowKey& key, int64_t now);
  void Segment(FlowId id, Conn* c, absl::Span<const iovec> frame, const ParsedFrame& parsed,
               int64_t now);
  void SegmentInSynSent(FlowId id, Conn* c, const ParsedFrame& parsed, int64_t now);
  bool SegmentInSynAckSent(FlowId id, Conn* c, const ParsedFrame& parsed, int64_t now);
  void ProcessAck(FlowId id, Conn* c, const ParsedFrame& parsed, int64_t now);
  void ProcessData(FlowId id, Conn* c, absl::Span<const iovec> frame, const ParsedFrame& parsed,
                   int64_t now);
  // Discards `n` acknowledged bytes from the socket. False on a socket error.
  bool Discard(Conn* c, size_t n);

  // Host side.
  void ConnectDone(FlowId id, Conn* c, int64_t now);
  void OnListen(uint32_t index);
  void Inbound(const Listener& l, UniqueFd fd, const sockaddr_storage& peer, int64_t now);
  // Peeks host data into the guest's buffers within its window, and sends
  // our FIN after end of file. False if the flow ended (a host error).
  bool SendData(FlowId id, Conn* c, int64_t now);
  void CheckWindow(FlowId id, Conn* c, int64_t now);
  // The retransmission timer: resends (SYN, data, FIN) or probes a zero
  // window. False if the flow ended.
  bool OnRto(FlowId id, Conn* c, int64_t now);

  // Control segments to the guest (through env.replies, after flushing data
  // frames written before them).
  FrameSpec SpecFor(const FlowKey& key, const Conn& c) const;
  bool SendControl(const FlowKey& key, const Conn& c, uint32_t seq, uint8_t flags, uint16_t window,
                   absl::Span<const uint8_t> options = {});
  void SendAck(FlowId id, Conn* c, int64_t now, int copies = 1);
  void SendSynAck(FlowId id, Conn* c);
  void SendSyn(FlowId id, Conn* c);
  void SendFin(FlowId id, Conn* c, int64_t now);
  void ResetGuest(FlowId id, Conn* c);
  // An RST answering a segment of no flow.
  void RefuseSegment(const ParsedFrame& parsed);
  // The window we can offer: the socket's free send space (bytes), and the
  // socket's send buffer size in *sndbuf.
  uint32_t FreeSendSpace(const Conn& c, uint32_t* sndbuf) const;
  // The window field for `window` bytes; records it as advertised, and
  // starts or ends watching a low window.
  uint16_t AdvertiseWindow(FlowId id, Conn* c, uint32_t window, uint32_t sndbuf, int64_t now);

  // Work for the end of the batch (ACKs, data to send).
  void MarkPending(FlowId id, Conn* c);
  void FlushPending();
  void AddRxWait(FlowId id, Conn* c);
  void RemoveRxWait(Conn* c);

  void ArmRto(FlowId id, Conn* c, int64_t now);
  void UpdateTimer(FlowId id, Conn* c);
  int64_t IdleTimeout(const Conn& c) const;
  // Ends the flow; with reset_host the socket is closed with SO_LINGER 0.
  void Close(FlowId id, Conn* c, bool reset_host);

  TranslatorEnv env_;
  TcpTranslatorOptions options_;
  bool peek_off_ = false;
  bool trunc_discard_ = true;   // recv(MSG_TRUNC) discards; else read into scratch.
  bool shutting_down_ = false;  // Flows closed by Shutdown are not counted as closed.
  uint64_t isn_state_ = 0;
  std::unique_ptr<TcpRxWriter> writer_;
  std::vector<Listener> listeners_;
  UniqueFd reserve_fd_;  // Given up to accept (and refuse) when out of fds.
  std::unique_ptr<iovec[]> send_iov_;
  std::unique_ptr<FlowId[]> pending_;
  size_t pending_count_ = 0;
  // Guest segments past the expected sequence, retried at the end of their
  // batch: after a retransmission timeout the guest sends new data together
  // with the hole's retransmission, often later in the same batch, and
  // their bytes stay in guest memory until the batch ends (the transmit
  // handler returns the buffers after OnBatchEnd). Dropping them instead
  // costs the guest another, doubled, timeout per hole (we offer no SACK).
  struct Deferred {
    FlowId id;
    absl::Span<const iovec> frame;
    ParsedFrame parsed;
  };
  static constexpr size_t kMaxDeferred = 64;
  std::unique_ptr<Deferred[]> deferred_;
  size_t deferred_count_ = 0;
  // Takes the deferred segments that have become in order, repeatedly.
  void RetryDeferred();
  bool retrying_ = false;
  FlowId rx_wait_head_;
  FlowId rx_wait_tail_;
  std::unique_ptr<uint8_t[]> scratch_;  // For discards without MSG_TRUNC.
  uint8_t control_[kEthHeaderLen + kIpv6HeaderLen + kTcpMaxHeaderLen];
  TcpStats stats_;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TCP_H_
