#include "net/tcp/tcp_vu.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/iov.h"
#include "base/log.h"
#include "vu/common.h"

namespace vunet::net {
namespace {

// Entries of the discard buffer in front of a peek without SO_PEEK_OFF (the
// same buffer, repeated: its contents are never read).
constexpr size_t kMaxDiscardIov = 32;

// Appends the entries covering [offset, offset + len) of iov[0..count) to
// out[*n..max). Returns the bytes covered (fewer if `out` fills first).
size_t AppendRange(const iovec* iov, size_t count, size_t offset, size_t len, iovec* out, size_t* n,
                   size_t max) {
  size_t covered = 0;
  for (size_t i = 0; i < count && covered < len && *n < max; ++i) {
    if (offset >= iov[i].iov_len) {
      offset -= iov[i].iov_len;
      continue;
    }
    const size_t take = std::min(iov[i].iov_len - offset, len - covered);
    out[(*n)++] = {static_cast<uint8_t*>(iov[i].iov_base) + offset, take};
    covered += take;
    offset = 0;
  }
  return covered;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpRxWriter>> TcpRxWriter::Create(const TcpRxPools& pools) {
  if (pools.max_frames == 0 || pools.max_elems == 0 || pools.max_iov == 0) {
    return absl::InvalidArgumentError("TCP receive pools must not be empty");
  }
  return std::unique_ptr<TcpRxWriter>(new TcpRxWriter(pools));
}

TcpRxWriter::TcpRxWriter(const TcpRxPools& pools)
    : pools_(pools),
      elems_(new virtio::VirtqElement[pools.max_elems]),
      pool_(new iovec[pools.max_iov]),
      frames_(new Frame[pools.max_frames]),
      recv_iov_(new iovec[kMaxRecvIov]) {
  if (pools.discard_size > 0) discard_.reset(new uint8_t[pools.discard_size]);
}

size_t TcpRxWriter::max_skip() const {
  return discard_ == nullptr ? 0 : pools_.discard_size * kMaxDiscardIov;
}

TcpPeekResult TcpRxWriter::PeekToGuest(GuestRx* rx, int fd, const TcpSegments& seg) {
  TcpPeekResult r;
  virtio::Virtqueue* vq = rx->queue();
  if (vq == nullptr) {
    r.no_room = true;
    return r;
  }
  if (seg.max_bytes == 0 || seg.mss == 0) return r;
  if (seg.skip > max_skip()) {
    r.error = EINVAL;
    return r;
  }
  if (fill_ > 0 && vq != vq_) {
    // The queue those entries were for stopped and restarted in between:
    // its used ring was reset with it.
    VUNET_LOG_RATELIMITED(kWarning, "tcp rx: queue changed with %d entries unflushed", fill_);
    fill_ = 0;
  }
  vq_ = vq;
  const vu::NetConfig& config = rx->config();
  FrameSpec spec = seg.frame;
  spec.protocol = IPPROTO_TCP;
  spec.tcp_options = {};
  spec.l4_checksum = !config.guest_csum;
  const size_t hroom = config.vnet_hdr_len + FrameHeadersLen(spec);

  // Receive buffers for the segments, one Collect each.
  size_t nframes = 0;
  size_t elems = 0;
  size_t iov_used = 0;
  size_t asked = 0;
  while (nframes < pools_.max_frames && asked < seg.max_bytes && elems < pools_.max_elems &&
         iov_used < pools_.max_iov) {
    const size_t want = std::min(seg.mss, seg.max_bytes - asked);
    const size_t iov_before = iov_used;
    size_t got = 0;
    const size_t n = vu::Collect(config, vq, elems_.get() + elems, pools_.max_elems - elems,
                                 pool_.get(), pools_.max_iov, &iov_used, hroom + want, &got);
    if (n == 0) break;
    if (got <= hroom) {  // Not even one byte of payload fits.
      vq->Rewind(static_cast<uint32_t>(n));
      iov_used = iov_before;
      break;
    }
    const size_t cap = std::min(want, got - hroom);
    frames_[nframes++] = Frame{elems, n, iov_before, iov_used, cap};
    elems += n;
    asked += cap;
  }
  if (vq->broken()) {
    rx->OnBroken();
    r.no_room = true;
    return r;
  }
  if (nframes == 0) {
    r.no_room = true;
    return r;
  }

  // One iovec array: the discard prefix, then each segment's payload area.
  size_t niov = 0;
  for (size_t left = seg.skip; left > 0;) {
    const size_t len = std::min(left, pools_.discard_size);
    recv_iov_[niov++] = {discard_.get(), len};
    left -= len;
  }
  size_t total_cap = 0;
  size_t peek_frames = 0;
  for (; peek_frames < nframes; ++peek_frames) {
    Frame& f = frames_[peek_frames];
    if (niov == kMaxRecvIov) break;
    f.cap = AppendRange(pool_.get() + f.iov_start, f.iov_end - f.iov_start, hroom, f.cap,
                        recv_iov_.get(), &niov, kMaxRecvIov);
    total_cap += f.cap;
    if (f.cap == 0) break;
  }
  msghdr msg{};
  msg.msg_iov = recv_iov_.get();
  msg.msg_iovlen = niov;
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      r.no_new_data = true;
    } else {
      r.error = errno;
    }
    vq->Rewind(static_cast<uint32_t>(elems));
    return r;
  }
  const size_t got = static_cast<size_t>(n);
  if (got < seg.skip || (got == 0 && seg.skip == 0)) {
    // Nothing at all: the peer shut down. Fewer bytes than were sent before
    // cannot happen while the flow's accounting holds; say so.
    if (got == 0 && seg.skip == 0) {
      r.eof = true;
    } else {
      r.error = EIO;
    }
    vq->Rewind(static_cast<uint32_t>(elems));
    return r;
  }
  const size_t data = std::min(got - seg.skip, total_cap);
  if (data == 0) {
    r.no_new_data = true;
    vq->Rewind(static_cast<uint32_t>(elems));
    return r;
  }

  // Headers and used entries for the segments the data reached.
  size_t off = 0;
  size_t used_elems = 0;
  for (size_t i = 0; i < peek_frames && off < data; ++i) {
    const Frame& f = frames_[i];
    const size_t len = std::min(f.cap, data - off);
    const absl::Span<const iovec> iov(pool_.get() + f.iov_start, f.iov_end - f.iov_start);
    spec.tcp_seq = seg.seq + static_cast<uint32_t>(off);
    spec.tcp_flags = seg.frame.tcp_flags | (off + len == data ? kTcpPsh : 0);
    const absl::StatusOr<size_t> frame_len = BuildFrame(spec, iov, config.vnet_hdr_len, len);
    if (!frame_len.ok()) {
      // The peek took bytes no segment will carry (with SO_PEEK_OFF, the
      // offset moved past them): rather than tell the two ways apart, the
      // flow ends. It cannot happen while the room came from the same spec.
      VUNET_LOG_RATELIMITED(kError, "tcp rx: segment not built: %s", frame_len.status().message());
      r.error = EPROTO;
      break;
    }
    vu::VirtioNetHdr hdr;
    hdr.flags = config.guest_csum ? vu::kVirtioNetHdrFDataValid : 0;
    hdr.gso_type = vu::kVirtioNetHdrGsoNone;
    IovFromBuf(iov.data(), iov.size(), 0, &hdr, config.vnet_hdr_len);
    rx->OnFrameWritten(iov, config.vnet_hdr_len, *frame_len);
    used_elems += vu::FillFrame(config, vq, elems_.get() + f.elem_start, f.elem_count,
                                config.vnet_hdr_len + *frame_len, &fill_);
    off += len;
    ++r.frames;
  }
  vq->Rewind(static_cast<uint32_t>(elems - used_elems));
  r.bytes = off;
  r.full = off == total_cap;
  return r;
}

void TcpRxWriter::Flush(GuestRx* rx) {
  if (fill_ == 0) return;
  virtio::Virtqueue* vq = rx->queue();
  if (vq == nullptr || vq != vq_) {
    fill_ = 0;  // The queue went away, and its used ring with it.
    return;
  }
  vq->Flush(fill_);
  fill_ = 0;
  vq->Notify();
}

}  // namespace vunet::net
