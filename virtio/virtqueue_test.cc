#include "virtio/virtqueue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"

namespace vunet::virtio {
namespace {

using testing::DriverMemory;
using testing::DriverQueue;
using Buffer = DriverQueue::Buffer;

constexpr uint64_t kMiB = 1 << 20;

// A driver and a device sharing one ring over memfd guest memory.
class VirtqueueTest : public ::testing::Test {
 protected:
  void SetUpQueue(uint32_t size = 256, bool event_idx = false, int regions = 1,
                  uint64_t memory_size = 16 * kMiB) {
    vq_.Stop();
    driver_.reset();
    memory_.Clear();
    driver_memory_ = DriverMemory::Create(memory_size, regions).value();
    ASSERT_TRUE(driver_memory_->MapInto(&memory_).ok());
    driver_ = std::make_unique<DriverQueue>(driver_memory_.get(), size, event_idx);
    ASSERT_TRUE(vq_.Start(&memory_, driver_->DeviceConfig(memory_).value()).ok());
  }
  void SetUp() override { SetUpQueue(); }

  uint64_t Alloc(uint64_t bytes) { return driver_memory_->Alloc(bytes).value(); }

  // Pops with generous capacity; fails the test unless a chain was popped.
  VirtqElement MustPop() {
    VirtqElement elem;
    absl::StatusOr<bool> popped = vq_.Pop(&elem, in_, kPool, out_, kPool);
    EXPECT_TRUE(popped.ok()) << popped.status();
    EXPECT_TRUE(popped.ok() && *popped);
    return elem;
  }

  // Expects the next pop to break the queue.
  void ExpectBroken() {
    VirtqElement elem;
    absl::StatusOr<bool> popped = vq_.Pop(&elem, in_, kPool, out_, kPool);
    EXPECT_EQ(popped.status().code(), absl::StatusCode::kDataLoss) << popped.status();
    EXPECT_TRUE(vq_.broken());
    EXPECT_FALSE(vq_.broken_reason().empty());
    // And every pop after it fails without touching the ring.
    EXPECT_EQ(vq_.Pop(&elem, in_, kPool, out_, kPool).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }

  static constexpr size_t kPool = 64;
  std::unique_ptr<DriverMemory> driver_memory_;
  GuestMemory memory_;
  std::unique_ptr<DriverQueue> driver_;
  Virtqueue vq_;
  iovec in_[kPool];
  iovec out_[kPool];
};

TEST_F(VirtqueueTest, EmptyRingPopsNothing) {
  VirtqElement elem;
  EXPECT_TRUE(vq_.IsEmpty());
  absl::StatusOr<bool> popped = vq_.Pop(&elem, in_, kPool, out_, kPool);
  ASSERT_TRUE(popped.ok());
  EXPECT_FALSE(*popped);
}

TEST_F(VirtqueueTest, PopsAReceiveBufferAndReturnsIt) {
  const uint64_t buf = Alloc(1500);
  const uint16_t head = *driver_->AddChain({{buf, 1500, true}});
  driver_->Publish();

  VirtqElement elem = MustPop();
  EXPECT_EQ(elem.index, head);
  EXPECT_EQ(elem.out_num, 0u);
  ASSERT_EQ(elem.in_num, 1u);
  EXPECT_EQ(elem.in_sg, in_);
  EXPECT_EQ(elem.in_sg[0].iov_len, 1500u);
  std::memcpy(elem.in_sg[0].iov_base, "frame", 5);
  EXPECT_EQ(vq_.in_use(), 1u);

  vq_.Push(elem, 5);
  EXPECT_EQ(vq_.in_use(), 0u);
  std::optional<VirtqUsedElem> used = driver_->PopUsed();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->id, head);
  EXPECT_EQ(used->len, 5u);
  char seen[5];
  driver_memory_->Read(buf, seen, 5);
  EXPECT_EQ(std::memcmp(seen, "frame", 5), 0);
  EXPECT_FALSE(driver_->PopUsed().has_value());
}

TEST_F(VirtqueueTest, SeparatesReadableAndWritableParts) {
  const uint64_t header = Alloc(12), frame = Alloc(100), status = Alloc(1);
  driver_memory_->Write(frame, "payload", 7);
  driver_->AddChain({{header, 12, false}, {frame, 100, false}, {status, 1, true}});
  driver_->Publish();

  VirtqElement elem = MustPop();
  ASSERT_EQ(elem.out_num, 2u);
  ASSERT_EQ(elem.in_num, 1u);
  EXPECT_EQ(elem.out_sg[0].iov_len, 12u);
  EXPECT_EQ(elem.out_sg[1].iov_len, 100u);
  EXPECT_EQ(std::memcmp(elem.out_sg[1].iov_base, "payload", 7), 0);
  EXPECT_EQ(elem.in_sg[0].iov_len, 1u);
  EXPECT_EQ(elem.out_len, 112u);
  EXPECT_EQ(elem.in_len, 1u);
}

TEST_F(VirtqueueTest, WalksIndirectTables) {
  std::vector<Buffer> buffers;
  buffers.reserve(8);
  for (int i = 0; i < 8; ++i)
    buffers.push_back({Alloc(64 + i), static_cast<uint32_t>(64 + i), i >= 3});
  const uint16_t head = *driver_->AddIndirectChain(buffers);
  driver_->Publish();
  VirtqElement elem = MustPop();
  EXPECT_EQ(elem.index, head);
  ASSERT_EQ(elem.out_num, 3u);
  ASSERT_EQ(elem.in_num, 5u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(elem.out_sg[i].iov_len, 64u + i);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(elem.in_sg[i].iov_len, 67u + i);
  EXPECT_EQ(elem.out_len, 64u + 65 + 66);
  EXPECT_EQ(elem.in_len, 67u + 68 + 69 + 70 + 71);
  EXPECT_EQ(elem.in_sg[4].iov_base, *memory_.TranslateGpa(buffers[7].gpa, 71));
}

TEST_F(VirtqueueTest, SplitsABufferThatCrossesRegions) {
  SetUpQueue(256, false, /*regions=*/2, 16 * kMiB);
  const uint64_t boundary = 8 * kMiB;
  driver_->AddChain({{boundary - 10, 30, true}});
  driver_->Publish();
  VirtqElement elem = MustPop();
  ASSERT_EQ(elem.in_num, 2u);
  EXPECT_EQ(elem.in_sg[0].iov_len, 10u);
  EXPECT_EQ(elem.in_sg[1].iov_len, 20u);
  EXPECT_EQ(elem.in_len, 30u);  // One descriptor, two entries.
  EXPECT_EQ(elem.out_len, 0u);
}

TEST_F(VirtqueueTest, ChainThatDoesNotFitIsNotPopped) {
  std::vector<Buffer> buffers;
  buffers.reserve(6);
  for (int i = 0; i < 6; ++i) buffers.push_back({Alloc(10), 10, true});
  const uint16_t head = *driver_->AddChain(buffers);
  driver_->Publish();

  VirtqElement elem;
  absl::StatusOr<bool> popped = vq_.Pop(&elem, in_, 5, out_, kPool);
  EXPECT_EQ(popped.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(vq_.broken());
  EXPECT_EQ(vq_.in_use(), 0u);
  EXPECT_EQ(vq_.last_avail_idx(), 0);

  popped = vq_.Pop(&elem, in_, 6, out_, kPool);
  ASSERT_TRUE(popped.ok() && *popped);
  EXPECT_EQ(elem.index, head);
  EXPECT_EQ(elem.in_num, 6u);
}

TEST_F(VirtqueueTest, PopsSeveralElementsIntoOnePool) {
  // Chains of 1, 2 and 3 buffers share a pool of 6 entries exactly.
  for (int n = 1; n <= 3; ++n) {
    std::vector<Buffer> buffers;
    buffers.reserve(n);
    for (int i = 0; i < n; ++i) buffers.push_back({Alloc(100), 100, false});
    driver_->AddChain(buffers);
  }
  driver_->Publish();
  iovec pool[6];
  size_t used = 0;
  VirtqElement elems[3];
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<bool> popped = vq_.Pop(&elems[i], nullptr, 0, pool + used, 6 - used);
    ASSERT_TRUE(popped.ok() && *popped) << i;
    EXPECT_EQ(elems[i].out_sg, pool + used);
    EXPECT_EQ(elems[i].out_num, static_cast<uint32_t>(i + 1));
    used += elems[i].out_num;
  }
  EXPECT_EQ(used, 6u);
  for (int i = 0; i < 3; ++i) vq_.Fill(elems[i], 0, i);
  vq_.Flush(3);
  EXPECT_EQ(driver_->used_idx(), 3);
  EXPECT_EQ(vq_.in_use(), 0u);
}

TEST_F(VirtqueueTest, FillsOutOfOrderButPublishesTogether) {
  VirtqElement elems[4];
  for (int i = 0; i < 4; ++i) driver_->AddChain({{Alloc(10), 10, true}});
  driver_->Publish();
  for (auto& e : elems) e = MustPop();
  for (int i = 3; i >= 0; --i) vq_.Fill(elems[i], 100 + i, i);
  EXPECT_EQ(driver_->used_idx(), 0);  // Nothing visible before Flush.
  vq_.Flush(4);
  for (int i = 0; i < 4; ++i) {
    std::optional<VirtqUsedElem> used = driver_->PopUsed();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, elems[i].index);
    EXPECT_EQ(used->len, 100u + i);
  }
}

TEST_F(VirtqueueTest, RewindHandsElementsBack) {
  uint16_t heads[3];
  for (auto& h : heads) h = *driver_->AddChain({{Alloc(10), 10, true}});
  driver_->Publish();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(MustPop().index, heads[i]);
  EXPECT_FALSE(vq_.Rewind(4));
  EXPECT_TRUE(vq_.Rewind(2));
  EXPECT_EQ(vq_.in_use(), 1u);
  EXPECT_EQ(MustPop().index, heads[1]);
  EXPECT_TRUE(vq_.Unpop());
  EXPECT_EQ(MustPop().index, heads[1]);
  EXPECT_EQ(MustPop().index, heads[2]);
  vq_.Detach(3);
  EXPECT_EQ(vq_.in_use(), 0u);
}

TEST_F(VirtqueueTest, IndicesWrapAround) {
  SetUpQueue(4, /*event_idx=*/true);
  const uint64_t buf = Alloc(8);
  for (uint32_t i = 0; i < 70000; ++i) {
    ASSERT_TRUE(driver_->AddChain({{buf, 8, true}}).has_value()) << i;
    driver_->Publish();
    VirtqElement elem = MustPop();
    vq_.Push(elem, i & 7);
    std::optional<VirtqUsedElem> used = driver_->PopUsed();
    ASSERT_TRUE(used.has_value()) << i;
    ASSERT_EQ(used->len, i & 7);
  }
  EXPECT_EQ(vq_.last_avail_idx(), static_cast<uint16_t>(70000));
  EXPECT_EQ(driver_->used_idx(), static_cast<uint16_t>(70000));
  EXPECT_FALSE(vq_.broken());
}

TEST_F(VirtqueueTest, EventIdxSuppressesAndRequestsInterrupts) {
  SetUpQueue(8, /*event_idx=*/true);
  const int call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  vq_.set_call_fd(call);
  const uint64_t buf = Alloc(8);
  for (int i = 0; i < 4; ++i) driver_->AddChain({{buf, 8, true}});
  driver_->Publish();

  VirtqElement elem = MustPop();
  EXPECT_EQ(driver_->avail_event(), 1);  // Kick me once you pass what I took.
  vq_.Push(elem, 1);
  EXPECT_TRUE(vq_.Notify());  // The first interrupt always goes.
  eventfd_t value = 0;
  EXPECT_EQ(eventfd_read(call, &value), 0);
  EXPECT_EQ(value, 1u);

  // The driver wants an interrupt only once used index passes 3.
  driver_->SetUsedEvent(2);
  vq_.Push(MustPop(), 1);  // used 2: event 2 not crossed yet.
  EXPECT_FALSE(vq_.Notify());
  vq_.Push(MustPop(), 1);  // used 3: crossed.
  EXPECT_TRUE(vq_.Notify());
  EXPECT_EQ(eventfd_read(call, &value), 0);
  vq_.Push(MustPop(), 1);
  EXPECT_FALSE(vq_.Notify());
  EXPECT_NE(eventfd_read(call, &value), 0);  // Nothing pending.
  close(call);
}

TEST_F(VirtqueueTest, NoInterruptFlagWithoutEventIdx) {
  const int call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  vq_.set_call_fd(call);
  driver_->AddChain({{Alloc(8), 8, true}});
  driver_->AddChain({{Alloc(8), 8, true}});
  driver_->Publish();
  vq_.Push(MustPop(), 0);
  driver_->SetAvailFlags(kVirtqAvailFNoInterrupt);
  EXPECT_FALSE(vq_.Notify());
  driver_->SetAvailFlags(0);
  vq_.Push(MustPop(), 0);
  EXPECT_TRUE(vq_.Notify());
  close(call);
}

TEST_F(VirtqueueTest, SetNotificationTellsTheDriver) {
  vq_.SetNotification(false);
  EXPECT_EQ(driver_->used_flags(), kVirtqUsedFNoNotify);
  vq_.SetNotification(true);
  EXPECT_EQ(driver_->used_flags(), 0);

  SetUpQueue(8, /*event_idx=*/true);
  driver_->AddChain({{Alloc(8), 8, true}});
  driver_->Publish();
  EXPECT_FALSE(vq_.IsEmpty());
  vq_.SetNotification(true);
  EXPECT_EQ(driver_->avail_event(), 1);
}

TEST_F(VirtqueueTest, ResumesFromASavedBase) {
  const uint64_t buf = Alloc(8);
  for (int i = 0; i < 5; ++i) driver_->AddChain({{buf, 8, true}});
  driver_->Publish();
  for (int i = 0; i < 3; ++i) vq_.Push(MustPop(), 0);
  vq_.Stop();
  EXPECT_EQ(vq_.last_avail_idx(), 3);

  Virtqueue resumed;
  Virtqueue::Config config = driver_->DeviceConfig(memory_).value();
  config.avail_base = vq_.last_avail_idx();
  ASSERT_TRUE(resumed.Start(&memory_, config).ok());
  EXPECT_EQ(resumed.used_idx(), 3);
  VirtqElement elem;
  int popped = 0;
  while (*resumed.Pop(&elem, in_, kPool, out_, kPool)) ++popped;
  EXPECT_EQ(popped, 2);
}

TEST_F(VirtqueueTest, ResumeServesChainsAnEarlierBackendKept) {
  const uint64_t buf = Alloc(8);
  for (int i = 0; i < 4; ++i) driver_->AddChain({{buf, 8, true}});
  driver_->Publish();
  vq_.Push(MustPop(), 0);
  MustPop();  // Popped and never returned: the backend went away.
  Virtqueue resumed;
  Virtqueue::Config config = driver_->DeviceConfig(memory_).value();
  config.avail_base = 2;
  ASSERT_TRUE(resumed.Start(&memory_, config).ok());
  EXPECT_EQ(resumed.last_avail_idx(), 1);
}

TEST_F(VirtqueueTest, DiscardNextReturnsAChainUnused) {
  const uint16_t head = *driver_->AddChain({{Alloc(8), 8, false}});
  driver_->Publish();
  ASSERT_TRUE(*vq_.DiscardNext());
  std::optional<VirtqUsedElem> used = driver_->PopUsed();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->id, head);
  EXPECT_EQ(used->len, 0u);
  EXPECT_FALSE(*vq_.DiscardNext());
  EXPECT_EQ(vq_.in_use(), 0u);
}

TEST(VirtqueueStartTest, RefusesBadGeometry) {
  auto driver_memory = DriverMemory::Create(kMiB).value();
  GuestMemory memory;
  ASSERT_TRUE(driver_memory->MapInto(&memory).ok());
  DriverQueue driver(driver_memory.get(), 8);
  Virtqueue::Config config = driver.DeviceConfig(memory).value();
  Virtqueue vq;
  for (uint32_t size : {0u, 3u, 100u, 65536u}) {
    Virtqueue::Config bad = config;
    bad.size = size;
    EXPECT_EQ(vq.Start(&memory, bad).code(), absl::StatusCode::kInvalidArgument) << size;
  }
  Virtqueue::Config misaligned = config;
  misaligned.desc = static_cast<uint8_t*>(config.desc) + 8;
  EXPECT_FALSE(vq.Start(&memory, misaligned).ok());
  misaligned = config;
  misaligned.used = static_cast<uint8_t*>(config.used) + 2;
  EXPECT_FALSE(vq.Start(&memory, misaligned).ok());
  EXPECT_FALSE(vq.Start(nullptr, config).ok());
  EXPECT_FALSE(vq.started());
  VirtqElement elem;
  EXPECT_EQ(vq.Pop(&elem, nullptr, 0, nullptr, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(vq.Start(&memory, config).ok());
}

// Hostile drivers.

TEST_F(VirtqueueTest, LoopingChainBreaksTheQueue) {
  const uint64_t buf = Alloc(8);
  driver_->SetDesc(0, {.addr = buf, .len = 8, .flags = kVirtqDescFNext, .next = 1});
  driver_->SetDesc(1, {.addr = buf, .len = 8, .flags = kVirtqDescFNext, .next = 0});
  driver_->SetAvailRing(0, 0);
  driver_->SetAvailIdx(1);
  ExpectBroken();
}

TEST_F(VirtqueueTest, SelfLoopInAnIndirectTableBreaksTheQueue) {
  const uint64_t table = Alloc(32), buf = Alloc(8);
  VirtqDesc entries[2] = {{.addr = buf, .len = 8, .flags = kVirtqDescFNext, .next = 1},
                          {.addr = buf, .len = 8, .flags = kVirtqDescFNext, .next = 1}};
  driver_memory_->Write(table, entries, sizeof(entries));
  driver_->SetDesc(0, {.addr = table, .len = 32, .flags = kVirtqDescFIndirect});
  driver_->SetAvailRing(0, 0);
  driver_->SetAvailIdx(1);
  ExpectBroken();
}

TEST_F(VirtqueueTest, NestedIndirectTableBreaksTheQueue) {
  const uint64_t inner = Alloc(16), outer = Alloc(16), buf = Alloc(8);
  const VirtqDesc inner_entry{.addr = buf, .len = 8};
  const VirtqDesc outer_entry{.addr = inner, .len = 16, .flags = kVirtqDescFIndirect};
  driver_memory_->Write(inner, &inner_entry, 16);
  driver_memory_->Write(outer, &outer_entry, 16);
  driver_->SetDesc(0, {.addr = outer, .len = 16, .flags = kVirtqDescFIndirect});
  driver_->SetAvailRing(0, 0);
  driver_->SetAvailIdx(1);
  ExpectBroken();
}

TEST_F(VirtqueueTest, IndirectTablesOfBadLengthBreakTheQueue) {
  const uint64_t table = Alloc(64);
  for (uint32_t len : {0u, 15u, 17u, 16u * (Virtqueue::kMaxIndirectEntries + 1)}) {
    SetUpQueue();
    driver_->SetDesc(0, {.addr = table, .len = len, .flags = kVirtqDescFIndirect});
    driver_->SetAvailRing(0, 0);
    driver_->SetAvailIdx(1);
    ExpectBroken();
  }
}

TEST_F(VirtqueueTest, IndirectTableOutsideMemoryBreaksTheQueue) {
  driver_->SetDesc(0, {.addr = 16 * kMiB - 16, .len = 32, .flags = kVirtqDescFIndirect});
  driver_->SetAvailRing(0, 0);
  driver_->SetAvailIdx(1);
  ExpectBroken();
}

TEST_F(VirtqueueTest, IndirectWithNextOrWithoutTheFeatureBreaksTheQueue) {
  const uint64_t table = Alloc(16);
  const VirtqDesc entry{.addr = Alloc(8), .len = 8};
  driver_memory_->Write(table, &entry, 16);
  driver_->SetDesc(
      0, {.addr = table, .len = 16, .flags = kVirtqDescFIndirect | kVirtqDescFNext, .next = 1});
  driver_->SetAvailRing(0, 0);
  driver_->SetAvailIdx(1);
  ExpectBroken();

  Virtqueue no_indirect;
  ASSERT_TRUE(no_indirect.Start(&memory_, driver_->DeviceConfig(memory_, false).value()).ok());
  driver_->SetDesc(0, {.addr = table, .len = 16, .flags = kVirtqDescFIndirect});
  VirtqElement elem;
  EXPECT_EQ(no_indirect.Pop(&elem, in_, kPool, out_, kPool).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(VirtqueueTest, DescriptorOutsideMemoryBreaksTheQueue) {
  for (const VirtqDesc& d :
       {VirtqDesc{.addr = 16 * kMiB, .len = 1},
        VirtqDesc{.addr = 16 * kMiB - 4, .len = 8, .flags = kVirtqDescFWrite},
        VirtqDesc{.addr = UINT64_MAX - 7, .len = 16}, VirtqDesc{.addr = 0, .len = UINT32_MAX}}) {
    SetUpQueue();
    driver_->SetDesc(0, d);
    driver_->SetAvailRing(0, 0);
    driver_->SetAvailIdx(1);
    ExpectBroken();
  }
}

TEST_F(VirtqueueTest, ChainOverFourGibibytesBreaksTheQueue) {
  // Sparse memfd memory: mapped, never touched.
  SetUpQueue(8, false, 1, 6ull << 30);
  driver_->SetDesc(0, {.addr = 1ull << 30, .len = 3u << 30, .flags = kVirtqDescFNext, .next = 1});
  driver_->SetDesc(1, {.addr = 1ull << 30, .len = 2u << 30});
  driver_->SetAvailRing(0, 0);
  driver_->SetAvailIdx(1);
  ExpectBroken();
}

TEST_F(VirtqueueTest, ReadableAfterWritableBreaksTheQueue) {
  driver_->AddChain({{Alloc(8), 8, true}, {Alloc(8), 8, false}});
  driver_->Publish();
  ExpectBroken();
}

TEST_F(VirtqueueTest, HeadAndNextIndicesOutOfRangeBreakTheQueue) {
  driver_->SetAvailRing(0, 256);
  driver_->SetAvailIdx(1);
  ExpectBroken();

  SetUpQueue();
  driver_->SetDesc(0, {.addr = Alloc(8), .len = 8, .flags = kVirtqDescFNext, .next = 300});
  driver_->SetAvailRing(0, 0);
  driver_->SetAvailIdx(1);
  ExpectBroken();
}

TEST_F(VirtqueueTest, AvailIndexJumpBreaksTheQueue) {
  driver_->SetAvailIdx(257);
  EXPECT_TRUE(vq_.IsEmpty());
  EXPECT_TRUE(vq_.broken());
  VirtqElement elem;
  EXPECT_FALSE(vq_.Pop(&elem, in_, kPool, out_, kPool).ok());

  // A restart clears the fault once the driver behaves.
  driver_->SetAvailIdx(0);
  ASSERT_TRUE(vq_.Start(&memory_, driver_->DeviceConfig(memory_).value()).ok());
  EXPECT_FALSE(vq_.broken());
  EXPECT_TRUE(vq_.IsEmpty());
}

TEST_F(VirtqueueTest, MoreOutstandingChainsThanTheQueueHoldsBreaksIt) {
  SetUpQueue(4);
  const uint64_t buf = Alloc(8);
  for (int i = 0; i < 4; ++i) driver_->AddChain({{buf, 8, true}});
  driver_->Publish();
  for (int i = 0; i < 4; ++i) MustPop();
  // The driver reuses a descriptor the device still holds.
  driver_->SetAvailRing(4, 0);
  driver_->SetAvailIdx(5);
  ExpectBroken();
}

// A driver thread and a device thread pass buffers concurrently; every
// sequence number must arrive once, in order, whatever the interleaving.
TEST(VirtqueueConcurrencyTest, DriverAndDeviceOnTwoThreads) {
  auto driver_memory = DriverMemory::Create(4 * kMiB).value();
  GuestMemory memory;
  ASSERT_TRUE(driver_memory->MapInto(&memory).ok());
  DriverQueue driver(driver_memory.get(), 64, /*event_idx=*/true);
  Virtqueue vq;
  ASSERT_TRUE(vq.Start(&memory, driver.DeviceConfig(memory).value()).ok());
  constexpr uint32_t kCount = 200000;
  const uint64_t bufs = driver_memory->Alloc(64 * 8).value();

  std::atomic<bool> failed{false};
  std::thread device([&] {
    iovec out[4];
    uint32_t expected = 0;
    while (expected < kCount && !failed) {
      VirtqElement elem;
      absl::StatusOr<bool> popped = vq.Pop(&elem, nullptr, 0, out, 4);
      if (!popped.ok()) {
        failed = true;
        break;
      }
      if (!*popped) continue;
      uint32_t value;
      std::memcpy(&value, elem.out_sg[0].iov_base, 4);
      if (value != expected++) failed = true;
      vq.Push(elem, 0);
    }
  });
  uint32_t sent = 0;
  while (sent < kCount && !failed) {
    while (driver.PopUsed()) {
    }
    if (driver.free_descriptors() == 0) continue;
    const uint64_t slot = bufs + 8 * (sent % 64);
    driver_memory->Write(slot, &sent, 4);
    if (!driver.AddChain({{slot, 4, false}})) continue;
    driver.Publish();
    ++sent;
  }
  device.join();
  EXPECT_FALSE(failed);
  EXPECT_FALSE(vq.broken()) << vq.broken_reason();
}

}  // namespace
}  // namespace vunet::virtio

// Dirty logging (VHOST_F_LOG_ALL): the used ring writes are logged when asked.
namespace vunet::virtio {
namespace {

class VirtqueueDirtyLogTest : public VirtqueueTest {
 protected:
  void StartLogged(bool event_idx, bool log_used) {
    vq_.Stop();
    driver_ = std::make_unique<DriverQueue>(driver_memory_.get(), 256, event_idx);
    Virtqueue::Config config = driver_->DeviceConfig(memory_).value();
    config.dirty_log = &log_;
    config.log_used = log_used;
    config.used_gpa = driver_->used_gpa();
    ASSERT_TRUE(vq_.Start(&memory_, config).ok());
  }
  uint64_t Page(uint64_t gpa) const { return gpa / DirtyLog::kPageSize; }
  size_t DirtyPages() const {
    size_t n = 0;
    for (uint64_t p = 0; p < log_.pages(); ++p) n += log_.IsDirty(p);
    return n;
  }

  std::vector<uint8_t> bitmap_ = std::vector<uint8_t>(16 * kMiB / DirtyLog::kPageSize / 8);
  DirtyLog log_{bitmap_.data(), bitmap_.size()};
};

TEST_F(VirtqueueDirtyLogTest, LogsUsedRingAndBufferWrites) {
  StartLogged(/*event_idx=*/true, /*log_used=*/true);
  const uint64_t buf = Alloc(3 * DirtyLog::kPageSize);
  driver_->AddChain({{buf, 3 * DirtyLog::kPageSize, true}});
  driver_->Publish();
  VirtqElement elem = MustPop();
  vq_.LogWrite(elem, DirtyLog::kPageSize + 1);
  vq_.Push(elem, DirtyLog::kPageSize + 1);
  // avail_event, which Pop wrote, sits at the end of the used ring.
  const uint64_t avail_event = driver_->used_gpa() + 4 + 8 * 256;
  EXPECT_TRUE(log_.IsDirty(Page(avail_event)));
  EXPECT_TRUE(log_.IsDirty(Page(driver_->used_gpa())));
  EXPECT_TRUE(log_.IsDirty(Page(buf)));
  EXPECT_TRUE(log_.IsDirty(Page(buf + DirtyLog::kPageSize)));
  EXPECT_FALSE(log_.IsDirty(Page(buf + 2 * DirtyLog::kPageSize)));
}

TEST_F(VirtqueueDirtyLogTest, LogsTheUsedEntryInTheRightPage) {
  StartLogged(/*event_idx=*/false, /*log_used=*/true);
  // The used ring of 256 entries spans 2054 bytes; entry 255 ends it. Push
  // 256 elements so every slot is written, then check only ring pages are
  // dirty besides buffers (no buffer writes are logged here).
  for (int i = 0; i < 256; ++i) {
    driver_->AddChain({{Alloc(64), 64, true}});
    driver_->Publish();
    VirtqElement elem = MustPop();
    vq_.Push(elem, 0);
    driver_->PopUsed();
  }
  const uint64_t first = Page(driver_->used_gpa());
  const uint64_t last = Page(driver_->used_gpa() + VirtqUsedRingBytes(256) - 1 - 2);
  for (uint64_t p = first; p <= last; ++p) EXPECT_TRUE(log_.IsDirty(p)) << p;
  EXPECT_EQ(DirtyPages(), last - first + 1);
}

TEST_F(VirtqueueDirtyLogTest, StoppingLogsAvailEventWrittenSinceTheLastFlush) {
  StartLogged(/*event_idx=*/true, /*log_used=*/true);
  driver_->AddChain({{Alloc(64), 64, true}});
  driver_->Publish();
  MustPop();
  vq_.Rewind(1);
  EXPECT_EQ(DirtyPages(), 0u);
  vq_.Stop();
  EXPECT_TRUE(log_.IsDirty(Page(driver_->used_gpa() + 4 + 8 * 256)));
}

TEST_F(VirtqueueDirtyLogTest, FlushLogsEntriesThatWrapAroundTheRing) {
  // A ring whose used entries span pages: 4096 entries of 8 bytes.
  vq_.Stop();
  driver_ = std::make_unique<DriverQueue>(driver_memory_.get(), 4096, false);
  Virtqueue::Config config = driver_->DeviceConfig(memory_).value();
  config.dirty_log = &log_;
  config.log_used = true;
  config.used_gpa = driver_->used_gpa();
  config.avail_base = 4090;
  // Resume near the end of the ring: the used index is taken from the ring.
  driver_memory_->Write(driver_->used_gpa() + 2, &config.avail_base, 2);
  ASSERT_TRUE(vq_.Start(&memory_, config).ok());
  for (int i = 0; i < 8; ++i) vq_.Fill(VirtqElement{.index = 0}, 0, i);
  vq_.Flush(8);  // Slots 4090..4095, then 0..1.
  const uint64_t used = driver_->used_gpa();
  EXPECT_TRUE(log_.IsDirty(Page(used)));                  // Index, slots 0..1.
  EXPECT_TRUE(log_.IsDirty(Page(used + 4 + 8 * 4095)));   // Last slot.
  EXPECT_FALSE(log_.IsDirty(Page(used + 4 + 8 * 2048)));  // Untouched middle.
}

TEST_F(VirtqueueDirtyLogTest, WithoutLogUsedOnlyBufferWritesAreLogged) {
  StartLogged(/*event_idx=*/true, /*log_used=*/false);
  const uint64_t buf = Alloc(64);
  driver_->AddChain({{buf, 64, true}});
  driver_->Publish();
  VirtqElement elem = MustPop();
  vq_.LogWrite(elem, 64);
  vq_.Push(elem, 64);
  vq_.SetNotification(true);
  EXPECT_TRUE(log_.IsDirty(Page(buf)));
  EXPECT_EQ(DirtyPages(), 1u);
  EXPECT_EQ(vq_.dirty_log(), &log_);
}

TEST_F(VirtqueueDirtyLogTest, NotLoggingCostsNothing) {
  const uint64_t buf = Alloc(64);
  driver_->AddChain({{buf, 64, true}});
  driver_->Publish();
  VirtqElement elem = MustPop();
  vq_.LogWrite(elem, 64);
  vq_.Push(elem, 64);
  EXPECT_EQ(vq_.dirty_log(), nullptr);
  EXPECT_EQ(DirtyPages(), 0u);
}

TEST_F(VirtqueueDirtyLogTest, SetNotificationWithoutEventIdxLogsTheFlags) {
  StartLogged(/*event_idx=*/false, /*log_used=*/true);
  vq_.SetNotification(false);
  EXPECT_TRUE(log_.IsDirty(Page(driver_->used_gpa())));
  EXPECT_EQ(DirtyPages(), 1u);
}

}  // namespace
}  // namespace vunet::virtio
