#include "vu/rx_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "virtio/virtio_net.h"
#include "vu/testing/guest_rx.h"

namespace vunet::vu {
namespace {

using testing::GuestRxRing;
constexpr size_t kHdr = sizeof(VirtioNetHdr);

std::vector<uint8_t> Pattern(size_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed * 31 + i * 7 + (i >> 8));
  return v;
}

// Writes `frame` into `r` behind the header room, as a translator does.
void Write(const RxQueue::Reservation& r, const std::vector<uint8_t>& frame) {
  size_t offset = kHdr;
  size_t done = 0;
  for (const iovec& v : r.iov) {
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const size_t n = std::min(v.iov_len - offset, frame.size() - done);
    std::memcpy(static_cast<uint8_t*>(v.iov_base) + offset, frame.data() + done, n);
    done += n;
    offset = 0;
    if (done == frame.size()) break;
  }
  ASSERT_EQ(done, frame.size());
}

// Reserves, writes and commits one frame; false if there was no room.
bool Deliver(RxQueue& rx, const std::vector<uint8_t>& frame, const VirtioNetHdr& hdr = {}) {
  const RxQueue::Reservation* r = rx.Reserve(kHdr + frame.size(), kHdr + frame.size());
  if (r == nullptr) return false;
  Write(*r, frame);
  return rx.Commit(*r, frame.size(), hdr);
}

TEST(RxQueue, CommitsWithHeaderAndPublishesAtFlush) {
  GuestRxRing guest({.mergeable = false});
  guest.Post(4, 2048);
  VirtioNetHdr hdr;
  hdr.flags = virtio::kVirtioNetHdrFNeedsCsum;
  hdr.gso_type = 1;
  hdr.gso_size = 1448;
  hdr.hdr_len = 54;
  hdr.csum_start = 34;
  hdr.csum_offset = 16;
  hdr.num_buffers = 77;  // Ours to set.
  const std::vector<uint8_t> frame = Pattern(1000, 1);
  ASSERT_TRUE(Deliver(guest.rx(), frame, hdr));
  EXPECT_EQ(guest.rx().pending_frames(), 1u);
  // Nothing is visible before the flush.
  EXPECT_FALSE(guest.driver().PopUsed().has_value());
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, frame);
  EXPECT_EQ(got[0].hdr.flags, hdr.flags);
  EXPECT_EQ(got[0].hdr.gso_type, 1);
  EXPECT_EQ(got[0].hdr.gso_size, 1448);
  EXPECT_EQ(got[0].hdr.hdr_len, 54);
  EXPECT_EQ(got[0].hdr.csum_start, 34);
  EXPECT_EQ(got[0].hdr.csum_offset, 16);
  EXPECT_EQ(got[0].hdr.num_buffers, 1);
}

TEST(RxQueue, PadsShortFramesWithZeros) {
  GuestRxRing guest;
  guest.Post(1, 2048);
  // Dirty the buffer where the padding goes.
  const RxQueue::Reservation* r = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  ASSERT_NE(r, nullptr);
  Write(*r, std::vector<uint8_t>(100, 0xee));
  guest.rx().ReleaseUncommitted();
  ASSERT_TRUE(Deliver(guest.rx(), {1, 2, 3, 4}));
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 1u);
  std::vector<uint8_t> want(60, 0);
  want[0] = 1, want[1] = 2, want[2] = 3, want[3] = 4;
  EXPECT_EQ(got[0].bytes, want);
}

TEST(RxQueue, MergeableFrameSpansBuffersAndUnusedOnesComeBack) {
  GuestRxRing guest({.mergeable = true});
  guest.Post(16, 1000);
  // Room for 5000 bytes, but the frame turns out to be 2500.
  const RxQueue::Reservation* r = guest.rx().Reserve(kHdr + 60, kHdr + 5000);
  ASSERT_NE(r, nullptr);
  EXPECT_GE(r->capacity, kHdr + 5000);
  EXPECT_LT(r->capacity, kHdr + 6000);  // No more elements than it needs.
  const std::vector<uint8_t> frame = Pattern(2500, 2);
  Write(*r, frame);
  ASSERT_TRUE(guest.rx().Commit(*r, frame.size(), {}));
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, frame);
  EXPECT_EQ(got[0].buffers, 3);
  // The three elements the frame did not need were handed back: 13 remain.
  EXPECT_EQ(guest.vq().in_use(), 0u);
  int frames = 0;
  while (Deliver(guest.rx(), Pattern(900, 3))) ++frames;
  EXPECT_EQ(frames, 13);
  EXPECT_EQ(guest.returned_empty(), 0);
}

TEST(RxQueue, ReleasedReservationsAreNeverSeen) {
  GuestRxRing guest({.mergeable = true});
  guest.Post(8, 1500);
  std::vector<const RxQueue::Reservation*> r;
  for (int i = 0; i < 5; ++i) {
    r.push_back(guest.rx().Reserve(kHdr + 1, kHdr + 1400));
    ASSERT_NE(r.back(), nullptr);
  }
  // The first two are committed (the second shorter than it could be), the
  // rest released, as a peek that found less data than room does.
  Write(*r[0], Pattern(1400, 0));
  ASSERT_TRUE(guest.rx().Commit(*r[0], 1400, {}));
  Write(*r[1], Pattern(300, 1));
  ASSERT_TRUE(guest.rx().Commit(*r[1], 300, {}));
  guest.rx().ReleaseUncommitted();
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].bytes, Pattern(1400, 0));
  EXPECT_EQ(got[1].bytes, Pattern(300, 1));
  EXPECT_EQ(guest.rx().stats().released, 3u);
  // The released buffers are popped again, in the ring's order.
  int frames = 0;
  while (Deliver(guest.rx(), Pattern(1000, 9))) ++frames;
  EXPECT_EQ(frames, 6);
}

TEST(RxQueue, CommitsOutOfOrderAreRefused) {
  GuestRxRing guest;
  guest.Post(4, 2048);
  const RxQueue::Reservation* a = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  const RxQueue::Reservation* b = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_FALSE(guest.rx().Commit(*b, 100, {}));
  EXPECT_EQ(guest.rx().stats().writer_bugs, 1u);
  EXPECT_TRUE(guest.rx().Commit(*a, 100, {}));
  EXPECT_TRUE(guest.rx().Commit(*b, 100, {}));
  // Too long for its reservation.
  const RxQueue::Reservation* c = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  ASSERT_NE(c, nullptr);
  EXPECT_FALSE(guest.rx().Commit(*c, 5000, {}));
  guest.rx().ReleaseUncommitted();
  EXPECT_EQ(guest.Take().size(), 2u);
}

TEST(RxQueue, AbandonedReservationBeforeACommittedOneComesBackEmpty) {
  GuestRxRing guest({.mergeable = false});
  guest.Post(4, 2048);
  const RxQueue::Reservation* a = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  const RxQueue::Reservation* b = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(guest.rx().Abandon(*a));
  Write(*b, Pattern(100, 4));
  EXPECT_TRUE(guest.rx().Commit(*b, 100, {}));
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, Pattern(100, 4));
  EXPECT_EQ(guest.returned_empty(), 1);
  // The newest reservation abandoned is simply handed back.
  const RxQueue::Reservation* c = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(guest.rx().Abandon(*c));
  EXPECT_EQ(guest.Take().size(), 0u);
  EXPECT_EQ(guest.returned_empty(), 1);
  EXPECT_EQ(guest.vq().in_use(), 0u);
}

TEST(RxQueue, SendCopiesAndKeepsOrderWithData) {
  GuestRxRing guest({.mergeable = true, .guest_csum = true});
  guest.Post(8, 2048);
  const std::vector<uint8_t> control = Pattern(54, 5);
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(1500, 6)));
  ASSERT_TRUE(guest.rx().Send(control).ok());
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(700, 7)));
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].bytes, Pattern(1500, 6));
  EXPECT_EQ(got[1].bytes.size(), 60u);  // Padded.
  EXPECT_TRUE(std::equal(control.begin(), control.end(), got[1].bytes.begin()));
  EXPECT_EQ(got[1].hdr.flags, virtio::kVirtioNetHdrFDataValid);
  EXPECT_EQ(got[2].bytes, Pattern(700, 7));
  EXPECT_EQ(guest.rx().stats().sends, 1u);
}

TEST(RxQueue, SendWithoutRoomConsumesNothing) {
  GuestRxRing guest({.mergeable = false});
  EXPECT_EQ(guest.rx().Send(Pattern(100, 1)).code(), absl::StatusCode::kUnavailable);
  guest.Post(1, 100);  // Too small for 100 bytes behind the header.
  EXPECT_EQ(guest.rx().Send(Pattern(100, 1)).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(guest.vq().in_use(), 0u);
  guest.StopQueue();
  EXPECT_EQ(guest.rx().Send(Pattern(10, 1)).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RxQueue, RefusalsSayWhy) {
  GuestRxRing guest({.mergeable = false});
  RxQueue::Refusal why;
  EXPECT_EQ(guest.rx().Reserve(kHdr + 100, kHdr + 100, &why), nullptr);
  EXPECT_EQ(why, RxQueue::Refusal::kNoRoom);
  guest.Post(2, 500);
  EXPECT_EQ(guest.rx().Reserve(kHdr + 1000, kHdr + 1000, &why), nullptr);
  EXPECT_EQ(why, RxQueue::Refusal::kNeverFits);
  EXPECT_EQ(guest.vq().in_use(), 0u);
  // A smaller minimum takes the buffer as it is.
  const RxQueue::Reservation* r = guest.rx().Reserve(kHdr + 100, kHdr + 1000, &why);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->capacity, 500u);
  guest.rx().ReleaseUncommitted();
  guest.StopQueue();
  EXPECT_EQ(guest.rx().Reserve(kHdr + 100, kHdr + 100, &why), nullptr);
  EXPECT_EQ(why, RxQueue::Refusal::kStopped);
}

TEST(RxQueue, WholeRingHeldByUnflushedFramesMeansLater) {
  GuestRxRing guest({.queue_size = 8, .mergeable = true});
  guest.Post(8, 1000);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(Deliver(guest.rx(), Pattern(500, i)));
  // 2 buffers left, a frame needs 3: the ring holds 8, so after the flush it fits.
  RxQueue::Refusal why;
  EXPECT_EQ(guest.rx().Reserve(kHdr + 2500, kHdr + 2500, &why), nullptr);
  EXPECT_EQ(why, RxQueue::Refusal::kLater);
  EXPECT_TRUE(guest.rx().Flush());  // Writers told "later" retry now.
  EXPECT_FALSE(guest.rx().Flush());
  EXPECT_EQ(guest.Take().size(), 6u);
  guest.Post(8, 1000);
  EXPECT_TRUE(Deliver(guest.rx(), Pattern(2500, 9)));
  // Larger than the whole ring: never.
  EXPECT_EQ(guest.rx().Reserve(kHdr + 9000, kHdr + 9000, &why), nullptr);
  EXPECT_EQ(why, RxQueue::Refusal::kLater);  // Behind the unflushed frame.
  guest.Take();
  guest.Post(8, 1000);
  EXPECT_EQ(guest.rx().Reserve(kHdr + 9000, kHdr + 9000, &why), nullptr);
  EXPECT_EQ(why, RxQueue::Refusal::kNeverFits);
}

TEST(RxQueue, OneUsedIndexUpdateAndNotificationPerFlush) {
  GuestRxRing guest;
  const int call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(call, 0);
  guest.vq().set_call_fd(call);
  guest.Post(64, 2048);
  for (int i = 0; i < 40; ++i) {
    if (i % 3 == 0) {
      ASSERT_TRUE(guest.rx().Send(Pattern(60, i)).ok());
    } else {
      ASSERT_TRUE(Deliver(guest.rx(), Pattern(1000, i)));
    }
  }
  const uint16_t before = guest.driver().used_idx();
  guest.rx().Flush();
  EXPECT_EQ(static_cast<uint16_t>(guest.driver().used_idx() - before), 40);
  EXPECT_EQ(guest.rx().stats().flushes, 1u);
  EXPECT_EQ(guest.rx().stats().notifies, 1u);
  uint64_t count = 0;
  ASSERT_EQ(read(call, &count, sizeof(count)), static_cast<ssize_t>(sizeof(count)));
  EXPECT_EQ(count, 1u);
  // Nothing committed: no update, no notification.
  guest.rx().Flush();
  EXPECT_EQ(guest.rx().stats().flushes, 1u);
  EXPECT_EQ(guest.Take().size(), 40u);
  close(call);
}

TEST(RxQueue, EventIdxSuppressesNotifications) {
  GuestRxRing guest({.event_idx = true});
  const int call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  guest.vq().set_call_fd(call);
  guest.Post(16, 2048);
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(100, 1)));
  guest.rx().Flush();
  EXPECT_EQ(guest.rx().stats().notifies, 1u);
  // The guest asks to be told only once the used index passes 10.
  guest.driver().SetUsedEvent(10);
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(100, 2)));
  guest.rx().Flush();
  EXPECT_EQ(guest.rx().stats().notifies, 1u);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(Deliver(guest.rx(), Pattern(100, i)));
  guest.rx().Flush();
  EXPECT_EQ(guest.rx().stats().notifies, 2u);
  close(call);
}

TEST(RxQueue, StopPublishesWhatWasCommitted) {
  GuestRxRing guest;
  guest.Post(4, 2048);
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(100, 1)));
  const RxQueue::Reservation* r = guest.rx().Reserve(kHdr + 100, kHdr + 100);
  ASSERT_NE(r, nullptr);  // Released, not published.
  guest.StopQueue();
  EXPECT_FALSE(guest.rx().running());
  EXPECT_FALSE(guest.rx().Flush());
  EXPECT_EQ(guest.rx().pending_frames(), 0u);
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].bytes, Pattern(100, 1));
  // Restarted, the queue serves the buffers nothing used.
  guest.StartQueue();
  int frames = 0;
  while (Deliver(guest.rx(), Pattern(50, 2))) ++frames;
  EXPECT_EQ(frames, 3);
}

TEST(RxQueue, UnusableChainBehindUnflushedFramesComesBackInOrder) {
  GuestRxRing guest({.mergeable = false});
  guest.Post(1, 2048);
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(200, 1)));
  // A chain too small for a header, then a good one: the bad one is returned
  // behind the unflushed frame, not published before it.
  ASSERT_TRUE(guest.PostChain({4}));
  guest.Post(1, 2048);
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(300, 2)));
  EXPECT_EQ(guest.driver().used_idx(), 0);
  const std::vector<GuestRxRing::Frame> got = guest.Take();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].bytes, Pattern(200, 1));
  EXPECT_EQ(got[1].bytes, Pattern(300, 2));
  EXPECT_EQ(guest.returned_empty(), 1);
}

class CountingObserver : public RxQueue::Observer {
 public:
  void OnFrameToGuest(absl::Span<const iovec> iov, size_t offset, size_t len) override {
    size_t total = 0;
    for (const iovec& v : iov) total += v.iov_len;
    EXPECT_LE(offset + len, total);
    ++frames;
    bytes += len;
  }
  void OnBroken() override { ++broken; }
  int frames = 0;
  size_t bytes = 0;
  int broken = 0;
};

TEST(RxQueue, ObserverSeesEveryCommittedFrame) {
  GuestRxRing guest;
  CountingObserver observer;
  guest.rx().set_observer(&observer);
  guest.Post(8, 2048);
  ASSERT_TRUE(Deliver(guest.rx(), Pattern(1000, 1)));
  ASSERT_TRUE(guest.rx().Send(Pattern(42, 2)).ok());
  const RxQueue::Reservation* r = guest.rx().Reserve(kHdr + 10, kHdr + 10);
  ASSERT_NE(r, nullptr);
  guest.rx().ReleaseUncommitted();  // Not seen.
  EXPECT_EQ(observer.frames, 2);
  EXPECT_EQ(observer.bytes, 1042u);
}

TEST(RxQueue, BrokenRingIsReportedOnce) {
  GuestRxRing guest;
  CountingObserver observer;
  guest.rx().set_observer(&observer);
  // A descriptor pointing outside guest memory.
  guest.Post(1, 2048);
  virtio::VirtqDesc d = *guest.driver().desc(0);
  d.addr = uint64_t{1} << 40;
  guest.driver().SetDesc(0, d);
  RxQueue::Refusal why;
  EXPECT_EQ(guest.rx().Reserve(kHdr + 100, kHdr + 100, &why), nullptr);
  EXPECT_EQ(why, RxQueue::Refusal::kStopped);
  EXPECT_EQ(observer.broken, 1);
  EXPECT_FALSE(guest.rx().running());
  EXPECT_EQ(guest.rx().Reserve(kHdr + 100, kHdr + 100, &why), nullptr);
  EXPECT_EQ(observer.broken, 1);
}

}  // namespace
}  // namespace vunet::vu
