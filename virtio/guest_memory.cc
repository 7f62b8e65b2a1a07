#include "virtio/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vunet::virtio {
namespace {

// True if [start, start + size) and [other, other + other_size) share a byte.
// Both ranges are known not to overflow.
bool Overlaps(uint64_t start, uint64_t size, uint64_t other, uint64_t other_size) {
  return start < other + other_size && other < start + size;
}

std::string Describe(const GuestMemoryRegion& r) {
  return absl::StrFormat("region gpa=0x%x size=0x%x uva=0x%x offset=0x%x", r.guest_phys_addr,
                         r.size, r.user_addr, r.mmap_offset);
}

}  // namespace

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : regions_(std::exchange(other.regions_, {})) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
  if (this != &other) {
    Clear();
    regions_ = std::exchange(other.regions_, {});
  }
  return *this;
}

GuestMemory::~GuestMemory() { Clear(); }

absl::Status GuestMemory::CheckNewRegion(const GuestMemoryRegion& r) const {
  if (r.size == 0) return absl::InvalidArgumentError(Describe(r) + ": zero size");
  if (r.guest_phys_addr + r.size < r.guest_phys_addr || r.user_addr + r.size < r.user_addr ||
      r.mmap_offset + r.size < r.mmap_offset) {
    return absl::InvalidArgumentError(Describe(r) + ": range overflows 64 bits");
  }
  if (r.size > SIZE_MAX - r.mmap_offset) {
    return absl::InvalidArgumentError(Describe(r) + ": too large to map");
  }
  if (regions_.size() >= kMaxRegions) {
    return absl::ResourceExhaustedError(
        absl::StrCat(Describe(r), ": already ", kMaxRegions, " regions"));
  }
  for (const Region& existing : regions_) {
    if (Overlaps(r.guest_phys_addr, r.size, existing.gpa, existing.size)) {
      return absl::InvalidArgumentError(Describe(r) +
                                        ": overlaps another region's guest addresses");
    }
    if (Overlaps(r.user_addr, r.size, existing.uva, existing.size)) {
      return absl::InvalidArgumentError(Describe(r) + ": overlaps another region's user addresses");
    }
  }
  return absl::OkStatus();
}

void GuestMemory::Insert(const Region& region) {
  auto pos = std::upper_bound(regions_.begin(), regions_.end(), region.gpa,
                              [](uint64_t gpa, const Region& r) { return gpa < r.gpa; });
  regions_.insert(pos, region);
}

absl::Status GuestMemory::AddRegion(const GuestMemoryRegion& r, int fd) {
  if (absl::Status s = CheckNewRegion(r); !s.ok()) return s;
  // mmap offsets must be page aligned and the frontend's need not be, so map
  // from the start of the fd and skip the offset.
  const size_t mapping_size = r.size + r.mmap_offset;
  // Touching a shared mapping past the end of its file raises SIGBUS, so the
  // file must already hold every byte the region claims.
  struct stat st;
  if (fstat(fd, &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(r), ": fstat of fd ", fd, " failed: ", strerror(errno)));
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < mapping_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        Describe(r), ": fd ", fd, " is not a file of at least ", mapping_size, " bytes"));
  }
  // The size check above holds only while the file keeps its size. Seal it
  // against shrinking where the file allows (memfds created for sealing, as
  // QEMU's are); sealed() tells whether every region is protected.
  (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK);
  const int seals = fcntl(fd, F_GET_SEALS);
  const bool sealed = seals >= 0 && (seals & F_SEAL_SHRINK);
  void* mapping =
      mmap(nullptr, mapping_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (mapping == MAP_FAILED) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(r), ": mmap of fd ", fd, " failed: ", strerror(errno)));
  }
  // Hint the kernel that guest memory is not ours to dump.
  madvise(mapping, mapping_size, MADV_DONTDUMP);
  Insert({.gpa = r.guest_phys_addr,
          .gpa_end = r.guest_phys_addr + r.size,
          .uva = r.user_addr,
          .size = r.size,
          .mmap_offset = r.mmap_offset,
          .host = static_cast<uint8_t*>(mapping) + r.mmap_offset,
          .mapping = mapping,
          .mapping_size = mapping_size,
          .sealed = sealed,
          .fault_slot = RegisterGuestMapping(mapping, mapping_size)});
  return absl::OkStatus();
}

absl::Status GuestMemory::AddHostRegion(const GuestMemoryRegion& r, void* host) {
  if (host == nullptr) return absl::InvalidArgumentError(Describe(r) + ": null host address");
  if (absl::Status s = CheckNewRegion(r); !s.ok()) return s;
  Insert({.gpa = r.guest_phys_addr,
          .gpa_end = r.guest_phys_addr + r.size,
          .uva = r.user_addr,
          .size = r.size,
          .mmap_offset = r.mmap_offset,
          .host = static_cast<uint8_t*>(host)});
  return absl::OkStatus();
}

void GuestMemory::Unmap(Region& region) {
  UnregisterGuestMapping(region.fault_slot);  // Before the range can be reused.
  region.fault_slot = -1;
  if (region.mapping != nullptr) munmap(region.mapping, region.mapping_size);
  region.mapping = nullptr;
}

absl::Status GuestMemory::RemoveRegion(const GuestMemoryRegion& r) {
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if (it->gpa == r.guest_phys_addr && it->size == r.size && it->uva == r.user_addr) {
      Unmap(*it);
      regions_.erase(it);
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(Describe(r) + ": no such region");
}

void GuestMemory::Clear() {
  for (Region& r : regions_) Unmap(r);
  regions_.clear();
}

std::vector<GuestMemoryRegion> GuestMemory::regions() const {
  std::vector<GuestMemoryRegion> out;
  out.reserve(regions_.size());
  for (const Region& r : regions_) {
    out.push_back({.guest_phys_addr = r.gpa,
                   .size = r.size,
                   .user_addr = r.uva,
                   .mmap_offset = r.mmap_offset});
  }
  return out;
}

const GuestMemory::Region* GuestMemory::FindGpaSorted(uint64_t gpa) const {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t a, const Region& r) { return a < r.gpa; });
  if (it == regions_.begin()) return nullptr;
  --it;
  return gpa - it->gpa < it->size ? &*it : nullptr;
}

const GuestMemory::Region* GuestMemory::FindUva(uint64_t uva) const {
  for (const Region& r : regions_) {
    if (uva - r.uva < r.size) return &r;
  }
  return nullptr;
}

absl::StatusOr<void*> GuestMemory::TranslateGpa(uint64_t gpa, uint64_t len) const {
  void* host = GpaToHost(gpa, len);
  if (host == nullptr) {
    return absl::OutOfRangeError(
        absl::StrFormat("guest range 0x%x+0x%x is not inside one mapped region", gpa, len));
  }
  return host;
}

absl::StatusOr<void*> GuestMemory::TranslateUva(uint64_t uva, uint64_t len) const {
  const Region* r = FindUva(uva);
  if (r == nullptr || len > r->size - (uva - r->uva)) {
    return absl::OutOfRangeError(
        absl::StrFormat("user range 0x%x+0x%x is not inside one mapped region", uva, len));
  }
  return r->host + (uva - r->uva);
}

absl::StatusOr<size_t> GuestMemory::MapGpa(uint64_t gpa, uint64_t len, iovec* iov,
                                           size_t max_iov) const {
  size_t used = 0;
  switch (MapGpaRaw(gpa, len, iov, max_iov, &used)) {
    case MapResult::kOk:
      return used;
    case MapResult::kUnmapped:
      return absl::OutOfRangeError(
          absl::StrFormat("guest range 0x%x+0x%x is not all mapped", gpa, len));
    case MapResult::kNoSpace:
      break;
  }
  return absl::ResourceExhaustedError(
      absl::StrFormat("guest range 0x%x+0x%x needs more than %d iovec entries", gpa, len, max_iov));
}

absl::StatusOr<uint64_t> GuestMemory::HostToGpa(const void* host) const {
  const auto* p = static_cast<const uint8_t*>(host);
  for (const Region& r : regions_) {
    if (p >= r.host && static_cast<uint64_t>(p - r.host) < r.size) return r.gpa + (p - r.host);
  }
  return absl::OutOfRangeError("host address is not in guest memory");
}

}  // namespace vunet::virtio
