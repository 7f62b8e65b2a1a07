// Containment of SIGBUS in guest memory. A region's file that cannot be
// sealed (hugetlbfs, a plain file) can be shrunk by the frontend after we
// mapped it; touching the mapping past the new end of the file raises
// SIGBUS, which would kill the process.
//
// GuestMemory registers each mapping it makes here. Once
// ContainGuestMemoryFaults() has installed the handler, a SIGBUS whose
// address lies inside a registered mapping replaces that whole mapping with
// anonymous zero pages (MAP_FIXED: reads see zeros, writes go nowhere the
// frontend sees), marks the mapping faulted, and returns, so the faulting
// access completes. GuestMemory::faulted() then turns true, and the
// virtqueues over that memory break ("guest memory faulted"), so the device
// reports DEVICE_NEEDS_RESET and the frontend must set memory up anew. A
// SIGBUS anywhere else goes to the handler that was installed before (or
// the default action: the process dies, as without containment).
//
//   absl::Status s = virtio::ContainGuestMemoryFaults();  // Once, at start.
//
// The handler is async-signal-safe: a lookup in a fixed table of atomics
// and one mmap.

#ifndef VUNET_VIRTIO_MEMORY_FAULT_H_
#define VUNET_VIRTIO_MEMORY_FAULT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace vunet::virtio {

// Installs the SIGBUS handler (SA_SIGINFO | SA_ONSTACK); idempotent.
absl::Status ContainGuestMemoryFaults();

// Faults contained since the process started.
uint64_t ContainedGuestMemoryFaults();

// The registry GuestMemory uses: [start, start + len) is a guest memory
// mapping until unregistered (before it is unmapped). Returns a slot, or -1
// if the table (kMaxGuestMappings) is full, in which case faults in the
// mapping are not contained. Control path only, one thread at a time.
inline constexpr int kMaxGuestMappings = 1024;
int RegisterGuestMapping(void* start, size_t len);
void UnregisterGuestMapping(int slot);
// True once a fault inside the slot's mapping was contained (the mapping is
// zeros now).
bool GuestMappingFaulted(int slot);

}  // namespace vunet::virtio

#endif  // VUNET_VIRTIO_MEMORY_FAULT_H_
