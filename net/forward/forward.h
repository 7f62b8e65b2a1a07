// One forwarding policy for every translator (TCP, UDP, ICMP echo): which of
// the guest's destinations are refused, which stand for the host itself, how
// host peers appear to the guest, and who the guest is as its frames show it.
//
// Outbound (a guest flow to `dst`), in this order:
//   1. a family the guest does not have (-4, -6) is refused;
//   2. DNS: a query (TCP or UDP, port 53) to an address the guest was given as
//      its DNS server in place of a resolver it cannot reach (a resolver on
//      the host's loopback, such as systemd-resolved's 127.0.0.53) goes to
//      that resolver; so does one (port 53 or 853) to passt's --dns-forward
//      address, to --dns-host or the host's first resolver;
//   3. an address that stands for the host's loopback goes there, to
//      127.0.0.1 or ::1: by default the gateway's (its IPv4 address, its IPv6
//      address unless that is link-local, and our own link-local address);
//      passt's --map-host-loopback ADDR puts ADDR in place of the gateway's
//      addresses of its IP version, --no-map-gw (or --map-host-loopback
//      none) leaves the gateway's out;
//   4. passt's --map-guest-addr: that address goes to the guest's own address
//      on the host (with mirrored addressing, the host's own address, which
//      the guest's shadows);
//   5. refused: the unspecified address, "this network" (0.0.0.0/8), loopback
//      (the guest's own), multicast, the limited broadcast and the guest's
//      subnet broadcast, IPv6 link-local (other than those above) and
//      v4-mapped addresses; TCP and UDP to port 0;
//   6. anything else goes where the guest sent it.
// The same rules hold for TCP, UDP and ICMP (forward_test runs each against
// all three).
//
// Inbound (a host peer reaching the guest through a -t/-u forward): a peer on
// the host's loopback appears to come from the first address that stands
// for it (the gateway's, by default) of the guest's family; a peer using the
// guest's own address on the host (with mirrored addressing, the host's
// address) from the --map-guest-addr address of that family, else as a
// loopback peer; an IPv6 link-local peer (of another link) is not
// translated; any other peer comes from its own address.
//
// The guest's identity (GuestIdentity) is learned in one place: the
// dispatcher shows it the source of every guest frame that parsed.
//
//   ForwardRules rules = RulesFromConfig(guest_config, HostResolvers(), cli.destinations);
//   Forwarding forward(rules);
//   Refusal why;
//   std::optional<Endpoint> to = forward.Outbound(FlowProto::kTcp, dst, &why);
//   if (!to) { /* RST, counted by RefusalName(why) */ }

#ifndef VUNET_NET_FORWARD_FORWARD_H_
#define VUNET_NET_FORWARD_FORWARD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "net/config/config.h"
#include "net/flow/flow.h"
#include "net/forward/destination_map.h"
#include "net/packet/frame.h"
#include "net/packet/inet.h"

namespace vunet::net {

// Queries (TCP or UDP) the guest sends to `guest` go to `host` instead (they
// may differ in IP version).
struct DnsForward {
  Endpoint guest;
  Endpoint host;
};

struct ForwardRules {
  bool ipv4 = true;  // Families the guest has (-4, -6 clear one).
  bool ipv6 = true;
  // The guest's configured addresses and IPv4 prefix (its subnet broadcast
  // is refused).
  InetAddr guest4;
  InetAddr guest6;
  int prefix_len4 = 24;
  // Addresses that stand for the host itself: traffic to them goes to its
  // loopback, and the host's own connections to the guest come from the
  // first of the guest's family (a global IPv6 address before a link-local
  // one).
  std::vector<InetAddr> host_loopback;
  // passt's --map-guest-addr: traffic to these goes to the guest's own
  // address (guest4 or guest6) on the host, and host peers using that
  // address come from the first of the guest's family.
  std::vector<InetAddr> guest_addr_alias;
  std::vector<DnsForward> dns;
};

// The rules for a guest configured as `guest`, whose host's resolvers are
// `resolvers`, with passt's options `map` (the command line's):
//  - the addresses that stand for the host's loopback: per IP version,
//    map.host_loopback4/6 if set, else the gateway's addresses (unless
//    map.map_gateway is false);
//  - map.guest_addr4/6: the aliases of the guest's own address;
//  - DNS: map.dns_forward4/6's ports 53 and 853 to map.dns_host4/6, else to
//    the host's first resolver of that version that is not link-local (none
//    if there is no such resolver: the caller may say so); then, where
//    MirrorHost gave the guest the gateway address in place of a resolver on
//    the host's loopback, the gateway's port 53 to the first such resolver,
//    per IP version (link-local resolvers, which need an interface, are not
//    mapped).
ForwardRules RulesFromConfig(const GuestConfig& guest, const config_internal::Resolver& resolvers,
                             const DestinationMap& map = {});

// The host's resolvers as `resolv_conf` (normally /etc/resolv.conf) lists
// them; none if it cannot be read.
config_internal::Resolver HostResolvers(const std::string& resolv_conf = "/etc/resolv.conf");

enum class Refusal : uint8_t {
  kNone,
  kFamily,       // -4 or -6 excludes it.
  kUnspecified,  // 0.0.0.0, ::.
  kThisNetwork,  // 0.0.0.0/8.
  kLoopback,     // The guest's own loopback.
  kMulticast,
  kBroadcast,  // 255.255.255.255 or the guest's subnet broadcast.
  kLinkLocal,  // IPv6 link-local other than ours; IPv4 169.254/16 is routable.
  kV4Mapped,   // ::ffff:a.b.c.d from the guest.
  kPort,       // TCP or UDP to port 0.
};
const char* RefusalName(Refusal refusal);

// The guest as its frames show it: its MAC and the addresses it uses, which
// inbound flows and the frames we start are addressed to. Until its frames
// say otherwise, what it was configured with.
class GuestIdentity {
 public:
  GuestIdentity(const MacAddr& mac, const InetAddr& addr4, const InetAddr& addr6);

  // A frame from the guest: a unicast, non-zero source MAC becomes its MAC;
  // a non-zero IPv4 source its IPv4 address; a global IPv6 source its IPv6
  // address (a link-local one its link-local address). ARP and DHCP frames
  // from an address not yet assigned (0.0.0.0) change no address. Logs each
  // change, rate-limited.
  void Learn(const ParsedFrame& parsed);
  // Everything at once, as a migration's source knew it.
  void Restore(const MacAddr& mac, const InetAddr& addr4, const InetAddr& addr6,
               const InetAddr& link_local6);

  const MacAddr& mac() const { return mac_; }
  // Its address of `family` (AF_INET, AF_INET6); empty if it has none.
  const InetAddr& address(int family) const { return family == AF_INET ? addr4_ : addr6_; }
  const InetAddr& link_local6() const { return link_local6_; }

 private:
  MacAddr mac_;
  InetAddr addr4_;
  InetAddr addr6_;
  InetAddr link_local6_;
};

class Forwarding {
 public:
  // The guest's identity starts as `guest_mac` and the rules' guest4/guest6.
  Forwarding(const ForwardRules& rules, const MacAddr& guest_mac);

  // Where a guest flow of `proto` to `dst` goes on the host, or nullopt
  // (with the reason in *why) if it is refused. For ICMP echo the port is
  // ignored (0).
  std::optional<Endpoint> Outbound(FlowProto proto, const Endpoint& dst,
                                   Refusal* why = nullptr) const;
  // The address a host peer appears to come from in a flow to the guest's
  // address of `family` (a peer of the other family is not translated:
  // empty); empty too if the host has no address to stand for it.
  InetAddr InboundSource(const InetAddr& peer, int family) const;
  // True if `dst` (as the guest addressed it) stands for the host's
  // loopback.
  bool IsHost(const InetAddr& dst) const;

  GuestIdentity& guest() { return guest_; }
  const GuestIdentity& guest() const { return guest_; }
  const ForwardRules& rules() const { return rules_; }

 private:
  ForwardRules rules_;
  GuestIdentity guest_;
  uint32_t subnet_broadcast4_ = 0;  // Network order; 0 for none.
};

}  // namespace vunet::net

#endif  // VUNET_NET_FORWARD_FORWARD_H_
