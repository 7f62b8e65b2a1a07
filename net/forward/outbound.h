// Where the guest's outbound flows leave the host from (passt's -o/--outbound,
// --outbound-if4, --outbound-if6): the host sockets of flows the guest starts
// towards other hosts are bound to a source address and/or an interface
// before they connect. Flows to the host itself (a destination on the
// loopback, as the gateway's address becomes) are left alone: no address or
// interface outside the loopback reaches it.
//
//   OutboundBinding out;
//   out.addr4 = ...;          // -o 192.0.2.10
//   out.ifname4 = "eth0";     // --outbound-if4 eth0
//   ... socket(), then, before connect():
//   if (absl::Status s = BindOutbound(fd, destination, out); !s.ok()) ...drop the flow...

#ifndef VUNET_NET_FORWARD_OUTBOUND_H_
#define VUNET_NET_FORWARD_OUTBOUND_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace vunet::net {

struct OutboundBinding {
  std::optional<in_addr> addr4;   // Source of IPv4 flows.
  std::optional<in6_addr> addr6;  // Source of IPv6 flows.
  std::string ifname4;            // SO_BINDTODEVICE for IPv4 flows, if not empty.
  std::string ifname6;            // Likewise for IPv6.

  bool empty() const {
    return !addr4.has_value() && !addr6.has_value() && ifname4.empty() && ifname6.empty();
  }
};

// Binds `fd`, a socket not yet connected, as `binding` says for its IP
// version, for a flow to `destination` (a sockaddr_in or sockaddr_in6).
// Nothing for a loopback destination or an empty binding. A source address
// is bound with port 0, the port picked at connect() (IP_BIND_ADDRESS_NO_PORT,
// so that bound flows do not use up ephemeral ports early). Errors carry the
// address or interface and errno's text; the caller drops the flow.
//
// A non-zero `port` (a migrated flow keeping its local port) is bound
// whatever the destination: at the binding's source address where one
// applies, else at the wildcard address; where the port is taken the error
// is the bind's (EADDRINUSE), and the caller may try again with port 0.
absl::Status BindOutbound(int fd, const sockaddr* destination, const OutboundBinding& binding,
                          uint16_t port = 0);

}  // namespace vunet::net

#endif  // VUNET_NET_FORWARD_OUTBOUND_H_
