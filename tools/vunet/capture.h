// --pcap: decorators that copy every frame crossing the data path into a
// PcapWriter, then pass it on unchanged.
//
//   PcapFrameSink   wraps the vu::FrameSink the TxHandler delivers guest
//                   frames to (virtio-net header stripped), before the sink
//                   sees them;
//   PcapReplySender wraps the net::ReplySender through which frames go into
//                   the guest's receive queue, and records those the guest
//                   took (a frame dropped for want of room is not recorded).
//
// The capture never fails the data path (PcapWriter counts its errors). The
// writer and the wrapped sink or sender must outlive the decorator.

#ifndef VUNET_TOOLS_VUNET_CAPTURE_H_
#define VUNET_TOOLS_VUNET_CAPTURE_H_

#include <sys/uio.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/pcap.h"
#include "net/gateway/dispatch.h"
#include "vu/common.h"

namespace vunet::tools {

class PcapFrameSink : public vu::FrameSink {
 public:
  PcapFrameSink(PcapWriter* pcap, vu::FrameSink* next) : pcap_(pcap), next_(next) {}
  void OnFrame(const vu::VirtioNetHdr& hdr, absl::Span<const iovec> frame) override;
  void OnBatchEnd() override { next_->OnBatchEnd(); }

 private:
  PcapWriter* pcap_;
  vu::FrameSink* next_;
};

class PcapReplySender : public net::ReplySender {
 public:
  PcapReplySender(PcapWriter* pcap, net::ReplySender* next) : pcap_(pcap), next_(next) {}
  absl::Status Send(absl::Span<const uint8_t> frame) override;

 private:
  PcapWriter* pcap_;
  net::ReplySender* next_;
};

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_CAPTURE_H_
