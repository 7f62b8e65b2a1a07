// What a TCP segment to the guest costs us besides the kernel's copy of its
// payload (net/tcp/tcp_vu.h): its headers and virtio-net header, and with the
// RxQueue its receive buffers, commit and flush. A 64 KiB segment with the
// segmentation offload's fields (TSO: gso_type, gso_size, hdr_len, a partial
// checksum) against a 1,514-byte frame (the guest's MSS at MTU 1500, its
// checksum left to the guest with GUEST_CSUM, or computed without it).
//
//   bazel run -c opt //net/tcp:tcp_vu_benchmark
//
// BM_SegmentHeaders: BuildFrame and the virtio-net header for one segment
// whose payload is already in place (as the peek leaves it), in one receive
// buffer or across 1526-byte mergeable ones. The offload's segment must cost
// no more than the short frame's: headers only, the payload never read.
// BM_SegmentThroughRxQueue: the same with Reserve, Commit and a Flush per
// frame; per byte of payload (items/s are payload bytes).

#include <netinet/in.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "benchmark/benchmark.h"
#include "net/packet/frame.h"
#include "virtio/guest_memory.h"
#include "virtio/testing/driver.h"
#include "virtio/virtio_net.h"
#include "virtio/virtqueue.h"
#include "vu/common.h"
#include "vu/rx_queue.h"

namespace vunet::net {
namespace {

constexpr size_t kMss = 1448;  // MTU 1500 with timestamps' room, as Linux uses it.

FrameSpec Spec() {
  FrameSpec s;
  s.src_mac = MacAddr{{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}};
  s.dst_mac = MacAddr{{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
  s.src4.s_addr = htonl(0x0a000202);
  s.dst4.s_addr = htonl(0x0a00020f);
  s.protocol = IPPROTO_TCP;
  s.src_port = 5201;
  s.dst_port = 40000;
  s.tcp_ack = 12345;
  s.tcp_flags = kTcpAck;
  s.tcp_window = 1024;
  return s;
}

enum Mode : int64_t { kDataValid = 0, kChecksum = 1, kTso = 2 };

// The headers tcp_vu writes for one segment: BuildFrame behind the
// virtio-net header, and that header.
size_t BuildSegment(FrameSpec& spec, absl::Span<const iovec> iov, size_t payload, Mode mode,
                    uint32_t seq, vu::VirtioNetHdr* hdr) {
  spec.tcp_seq = seq;
  spec.l4_checksum = mode == kChecksum;
  spec.l4_partial = mode == kTso;
  const absl::StatusOr<size_t> len = BuildFrame(spec, iov, sizeof(vu::VirtioNetHdr), payload);
  *hdr = vu::VirtioNetHdr{};
  if (mode == kTso) {
    hdr->flags = vu::kVirtioNetHdrFNeedsCsum;
    hdr->gso_type = virtio::kVirtioNetHdrGsoTcpv4;
    hdr->gso_size = kMss;
    hdr->hdr_len = static_cast<uint16_t>(kEthHeaderLen + kIpv4MinHeaderLen + kTcpMinHeaderLen);
    hdr->csum_start = static_cast<uint16_t>(kEthHeaderLen + kIpv4MinHeaderLen);
    hdr->csum_offset = offsetof(TcpHeader, check);
  } else if (mode == kDataValid) {
    hdr->flags = vu::kVirtioNetHdrFDataValid;
  }
  return len.value_or(0);
}

// args: payload bytes, mode, receive buffer size (the frame across as many
// as it takes).
void BM_SegmentHeaders(benchmark::State& state) {
  const size_t payload = static_cast<size_t>(state.range(0));
  const Mode mode = static_cast<Mode>(state.range(1));
  const size_t buffer = static_cast<size_t>(state.range(2));
  const size_t total = sizeof(vu::VirtioNetHdr) + 54 + payload;
  std::vector<uint8_t> memory(total, 0x5a);
  std::vector<iovec> iov;
  for (size_t at = 0; at < total; at += buffer) {
    iov.push_back({memory.data() + at, std::min(buffer, total - at)});
  }
  FrameSpec spec = Spec();
  vu::VirtioNetHdr hdr;
  uint32_t seq = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(BuildSegment(spec, iov, payload, mode, seq, &hdr));
    std::memcpy(memory.data(), &hdr, sizeof(hdr));  // Where Commit writes it.
    benchmark::ClobberMemory();
    seq += static_cast<uint32_t>(payload);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * payload));
}
BENCHMARK(BM_SegmentHeaders)
    ->ArgNames({"payload", "mode", "buffer"})
    ->Args({kMss, kDataValid, 1526})  // A 1,514-byte frame, GUEST_CSUM.
    ->Args({kMss, kChecksum, 1526})   // The same, its checksum computed.
    ->Args({65495, kTso, 65562})      // 64 KiB with TSO, one big buffer.
    ->Args({65495, kTso, 1526});      // 64 KiB with TSO, 43 mergeable buffers.

// A receive ring whose every slot holds one `buffer`-byte chain.
struct Ring {
  explicit Ring(uint32_t buffer) {
    constexpr uint32_t kSize = 1024;
    driver_memory = virtio::testing::DriverMemory::Create(512ull << 20).value();
    (void)driver_memory->MapInto(&memory);
    driver = std::make_unique<virtio::testing::DriverQueue>(driver_memory.get(), kSize, true);
    for (uint32_t c = 0; c < kSize; ++c) {
      const uint64_t buf = driver_memory->Alloc(buffer).value();
      driver->SetDesc(static_cast<uint16_t>(c),
                      {.addr = buf, .len = buffer, .flags = virtio::kVirtqDescFWrite});
      driver->SetAvailRing(c, static_cast<uint16_t>(c));
    }
    (void)vq.Start(&memory, driver->DeviceConfig(memory).value());
  }
  // Makes every used buffer available again (the driver reposting them).
  void Recycle() { driver->SetAvailIdx(static_cast<uint16_t>(vq.last_avail_idx() + 1024)); }
  std::unique_ptr<virtio::testing::DriverMemory> driver_memory;
  virtio::GuestMemory memory;
  std::unique_ptr<virtio::testing::DriverQueue> driver;
  virtio::Virtqueue vq;
};

// args: payload bytes, mode, receive buffer size. Mergeable buffers.
void BM_SegmentThroughRxQueue(benchmark::State& state) {
  const size_t payload = static_cast<size_t>(state.range(0));
  const Mode mode = static_cast<Mode>(state.range(1));
  const uint32_t buffer = static_cast<uint32_t>(state.range(2));
  Ring ring(buffer);
  vu::RxQueue rx;
  vu::NetConfig config;
  config.mergeable_rx = true;
  config.guest_csum = mode != kChecksum;
  config.guest_tso4 = mode == kTso;
  rx.Start(&ring.vq, config);
  FrameSpec spec = Spec();
  vu::VirtioNetHdr hdr;
  const size_t hroom = sizeof(vu::VirtioNetHdr) + 54;
  uint32_t seq = 1;
  for (auto _ : state) {
    ring.Recycle();
    const vu::RxQueue::Reservation* r = rx.Reserve(hroom + payload, hroom + payload);
    if (r == nullptr) {
      state.SkipWithError("no room");
      break;
    }
    const size_t len = BuildSegment(spec, r->iov, payload, mode, seq, &hdr);
    rx.Commit(*r, len, hdr);
    rx.ReleaseUncommitted();
    rx.Flush();
    seq += static_cast<uint32_t>(payload);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * payload));
}
BENCHMARK(BM_SegmentThroughRxQueue)
    ->ArgNames({"payload", "mode", "buffer"})
    ->Args({kMss, kDataValid, 1526})
    ->Args({kMss, kChecksum, 1526})
    ->Args({65495, kTso, 65562})
    ->Args({65495, kTso, 1526});

}  // namespace
}  // namespace vunet::net
