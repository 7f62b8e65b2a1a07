#include "net/tcp/tcp_reorder.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "base/iov.h"

namespace vunet::net {

absl::StatusOr<std::unique_ptr<TcpReorder>> TcpReorder::Create(const Options& options) {
  if (options.bytes == 0 || options.chunk_size == 0 || options.chunk_size > 65536 ||
      options.max_segments == 0 || options.max_per_flow == 0 || options.max_segments >= kNil ||
      options.bytes / options.chunk_size >= kNil) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "TCP reorder pool: %d bytes in chunks of %d, %d segments, %d per flow", options.bytes,
        options.chunk_size, options.max_segments, options.max_per_flow));
  }
  std::unique_ptr<TcpReorder> r(new TcpReorder(options));
  if (!r->data_ || !r->chunk_next_ || !r->records_) {
    return absl::ResourceExhaustedError("no memory for the TCP reorder pool");
  }
  return r;
}

TcpReorder::TcpReorder(const Options& options)
    : options_(options),
      chunk_count_(std::max<size_t>(options.bytes / options.chunk_size, 1)),
      data_(new uint8_t[chunk_count_ * options.chunk_size]),
      chunk_next_(new uint32_t[chunk_count_]),
      records_(new Record[options.max_segments]) {
  for (size_t i = 0; i < chunk_count_; ++i) {
    chunk_next_[i] = i + 1 < chunk_count_ ? static_cast<uint32_t>(i + 1) : kNil;
  }
  free_chunk_ = 0;
  free_chunks_ = chunk_count_;
  for (size_t i = 0; i < options.max_segments; ++i) {
    records_[i].next = i + 1 < options.max_segments ? static_cast<uint32_t>(i + 1) : kNil;
  }
  free_record_ = 0;
}

TcpReorder::~TcpReorder() = default;

uint32_t TcpReorder::TakeChunks(size_t n) {
  if (n == 0 || n > free_chunks_) return kNil;
  const uint32_t first = free_chunk_;
  uint32_t last = first;
  for (size_t i = 1; i < n; ++i) last = chunk_next_[last];
  free_chunk_ = chunk_next_[last];
  chunk_next_[last] = kNil;
  free_chunks_ -= n;
  return first;
}

void TcpReorder::FreeChunks(uint32_t first) {
  while (first != kNil) {
    const uint32_t next = chunk_next_[first];
    chunk_next_[first] = free_chunk_;
    free_chunk_ = first;
    ++free_chunks_;
    first = next;
  }
}

void TcpReorder::FreeRecord(uint32_t r) {
  FreeChunks(records_[r].chunk);
  stats_.bytes_now -= records_[r].len;
  --stats_.segments_now;
  records_[r].next = free_record_;
  free_record_ = r;
}

TcpReorder::Result TcpReorder::Insert(Queue* q, uint32_t rcv_nxt, uint32_t seq,
                                      absl::Span<const iovec> payload, size_t offset, size_t len) {
  // Offsets from rcv_nxt: the held bytes all lie within the window after it.
  uint32_t a = seq - rcv_nxt;
  uint32_t b = a + static_cast<uint32_t>(len);
  if (len == 0 || a == 0 || a >= (1u << 30) || len > (1u << 30)) {
    ++stats_.refused;
    return Result::kNoRoom;
  }
  // Past everything held (the common case once a hole opened): no walk.
  uint32_t* link = &q->head;
  if (q->tail != kNil) {
    const Record& t = records_[q->tail];
    if (t.seq + t.len - rcv_nxt <= a) link = &records_[q->tail].next;
  }
  // Trim against what is held; records the new segment covers whole go.
  while (*link != kNil) {
    Record& r = records_[*link];
    const uint32_t ra = r.seq - rcv_nxt;
    const uint32_t rb = ra + r.len;
    if (rb <= a) {
      link = &r.next;
      continue;
    }
    if (ra >= b) break;
    if (ra <= a && rb >= b) {
      ++stats_.duplicates;
      return Result::kDuplicate;
    }
    if (ra >= a && rb <= b) {
      const uint32_t gone = *link;
      *link = r.next;
      q->bytes -= r.len;
      --q->count;
      if (q->tail == gone) q->tail = kNil;  // Set again below: the new one follows.
      FreeRecord(gone);
      continue;
    }
    if (ra < a) {  // It holds our front.
      a = rb;
      link = &r.next;
      continue;
    }
    b = ra;  // It holds our back.
    break;
  }
  if (a >= b) {
    ++stats_.duplicates;
    return Result::kDuplicate;
  }
  const size_t n = b - a;
  const size_t chunks = (n + options_.chunk_size - 1) / options_.chunk_size;
  if (q->count >= options_.max_per_flow || free_record_ == kNil || chunks > free_chunks_) {
    ++stats_.refused;
    return Result::kNoRoom;
  }
  const uint32_t first = TakeChunks(chunks);
  // Copy the bytes in, chunk by chunk, from where the trimmed range starts.
  size_t src = offset + (a - (seq - rcv_nxt));
  size_t left = n;
  for (uint32_t c = first; c != kNil && left > 0; c = chunk_next_[c]) {
    const size_t take = std::min(left, options_.chunk_size);
    IovToBuf(payload.data(), payload.size(), src, ChunkData(c), take);
    src += take;
    left -= take;
  }
  const uint32_t index = free_record_;
  Record& r = records_[index];
  free_record_ = r.next;
  r = Record{.seq = rcv_nxt + a,
             .len = static_cast<uint32_t>(n),
             .skip = 0,
             .chunk = first,
             .next = *link,
             .arrival = ++arrivals_};
  *link = index;
  if (r.next == kNil) q->tail = index;
  q->bytes += static_cast<uint32_t>(n);
  ++q->count;
  ++stats_.held;
  ++stats_.segments_now;
  stats_.bytes_now += n;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.bytes_now);
  return Result::kHeld;
}

size_t TcpReorder::Contiguous(const Queue& q, uint32_t rcv_nxt, iovec* out, size_t max,
                              size_t* count) const {
  *count = 0;
  size_t bytes = 0;
  uint32_t expect = rcv_nxt;
  for (uint32_t i = q.head; i != kNil && *count < max; i = records_[i].next) {
    const Record& r = records_[i];
    if (r.seq != expect) break;
    size_t left = r.len;
    size_t skip = r.skip;
    for (uint32_t c = r.chunk; c != kNil && left > 0 && *count < max; c = chunk_next_[c]) {
      const size_t take = std::min(left, options_.chunk_size - skip);
      out[(*count)++] = {ChunkData(c) + skip, take};
      bytes += take;
      left -= take;
      skip = 0;
    }
    if (left > 0) break;  // `out` filled.
    expect = r.seq + r.len;
  }
  return bytes;
}

void TcpReorder::Advance(Queue* q, uint32_t rcv_nxt) {
  while (q->head != kNil) {
    Record& r = records_[q->head];
    const uint32_t end = r.seq + r.len;
    if (static_cast<int32_t>(end - rcv_nxt) <= 0) {
      const uint32_t gone = q->head;
      q->head = r.next;
      if (q->tail == gone) q->tail = kNil;
      q->bytes -= r.len;
      --q->count;
      stats_.delivered += r.len;
      FreeRecord(gone);
      continue;
    }
    if (static_cast<int32_t>(rcv_nxt - r.seq) <= 0) break;
    // rcv_nxt falls inside it: drop its front, whole chunks first.
    uint32_t cut = rcv_nxt - r.seq;
    r.seq = rcv_nxt;
    r.len -= cut;
    q->bytes -= cut;
    stats_.bytes_now -= cut;
    stats_.delivered += cut;
    cut += r.skip;
    while (cut >= options_.chunk_size) {
      const uint32_t c = r.chunk;
      r.chunk = chunk_next_[c];
      chunk_next_[c] = free_chunk_;
      free_chunk_ = c;
      ++free_chunks_;
      cut -= static_cast<uint32_t>(options_.chunk_size);
    }
    r.skip = cut;
    break;
  }
}

void TcpReorder::Clear(Queue* q) {
  while (q->head != kNil) {
    const uint32_t gone = q->head;
    q->head = records_[gone].next;
    stats_.discarded += records_[gone].len;
    FreeRecord(gone);
  }
  q->tail = kNil;
  q->bytes = 0;
  q->count = 0;
}

size_t TcpReorder::Blocks(const Queue& q, Block* out, size_t max) const {
  if (max == 0) return 0;
  // Merge contiguous records into ranges, each remembering its latest
  // arrival; keep the `max` most recent (a flow holds few ranges: a scan per
  // range is cheap and allocates nothing).
  struct Range {
    Block block;
    uint32_t latest;
  };
  constexpr size_t kMaxRanges = 8;
  Range best[kMaxRanges];
  const size_t keep = std::min(max, kMaxRanges);
  size_t kept = 0;
  auto offer = [&](const Range& r) {
    // Insertion by recency, most recent first; the oldest falls off.
    size_t at = kept;
    while (at > 0 && static_cast<int32_t>(r.latest - best[at - 1].latest) > 0) --at;
    if (at >= keep) return;
    const size_t last = std::min(kept, keep - 1);
    for (size_t i = last; i > at; --i) best[i] = best[i - 1];
    best[at] = r;
    if (kept < keep) ++kept;
  };
  bool open = false;
  Range cur{};
  for (uint32_t i = q.head; i != kNil; i = records_[i].next) {
    const Record& r = records_[i];
    if (open && r.seq == cur.block.end) {
      cur.block.end = r.seq + r.len;
      if (static_cast<int32_t>(r.arrival - cur.latest) > 0) cur.latest = r.arrival;
      continue;
    }
    if (open) offer(cur);
    cur = Range{{r.seq, r.seq + r.len}, r.arrival};
    open = true;
  }
  if (open) offer(cur);
  for (size_t i = 0; i < kept; ++i) out[i] = best[i].block;
  return kept;
}

}  // namespace vunet::net
