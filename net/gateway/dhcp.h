// A DHCPv4 server for the one guest on the link (RFC 2131, options from
// RFC 2132 and RFC 3397): DISCOVER gets an OFFER of the guest's address,
// REQUEST an ACK (or a NAK if it asks for another address), INFORM an ACK
// without a lease. DECLINE, RELEASE and anything else get no answer.
//
// Every OFFER and ACK carries the configured options whether or not the
// client listed them (clients ignore what they did not ask for): subnet mask
// (1), router (3), DNS (6), host name (12), domain name (15), MTU (26), lease
// time (51), server identifier (54), message type (53), client FQDN (81),
// domain search (119); an option longer than 255 bytes is split into
// several instances as RFC 3396 allows.
//
// The client FQDN option (RFC 4702), sent as passt sends it whether or not
// the client asked: flags, RCODE1 and RCODE2 of 255, and the name. The
// flags say we update no DNS records (N set, S clear, O set if the client
// asked us to with S); the name is in DNS wire format (E set) unless the
// client's own option 81 used the deprecated ASCII form (E clear), which is
// then answered in kind.
//
// Request parsing is bounded by the UDP datagram: options are walked over a
// local copy (at most kMaxRequestOptions bytes; longer requests are dropped),
// pads are skipped, a missing END is tolerated (the datagram's end ends the
// options), and an option whose length runs past the end drops the request.
// sname/file are never read as options (option overload is ignored). A
// dropped request logs one rate-limited line.
//
//   absl::StatusOr<DhcpServer> server = DhcpServer::Create(config);
//   ...
//   uint8_t reply[kDhcpMaxReplyLen];
//   absl::StatusOr<size_t> n = server->Reply(frame_iov, parsed, reply);
//   if (n.ok() && *n > 0) vu::SendSingle(net_config, rx_vq, {reply, *n});

#ifndef VUNET_NET_DHCP_H_
#define VUNET_NET_DHCP_H_

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

struct DhcpConfig {
  MacAddr gateway_mac;                      // Source of our replies.
  in_addr gateway_addr{};                   // Router (3) and server identifier (54).
  in_addr guest_addr{};                     // The one address we lease.
  int prefix_len = 24;                      // Subnet mask (1), 0..32.
  std::vector<in_addr> dns;                 // Option 6 if not empty.
  std::string domain_name;                  // Option 15 if not empty.
  std::vector<std::string> search_domains;  // Option 119 if not empty.
  uint16_t mtu = 0;                         // Option 26 if not 0 (68..65535).
  std::string hostname;                     // Option 12 if not empty (-H).
  std::string fqdn;                         // Option 81 if not empty (--fqdn).
  // Option 51. The address never changes, so infinite by default.
  uint32_t lease_seconds = 0xffffffff;
};

inline constexpr uint16_t kDhcpServerPort = 67;
inline constexpr uint16_t kDhcpClientPort = 68;
// The longest options area of a request we read.
inline constexpr size_t kMaxRequestOptions = 1500;
// The longest reply frame, whatever the configuration Create accepted.
inline constexpr size_t kDhcpMaxReplyLen = 1514;

class DhcpServer {
 public:
  // Checks and encodes the configuration once: kInvalidArgument for a prefix
  // over 32, an MTU below 68, more DNS servers than one option holds (63),
  // a domain name that is not a valid DNS name (labels of 1..63 bytes, at
  // most 253 in all), a host name or FQDN that is not one (IsHostName), or
  // options too long for one reply.
  static absl::StatusOr<DhcpServer> Create(const DhcpConfig& config);

  // If `frame` (whose parse is `parsed`) is a DHCP request to port 67 that
  // we answer, writes the reply frame (Ethernet, IPv4, UDP with checksum)
  // into `out` and returns its length; 0 if there is nothing to send.
  // kInvalidArgument only if `out` is shorter than kDhcpMaxReplyLen. No
  // allocation.
  absl::StatusOr<size_t> Reply(absl::Span<const iovec> frame, const ParsedFrame& parsed,
                               absl::Span<uint8_t> out) const;

 private:
  DhcpServer() = default;

  MacAddr gateway_mac_;
  in_addr gateway_addr_{};
  in_addr guest_addr_{};
  uint32_t lease_seconds_ = 0;
  // Mask, router, DNS, host name, domain, search, MTU: the same in every
  // OFFER/ACK.
  uint8_t config_options_[1024] = {};
  size_t config_options_len_ = 0;
  // The FQDN for option 81, in wire format and as text; empty: none.
  uint8_t fqdn_wire_[255] = {};
  size_t fqdn_wire_len_ = 0;
  char fqdn_text_[253] = {};
  size_t fqdn_text_len_ = 0;
};

}  // namespace vunet::net

#endif  // VUNET_NET_DHCP_H_
