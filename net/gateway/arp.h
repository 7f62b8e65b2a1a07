// ARP for the guest's one link (RFC 826): we are every other host on it.
//
// The guest's only neighbour is us, and every packet it sends, whatever the
// destination, reaches us and is translated; so a request for any IPv4
// address other than the guest's own is answered with the gateway's MAC, not
// just one for the gateway address. That keeps working when the guest treats
// more of the address space as on-link than we expect (a wider prefix, a
// host route, another address in its subnet).
//
// Not answered: requests for the guest's own address (its duplicate-address
// probes must find nobody), gratuitous ARP (target equals sender:
// announcements), requests for 0.0.0.0, requests from a multicast sender
// hardware address, and anything but a request.
//
//   ParsedFrame parsed;  // From ParseFrame on the guest's frame.
//   uint8_t reply[kArpReplyLen];
//   absl::StatusOr<size_t> n = ArpReply(config, parsed, reply);
//   if (n.ok() && *n > 0) vu::SendSingle(net_config, rx_vq, {reply, *n});

#ifndef VUNET_NET_ARP_H_
#define VUNET_NET_ARP_H_

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "net/packet/frame.h"

namespace vunet::net {

struct ArpConfig {
  MacAddr gateway_mac;   // What we answer with.
  in_addr guest_addr{};  // Never answered for.
};

// The length of a reply (before padding to the Ethernet minimum, which the
// data path adds).
inline constexpr size_t kArpReplyLen = kEthHeaderLen + kArpLen;

// If `frame` (already parsed) is an ARP request we answer, writes the reply
// frame into `out` and returns its length, kArpReplyLen; returns 0 if there is
// nothing to answer. kInvalidArgument if `out` is shorter than kArpReplyLen.
absl::StatusOr<size_t> ArpReply(const ArpConfig& config, const ParsedFrame& frame,
                                absl::Span<uint8_t> out);

}  // namespace vunet::net

#endif  // VUNET_NET_ARP_H_
