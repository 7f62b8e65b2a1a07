// Uses vunet's virtio libraries through @vunet, as a project outside vunet
// would: a driver lays out a ring in memfd guest memory, and the device side
// pops a chain into iovecs the caller owns.

#include <sys/uio.h>

#include <cstring>

#include "gtest/gtest.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"

namespace {

using vunet::virtio::GuestMemory;
using vunet::virtio::VirtqElement;
using vunet::virtio::Virtqueue;
using vunet::virtio::testing::DriverMemory;
using vunet::virtio::testing::DriverQueue;

TEST(ConsumerTest, PopsAndReturnsAChain) {
  auto driver_memory = DriverMemory::Create(1 << 20).value();
  GuestMemory memory;
  ASSERT_TRUE(driver_memory->MapInto(&memory).ok());
  DriverQueue driver(driver_memory.get(), 16);
  Virtqueue vq;
  ASSERT_TRUE(vq.Start(&memory, driver.DeviceConfig(memory).value()).ok());

  const uint64_t buffer = driver_memory->Alloc(64).value();
  driver.AddChain({{buffer, 64, /*writable=*/true}});
  driver.Publish();

  iovec in[4];
  VirtqElement elem;
  absl::StatusOr<bool> popped = vq.Pop(&elem, in, 4, nullptr, 0);
  ASSERT_TRUE(popped.ok()) << popped.status();
  ASSERT_TRUE(*popped);
  ASSERT_EQ(elem.in_num, 1u);
  std::memcpy(elem.in_sg[0].iov_base, "hi", 2);
  vq.Push(elem, 2);

  std::optional<vunet::virtio::VirtqUsedElem> used = driver.PopUsed();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->len, 2u);
  EXPECT_EQ(std::memcmp(driver_memory->Host(buffer), "hi", 2), 0);
}

}  // namespace
