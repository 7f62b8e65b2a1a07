#include "base/pcap.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "base/private_file.h"

namespace vunet {

absl::StatusOr<std::unique_ptr<PcapWriter>> PcapWriter::Open(const std::string& path,
                                                             uint64_t max_bytes) {
  absl::StatusOr<UniqueFd> opened = OpenPrivateFile(path, PrivateFileMode::kTruncate);
  if (!opened.ok()) return opened.status();
  UniqueFd fd = std::move(*opened);
  const PcapFileHeader header{.magic = kPcapMagicNanos,
                              .version_major = 2,
                              .version_minor = 4,
                              .thiszone = 0,
                              .sigfigs = 0,
                              .snaplen = kPcapSnapLen,
                              .linktype = kPcapLinkTypeEthernet};
  const ssize_t n = pwrite(fd.get(), &header, sizeof(header), 0);
  if (n != static_cast<ssize_t>(sizeof(header))) {
    return absl::InternalError(
        absl::StrCat(path, ": ", n < 0 ? strerror(errno) : "short write of the header"));
  }
  return std::unique_ptr<PcapWriter>(
      new PcapWriter(path, std::move(fd), sizeof(header), max_bytes));
}

void PcapWriter::Write(absl::Span<const uint8_t> frame) {
  const iovec iov{.iov_base = const_cast<uint8_t*>(frame.data()), .iov_len = frame.size()};
  Write(&iov, 1, frame.size());
}

void PcapWriter::Write(const iovec* iov, size_t count, size_t orig_len) {
  size_t available = 0;
  for (size_t i = 0; i < count && available < orig_len; ++i) available += iov[i].iov_len;
  const size_t len = std::min({orig_len, available, size_t{kPcapSnapLen}});
  if (static_cast<uint64_t>(offset_) + sizeof(PcapRecordHeader) + len > max_bytes_) {
    if (stats_.over_limit++ == 0) {
      VUNET_LOG(kWarning, "pcap: %s reached its limit of %d bytes; no more frames recorded", path_,
                max_bytes_);
    }
    return;
  }
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const PcapRecordHeader header{
      .ts_sec = static_cast<uint32_t>(now.tv_sec),
      .ts_frac = static_cast<uint32_t>(now.tv_nsec),
      .incl_len = static_cast<uint32_t>(len),
      .orig_len = static_cast<uint32_t>(std::min<size_t>(orig_len, UINT32_MAX)),
  };
  if (!WriteRecord(header, iov, count, len)) return;
  ++stats_.frames;
  stats_.bytes += len;
  if (len < orig_len && len == kPcapSnapLen) ++stats_.truncated;
}

bool PcapWriter::WriteRecord(const PcapRecordHeader& header, const iovec* iov, size_t count,
                             size_t len) {
  const size_t total = sizeof(header) + len;
  size_t done = 0;
  iovec vec[kMaxIov];
  while (done < total) {
    // What is left from `done` on: the rest of the header, then the frame's
    // entries from its byte done - sizeof(header), up to `len` bytes, as many
    // as fit in vec. Usually the whole record in the first round.
    size_t n = 0;
    size_t skip = 0;
    if (done < sizeof(header)) {
      vec[n++] = {.iov_base = const_cast<char*>(reinterpret_cast<const char*>(&header) + done),
                  .iov_len = sizeof(header) - done};
    } else {
      skip = done - sizeof(header);
    }
    size_t remaining = len - skip;
    for (size_t i = 0; i < count && n < kMaxIov && remaining > 0; ++i) {
      size_t entry_len = iov[i].iov_len;
      char* base = static_cast<char*>(iov[i].iov_base);
      if (skip >= entry_len) {
        skip -= entry_len;
        continue;
      }
      base += skip;
      entry_len -= skip;
      skip = 0;
      entry_len = std::min(entry_len, remaining);
      vec[n++] = {.iov_base = base, .iov_len = entry_len};
      remaining -= entry_len;
    }
    const ssize_t w = pwritev(fd_.get(), vec, static_cast<int>(n), offset_ + done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : EIO;
      // Cut off a record written in part so the file stays readable.
      if (done > 0 && ftruncate(fd_.get(), offset_) != 0) {
        // Left as is; the error is counted and logged all the same.
      }
      ++stats_.errors;
      VUNET_LOG_RATELIMITED(kWarning, "pcap %s: frame not captured: %s", path_, strerror(err));
      return false;
    }
    done += static_cast<size_t>(w);
  }
  offset_ += static_cast<off_t>(total);
  return true;
}

}  // namespace vunet
