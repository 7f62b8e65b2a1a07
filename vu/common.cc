#include "vu/common.h"

#include <algorithm>
#include <cstring>

#include "base/iov.h"
#include "base/log.h"
#include "base/static_status.h"
#include "virtio/virtio_net.h"

namespace vunet::vu {
namespace {

using virtio::VirtqElement;
using virtio::Virtqueue;

// Room for the readable part of a receive chain, which should have none: a
// chain with one is refused, and this only lets us see it.
constexpr size_t kRxOutScratch = 4;

// True if no element but the `own` ones the caller holds is outstanding, so a
// chain may be returned to the driver at once without reordering what a later
// Rewind() hands back.
bool NothingElseOutstanding(const Virtqueue& vq, uint32_t own) { return vq.in_use() == own; }

}  // namespace

NetConfig NetConfig::FromFeatures(uint64_t acked) {
  auto has = [acked](unsigned bit) { return (acked & (1ull << bit)) != 0; };
  NetConfig config;
  config.mergeable_rx = has(virtio::kVirtioNetFMrgRxbuf);
  config.guest_csum = has(virtio::kVirtioNetFGuestCsum);
  config.csum = has(virtio::kVirtioNetFCsum);
  config.vnet_hdr_len = virtio::VirtioNetHdrSize(acked);
  config.host_tso4 = config.csum && has(virtio::kVirtioNetFHostTso4);
  config.host_tso6 = config.csum && has(virtio::kVirtioNetFHostTso6);
  config.host_ecn = (config.host_tso4 || config.host_tso6) && has(virtio::kVirtioNetFHostEcn);
  config.host_uso = config.csum && has(virtio::kVirtioNetFHostUso);
  config.guest_tso4 = config.guest_csum && has(virtio::kVirtioNetFGuestTso4);
  config.guest_tso6 = config.guest_csum && has(virtio::kVirtioNetFGuestTso6);
  config.guest_ecn = (config.guest_tso4 || config.guest_tso6) && has(virtio::kVirtioNetFGuestEcn);
  config.guest_uso4 = config.guest_csum && has(virtio::kVirtioNetFGuestUso4);
  config.guest_uso6 = config.guest_csum && has(virtio::kVirtioNetFGuestUso6);
  return config;
}

size_t Collect(const NetConfig& config, Virtqueue* vq, VirtqElement* elems, size_t max_elem,
               iovec* in_sg, size_t max_in_sg, size_t* in_total, size_t size, size_t* collected,
               uint32_t* fill_index) {
  // Entries the caller filled and has not flushed count as outstanding, but
  // a chain returned behind them disturbs nothing.
  auto filled = [fill_index] { return fill_index != nullptr ? *fill_index : 0; };
  size = std::max(size, config.vnet_hdr_len + kEthMinFrame);
  *collected = 0;
  size_t n = 0;
  iovec out_scratch[kRxOutScratch];
  // Chains returned unused count against a budget, so a guest that keeps
  // republishing bad chains cannot hold the loop here.
  uint32_t returns_left = vq->size();
  while (*collected < size && n < max_elem && *in_total < max_in_sg) {
    VirtqElement& elem = elems[n];
    absl::StatusOr<bool> popped =
        vq->Pop(&elem, in_sg + *in_total, max_in_sg - *in_total, out_scratch, kRxOutScratch);
    if (!popped.ok()) {
      if (popped.status().code() != absl::StatusCode::kResourceExhausted) {
        VUNET_LOG_RATELIMITED(kWarning, "rx: %s", popped.status().message());
        break;  // Broken: the caller sees vq->broken().
      }
      // A chain that does not fit an empty pool never will.
      if (*in_total == 0 && NothingElseOutstanding(*vq, filled()) && returns_left-- > 0) {
        VUNET_LOG_RATELIMITED(kWarning, "rx: receive chain too fragmented, returned unused");
        (void)vq->DiscardNext(fill_index);
        continue;
      }
      break;
    }
    if (!*popped) break;
    elem.out_sg = nullptr;  // Not the scratch array, which dies with this call.
    const size_t bytes = elem.in_len;
    if (elem.out_num > 0 || bytes < config.vnet_hdr_len) [[unlikely]] {
      // Not a usable receive buffer. Return it now if that cannot disturb a
      // later rewind; otherwise leave it first in line for the next collect.
      if (NothingElseOutstanding(*vq, filled() + 1) && returns_left-- > 0) {
        VUNET_LOG_RATELIMITED(kWarning, "rx: unusable receive chain (%d readable, %d bytes)",
                              elem.out_num, bytes);
        if (fill_index != nullptr) {
          vq->Fill(elem, 0, (*fill_index)++);
        } else {
          vq->Push(elem, 0);
        }
        continue;
      }
      vq->Unpop();
      break;
    }
    *collected += bytes;
    *in_total += elem.in_num;
    ++n;
    if (!config.mergeable_rx) break;
  }
  return n;
}

size_t FillFrame(const NetConfig& config, Virtqueue* vq, const VirtqElement* elems, size_t elem_cnt,
                 size_t frame_len, uint32_t* fill_index) {
  if (elem_cnt == 0) return 0;
  const size_t min_len = config.vnet_hdr_len + kEthMinFrame;
  if (frame_len < min_len) {
    // Pad short frames with zeros, as a NIC would on the wire.
    size_t capacity = 0;
    size_t pad_from = frame_len;
    for (size_t i = 0; i < elem_cnt && pad_from < min_len; ++i) {
      const size_t elem_bytes = elems[i].in_len;
      if (pad_from < capacity + elem_bytes) {
        const size_t written =
            IovMemset(elems[i].in_sg, elems[i].in_num, pad_from - capacity, 0, min_len - pad_from);
        pad_from += written;
      }
      capacity += elem_bytes;
    }
    frame_len = std::max(frame_len, std::min(min_len, pad_from));
  }
  size_t remaining = frame_len;
  size_t used = 0;
  while (used < elem_cnt && (remaining > 0 || used == 0)) {
    const VirtqElement& elem = elems[used];
    const size_t len = std::min<size_t>(remaining, elem.in_len);
    vq->LogWrite(elem, len);
    vq->Fill(elem, static_cast<uint32_t>(len), *fill_index + static_cast<uint32_t>(used));
    remaining -= len;
    ++used;
  }
  // num_buffers exists whenever the header is the 12-byte one; without
  // mergeable buffers the specification has the device set it to 1 (which
  // `used` then is).
  if (config.vnet_hdr_len >= sizeof(VirtioNetHdr)) {
    const uint16_t num_buffers = static_cast<uint16_t>(used);
    IovFromBuf(elems[0].in_sg, elems[0].in_num, offsetof(VirtioNetHdr, num_buffers), &num_buffers,
               sizeof(num_buffers));
  }
  *fill_index += static_cast<uint32_t>(used);
  return used;
}

size_t Flush(const NetConfig& config, Virtqueue* vq, const VirtqElement* elems, size_t elem_cnt,
             size_t frame_len) {
  uint32_t fill_index = 0;
  const size_t used = FillFrame(config, vq, elems, elem_cnt, frame_len, &fill_index);
  vq->Rewind(static_cast<uint32_t>(elem_cnt - used));
  vq->Flush(fill_index);
  return used;
}

absl::Status SendSingle(const NetConfig& config, Virtqueue* vq, absl::Span<const uint8_t> frame,
                        const VirtioNetHdr& hdr) {
  // Enough for a 64 KiB frame in 4 KiB buffers, or 1526-byte ones.
  constexpr size_t kMaxElems = 64;
  constexpr size_t kMaxIov = 128;
  VirtqElement elems[kMaxElems];
  iovec iov[kMaxIov];
  size_t iov_used = 0;
  size_t collected = 0;
  const size_t frame_len = config.vnet_hdr_len + frame.size();
  const size_t n =
      Collect(config, vq, elems, kMaxElems, iov, kMaxIov, &iov_used, frame_len, &collected);
  if (collected < std::max(frame_len, config.vnet_hdr_len + kEthMinFrame)) {
    vq->Rewind(static_cast<uint32_t>(n));
    // Made once: a full ring may meet every frame a guest sends.
    return VUNET_STATIC_STATUS(absl::UnavailableError("no room in the guest's receive queue"));
  }
  // Elements are consecutive in iov, so the frame is written as one list.
  IovFromBuf(iov, iov_used, 0, &hdr, config.vnet_hdr_len);
  IovFromBuf(iov, iov_used, config.vnet_hdr_len, frame.data(), frame.size());
  Flush(config, vq, elems, n, frame_len);
  vq->Notify();
  return absl::OkStatus();
}

TxHandler::TxHandler(const Options& options)
    : options_(options),
      elems_(new VirtqElement[options.max_batch]),
      pool_(new iovec[options.pool_entries]) {}

size_t TxHandler::PopBatch(Virtqueue* vq) {
  size_t n = 0;
  size_t pool_used = 0;
  uint32_t drops_left = vq->size();  // As in Collect: bad chains cannot hold us.
  while (n < options_.max_batch && pool_used < options_.pool_entries) {
    // Transmit chains are driver-readable only; any writable part is refused
    // by giving it no room.
    absl::StatusOr<bool> popped =
        vq->Pop(&elems_[n], nullptr, 0, pool_.get() + pool_used, options_.pool_entries - pool_used);
    if (!popped.ok()) {
      if (popped.status().code() != absl::StatusCode::kResourceExhausted) {
        VUNET_LOG_RATELIMITED(kWarning, "tx: %s", popped.status().message());
        break;
      }
      if (pool_used > 0 || drops_left-- == 0) break;  // Next batch: an empty pool.
      // It does not fit an empty pool, or wants writable room: never usable.
      VUNET_LOG_RATELIMITED(kWarning, "tx: chain does not fit %d iovec entries, dropped",
                            options_.pool_entries);
      ++stats_.dropped;
      (void)vq->DiscardNext();
      continue;
    }
    if (!*popped) break;
    pool_used += elems_[n].out_num;
    ++n;
  }
  return n;
}

size_t TxHandler::Process(const NetConfig& config, Virtqueue* vq, FrameSink* sink,
                          size_t max_batches) {
  size_t frames = 0;
  for (size_t batch = 0; batch < max_batches; ++batch) {
    const size_t n = PopBatch(vq);
    if (n == 0) break;
    for (size_t i = 0; i < n; ++i) {
      VirtqElement& elem = elems_[i];
      VirtioNetHdr hdr;
      const size_t frame_bytes = elem.out_len;
      if (frame_bytes < config.vnet_hdr_len) [[unlikely]] {
        VUNET_LOG_RATELIMITED(kWarning, "tx: chain of %d bytes has no room for a header",
                              frame_bytes);
        ++stats_.dropped;
        continue;
      }
      IovToBuf(elem.out_sg, elem.out_num, 0, &hdr, config.vnet_hdr_len);
      // The header may sit in its own descriptor or share one with the frame;
      // either way the frame is what follows it, viewed in place.
      size_t count = elem.out_num;
      const iovec* frame = IovConsume(elem.out_sg, &count, config.vnet_hdr_len);
      sink->OnFrame(hdr, absl::MakeConstSpan(frame, count));
      ++frames;
      stats_.bytes += frame_bytes - config.vnet_hdr_len;
    }
    sink->OnBatchEnd();
    for (size_t i = 0; i < n; ++i) vq->Fill(elems_[i], 0, static_cast<uint32_t>(i));
    vq->Flush(static_cast<uint32_t>(n));
    if (vq->Notify()) ++stats_.notifies;
    ++stats_.batches;
    if (vq->broken()) break;
  }
  stats_.frames += frames;
  return frames;
}

}  // namespace vunet::vu
