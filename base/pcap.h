// A packet capture file in the classic libpcap format, as tcpdump, tshark and
// Wireshark read it: a global header (nanosecond timestamps, magic
// 0xa1b23c4d, version 2.4, snaplen 65535, link type 1 = Ethernet) then one
// record per frame (timestamp, captured length, original length, bytes), in
// host byte order as the format allows.
//
//   absl::StatusOr<std::unique_ptr<PcapWriter>> w = PcapWriter::Open(path);
//   (*w)->Write(frame_iov, frame_iov_count, frame_len);
//
// Open creates the file mode 0600 (a capture can hold private data) or
// truncates an existing one (keeping its mode); it refuses a symlink as the
// last component (O_NOFOLLOW) and anything but a regular file, so a FIFO
// cannot make the data path block. The fd is close-on-exec.
//
// Write gathers one record with a single pwritev (the record header and the
// frame's own iovecs: no copy of the frame, no allocation), truncated at the
// snaplen. It never fails the caller: a write error is counted and logged
// (rate-limited), and a record written in part is cut off again, so the file
// always ends at a record boundary. Not thread-safe; one writer per file.

#ifndef VUNET_BASE_PCAP_H_
#define VUNET_BASE_PCAP_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"

namespace vunet {

// The file's global header (24 bytes).
struct PcapFileHeader {
  uint32_t magic;
  uint16_t version_major;
  uint16_t version_minor;
  int32_t thiszone;
  uint32_t sigfigs;
  uint32_t snaplen;
  uint32_t linktype;
};
static_assert(sizeof(PcapFileHeader) == 24);

// A record's header (16 bytes); ts_frac is in nanoseconds with
// kPcapMagicNanos, microseconds with kPcapMagicMicros.
struct PcapRecordHeader {
  uint32_t ts_sec;
  uint32_t ts_frac;
  uint32_t incl_len;
  uint32_t orig_len;
};
static_assert(sizeof(PcapRecordHeader) == 16);

inline constexpr uint32_t kPcapMagicMicros = 0xa1b2c3d4;
inline constexpr uint32_t kPcapMagicNanos = 0xa1b23c4d;
inline constexpr uint32_t kPcapSnapLen = 65535;
inline constexpr uint32_t kPcapLinkTypeEthernet = 1;

class PcapWriter {
 public:
  struct Stats {
    uint64_t frames = 0;      // Records written whole.
    uint64_t bytes = 0;       // Frame bytes in them (captured lengths).
    uint64_t truncated = 0;   // Frames cut at the snaplen.
    uint64_t errors = 0;      // Frames lost to a write error.
    uint64_t over_limit = 0;  // Frames not recorded: the file reached its limit.
  };

  // The default limit on a capture's size: the guest decides how much it
  // sends, and must not decide how much of the host's disk we fill.
  static constexpr uint64_t kDefaultMaxBytes = 1ull << 30;

  // Creates or truncates `path` and writes the global header. Records that
  // would take the file past `max_bytes` are counted and not written.
  static absl::StatusOr<std::unique_ptr<PcapWriter>> Open(const std::string& path,
                                                          uint64_t max_bytes = kDefaultMaxBytes);

  PcapWriter(const PcapWriter&) = delete;
  PcapWriter& operator=(const PcapWriter&) = delete;

  // Appends one frame: the first min(orig_len, kPcapSnapLen) bytes of
  // iov[0..count) (fewer if the iovecs end first); `orig_len` is the frame's
  // length as recorded. The iovecs are read during the call only.
  void Write(const iovec* iov, size_t count, size_t orig_len);
  // A contiguous frame.
  void Write(absl::Span<const uint8_t> frame);

  const Stats& stats() const { return stats_; }
  const std::string& path() const { return path_; }

 private:
  // Entries per pwritev: the record header and this many frame entries less
  // one; a frame in more entries takes several calls.
  static constexpr size_t kMaxIov = 64;

  PcapWriter(std::string path, UniqueFd fd, off_t offset, uint64_t max_bytes)
      : path_(std::move(path)), fd_(std::move(fd)), offset_(offset), max_bytes_(max_bytes) {}
  // Writes `len` bytes: `header` then the frame from iov[0..count).
  bool WriteRecord(const PcapRecordHeader& header, const iovec* iov, size_t count, size_t len);

  std::string path_;
  UniqueFd fd_;
  off_t offset_;  // The end of the last whole record.
  uint64_t max_bytes_;
  Stats stats_;
};

}  // namespace vunet

#endif  // VUNET_BASE_PCAP_H_
