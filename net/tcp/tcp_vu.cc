#include "net/tcp/tcp_vu.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include "base/iov.h"
#include "base/log.h"
#include "vu/common.h"

namespace vunet::net {
namespace {

// Entries of the discard buffer in front of a peek without SO_PEEK_OFF (the
// same buffer, repeated: its contents are never read).
constexpr size_t kMaxDiscardIov = 32;

// The TCP payload of a 64 KiB IP packet (header included, for IPv6 too):
// the frame then fits the 65550 bytes a driver's receive buffers are sized
// for without mergeable buffers (virtio 1.x, 5.1.6.3.1: 65562 with the
// virtio-net header).
constexpr size_t kMaxTsoPayload4 = 65535 - kIpv4MinHeaderLen - kTcpMinHeaderLen;
constexpr size_t kMaxTsoPayload6 = 65535 - kIpv6HeaderLen - kTcpMinHeaderLen;

}  // namespace

absl::StatusOr<std::unique_ptr<TcpRxWriter>> TcpRxWriter::Create(const TcpRxPools& pools) {
  if (pools.max_frames == 0)
    return absl::InvalidArgumentError("TCP receive pools must not be empty");
  return std::unique_ptr<TcpRxWriter>(new TcpRxWriter(pools));
}

TcpRxWriter::TcpRxWriter(const TcpRxPools& pools)
    : pools_(pools), frames_(new Frame[pools.max_frames]), recv_iov_(new iovec[kMaxRecvIov]) {
  if (pools.discard_size > 0) discard_.reset(new uint8_t[pools.discard_size]);
}

size_t TcpRxWriter::max_skip() const {
  return discard_ == nullptr ? 0 : pools_.discard_size * kMaxDiscardIov;
}

TcpPeekResult TcpRxWriter::PeekToGuest(vu::RxQueue* rx, int fd, const TcpSegments& seg) {
  TcpPeekResult r;
  if (!rx->running()) {
    r.no_room = true;
    return r;
  }
  if (seg.max_bytes == 0 || seg.mss == 0) return r;
  if (seg.skip > max_skip()) {
    r.error = EINVAL;
    return r;
  }
  const vu::NetConfig& config = rx->config();
  FrameSpec spec = seg.frame;
  spec.protocol = IPPROTO_TCP;
  spec.tcp_options = {};
  spec.l4_checksum = !config.guest_csum;
  const size_t headers = FrameHeadersLen(spec);
  const size_t hroom = config.vnet_hdr_len + headers;
  // A guest that takes TSO for this IP version gets segments of up to 64 KiB
  // IP, each cut by its stack (or taken whole) at its MSS.
  const bool tso = spec.ipv6 ? config.guest_tso6 : config.guest_tso4;
  const size_t segment_max = tso ? (spec.ipv6 ? kMaxTsoPayload6 : kMaxTsoPayload4) : seg.mss;

  // Receive buffers for the segments, one reservation each, at least one
  // payload byte in each.
  size_t nframes = 0;
  size_t asked = 0;
  while (nframes < pools_.max_frames && asked < seg.max_bytes) {
    const size_t want = std::min(segment_max, seg.max_bytes - asked);
    const vu::RxQueue::Reservation* room = rx->Reserve(hroom + 1, hroom + want);
    if (room == nullptr) break;
    const size_t cap = std::min(want, room->capacity - hroom);
    frames_[nframes++] = Frame{room, cap};
    asked += cap;
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
    f.cap = IovSlice(f.room->iov.data(), f.room->iov.size(), hroom, f.cap, recv_iov_.get(), &niov,
                     kMaxRecvIov);
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
    rx->ReleaseUncommitted();
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
    rx->ReleaseUncommitted();
    return r;
  }
  const size_t data = std::min(got - seg.skip, total_cap);
  if (data == 0) {
    r.no_new_data = true;
    rx->ReleaseUncommitted();
    return r;
  }

  // Headers and commits for the segments the data reached. One of more than
  // an MSS asks the guest to segment it, its checksum left partial (the
  // pseudo-header's sum in the field): as cheap as a short one's.
  vu::VirtioNetHdr plain;
  plain.flags = config.guest_csum ? vu::kVirtioNetHdrFDataValid : 0;
  plain.gso_type = vu::kVirtioNetHdrGsoNone;
  vu::VirtioNetHdr gso;
  gso.flags = vu::kVirtioNetHdrFNeedsCsum;
  gso.gso_type = spec.ipv6 ? virtio::kVirtioNetHdrGsoTcpv6 : virtio::kVirtioNetHdrGsoTcpv4;
  gso.gso_size = static_cast<uint16_t>(std::min<size_t>(seg.mss, 65535));
  gso.hdr_len = static_cast<uint16_t>(headers);
  gso.csum_start = static_cast<uint16_t>(headers - kTcpMinHeaderLen);
  gso.csum_offset = offsetof(TcpHeader, check);
  size_t off = 0;
  for (size_t i = 0; i < peek_frames && off < data; ++i) {
    const Frame& f = frames_[i];
    const size_t len = std::min(f.cap, data - off);
    spec.tcp_seq = seg.seq + static_cast<uint32_t>(off);
    spec.tcp_flags = seg.frame.tcp_flags | (off + len == data ? kTcpPsh : 0);
    const bool segmented = tso && len > seg.mss;
    spec.l4_partial = segmented;
    const vu::VirtioNetHdr& hdr = segmented ? gso : plain;
    const absl::StatusOr<size_t> frame_len =
        BuildFrame(spec, f.room->iov, config.vnet_hdr_len, len);
    if (!frame_len.ok() || !rx->Commit(*f.room, *frame_len, hdr)) {
      // The peek took bytes no segment will carry (with SO_PEEK_OFF, the
      // offset moved past them): rather than tell the two ways apart, the
      // flow ends. It cannot happen while the room came from the same spec.
      VUNET_LOG_RATELIMITED(kError, "tcp rx: segment of %d bytes not built", len);
      r.error = EPROTO;
      break;
    }
    off += len;
    ++r.frames;
  }
  rx->ReleaseUncommitted();
  r.bytes = off;
  r.full = off == total_cap;
  return r;
}

}  // namespace vunet::net
