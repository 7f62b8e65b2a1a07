// How the guest's destinations map to the host, as passt's options give it
// (--map-host-loopback, --no-map-gw, --map-guest-addr, --dns-forward,
// --dns-host): parsed and checked by the backend's command line
// (tools/vunet/cli.cc), turned into the forwarding rules every translator
// follows by RulesFromConfig (net/forward/forward.h).
//
//   DestinationMap map;
//   map.map_gateway = false;                  // --no-map-gw
//   map.host_loopback4 = ...;                 // --map-host-loopback 10.0.2.3
//   ForwardRules rules = RulesFromConfig(guest, HostResolvers(), map);

#ifndef VUNET_NET_FORWARD_DESTINATION_MAP_H_
#define VUNET_NET_FORWARD_DESTINATION_MAP_H_

#include <netinet/in.h>

#include <optional>

namespace vunet::net {

struct DestinationMap {
  // --map-host-loopback ADDR, per IP version: the guest destination that
  // stands for the host's loopback (127.0.0.1 or ::1 as the host sees it),
  // in place of the gateway's addresses of that version. Unset: the
  // gateway's addresses, unless map_gateway is false.
  std::optional<in_addr> host_loopback4;
  std::optional<in6_addr> host_loopback6;
  // False with --no-map-gw, or --map-host-loopback none: the gateway's
  // addresses do not stand for the host's loopback; they are translated
  // like any other.
  bool map_gateway = true;
  // --map-guest-addr ADDR, per IP version ("none": unset): this destination
  // stands for the address the guest was given (-a), as the host sees it
  // (by default the host's own global address, which the guest's shadows).
  std::optional<in_addr> guest_addr4;
  std::optional<in6_addr> guest_addr6;
  // --dns-forward ADDR, per IP version: DNS (TCP and UDP, ports 53 and 853)
  // to this address goes to the host resolver of that version (dns_host,
  // else resolv.conf's first).
  std::optional<in_addr> dns_forward4;
  std::optional<in6_addr> dns_forward6;
  // --dns-host ADDR, per IP version: where dns_forward's queries go.
  std::optional<in_addr> dns_host4;
  std::optional<in6_addr> dns_host6;

  // True if something other than passt's defaults was asked for.
  bool customized() const {
    return host_loopback4 || host_loopback6 || !map_gateway || guest_addr4 || guest_addr6 ||
           dns_forward4 || dns_forward6 || dns_host4 || dns_host6;
  }
};

}  // namespace vunet::net

#endif  // VUNET_NET_FORWARD_DESTINATION_MAP_H_
