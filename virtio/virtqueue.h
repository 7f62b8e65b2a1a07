// The device side of a virtio 1.x split virtqueue: pops descriptor chains the
// driver made available, maps them into caller-owned iovec arrays, and returns
// them through the used ring.
//
// The iovec contract: an element does not own iovec storage. Pop() maps a
// chain into the arrays the caller passes, never past the capacities given,
// and writes back into the element how many entries it used and where they
// start. A caller that pops several elements into one pool passes each pop the
// capacity that remains:
//
//   iovec pool[kPool];
//   size_t used = 0;
//   VirtqElement elems[kBatch];
//   size_t n = 0;
//   while (n < kBatch) {
//     absl::StatusOr<bool> popped = vq.Pop(&elems[n], nullptr, 0,
//                                          pool + used, kPool - used);
//     if (!popped.ok() || !*popped) break;  // Error, or ring empty.
//     used += elems[n++].out_num;
//   }
//   ...use the frames...
//   for (size_t i = 0; i < n; ++i) vq.Fill(elems[i], 0, i);
//   vq.Flush(n);
//   vq.Notify();
//
// Every popped element is either filled and flushed, or handed back with
// Rewind(); nothing popped is lost.
//
// Guest memory is hostile. Chains are walked with a budget equal to the table
// size, so loops end by construction; nested indirect tables, indirect tables
// of bad length, descriptors outside guest memory, readable descriptors after
// writable ones, chains of more than 4 GiB and avail indices that run ahead by
// more than the queue size all mark the queue broken: Pop() then fails with a
// status saying why until the queue is restarted. No byte outside mapped guest
// memory is read or written.
//
// Memory ordering follows the specification for a driver running concurrently
// on another CPU: the avail index is read with acquire semantics before the
// entries it publishes, the used index is written with release semantics after
// the entries it publishes, and a full fence separates publishing used entries
// from reading the driver's notification suppression fields.
//
// Thread-compatible: one thread drives one queue.

#ifndef VUNET_VIRTIO_VIRTQUEUE_H_
#define VUNET_VIRTIO_VIRTQUEUE_H_

#include <sys/uio.h>

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "virtio/dirty_log.h"
#include "virtio/guest_memory.h"

namespace vunet::virtio {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x rings are little-endian; this code reads them natively");

// Feature bits (virtio 1.x, section 6).
inline constexpr unsigned kVirtioRingFIndirectDesc = 28;
inline constexpr unsigned kVirtioRingFEventIdx = 29;
inline constexpr unsigned kVirtioFVersion1 = 32;

// Ring layout (virtio 1.x, section 2.7).
inline constexpr uint16_t kVirtqDescFNext = 1;
inline constexpr uint16_t kVirtqDescFWrite = 2;
inline constexpr uint16_t kVirtqDescFIndirect = 4;
inline constexpr uint16_t kVirtqAvailFNoInterrupt = 1;
inline constexpr uint16_t kVirtqUsedFNoNotify = 1;

struct VirtqDesc {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
};
static_assert(sizeof(VirtqDesc) == 16);

struct VirtqUsedElem {
  uint32_t id = 0;
  uint32_t len = 0;
};
static_assert(sizeof(VirtqUsedElem) == 8);

// Bytes each part of a ring of `size` entries occupies, event fields included.
constexpr size_t VirtqDescTableBytes(uint32_t size) { return 16ull * size; }
constexpr size_t VirtqAvailRingBytes(uint32_t size) { return 6 + 2ull * size; }
constexpr size_t VirtqUsedRingBytes(uint32_t size) { return 6 + 8ull * size; }

// One popped descriptor chain. The iovec arrays belong to the caller of Pop().
struct VirtqElement {
  uint16_t index = 0;    // Head descriptor index, returned in the used ring.
  uint32_t out_num = 0;  // Driver-readable entries at out_sg.
  uint32_t in_num = 0;   // Device-writable entries at in_sg.
  iovec* out_sg = nullptr;
  iovec* in_sg = nullptr;
  // Bytes of the driver-readable and device-writable parts (the sums of the
  // entries' lengths, counted during the walk so callers need not walk again).
  uint32_t out_len = 0;
  uint32_t in_len = 0;
};

class Virtqueue {
 public:
  // The largest queue the specification allows for a split ring.
  static constexpr uint32_t kMaxSize = 32768;
  // The largest indirect table accepted, in descriptors.
  static constexpr uint32_t kMaxIndirectEntries = kMaxSize;
  // The largest total length of one chain (the used ring's len is 32 bits).
  static constexpr uint64_t kMaxChainBytes = UINT32_MAX;

  struct Config {
    uint32_t size = 0;           // Power of two, 1 to kMaxSize.
    void* desc = nullptr;        // Host pointers to the three parts, each
    void* avail = nullptr;       // fully mapped (see Virtq*Bytes) and
    void* used = nullptr;        // aligned as the specification requires.
    bool event_idx = false;      // VIRTIO_RING_F_EVENT_IDX negotiated.
    bool indirect_desc = false;  // VIRTIO_RING_F_INDIRECT_DESC negotiated.
    uint16_t avail_base = 0;     // Where to resume (VHOST_USER_SET_VRING_BASE).
    // Dirty logging for live migration (VHOST_F_LOG_ALL): the log for the
    // data plane's buffer writes (see LogWrite), or nullptr while not logging.
    // Not owned; must outlive the started queue.
    DirtyLog* dirty_log = nullptr;
    // With dirty_log set: also log our writes to the used ring, which starts
    // at guest-physical used_gpa (VHOST_VRING_F_LOG and log_guest_addr).
    // Entries, index and avail_event are logged at Flush() (and avail_event
    // again at Stop()), so Pop() and Fill() carry no logging cost.
    bool log_used = false;
    uint64_t used_gpa = 0;
  };

  Virtqueue() = default;
  Virtqueue(const Virtqueue&) = delete;
  Virtqueue& operator=(const Virtqueue&) = delete;

  // Starts processing the ring described by `config`, whose descriptors point
  // into `memory` (which must outlive the started queue). The used index is
  // taken from the ring, and the queue resumes at `config.avail_base` unless
  // the ring's used index lags it by at most the queue size: then it resumes
  // at the used index, serving again the chains an earlier backend popped and
  // never returned (chains are completed in order). The guest can move that
  // point only within its own ring, and at worst sees its own frames twice.
  // Refuses sizes that are zero, not a power of two or above kMaxSize, and
  // misaligned rings.
  absl::Status Start(const GuestMemory* memory, const Config& config);

  // Stops the queue. last_avail_idx() then is the base to resume from.
  void Stop();

  bool started() const { return started_; }
  // True once the driver has sent something malformed; see broken_reason().
  bool broken() const { return broken_; }
  const std::string& broken_reason() const { return broken_reason_; }
  uint32_t size() const { return size_; }

  // Pops the next available chain into `elem`, mapping its driver-readable
  // buffers into out_sg[0..max_out_sg) and its device-writable buffers into
  // in_sg[0..max_in_sg), and setting elem's counts and pointers.
  //
  // Returns true if a chain was popped, false if the ring is empty.
  // kResourceExhausted if the chain needs more entries than given: it is not
  //   popped, the queue stays usable (retry with more, or DiscardNext()).
  // kDataLoss if the chain is malformed: the queue is now broken.
  // kFailedPrecondition if the queue is stopped or broken.
  absl::StatusOr<bool> Pop(VirtqElement* elem, iovec* in_sg, size_t max_in_sg, iovec* out_sg,
                           size_t max_out_sg);

  // Returns the next available chain to the driver unused (used length 0),
  // without mapping it: for a chain the caller can never serve. Returns false
  // if the ring is empty. Without `fill_index` the entry is published at
  // once (nothing else may be outstanding); with it, the entry is filled at
  // that offset, which advances, and is published by the caller's Flush.
  absl::StatusOr<bool> DiscardNext(uint32_t* fill_index = nullptr);

  // Writes `elem` with `len` bytes written into the used ring, `offset`
  // entries past those already flushed. Not visible to the driver until Flush.
  void Fill(const VirtqElement& elem, uint32_t len, uint32_t offset);

  // Publishes `count` filled entries to the driver.
  void Flush(uint32_t count);

  // Fill(elem, len, 0) and Flush(1).
  void Push(const VirtqElement& elem, uint32_t len) {
    Fill(elem, len, 0);
    Flush(1);
  }

  // Hands the last `count` popped, unflushed elements back: the next Pop()
  // returns them again. Returns false (and does nothing) if fewer than
  // `count` are outstanding.
  bool Rewind(uint32_t count);
  // Rewind(1).
  bool Unpop() { return Rewind(1); }

  // Takes `count` outstanding elements out of this queue's accounting without
  // returning them: for elements the caller completes by other means.
  void Detach(uint32_t count = 1);

  // True if the driver wants an interrupt for what was flushed since the last
  // one (VRING_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX).
  bool ShouldNotify();

  // Signals the call eventfd if ShouldNotify(). Returns true if it did.
  bool Notify();

  // Records in the dirty log (if logging) that the device wrote the first
  // `bytes` bytes of `elem`'s device-writable buffers. The data plane calls
  // it for every element it fills, before Flush(). Costs one branch when not
  // logging.
  void LogWrite(const VirtqElement& elem, uint64_t bytes) {
    if (dirty_log_ != nullptr) [[unlikely]] {
      dirty_log_->MarkIovecs(*memory_, elem.in_sg, elem.in_num, bytes);
    }
  }
  // The log given at Start(), or nullptr while not logging.
  DirtyLog* dirty_log() const { return dirty_log_; }

  // The call eventfd; -1 for none. Not owned.
  void set_call_fd(int fd) { call_fd_ = fd; }
  int call_fd() const { return call_fd_; }

  // Asks the driver to kick (true) or not to (false) when it adds buffers.
  // After enabling, check IsEmpty() again: the driver may have added buffers
  // just before it saw the request.
  void SetNotification(bool enable);

  // True if no chain is available. Reads the driver's index when the cached
  // one is used up; an index that runs ahead by more than the queue size
  // breaks the queue (and reports empty).
  bool IsEmpty();

  uint16_t last_avail_idx() const { return last_avail_idx_; }
  uint16_t used_idx() const { return used_idx_; }
  // Popped elements not yet flushed, rewound or detached.
  uint32_t in_use() const { return in_use_; }

 private:
  // Marks the queue broken and returns the kDataLoss status to report. The
  // message is formatted out of line (cold), so the walk's fast path carries
  // no string building.
  template <typename... Args>
  [[gnu::noinline, gnu::cold]] absl::Status Break(const absl::FormatSpec<Args...>& format,
                                                  Args... args);
  absl::Status BreakWith(std::string reason);
  // The statuses of the other failures, built out of line for the same reason:
  // a pop on a stopped or broken queue, one that just broke it, and a chain
  // that does not fit.
  [[gnu::noinline, gnu::cold]] absl::Status NotUsable() const;
  [[gnu::noinline, gnu::cold]] absl::Status BrokenNow() const;
  [[gnu::noinline, gnu::cold]] static absl::Status NoRoom(uint16_t head, size_t max_in,
                                                          size_t max_out);
  // Records a popped chain in `elem` and advances past it.
  void Commit(VirtqElement* elem, uint16_t head, iovec* in_sg, size_t in_num, uint64_t in_len,
              iovec* out_sg, size_t out_num, uint64_t out_len) {
    elem->index = head;
    elem->in_num = static_cast<uint32_t>(in_num);
    elem->out_num = static_cast<uint32_t>(out_num);
    elem->in_sg = in_sg;
    elem->out_sg = out_sg;
    // The walk caps a chain at kMaxChainBytes, so both fit.
    elem->in_len = static_cast<uint32_t>(in_len);
    elem->out_len = static_cast<uint32_t>(out_len);
    ++last_avail_idx_;
    ++in_use_;
    if (event_idx_) {
      std::atomic_ref<uint16_t>(*avail_event_ptr())
          .store(last_avail_idx_, std::memory_order_relaxed);
    }
  }

  // Reloads the driver's avail index. False if it is implausible.
  bool RefreshAvailIdx();

  uint16_t* avail_idx_ptr() const { return reinterpret_cast<uint16_t*>(avail_) + 1; }
  uint16_t* avail_ring() const { return reinterpret_cast<uint16_t*>(avail_) + 2; }
  uint16_t* used_event_ptr() const { return avail_ring() + size_; }
  uint16_t* used_idx_ptr() const { return reinterpret_cast<uint16_t*>(used_) + 1; }
  VirtqUsedElem* used_ring() const {
    return reinterpret_cast<VirtqUsedElem*>(reinterpret_cast<uint8_t*>(used_) + 4);
  }
  uint16_t* avail_event_ptr() const { return reinterpret_cast<uint16_t*>(used_ring() + size_); }
  // Logs a write of `len` bytes at byte `offset` of the used ring.
  void LogUsed(uint64_t offset, uint64_t len) const { used_log_->Mark(used_gpa_ + offset, len); }
  // Logs what publishing `count` entries from used index `first` wrote.
  void LogFlush(uint16_t first, uint32_t count) const;

  const GuestMemory* memory_ = nullptr;
  VirtqDesc* desc_ = nullptr;
  void* avail_ = nullptr;
  void* used_ = nullptr;
  uint32_t size_ = 0;
  uint32_t mask_ = 0;
  bool event_idx_ = false;
  bool indirect_desc_ = false;
  bool started_ = false;
  bool broken_ = false;
  std::string broken_reason_;

  uint16_t last_avail_idx_ = 0;    // Next chain to pop.
  uint16_t shadow_avail_idx_ = 0;  // The driver's avail index as last read.
  uint16_t used_idx_ = 0;          // Next used entry to publish.
  uint32_t in_use_ = 0;
  uint16_t signalled_used_ = 0;  // used_idx_ at the last interrupt.
  bool signalled_used_valid_ = false;
  int call_fd_ = -1;
  // Dirty logging, last so that the hot fields above keep their places.
  DirtyLog* dirty_log_ = nullptr;
  DirtyLog* used_log_ = nullptr;  // Set only when used ring writes are logged.
  uint64_t used_gpa_ = 0;
};

}  // namespace vunet::virtio

#endif  // VUNET_VIRTIO_VIRTQUEUE_H_
