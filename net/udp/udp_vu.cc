#include "net/udp/udp_vu.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include "absl/status/statusor.h"
#include "base/iov.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "vu/common.h"

namespace vunet::net {
namespace {

socklen_t LoopbackAddress(int family, sockaddr_storage* out) {
  std::memset(out, 0, sizeof(*out));
  if (family == AF_INET) {
    sockaddr_in* sin = reinterpret_cast<sockaddr_in*>(out);
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sizeof(*sin);
  }
  sockaddr_in6* sin6 = reinterpret_cast<sockaddr_in6*>(out);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_addr = in6addr_loopback;
  return sizeof(*sin6);
}

size_t MaxPayload(const FrameSpec& spec) { return spec.ipv6 ? kUdpMaxPayload6 : kUdpMaxPayload4; }

// The most payload of a frame of coalesced datagrams (UDP_L4): a 64 KiB IP
// packet, header included, so that the frame fits the 65550 bytes a driver
// without mergeable buffers posts for segmentation offloads.
size_t MaxUsoPayload(const FrameSpec& spec) {
  return 65535 - (spec.ipv6 ? kIpv6HeaderLen : kIpv4MinHeaderLen) - kUdpHeaderLen;
}

// Where a coalesced datagram is read for a guest without USO: the largest
// UDP payload.
constexpr size_t kSplitBuffer = 65536;

// The datagrams' size a UDP_GRO control message gives for `len` bytes read:
// 0 without one, or when they are one datagram.
uint16_t GroSize(const msghdr& m, size_t len) {
  if (m.msg_control == nullptr || m.msg_controllen < CMSG_LEN(sizeof(int))) return 0;
  for (const cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr;
       c = CMSG_NXTHDR(const_cast<msghdr*>(&m), const_cast<cmsghdr*>(c))) {
    if (c->cmsg_level != SOL_UDP || c->cmsg_type != UDP_GRO ||
        c->cmsg_len < CMSG_LEN(sizeof(int))) {
      continue;
    }
    int size;
    std::memcpy(&size, CMSG_DATA(c), sizeof(size));
    return size > 0 && size <= 65535 && static_cast<size_t>(size) < len
               ? static_cast<uint16_t>(size)
               : uint16_t{0};
  }
  return 0;
}

}  // namespace

bool EnablePeekOffset(int fd) {
  const int zero = 0;
  return setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) == 0;
}

bool UdpVuReceiver::SetPeekOffset(int fd, int value) {
  return setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &value, sizeof(value)) == 0;
}

bool ProbeUdpPeekOffset(int family) {
  UniqueFd r(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  UniqueFd s(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!r.valid() || !s.valid()) return false;
  sockaddr_storage addr;
  socklen_t len = LoopbackAddress(family, &addr);
  if (bind(r.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      getsockname(r.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      connect(s.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      !EnablePeekOffset(r.get())) {
    return false;
  }
  // Three datagrams, one of them empty: each peek must report the next one's
  // full length, and reading them must bring the offset back to zero.
  constexpr size_t kSizes[] = {3, 0, 5};
  const char data[8] = {};
  for (size_t size : kSizes) {
    if (send(s.get(), data, size, 0) != static_cast<ssize_t>(size)) return false;
  }
  mmsghdr msgs[4] = {};
  if (recvmmsg(r.get(), msgs, 4, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT, nullptr) != 3) return false;
  for (size_t i = 0; i < 3; ++i) {
    if (msgs[i].msg_len != kSizes[i]) return false;
  }
  std::memset(msgs, 0, sizeof(msgs));
  if (recvmmsg(r.get(), msgs, 1, MSG_TRUNC | MSG_DONTWAIT, nullptr) != 1 || msgs[0].msg_len != 3) {
    return false;
  }
  int offset = -1;
  socklen_t olen = sizeof(offset);
  if (getsockopt(r.get(), SOL_SOCKET, SO_PEEK_OFF, &offset, &olen) != 0 || offset != 5)
    return false;
  std::memset(msgs, 0, sizeof(msgs));
  if (recvmmsg(r.get(), msgs, 4, MSG_TRUNC | MSG_DONTWAIT, nullptr) != 2) return false;
  return getsockopt(r.get(), SOL_SOCKET, SO_PEEK_OFF, &offset, &olen) == 0 && offset == 0;
}

UdpVuReceiver::UdpVuReceiver(const Options& options)
    : options_(options),
      split_datagram_(new uint8_t[kSplitBuffer]),
      split_frame_(new uint8_t[kSplitBuffer + kEthHeaderLen + kIpv6HeaderLen + kUdpHeaderLen]) {
  options_.batch = std::clamp<size_t>(options_.batch, 1, kMaxBatch);
  options_.max_iov = std::max<size_t>(options_.max_iov, 1);
  scratch_.reset(new iovec[options_.max_iov]);
}

size_t UdpVuReceiver::SendSplit(vu::RxQueue* rx, FrameSpec spec, size_t len, uint16_t gso) {
  ++stats_.split;
  const size_t headers = FrameHeadersLen(spec);
  size_t frames = 0;
  for (size_t off = 0; off < len; off += gso) {
    const size_t n = std::min<size_t>(gso, len - off);
    std::memcpy(split_frame_.get() + headers, split_datagram_.get() + off, n);
    const absl::StatusOr<size_t> frame_len =
        BuildFrame(spec, absl::MakeSpan(split_frame_.get(), headers + n), n);
    if (!frame_len.ok() || !rx->Send(absl::MakeConstSpan(split_frame_.get(), *frame_len)).ok()) {
      stats_.split_dropped += (len - off + gso - 1) / gso;
      break;
    }
    ++frames;
    ++stats_.frames;
    stats_.bytes += n;
  }
  return frames;
}

void UdpVuReceiver::EnableGro(int fd, const vu::NetConfig& config, UdpRxSocketState* state) {
  if (!(config.guest_uso4 || config.guest_uso6) || state->gro || state->gro_refused) return;
  const int one = 1;
  if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0) {
    state->gro = true;
  } else {
    state->gro_refused = true;
  }
}

bool UdpVuReceiver::Commit(vu::RxQueue* rx, const Slot& s, absl::Span<const iovec> iov,
                           size_t len) {
  const vu::NetConfig& config = rx->config();
  const size_t vnet = config.vnet_hdr_len;
  const absl::StatusOr<size_t> frame_len = BuildFrame(s.spec, iov, vnet, len);
  if (!frame_len.ok()) {
    VUNET_LOG_RATELIMITED(kError, "udp: frame not built: %s", frame_len.status().ToString());
    return false;
  }
  vu::VirtioNetHdr hdr{};
  hdr.flags = config.guest_csum ? vu::kVirtioNetHdrFDataValid : 0;
  hdr.gso_type = vu::kVirtioNetHdrGsoNone;
  if (s.gso != 0) {
    // One frame for the datagrams, which the guest's stack segments (or
    // takes whole where its socket has UDP_GRO).
    const size_t headers = s.hdr_len - vnet;
    hdr.flags = vu::kVirtioNetHdrFNeedsCsum;
    hdr.gso_type = virtio::kVirtioNetHdrGsoUdpL4;
    hdr.gso_size = s.gso;
    hdr.hdr_len = static_cast<uint16_t>(headers);
    hdr.csum_start = static_cast<uint16_t>(headers - kUdpHeaderLen);
    hdr.csum_offset = offsetof(UdpHeader, check);
  }
  if (!rx->Commit(*s.room, *frame_len, hdr)) return false;
  ++stats_.frames;
  if (s.gso != 0) ++stats_.uso_frames;
  stats_.bytes += len;
  return true;
}

void UdpVuReceiver::UpdatePeekOffset(int fd, UdpRxSocketState* state, bool batch_peek,
                                     size_t peeked, size_t consumed, bool mismatch) {
  // Back to zero unless every peeked datagram was read.
  if (batch_peek && (consumed < peeked || mismatch)) {
    bool empty_left = false;
    for (size_t k = consumed; k < peeked; ++k) empty_left |= peek_[k].msg_len == 0;
    ++stats_.peek_resets;
    if (empty_left && SetPeekOffset(fd, -1)) {
      state->single_left = static_cast<uint8_t>(peeked - consumed);
    } else if (!SetPeekOffset(fd, 0)) {
      VUNET_LOG_RATELIMITED(kWarning, "udp: SO_PEEK_OFF reset: %s", strerror(errno));
      state->batched = false;
    }
  } else if (state->batched && state->single_left > 0) {
    state->single_left =
        consumed >= state->single_left ? 0 : static_cast<uint8_t>(state->single_left - consumed);
    if (state->single_left == 0 && !SetPeekOffset(fd, 0)) state->batched = false;
  }
}

UdpVuReceiver::Result UdpVuReceiver::Receive(vu::RxQueue* rx, int fd, UdpRxSocketState* state,
                                             bool want_peer, PrepareFn prepare) {
  ++stats_.wakeups;
  Result result;
  if (!rx->running()) {
    ++stats_.no_room;
    result.outcome = Outcome::kNoRoom;
    return result;
  }
  const vu::NetConfig& config = rx->config();
  const size_t vnet = config.vnet_hdr_len;
  static const sockaddr_storage kNoPeer = {};
  EnableGro(fd, config, state);

  size_t budget = options_.batch;
  result.outcome = Outcome::kBudget;
  while (budget > 0) {
    // 1. The sizes (and senders) of what is queued.
    const bool batch_peek = state->batched && state->single_left == 0;
    const size_t want = batch_peek ? budget : 1;
    for (size_t k = 0; k < want; ++k) {
      peek_[k] = {};
      if (want_peer) {
        peek_[k].msg_hdr.msg_name = &peek_peer_[k];
        peek_[k].msg_hdr.msg_namelen = sizeof(peek_peer_[k]);
      }
      if (state->gro) {
        peek_[k].msg_hdr.msg_control = peek_cmsg_[k].bytes;
        peek_[k].msg_hdr.msg_controllen = sizeof(peek_cmsg_[k].bytes);
      }
    }
    const int n = recvmmsg(fd, peek_, static_cast<unsigned>(want),
                           MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT, nullptr);
    if (n <= 0) {
      if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
        result.outcome = Outcome::kDrained;
      } else {
        ++stats_.recv_errors;
        result.outcome = Outcome::kError;
        result.error = errno;
      }
      break;
    }

    // 2. Room for each, exactly as much as it needs.
    size_t scratch_used = 0;
    size_t slots = 0;
    bool stopped = false;  // Room ran out before every peeked datagram had some.
    bool no_room = false;  // ...because the guest has posted too little.
    bool split = false;    // The round is one coalesced datagram to send split.
    for (size_t k = 0; k < static_cast<size_t>(n); ++k) {
      Slot& s = slots_[k];
      s.len = peek_[k].msg_len;
      s.room = nullptr;
      s.spec = FrameSpec();
      s.gso = state->gro ? GroSize(peek_[k].msg_hdr, s.len) : 0;
      const socklen_t peer_len = want_peer ? peek_[k].msg_hdr.msg_namelen : 0;
      bool keep = prepare(want_peer ? peek_peer_[k] : kNoPeer, peer_len, s.len, &s.spec);
      s.spec.protocol = IPPROTO_UDP;
      s.spec.l4_checksum = !config.guest_csum;
      if (keep && s.gso != 0 &&
          (!(s.spec.ipv6 ? config.guest_uso6 : config.guest_uso4) ||
           s.len > MaxUsoPayload(s.spec))) {
        // Datagrams the guest cannot take as one frame: a round of their own.
        if (k > 0) {
          stopped = true;
          break;
        }
        split = true;
      }
      if (!keep) {
        ++stats_.refused;
      } else if (!split && s.gso == 0 && s.len > MaxPayload(s.spec)) {
        keep = false;
        ++stats_.too_big;
      }
      if (keep && !split) {
        s.spec.l4_partial = s.gso != 0;
        s.hdr_len = vnet + FrameHeadersLen(s.spec);
        vu::RxQueue::Refusal why;
        s.room = rx->Reserve(s.hdr_len + s.len, s.hdr_len + s.len, &why);
        if (s.room != nullptr && scratch_used + s.room->iov.size() > options_.max_iov) {
          // Our array is smaller than the RxQueue's pools (a configuration
          // error): give up the round rather than read into part of it.
          VUNET_LOG_RATELIMITED(kError, "udp: %d iovec entries are too few for this round",
                                options_.max_iov);
          rx->ReleaseUncommitted();
          slots = 0;
          stopped = true;
          break;
        }
        if (s.room == nullptr) {
          if (why == vu::RxQueue::Refusal::kNeverFits) {
            ++stats_.too_big;
            if (config.mergeable_rx) {
              VUNET_LOG_RATELIMITED(kWarning,
                                    "udp: %d-byte datagram needs more receive buffers than the "
                                    "ring or our pools hold: dropped",
                                    s.len);
            }
          } else {
            stopped = true;
            no_room = why != vu::RxQueue::Refusal::kLater;
            break;
          }
        }
      }
      mmsghdr& msg = msgs_[k];
      msg = {};
      if (want_peer) {
        msg.msg_hdr.msg_name = &peer_[k];
        msg.msg_hdr.msg_namelen = sizeof(peer_[k]);
      }
      if (state->gro) {
        msg.msg_hdr.msg_control = cmsg_[k].bytes;
        msg.msg_hdr.msg_controllen = sizeof(cmsg_[k].bytes);
      }
      if (split) {
        split_iov_ = {split_datagram_.get(), kSplitBuffer};
        msg.msg_hdr.msg_iov = &split_iov_;
        msg.msg_hdr.msg_iovlen = 1;
        slots = 1;
        break;
      }
      if (s.room != nullptr) {
        // The payload goes behind the header room; a dropped datagram is
        // read into nothing and so discarded.
        iovec* payload = scratch_.get() + scratch_used;
        std::memcpy(payload, s.room->iov.data(), s.room->iov.size() * sizeof(iovec));
        scratch_used += s.room->iov.size();
        size_t count = s.room->iov.size();
        payload = IovConsume(payload, &count, s.hdr_len);
        msg.msg_hdr.msg_iov = payload;
        msg.msg_hdr.msg_iovlen = count;
      }
      slots = k + 1;
    }

    // 3. One read for all of them (none if the first found no room).
    int r = 0;
    int read_error = 0;
    if (slots > 0) {
      r = recvmmsg(fd, msgs_, static_cast<unsigned>(slots), MSG_TRUNC | MSG_DONTWAIT, nullptr);
      if (r < 0) {
        read_error = errno;
        r = 0;
      }
    }

    // 4. Headers in front, and committed.
    bool mismatch = false;
    for (size_t j = 0; j < static_cast<size_t>(r); ++j) {
      Slot& s = slots_[j];
      if (split) {
        const size_t len = std::min<size_t>(msgs_[j].msg_len, kSplitBuffer);
        const uint16_t gso = GroSize(msgs_[j].msg_hdr, len);
        result.frames += SendSplit(rx, s.spec, len, gso != 0 ? gso : static_cast<uint16_t>(len));
        continue;
      }
      if (s.room == nullptr) continue;
      const absl::Span<const iovec> iov = s.room->iov;
      size_t len = msgs_[j].msg_len;
      const uint16_t read_gso = state->gro ? GroSize(msgs_[j].msg_hdr, len) : 0;
      bool ok = true;
      if (len != s.len || read_gso != s.gso ||
          (want_peer &&
           (msgs_[j].msg_hdr.msg_namelen != peek_[j].msg_hdr.msg_namelen ||
            std::memcmp(&peer_[j], &peek_peer_[j], msgs_[j].msg_hdr.msg_namelen) != 0))) {
        mismatch = true;
        ++stats_.mismatches;
        VUNET_LOG_RATELIMITED(kWarning, "udp: datagram of %d bytes read where %d were peeked", len,
                              s.len);
        FrameSpec spec;
        const size_t room = s.room->capacity - s.hdr_len;
        s.gso = 0;
        ok = read_gso == 0 && len <= room &&
             prepare(want_peer ? peer_[j] : kNoPeer, want_peer ? msgs_[j].msg_hdr.msg_namelen : 0,
                     len, &spec) &&
             len <= MaxPayload(spec);
        if (ok) {
          spec.protocol = IPPROTO_UDP;
          spec.l4_checksum = !config.guest_csum;
          ok = vnet + FrameHeadersLen(spec) == s.hdr_len;
          s.spec = spec;
        }
      }
      const bool committed = ok && Commit(rx, s, iov, len);
      if (committed) ++result.frames;
      // Its buffers back to the guest, empty (only after a mismatch).
      if (!committed) rx->Abandon(*s.room);
    }
    // Slots the read did not reach hold the last buffers reserved.
    rx->ReleaseUncommitted();

    const size_t consumed = static_cast<size_t>(r);
    UpdatePeekOffset(fd, state, batch_peek, static_cast<size_t>(n), consumed, mismatch);

    budget -= std::min(budget, std::max<size_t>(consumed, 1));
    if (slots == 0) {
      result.outcome = no_room ? Outcome::kNoRoom : Outcome::kBudget;
      break;
    }
    if (read_error != 0 || static_cast<size_t>(r) < slots) {
      if (read_error == 0 || read_error == EAGAIN || read_error == EWOULDBLOCK) {
        result.outcome = Outcome::kBudget;
      } else {
        ++stats_.recv_errors;
        result.outcome = Outcome::kError;
        result.error = read_error;
      }
      break;
    }
    if (stopped) {
      result.outcome = no_room ? Outcome::kNoRoom : Outcome::kBudget;
      break;
    }
    if (static_cast<size_t>(n) < want) {
      result.outcome = Outcome::kDrained;
      break;
    }
    result.outcome = Outcome::kBudget;
  }
  if (result.outcome == Outcome::kNoRoom) ++stats_.no_room;
  return result;
}

}  // namespace vunet::net
