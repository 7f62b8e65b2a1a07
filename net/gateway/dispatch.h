// The first stop of a guest's frames: parses each one and answers what the
// net layer answers itself (ARP, DHCP, NDP, DHCPv6), handing everything else on,
// parsed, to the translators.
//
// A Dispatcher is the data path's vu::FrameSink. Replies go out through a
// ReplySender, which in the backend is a VirtqueueReplySender on the
// receive queue (vu::SendSingle); tests substitute their own. Each reply is
// written into one fixed buffer the dispatcher owns, so a frame costs no
// allocation.
//
//   ArpConfig arp = ...;
//   DhcpServer dhcp = DhcpServer::Create(dhcp_config).value();
//   NdpResponder ndp = NdpResponder::Create(ndp_config).value();
//   Dhcpv6Server dhcpv6 = Dhcpv6Server::Create(dhcpv6_config).value();
//   VirtqueueReplySender replies(&net_config, rx_vq);
//   Dispatcher dispatch({.arp = &arp, .dhcp = &dhcp, .ndp = &ndp, .dhcpv6 = &dhcpv6},
//                       &replies, &flows);
//   tx_handler.Process(net_config, tx_vq, &dispatch);
//
// What goes where:
//   - frames ParseFrame refuses are dropped (it has logged why);
//   - ARP to the ARP handler; DHCP (IPv4 UDP to port 67) to the DHCP server;
//     router and neighbour solicitations to the NDP responder; DHCPv6 (IPv6
//     UDP to port 547) to the DHCPv6 server; a frame one of them takes is not
//     passed on, answered or not;
//   - every other frame that parsed goes to `next`, or is counted as ignored
//     if there is none. A handler left null lets its frames fall through to
//     `next` too (ARP excepted: nothing else wants it).

#ifndef VUNET_NET_DISPATCH_H_
#define VUNET_NET_DISPATCH_H_

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "net/gateway/arp.h"
#include "net/gateway/dhcp.h"
#include "net/gateway/dhcpv6.h"
#include "net/packet/frame.h"
#include "net/gateway/ndp.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"

namespace vunet::net {

// Where the dispatcher's replies go.
class ReplySender {
 public:
  virtual ~ReplySender() = default;
  // Sends one Ethernet frame to the guest; `frame` is valid only during the
  // call. An error means the frame was dropped.
  virtual absl::Status Send(absl::Span<const uint8_t> frame) = 0;
};

// Sends replies into the guest's receive queue with vu::SendSingle. The
// config and queue must outlive it.
class VirtqueueReplySender : public ReplySender {
 public:
  VirtqueueReplySender(const vu::NetConfig* config, virtio::Virtqueue* rx)
      : config_(config), rx_(rx) {}
  absl::Status Send(absl::Span<const uint8_t> frame) override;

 private:
  const vu::NetConfig* config_;
  virtio::Virtqueue* rx_;
};

// Where frames the dispatcher does not answer go, with their parse, so the
// next layer need not parse again. Same lifetime rules as vu::FrameSink.
class ParsedFrameSink {
 public:
  virtual ~ParsedFrameSink() = default;
  virtual void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame,
                       const ParsedFrame& parsed) = 0;
  virtual void OnBatchEnd() {}
};

class Dispatcher : public vu::FrameSink {
 public:
  // The handlers in use; null ones are skipped. They must outlive the
  // dispatcher.
  struct Handlers {
    const ArpConfig* arp = nullptr;
    const DhcpServer* dhcp = nullptr;
    const NdpResponder* ndp = nullptr;
    const Dhcpv6Server* dhcpv6 = nullptr;
  };
  struct Stats {
    uint64_t frames = 0;
    uint64_t malformed = 0;      // Refused by ParseFrame.
    uint64_t replies = 0;        // Sent.
    uint64_t send_failures = 0;  // Replies the guest had no room for.
    uint64_t passed_on = 0;      // Given to `next`.
    uint64_t ignored = 0;        // Nobody wanted them.
  };

  Dispatcher(const Handlers& handlers, ReplySender* replies, ParsedFrameSink* next = nullptr)
      : handlers_(handlers), replies_(replies), next_(next) {}

  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) override;
  void OnBatchEnd() override;

  const Stats& stats() const { return stats_; }

 private:
  // Sends reply_[0..n) if the handler produced one.
  void SendReply(const absl::StatusOr<size_t>& n);

  Handlers handlers_;
  ReplySender* replies_;
  ParsedFrameSink* next_;
  Stats stats_;
  uint8_t reply_[std::max({kArpReplyLen, kDhcpMaxReplyLen, kNdpMaxReplyLen, kDhcpv6MaxReplyLen})];
};

}  // namespace vunet::net

#endif  // VUNET_NET_DISPATCH_H_
