#include "net/migrate/state_stream.h"

#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vunet::net {
namespace {

// The reflected Castagnoli polynomial.
constexpr uint32_t kCastagnoli = 0x82f63b78;

constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? (c >> 1) ^ kCastagnoli : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

uint16_t LoadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t LoadU32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

void PutU16(char* p, uint16_t v) {
  p[0] = static_cast<char>(v);
  p[1] = static_cast<char>(v >> 8);
}
void PutU32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}

}  // namespace

uint32_t Crc32c(absl::Span<const uint8_t> data, uint32_t crc) {
  crc = ~crc;
  for (uint8_t b : data) crc = kCrcTable[(crc ^ b) & 0xff] ^ (crc >> 8);
  return ~crc;
}

StateWriter::StateWriter() {
  out_.append(kStateMagic, sizeof(kStateMagic));
  U16(kFormatVersion);
  U16(0);
  U32(0);
}

size_t StateWriter::Begin(RecordType type, uint16_t flags) {
  const size_t at = out_.size();
  U16(static_cast<uint16_t>(type));
  U16(flags);
  U32(0);  // The length, patched by End.
  return at;
}

void StateWriter::End(size_t record) {
  const size_t length = out_.size() - record - kRecordHeaderLen;
  PutU32(&out_[record + 4], static_cast<uint32_t>(length));
  ++records_;
}

void StateWriter::U16(uint16_t v) {
  char b[2];
  PutU16(b, v);
  out_.append(b, 2);
}

void StateWriter::U32(uint32_t v) {
  char b[4];
  PutU32(b, v);
  out_.append(b, 4);
}

void StateWriter::U64(uint64_t v) {
  U32(static_cast<uint32_t>(v));
  U32(static_cast<uint32_t>(v >> 32));
}

void StateWriter::Bytes(absl::Span<const uint8_t> bytes) {
  out_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void StateWriter::Blob(absl::Span<const uint8_t> bytes) {
  U32(static_cast<uint32_t>(bytes.size()));
  Bytes(bytes);
}

std::string StateWriter::Finish() {
  const uint32_t crc = Crc32c({reinterpret_cast<const uint8_t*>(out_.data()), out_.size()});
  const size_t end = Begin(RecordType::kEnd);
  U32(static_cast<uint32_t>(records_));
  U32(crc);
  const size_t length = out_.size() - end - kRecordHeaderLen;
  PutU32(&out_[end + 4], static_cast<uint32_t>(length));
  return std::move(out_);
}

const uint8_t* StateReader::Take(size_t n) {
  if (!ok_ || n > data_.size() - pos_) {
    if (ok_) why_ = absl::StrFormat("%d bytes wanted at offset %d of %d", n, pos_, data_.size());
    ok_ = false;
    return nullptr;
  }
  const uint8_t* p = data_.data() + pos_;
  pos_ += n;
  return p;
}

uint8_t StateReader::U8() {
  const uint8_t* p = Take(1);
  return p != nullptr ? p[0] : 0;
}

uint16_t StateReader::U16() {
  const uint8_t* p = Take(2);
  return p != nullptr ? LoadU16(p) : 0;
}

uint32_t StateReader::U32() {
  const uint8_t* p = Take(4);
  return p != nullptr ? LoadU32(p) : 0;
}

uint64_t StateReader::U64() {
  const uint8_t* p = Take(8);
  return p != nullptr ? uint64_t{LoadU32(p)} | (uint64_t{LoadU32(p + 4)} << 32) : 0;
}

absl::Span<const uint8_t> StateReader::Bytes(size_t n) {
  const uint8_t* p = Take(n);
  return p != nullptr ? absl::Span<const uint8_t>(p, n) : absl::Span<const uint8_t>();
}

absl::Span<const uint8_t> StateReader::Blob(size_t max) {
  const uint32_t n = U32();
  if (ok_ && n > max) {
    Fail(absl::StrFormat("a blob of %d bytes, at most %d allowed", n, max));
    return {};
  }
  return Bytes(n);
}

bool StateReader::Bool() {
  const uint8_t v = U8();
  if (v > 1) Fail(absl::StrFormat("a flag of value %d", v));
  return v == 1;
}

void StateReader::Fail(std::string_view why) {
  if (ok_) why_ = std::string(why);
  ok_ = false;
}

absl::Status StateReader::Done() const {
  if (!ok_) return absl::DataLossError(why_);
  if (pos_ != data_.size()) {
    return absl::DataLossError(
        absl::StrFormat("%d bytes left unread of %d", data_.size() - pos_, data_.size()));
  }
  return absl::OkStatus();
}

absl::Status ForEachRecord(
    absl::Span<const uint8_t> stream,
    absl::FunctionRef<absl::Status(const RecordHeader&, StateReader&)> record) {
  if (stream.size() > kMaxStateBytes) {
    return absl::DataLossError(
        absl::StrFormat("%d bytes of state, at most %d accepted", stream.size(), kMaxStateBytes));
  }
  if (stream.size() < kStateHeaderLen ||
      std::memcmp(stream.data(), kStateMagic, sizeof(kStateMagic)) != 0) {
    return absl::DataLossError("not a vunet state stream (no header)");
  }
  const uint16_t version = LoadU16(stream.data() + 8);
  if (version != kFormatVersion) {
    return absl::DataLossError(
        absl::StrFormat("state format version %d; this vunet reads %d", version, kFormatVersion));
  }
  if (LoadU16(stream.data() + 10) != 0 || LoadU32(stream.data() + 12) != 0) {
    return absl::DataLossError("unknown flags in the state header");
  }
  // First pass: the framing, the end record, the checksum.
  size_t pos = kStateHeaderLen;
  size_t count = 0;
  bool ended = false;
  while (pos < stream.size()) {
    if (stream.size() - pos < kRecordHeaderLen) {
      return absl::DataLossError(absl::StrFormat("record %d: truncated header", count));
    }
    const uint8_t* h = stream.data() + pos;
    const uint16_t type = LoadU16(h);
    const uint32_t length = LoadU32(h + 4);
    if (length > stream.size() - pos - kRecordHeaderLen) {
      return absl::DataLossError(absl::StrFormat(
          "record %d (type %d): %d bytes, past the stream's end", count, type, length));
    }
    if (type == static_cast<uint16_t>(RecordType::kEnd)) {
      if (length != 8 || LoadU16(h + 2) != 0 || pos + kRecordHeaderLen + length != stream.size()) {
        return absl::DataLossError("the end record is malformed or not last");
      }
      const uint32_t records = LoadU32(h + 8);
      const uint32_t crc = LoadU32(h + 12);
      if (records != count) {
        return absl::DataLossError(
            absl::StrFormat("the end record counts %d records, the stream has %d", records, count));
      }
      if (Crc32c(stream.first(pos)) != crc) {
        return absl::DataLossError("the state's checksum does not match: corrupted in transit");
      }
      ended = true;
      break;
    }
    pos += kRecordHeaderLen + length;
    ++count;
  }
  if (!ended) return absl::DataLossError("the state ends without its end record: truncated");
  // Second pass: hand the records over.
  pos = kStateHeaderLen;
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* h = stream.data() + pos;
    const RecordHeader header{
        .type = LoadU16(h), .flags = LoadU16(h + 2), .length = LoadU32(h + 4), .index = i};
    StateReader reader(stream.subspan(pos + kRecordHeaderLen, header.length));
    if (absl::Status s = record(header, reader); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrFormat("record %d (type %d): %s", i, header.type, s.message()));
    }
    pos += kRecordHeaderLen + header.length;
  }
  return absl::OkStatus();
}

}  // namespace vunet::net
