// A guest's receive queue for tests, both sides of it: memfd guest memory and
// a ring laid out as a driver would (virtio/testing:driver), receive buffers
// posted as a driver posts them, frames read back with their virtio-net
// headers (mergeable buffers reassembled); and the backend's side, a started
// Virtqueue with the RxQueue that writes into it.
//
//   GuestRxRing guest({.mergeable = true});
//   guest.Post(64, 2048);
//   ...code under test writes through guest.rx()...
//   for (const GuestRxRing::Frame& f : guest.Take()) { ...f.bytes... }
//
// Take() flushes the RxQueue first, as the backend's loop does at the end of
// each iteration, then reads every entry the device published. Buffers read
// back are free to post again (Post reuses them). A device that breaks the
// ring's contract (an entry for a chain not posted, a used length past the
// chain, num_buffers past what was published) aborts with a message: in a
// test that is a failure, in a fuzz target a finding. No gtest dependency.

#ifndef VUNET_VU_TESTING_GUEST_RX_H_
#define VUNET_VU_TESTING_GUEST_RX_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtio_net.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/rx_queue.h"

namespace vunet::vu::testing {

class GuestRxRing {
 public:
  struct Options {
    uint32_t queue_size = 256;
    bool mergeable = true;    // VIRTIO_NET_F_MRG_RXBUF.
    bool guest_csum = false;  // VIRTIO_NET_F_GUEST_CSUM.
    // Segmentation offloads the guest takes (each needs guest_csum):
    // GUEST_TSO4 and GUEST_TSO6 (with GUEST_ECN), GUEST_USO4 and GUEST_USO6.
    bool guest_tso = false;
    bool guest_uso = false;
    bool event_idx = false;
    // The 12-byte header (VERSION_1 or MRG_RXBUF), or the legacy 10 bytes.
    size_t vnet_hdr_len = sizeof(VirtioNetHdr);
    uint64_t memory = 64 << 20;
    RxQueue::Options rx = {};
  };

  // One frame as the guest's driver sees it.
  struct Frame {
    VirtioNetHdr hdr;            // num_buffers as written (1 without mergeable buffers).
    std::vector<uint8_t> bytes;  // The frame, header stripped.
    uint16_t buffers = 1;        // Used entries it took.
  };

  GuestRxRing() : GuestRxRing(Options()) {}
  explicit GuestRxRing(const Options& options);

  // Posts `count` chains of one writable buffer of `size` bytes each (fewer
  // if descriptors run out); returns how many were posted.
  int Post(int count, uint32_t size = 2048);
  // Posts one chain of writable buffers of the given sizes.
  bool PostChain(const std::vector<uint32_t>& sizes);

  // Flushes the RxQueue, then reads every frame the device published since
  // the last call, in order. Entries of length 0 (chains returned unused)
  // are counted in returned_empty(), not returned.
  std::vector<Frame> Take();
  // Take(), the frames' bytes only.
  std::vector<std::vector<uint8_t>> TakeBytes();

  RxQueue& rx() { return rx_; }
  virtio::Virtqueue& vq() { return vq_; }
  virtio::testing::DriverQueue& driver() { return *driver_; }
  // Stops and restarts the backend's side, as a frontend does around a
  // driver's queue reset: what was committed and not flushed is forgotten,
  // and the restarted queue resumes at the used index (serving again the
  // chains popped and never returned).
  void StopQueue();
  void StartQueue();
  bool queue_running() const { return vq_.started(); }
  const NetConfig& config() const { return config_; }
  size_t posted() const { return posted_.size(); }
  int returned_empty() const { return returned_empty_; }

 private:
  std::vector<uint8_t> Read(const virtio::VirtqUsedElem& e);

  Options options_;
  std::unique_ptr<virtio::testing::DriverMemory> memory_;
  virtio::GuestMemory device_memory_;
  std::unique_ptr<virtio::testing::DriverQueue> driver_;
  virtio::Virtqueue vq_;
  NetConfig config_;
  RxQueue rx_;
  virtio::Virtqueue::Config vq_config_;
  std::map<uint16_t, std::vector<virtio::testing::DriverQueue::Buffer>> posted_;
  std::map<uint32_t, std::vector<uint64_t>> free_;  // Buffers to reuse, by size.
  int returned_empty_ = 0;
};

}  // namespace vunet::vu::testing

#endif  // VUNET_VU_TESTING_GUEST_RX_H_
