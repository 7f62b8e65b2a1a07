// UDP for the guest, translated to the host's UDP sockets.
//
// Guest to host. A datagram from a guest port opens a flow (FlowTable, key:
// guest address and port, destination as the guest addressed it) with a
// connected, non-blocking host socket, connected where the forwarding
// policy sends it (net/forward: DNS to the gateway reaches the host's
// resolver, the gateway's other ports the host's loopback; refused
// destinations are dropped and counted).
// The datagrams of one transmit batch are gathered and go out in
// OnBatchEnd, one sendmmsg per socket, straight from the guest's buffers
// (their iovecs; no copy of ours). A guest with VIRTIO_NET_F_HOST_USO may
// send one frame for many datagrams (gso_type UDP_L4, gso_size each's
// payload; the dispatcher checked the request): it goes in the same
// sendmmsg as one message with a UDP_SEGMENT control message, which the
// host kernel cuts into the datagrams. Where the socket refuses that (a
// route MTU below gso_size, more segments than the kernel takes, a device
// without checksum offload) the datagrams go one message each, in one
// sendmmsg of their own (at most kMaxSplitSegments; more are dropped). A full socket buffer drops
// the rest of that socket's batch (counted); a socket error an earlier datagram earned
// (ECONNREFUSED) is consumed and the datagram retried once. The sockets have
// IP_RECVERR / IPV6_RECVERR: an ICMP or ICMPv6 destination unreachable the
// host receives for a flow is read from the error queue and sent on to the
// guest as one of its own IP version, from the address it sent to, quoting
// its datagram's headers (rebuilt from the flow's key) and the first bytes
// of the payload. Replies come back to the guest's port from the address
// and port it addressed.
//
// Host to guest: readable sockets are read by UdpVuReceiver (udp_vu.h)
// straight into the guest's receive buffers, up to rx_batch datagrams per
// wake-up, committed to the RxQueue. To a guest with GUEST_USO4/6 the
// sockets read with UDP_GRO, and datagrams the kernel coalesced (a sender's
// UDP_SEGMENT, a device's GRO) go as one frame (gso_type UDP_L4). When the guest has no receive
// buffers, the socket is left unread (and unwatched for input) until
// OnRxAvailable.
//
// Inbound forwards (-u specs, UdpTranslatorOptions::forwards): one bound,
// unconnected socket per host port and IP version (an AF_UNSPEC forward
// binds 0.0.0.0 and, IPV6_V6ONLY, ::). A datagram from host peer P to a
// forwarded port opens a flow whose host-side key is the socket's bound
// address and port and P; it reaches the address the guest uses (learned
// from its frames) at the mapped guest port, from P's address, or from the
// gateway's when P is the host itself (Forwarding::InboundSource). The
// guest's replies,
// from that port to that address, go back to P through the forwarding
// socket (sendto).
//
// Flows end after idle_timeout_ns without a datagram either way; DNS flows
// (to port 53) dns_timeout_ns after their last datagram once answered.
// Timers are the FlowTable's: the owner calls OnTimer. When the table (or
// max_flows) is full a new flow's datagram is dropped, counted, and logged
// rate-limited. Nothing is allocated per datagram: the batches' arrays are
// sized at Create.
//
//   UdpTranslatorOptions options;
//   options.forwards = ParsePortForwards("5353:53").value();
//   absl::StatusOr<std::unique_ptr<UdpTranslator>> udp = UdpTranslator::Create(env, options);
//   ... the dispatcher routes UDP to it; the owner routes events, timers
//   and rx kicks to it (net/translate/translator.h).

#ifndef VUNET_NET_UDP_H_
#define VUNET_NET_UDP_H_

#include <netinet/in.h>
#include <sys/socket.h>
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
#include "net/translate/translator.h"
#include "net/udp/udp_vu.h"

namespace vunet::net {

struct UdpTranslatorOptions {
  std::vector<PortForward> forwards;  // -u.
  // Source address and interface of flows to other hosts (-o,
  // --outbound-if4, --outbound-if6).
  OutboundBinding outbound = {};
  int64_t idle_timeout_ns = int64_t{180} * 1'000'000'000;
  // DNS flows (to port 53, or mapped by `dns`), once answered.
  int64_t dns_timeout_ns = int64_t{10} * 1'000'000'000;
  // UDP flows at most; 0: as many as the shared table holds.
  size_t max_flows = 0;
  // Guest datagrams gathered per transmit batch (then sent), and iovec
  // entries for them.
  size_t tx_batch = 256;
  size_t tx_iov = 2048;
  // Host to guest: datagrams read per wake-up of a socket (1..32).
  size_t rx_batch = UdpVuReceiver::kMaxBatch;
  // SO_RCVBUF and SO_SNDBUF of every socket (the kernel caps them at
  // net.core.rmem_max / wmem_max); 0 keeps the kernel's defaults. Bursts
  // wait here while the guest or the host peer catches up.
  int socket_buffer = 4 << 20;
  // Peek sizes in batches where the kernel's SO_PEEK_OFF allows it (see
  // udp_vu.h); false reads one datagram per peek.
  bool batch_peek = true;
};

class UdpTranslator : public Translator {
 public:
  struct Stats {
    uint64_t flows_opened = 0;  // Outbound flows.
    uint64_t flows_inbound = 0;
    uint64_t flows_expired = 0;
    uint64_t tx_datagrams = 0;  // Guest to host, sent (a segmented frame's each).
    uint64_t tx_bytes = 0;
    uint64_t tx_segmented = 0;    // Frames of several datagrams sent with UDP_SEGMENT.
    uint64_t tx_split = 0;        // Of those the socket refused, sent one datagram each.
    uint64_t tx_buffer_full = 0;  // Dropped: the host socket's buffer was full.
    uint64_t tx_errors = 0;       // Dropped: other send errors.
    uint64_t rx_datagrams = 0;    // Host to guest, delivered.
    uint64_t rx_bytes = 0;
    uint64_t table_full = 0;       // Datagrams dropped: no room for a new flow.
    uint64_t bad_destination = 0;  // Or source: see the file comment.
    uint64_t malformed = 0;        // Port 0, a segmentation request not for UDP.
    uint64_t socket_errors = 0;    // Sockets not opened, connected or watched.
    uint64_t unreachable = 0;      // Connects that failed as unreachable.
    uint64_t collisions = 0;       // Inbound datagrams whose guest-side key was taken.
    uint64_t icmp_sent = 0;        // ICMP errors sent to the guest.
    uint64_t icmp_ignored = 0;     // Error-queue entries not passed on.
    uint64_t ignored = 0;          // An IP version turned off.
  };

  // kInvalidArgument for missing env services or options out of range;
  // the errno's status, naming the port, when a forwarded port cannot be
  // bound.
  static absl::StatusOr<std::unique_ptr<UdpTranslator>> Create(const TranslatorEnv& env,
                                                               const UdpTranslatorOptions& options);
  ~UdpTranslator() override;
  UdpTranslator(const UdpTranslator&) = delete;
  UdpTranslator& operator=(const UdpTranslator&) = delete;

  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
               const ParsedFrame& parsed) override;
  void OnBatchEnd() override;

  FlowProto proto() const override { return FlowProto::kUdp; }
  void OnSocketEvent(uint64_t tag, uint32_t events) override;
  void OnTimer(FlowId id, int64_t now_ns) override;
  void OnRxAvailable() override;
  void Shutdown() override;
  std::string StatsLine() const override;
  // Migration (udp_migrate.cc): each flow travels as its guest-side key,
  // the guest's MAC, its idle time left and its host side (an outbound
  // flow's socket's local and peer endpoints, an inbound one's host key).
  // The destination opens a new socket bound to the same local port where
  // it is free (another where not), or finds the forward's listener.
  absl::Status SaveState(StateWriter& out, RepairControl* repair) override;
  absl::Status StageRecord(const RecordHeader& header, StateReader& in) override;
  void ApplyStaged(RepairControl* repair) override;
  void DiscardStaged() override { staged_.clear(); }
  void OnMigratedOut(bool linger) override;

  const Stats& stats() const { return stats_; }
  const UdpVuReceiver::Stats& rx_stats() const { return receiver_.stats(); }
  size_t flow_count() const { return flow_count_; }
  size_t listener_count() const { return listeners_.size(); }
  // Whether sizes are peeked in batches (ProbeUdpPeekOffset), per version.
  bool batch_peek4() const { return peek4_; }
  bool batch_peek6() const { return peek6_; }

  // The most datagrams a segmented frame the socket refused is sent as:
  // what Linux's UDP_SEGMENT takes (UDP_MAX_SEGMENTS, 128 since 6.9).
  static constexpr size_t kMaxSplitSegments = 128;

  // Epoll kinds, relative to env.first_kind.
  static constexpr uint8_t kFlowSocketKind = 0;  // A FlowRef of an outbound flow.
  static constexpr uint8_t kListenerKind = 1;    // The listener's index below.

 private:
  struct UdpFlow {
    UniqueFd fd;  // Outbound: the connected socket. Inbound: none.
    int64_t last_active_ns = 0;
    MacAddr guest_mac;
    uint32_t listener = 0;  // Inbound: the forwarding socket's index.
    bool inbound = false;
    bool dns = false;
    bool answered = false;
    bool blocked = false;  // Waiting for receive buffers.
    UdpRxSocketState rx;
  };
  struct Listener {
    UniqueFd fd;
    int family = AF_INET;
    in_addr bind4{};
    in6_addr bind6{};
    uint16_t port = 0;
    uint16_t guest_port = 0;
    bool blocked = false;
    UdpRxSocketState rx;
  };

  UdpTranslator(const TranslatorEnv& env, const UdpTranslatorOptions& options);
  absl::Status OpenListeners();
  // IP_RECVERR / IPV6_RECVERR, buffer sizes, and the peek offset where usable.
  void SetUpSocket(int fd, int family, UdpRxSocketState* rx);
  // `*skipped`: a weak forward's port that is in use or privileged was left
  // out (OK status).
  absl::Status OpenListener(const PortForward& forward, int family, uint16_t host_port,
                            uint16_t guest_port, bool* skipped);

  int64_t Now() const { return clock_(); }
  uint64_t FlowTag(FlowId id) const;
  uint64_t ListenerTag(size_t index) const;

  // Guest to host.
  FlowId OpenOutbound(const FlowKey& key, const ParsedFrame& parsed, absl::Span<const iovec> frame);
  // Queues the datagram at [offset, offset + len) of `frame`; with
  // gso_size, the datagrams of gso_size bytes (the last shorter) it holds.
  void Queue(const UdpFlow& flow, FlowId id, absl::Span<const iovec> frame, size_t offset,
             size_t len, uint16_t gso_size);
  void FlushTx();
  void SendGroup(int fd, mmsghdr* msgs, size_t count);
  // Sends a UDP_SEGMENT message the socket refused as one datagram per
  // segment; false if it could not (too many segments, or an error).
  bool SendSplit(int fd, const mmsghdr& m);

  // Host to guest.
  void ReceiveFlow(FlowId id, UdpFlow* flow);
  void ReceiveListener(size_t index);
  bool PrepareInbound(size_t listener, const sockaddr_storage& peer, socklen_t peer_len,
                      FrameSpec* spec);
  FlowId OpenInbound(size_t listener, const FlowKey& host_key);
  void FillSpec(const FlowKey& key, const MacAddr& guest_mac, FrameSpec* spec);
  void Block(int fd, uint64_t tag, bool* blocked);

  // ICMP errors.
  void DrainErrors(int fd, FlowId flow, size_t listener);
  void SendUnreachable(const FlowKey& key, const MacAddr& guest_mac, uint8_t origin, uint8_t type,
                       uint8_t code, const uint8_t* quote, size_t quote_len);

  void Close(FlowId id);

  // A flow read from a migration stream, not yet opened.
  struct StagedFlow {
    FlowKey key;
    FlowKey host_key;  // Inbound: the listener's address and port, the peer.
    Endpoint local;    // Outbound: the source's socket's address and port.
    Endpoint peer;     // And its peer (where the flow goes on the host).
    MacAddr guest_mac;
    int64_t idle_left_ns = 0;
    bool inbound = false;
    bool dns = false;
    bool answered = false;
  };
  bool RestoreOutbound(const StagedFlow& f);
  bool RestoreInbound(const StagedFlow& f);
  std::vector<StagedFlow> staged_;

  const TranslatorEnv env_;
  const UdpTranslatorOptions options_;
  int64_t (*clock_)() = nullptr;
  Stats stats_;
  size_t flow_count_ = 0;
  bool peek4_ = false;
  bool peek6_ = false;
  bool shut_down_ = false;
  std::vector<Listener> listeners_;
  uint16_t ipv4_id_ = 0;

  // The transmit batch: per datagram its header (iovecs into tx_iov_, a
  // name for forwarding sockets) and socket.
  std::vector<mmsghdr> tx_msgs_;
  std::vector<sockaddr_storage> tx_names_;
  std::vector<int> tx_fds_;
  std::vector<iovec> tx_iov_;
  std::vector<mmsghdr> tx_group_;
  // Per message, room for a UDP_SEGMENT control message.
  union SegmentCmsg {
    cmsghdr header;
    char bytes[CMSG_SPACE(sizeof(uint16_t))];
  };
  std::vector<SegmentCmsg> tx_cmsg_;
  // SendSplit's messages and their iovec entries.
  std::vector<mmsghdr> split_msgs_;
  std::vector<iovec> split_iov_;
  std::vector<uint8_t> tx_done_;
  size_t tx_pending_ = 0;
  size_t tx_iov_used_ = 0;
  bool tx_one_fd_ = true;

  UdpVuReceiver receiver_;
  // Sockets waiting for receive buffers (their epoll tags).
  std::vector<uint64_t> blocked_;
  uint8_t reply_[256];  // ICMP errors for the guest.
};

}  // namespace vunet::net

#endif  // VUNET_NET_UDP_H_
