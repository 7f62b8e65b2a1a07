#include "virtio/virtqueue.h"

#include <sys/eventfd.h>

#include <atomic>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vunet::virtio {
namespace {

uint16_t LoadAcquire(uint16_t* p) {
  return std::atomic_ref<uint16_t>(*p).load(std::memory_order_acquire);
}
uint16_t LoadRelaxed(uint16_t* p) {
  return std::atomic_ref<uint16_t>(*p).load(std::memory_order_relaxed);
}
void StoreRelaxed(uint16_t* p, uint16_t v) {
  std::atomic_ref<uint16_t>(*p).store(v, std::memory_order_relaxed);
}
void StoreRelease(uint16_t* p, uint16_t v) {
  std::atomic_ref<uint16_t>(*p).store(v, std::memory_order_release);
}

// Copies descriptor `i` of a table out of guest memory once. The signal fence
// keeps the compiler from re-reading guest memory in place of the copy, so a
// driver that rewrites the descriptor meanwhile cannot make a checked value
// differ from a used one. Tables are byte pointers: indirect tables need not
// be aligned.
VirtqDesc LoadDesc(const uint8_t* table, uint32_t i) {
  VirtqDesc d;
  std::memcpy(&d, table + sizeof(VirtqDesc) * i, sizeof(d));
  std::atomic_signal_fence(std::memory_order_seq_cst);
  return d;
}

bool IsAligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

}  // namespace

absl::Status Virtqueue::Start(const GuestMemory* memory, const Config& config) {
  if (memory == nullptr) return absl::InvalidArgumentError("virtqueue: no guest memory");
  if (config.size == 0 || config.size > kMaxSize || !std::has_single_bit(config.size)) {
    return absl::InvalidArgumentError(absl::StrCat("virtqueue: size ", config.size,
                                                   " is not a power of two from 1 to ", kMaxSize));
  }
  if (config.desc == nullptr || config.avail == nullptr || config.used == nullptr) {
    return absl::InvalidArgumentError("virtqueue: ring address missing");
  }
  if (!IsAligned(config.desc, 16) || !IsAligned(config.avail, 2) || !IsAligned(config.used, 4)) {
    return absl::InvalidArgumentError("virtqueue: ring misaligned");
  }
  memory_ = memory;
  desc_ = static_cast<VirtqDesc*>(config.desc);
  avail_ = config.avail;
  used_ = config.used;
  size_ = config.size;
  mask_ = config.size - 1;
  event_idx_ = config.event_idx;
  indirect_desc_ = config.indirect_desc;
  dirty_log_ = config.dirty_log;
  used_log_ = config.log_used ? config.dirty_log : nullptr;
  used_gpa_ = config.used_gpa;
  broken_ = false;
  broken_reason_.clear();
  in_use_ = 0;
  signalled_used_valid_ = false;
  used_idx_ = LoadRelaxed(used_idx_ptr());
  last_avail_idx_ = config.avail_base;
  // Chains between the ring's used index and the base were popped by an
  // earlier backend that never returned them. We complete chains in order, so
  // resuming from the used index serves them again rather than leaking them.
  if (static_cast<uint16_t>(last_avail_idx_ - used_idx_) <= size_) last_avail_idx_ = used_idx_;
  shadow_avail_idx_ = last_avail_idx_;
  started_ = true;
  return absl::OkStatus();
}

void Virtqueue::Stop() {
  // Pops since the last flush wrote avail_event; the log must show it before
  // the frontend's last look at the bitmap, which follows the stop.
  if (started_ && event_idx_ && used_log_ != nullptr) LogUsed(4 + 8ull * size_, 2);
  started_ = false;
}

void Virtqueue::LogFlush(uint16_t first, uint32_t count) const {
  // Fill wrote the entries [first, first + count), wrapping at the ring's
  // end; Flush the index; Pop (with EVENT_IDX) avail_event. Logging them
  // here keeps Pop and Fill free of logging checks.
  const uint32_t n = count < size_ ? count : size_;
  const uint32_t start = first & mask_;
  const uint32_t before_wrap = n < size_ - start ? n : size_ - start;
  LogUsed(4 + 8ull * start, 8ull * before_wrap);
  if (n > before_wrap) LogUsed(4, 8ull * (n - before_wrap));
  LogUsed(2, 2);
  if (event_idx_) LogUsed(4 + 8ull * size_, 2);
}

absl::Status Virtqueue::BreakWith(std::string reason) {
  broken_ = true;
  broken_reason_ = std::move(reason);
  return absl::DataLossError(absl::StrCat("virtqueue broken: ", broken_reason_));
}

template <typename... Args>
absl::Status Virtqueue::Break(const absl::FormatSpec<Args...>& format, Args... args) {
  return BreakWith(absl::StrFormat(format, args...));
}

absl::Status Virtqueue::BrokenNow() const {
  return absl::DataLossError("virtqueue broken: " + broken_reason_);
}

absl::Status Virtqueue::NoRoom(uint16_t head, size_t max_in, size_t max_out) {
  return absl::ResourceExhaustedError(
      absl::StrFormat("chain at head %d needs more iovec entries than given (%d in, %d out)", head,
                      max_in, max_out));
}

absl::Status Virtqueue::NotUsable() const {
  if (broken_) return absl::FailedPreconditionError("virtqueue broken: " + broken_reason_);
  return absl::FailedPreconditionError("virtqueue not started");
}

bool Virtqueue::RefreshAvailIdx() {
  const uint16_t idx = LoadAcquire(avail_idx_ptr());
  if (static_cast<uint16_t>(idx - last_avail_idx_) > size_) {
    (void)Break("driver moved avail index from %d to %d, more than the %d entries", last_avail_idx_,
                idx, size_);
    return false;
  }
  shadow_avail_idx_ = idx;
  return true;
}

bool Virtqueue::IsEmpty() {
  if (!started_ || broken_) return true;
  if (shadow_avail_idx_ != last_avail_idx_) return false;
  if (!RefreshAvailIdx()) return true;
  return shadow_avail_idx_ == last_avail_idx_;
}

absl::StatusOr<bool> Virtqueue::Pop(VirtqElement* elem, iovec* in_sg, size_t max_in_sg,
                                    iovec* out_sg, size_t max_out_sg) {
  if (!started_ || broken_) [[unlikely]]
    return NotUsable();
  if (memory_->faulted()) [[unlikely]]
    return BreakWith("guest memory faulted: a region's file shrank under its mapping");
  if (IsEmpty()) {
    if (broken_) [[unlikely]]
      return BrokenNow();
    return false;
  }
  if (in_use_ >= size_) {
    return Break("driver made more than %d chains available at once", size_);
  }
  const uint16_t head = LoadRelaxed(&avail_ring()[last_avail_idx_ & mask_]);
  if (head >= size_) return Break("head index %d out of range", head);

  const uint8_t* table = reinterpret_cast<const uint8_t*>(desc_);
  uint32_t table_size = size_;
  uint32_t i = head;
  VirtqDesc d = LoadDesc(table, i);
  if (!(d.flags & (kVirtqDescFNext | kVirtqDescFIndirect))) [[likely]] {
    // A chain of one descriptor, the common receive buffer and small frame:
    // the same checks as the walk below, without its bookkeeping.
    const bool writable = d.flags & kVirtqDescFWrite;
    size_t n = 0;
    const GuestMemory::MapResult result =
        writable ? memory_->MapGpaRaw(d.addr, d.len, in_sg, max_in_sg, &n)
                 : memory_->MapGpaRaw(d.addr, d.len, out_sg, max_out_sg, &n);
    if (result != GuestMemory::MapResult::kOk) [[unlikely]] {
      if (result == GuestMemory::MapResult::kUnmapped || !memory_->IsMapped(d.addr, d.len)) {
        return Break("descriptor %d (0x%x+%d) outside guest memory", i, d.addr, d.len);
      }
      return NoRoom(head, max_in_sg, max_out_sg);
    }
    Commit(elem, head, in_sg, writable ? n : 0, writable ? d.len : 0, out_sg, writable ? 0 : n,
           writable ? 0 : d.len);
    return true;
  }
  if (d.flags & kVirtqDescFIndirect) {
    if (!indirect_desc_) return Break("indirect descriptor without the feature");
    if (d.flags & kVirtqDescFNext) return Break("indirect descriptor with NEXT set");
    if (d.len == 0 || d.len % sizeof(VirtqDesc) != 0 ||
        d.len / sizeof(VirtqDesc) > kMaxIndirectEntries) {
      return Break("indirect table of bad length %d", d.len);
    }
    table = static_cast<const uint8_t*>(memory_->GpaToHost(d.addr, d.len));
    if (table == nullptr) {
      return Break("indirect table 0x%x+%d outside guest memory", d.addr, d.len);
    }
    table_size = d.len / sizeof(VirtqDesc);
    i = 0;
    d = LoadDesc(table, 0);
  }

  // Every descriptor spends one unit of budget, so a loop ends after at most
  // table_size steps.
  uint32_t budget = table_size;
  uint64_t total = 0;
  uint64_t in_len = 0;
  size_t in_num = 0;
  size_t out_num = 0;
  // Once the caller's capacity runs out the rest of the chain is still walked
  // and checked, so a malformed chain breaks the queue whatever the capacity,
  // and kResourceExhausted always means a good chain that did not fit.
  bool out_of_space = false;
  bool writable_seen = false;
  for (;;) {
    if (d.flags & kVirtqDescFIndirect) return Break("indirect descriptor inside a chain");
    total += d.len;
    if (total > kMaxChainBytes) return Break("chain longer than 4 GiB");
    const bool writable = d.flags & kVirtqDescFWrite;
    if (!writable && writable_seen) return Break("readable descriptor after a writable one");
    writable_seen |= writable;
    if (writable) in_len += d.len;
    GuestMemory::MapResult result = GuestMemory::MapResult::kNoSpace;
    if (!out_of_space) {
      size_t n = 0;
      if (writable) {
        result = memory_->MapGpaRaw(d.addr, d.len, in_sg + in_num, max_in_sg - in_num, &n);
        in_num += n;
      } else {
        result = memory_->MapGpaRaw(d.addr, d.len, out_sg + out_num, max_out_sg - out_num, &n);
        out_num += n;
      }
    }
    if (result != GuestMemory::MapResult::kOk) [[unlikely]] {
      if (result == GuestMemory::MapResult::kUnmapped || !memory_->IsMapped(d.addr, d.len)) {
        return Break("descriptor %d (0x%x+%d) outside guest memory", i, d.addr, d.len);
      }
      out_of_space = true;
    }
    if (!(d.flags & kVirtqDescFNext)) break;
    if (--budget == 0) return Break("chain at head %d loops or is too long", head);
    i = d.next;
    if (i >= table_size) return Break("next index %d out of range", i);
    d = LoadDesc(table, i);
  }
  if (out_of_space) [[unlikely]]
    return NoRoom(head, max_in_sg, max_out_sg);

  Commit(elem, head, in_sg, in_num, in_len, out_sg, out_num, total - in_len);
  return true;
}

absl::StatusOr<bool> Virtqueue::DiscardNext(uint32_t* fill_index) {
  if (!started_ || broken_) return NotUsable();
  if (memory_->faulted()) [[unlikely]]
    return BreakWith("guest memory faulted: a region's file shrank under its mapping");
  if (IsEmpty()) {
    if (broken_) return BrokenNow();
    return false;
  }
  if (in_use_ >= size_) {
    return Break("driver made more than %d chains available at once", size_);
  }
  const uint16_t head = LoadRelaxed(&avail_ring()[last_avail_idx_ & mask_]);
  if (head >= size_) return Break("head index %d out of range", head);
  VirtqElement unused;
  Commit(&unused, head, nullptr, 0, 0, nullptr, 0, 0);
  if (fill_index != nullptr) {
    Fill(unused, 0, (*fill_index)++);
  } else {
    Push(unused, 0);
  }
  return true;
}

void Virtqueue::Fill(const VirtqElement& elem, uint32_t len, uint32_t offset) {
  if (!started_) [[unlikely]]
    return;  // The ring may be unmapped already.
  const VirtqUsedElem entry{.id = elem.index, .len = len};
  std::memcpy(&used_ring()[(used_idx_ + offset) & mask_], &entry, sizeof(entry));
}

void Virtqueue::Flush(uint32_t count) {
  if (!started_) [[unlikely]]
    return;
  const uint16_t old = used_idx_;
  used_idx_ = static_cast<uint16_t>(used_idx_ + count);
  StoreRelease(used_idx_ptr(), used_idx_);
  if (used_log_ != nullptr) [[unlikely]]
    LogFlush(old, count);
  in_use_ -= count < in_use_ ? count : in_use_;
  // If the index passed the last signalled value, comparisons against it
  // would wrap: forget it so the next ShouldNotify() signals.
  if (static_cast<uint16_t>(used_idx_ - signalled_used_) < static_cast<uint16_t>(used_idx_ - old)) {
    signalled_used_valid_ = false;
  }
}

bool Virtqueue::Rewind(uint32_t count) {
  if (count > in_use_) return false;
  last_avail_idx_ = static_cast<uint16_t>(last_avail_idx_ - count);
  in_use_ -= count;
  return true;
}

void Virtqueue::Detach(uint32_t count) { in_use_ -= count < in_use_ ? count : in_use_; }

bool Virtqueue::ShouldNotify() {
  if (!started_) return false;
  // Our used index store must be visible before we read what the driver
  // asked for, or we could miss an interrupt it is waiting for.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!event_idx_) {
    return !(LoadRelaxed(reinterpret_cast<uint16_t*>(avail_)) & kVirtqAvailFNoInterrupt);
  }
  const uint16_t old = signalled_used_;
  const bool valid = signalled_used_valid_;
  signalled_used_ = used_idx_;
  signalled_used_valid_ = true;
  if (!valid) return true;
  const uint16_t event = LoadRelaxed(used_event_ptr());
  return static_cast<uint16_t>(used_idx_ - event - 1) < static_cast<uint16_t>(used_idx_ - old);
}

bool Virtqueue::Notify() {
  if (!ShouldNotify() || call_fd_ < 0) return false;
  // An eventfd write fails only if the counter would overflow, and then the
  // driver has an interrupt pending anyway.
  (void)eventfd_write(call_fd_, 1);
  return true;
}

void Virtqueue::SetNotification(bool enable) {
  if (!started_) return;
  if (event_idx_) {
    if (enable) {
      StoreRelaxed(avail_event_ptr(), shadow_avail_idx_);
      if (used_log_ != nullptr) [[unlikely]]
        LogUsed(4 + 8ull * size_, 2);
    }
  } else {
    StoreRelaxed(reinterpret_cast<uint16_t*>(used_), enable ? 0 : kVirtqUsedFNoNotify);
    if (used_log_ != nullptr) [[unlikely]]
      LogUsed(0, 2);
  }
  // The request must be visible before the caller looks at the ring again.
  if (enable) std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace vunet::virtio
