// The first stop of a guest's frames: parses each one, answers what the
// gateway answers itself (ARP, DHCP, NDP, DHCPv6), and routes everything else,
// parsed, to the translator of its L4 protocol (a table, not a chain).
//
// A Dispatcher is the data path's vu::FrameSink. Replies are written into one
// fixed buffer the dispatcher owns and sent through the guest's RxQueue, so a
// frame costs no allocation. Every frame that parses is shown to the guest's
// identity first (GuestIdentity::Learn: its MAC and addresses, learned here
// and nowhere else).
//
//   Dispatcher dispatch({.arp = &arp, .dhcp = &dhcp, .ndp = &ndp, .dhcpv6 = &dhcpv6},
//                       &rx_queue, &forwarding.guest());
//   dispatch.Route(L4Kind::kTcp, tcp);
//   dispatch.Route(L4Kind::kUdp, udp);
//   dispatch.Route(L4Kind::kIcmp, icmp);    // ICMP and ICMPv6 echo alike
//   tx_handler.Process(net_config, tx_vq, &dispatch);
//
// What goes where:
//   - frames ParseFrame refuses are dropped (it has logged why); so are
//     frames whose virtio-net header asks what the negotiated features do
//     not allow or the frame cannot be (CheckGuestOffload, net/packet/
//     offload.h: a checksum or segmentation request out of range or not
//     negotiated), counted by problem with one rate-limited log line, so
//     that a routed sink may rely on the header of every frame it gets;
//   - ARP to the ARP handler; DHCP (IPv4 UDP to port 67) to the DHCP server;
//     router and neighbour solicitations to the NDP responder; DHCPv6 (IPv6
//     UDP to port 547) to the DHCPv6 server; a frame one of them takes is not
//     routed further, answered or not;
//   - TCP, UDP, and ICMP or ICMPv6 to the sink routed for them, which gets
//     OnBatchEnd once at the end of a transmit batch in which it had frames;
//   - the rest, and frames of a protocol with no sink (--no-tcp...), are
//     dropped and counted by protocol. A service left null lets its frames
//     fall through to routing (ARP excepted: nothing else wants it).

#ifndef VUNET_NET_DISPATCH_H_
#define VUNET_NET_DISPATCH_H_

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "net/forward/forward.h"
#include "net/gateway/arp.h"
#include "net/gateway/dhcp.h"
#include "net/gateway/dhcpv6.h"
#include "net/gateway/ndp.h"
#include "net/packet/frame.h"
#include "net/packet/offload.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/rx_queue.h"

namespace vunet::net {

// Where the dispatcher routes the frames of one protocol, parsed, so that
// the next layer need not parse again.
//
// `frame` is the frame's bytes in guest memory: they stay valid and in place
// until OnBatchEnd returns (the transmit handler hands the buffers back to the
// guest after it), so a sink may keep the iovecs until then (to batch its
// syscalls, or to take segments in order). Values must be copied out before
// they are checked: the guest can rewrite its buffers while we read them.
// `hdr` passed CheckGuestOffload against `parsed` and the negotiated
// features: a segmentation request (gso_type other than NONE) is for the
// frame's own protocol and IP version, with 0 < gso_size <= the payload, and
// the frame ends where its IP packet does.
class ParsedFrameSink {
 public:
  virtual ~ParsedFrameSink() = default;
  virtual void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                       const ParsedFrame& parsed) = 0;
  // The transmit batch ended; every frame of it is still in place.
  virtual void OnBatchEnd() {}
};

class Dispatcher : public vu::FrameSink {
 public:
  // The services in use; null ones are skipped. They must outlive the
  // dispatcher.
  struct Handlers {
    const ArpConfig* arp = nullptr;
    const DhcpServer* dhcp = nullptr;
    const NdpResponder* ndp = nullptr;
    const Dhcpv6Server* dhcpv6 = nullptr;
  };
  struct Stats {
    uint64_t frames = 0;
    uint64_t malformed = 0;  // Refused by ParseFrame.
    // Refused by CheckGuestOffload, in all and by OffloadProblem.
    uint64_t offload_refused = 0;
    uint64_t offload_refused_by[kOffloadProblemCount] = {};
    uint64_t replies = 0;        // Sent.
    uint64_t send_failures = 0;  // Replies the guest had no room for.
    uint64_t routed = 0;         // Given to a translator.
    uint64_t gso_routed = 0;     // Of those, segmentation requests (gso_type set).
    // Dropped: no translator routed for their protocol, or another protocol.
    uint64_t tcp_dropped = 0;
    uint64_t udp_dropped = 0;
    uint64_t icmp_dropped = 0;
    uint64_t other_dropped = 0;
  };

  // `rx` (the replies' way to the guest) and `guest` (shown every frame; may
  // be null) must outlive the dispatcher.
  Dispatcher(const Handlers& handlers, vu::RxQueue* rx, GuestIdentity* guest = nullptr)
      : handlers_(handlers), rx_(rx), guest_(guest) {}

  // Frames of `l4` (kTcp, kUdp, or kIcmp for ICMP and ICMPv6 alike) go to
  // `sink`; nullptr drops them (counted). The sink must outlive the
  // dispatcher.
  void Route(L4Kind l4, ParsedFrameSink* sink);

  // The negotiated features, for the check of each frame's virtio-net
  // header (until set: none, so any checksum or segmentation request is
  // refused). The owner sets it whenever the device's features change.
  void SetNetConfig(const vu::NetConfig& config);

  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) override;
  void OnBatchEnd() override;

  const Stats& stats() const { return stats_; }

 private:
  enum RouteIndex : uint8_t { kRouteTcp, kRouteUdp, kRouteIcmp, kRoutes };
  // Sends reply_[0..n) if the handler produced one.
  void SendReply(const absl::StatusOr<size_t>& n);
  void Drop(const ParsedFrame& parsed);

  Handlers handlers_;
  vu::RxQueue* rx_;
  GuestIdentity* guest_;
  GuestOffloads offloads_;
  ParsedFrameSink* routes_[kRoutes] = {};
  bool in_batch_[kRoutes] = {};
  Stats stats_;
  uint8_t reply_[std::max({kArpReplyLen, kDhcpMaxReplyLen, kNdpMaxReplyLen, kDhcpv6MaxReplyLen})];
};

}  // namespace vunet::net

#endif  // VUNET_NET_DISPATCH_H_
