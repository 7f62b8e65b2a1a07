#include "net/tcp/tcp_reorder.h"

#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

using Queue = TcpReorder::Queue;
using Block = TcpReorder::Block;
using Result = TcpReorder::Result;

std::vector<uint8_t> Stream(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed + i * 13 + (i >> 8));
  return v;
}

std::unique_ptr<TcpReorder> Make(size_t bytes = 1 << 20, size_t chunk = 256, size_t segments = 64,
                                 size_t per_flow = 32) {
  return TcpReorder::Create({.bytes = bytes,
                             .chunk_size = chunk,
                             .max_segments = segments,
                             .max_per_flow = per_flow})
      .value();
}

// Inserts stream[from, to) (sequence numbers base + offset), cut into iovecs.
Result Put(TcpReorder& r, Queue* q, uint32_t base, uint32_t rcv_nxt,
           const std::vector<uint8_t>& stream, size_t from, size_t to) {
  std::vector<uint8_t> frame(10, 0xee);  // Headers before the payload.
  frame.insert(frame.end(), stream.begin() + from, stream.begin() + to);
  std::vector<iovec> iov;
  for (size_t at = 0; at < frame.size(); at += 7) {
    iov.push_back({frame.data() + at, std::min<size_t>(7, frame.size() - at)});
  }
  return r.Insert(q, rcv_nxt, base + static_cast<uint32_t>(from), iov, 10, to - from);
}

std::vector<uint8_t> Take(TcpReorder& r, Queue* q, uint32_t* rcv_nxt) {
  iovec iov[64];
  size_t n = 0;
  const size_t bytes = r.Contiguous(*q, *rcv_nxt, iov, 64, &n);
  std::vector<uint8_t> out;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = static_cast<const uint8_t*>(iov[i].iov_base);
    out.insert(out.end(), p, p + iov[i].iov_len);
  }
  EXPECT_EQ(out.size(), bytes);
  *rcv_nxt += static_cast<uint32_t>(bytes);
  r.Advance(q, *rcv_nxt);
  return out;
}

TEST(TcpReorder, HoldsUntilTheHoleFillsThenHandsOnEverythingContiguous) {
  auto r = Make();
  const std::vector<uint8_t> s = Stream(5000, 1);
  Queue q;
  const uint32_t base = 0xfffff000;  // Wraps.
  uint32_t rcv_nxt = base + 1000;
  EXPECT_EQ(Put(*r, &q, base, rcv_nxt, s, 2000, 3000), Result::kHeld);
  EXPECT_EQ(Put(*r, &q, base, rcv_nxt, s, 3000, 4000), Result::kHeld);
  EXPECT_TRUE(Take(*r, &q, &rcv_nxt).empty());  // The hole [1000, 2000) first.
  // The hole fills (the caller sent it): everything after it comes at once.
  rcv_nxt = base + 2000;
  r->Advance(&q, rcv_nxt);
  EXPECT_EQ(Take(*r, &q, &rcv_nxt), std::vector<uint8_t>(s.begin() + 2000, s.begin() + 4000));
  EXPECT_EQ(q.count, 0);
  EXPECT_EQ(q.bytes, 0u);
  EXPECT_EQ(r->stats().bytes_now, 0u);
  EXPECT_EQ(r->stats().delivered, 2000u);
}

TEST(TcpReorder, OverlapsAreTrimmedAndCoveredSegmentsReplaced) {
  auto r = Make();
  const std::vector<uint8_t> s = Stream(10000, 2);
  Queue q;
  uint32_t rcv_nxt = 100;
  ASSERT_EQ(Put(*r, &q, 0, rcv_nxt, s, 1000, 2000), Result::kHeld);
  ASSERT_EQ(Put(*r, &q, 0, rcv_nxt, s, 3000, 4000), Result::kHeld);
  EXPECT_EQ(Put(*r, &q, 0, rcv_nxt, s, 1200, 1800), Result::kDuplicate);
  EXPECT_EQ(Put(*r, &q, 0, rcv_nxt, s, 1500, 3500), Result::kHeld);  // Only [2000, 3000) is new.
  EXPECT_EQ(q.bytes, 3000u);
  EXPECT_EQ(Put(*r, &q, 0, rcv_nxt, s, 500, 4500), Result::kHeld);  // Covers everything held.
  EXPECT_EQ(q.count, 1);
  EXPECT_EQ(q.bytes, 4000u);
  // A delivery that ends inside a segment trims it.
  rcv_nxt = 700;
  r->Advance(&q, rcv_nxt);
  EXPECT_EQ(Take(*r, &q, &rcv_nxt), std::vector<uint8_t>(s.begin() + 700, s.begin() + 4500));
}

TEST(TcpReorder, SackBlocksMergeRangesMostRecentFirst) {
  auto r = Make();
  const std::vector<uint8_t> s = Stream(10000, 3);
  Queue q;
  const uint32_t rcv_nxt = 0;
  Put(*r, &q, 0, rcv_nxt, s, 1000, 2000);
  Put(*r, &q, 0, rcv_nxt, s, 5000, 6000);
  Put(*r, &q, 0, rcv_nxt, s, 3000, 4000);
  Put(*r, &q, 0, rcv_nxt, s, 2000, 2500);  // Grows the first range.
  Block b[4];
  ASSERT_EQ(r->Blocks(q, b, 4), 3u);
  EXPECT_EQ(b[0].start, 1000u);
  EXPECT_EQ(b[0].end, 2500u);
  EXPECT_EQ(b[1].start, 3000u);
  EXPECT_EQ(b[2].start, 5000u);
  ASSERT_EQ(r->Blocks(q, b, 2), 2u);  // Fewer fit: the least recent goes.
  EXPECT_EQ(b[1].start, 3000u);
}

TEST(TcpReorder, LimitsRefuseAndClearFreesEverything) {
  auto r = Make(/*bytes=*/4096, /*chunk=*/1024, /*segments=*/8, /*per_flow=*/3);
  const std::vector<uint8_t> s = Stream(20000, 4);
  Queue a, b;
  EXPECT_EQ(Put(*r, &a, 0, 0, s, 100, 200), Result::kHeld);
  EXPECT_EQ(Put(*r, &a, 0, 0, s, 300, 400), Result::kHeld);
  EXPECT_EQ(Put(*r, &a, 0, 0, s, 500, 600), Result::kHeld);
  EXPECT_EQ(Put(*r, &a, 0, 0, s, 700, 800), Result::kNoRoom);    // Three per flow.
  EXPECT_EQ(Put(*r, &b, 0, 0, s, 1000, 3000), Result::kNoRoom);  // One chunk left.
  EXPECT_EQ(Put(*r, &b, 0, 0, s, 1000, 1500), Result::kHeld);
  EXPECT_EQ(r->stats().refused, 2u);
  r->Clear(&a);
  r->Clear(&b);
  EXPECT_EQ(r->stats().bytes_now, 0u);
  EXPECT_EQ(r->stats().segments_now, 0u);
  // All of it is usable again.
  EXPECT_EQ(Put(*r, &b, 0, 0, s, 1000, 5000), Result::kHeld);
}

TEST(TcpReorder, RefusesWhatIsNotPastTheNextExpectedByte) {
  auto r = Make();
  const std::vector<uint8_t> s = Stream(100, 5);
  Queue q;
  EXPECT_EQ(Put(*r, &q, 50, 50, s, 0, 10), Result::kNoRoom);  // At rcv_nxt: in order.
  EXPECT_EQ(Put(*r, &q, 100, 50, s, 0, 0), Result::kNoRoom);  // Empty.
  EXPECT_EQ(q.count, 0);
}

// Random segments of a stream against a model: every byte handed on is the
// stream's, in order, exactly once; the pool ends empty.
TEST(TcpReorder, RandomSegmentsReassembleTheStream) {
  auto r = Make(1 << 20, 512, 512, 256);
  const std::vector<uint8_t> s = Stream(200000, 6);
  std::mt19937 rng(11);
  Queue q;
  const uint32_t base = 0xffff0000;
  uint32_t rcv_nxt = base;
  std::vector<uint8_t> out;
  while (out.size() < s.size()) {
    const size_t at = rcv_nxt - base;
    const size_t from = at + rng() % 20000;
    if (from >= s.size()) continue;
    const size_t to = std::min(s.size(), from + 1 + rng() % 3000);
    if (from == at) {
      // In order: the caller takes it, then what it makes contiguous.
      out.insert(out.end(), s.begin() + from, s.begin() + to);
      rcv_nxt = base + static_cast<uint32_t>(to);
      r->Advance(&q, rcv_nxt);
    } else {
      Put(*r, &q, base, rcv_nxt, s, from, to);
    }
    const std::vector<uint8_t> more = Take(*r, &q, &rcv_nxt);
    out.insert(out.end(), more.begin(), more.end());
    ASSERT_EQ(out.size(), rcv_nxt - base);
  }
  EXPECT_TRUE(out == s);
  r->Clear(&q);
  EXPECT_EQ(r->stats().bytes_now, 0u);
}

}  // namespace
}  // namespace vunet::net
