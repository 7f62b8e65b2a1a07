// The driver's side of guest memory and split rings, for tests, benchmarks
// and test frontends: memfd-backed memory laid out the way a guest driver
// would, and rings whose chains are built through the same structures a guest
// writes. The device side maps the same memfds separately, as a backend
// process would, so device code under test runs against the real ring code.
//
// Example:
//   auto memory = DriverMemory::Create(16 << 20).value();
//   GuestMemory device_memory;
//   memory->MapInto(&device_memory).IgnoreError();
//   DriverQueue driver(memory.get(), 256);
//   Virtqueue vq;
//   vq.Start(&device_memory, driver.DeviceConfig(device_memory).value());
//   uint64_t buf = memory->Alloc(1500);
//   driver.AddChain({{buf, 1500, /*writable=*/true}});
//   driver.Publish();
//
// Not hardened: the driver side trusts itself.

#ifndef VUNET_VIRTIO_TESTING_DRIVER_H_
#define VUNET_VIRTIO_TESTING_DRIVER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "virtio/guest_memory.h"
#include "virtio/virtqueue.h"

namespace vunet::virtio::testing {

// Guest RAM: one memfd split into equal regions that are contiguous in
// guest-physical space (so buffers can cross region boundaries), each sent
// with its own mmap offset as a frontend would.
class DriverMemory {
 public:
  // `size` bytes at guest-physical `base`, in `region_count` regions. `size`
  // must be a multiple of region_count pages.
  static absl::StatusOr<std::unique_ptr<DriverMemory>> Create(uint64_t size, int region_count = 1,
                                                              uint64_t base = 0);
  ~DriverMemory();
  DriverMemory(const DriverMemory&) = delete;
  DriverMemory& operator=(const DriverMemory&) = delete;

  // The memory table as the frontend sends it; user_addr is the driver-side
  // mapping address. Every region's fd is fd().
  const std::vector<GuestMemoryRegion>& regions() const { return regions_; }
  int fd() const { return fd_; }
  uint64_t base() const { return base_; }
  uint64_t size() const { return size_; }

  // Maps every region into `memory` from the memfd, as a backend would.
  absl::Status MapInto(GuestMemory* memory) const;

  // Allocates `bytes` of guest memory aligned to `align`; nullopt when full.
  std::optional<uint64_t> Alloc(uint64_t bytes, uint64_t align = 64);
  // Forgets every allocation made after `mark` (a value Alloc returned, or
  // the base): for tests that reuse buffer space.
  void ResetAllocations(uint64_t mark) { next_ = mark; }
  uint64_t allocation_mark() const { return next_; }

  // The driver's pointer to guest-physical `gpa` (must be inside).
  uint8_t* Host(uint64_t gpa) const { return host_ + (gpa - base_); }
  void Write(uint64_t gpa, const void* data, size_t len) const;
  void Read(uint64_t gpa, void* data, size_t len) const;

 private:
  DriverMemory() = default;

  int fd_ = -1;
  uint8_t* host_ = nullptr;
  uint64_t base_ = 0;
  uint64_t size_ = 0;
  uint64_t next_ = 0;
  std::vector<GuestMemoryRegion> regions_;
};

// One split ring, driven as a guest driver drives it.
class DriverQueue {
 public:
  struct Buffer {
    uint64_t gpa = 0;
    uint32_t len = 0;
    bool writable = false;
  };

  // Lays out a ring of `size` entries in `memory`. Aborts if memory is full
  // (a test setup error).
  DriverQueue(DriverMemory* memory, uint32_t size, bool event_idx = false);

  // What the device needs to start its side, translated through
  // `device_memory` (the backend's own mapping).
  absl::StatusOr<Virtqueue::Config> DeviceConfig(const GuestMemory& device_memory,
                                                 bool indirect_desc = true) const;

  uint32_t size() const { return size_; }
  uint64_t desc_gpa() const { return desc_gpa_; }
  uint64_t avail_gpa() const { return avail_gpa_; }
  uint64_t used_gpa() const { return used_gpa_; }
  uint32_t free_descriptors() const { return static_cast<uint32_t>(free_.size()); }

  // Writes a chain of `buffers` into free descriptors and the avail ring
  // (not yet published). Returns the head, or nullopt if descriptors run out.
  std::optional<uint16_t> AddChain(absl::Span<const Buffer> buffers);
  // The same through an indirect table in guest memory: one ring descriptor.
  std::optional<uint16_t> AddIndirectChain(absl::Span<const Buffer> buffers);

  // Publishes every chain added since the last Publish (avail index, release).
  void Publish();

  // The next entry the device returned, freeing its descriptors; nullopt if
  // the device has returned nothing new.
  std::optional<VirtqUsedElem> PopUsed();

  // Raw access for tests that play a hostile driver.
  VirtqDesc* desc(uint32_t i) const;
  void SetDesc(uint32_t i, const VirtqDesc& d) const;
  void SetAvailRing(uint32_t slot, uint16_t head) const;
  void SetAvailIdx(uint16_t idx);
  void SetAvailFlags(uint16_t flags) const;
  void SetUsedEvent(uint16_t idx) const;
  uint16_t avail_idx() const { return avail_idx_; }
  uint16_t used_idx() const;
  uint16_t used_flags() const;
  uint16_t avail_event() const;
  VirtqUsedElem used_elem(uint32_t slot) const;

 private:
  uint16_t* avail_u16(size_t i) const;
  uint16_t* used_u16(size_t i) const;

  DriverMemory* memory_;
  uint32_t size_;
  bool event_idx_;
  uint64_t desc_gpa_ = 0;
  uint64_t avail_gpa_ = 0;
  uint64_t used_gpa_ = 0;
  uint16_t avail_idx_ = 0;                // Published plus pending.
  uint16_t last_used_idx_ = 0;            // Next used entry to read.
  std::vector<uint16_t> free_;            // Free descriptor indices (a stack).
  std::vector<uint16_t> chain_length_;    // Per head: ring descriptors it holds.
  std::vector<uint64_t> indirect_table_;  // Per head: its table's gpa, or 0.
  std::vector<uint32_t> indirect_capacity_;
};

}  // namespace vunet::virtio::testing

#endif  // VUNET_VIRTIO_TESTING_DRIVER_H_
