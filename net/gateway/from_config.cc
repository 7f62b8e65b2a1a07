#include "net/gateway/from_config.h"

#include <algorithm>

namespace vunet::net {
namespace {

// `a` with all but its first `len` bits cleared.
in6_addr Masked6(const in6_addr& a, int len) {
  in6_addr out{};
  for (int i = 0; i < 16; ++i) {
    const int bits = std::clamp(len - 8 * i, 0, 8);
    out.s6_addr[i] = static_cast<uint8_t>(a.s6_addr[i] & (0xff00 >> bits));
  }
  return out;
}

}  // namespace

ArpConfig ToArpConfig(const GuestConfig& c) {
  ArpConfig a;
  a.gateway_mac = c.gateway_mac;
  a.guest_addr = c.addr4;
  return a;
}

DhcpConfig ToDhcpConfig(const GuestConfig& c) {
  DhcpConfig d;
  d.gateway_mac = c.gateway_mac;
  d.gateway_addr = c.gateway4;
  d.guest_addr = c.addr4;
  d.prefix_len = c.prefix_len4;
  if (!c.no_dhcp_dns) d.dns = c.dns4;
  if (!c.no_dhcp_search) d.search_domains = c.search_domains;
  d.mtu = static_cast<uint16_t>(c.mtu);  // kMaxMtu fits.
  return d;
}

NdpConfig ToNdpConfig(const GuestConfig& c) {
  NdpConfig n;
  n.gateway_mac = c.gateway_mac;
  n.gateway_ll = c.our_link_local6;
  n.gateway = IN6_IS_ADDR_LINKLOCAL(&c.gateway6) ? in6_addr{} : c.gateway6;
  n.prefix = Masked6(c.addr6, c.prefix_len6);
  n.prefix_len = c.prefix_len6;
  n.mtu = c.mtu >= 1280 ? c.mtu : 0;
  if (!c.no_dhcp_dns) n.dns = c.dns6;
  if (!c.no_dhcp_search) n.search_domains = c.search_domains;
  return n;
}

Dhcpv6Config ToDhcpv6Config(const GuestConfig& c) {
  Dhcpv6Config d;
  d.gateway_mac = c.gateway_mac;
  d.gateway_ll = c.our_link_local6;
  d.guest_addr = c.addr6;
  if (!c.no_dhcp_dns) d.dns = c.dns6;
  if (!c.no_dhcp_search) d.search_domains = c.search_domains;
  return d;
}

}  // namespace vunet::net
