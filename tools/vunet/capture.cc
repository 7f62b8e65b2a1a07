#include "tools/vunet/capture.h"

#include "base/iov.h"

namespace vunet::tools {

void PcapFrameSink::OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) {
  // The bytes as we read them now; the guest may rewrite its buffers, which
  // changes what the next sink reads but nothing we rely on.
  pcap_->Write(frame.data(), frame.size(), IovSize(frame.data(), frame.size()));
  next_->OnFrame(hdr, frame);
}

void PcapRxObserver::OnFrameToGuest(absl::Span<const iovec> iov, size_t offset, size_t len) {
  // The frame's part of the reservation: [offset, offset + len).
  constexpr size_t kMaxPieces = 64;
  iovec pieces[kMaxPieces];
  size_t n = 0;
  const size_t covered = IovSlice(iov.data(), iov.size(), offset, len, pieces, &n, kMaxPieces);
  pcap_->Write(pieces, n, covered);
  if (next_ != nullptr) next_->OnFrameToGuest(iov, offset, len);
}

}  // namespace vunet::tools
