// Cost of the virtio-net data path below the protocols.
//
//   bazel run -c opt //vu:common_benchmark
//
// The driver side is laid out once (every ring slot holds a fixed chain), so
// each iteration costs the driver one index store and the figures are the
// device's own work: collecting receive buffers and flushing them with the
// virtio-net header (the frame's payload copy is the kernel's recvmsg and is
// not part of this), the same through the RxQueue (reserve, commit, one flush
// per frame or per batch of frames), and the transmit handler on batches of
// frames.

#include <memory>
#include <vector>

#include "base/iov.h"
#include "benchmark/benchmark.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/rx_queue.h"

namespace vunet::vu {
namespace {

using virtio::GuestMemory;
using virtio::VirtqDesc;
using virtio::VirtqElement;
using virtio::Virtqueue;
using virtio::testing::DriverMemory;
using virtio::testing::DriverQueue;

constexpr uint32_t kQueueSize = 1024;

struct Ring {
  std::unique_ptr<DriverMemory> driver_memory;
  GuestMemory memory;
  std::unique_ptr<DriverQueue> driver;
  Virtqueue vq;
};

// A ring whose every slot holds a one-descriptor chain of `buffer_size`
// bytes (writable for receive), or, for transmit, a header descriptor and a
// frame descriptor of `frame_size` bytes.
std::unique_ptr<Ring> MakeRing(bool receive, uint32_t buffer_size, uint32_t frame_size = 0) {
  auto r = std::make_unique<Ring>();
  r->driver_memory = DriverMemory::Create(256ull << 20).value();
  (void)r->driver_memory->MapInto(&r->memory);
  r->driver = std::make_unique<DriverQueue>(r->driver_memory.get(), kQueueSize, true);
  const uint32_t per_chain = receive ? 1 : 2;
  const uint32_t chains = kQueueSize / per_chain;
  for (uint32_t c = 0; c < chains; ++c) {
    const uint16_t head = static_cast<uint16_t>(c * per_chain);
    if (receive) {
      const uint64_t buf = r->driver_memory->Alloc(buffer_size).value();
      r->driver->SetDesc(head,
                         {.addr = buf, .len = buffer_size, .flags = virtio::kVirtqDescFWrite});
    } else {
      const uint64_t hdr = r->driver_memory->Alloc(sizeof(VirtioNetHdr)).value();
      const uint64_t frame = r->driver_memory->Alloc(frame_size).value();
      r->driver->SetDesc(head, {.addr = hdr,
                                .len = sizeof(VirtioNetHdr),
                                .flags = virtio::kVirtqDescFNext,
                                .next = static_cast<uint16_t>(head + 1)});
      r->driver->SetDesc(head + 1, {.addr = frame, .len = frame_size});
    }
  }
  for (uint32_t slot = 0; slot < kQueueSize; ++slot) {
    r->driver->SetAvailRing(slot, static_cast<uint16_t>((slot % chains) * per_chain));
  }
  (void)r->vq.Start(&r->memory, r->driver->DeviceConfig(r->memory).value());
  return r;
}

// Collect + FillFrame/Flush of one frame, mergeable buffers.
void BM_CollectFlush(benchmark::State& state) {
  const uint32_t buffer_size = static_cast<uint32_t>(state.range(0));
  const size_t frame = static_cast<size_t>(state.range(1));
  std::unique_ptr<Ring> r = MakeRing(true, buffer_size);
  NetConfig config;
  config.mergeable_rx = true;
  VirtqElement elems[64];
  iovec pool[128];
  const VirtioNetHdr hdr;
  for (auto _ : state) {
    // Keep the whole ring available (a store the driver makes anyway).
    r->driver->SetAvailIdx(static_cast<uint16_t>(r->vq.last_avail_idx() + kQueueSize));
    size_t used = 0, collected = 0;
    const size_t n = Collect(config, &r->vq, elems, 64, pool, 128, &used,
                             sizeof(VirtioNetHdr) + frame, &collected);
    IovFromBuf(pool, used, 0, &hdr, sizeof(hdr));
    Flush(config, &r->vq, elems, n, sizeof(VirtioNetHdr) + frame);
    benchmark::DoNotOptimize(collected);
  }
  state.SetBytesProcessed(state.iterations() * frame);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CollectFlush)
    ->ArgNames({"buffer", "frame"})
    ->Args({4096, 1514})
    ->Args({1526, 1514})
    ->Args({4096, 65536})
    ->Args({1526, 65536});

// The same through the RxQueue: Reserve, Commit (header, num_buffers,
// padding) and Flush, `batch` frames per flush (one used-index update and one
// notification decision per flush, as the backend's loop iteration).
void BM_RxQueueReserveCommit(benchmark::State& state) {
  const uint32_t buffer_size = static_cast<uint32_t>(state.range(0));
  const size_t frame = static_cast<size_t>(state.range(1));
  const size_t batch = static_cast<size_t>(state.range(2));
  std::unique_ptr<Ring> r = MakeRing(true, buffer_size);
  NetConfig config;
  config.mergeable_rx = true;
  RxQueue rx;
  rx.Start(&r->vq, config);
  const VirtioNetHdr hdr;
  const size_t size = sizeof(VirtioNetHdr) + frame;
  for (auto _ : state) {
    r->driver->SetAvailIdx(static_cast<uint16_t>(r->vq.last_avail_idx() + kQueueSize));
    for (size_t i = 0; i < batch; ++i) {
      const RxQueue::Reservation* room = rx.Reserve(size, size);
      if (room == nullptr) {
        state.SkipWithError("no room");
        break;
      }
      rx.Commit(*room, frame, hdr);
    }
    rx.Flush();
  }
  state.SetBytesProcessed(state.iterations() * batch * frame);
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(BM_RxQueueReserveCommit)
    ->ArgNames({"buffer", "frame", "batch"})
    ->Args({4096, 1514, 1})
    ->Args({1526, 1514, 1})
    ->Args({4096, 65536, 1})
    ->Args({1526, 65536, 1})
    ->Args({4096, 1514, 64})
    ->Args({1526, 65536, 8});

class CountingSink : public FrameSink {
 public:
  void OnFrame(const VirtioNetHdr& hdr, absl::Span<const iovec> frame) override {
    bytes += frame[0].iov_len + hdr.flags;
  }
  uint64_t bytes = 0;
};

// The transmit handler: pop a batch, strip headers, hand each frame to a
// sink, fill, flush, notify decision.
void BM_TxHandler(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  std::unique_ptr<Ring> r = MakeRing(false, 0, 1514);
  TxHandler tx({.max_batch = batch, .pool_entries = 2 * batch});
  CountingSink sink;
  NetConfig config;
  uint16_t avail = 0;
  for (auto _ : state) {
    avail = static_cast<uint16_t>(avail + batch);
    r->driver->SetAvailIdx(avail);
    benchmark::DoNotOptimize(tx.Process(config, &r->vq, &sink, 1));
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetBytesProcessed(state.iterations() * batch * 1514);
  if (tx.stats().frames != state.iterations() * batch) state.SkipWithError("frames went missing");
}
BENCHMARK(BM_TxHandler)->ArgName("batch")->Arg(64)->Arg(256);

}  // namespace
}  // namespace vunet::vu
