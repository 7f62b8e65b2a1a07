// Port forwards from the host to the guest (-t / -u), and the parser of
// their passt-style specs.

#ifndef VUNET_NET_CONFIG_PORT_FORWARD_H_
#define VUNET_NET_CONFIG_PORT_FORWARD_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace vunet::net {

// A port forward from the host to the guest (-t / -u): connections or
// datagrams to host ports [host_port, host_port + count) on `bind` go to
// the guest's [guest_port, guest_port + count).
struct PortForward {
  uint16_t host_port = 0;
  uint16_t guest_port = 0;
  uint32_t count = 1;  // 1..65536, and the ranges stay within 1..65535.
  // AF_UNSPEC: every host address, IPv4 and IPv6 (one dual-stack socket
  // where the host allows, else two); AF_INET / AF_INET6: bind4 / bind6.
  int family = AF_UNSPEC;
  in_addr bind4{};
  in6_addr bind6{};
  std::string ifname;  // SO_BINDTODEVICE if not empty ("%eth0" in a spec).
  // From "all" or a spec of exclusions only (passt's meaning): a port that
  // cannot be bound (in use, or privileged) is skipped, not an error; the
  // translator fails only if it could bind none of its weak ports.
  bool weak = false;
  // IP_FREEBIND / IPV6_FREEBIND on the listening sockets (--freebind): the
  // bind address need not be configured on the host yet.
  bool freebind = false;
};

// Ports first..last, inclusive.
struct PortRange {
  uint16_t first = 0;
  uint16_t last = 0;
};

// The ephemeral ports of this network namespace (net.ipv4.ip_local_port_range),
// which "all" leaves out; Linux's default, 32768-60999, if it cannot be read.
PortRange EphemeralPorts();

// Parses a passt-style forwarding spec, the argument of -t or -u:
//   "none"                    nothing (an empty result)
//   "8080" "8000-8010"        host ports to the same guest ports
//   "8080:80" "8000-8010:9000-9010"  host ports to other guest ports
//   "8000-8010,~8005"         ranges less excluded ports or ranges ("~")
//   "all"                     every port but the ephemeral ones (weak)
//   "~22" "~22,~8000-8080"    exclusions only: "all" less those (weak)
//   "127.0.0.1/8080" "::1/8080" "[::1]/all"  bound to one host address
//   "%lo/8080" "127.0.0.1%lo/22"     bound to an interface
//   "8080,8443:443"           several, comma-separated
// The result lists maximal runs of ports (a range with exclusions becomes
// several forwards). kInvalidArgument, one line naming the spec, for a port
// outside 1..65535, an inverted range, host and guest ranges of different
// sizes, overlapping ranges, "~" without a port, "all" beside other items, a
// bad address or interface name, or a spec that forwards no port at all;
// kUnimplemented for "auto" (pasta's, which follows a namespace's bound
// ports). `ephemeral` is what "all" leaves out.
absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec,
                                                           PortRange ephemeral);
// As above, with this network namespace's EphemeralPorts().
absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec);

// True if `a` and `b` would listen on the same port: their host port ranges
// intersect, their bind addresses can coincide (the same address, or either
// is every address of a family both cover) and so can their interfaces
// (the same one, or either has none).
bool ForwardsOverlap(const PortForward& a, const PortForward& b);

}  // namespace vunet::net

#endif  // VUNET_NET_CONFIG_PORT_FORWARD_H_
