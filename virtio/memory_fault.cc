#include "virtio/memory_fault.h"

#include <signal.h>
#include <string.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>

#include "absl/strings/str_cat.h"

namespace vunet::virtio {
namespace {

struct Slot {
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};  // 0: free.
  std::atomic<bool> faulted{false};
};

Slot g_slots[kMaxGuestMappings];
std::atomic<uint64_t> g_contained{0};
struct sigaction g_previous;
std::atomic<bool> g_installed{false};

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  // Only faults the kernel raised for a mapping (not kill or raise).
  if (info->si_code > 0) {
    for (Slot& s : g_slots) {
      const uintptr_t end = s.end.load(std::memory_order_acquire);
      const uintptr_t start = s.start.load(std::memory_order_relaxed);
      if (end == 0 || addr < start || addr >= end) continue;
      // The whole mapping: simplest for hugetlbfs, whose mappings split only
      // at huge-page boundaries, and the queues stop using it anyway. The
      // address was stored as an integer to compare it lock-free; a fault
      // handler, not a path the optimizer has to see through.
      void* p = mmap(reinterpret_cast<void*>(start),  // NOLINT(performance-no-int-to-ptr)
                     end - start, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) break;  // Nothing to contain it with: die as before.
      s.faulted.store(true, std::memory_order_release);
      g_contained.fetch_add(1, std::memory_order_relaxed);
      errno = saved_errno;
      return;
    }
  }
  // Not ours: whoever handled SIGBUS before us, or the default action
  // (returning re-executes the faulting access, which then kills).
  if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN &&
             g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
  } else {
    signal(SIGBUS, SIG_DFL);
    if (info->si_code <= 0) raise(SIGBUS);
  }
  errno = saved_errno;
}

}  // namespace

absl::Status ContainGuestMemoryFaults() {
  if (g_installed.load()) return absl::OkStatus();
  struct sigaction sa = {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &g_previous) != 0) {
    return absl::InternalError(absl::StrCat("sigaction(SIGBUS): ", strerror(errno)));
  }
  g_installed = true;
  return absl::OkStatus();
}

uint64_t ContainedGuestMemoryFaults() { return g_contained.load(std::memory_order_relaxed); }

int RegisterGuestMapping(void* start, size_t len) {
  if (start == nullptr || len == 0) return -1;
  for (int i = 0; i < kMaxGuestMappings; ++i) {
    Slot& s = g_slots[i];
    if (s.end.load(std::memory_order_relaxed) != 0) continue;
    s.faulted.store(false, std::memory_order_relaxed);
    s.start.store(reinterpret_cast<uintptr_t>(start), std::memory_order_relaxed);
    // Published last: the handler reads end first.
    s.end.store(reinterpret_cast<uintptr_t>(start) + len, std::memory_order_release);
    return i;
  }
  return -1;
}

void UnregisterGuestMapping(int slot) {
  if (slot < 0 || slot >= kMaxGuestMappings) return;
  g_slots[slot].end.store(0, std::memory_order_release);
}

bool GuestMappingFaulted(int slot) {
  if (slot < 0 || slot >= kMaxGuestMappings) return false;
  return g_slots[slot].faulted.load(std::memory_order_acquire);
}

}  // namespace vunet::virtio
