// Descriptor walking against a ring the fuzzer writes.
//
// Input: 4 bytes of parameters, then bytes copied over guest memory (ring and
// buffers alike). Guest memory is two adjacent regions in separate heap
// blocks, so a walk that strays outside, or a buffer that crosses regions
// without being split, is caught by AddressSanitizer.

#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "virtio/guest_memory.h"
#include "virtio/virtqueue.h"

namespace {

constexpr uint64_t kRegionSize = 32 * 1024;
constexpr size_t kPool = 64;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vunet::virtio::GuestMemory;
  using vunet::virtio::VirtqElement;
  using vunet::virtio::Virtqueue;
  if (size < 4) return 0;
  const uint32_t queue_size = 1u << (data[0] % 9);  // 1 to 256: fits the first region.
  const bool event_idx = data[1] & 1;
  const bool indirect = data[1] & 2;
  const size_t max_in = data[2] % (kPool + 1);
  const size_t max_out = data[3] % (kPool + 1);
  data += 4;
  size -= 4;

  auto low = std::make_unique<uint8_t[]>(kRegionSize);
  auto high = std::make_unique<uint8_t[]>(kRegionSize);
  std::memset(low.get(), 0, kRegionSize);
  std::memset(high.get(), 0, kRegionSize);
  std::memcpy(low.get(), data, std::min<size_t>(size, kRegionSize));
  if (size > kRegionSize) {
    std::memcpy(high.get(), data + kRegionSize, std::min<size_t>(size - kRegionSize, kRegionSize));
  }
  GuestMemory memory;
  (void)memory.AddHostRegion({.guest_phys_addr = 0, .size = kRegionSize, .user_addr = 0},
                             low.get());
  (void)memory.AddHostRegion(
      {.guest_phys_addr = kRegionSize, .size = kRegionSize, .user_addr = kRegionSize}, high.get());

  // Rings packed at the start of guest memory, as a driver would lay them out.
  const uint64_t desc = 0;
  const uint64_t avail = vunet::virtio::VirtqDescTableBytes(queue_size);
  const uint64_t used = (avail + vunet::virtio::VirtqAvailRingBytes(queue_size) + 3) & ~3ull;
  Virtqueue vq;
  const Virtqueue::Config config{.size = queue_size,
                                 .desc = low.get() + desc,
                                 .avail = low.get() + avail,
                                 .used = low.get() + used,
                                 .event_idx = event_idx,
                                 .indirect_desc = indirect};
  if (!vq.Start(&memory, config).ok()) return 0;

  iovec in[kPool];
  iovec out[kPool];
  VirtqElement elems[kPool];
  size_t popped = 0;
  // Bounded: a ring can offer at most queue_size chains before it repeats.
  for (uint32_t round = 0; round < 2 * queue_size + 2; ++round) {
    absl::StatusOr<bool> result = vq.Pop(&elems[popped % kPool], in, max_in, out, max_out);
    if (!result.ok()) {
      if (vq.broken()) break;
      (void)vq.DiscardNext();  // Does not fit: hand it back unused.
      continue;
    }
    if (!*result) break;
    VirtqElement& e = elems[popped % kPool];
    // Touch every mapped byte, as a device would.
    for (uint32_t i = 0; i < e.in_num; ++i)
      std::memset(e.in_sg[i].iov_base, 0xa5, e.in_sg[i].iov_len);
    uint8_t sum = 0;
    for (uint32_t i = 0; i < e.out_num; ++i) {
      const auto* p = static_cast<const uint8_t*>(e.out_sg[i].iov_base);
      for (size_t j = 0; j < e.out_sg[i].iov_len; ++j) sum ^= p[j];
    }
    if (sum & 1) {
      vq.Rewind(1);
      (void)vq.DiscardNext();
    } else {
      vq.Push(e, static_cast<uint32_t>(e.in_num));
    }
    ++popped;
  }
  (void)vq.ShouldNotify();
  vq.SetNotification(true);
  return 0;
}
