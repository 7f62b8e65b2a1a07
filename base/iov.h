// Helpers for scatter-gather lists: sizes, and copies between a contiguous
// buffer and a byte range of an iovec array. Frames in guest memory span
// several buffers, and headers may straddle them, so every layer that reads or
// writes a frame does it through these.
//
// All functions are bounded by both the array and the byte counts given; none
// allocates.

#ifndef VUNET_BASE_IOV_H_
#define VUNET_BASE_IOV_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace vunet {

// Total bytes of iov[0..count).
inline size_t IovSize(const iovec* iov, size_t count) {
  size_t total = 0;
  for (size_t i = 0; i < count; ++i) total += iov[i].iov_len;
  return total;
}

// Copies `len` bytes of `data` into the iovecs starting `offset` bytes in.
// Returns the bytes copied (fewer if the iovecs end first).
size_t IovFromBuf(const iovec* iov, size_t count, size_t offset, const void* data, size_t len);

// Copies up to `len` bytes from the iovecs, starting `offset` bytes in, to
// `data`. Returns the bytes copied.
size_t IovToBuf(const iovec* iov, size_t count, size_t offset, void* data, size_t len);

// Sets `len` bytes to zero starting `offset` bytes in. Returns bytes zeroed.
size_t IovMemset(const iovec* iov, size_t count, size_t offset, uint8_t value, size_t len);

// Appends to out[*n..max) entries covering the byte range [offset, offset +
// len) of iov[0..count) (they point into the same buffers: nothing is
// copied). Returns the bytes covered: fewer than `len` if the iovecs end or
// `out` fills first. *n advances by the entries written.
size_t IovSlice(const iovec* iov, size_t count, size_t offset, size_t len, iovec* out, size_t* n,
                size_t max);

// Drops the first `bytes` bytes of iov[0..*count) in place: entries wholly
// consumed are skipped (the returned pointer moves past them) and the first
// remaining one is shortened. Returns the new start; *count is updated. If
// fewer than `bytes` bytes exist, returns the end with *count 0.
iovec* IovConsume(iovec* iov, size_t* count, size_t bytes);

}  // namespace vunet

#endif  // VUNET_BASE_IOV_H_
