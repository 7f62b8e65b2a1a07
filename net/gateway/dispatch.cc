#include "net/gateway/dispatch.h"

#include "base/log.h"

namespace vunet::net {

absl::Status VirtqueueReplySender::Send(absl::Span<const uint8_t> frame) {
  // Our replies carry correct checksums; with GUEST_CSUM the guest is told so
  // and skips verifying them.
  vu::VirtioNetHdr hdr;
  if (config_->guest_csum) hdr.flags = vu::kVirtioNetHdrFDataValid;
  return vu::SendSingle(*config_, rx_, frame, hdr);
}

void Dispatcher::SendReply(const absl::StatusOr<size_t>& n) {
  if (!n.ok()) {
    // Only a buffer too short, which our fixed buffer rules out.
    VUNET_LOG_RATELIMITED(kError, "reply not built: %s", n.status().ToString());
    return;
  }
  if (*n == 0) return;
  const absl::Status sent = replies_->Send(absl::MakeConstSpan(reply_, *n));
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
  const absl::Span<uint8_t> out(reply_, sizeof(reply_));
  const bool partial = hdr.flags & vu::kVirtioNetHdrFNeedsCsum;
  if (parsed.l3 == L3Kind::kArp) {
    if (handlers_.arp != nullptr) {
      SendReply(ArpReply(*handlers_.arp, parsed, out));
    } else {
      ++stats_.ignored;
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
  if (next_ != nullptr) {
    ++stats_.passed_on;
    next_->OnFrame(hdr, frame, parsed);
  } else {
    ++stats_.ignored;
  }
}

void Dispatcher::OnBatchEnd() {
  if (next_ != nullptr) next_->OnBatchEnd();
}

}  // namespace vunet::net
