// Guest memory as the vhost-user backend sees it: a set of regions, each a
// shared mapping of a file descriptor the frontend sent, addressed by the
// guest's physical addresses (descriptor addresses) and by the frontend's own
// virtual addresses (ring addresses in VHOST_USER_SET_VRING_ADDR).
//
// Every translation is bounds-checked: a range is translated only if it lies
// entirely inside mapped memory. A range that is contiguous in guest-physical
// space but crosses from one region into an adjacent one is split into several
// iovec entries by MapGpa(); the single-pointer translations refuse it.
//
// Translations are const and keep no state, so several data-path threads may
// translate at once; regions change on the control path only, while no data
// path runs.
//
// Example:
//   vunet::virtio::GuestMemory memory;
//   absl::Status s = memory.AddRegion({.guest_phys_addr = 0, .size = 1 << 30,
//                                      .user_addr = uva, .mmap_offset = 0}, fd);
//   iovec iov[4];
//   absl::StatusOr<size_t> n = memory.MapGpa(addr, len, iov, 4);

#ifndef VUNET_VIRTIO_GUEST_MEMORY_H_
#define VUNET_VIRTIO_GUEST_MEMORY_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "virtio/memory_fault.h"

namespace vunet::virtio {

// One region as the vhost-user memory table describes it.
struct GuestMemoryRegion {
  uint64_t guest_phys_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;    // The frontend's virtual address of the region.
  uint64_t mmap_offset = 0;  // Where the region starts inside the fd.

  friend bool operator==(const GuestMemoryRegion&, const GuestMemoryRegion&) = default;
};

class GuestMemory {
 public:
  // The most regions one memory map holds (what VHOST_USER_GET_MAX_MEM_SLOTS
  // reports; QEMU's own limit for vhost-user is 509 slots).
  static constexpr size_t kMaxRegions = 509;

  GuestMemory() = default;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  GuestMemory(GuestMemory&& other) noexcept;
  GuestMemory& operator=(GuestMemory&& other) noexcept;
  ~GuestMemory();

  // Maps `region` from `fd` (shared, read-write). The fd is not taken over:
  // the caller closes it, the mapping stays. Refuses zero-sized regions,
  // ranges that overflow 64 bits, regions that overlap an existing one in
  // guest-physical or frontend-virtual space, more than kMaxRegions regions,
  // and fds that cannot be mapped at that size and offset.
  absl::Status AddRegion(const GuestMemoryRegion& region, int fd);

  // Maps memory the caller already has at `host` (not unmapped by us). For
  // tests and for frontends that share memory within one process.
  absl::Status AddHostRegion(const GuestMemoryRegion& region, void* host);

  // Unmaps the region whose guest-physical address, size and user address
  // match `region` (the mmap offset is not compared, as the specification
  // allows the frontend to send a different one).
  absl::Status RemoveRegion(const GuestMemoryRegion& region);

  // Unmaps every region.
  void Clear();

  size_t region_count() const { return regions_.size(); }

  // True if no region's file can shrink under its mapping: each is sealed
  // with F_SEAL_SHRINK (added here where the file allows it). A frontend that
  // shrinks an unsealed file makes our next access to it fault with SIGBUS,
  // so callers warn when this is false.
  bool sealed() const {
    for (const Region& r : regions_) {
      if (!r.sealed) return false;
    }
    return true;
  }
  // True once a SIGBUS in one of this memory's mappings was contained
  // (virtio/memory_fault.h): that region reads as zeros now, and the queues
  // over it stop. One relaxed load unless the process ever contained one.
  bool faulted() const {
    if (ContainedGuestMemoryFaults() == 0) [[likely]]
      return false;
    for (const Region& r : regions_) {
      if (GuestMappingFaulted(r.fault_slot)) return true;
    }
    return false;
  }

  std::vector<GuestMemoryRegion> regions() const;

  // Host pointer to [gpa, gpa + len) if that range lies inside one region.
  // len may be 0 (the address itself must still be mapped).
  absl::StatusOr<void*> TranslateGpa(uint64_t gpa, uint64_t len) const;

  // Host pointer to [uva, uva + len) of frontend-virtual space, inside one
  // region.
  absl::StatusOr<void*> TranslateUva(uint64_t uva, uint64_t len) const;

  // Maps [gpa, gpa + len) into at most `max_iov` entries of `iov`, one per
  // region it crosses. Returns the number of entries written (0 for len 0).
  // kOutOfRange if any byte is unmapped, kResourceExhausted if more than
  // `max_iov` entries would be needed; `iov` may be partly written then.
  absl::StatusOr<size_t> MapGpa(uint64_t gpa, uint64_t len, iovec* iov, size_t max_iov) const;

  // The fast path behind MapGpa: a code instead of a status, and the count of
  // entries written through `used`.
  enum class MapResult { kOk, kUnmapped, kNoSpace };
  MapResult MapGpaRaw(uint64_t gpa, uint64_t len, iovec* iov, size_t max_iov, size_t* used) const {
    size_t n = 0;
    while (len > 0) {
      const Region* r = FindGpa(gpa);
      if (r == nullptr) return MapResult::kUnmapped;
      if (n == max_iov) return MapResult::kNoSpace;
      const uint64_t chunk = len < r->gpa_end - gpa ? len : r->gpa_end - gpa;
      iov[n].iov_base = r->host + (gpa - r->gpa);
      iov[n].iov_len = chunk;
      ++n;
      len -= chunk;
      gpa += chunk;  // Cannot overflow: the chunk ends at or before gpa_end.
    }
    *used = n;
    return MapResult::kOk;
  }

  // True if every byte of [gpa, gpa + len) is mapped, in however many regions.
  bool IsMapped(uint64_t gpa, uint64_t len) const {
    while (len > 0) {
      const Region* r = FindGpa(gpa);
      if (r == nullptr) return false;
      const uint64_t chunk = len < r->gpa_end - gpa ? len : r->gpa_end - gpa;
      len -= chunk;
      gpa += chunk;
    }
    return true;
  }

  // The fast path behind TranslateGpa: nullptr instead of a status.
  void* GpaToHost(uint64_t gpa, uint64_t len) const {
    const Region* r = FindGpa(gpa);
    if (r == nullptr || len > r->gpa_end - gpa) return nullptr;
    return r->host + (gpa - r->gpa);
  }

  // The guest-physical address of a host pointer into guest memory, for dirty
  // logging of writes made through iovecs. kOutOfRange if unmapped.
  absl::StatusOr<uint64_t> HostToGpa(const void* host) const;

 private:
  struct Region {
    uint64_t gpa = 0;
    uint64_t gpa_end = 0;  // Exclusive; gpa + size never overflows.
    uint64_t uva = 0;
    uint64_t size = 0;
    uint64_t mmap_offset = 0;
    uint8_t* host = nullptr;  // Start of the region's bytes.
    void* mapping = nullptr;  // What mmap returned; nullptr if not ours.
    size_t mapping_size = 0;
    bool sealed = true;   // The file cannot shrink under the mapping.
    int fault_slot = -1;  // Its entry in the SIGBUS registry (memory_fault.h).
  };

  absl::Status CheckNewRegion(const GuestMemoryRegion& region) const;
  void Insert(const Region& region);
  static void Unmap(Region& region);

  // The region holding `gpa`, or nullptr. Guests have one to three regions
  // in practice, so a scan beats a search until there are many.
  const Region* FindGpa(uint64_t gpa) const {
    if (regions_.size() <= kLinearScanLimit) {
      for (const Region& r : regions_) {
        if (gpa - r.gpa < r.size) return &r;
      }
      return nullptr;
    }
    return FindGpaSorted(gpa);
  }
  const Region* FindGpaSorted(uint64_t gpa) const;
  const Region* FindUva(uint64_t uva) const;

  static constexpr size_t kLinearScanLimit = 4;
  std::vector<Region> regions_;  // Sorted by gpa, non-overlapping.
};

}  // namespace vunet::virtio

#endif  // VUNET_VIRTIO_GUEST_MEMORY_H_
