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
};

// Parses a passt-style forwarding spec, the argument of -t or -u:
//   "none"                    nothing (an empty result)
//   "8080" "8000-8010"        host ports to the same guest ports
//   "8080:80" "8000-8010:9000-9010"  host ports to other guest ports
//   "127.0.0.1/8080" "::1/8080"      bound to one host address
//   "%lo/8080" "127.0.0.1%lo/22"     bound to an interface
//   "8080,8443:443"           several, comma-separated
//   "all" / "auto"            refused for now (kUnimplemented, one line)
// Excluded ports ("~22") are not supported (kUnimplemented). Errors are one
// line naming the spec (kInvalidArgument).
absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec);

}  // namespace vunet::net

#endif  // VUNET_NET_CONFIG_PORT_FORWARD_H_
