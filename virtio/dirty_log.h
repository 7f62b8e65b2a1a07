// The dirty log of live migration: a bitmap in memory shared with the
// frontend (VHOST_USER_SET_LOG_BASE), one bit per 4 KiB page of guest-physical
// memory, that the backend sets for every page it writes while
// VHOST_F_LOG_ALL is negotiated. The frontend copies the pages whose bits are
// set again, so a write that is not logged is a page the migrated guest sees
// stale.
//
// Bits are set with an atomic OR because the frontend clears them
// concurrently and several queues may log into one byte at once. Page p is
// bit p % 8 of byte p / 8 (the same as bit p % 64 of little-endian 64-bit
// word p / 64, as the frontend reads it).
//
// Writes beyond the bitmap (a log too small for the guest) are not recorded;
// they are counted in pages_beyond_log() so the mistake can be reported.
//
//   absl::StatusOr<std::unique_ptr<DirtyLog>> log = DirtyLog::Map(fd, size, offset);
//   (*log)->Mark(gpa, len);                          // A write by guest address.
//   (*log)->MarkHost(memory, iov.iov_base, written);  // A write through an iovec.

#ifndef VUNET_VIRTIO_DIRTY_LOG_H_
#define VUNET_VIRTIO_DIRTY_LOG_H_

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "virtio/guest_memory.h"

namespace vunet::virtio {

class DirtyLog {
 public:
  static constexpr uint64_t kPageSize = 4096;
  // The largest log mapped: enough for 32 TiB of guest memory.
  static constexpr uint64_t kMaxBytes = 1ull << 30;

  // Maps `size` bytes of `fd` from `offset` (shared, read-write). The fd is
  // not taken over. Refuses a zero or oversized size, ranges that overflow,
  // and fds that are not files holding every byte of the range (touching a
  // shared mapping past the end of its file raises SIGBUS).
  static absl::StatusOr<std::unique_ptr<DirtyLog>> Map(int fd, uint64_t size, uint64_t offset);

  // A log over `bytes` bytes the caller owns at `bitmap` (tests, benchmarks).
  DirtyLog(uint8_t* bitmap, uint64_t bytes) : bitmap_(bitmap), bytes_(bytes) {}
  DirtyLog(const DirtyLog&) = delete;
  DirtyLog& operator=(const DirtyLog&) = delete;
  ~DirtyLog();

  // Marks every page that [gpa, gpa + len) touches. len 0 marks nothing.
  void Mark(uint64_t gpa, uint64_t len);

  // Marks [host, host + len), a range inside one region of `memory` (as every
  // iovec entry Virtqueue::Pop or GuestMemory::MapGpa produces is). A range
  // outside guest memory is counted in unmapped_writes() and not logged.
  void MarkHost(const GuestMemory& memory, const void* host, uint64_t len);

  // Marks the first `bytes` bytes of the buffers `iov[0..count)`: what a
  // device wrote into a device-writable chain.
  void MarkIovecs(const GuestMemory& memory, const iovec* iov, size_t count, uint64_t bytes);

  uint64_t bytes() const { return bytes_; }
  // Pages the bitmap covers.
  uint64_t pages() const { return bytes_ * 8; }
  uint64_t pages_beyond_log() const { return beyond_.load(std::memory_order_relaxed); }
  uint64_t unmapped_writes() const { return unmapped_.load(std::memory_order_relaxed); }

  // True if page `page`'s bit is set (tests).
  bool IsDirty(uint64_t page) const;

 private:
  uint8_t* bitmap_ = nullptr;
  uint64_t bytes_ = 0;
  void* mapping_ = nullptr;  // What mmap returned; nullptr if not ours.
  size_t mapping_size_ = 0;
  std::atomic<uint64_t> beyond_{0};
  std::atomic<uint64_t> unmapped_{0};
};

}  // namespace vunet::virtio

#endif  // VUNET_VIRTIO_DIRTY_LOG_H_
