#include "net/gateway/arp.h"

#include <arpa/inet.h>

#include <cstring>

namespace vunet::net {

absl::StatusOr<size_t> ArpReply(const ArpConfig& config, const ParsedFrame& frame,
                                absl::Span<uint8_t> out) {
  if (out.size() < kArpReplyLen) return absl::InvalidArgumentError("ARP reply buffer too short");
  if (frame.l3 != L3Kind::kArp) return 0;
  const ParsedFrame::Arp& req = frame.arp;
  if (req.op != 1) return 0;
  if (req.tpa.s_addr == INADDR_ANY || req.tpa.s_addr == config.guest_addr.s_addr ||
      req.tpa.s_addr == req.spa.s_addr || req.sha.IsMulticast()) {
    return 0;
  }

  EthHeader eth;
  std::memcpy(eth.dst, req.sha.bytes, 6);
  std::memcpy(eth.src, config.gateway_mac.bytes, 6);
  eth.ether_type = htons(kEtherTypeArp);
  ArpPacket a;
  a.htype = htons(1);
  a.ptype = htons(kEtherTypeIpv4);
  a.hlen = 6;
  a.plen = 4;
  a.op = htons(2);
  std::memcpy(a.sha, config.gateway_mac.bytes, 6);
  std::memcpy(a.spa, &req.tpa, 4);
  std::memcpy(a.tha, req.sha.bytes, 6);
  std::memcpy(a.tpa, &req.spa, 4);
  std::memcpy(out.data(), &eth, sizeof(eth));
  std::memcpy(out.data() + sizeof(eth), &a, sizeof(a));
  return kArpReplyLen;
}

}  // namespace vunet::net
