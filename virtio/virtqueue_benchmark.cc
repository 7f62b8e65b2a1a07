// Cost of the device's side of a split ring: pop + fill + flush per element.
//
//   bazel run -c opt //virtio:virtqueue_benchmark
//
// The driver side is prepared once: the avail ring holds every head in a
// fixed cycle, so each batch costs the driver a single index store and the
// figure is the device's work alone. "per_elem" (seconds per element) is the
// number to watch.

#include <memory>
#include <vector>

#include "benchmark/benchmark.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"

namespace vunet::virtio {
namespace {

using testing::DriverMemory;
using testing::DriverQueue;

constexpr uint32_t kQueueSize = 256;

enum class Layout { kOneDescriptor, kTwoDescriptors, kIndirectEight };

struct Fixture {
  std::unique_ptr<DriverMemory> driver_memory;
  GuestMemory memory;
  std::unique_ptr<DriverQueue> driver;
  Virtqueue vq;
};

// Lays out chains of `layout` covering the whole ring, heads cycling through
// the avail ring.
std::unique_ptr<Fixture> MakeFixture(Layout layout) {
  auto f = std::make_unique<Fixture>();
  f->driver_memory = DriverMemory::Create(64 << 20).value();
  (void)f->driver_memory->MapInto(&f->memory);
  f->driver = std::make_unique<DriverQueue>(f->driver_memory.get(), kQueueSize, true);
  DriverQueue& d = *f->driver;
  const uint32_t per_chain = layout == Layout::kTwoDescriptors ? 2 : 1;
  const uint32_t chains = kQueueSize / per_chain;
  for (uint32_t c = 0; c < chains; ++c) {
    const uint16_t head = static_cast<uint16_t>(c * per_chain);
    const uint64_t buf = f->driver_memory->Alloc(2048).value();
    switch (layout) {
      case Layout::kOneDescriptor:
        d.SetDesc(head, {.addr = buf, .len = 1514});
        break;
      case Layout::kTwoDescriptors:
        d.SetDesc(head, {.addr = buf,
                         .len = 12,
                         .flags = kVirtqDescFNext,
                         .next = static_cast<uint16_t>(head + 1)});
        d.SetDesc(head + 1, {.addr = buf + 64, .len = 1514});
        break;
      case Layout::kIndirectEight: {
        const uint64_t table = f->driver_memory->Alloc(8 * sizeof(VirtqDesc), 16).value();
        auto* entries = reinterpret_cast<VirtqDesc*>(f->driver_memory->Host(table));
        for (uint16_t i = 0; i < 8; ++i) {
          entries[i] = {.addr = buf + 256 * i,
                        .len = 190,
                        .flags = static_cast<uint16_t>(i < 7 ? kVirtqDescFNext : 0),
                        .next = static_cast<uint16_t>(i + 1)};
        }
        d.SetDesc(head,
                  {.addr = table, .len = 8 * sizeof(VirtqDesc), .flags = kVirtqDescFIndirect});
        break;
      }
    }
  }
  for (uint32_t slot = 0; slot < kQueueSize; ++slot) {
    d.SetAvailRing(slot, static_cast<uint16_t>((slot % chains) * per_chain));
  }
  (void)f->vq.Start(&f->memory, d.DeviceConfig(f->memory).value());
  return f;
}

void BM_PopFillFlush(benchmark::State& state, Layout layout) {
  const int batch = static_cast<int>(state.range(0));
  std::unique_ptr<Fixture> f = MakeFixture(layout);
  std::vector<VirtqElement> elems(batch);
  std::vector<iovec> pool(8 * batch);
  uint16_t avail = 0;
  for (auto _ : state) {
    avail = static_cast<uint16_t>(avail + batch);
    f->driver->SetAvailIdx(avail);
    size_t used = 0;
    int n = 0;
    for (; n < batch; ++n) {
      absl::StatusOr<bool> popped =
          f->vq.Pop(&elems[n], nullptr, 0, pool.data() + used, pool.size() - used);
      if (!popped.ok() || !*popped) break;
      used += elems[n].out_num;
    }
    for (int i = 0; i < n; ++i) f->vq.Fill(elems[i], 0, i);
    f->vq.Flush(n);
    benchmark::DoNotOptimize(pool.data());
    if (n != batch) {
      state.SkipWithError("ring ran dry");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * batch);
  // Seconds per element, printed with an SI prefix (25n is 25 ns).
  state.counters["per_elem"] = benchmark::Counter(
      batch, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

BENCHMARK_CAPTURE(BM_PopFillFlush, one_descriptor, Layout::kOneDescriptor)->Arg(1)->Arg(64);
BENCHMARK_CAPTURE(BM_PopFillFlush, two_descriptors, Layout::kTwoDescriptors)->Arg(1)->Arg(64);
BENCHMARK_CAPTURE(BM_PopFillFlush, indirect_eight, Layout::kIndirectEight)->Arg(1)->Arg(64);

// The notification decision a batch ends with (EVENT_IDX, no eventfd write).
void BM_ShouldNotify(benchmark::State& state) {
  std::unique_ptr<Fixture> f = MakeFixture(Layout::kOneDescriptor);
  for (auto _ : state) benchmark::DoNotOptimize(f->vq.ShouldNotify());
}
BENCHMARK(BM_ShouldNotify);

}  // namespace
}  // namespace vunet::virtio
