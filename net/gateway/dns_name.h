// Domain names in DNS wire format (RFC 1035 3.1), as DHCP option 119
// (RFC 3397), the NDP DNSSL option (RFC 8106) and the client FQDN options
// (RFC 4702, RFC 4704) carry them. Configuration
// time only: these allocate.

#ifndef VUNET_NET_DNS_NAME_H_
#define VUNET_NET_DNS_NAME_H_

#include <cstdint>
#include <string_view>
#include <vector>

namespace vunet::net {

// Appends `name` ("example.org", a trailing dot allowed) as length-prefixed
// labels and a terminating zero, uncompressed. False, appending nothing, if
// it is not a valid name: empty, a label empty or over 63 bytes, or over 253
// bytes in all.
bool AppendDnsName(std::string_view name, std::vector<uint8_t>* out);

// True if `name` is a host name vunet may hand a guest (DHCP options 12 and
// 81, DHCPv6 option 39): a valid DNS name as above (so at most 255 octets in
// wire format) whose labels hold only letters, digits, '-' and '_' (no
// spaces, controls or shell metacharacters for a guest's DHCP client
// scripts) and do not start or end with '-'.
bool IsHostName(std::string_view name);

}  // namespace vunet::net

#endif  // VUNET_NET_DNS_NAME_H_
