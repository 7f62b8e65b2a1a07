// Segments the guest sent past a hole, held until the hole fills: the TCP
// translator's out-of-order queue.
//
// A guest whose frame was lost keeps sending; without this, every segment
// after the hole would be dropped and sent again by the guest, one round trip
// or one doubled timeout per segment. Held here instead, the segments wait
// (their payload copied out of guest memory into a fixed pool: the only copy
// on this path, and only when something was lost), their ranges are what our
// SACK blocks tell the guest, and when the hole fills everything contiguous
// goes to the host socket in one sendmsg over iovecs into the pool.
//
// One pool for all flows, sized once: `bytes` of payload in chunks of
// `chunk_size`, at most `max_segments` segments in all and `max_per_flow`
// per flow. When a limit is reached a segment is refused (the caller drops it
// and counts it), so a guest flooding out-of-order segments spends the
// budget and nothing more. A flow's Queue is a few bytes of its own state;
// every segment it holds is freed by Advance (delivered) or Clear (the flow
// ended). Nothing is allocated per segment.
//
// Sequence numbers are taken relative to the flow's next expected byte, so
// wrapping is handled; the caller keeps what it inserts within its window
// (less than 2^30 bytes past rcv_nxt).
//
//   TcpReorder::Queue q;  // in the flow's state
//   if (SeqGt(seq, rcv_nxt)) reorder.Insert(&q, rcv_nxt, seq, frame, payload_offset, len);
//   ...the hole filled, rcv_nxt advanced:
//   size_t n = 0;
//   size_t bytes = reorder.Contiguous(q, rcv_nxt, iov, kMax, &n);
//   ssize_t taken = sendmsg(...iov, n...);
//   reorder.Advance(&q, rcv_nxt += taken);

#ifndef VUNET_NET_TCP_TCP_REORDER_H_
#define VUNET_NET_TCP_TCP_REORDER_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vunet::net {

class TcpReorder {
 public:
  static constexpr uint32_t kNil = 0xffffffff;

  struct Options {
    size_t bytes = size_t{32} << 20;  // Payload held in all, at most.
    size_t chunk_size = 2048;
    size_t max_segments = 32768;
    // Segments one flow holds at most (its bytes are bounded by the window
    // it was offered, which the caller checks): a window's worth of
    // full-sized segments.
    size_t max_per_flow = 8192;
  };

  struct Stats {
    uint64_t held = 0;        // Segments taken (all or part of them new).
    uint64_t duplicates = 0;  // Segments whose bytes were all held already.
    uint64_t refused = 0;     // Segments refused: the pool or a limit was full.
    uint64_t delivered = 0;   // Bytes handed on (Advance).
    uint64_t discarded = 0;   // Bytes freed unused (Clear).
    size_t bytes_now = 0;     // Held now.
    size_t peak_bytes = 0;
    size_t segments_now = 0;
  };

  // A flow's held segments: a list, in sequence order, of records in the
  // pool. Zero-initialised state is an empty queue only through Queue{}.
  struct Queue {
    uint32_t head = kNil;
    uint32_t tail = kNil;  // The highest: segments mostly arrive in order after a hole.
    uint32_t bytes = 0;
    uint16_t count = 0;
  };

  // A range of sequence numbers held, [start, end).
  struct Block {
    uint32_t start = 0;
    uint32_t end = 0;
  };

  enum class Result {
    kHeld,       // New bytes are held.
    kDuplicate,  // Nothing new: every byte was held already.
    kNoRoom,     // Refused: the pool, its segments or the flow's limit.
  };

  // kInvalidArgument for zero sizes or a chunk size above 64 KiB;
  // kResourceExhausted if the pool cannot be mapped.
  static absl::StatusOr<std::unique_ptr<TcpReorder>> Create(const Options& options);
  ~TcpReorder();
  TcpReorder(const TcpReorder&) = delete;
  TcpReorder& operator=(const TcpReorder&) = delete;

  // Holds bytes [seq, seq + len) — at `offset` in `payload` — that are not
  // in `q` yet. `seq` must be past `rcv_nxt`. Segments the new one covers
  // whole are replaced by it.
  Result Insert(Queue* q, uint32_t rcv_nxt, uint32_t seq, absl::Span<const iovec> payload,
                size_t offset, size_t len);

  // Iovecs over the bytes held contiguously from `rcv_nxt` (nothing if a
  // hole still comes first), at most `max` entries: writes *count and
  // returns their bytes.
  size_t Contiguous(const Queue& q, uint32_t rcv_nxt, iovec* out, size_t max, size_t* count) const;

  // Frees what lies before `rcv_nxt` (a segment it cuts is trimmed).
  void Advance(Queue* q, uint32_t rcv_nxt);

  // Frees everything `q` holds.
  void Clear(Queue* q);

  // The ranges `q` holds, merged, as SACK blocks (RFC 2018 4): the one
  // holding the segment taken last first, then the others by how recently
  // they grew; at most `max`. Returns how many.
  size_t Blocks(const Queue& q, Block* out, size_t max) const;

  const Stats& stats() const { return stats_; }
  const Options& options() const { return options_; }

 private:
  struct Record {
    uint32_t seq;      // Of its first byte held.
    uint32_t len;      // Bytes held.
    uint32_t skip;     // Bytes of its first chunk already delivered.
    uint32_t chunk;    // First chunk of its payload.
    uint32_t next;     // The flow's next record (higher sequence numbers).
    uint32_t arrival;  // When it was taken: a counter.
  };

  explicit TcpReorder(const Options& options);
  uint8_t* ChunkData(uint32_t chunk) const {
    return data_.get() + size_t{chunk} * options_.chunk_size;
  }
  // Chains `n` free chunks; kNil if there are too few.
  uint32_t TakeChunks(size_t n);
  void FreeChunks(uint32_t first);
  void FreeRecord(uint32_t r);

  Options options_;
  size_t chunk_count_ = 0;
  std::unique_ptr<uint8_t[]> data_;
  std::unique_ptr<uint32_t[]> chunk_next_;
  std::unique_ptr<Record[]> records_;
  uint32_t free_chunk_ = kNil;
  size_t free_chunks_ = 0;
  uint32_t free_record_ = kNil;
  uint32_t arrivals_ = 0;
  Stats stats_;
};

}  // namespace vunet::net

#endif  // VUNET_NET_TCP_TCP_REORDER_H_
