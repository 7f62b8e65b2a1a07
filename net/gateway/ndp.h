// IPv6 Neighbor Discovery for the guest's one link (RFC 4861): we are its
// router and every other node on it.
//
// Router solicitations get a router advertisement: our link-local address as
// router, with the options the configuration holds: source link-layer
// address, MTU, one prefix (on-link and autonomous, so the guest configures
// an address by SLAAC), RDNSS and DNSSL (RFC 8106). The same advertisement
// can be sent unsolicited (at start, and periodically by the caller).
//
// Neighbour solicitations get a neighbour advertisement with the gateway's
// MAC, as ARP does for IPv4: for the gateway's addresses always, and for any
// other unicast target when the solicitation comes from an address (address
// resolution; everything on the link is us). A duplicate-address probe (from
// the unspecified address) is answered only for the gateway's own addresses,
// so that the guest's own tentative addresses pass DAD.
//
// Solicitations are validated as RFC 4861 6.1.1 and 7.1.1 ask: hop limit
// 255, code 0, a correct ICMPv6 checksum (unless the frame's checksum is
// partial by the virtio contract), enough length, options of non-zero length
// within the message, no source link-layer option from the unspecified
// address, a unicast target. Failures are dropped with a rate-limited line.

#ifndef VUNET_NET_NDP_H_
#define VUNET_NET_NDP_H_

#include <netinet/in.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "net/packet/frame.h"

namespace vunet::net {

struct NdpConfig {
  MacAddr gateway_mac;
  in6_addr gateway_ll{};  // Link-local: the source of advertisements.
  in6_addr gateway{};     // A global address of the gateway, or :: for none.
  in6_addr prefix{};      // Advertised for SLAAC unless prefix_len is 0.
  int prefix_len = 64;
  uint32_t mtu = 0;                         // MTU option if not 0 (1280..65535).
  std::vector<in6_addr> dns;                // RDNSS if not empty.
  std::vector<std::string> search_domains;  // DNSSL if not empty.
  uint16_t router_lifetime = 9000;          // Seconds (RFC 4861's maximum).
  // Prefix and DNS lifetimes: the addressing never changes, so infinite.
  uint32_t valid_lifetime = 0xffffffff;
  uint32_t preferred_lifetime = 0xffffffff;
  uint32_t dns_lifetime = 0xffffffff;
};

// The longest frame Reply and UnsolicitedAdvertisement write: an IPv6 packet
// of the minimum MTU, which every guest accepts.
inline constexpr size_t kNdpMaxReplyLen = kEthHeaderLen + 1280;
// The longest solicitation read.
inline constexpr size_t kNdpMaxMessage = 1280;

class NdpResponder {
 public:
  // Checks and encodes the advertisement once: kInvalidArgument for a
  // gateway_ll that is not link-local, a prefix length over 128, an MTU below
  // 1280, an invalid search domain, or options over the minimum MTU.
  static absl::StatusOr<NdpResponder> Create(const NdpConfig& config);

  // If `frame` (whose parse is `parsed`) is a router or neighbour
  // solicitation we answer, writes the reply into `out` and returns its
  // length; 0 if there is nothing to send. `partial_checksum`: the guest sent
  // the frame with VIRTIO_NET_HDR_F_NEEDS_CSUM, so its checksum is not
  // checked. kInvalidArgument only if `out` is shorter than kNdpMaxReplyLen.
  // No allocation.
  absl::StatusOr<size_t> Reply(absl::Span<const iovec> frame, const ParsedFrame& parsed,
                               absl::Span<uint8_t> out, bool partial_checksum = false) const;

  // A router advertisement to all nodes (ff02::1).
  absl::StatusOr<size_t> UnsolicitedAdvertisement(absl::Span<uint8_t> out) const;

 private:
  NdpResponder() = default;

  // Writes the advertisement to `dst` at `dst_mac`.
  absl::StatusOr<size_t> WriteAdvertisement(const in6_addr& dst, const MacAddr& dst_mac,
                                            absl::Span<uint8_t> out) const;

  MacAddr gateway_mac_;
  in6_addr gateway_ll_{};
  in6_addr gateway_{};
  // The ICMPv6 router advertisement, checksum zero: the same for every reply.
  uint8_t ra_[1280 - kIpv6HeaderLen] = {};
  size_t ra_len_ = 0;
};

}  // namespace vunet::net

#endif  // VUNET_NET_NDP_H_
