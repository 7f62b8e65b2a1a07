// The virtio-net data path over vhost-user rings, below any protocol: collect
// guest receive buffers for a frame, fill and flush them with the virtio-net
// header the guest expects, send a single frame, and run the transmit queue.
//
// The iovec contract (the team's design note §3; docs/ARCHITECTURE.md): the
// caller owns the iovec
// pool and the element array. Collect() pops receive elements into the pool,
// passing each pop the capacity that remains, and keeps a running count of
// entries consumed across elements, so one element may span several entries
// and one frame several elements (mergeable receive buffers). Several
// collects may share one pool:
//
//   VirtqElement elems[kMaxElems];
//   iovec pool[kMaxIov];
//   size_t iov_used = 0, elems_used = 0;
//   for (each frame f) {
//     size_t got = 0;
//     size_t n = Collect(config, vq, elems + elems_used, kMaxElems - elems_used,
//                        pool, kMaxIov, &iov_used, hdr_len + f.len, &got);
//     if (got < hdr_len + f.len) { vq->Rewind(n); break; }  // No room yet.
//     ...write the frame at offset hdr_len of the elements' in_sg...
//     elems_used += n;
//   }
//   uint32_t fill = 0;
//   for (each frame) FillFrame(config, vq, first_elem, n, frame_len, &fill);
//   vq->Rewind(popped - fill);  // What no frame used.
//   vq->Flush(fill);
//   vq->Notify();
//
// Every popped element is either filled and flushed or rewound.

#ifndef VUNET_VU_COMMON_H_
#define VUNET_VU_COMMON_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "virtio/virtio_net.h"
#include "virtio/virtqueue.h"

namespace vunet::vu {

using virtio::kVirtioNetHdrFDataValid;
using virtio::kVirtioNetHdrFNeedsCsum;
using virtio::kVirtioNetHdrGsoNone;
using virtio::VirtioNetHdr;

// The shortest Ethernet frame without its FCS; shorter frames are padded.
inline constexpr size_t kEthMinFrame = 60;

// What the data path needs of the negotiated features.
struct NetConfig {
  size_t vnet_hdr_len = sizeof(VirtioNetHdr);
  bool mergeable_rx = false;  // VIRTIO_NET_F_MRG_RXBUF.
  bool guest_csum = false;    // VIRTIO_NET_F_GUEST_CSUM.
  bool csum = false;          // VIRTIO_NET_F_CSUM: the guest may send NEEDS_CSUM.

  // Segmentation offloads, each only with its prerequisites (virtio 1.x,
  // 5.1.3.1), so a driver that took one without them gets none of it.
  // What the guest may send (HOST_*: CSUM first; HOST_ECN needs a TSO):
  bool host_tso4 = false;
  bool host_tso6 = false;
  bool host_ecn = false;
  bool host_uso = false;
  // What the guest takes (GUEST_*: GUEST_CSUM first; GUEST_ECN needs a TSO):
  bool guest_tso4 = false;
  bool guest_tso6 = false;
  bool guest_ecn = false;
  bool guest_uso4 = false;
  bool guest_uso6 = false;

  static NetConfig FromFeatures(uint64_t acked_features);
};

// Pops receive elements from `vq` until `size` bytes (raised to at least
// vnet_hdr_len + kEthMinFrame) of writable space are gathered, or `max_elem`
// elements or the pool's entries run out, or the ring is empty. Element i
// maps into in_sg[*in_total ...]; *in_total grows by the entries each element
// used and never exceeds max_in_sg. Without mergeable buffers it takes at most
// one element. *collected gets the bytes gathered (possibly less than size).
// Returns the elements popped into elems[0..n).
//
// A chain that can never fit (it does not fit an empty pool) or that carries
// driver-readable buffers is handed back unused and logged, when nothing the
// caller holds could be disturbed by that; a chain that does not fit what
// remains of the pool stays in the ring for the next collect. Without
// `fill_index` such a chain is published at once, which requires that
// nothing else is outstanding. With it, the caller has *fill_index used
// entries filled and not yet flushed (and nothing else outstanding): the
// chain is filled after them, *fill_index advances, and the caller's flush
// publishes it.
size_t Collect(const NetConfig& config, virtio::Virtqueue* vq, virtio::VirtqElement* elems,
               size_t max_elem, iovec* in_sg, size_t max_in_sg, size_t* in_total, size_t size,
               size_t* collected, uint32_t* fill_index = nullptr);

// Fills the used entries of one frame of `frame_len` bytes (virtio-net header
// included, padding to the Ethernet minimum applied here) written across
// elems[0..elem_cnt), at used offset *fill_index onwards; writes num_buffers
// into the first element's header whenever the header has that field (1
// without mergeable buffers);
// logs the writes for migration. Returns the elements the frame used;
// *fill_index advances by as many. Does not flush.
size_t FillFrame(const NetConfig& config, virtio::Virtqueue* vq, const virtio::VirtqElement* elems,
                 size_t elem_cnt, size_t frame_len, uint32_t* fill_index);

// One frame in elems[0..elem_cnt): FillFrame, rewind the elements it did not
// use (they must be the last popped), flush once. Returns elements used.
size_t Flush(const NetConfig& config, virtio::Virtqueue* vq, const virtio::VirtqElement* elems,
             size_t elem_cnt, size_t frame_len);

// Sends one Ethernet frame from a contiguous buffer into the guest, behind a
// virtio-net header built from `hdr` (num_buffers is ours to set), and
// notifies: for a data plane whose only writer of the ring is this call (the
// backend's goes through RxQueue, vu/rx_queue.h). For ARP, DHCP, NDP and ICMP answers. kUnavailable
// (frame dropped, nothing consumed) if the guest has not posted room for it.
absl::Status SendSingle(const NetConfig& config, virtio::Virtqueue* vq,
                        absl::Span<const uint8_t> frame, const VirtioNetHdr& hdr = {});

// Where the transmit handler delivers frames: a view into guest memory. What
// a sink may rely on: the iovecs stay valid, pointing at the same guest
// buffers, until OnBatchEnd returns (the handler hands the buffers back to
// the guest only after it), so a sink may keep them for the batch (to send
// several frames with one syscall, or to take a segment after a later one
// filled a hole). What it must not: keep them past OnBatchEnd, or trust a
// value read in place: the guest can rewrite its buffers while we read them,
// so headers are copied out before they are checked.
class FrameSink {
 public:
  virtual ~FrameSink() = default;
  // One frame (virtio-net header stripped): `frame` is its bytes in guest
  // memory, in one or more entries.
  virtual void OnFrame(const VirtioNetHdr& hdr, absl::Span<const iovec> frame) = 0;
  // Every frame of a batch was delivered: a sink that batches its syscalls
  // flushes them here, before the guest gets its buffers back.
  virtual void OnBatchEnd() {}
};

// The transmit queue's handler. Owns fixed pools, sized at construction, so
// a kick costs no allocation.
class TxHandler {
 public:
  struct Options {
    size_t max_batch = 256;      // Elements per batch.
    size_t pool_entries = 1024;  // iovec entries shared by one batch.
  };
  struct Stats {
    uint64_t frames = 0;
    uint64_t bytes = 0;
    uint64_t batches = 0;
    uint64_t dropped = 0;  // Chains too short for a header, or never fitting.
    uint64_t notifies = 0;
  };

  TxHandler() : TxHandler(Options()) {}
  explicit TxHandler(const Options& options);

  // On a kick: pops every available element into the pool, passing each pop
  // the capacity that remains, hands each frame to `sink`, then fills and
  // flushes the batch and notifies the guest once (as EVENT_IDX or the
  // suppression flag allow). Repeats while the ring has more, up to
  // `max_batches` batches so that one guest cannot hold the loop forever.
  // Returns the frames processed. A broken ring stops processing; the caller
  // sees vq->broken().
  size_t Process(const NetConfig& config, virtio::Virtqueue* vq, FrameSink* sink,
                 size_t max_batches = 16);

  const Stats& stats() const { return stats_; }

 private:
  // Pops one batch; returns the elements popped.
  size_t PopBatch(virtio::Virtqueue* vq);

  Options options_;
  std::unique_ptr<virtio::VirtqElement[]> elems_;
  std::unique_ptr<iovec[]> pool_;
  Stats stats_;
};

}  // namespace vunet::vu

#endif  // VUNET_VU_COMMON_H_
