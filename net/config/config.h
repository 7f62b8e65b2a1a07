// The guest's addressing: by default mirrored from the host, as passt does
// (the guest gets the host's own address, prefix and default gateway, so that
// traffic it sends looks, once translated, like the host's own), each part
// overridable with options named as passt names them.
//
//   absl::StatusOr<GuestConfig> config = MirrorHost(HostSources{});
//   ConfigOverrides o;
//   o.mtu = "1500";
//   o.dns = {"192.0.2.53"};
//   absl::Status s = ApplyOverrides(&*config, o);
//   DhcpServer dhcp = DhcpServer::Create(ToDhcpConfig(*config)).value();  //
//   net/gateway/from_config.h
//
// Mirroring, for each IP version separately (MirrorHost):
//   - the default gateway is the default route of lowest metric from
//     /proc/net/route (IPv4) or /proc/net/ipv6_route (IPv6), ignoring reject
//     routes and loopback;
//   - the address is the first routable one (up, not loopback, not
//     link-local, not multicast) on the default route's interface, or the
//     first routable one on any interface if that one has none;
//   - with HostSources::interface (-i, --interface NAME), only that
//     interface counts: its default route of lowest metric (a default route
//     through another interface is not used) and its first routable address;
//   - a family without both a default gateway and a routable address falls
//     back to fixed defaults (the host is, for example, a network namespace
//     with only loopback), and GuestConfig::mirrored4/mirrored6 say which:
//       IPv4: 10.0.2.15/24, gateway 10.0.2.2 (the addresses slirp uses);
//       IPv6: fd00:5655:4e45::2/64 (a ULA prefix), gateway fe80::1.
//   - DNS servers and the search list come from /etc/resolv.conf
//     ("nameserver", and the last "search" or "domain" line). A resolver the
//     guest cannot reach at its own address — on the host's loopback
//     (127.0.0.0/8, ::1, e.g. systemd-resolved's 127.0.0.53) or a link-local
//     IPv6 address — is replaced by the gateway address of its family: DNS
//     forwarding (a later issue) maps queries to the gateway onto the host's
//     resolver. Without any nameserver line the guest gets no DNS servers.
//
// Our own link-local IPv6 address (the source of router advertisements, the
// router the guest learns) is the host's IPv6 gateway when that is
// link-local, which is the common case, and fe80::1 otherwise.
//
// Not mirrored: the MTU (65520 by default, as passt's; the guest's link is
// memory, not the host's NIC) and the MACs (fixed, locally administered).

#ifndef VUNET_NET_CONFIG_H_
#define VUNET_NET_CONFIG_H_

#include <netinet/in.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "net/packet/frame.h"

namespace vunet::net {

// Our own MAC, the source of every frame we send the guest (passt's -M
// default). Locally administered, unicast.
inline constexpr MacAddr kDefaultGatewayMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};
// The MAC we expect the guest to use (the next one up). Replies go to the
// source MAC of the guest's frames; this is for frames we send first.
inline constexpr MacAddr kDefaultGuestMac = {{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x56}};

inline constexpr uint32_t kDefaultMtu = 65520;
inline constexpr uint32_t kMinMtu = 68;
inline constexpr uint32_t kMaxMtu = 65520;

struct GuestConfig {
  MacAddr guest_mac = kDefaultGuestMac;
  MacAddr gateway_mac = kDefaultGatewayMac;

  // IPv4: the guest's address and prefix, and its gateway (which is us: the
  // gateway address reaches the host's loopback).
  in_addr addr4{};
  int prefix_len4 = 24;
  in_addr gateway4{};

  // IPv6: the guest's address (given by DHCPv6; SLAAC picks its own in the
  // prefix), the gateway as the host has it (link-local or global), and our
  // link-local address.
  in6_addr addr6{};
  int prefix_len6 = 64;
  in6_addr gateway6{};
  in6_addr our_link_local6{};

  std::vector<in_addr> dns4;
  std::vector<in6_addr> dns6;
  std::vector<std::string> search_domains;

  uint32_t mtu = kDefaultMtu;

  bool no_dhcp = false;
  bool no_ndp = false;
  bool no_dhcpv6 = false;
  bool no_ra = false;
  bool ipv4_only = false;  // -4
  bool ipv6_only = false;  // -6
  // DHCP, DHCPv6 and router advertisements offer no DNS servers (RDNSS) /
  // no search list (DNSSL); the lists above are kept (DNS forwarding maps
  // the gateway's address whatever the guest was told).
  bool no_dhcp_dns = false;     // --no-dhcp-dns
  bool no_dhcp_search = false;  // --no-dhcp-search

  // Whether each family came from the host (true) or is the fallback.
  bool mirrored4 = false;
  bool mirrored6 = false;
};

// One address of a host interface, as getifaddrs reports it.
struct HostAddress {
  std::string ifname;
  int family = 0;  // AF_INET or AF_INET6.
  in_addr addr4{};
  in6_addr addr6{};
  int prefix_len = 0;
  bool up = true;
  bool loopback = false;
};

// Where MirrorHost reads the host's state. Anything left empty is read from
// the system; tests inject contents.
struct HostSources {
  std::optional<std::vector<HostAddress>> addresses;  // Default: getifaddrs().
  std::optional<std::string> route;                   // Default: /proc/net/route.
  std::optional<std::string> ipv6_route;              // Default: /proc/net/ipv6_route.
  std::optional<std::string> resolv_conf;             // Default: /etc/resolv.conf.
  // Not a source but a restriction (-i, --interface): the interface whose
  // addresses and default routes are mirrored. Empty: each family's default
  // route's. A family this interface has no routable address or no default
  // route for falls back (and is logged), as a host without one does.
  std::string interface;
};

// The guest's configuration mirrored from the host (see the file comment).
// A source file that cannot be read counts as empty (and is logged); only
// getifaddrs failing is an error.
absl::StatusOr<GuestConfig> MirrorHost(const HostSources& sources = {});

// The fallback addressing of each family, as MirrorHost uses it.
void SetFallback4(GuestConfig* config);
void SetFallback6(GuestConfig* config);

// Command-line overrides, as text, with passt's option names. Empty/unset
// means "keep what MirrorHost found".
struct ConfigOverrides {
  // -a, --address ADDR: an IPv4 or IPv6 address, optionally ADDR/PREFIX.
  // Repeatable (once per family).
  std::vector<std::string> addresses;
  // -n, --netmask PREFIX|NETMASK: the IPv4 prefix, as a length (0..32) or a
  // dotted netmask.
  std::optional<std::string> netmask;
  // -g, --gateway ADDR: IPv4 or IPv6. Repeatable (once per family).
  std::vector<std::string> gateways;
  // -m, --mtu MTU: 68..65520.
  std::optional<std::string> mtu;
  // -D, --dns ADDR: repeatable; replaces the mirrored servers of the
  // families given. "none" gives the guest no DNS servers at all.
  std::vector<std::string> dns;
  // -S, --search DOMAIN: repeatable; replaces the mirrored search list.
  // "none" clears it.
  std::vector<std::string> search;
  // -M, --mac-addr ADDR: our own MAC (aa:bb:cc:dd:ee:ff, unicast).
  std::optional<std::string> mac_addr;
  bool no_dhcp = false;         // --no-dhcp
  bool no_ndp = false;          // --no-ndp
  bool no_dhcpv6 = false;       // --no-dhcpv6
  bool no_ra = false;           // --no-ra
  bool ipv4_only = false;       // -4, --ipv4-only
  bool ipv6_only = false;       // -6, --ipv6-only
  bool no_dhcp_dns = false;     // --no-dhcp-dns
  bool no_dhcp_search = false;  // --no-dhcp-search
};

// Applies `overrides` to `config`. kInvalidArgument, naming the option and
// the value, for an unparsable address or MAC, a prefix out of range, a
// netmask that is not contiguous, an MTU outside 68..65520, -4 with -6, or
// an address of a family the other flag excludes. On error `config` is
// unchanged.
absl::Status ApplyOverrides(GuestConfig* config, const ConfigOverrides& overrides);

// Parsers MirrorHost uses, exposed for tests.
namespace config_internal {

struct DefaultRoute4 {
  std::string ifname;
  in_addr gateway{};
};
struct DefaultRoute6 {
  std::string ifname;
  in6_addr gateway{};
};
// The default route of lowest metric with a gateway, if any; through
// interface `ifname` only, unless it is empty.
std::optional<DefaultRoute4> ParseDefaultRoute4(const std::string& proc_net_route,
                                                std::string_view ifname = {});
std::optional<DefaultRoute6> ParseDefaultRoute6(const std::string& proc_net_ipv6_route,
                                                std::string_view ifname = {});

struct Resolver {
  std::vector<in_addr> dns4;
  std::vector<in6_addr> dns6;
  std::vector<std::string> search;
};
Resolver ParseResolvConf(const std::string& text);

}  // namespace config_internal

}  // namespace vunet::net

#endif  // VUNET_NET_CONFIG_H_
