#include "base/iov.h"

#include <algorithm>
#include <cstring>

namespace vunet {
namespace {

// Finds the entry holding byte `offset`; returns count if past the end.
size_t Seek(const iovec* iov, size_t count, size_t* offset) {
  size_t i = 0;
  while (i < count && *offset >= iov[i].iov_len) {
    *offset -= iov[i].iov_len;
    ++i;
  }
  return i;
}

template <typename Op>
size_t Walk(const iovec* iov, size_t count, size_t offset, size_t len, Op op) {
  size_t done = 0;
  for (size_t i = Seek(iov, count, &offset); i < count && done < len; ++i) {
    const size_t chunk = std::min(iov[i].iov_len - offset, len - done);
    op(static_cast<uint8_t*>(iov[i].iov_base) + offset, done, chunk);
    done += chunk;
    offset = 0;
  }
  return done;
}

}  // namespace

size_t IovFromBuf(const iovec* iov, size_t count, size_t offset, const void* data, size_t len) {
  const auto* src = static_cast<const uint8_t*>(data);
  return Walk(iov, count, offset, len,
              [src](uint8_t* dst, size_t at, size_t n) { std::memcpy(dst, src + at, n); });
}

size_t IovToBuf(const iovec* iov, size_t count, size_t offset, void* data, size_t len) {
  auto* dst = static_cast<uint8_t*>(data);
  return Walk(iov, count, offset, len,
              [dst](uint8_t* src, size_t at, size_t n) { std::memcpy(dst + at, src, n); });
}

size_t IovMemset(const iovec* iov, size_t count, size_t offset, uint8_t value, size_t len) {
  return Walk(iov, count, offset, len,
              [value](uint8_t* dst, size_t, size_t n) { std::memset(dst, value, n); });
}

iovec* IovConsume(iovec* iov, size_t* count, size_t bytes) {
  size_t i = 0;
  while (i < *count && bytes >= iov[i].iov_len && (bytes > 0 || iov[i].iov_len == 0)) {
    bytes -= iov[i].iov_len;
    ++i;
  }
  iov += i;
  *count -= i;
  if (*count > 0) {
    iov[0].iov_base = static_cast<uint8_t*>(iov[0].iov_base) + bytes;
    iov[0].iov_len -= bytes;
  }
  return iov;
}

size_t IovSlice(const iovec* iov, size_t count, size_t offset, size_t len, iovec* out, size_t* n,
                size_t max) {
  size_t covered = 0;
  for (size_t i = 0; i < count && covered < len && *n < max; ++i) {
    if (offset >= iov[i].iov_len) {
      offset -= iov[i].iov_len;
      continue;
    }
    const size_t take = std::min(iov[i].iov_len - offset, len - covered);
    out[(*n)++] = {static_cast<uint8_t*>(iov[i].iov_base) + offset, take};
    covered += take;
    offset = 0;
  }
  return covered;
}

}  // namespace vunet
