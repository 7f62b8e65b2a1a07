#include "virtio/testing/driver.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vunet::virtio::testing {
namespace {

constexpr uint64_t kPage = 4096;

uint64_t AlignUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

}  // namespace

absl::StatusOr<std::unique_ptr<DriverMemory>> DriverMemory::Create(uint64_t size, int region_count,
                                                                   uint64_t base) {
  if (region_count < 1 || size == 0 || size % (kPage * region_count) != 0) {
    return absl::InvalidArgumentError("guest size must be a multiple of region_count pages");
  }
  auto memory = std::unique_ptr<DriverMemory>(new DriverMemory());
  memory->fd_ = memfd_create("vunet-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (memory->fd_ < 0) return absl::InternalError(absl::StrCat("memfd_create: ", strerror(errno)));
  if (ftruncate(memory->fd_, size) != 0) {
    return absl::InternalError(absl::StrCat("ftruncate: ", strerror(errno)));
  }
  void* host = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memory->fd_, 0);
  if (host == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap: ", strerror(errno)));
  memory->host_ = static_cast<uint8_t*>(host);
  memory->base_ = base;
  memory->size_ = size;
  memory->next_ = base;
  const uint64_t region_size = size / region_count;
  for (int i = 0; i < region_count; ++i) {
    const uint64_t offset = region_size * i;
    memory->regions_.push_back({.guest_phys_addr = base + offset,
                                .size = region_size,
                                .user_addr = reinterpret_cast<uint64_t>(memory->host_) + offset,
                                .mmap_offset = offset});
  }
  return memory;
}

DriverMemory::~DriverMemory() {
  if (host_ != nullptr) munmap(host_, size_);
  if (fd_ >= 0) close(fd_);
}

absl::Status DriverMemory::MapInto(GuestMemory* memory) const {
  for (const GuestMemoryRegion& region : regions_) {
    if (absl::Status s = memory->AddRegion(region, fd_); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::optional<uint64_t> DriverMemory::Alloc(uint64_t bytes, uint64_t align) {
  const uint64_t start = AlignUp(next_, align);
  if (start < next_ || bytes > base_ + size_ - start || start > base_ + size_) return std::nullopt;
  next_ = start + bytes;
  return start;
}

void DriverMemory::Write(uint64_t gpa, const void* data, size_t len) const {
  std::memcpy(Host(gpa), data, len);
}

void DriverMemory::Read(uint64_t gpa, void* data, size_t len) const {
  std::memcpy(data, Host(gpa), len);
}

DriverQueue::DriverQueue(DriverMemory* memory, uint32_t size, bool event_idx)
    : memory_(memory),
      size_(size),
      event_idx_(event_idx),
      chain_length_(size, 0),
      indirect_table_(size, 0),
      indirect_capacity_(size, 0) {
  std::optional<uint64_t> desc = memory->Alloc(VirtqDescTableBytes(size), 4096);
  std::optional<uint64_t> avail = memory->Alloc(VirtqAvailRingBytes(size), 64);
  std::optional<uint64_t> used = memory->Alloc(VirtqUsedRingBytes(size), 4096);
  if (!desc || !avail || !used) {
    std::fprintf(stderr, "DriverQueue: guest memory too small for a ring of %u\n", size);
    std::abort();
  }
  desc_gpa_ = *desc;
  avail_gpa_ = *avail;
  used_gpa_ = *used;
  std::memset(memory->Host(desc_gpa_), 0, VirtqDescTableBytes(size));
  std::memset(memory->Host(avail_gpa_), 0, VirtqAvailRingBytes(size));
  std::memset(memory->Host(used_gpa_), 0, VirtqUsedRingBytes(size));
  free_.reserve(size);
  for (uint32_t i = size; i > 0; --i) free_.push_back(static_cast<uint16_t>(i - 1));
}

absl::StatusOr<Virtqueue::Config> DriverQueue::DeviceConfig(const GuestMemory& device_memory,
                                                            bool indirect_desc) const {
  absl::StatusOr<void*> desc = device_memory.TranslateGpa(desc_gpa_, VirtqDescTableBytes(size_));
  absl::StatusOr<void*> avail = device_memory.TranslateGpa(avail_gpa_, VirtqAvailRingBytes(size_));
  absl::StatusOr<void*> used = device_memory.TranslateGpa(used_gpa_, VirtqUsedRingBytes(size_));
  if (!desc.ok()) return desc.status();
  if (!avail.ok()) return avail.status();
  if (!used.ok()) return used.status();
  return Virtqueue::Config{.size = size_,
                           .desc = *desc,
                           .avail = *avail,
                           .used = *used,
                           .event_idx = event_idx_,
                           .indirect_desc = indirect_desc};
}

VirtqDesc* DriverQueue::desc(uint32_t i) const {
  return reinterpret_cast<VirtqDesc*>(memory_->Host(desc_gpa_)) + i;
}

void DriverQueue::SetDesc(uint32_t i, const VirtqDesc& d) const { *desc(i) = d; }

uint16_t* DriverQueue::avail_u16(size_t i) const {
  return reinterpret_cast<uint16_t*>(memory_->Host(avail_gpa_)) + i;
}

uint16_t* DriverQueue::used_u16(size_t i) const {
  return reinterpret_cast<uint16_t*>(memory_->Host(used_gpa_)) + i;
}

void DriverQueue::SetAvailRing(uint32_t slot, uint16_t head) const {
  *avail_u16(2 + slot % size_) = head;
}

void DriverQueue::SetAvailIdx(uint16_t idx) {
  avail_idx_ = idx;
  std::atomic_ref<uint16_t>(*avail_u16(1)).store(idx, std::memory_order_release);
}

void DriverQueue::SetAvailFlags(uint16_t flags) const { *avail_u16(0) = flags; }

void DriverQueue::SetUsedEvent(uint16_t idx) const { *avail_u16(2 + size_) = idx; }

uint16_t DriverQueue::used_idx() const {
  return std::atomic_ref<uint16_t>(*used_u16(1)).load(std::memory_order_acquire);
}

uint16_t DriverQueue::used_flags() const { return *used_u16(0); }

uint16_t DriverQueue::avail_event() const {
  // The avail event follows the used ring's entries: 4 + 8 * size bytes in.
  return *used_u16(2 + 4 * size_);
}

VirtqUsedElem DriverQueue::used_elem(uint32_t slot) const {
  VirtqUsedElem e;
  std::memcpy(&e, memory_->Host(used_gpa_) + 4 + sizeof(VirtqUsedElem) * (slot % size_), sizeof(e));
  return e;
}

std::optional<uint16_t> DriverQueue::AddChain(absl::Span<const Buffer> buffers) {
  if (buffers.empty() || buffers.size() > free_.size()) return std::nullopt;
  // Take descriptors from the free stack, linking each to the next.
  const uint16_t head = free_.back();
  uint16_t current = head;
  for (size_t i = 0; i < buffers.size(); ++i) {
    free_.pop_back();
    const bool last = i + 1 == buffers.size();
    const uint16_t next = last ? 0 : free_.back();
    SetDesc(current, {.addr = buffers[i].gpa,
                      .len = buffers[i].len,
                      .flags = static_cast<uint16_t>((buffers[i].writable ? kVirtqDescFWrite : 0) |
                                                     (last ? 0 : kVirtqDescFNext)),
                      .next = next});
    current = next;
  }
  chain_length_[head] = static_cast<uint16_t>(buffers.size());
  SetAvailRing(avail_idx_++, head);
  return head;
}

std::optional<uint16_t> DriverQueue::AddIndirectChain(absl::Span<const Buffer> buffers) {
  if (buffers.empty() || free_.empty()) return std::nullopt;
  const uint16_t head = free_.back();
  if (indirect_capacity_[head] < buffers.size()) {
    std::optional<uint64_t> table = memory_->Alloc(sizeof(VirtqDesc) * buffers.size(), 16);
    if (!table) return std::nullopt;
    indirect_table_[head] = *table;
    indirect_capacity_[head] = static_cast<uint32_t>(buffers.size());
  }
  free_.pop_back();
  auto* table = reinterpret_cast<VirtqDesc*>(memory_->Host(indirect_table_[head]));
  for (size_t i = 0; i < buffers.size(); ++i) {
    const bool last = i + 1 == buffers.size();
    table[i] = {.addr = buffers[i].gpa,
                .len = buffers[i].len,
                .flags = static_cast<uint16_t>((buffers[i].writable ? kVirtqDescFWrite : 0) |
                                               (last ? 0 : kVirtqDescFNext)),
                .next = static_cast<uint16_t>(last ? 0 : i + 1)};
  }
  SetDesc(head, {.addr = indirect_table_[head],
                 .len = static_cast<uint32_t>(sizeof(VirtqDesc) * buffers.size()),
                 .flags = kVirtqDescFIndirect,
                 .next = 0});
  chain_length_[head] = 1;
  SetAvailRing(avail_idx_++, head);
  return head;
}

void DriverQueue::Publish() {
  std::atomic_ref<uint16_t>(*avail_u16(1)).store(avail_idx_, std::memory_order_release);
}

std::optional<VirtqUsedElem> DriverQueue::PopUsed() {
  if (used_idx() == last_used_idx_) return std::nullopt;
  const VirtqUsedElem e = used_elem(last_used_idx_++);
  if (event_idx_) SetUsedEvent(last_used_idx_);
  // Return the chain's ring descriptors to the free stack.
  uint16_t i = static_cast<uint16_t>(e.id % size_);
  for (uint16_t n = chain_length_[i]; n > 0; --n) {
    const VirtqDesc* d = desc(i);
    free_.push_back(i);
    i = d->next;
  }
  chain_length_[e.id % size_] = 0;
  return e;
}

}  // namespace vunet::virtio::testing
