// --pcap: every frame crossing the data path copied into a PcapWriter.
//
//   PcapFrameSink   wraps the vu::FrameSink the TxHandler delivers guest
//                   frames to (virtio-net header stripped), before the sink
//                   sees them;
//   PcapRxObserver  is the RxQueue's observer: every frame committed to the
//                   guest's receive queue, data and control alike, as it is
//                   committed (a frame dropped for want of room was never
//                   committed, and is not recorded).
//
// The capture never fails the data path (PcapWriter counts its errors). The
// writer (and the wrapped sink) must outlive the decorator.

#ifndef VUNET_TOOLS_VUNET_CAPTURE_H_
#define VUNET_TOOLS_VUNET_CAPTURE_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/pcap.h"
#include "vu/common.h"
#include "vu/rx_queue.h"

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

class PcapRxObserver : public vu::RxQueue::Observer {
 public:
  // `next` (may be null) sees what this one sees, after it.
  PcapRxObserver(PcapWriter* pcap, vu::RxQueue::Observer* next) : pcap_(pcap), next_(next) {}
  void OnFrameToGuest(absl::Span<const iovec> iov, size_t offset, size_t len) override;
  void OnBroken() override {
    if (next_ != nullptr) next_->OnBroken();
  }

 private:
  PcapWriter* pcap_;
  vu::RxQueue::Observer* next_;
};

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_CAPTURE_H_
