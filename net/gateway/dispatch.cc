#include "net/gateway/dispatch.h"

#include "base/log.h"

namespace vunet::net {

void Dispatcher::Route(L4Kind l4, ParsedFrameSink* sink) {
  switch (l4) {
    case L4Kind::kTcp:
      routes_[kRouteTcp] = sink;
      return;
    case L4Kind::kUdp:
      routes_[kRouteUdp] = sink;
      return;
    case L4Kind::kIcmp:
    case L4Kind::kIcmpv6:
      routes_[kRouteIcmp] = sink;
      return;
    default:
      VUNET_LOG(kError, "dispatch: no route for L4 kind %d", static_cast<int>(l4));
  }
}

void Dispatcher::SetNetConfig(const vu::NetConfig& config) {
  offloads_ = GuestOffloads{.csum = config.csum,
                            .tso4 = config.host_tso4,
                            .tso6 = config.host_tso6,
                            .ecn = config.host_ecn,
                            .uso = config.host_uso};
}

void Dispatcher::SendReply(const absl::StatusOr<size_t>& n) {
  if (!n.ok()) {
    // Only a buffer too short, which our fixed buffer rules out.
    VUNET_LOG_RATELIMITED(kError, "reply not built: %s", n.status().ToString());
    return;
  }
  if (*n == 0) return;
  // Our replies carry complete checksums: Send says so to a guest with
  // GUEST_CSUM.
  const absl::Status sent = rx_->Send(absl::MakeConstSpan(reply_, *n));
  if (sent.ok()) {
    ++stats_.replies;
  } else {
    ++stats_.send_failures;
    VUNET_LOG_RATELIMITED(kInfo, "reply to the guest dropped: %s", sent.ToString());
  }
}

void Dispatcher::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) {
  ++stats_.frames;
  ParsedFrame parsed;
  if (!ParseFrame(frame, &parsed).ok()) {
    ++stats_.malformed;
    return;
  }
  if (const OffloadProblem problem = CheckGuestOffload(hdr, parsed, offloads_);
      problem != OffloadProblem::kNone) [[unlikely]] {
    ++stats_.offload_refused;
    ++stats_.offload_refused_by[static_cast<size_t>(problem)];
    VUNET_LOG_RATELIMITED(kInfo,
                          "guest frame of %d bytes refused: %s (flags 0x%x, gso_type 0x%x, "
                          "gso_size %d, hdr_len %d, csum_start %d, csum_offset %d)",
                          parsed.frame_len, OffloadProblemName(problem), hdr.flags, hdr.gso_type,
                          hdr.gso_size, hdr.hdr_len, hdr.csum_start, hdr.csum_offset);
    return;
  }
  if (guest_ != nullptr) guest_->Learn(parsed);
  const absl::Span<uint8_t> out(reply_, sizeof(reply_));
  const bool partial = hdr.flags & vu::kVirtioNetHdrFNeedsCsum;
  if (parsed.l3 == L3Kind::kArp) {
    if (handlers_.arp != nullptr) {
      SendReply(ArpReply(*handlers_.arp, parsed, out));
    } else {
      ++stats_.other_dropped;
    }
    return;
  }
  if (handlers_.dhcp != nullptr && parsed.l3 == L3Kind::kIpv4 && parsed.l4 == L4Kind::kUdp &&
      parsed.dst_port == kDhcpServerPort) {
    SendReply(handlers_.dhcp->Reply(frame, parsed, out));
    return;
  }
  if (handlers_.ndp != nullptr && parsed.l4 == L4Kind::kIcmpv6 &&
      (parsed.icmp.type == 133 || parsed.icmp.type == 135)) {
    SendReply(handlers_.ndp->Reply(frame, parsed, out, partial));
    return;
  }
  if (handlers_.dhcpv6 != nullptr && parsed.l3 == L3Kind::kIpv6 && parsed.l4 == L4Kind::kUdp &&
      parsed.dst_port == kDhcpv6ServerPort) {
    SendReply(handlers_.dhcpv6->Reply(frame, parsed, out, partial));
    return;
  }
  RouteIndex route;
  switch (parsed.l4) {
    case L4Kind::kTcp:
      route = kRouteTcp;
      break;
    case L4Kind::kUdp:
      route = kRouteUdp;
      break;
    case L4Kind::kIcmp:
    case L4Kind::kIcmpv6:
      route = kRouteIcmp;
      break;
    default:
      Drop(parsed);
      return;
  }
  ParsedFrameSink* sink = routes_[route];
  if (sink == nullptr) {
    Drop(parsed);
    return;
  }
  ++stats_.routed;
  if (IsGso(hdr)) ++stats_.gso_routed;
  in_batch_[route] = true;
  sink->OnFrame(hdr, frame, parsed);
}

void Dispatcher::Drop(const ParsedFrame& parsed) {
  switch (parsed.l4) {
    case L4Kind::kTcp:
      ++stats_.tcp_dropped;
      VUNET_LOG_RATELIMITED(kDebug, "guest TCP frame dropped (not translated): port %d",
                            parsed.dst_port);
      return;
    case L4Kind::kUdp:
      ++stats_.udp_dropped;
      VUNET_LOG_RATELIMITED(kDebug, "guest UDP frame dropped (not translated): port %d",
                            parsed.dst_port);
      return;
    case L4Kind::kIcmp:
    case L4Kind::kIcmpv6:
      // Without ICMP echo, or NDP messages the responder does not answer.
      ++stats_.icmp_dropped;
      return;
    default:
      ++stats_.other_dropped;
      VUNET_LOG_RATELIMITED(kDebug, "guest frame dropped: ethertype 0x%04x", parsed.ether_type);
      return;
  }
}

void Dispatcher::OnBatchEnd() {
  for (int r = 0; r < kRoutes; ++r) {
    if (!in_batch_[r]) continue;
    in_batch_[r] = false;
    routes_[r]->OnBatchEnd();
  }
}

}  // namespace vunet::net
