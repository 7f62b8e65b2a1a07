// A scripted guest TCP for integration tests of the TCP translator: the
// guest's side of connections, driven through a vu_frontend::Frontend (the
// driver side of the virtio-net device), segment by segment.
//
// ScriptedGuest owns the frames: it builds and sends segments from the
// guest's addresses, receives frames (skipping what is not TCP) and hands
// each segment to the connection it belongs to (by the guest's port and the
// remote port), or keeps it as unclaimed (SYNs of inbound connections,
// segments of no connection). A `drop` hook loses chosen segments on the
// way in, as a lossy link would.
//
// Offloads, as far as the frontend negotiated them: received frames with a
// partial checksum (NEEDS_CSUM) have it finished as a guest's stack would,
// and every header is checked against the negotiated features
// (vu_frontend::CheckHeader; bad_headers() counts what fails, and such a
// frame is dropped); with `tso_segment` set and HOST_TSO4/6 negotiated for
// a connection's IP version, segments longer than the peer's MSS go out
// with the segmentation request a driver writes (OffloadHeader).
//
// GuestTcp is one connection, as simple as a TCP can be while staying
// correct: a fixed receive window, in-order receive only (anything else is
// answered with a duplicate ACK), go-back-N retransmission on three
// duplicate ACKs or a timeout, zero-window probes. Nothing runs by itself:
// tests call ScriptedGuest::Poll, then Pump on their connections, or the
// blocking helpers (Write, Read, ...) that loop over both.
//
//   ScriptedGuest guest(frontend.get(), GuestAddress{});
//   absl::StatusOr<std::unique_ptr<GuestTcp>> c =
//       GuestTcp::Connect(&guest, Endpoint::V4("10.0.2.2", port), 40000, {});
//   (*c)->Write(data, absl::Seconds(10));
//   absl::StatusOr<std::vector<uint8_t>> reply = (*c)->Read(100, absl::Seconds(10));
//
// Test-only: it allocates freely and trusts what it is given.

#ifndef VUNET_TESTS_TCP_SCRIPTED_GUEST_H_
#define VUNET_TESTS_TCP_SCRIPTED_GUEST_H_

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "net/config/config.h"
#include "net/packet/frame.h"
#include "tools/vu_frontend/frontend.h"

namespace vunet::tcp_testing {

// The guest's own addressing (the source of what it sends).
struct GuestAddress {
  net::MacAddr guest_mac = net::kDefaultGuestMac;
  net::MacAddr gateway_mac = net::kDefaultGatewayMac;
  in_addr guest4{};
  in6_addr guest6{};
};

// The other end of a connection, as the guest addresses it.
struct Endpoint {
  bool v6 = false;
  in_addr addr4{};
  in6_addr addr6{};
  uint16_t port = 0;

  static Endpoint V4(const char* addr, uint16_t port);
  static Endpoint V6(const char* addr, uint16_t port);
};

// A TCP segment the guest received.
struct Segment {
  Endpoint remote;          // Its source.
  uint16_t local_port = 0;  // Its destination port (the guest's).
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint8_t flags = 0;
  uint16_t window = 0;
  net::TcpOptions options;
  std::vector<uint8_t> payload;
  bool checksum_ok = false;  // Verified, or left to us (DATA_VALID).
};

class GuestTcp;

class ScriptedGuest {
 public:
  ScriptedGuest(vu_frontend::Frontend* frontend, const GuestAddress& address);

  // A segment from the guest's `local_port` to `remote` (checksums filled).
  std::vector<uint8_t> Build(const Endpoint& remote, uint16_t local_port, uint32_t seq,
                             uint32_t ack, uint8_t flags, uint16_t window,
                             absl::Span<const uint8_t> payload = {},
                             absl::Span<const uint8_t> options = {}) const;
  // Sends frames in order, waiting (up to 10 s) for transmit room. With
  // `gso_size`, frames of more TCP payload than that go with a segmentation
  // request (and every TCP frame with a partial checksum), as a driver with
  // the segmentation offload sends them.
  absl::Status Send(const std::vector<std::vector<uint8_t>>& frames, uint16_t gso_size = 0);
  // The most payload a segment carries with HOST_TSO4/6 negotiated for its
  // IP version (0: never more than the peer's MSS).
  size_t tso_segment = 0;
  bool tso(bool v6) const;

  // Receives what has arrived, waiting up to `timeout` for the first frame,
  // and routes each TCP segment. Returns the frames received.
  absl::StatusOr<size_t> Poll(absl::Duration timeout);

  // Segments that belong to no registered connection, oldest first.
  std::deque<Segment>& unclaimed() { return unclaimed_; }
  // Takes the first unclaimed SYN (without ACK) to `local_port`.
  std::optional<Segment> TakeSyn(uint16_t local_port);

  // Loses a received segment when it returns true (before any connection
  // sees it).
  std::function<bool(const Segment&)> drop;

  vu_frontend::Frontend* frontend() const { return frontend_; }
  const GuestAddress& address() const { return address_; }
  uint64_t segments() const { return segments_; }
  uint64_t dropped() const { return dropped_; }
  uint64_t bad_checksums() const { return bad_checksums_; }
  uint64_t bad_headers() const { return bad_headers_; }
  // Frames received with a segmentation offload (gso_type set), and sent.
  uint64_t gso_received() const { return gso_received_; }
  uint64_t gso_sent() const { return gso_sent_; }
  size_t largest_received() const { return largest_received_; }

 private:
  friend class GuestTcp;
  static uint32_t RouteKey(uint16_t local_port, uint16_t remote_port) {
    return uint32_t{local_port} << 16 | remote_port;
  }
  void Register(GuestTcp* c);
  void Unregister(GuestTcp* c);
  void Deliver(absl::Span<const uint8_t> frame, const virtio::VirtioNetHdr& header);

  vu_frontend::Frontend* frontend_;
  GuestAddress address_;
  std::map<uint32_t, GuestTcp*> connections_;
  std::deque<Segment> unclaimed_;
  uint64_t segments_ = 0;
  uint64_t dropped_ = 0;
  uint64_t bad_checksums_ = 0;
  uint64_t bad_headers_ = 0;
  uint64_t gso_received_ = 0;
  uint64_t gso_sent_ = 0;
  size_t largest_received_ = 0;
};

class GuestTcp {
 public:
  struct Options {
    uint16_t mss = 65480;        // Our MSS option (what we accept).
    uint8_t window_scale = 7;    // Offered; 0xff offers none.
    uint32_t window = 4u << 20;  // Receive window, bytes.
    uint32_t isn = 0;            // Our initial sequence number; 0: picked from the port.
    absl::Duration rto = absl::Milliseconds(300);
  };
  struct Stats {
    uint64_t segments_sent = 0;
    uint64_t bytes_sent = 0;  // Payload, retransmissions included.
    uint64_t timeouts = 0;    // Go-back-N on the timer (zero-window probes excluded).
    uint64_t fast_retransmits = 0;
    uint64_t probes = 0;
    uint64_t out_of_order = 0;  // Segments received past rcv_nxt (dropped).
    uint64_t duplicates = 0;    // Segments received already (dropped).
  };

  // Sends a SYN from `local_port` to `remote` and returns at once; the
  // connection is established when Pump/Poll have seen the SYN-ACK.
  static std::unique_ptr<GuestTcp> Open(ScriptedGuest* guest, const Endpoint& remote,
                                        uint16_t local_port, const Options& options);
  // Open, then poll until established (kUnavailable on an RST, with the
  // connection closed; kDeadlineExceeded on the timeout).
  static absl::StatusOr<std::unique_ptr<GuestTcp>> Connect(
      ScriptedGuest* guest, const Endpoint& remote, uint16_t local_port, const Options& options,
      absl::Duration timeout = absl::Seconds(10));
  // Waits for a SYN to `local_port`, answers with a SYN-ACK and polls until
  // the ACK comes.
  static absl::StatusOr<std::unique_ptr<GuestTcp>> Accept(ScriptedGuest* guest, uint16_t local_port,
                                                          const Options& options,
                                                          absl::Duration timeout);
  // Answers a SYN the caller took (TakeSyn) with an RST.
  static absl::Status Refuse(ScriptedGuest* guest, const Segment& syn);

  ~GuestTcp();
  GuestTcp(const GuestTcp&) = delete;
  GuestTcp& operator=(const GuestTcp&) = delete;

  // Queues data to send (sent by Pump within the peer's window).
  void Queue(absl::Span<const uint8_t> data);
  // Queues our FIN after the data.
  void QueueFin();
  // Sends what is due: data within the window, retransmissions, probes, the
  // FIN, an ACK owed. Returns an error only if sending failed.
  absl::Status Pump();
  // Takes the data received so far.
  std::vector<uint8_t> TakeReceived();
  size_t received_size() const { return received_.size(); }

  // Blocking helpers (poll and pump until done or the timeout).
  absl::Status Write(absl::Span<const uint8_t> data, absl::Duration timeout);
  // Exactly `n` bytes, or fewer if the FIN came first.
  absl::StatusOr<std::vector<uint8_t>> Read(size_t n, absl::Duration timeout);
  // Our FIN, until acknowledged.
  absl::Status Shutdown(absl::Duration timeout);
  // Until the peer's FIN (the data before it is kept for TakeReceived).
  absl::Status WaitFin(absl::Duration timeout);
  // Until an RST.
  absl::Status WaitReset(absl::Duration timeout);
  // Sends an RST now; the connection is closed.
  absl::Status Reset();

  bool established() const { return state_ == State::kEstablished; }
  bool reset_received() const { return reset_; }
  bool fin_received() const { return fin_received_; }
  bool fin_acked() const { return fin_acked_; }
  // Everything queued (and the FIN, if queued) was acknowledged.
  bool all_acked() const;
  uint16_t local_port() const { return local_port_; }
  const Endpoint& remote() const { return remote_; }
  // The peer's SYN or SYN-ACK options.
  const net::TcpOptions& peer_options() const { return peer_options_; }
  uint32_t peer_window() const { return peer_wnd_; }
  const Stats& stats() const { return stats_; }

  // One segment for this connection (ScriptedGuest routes them here).
  void OnSegment(const Segment& s);

 private:
  enum class State { kSynSent, kSynReceived, kEstablished, kClosed };

  GuestTcp(ScriptedGuest* guest, const Endpoint& remote, uint16_t local_port,
           const Options& options);
  absl::Status PollAndPump(absl::Duration timeout);
  absl::Status Loop(absl::Duration timeout, const std::function<bool()>& done);
  std::vector<uint8_t> Frame(uint32_t seq, uint8_t flags, absl::Span<const uint8_t> payload = {},
                             absl::Span<const uint8_t> options = {});
  uint16_t WindowField() const;
  uint32_t Seq(uint64_t offset) const { return isn_ + 1 + static_cast<uint32_t>(offset); }

  ScriptedGuest* guest_;
  Endpoint remote_;
  uint16_t local_port_;
  Options options_;
  State state_ = State::kSynSent;
  bool registered_ = false;
  bool reset_ = false;
  uint32_t isn_ = 0;
  uint8_t our_ws_ = 0;   // Shift of our windows (if the peer agreed).
  uint8_t peer_ws_ = 0;  // Shift of the peer's.
  uint16_t peer_mss_ = 536;
  net::TcpOptions peer_options_;

  // Sending: every byte ever queued is kept (offsets from the first).
  std::vector<uint8_t> out_;
  uint64_t snd_una_ = 0;
  uint64_t snd_nxt_ = 0;
  uint64_t snd_max_ = 0;  // The highest offset sent.
  bool fin_queued_ = false;
  bool fin_sent_ = false;
  bool fin_acked_ = false;
  uint32_t peer_wnd_ = 0;
  uint32_t last_wnd_ = 0;
  int dup_acks_ = 0;
  absl::Time progress_at_;  // When snd_una last moved (or the timer restarted).

  // Receiving.
  uint32_t rcv_nxt_ = 0;
  std::vector<uint8_t> received_;
  bool fin_received_ = false;
  bool ack_owed_ = false;
  int dup_acks_owed_ = 0;
  Stats stats_;
};

}  // namespace vunet::tcp_testing

#endif  // VUNET_TESTS_TCP_SCRIPTED_GUEST_H_
