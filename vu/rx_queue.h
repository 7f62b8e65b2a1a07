// The one writer of a virtio-net receive queue: every frame the backend sends
// the guest (translated data and the gateway's replies alike) goes through
// one RxQueue, which alone fills and publishes the ring's used entries.
//
// A frame is written in three steps:
//   1. Reserve: receive buffers for one frame are popped into the queue's
//      own pools (through vu::Collect, which stays the lower-level API),
//      several entries and, with mergeable buffers, several elements;
//   2. the caller writes the frame into the reservation's iovecs, behind
//      room for the virtio-net header (headers built in place, a payload
//      received straight into them by the kernel);
//   3. Commit: the virtio-net header (num_buffers set here; GSO and checksum
//      fields from the caller), padding to the Ethernet minimum, the used
//      entries, the dirty log for migration and the capture hook, all in one
//      place. A reservation not committed is handed back with
//      ReleaseUncommitted(), and the guest never sees it.
// Control frames built in a buffer of their own go through Send(), which is
// the same three steps with a copy.
//
// Nothing is published until Flush(): the owner's event loop calls it once
// per iteration, so every writer's frames of that iteration cost one
// used-index update and at most one notification (EVENT_IDX respected).
// Frames reach the guest in the order they were committed, whoever
// committed them: data and control frames stay in order by construction.
//
//   RxQueue rx(RxQueue::Options{});
//   rx.Start(vq, NetConfig::FromFeatures(acked));      // the queue runs
//   ...
//   const RxQueue::Reservation* r = rx.Reserve(hdr + 60, hdr + 1514);
//   if (r == nullptr) { /* wait for room: rx kick */ }
//   size_t n = ...write the frame at offset config().vnet_hdr_len of r->iov...;
//   rx.Commit(*r, n, VirtioNetHdr{});
//   rx.ReleaseUncommitted();   // whatever this writer reserved and did not use
//   ...
//   rx.Flush();                // once per loop iteration
//
// Reservations belong to one writer at a time: a writer commits or releases
// every reservation it made before it returns, and commits them in the order
// it made them. All storage is sized at construction; nothing is allocated
// per frame. Thread-compatible: one loop drives one RxQueue.

#ifndef VUNET_VU_RX_QUEUE_H_
#define VUNET_VU_RX_QUEUE_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "virtio/virtio_net.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"

namespace vunet::vu {

class RxQueue {
 public:
  struct Options {
    // Elements, iovec entries and frames one writer may hold reserved at
    // once: enough for 64 segments of 64 KiB in 1526-byte buffers.
    size_t max_elems = 4096;
    size_t max_iov = 8192;
    size_t max_reservations = 256;
  };

  // Why Reserve found no room.
  enum class Refusal {
    kNone,
    kNoRoom,     // The guest has not posted enough yet: wait for its kick.
    kLater,      // Buffers or pools are held by frames not yet flushed or
                 // committed: try again after the next Flush().
    kNeverFits,  // Larger than one buffer (without mergeable buffers), or
                 // than the whole ring or our pools: it never will fit.
    kStopped,    // No running queue (not started, stopped, or broken).
  };

  struct Stats {
    uint64_t frames = 0;          // Committed.
    uint64_t bytes = 0;           // Their lengths, virtio-net header and padding included.
    uint64_t sends = 0;           // Of the frames, those copied in by Send.
    uint64_t gso_frames = 0;      // Of the frames, those with a gso_type (segmentation offload).
    uint64_t no_room = 0;         // Reserve refused: kNoRoom, kLater, kStopped.
    uint64_t never_fits = 0;      // Reserve refused: kNeverFits.
    uint64_t released = 0;        // Elements handed back unused.
    uint64_t returned_empty = 0;  // Elements returned with length 0 (see Abandon).
    uint64_t flushes = 0;         // Used-index updates.
    uint64_t notifies = 0;        // Notifications the guest asked for and got.
    uint64_t writer_bugs = 0;     // Contract violations (logged): out-of-order commits...
  };

  // Sees every frame as it is committed, and a queue that broke.
  class Observer {
   public:
    virtual ~Observer() = default;
    // The frame's bytes are [offset, offset + len) of `iov` (virtio-net
    // header excluded, padding not yet applied); called before the frame is
    // published. For packet capture.
    virtual void OnFrameToGuest(absl::Span<const iovec> iov, size_t offset, size_t len) = 0;
    // The driver broke the ring (vq->broken()): the owner reports it.
    virtual void OnBroken() = 0;
  };

  // One frame's buffers. `iov` covers the whole reservation, virtio-net
  // header first; `capacity` is its byte count. Valid until committed,
  // abandoned or released.
  struct Reservation {
    absl::Span<const iovec> iov;
    size_t capacity = 0;

   private:
    friend class RxQueue;
    uint32_t index = 0;  // Among the writer's reservations.
    uint32_t first_elem = 0;
    uint32_t elem_count = 0;
  };

  RxQueue() : RxQueue(Options()) {}
  explicit RxQueue(const Options& options);
  RxQueue(const RxQueue&) = delete;
  RxQueue& operator=(const RxQueue&) = delete;

  // The queue runs (`vq` started, not owned, valid until Stop()).
  void Start(virtio::Virtqueue* vq, const NetConfig& config);
  // The queue stops (called before the device stops the ring): what was
  // committed and not flushed is published first, so no writer's frame is
  // lost; reservations are released. A broken ring is left as it is.
  void Stop();
  bool running() const { return vq_ != nullptr && !vq_->broken(); }
  const NetConfig& config() const { return config_; }
  // The running queue, or nullptr. For tests and rx kicks.
  virtio::Virtqueue* virtqueue() const { return vq_; }

  void set_observer(Observer* observer) { observer_ = observer; }

  // Reserves receive buffers for one frame: at least `min_bytes` and, where
  // the guest's buffers allow, `want_bytes` (both counting the virtio-net
  // header; raised to the header plus the Ethernet minimum). Without
  // mergeable buffers that is one buffer, whatever its size beyond
  // min_bytes; with them, as many as want_bytes takes (or fewer, if the ring
  // runs out past min_bytes). Returns nullptr with the reason in *refusal
  // (if given) when there is too little room; nothing stays reserved then.
  const Reservation* Reserve(size_t min_bytes, size_t want_bytes, Refusal* refusal = nullptr);

  // Commits `r`, which must be the oldest of this writer's uncommitted
  // reservations, as a frame of `frame_len` bytes behind the virtio-net
  // header, which is written from `hdr` (num_buffers set here). Returns
  // false, logged and counted as a writer bug, if `r` is not the oldest or
  // the frame is larger than the reservation; nothing is then done.
  bool Commit(const Reservation& r, size_t frame_len, const VirtioNetHdr& hdr);

  // Gives up the oldest uncommitted reservation `r` when a later one is to
  // be committed: its buffers go back to the guest empty (used length 0,
  // which drivers count as a short frame and recycle). Only for the rare
  // frame that turned out unusable after its read (a datagram that changed
  // between peek and read); everything else is released.
  bool Abandon(const Reservation& r);

  // Hands every uncommitted reservation back: the guest sees none of them,
  // and the next Reserve pops the same buffers.
  void ReleaseUncommitted();

  // A frame already built in `frame` (no virtio-net header): Reserve, copy,
  // Commit. The header is `hdr`; by default it says the frame's checksums
  // are complete (DATA_VALID when the guest negotiated GUEST_CSUM).
  // kUnavailable (nothing consumed; made once, allocation-free) if the guest
  // has not posted room for it; kFailedPrecondition if the queue does not run.
  absl::Status Send(absl::Span<const uint8_t> frame);
  absl::Status Send(absl::Span<const uint8_t> frame, const VirtioNetHdr& hdr);

  // Publishes every frame committed since the last Flush: one used-index
  // update, then a notification if the guest asks for one. Returns true if a
  // Reserve since the last Flush was refused with kLater: writers waiting
  // for room should try again now.
  bool Flush();

  // Frames committed and not yet flushed.
  size_t pending_frames() const { return pending_frames_; }
  const Stats& stats() const { return stats_; }

 private:
  void Refuse(Refusal why, Refusal* refusal);
  // Makes the pools empty once every reservation is committed or released.
  void ResetPoolsIfIdle();
  // Fills the used entries of elements [first, first + count) with length 0.
  void ReturnEmpty(uint32_t first, uint32_t count);
  // Gives back the `count` elements popped last, from the pools too.
  void GiveBack(uint32_t count, size_t iov_mark);

  Options options_;
  virtio::Virtqueue* vq_ = nullptr;
  NetConfig config_;
  Observer* observer_ = nullptr;

  std::unique_ptr<virtio::VirtqElement[]> elems_;
  std::unique_ptr<iovec[]> iov_;
  std::unique_ptr<Reservation[]> reservations_;
  uint32_t elems_used_ = 0;
  size_t iov_used_ = 0;
  uint32_t reserved_ = 0;   // Reservations made since the pools were last empty.
  uint32_t committed_ = 0;  // Of those, the first `committed_` are done with.
  // Elements of the last committed reservation its frame did not need; they
  // are the tail of what is popped when no later reservation exists.
  uint32_t unused_first_ = 0;
  uint32_t unused_count_ = 0;

  uint32_t fill_ = 0;  // Used entries written since the last Flush.
  size_t pending_frames_ = 0;
  bool retry_ = false;  // A kLater refusal since the last Flush.
  Stats stats_;
};

}  // namespace vunet::vu

#endif  // VUNET_VU_RX_QUEUE_H_
