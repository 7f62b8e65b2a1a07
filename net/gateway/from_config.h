// The gateway services' configurations, derived from the guest's addressing
// (net/config): what ARP, DHCP, NDP and DHCPv6 answer.
//
//   DhcpServer dhcp = DhcpServer::Create(ToDhcpConfig(guest_config)).value();

#ifndef VUNET_NET_GATEWAY_FROM_CONFIG_H_
#define VUNET_NET_GATEWAY_FROM_CONFIG_H_

#include "net/config/config.h"
#include "net/gateway/arp.h"
#include "net/gateway/dhcp.h"
#include "net/gateway/dhcpv6.h"
#include "net/gateway/ndp.h"

namespace vunet::net {

// The NDP MTU option is left out when the MTU is below IPv6's minimum (1280).
// DHCP, NDP and DHCPv6 get no DNS servers with no_dhcp_dns and no search list
// with no_dhcp_search.
ArpConfig ToArpConfig(const GuestConfig& config);
DhcpConfig ToDhcpConfig(const GuestConfig& config);
NdpConfig ToNdpConfig(const GuestConfig& config);
Dhcpv6Config ToDhcpv6Config(const GuestConfig& config);

}  // namespace vunet::net

#endif  // VUNET_NET_GATEWAY_FROM_CONFIG_H_
