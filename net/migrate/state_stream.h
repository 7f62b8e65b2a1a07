// The migration state stream: how a backend's state (the guest's identity,
// its flows) travels from the source back-end to the destination's, through
// the frontend (VHOST_USER_SET_DEVICE_STATE_FD's pipe). Self-describing and
// versioned: a header, then records that each carry their type, flags and
// length, then an end record with the record count and a CRC-32C of
// everything before it. All integers little-endian.
//
//   header  "VUNETMIG" (8 bytes), u16 format version (kFormatVersion),
//           u16 zero, u32 zero (flags; none defined)
//   record  u16 type, u16 flags (kRecordOptional: a reader that does not
//           know the type skips it; otherwise an unknown type fails the
//           load), u32 length, `length` bytes of payload
//   end     type kEnd, flags 0, length 8: u32 records before it, u32 CRC-32C
//           (Castagnoli) of every byte from the header's first to this
//           record's header (excluded)
//
// The destination treats the stream as hostile: ForEachRecord checks the
// framing, the count and the checksum of the whole stream before it hands
// any record over, and StateReader bounds every read of a payload (a read
// past the end fails the reader, and returns zeros). Record payloads are
// their owners' (net/translate's FramePath routes them by type).
//
//   StateWriter w;
//   size_t r = w.Begin(RecordType::kUdpFlow);
//   w.U16(port); w.Bytes(addr);
//   w.End(r);
//   std::string stream = w.Finish();
//   ...
//   absl::Status s = ForEachRecord(stream, [&](const RecordHeader& h, StateReader& r) {
//     uint16_t port = r.U16(); ...
//     return r.Done();  // Fails if the payload was short or longer than read.
//   });

#ifndef VUNET_NET_MIGRATE_STATE_STREAM_H_
#define VUNET_NET_MIGRATE_STATE_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace vunet::net {

inline constexpr char kStateMagic[8] = {'V', 'U', 'N', 'E', 'T', 'M', 'I', 'G'};
inline constexpr uint16_t kFormatVersion = 1;
inline constexpr size_t kStateHeaderLen = 16;
inline constexpr size_t kRecordHeaderLen = 8;
// The largest stream a destination accepts (the flows' queued bytes
// dominate: a TCP connection's queues are capped by the dump).
inline constexpr size_t kMaxStateBytes = size_t{1} << 30;

// Record types. The numbers are the wire format: never reuse one.
enum class RecordType : uint16_t {
  kIdentity = 1,  // The guest's MAC and addresses.
  kTcpFlow = 2,   // A TCP connection and its socket's repair image.
  kTcpReset = 3,  // A TCP connection that could not move: reset it.
  kUdpFlow = 4,
  kIcmpFlow = 5,
  kEnd = 0xffff,
};
inline constexpr uint16_t kRecordOptional = 1;

// CRC-32C (Castagnoli, as iSCSI and ext4 use), continuing from `crc` (0 to
// start).
uint32_t Crc32c(absl::Span<const uint8_t> data, uint32_t crc = 0);

class StateWriter {
 public:
  StateWriter();  // Writes the header.

  // Starts a record; returns what End needs.
  size_t Begin(RecordType type, uint16_t flags = 0);
  // Ends it: its length is what was written since Begin.
  void End(size_t record);

  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U16(uint16_t v);
  void U32(uint32_t v);
  void U64(uint64_t v);
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void Bytes(absl::Span<const uint8_t> bytes);
  // A length (u32) and the bytes.
  void Blob(absl::Span<const uint8_t> bytes);

  size_t size() const { return out_.size(); }
  size_t records() const { return records_; }
  // Appends the end record and returns the stream; the writer is spent.
  std::string Finish();

 private:
  std::string out_;
  size_t records_ = 0;
};

// Reads one record's payload. A read past the end marks the reader failed
// and returns zeros (or an empty span); check ok() or Done() once at the end
// rather than after every read.
class StateReader {
 public:
  explicit StateReader(absl::Span<const uint8_t> payload) : data_(payload) {}

  uint8_t U8();
  uint16_t U16();
  uint32_t U32();
  uint64_t U64();
  int64_t I64() { return static_cast<int64_t>(U64()); }
  // `n` bytes; empty (and failed) if fewer are left.
  absl::Span<const uint8_t> Bytes(size_t n);
  // A u32 length, at most `max`, and that many bytes.
  absl::Span<const uint8_t> Blob(size_t max);
  // A bool: a byte that must be 0 or 1.
  bool Bool();
  // Marks the reader failed with a reason (a value out of range).
  void Fail(std::string_view why);

  bool ok() const { return ok_; }
  size_t remaining() const { return data_.size() - pos_; }
  // OK if every read fit and every byte was read; else kDataLoss naming the
  // problem.
  absl::Status Done() const;

 private:
  const uint8_t* Take(size_t n);

  absl::Span<const uint8_t> data_;
  size_t pos_ = 0;
  bool ok_ = true;
  std::string why_;
};

struct RecordHeader {
  uint16_t type;
  uint16_t flags;
  uint32_t length;
  size_t index;  // 0 for the first record.
};

// Checks the stream whole (header, version, every record's framing, the end
// record's count and checksum, nothing after it), then calls `record` for
// each record in order, until one returns an error (which is returned,
// prefixed with the record's index and type). Nothing is handed over from a
// stream that fails the checks: kDataLoss naming the first problem.
absl::Status ForEachRecord(
    absl::Span<const uint8_t> stream,
    absl::FunctionRef<absl::Status(const RecordHeader&, StateReader&)> record);

}  // namespace vunet::net

#endif  // VUNET_NET_MIGRATE_STATE_STREAM_H_
