// A DHCPv6 server for the one guest on the link (RFC 8415): stateless
// configuration (DNS servers, RFC 3646 options 23 and 24) plus one address,
// the guest's, in IA_NA.
//
//   Solicit              Advertise (Preference 255 unless configured off), or
//                        with Rapid Commit a Reply carrying Rapid Commit;
//   Request, Renew,      Reply with the address (an IA_NA holding it keeps it,
//   Rebind               else the first IA_NA gets it; other IA_NAs and IA_TAs
//                        get NoAddrsAvail, IA_PDs NoPrefixAvail; in Renew and
//                        Rebind, other addresses the guest holds are returned
//                        with lifetimes 0 so it drops them);
//   Confirm              Reply with status Success if every address it lists is
//                        the guest's, NotOnLink otherwise; none if it lists none;
//   Information-request  Reply with DNS and search list only;
//   Release, Decline     Reply with status Success.
// Every Advertise and Reply carries Server ID (DUID-LL from our MAC) and the
// client's Client ID; those answering Solicit, Request, Renew, Rebind and
// Information-request carry DNS (23), Domain Search List (24) and Client
// FQDN (39, RFC 4704) when configured, whether or not the client's ORO asked
// (clients ignore what they did not ask for, as with DHCPv4; passt sends the
// FQDN the same way). The FQDN's flags say we update no DNS records (N set,
// S clear, O set if the client asked us to with S); the name is in DNS wire
// format.
//
// Validation follows RFC 8415 16: Client ID required (except in
// Information-request); Server ID required and ours in Request, Renew,
// Release and Decline, absent in Solicit, Confirm and Rebind, ours if present
// in Information-request, which carries no IA. A message for another server
// gets no answer and no log line; everything else refused logs one
// rate-limited line. Relay messages and server-to-client types are ignored.
//
// Parsing is bounded: the message is copied out of the frame once (at most
// kDhcpv6MaxRequest bytes; longer ones are dropped), every option header and
// length is checked against the bytes around it (top level, inside IA_NA /
// IA_TA / IA_PD, inside IA Address), an option past its container, an IA or
// IA Address shorter than its fixed part, a Client/Server ID of 0 or more than
// 130 bytes, Rapid Commit with a body, a repeated Client or Server ID, or more
// than kDhcpv6MaxIas IA options drop the message. Unknown options are skipped.
// The UDP checksum is verified unless the guest left it partial. Replies go
// from our link-local address to the client's source address, UDP 547 to 546,
// checksum computed.
//
//   absl::StatusOr<Dhcpv6Server> server = Dhcpv6Server::Create(config);
//   ...
//   uint8_t reply[kDhcpv6MaxReplyLen];
//   absl::StatusOr<size_t> n = server->Reply(frame_iov, parsed, reply, partial);
//   if (n.ok() && *n > 0) vu::SendSingle(net_config, rx_vq, {reply, *n});

#ifndef VUNET_NET_DHCPV6_H_
#define VUNET_NET_DHCPV6_H_

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

struct Dhcpv6Config {
  MacAddr gateway_mac;                      // Source of replies; Server ID is DUID-LL of it.
  in6_addr gateway_ll{};                    // Link-local source of replies.
  in6_addr guest_addr{};                    // The one address we assign.
  std::vector<in6_addr> dns;                // Option 23 if not empty.
  std::vector<std::string> search_domains;  // Option 24 if not empty.
  std::string fqdn;                         // Option 39 if not empty (--fqdn).
  // The address never changes, so infinite by default. T1 and T2 are
  // infinite with an infinite preferred lifetime, else 0.5 and 0.8 of it.
  uint32_t preferred_lifetime = 0xffffffff;
  uint32_t valid_lifetime = 0xffffffff;
  // Preference (7) in Advertise, 0..255; -1 leaves it out. 255 makes the
  // client request at once instead of waiting for other servers.
  int preference = 255;
  // Answer a Solicit carrying Rapid Commit with a committing Reply.
  bool rapid_commit = true;
};

inline constexpr uint16_t kDhcpv6ServerPort = 547;
inline constexpr uint16_t kDhcpv6ClientPort = 546;
// The longest request message (UDP payload) we read.
inline constexpr size_t kDhcpv6MaxRequest = 1500;
// IA options (IA_NA, IA_TA, IA_PD) one request may carry.
inline constexpr size_t kDhcpv6MaxIas = 4;
// The longest reply frame: an IPv6 packet of the minimum MTU.
inline constexpr size_t kDhcpv6MaxReplyLen = kEthHeaderLen + 1280;

class Dhcpv6Server {
 public:
  // Checks and encodes the configuration once: kInvalidArgument for a
  // gateway_ll that is not link-local, a guest address that is unspecified or
  // multicast, a preferred lifetime above the valid one, a preference outside
  // -1..255, an invalid search domain, an FQDN that is not a host name
  // (IsHostName), or DNS, search and FQDN options too long for the
  // worst-case reply.
  static absl::StatusOr<Dhcpv6Server> Create(const Dhcpv6Config& config);

  // If `frame` (whose parse is `parsed`) is a DHCPv6 message to UDP port 547
  // that we answer, writes the reply frame into `out` and returns its length;
  // 0 if there is nothing to send. `partial_checksum`: the guest sent the
  // frame with VIRTIO_NET_HDR_F_NEEDS_CSUM, so its UDP checksum is not
  // checked. kInvalidArgument only if `out` is shorter than
  // kDhcpv6MaxReplyLen. No allocation.
  absl::StatusOr<size_t> Reply(absl::Span<const iovec> frame, const ParsedFrame& parsed,
                               absl::Span<uint8_t> out, bool partial_checksum = false) const;

 private:
  Dhcpv6Server() = default;

  MacAddr gateway_mac_;
  in6_addr gateway_ll_{};
  in6_addr guest_addr_{};
  uint32_t preferred_lifetime_ = 0;
  uint32_t valid_lifetime_ = 0;
  uint32_t t1_ = 0;
  uint32_t t2_ = 0;
  int preference_ = -1;
  bool rapid_commit_ = true;
  uint8_t duid_[10] = {};  // DUID-LL: type 3, hardware type 1, MAC.
  // Options 23 and 24: the same in every reply that carries them.
  uint8_t config_options_[400] = {};
  size_t config_options_len_ = 0;
  // Option 39's name in wire format; empty: none.
  uint8_t fqdn_wire_[255] = {};
  size_t fqdn_wire_len_ = 0;
};

}  // namespace vunet::net

#endif  // VUNET_NET_DHCPV6_H_
