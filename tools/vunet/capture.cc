#include "tools/vunet/capture.h"

#include "base/iov.h"

namespace vunet::tools {

void PcapFrameSink::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) {
  // The bytes as we read them now; the guest may rewrite its buffers, which
  // changes what the next sink reads but nothing we rely on.
  pcap_->Write(frame.data(), frame.size(), IovSize(frame.data(), frame.size()));
  next_->OnFrame(hdr, frame);
}

absl::Status PcapReplySender::Send(absl::Span<const uint8_t> frame) {
  absl::Status s = next_->Send(frame);
  if (s.ok()) pcap_->Write(frame);
  return s;
}

}  // namespace vunet::tools
