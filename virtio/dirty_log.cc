#include "virtio/dirty_log.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace vunet::virtio {

absl::StatusOr<std::unique_ptr<DirtyLog>> DirtyLog::Map(int fd, uint64_t size, uint64_t offset) {
  if (size == 0 || size > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("dirty log: size ", size, " is not from 1 to ", kMaxBytes));
  }
  if (offset > UINT64_MAX - size || offset + size > SIZE_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("dirty log: offset ", offset, " overflows"));
  }
  const uint64_t mapping_size = offset + size;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("dirty log: fstat failed: ", strerror(errno)));
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < mapping_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("dirty log: fd is not a file of at least ", mapping_size, " bytes"));
  }
  // Mapped from the start of the file: the frontend's offset need not be
  // page aligned.
  // As for guest memory: keep the file from shrinking under the mapping
  // where it allows sealing.
  (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK);
  void* mapping = mmap(nullptr, mapping_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mapping == MAP_FAILED) {
    return absl::InvalidArgumentError(absl::StrCat("dirty log: mmap failed: ", strerror(errno)));
  }
  auto log = std::make_unique<DirtyLog>(static_cast<uint8_t*>(mapping) + offset, size);
  log->mapping_ = mapping;
  log->mapping_size_ = mapping_size;
  return log;
}

DirtyLog::~DirtyLog() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

void DirtyLog::Mark(uint64_t gpa, uint64_t len) {
  if (len == 0) return;
  const uint64_t first = gpa / kPageSize;
  // The last byte, clamped so a range running past 2^64 cannot wrap.
  const uint64_t last = (len - 1 > UINT64_MAX - gpa ? UINT64_MAX : gpa + len - 1) / kPageSize;
  const uint64_t pages = this->pages();
  for (uint64_t page = first; page <= last; ++page) {
    if (page >= pages) {
      beyond_.fetch_add(last - page + 1, std::memory_order_relaxed);
      return;
    }
    std::atomic_ref<uint8_t>(bitmap_[page / 8])
        .fetch_or(static_cast<uint8_t>(1u << (page % 8)), std::memory_order_relaxed);
  }
}

void DirtyLog::MarkHost(const GuestMemory& memory, const void* host, uint64_t len) {
  if (len == 0) return;
  absl::StatusOr<uint64_t> gpa = memory.HostToGpa(host);
  if (!gpa.ok()) {
    unmapped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  Mark(*gpa, len);
}

void DirtyLog::MarkIovecs(const GuestMemory& memory, const iovec* iov, size_t count,
                          uint64_t bytes) {
  for (size_t i = 0; i < count && bytes > 0; ++i) {
    const uint64_t n = iov[i].iov_len < bytes ? iov[i].iov_len : bytes;
    MarkHost(memory, iov[i].iov_base, n);
    bytes -= n;
  }
}

bool DirtyLog::IsDirty(uint64_t page) const {
  if (page >= pages()) return false;
  return std::atomic_ref<uint8_t>(bitmap_[page / 8]).load(std::memory_order_relaxed) &
         (1u << (page % 8));
}

}  // namespace vunet::virtio
