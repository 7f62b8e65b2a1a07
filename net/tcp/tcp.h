// The TCP flow translator: each of the guest's TCP connections becomes an
// ordinary host socket, with no TCP stack and no data buffering of our own.
// The host kernel does the TCP work on the host side; on the guest side we
// only map sequence numbers, acknowledgements and windows onto the socket's
// state.
//
// Guest-initiated connections: a SYN becomes a non-blocking connect() to
// where the forwarding policy sends it (net/forward: the gateway's addresses
// mean the host's loopback, DNS to the gateway the host's resolver; refused
// destinations get an RST). The guest gets our SYN-ACK only once connect() succeeded, an RST when
// it failed. The SYN-ACK carries an MSS derived from the MTU (MTU - 40 for
// IPv4, - 60 for IPv6), our window scale when the guest offered one, and SACK
// permitted when it offered that; timestamps are declined.
//
// Guest to host: each segment's payload is sent with sendmsg straight from
// the guest-memory iovecs. Only what the socket took is acknowledged; when it
// took less, the guest gets the acknowledgement at once, repeated as
// duplicate ACKs so that it retransmits from there without waiting for a
// timeout. Segments already taken are dropped and answered with an ACK of
// what we expect. Segments past a hole (a frame was lost) are held: their
// payload is copied into the out-of-order pool (TcpReorder, tcp_reorder.h;
// bounded per flow by the window we offered and by the pool in all, counted
// when refused), each answered with a duplicate ACK (up to three a batch)
// carrying SACK blocks for what we hold, most recent first (RFC 2018), so the
// guest resends the hole alone; when the hole fills, everything contiguous
// goes to the socket in one sendmsg over the pool, and is acknowledged as the
// socket takes it (what it does not take waits for EPOLLOUT, never for the
// guest's next segment). The window advertised to the guest is the
// socket's free send space: SO_SNDBUF minus the memory its queue is charged
// (SO_MEMINFO), scaled by the share of that memory which is data (SIOCOUTQ),
// so that the socket takes what we offer; while it is low we watch for it to
// open (EPOLLOUT, and a short timer with backoff) and send a window update
// when it does.
//
// Host to guest: data is peeked from the socket (MSG_PEEK) straight into the
// guest's receive buffers (TcpRxWriter, net/tcp_vu.h), in segments of the
// guest's MSS, within the guest's window. It stays in the socket until the
// guest acknowledges it, and is then discarded (recv with MSG_TRUNC). With
// SACK, the guest's blocks (checked against what we sent: blocks outside it,
// reversed or overlapping are dropped or merged, counted) keep a small
// scoreboard; the first SACK showing a later segment arrived, or three
// duplicate ACKs, start a recovery in which only the holes below the highest
// SACKed byte are peeked again and resent (a partial ACK resends the next),
// while new data goes on. Without SACK, three duplicate ACKs rewind to the
// first unacked byte; the retransmission timer always does (and forgets the
// scoreboard, as RFC 2018 asks). A zero window is probed on a timer.
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
// becomes a SYN to the address the guest uses (learned from its frames), from
// the peer's address, or from the gateway's when the peer is the host itself
// (Forwarding::InboundSource), established on the guest's
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
#include <netinet/tcp.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "net/config/port_forward.h"
#include "net/flow/flow.h"
#include "net/forward/outbound.h"
#include "net/packet/frame.h"
#include "net/tcp/tcp_reorder.h"
#include "net/tcp/tcp_vu.h"
#include "net/translate/translator.h"

namespace vunet::net {

struct TcpTranslatorOptions {
  // Inbound forwards (-t).
  std::vector<PortForward> forwards;
  // Source address and interface of connections to other hosts (-o,
  // --outbound-if4, --outbound-if6).
  OutboundBinding outbound = {};
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
  // Once round trips to the guest are measured (RFC 6298: smoothed RTT plus
  // four deviations, Karn's rule), the timeout follows them, never below
  // this (Linux's floor: a guest's delayed ACKs must not look like loss).
  int64_t rto_min_ns = 200'000'000;
  int max_retransmits = 15;
  // How soon a low window is checked again (doubling up to the maximum)
  // when EPOLLOUT may not come.
  int64_t window_check_initial_ns = 1'000'000;
  int64_t window_check_max_ns = 64'000'000;

  // Segments per peek (within the RxQueue's reservations); the discard
  // buffer used without SO_PEEK_OFF (it bounds the data in flight to 32
  // times its size).
  size_t rx_max_frames = 64;
  size_t discard_buffer = size_t{1} << 20;
  // Flows with work left for the end of a guest batch (more are flushed
  // early).
  size_t max_pending = 1024;

  // Our window scale (the shift of the windows we advertise), 0..14.
  uint8_t window_scale = 7;
  // SACK (RFC 2018) offered to guests that offer it.
  bool sack = true;
  // The out-of-order pool: segments past a hole, held (all flows together).
  // reorder.bytes 0: no pool; such segments are dropped (counted in
  // ooo_dropped) and the guest sends them again.
  TcpReorder::Options reorder;
  // Use SO_PEEK_OFF where the kernel has it; false forces the fallback
  // (for tests).
  bool use_peek_off = true;
  // Migration's destination: how long a connection whose source socket
  // still holds its addresses (a source on this host, lingering) is retried
  // before it is reset, and how often.
  int64_t restore_wait_ns = 10'000'000'000;
  int64_t restore_retry_ns = 1'000'000;
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
  uint64_t ooo_held = 0;             // Of those, held (new bytes in the pool).
  uint64_t ooo_dropped = 0;          // Refused: the pool or the flow's share was full (or no pool).
  uint64_t ooo_beyond_window = 0;    // Refused: past the window we offered.
  uint64_t ooo_delivered = 0;        // Held bytes the socket took once the hole filled.
  uint64_t sack_sent = 0;            // ACKs that carried SACK blocks.
  uint64_t sack_invalid = 0;         // The guest's SACK blocks dropped: outside what we sent.
  uint64_t recoveries = 0;           // Recoveries from the guest's SACKs.
  uint64_t sack_retransmits = 0;     // Segments resent into holes the guest's SACKs showed.
  uint64_t fast_retransmits = 0;
  uint64_t timer_retransmits = 0;
  uint64_t window_updates = 0;
  uint64_t zero_window_probes = 0;
  uint64_t rx_waits = 0;         // Flows that found no receive buffers.
  uint64_t control_dropped = 0;  // Control segments the guest had no room for.
  uint64_t malformed = 0;        // Segments refused by the checks.
  // Migration: connections sent to the destination, reset for want of a
  // helper (or because they were in their handshake), restored here, and
  // restores that failed (reset).
  uint64_t migrated_out = 0;
  uint64_t migration_resets = 0;
  uint64_t migrated_in = 0;
  uint64_t restore_failures = 0;
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

  // ParsedFrameSink: the guest's TCP segments.
  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
               const ParsedFrame& parsed) override;
  void OnBatchEnd() override;

  // Translator.
  FlowProto proto() const override { return FlowProto::kTcp; }
  void OnSocketEvent(uint64_t tag, uint32_t events) override;
  void OnTimer(FlowId id, int64_t now_ns) override;
  void OnRxAvailable() override;
  // Flows with data in flight send it again at once (from the first byte
  // the guest has not acknowledged, the retransmission timeout back at its
  // start), and every established flow sends the guest an ACK: one the old
  // ring swallowed would otherwise leave a guest waiting out its own
  // backed-off timer.
  void OnRxStart() override;
  void Shutdown() override;
  std::string StatsLine() const override;
  // Migration (tcp_migrate.cc). Source: established connections have their
  // sockets frozen in repair mode (through `repair`) and dumped with the
  // flow's sequence state; the rest (handshakes, or all of them without a
  // helper) are recorded to be reset. Destination: each connection's socket
  // is made anew in repair mode and restored (retried while a source on this
  // host still holds it, for up to restore_wait_ns), its unsent bytes
  // written as the socket takes them; resets go to the guest once its
  // receive queue runs.
  absl::Status SaveState(StateWriter& out, RepairControl* repair) override;
  absl::Status StageRecord(const RecordHeader& header, StateReader& in) override;
  void ApplyStaged(RepairControl* repair) override;
  void DiscardStaged() override;
  void OnMigratedOut(bool linger) override;
  void OnMigrationAborted(RepairControl* repair) override;

  const TcpStats& stats() const { return stats_; }
  // Migrated connections not restored yet (their source on this host still
  // holds them) or with unsent bytes still to write.
  size_t restores_pending() const { return restores_.size(); }
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
  // The options of our SYN or SYN-ACK.
  size_t SynOptions(bool v4, const Conn& c, uint8_t* out) const;

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
  // Holds a segment past a hole (within the window we offered).
  void Hold(Conn* c, absl::Span<const iovec> frame, const ParsedFrame& parsed);
  // Sends the held bytes the hole's filling made contiguous. False if the
  // flow ended (a socket error).
  bool DeliverHeld(FlowId id, Conn* c);
  // The guest's SACK blocks into the scoreboard.
  void UpdateScoreboard(Conn* c, const TcpOptions& options);

  // Host side.
  void ConnectDone(FlowId id, Conn* c, int64_t now);
  void OnListen(uint32_t index);
  void Inbound(const Listener& l, UniqueFd fd, const sockaddr_storage& peer, socklen_t peer_len,
               int64_t now);
  // Peeks host data into the guest's buffers within its window, and sends
  // our FIN after end of file. False if the flow ended (a host error).
  bool SendData(FlowId id, Conn* c, int64_t now);
  // In a recovery, resends the holes the guest's SACKs show. False if the
  // flow ended.
  bool RetransmitHoles(FlowId id, Conn* c, int64_t now);
  void CheckWindow(FlowId id, Conn* c, int64_t now);
  // The retransmission timer: resends (SYN, data, FIN) or probes a zero
  // window. False if the flow ended.
  bool OnRto(FlowId id, Conn* c, int64_t now);
  // RFC 6298's estimator: a round trip measured, and the timeout it gives
  // (the initial one before any sample), within rto_min_ns..rto_max_ns.
  static void SampleRtt(Conn* c, int64_t rtt_ns);
  int64_t CurrentRto(const Conn& c) const;

  // Control segments to the guest (copied into the RxQueue, behind the data
  // segments committed before them).
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
  // Our SACK option (NOP, NOP, blocks) for what `c` holds; its length.
  size_t SackOption(const Conn& c, uint8_t* out);
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

  // Migration (tcp_migrate.cc).
  struct Staged;
  struct Restore;
  struct PendingReset {
    FlowKey key;
    MacAddr guest_mac;
    uint32_t seq;
    uint32_t ack;
  };
  // Sends the guest an RST for a connection it cannot keep, or keeps it
  // for OnRxStart while its receive queue is stopped.
  void ResetLater(const FlowKey& key, const MacAddr& mac, uint32_t seq, uint32_t ack);
  // Makes and restores the sockets of flows in restores_ that have none
  // yet (all due at once, one request to the helper each way).
  void RestoreSockets(RepairControl* repair, int64_t now);
  // Writes a restored socket's unsent bytes as far as it takes them; done
  // (or failed, and the flow reset) when it returns true.
  bool ContinueRestore(FlowId id, Conn* c);
  Restore* FindRestore(FlowId id);
  void EndRestore(FlowId id);

  TranslatorEnv env_;
  TcpTranslatorOptions options_;
  std::vector<std::unique_ptr<Staged>> staged_;
  std::vector<std::unique_ptr<Restore>> restores_;
  std::vector<PendingReset> pending_resets_;
  // Source: what FreezeSocket changed on each frozen socket, to undo if
  // the migration fails.
  struct Frozen;
  std::vector<std::unique_ptr<Frozen>> frozen_;
  RepairControl* restore_repair_ = nullptr;  // For retries; the backend's, outlives us.
  bool in_restore_sockets_ = false;
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
  std::unique_ptr<TcpReorder> reorder_;
  FlowId rx_wait_head_;
  FlowId rx_wait_tail_;
  std::unique_ptr<uint8_t[]> scratch_;  // For discards without MSG_TRUNC.
  uint8_t control_[kEthHeaderLen + kIpv6HeaderLen + kTcpMaxHeaderLen];
  TcpStats stats_;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TCP_H_
