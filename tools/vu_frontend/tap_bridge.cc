#include "tools/vu_frontend/tap_bridge.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/log.h"
#include "virtio/virtio_net.h"

namespace vunet::vu_frontend {
namespace {

constexpr int kTapHeaderSize = sizeof(VirtioNetHdr);  // OpenTap's; Create sets the rings'.
constexpr size_t kMinFrame = 14;                      // An Ethernet header.
// Batches PumpTap moves before it lets the receive side have a turn.
constexpr int kTapRounds = 4;
// While frames wait for transmit ring space, poll wakes up this often even
// without a notification (a safety net; notifications are armed).
constexpr int kTxWaitMs = 10;

absl::Status Errno(absl::string_view what) {
  const int error = errno;
  return absl::ErrnoToStatus(error, what);
}

}  // namespace

std::optional<ChecksumField> FindChecksumField(absl::Span<const uint8_t> frame) {
  constexpr size_t kEth = 14;
  if (frame.size() < kEth) return std::nullopt;
  const uint16_t ether_type = static_cast<uint16_t>(frame[12] << 8 | frame[13]);
  size_t l4;
  uint8_t protocol;
  if (ether_type == 0x0800) {
    if (frame.size() < kEth + 20 || (frame[kEth] >> 4) != 4) return std::nullopt;
    l4 = kEth + size_t{frame[kEth] & 0x0fu} * 4;
    const bool fragment = ((frame[kEth + 6] & 0x3f) | frame[kEth + 7]) != 0;  // MF or offset.
    if (l4 < kEth + 20 || fragment) return std::nullopt;
    protocol = frame[kEth + 9];
  } else if (ether_type == 0x86dd) {
    if (frame.size() < kEth + 40 || (frame[kEth] >> 4) != 6) return std::nullopt;
    l4 = kEth + 40;
    protocol = frame[kEth + 6];
  } else {
    return std::nullopt;
  }
  if (protocol == 6 && frame.size() >= l4 + 20) {
    return ChecksumField{static_cast<uint16_t>(l4), 16};
  }
  if (protocol == 17 && frame.size() >= l4 + 8) return ChecksumField{static_cast<uint16_t>(l4), 6};
  return std::nullopt;
}

std::optional<std::array<uint8_t, 6>> ParseMac(absl::string_view text) {
  std::array<uint8_t, 6> mac{};
  std::vector<absl::string_view> parts = absl::StrSplit(text, ':');
  if (parts.size() != mac.size()) return std::nullopt;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty() || parts[i].size() > 2) return std::nullopt;
    unsigned value = 0;
    for (char c : parts[i]) {
      int digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        digit = c - 'A' + 10;
      } else {
        return std::nullopt;
      }
      value = value * 16 + static_cast<unsigned>(digit);
    }
    mac[i] = static_cast<uint8_t>(value);
  }
  return mac;
}

absl::StatusOr<Tap> OpenTap(const TapOptions& options) {
  if (options.name.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("interface name too long: ", options.name));
  }
  if (options.mtu < 68 || options.mtu > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat("MTU %d: not in 68..65535", options.mtu));
  }
  Tap tap;
  tap.fd.reset(open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK));
  if (!tap.fd.valid()) return Errno("open /dev/net/tun");
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, options.name.data(), options.name.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(tap.fd.get(), TUNSETIFF, &ifr) < 0) return Errno("TUNSETIFF");
  tap.name.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  // The virtio-net header layout, so headers pass between the tap and the
  // rings as they are; TapBridge::Create sets the negotiated size.
  int header_size = kTapHeaderSize;
  if (ioctl(tap.fd.get(), TUNSETVNETHDRSZ, &header_size) < 0) return Errno("TUNSETVNETHDRSZ");
  // No offloads until TapBridge::Create knows what the backend takes.
  if (ioctl(tap.fd.get(), TUNSETOFFLOAD, 0UL) < 0) return Errno("TUNSETOFFLOAD");

  UniqueFd control(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!control.valid()) return Errno("socket");
  ifreq req{};
  std::memcpy(req.ifr_name, tap.name.data(), tap.name.size());
  req.ifr_mtu = static_cast<int>(options.mtu);
  if (ioctl(control.get(), SIOCSIFMTU, &req) < 0) {
    return Errno(absl::StrFormat("%s: MTU %d", tap.name, options.mtu));
  }
  if (options.mac) {
    req.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    std::memcpy(req.ifr_hwaddr.sa_data, options.mac->data(), options.mac->size());
    if (ioctl(control.get(), SIOCSIFHWADDR, &req) < 0) {
      return Errno(absl::StrCat(tap.name, ": MAC address"));
    }
  }
  if (options.up) {
    if (ioctl(control.get(), SIOCGIFFLAGS, &req) < 0) return Errno("SIOCGIFFLAGS");
    req.ifr_flags |= IFF_UP;
    if (ioctl(control.get(), SIOCSIFFLAGS, &req) < 0) return Errno(absl::StrCat(tap.name, ": up"));
  }
  return tap;
}

TapBridge::TapBridge(Frontend* frontend, UniqueFd tap, unsigned tun_offloads)
    : frontend_(frontend),
      tap_(std::move(tap)),
      header_size_(frontend->net_header_size()),
      features_(frontend->features()),
      tun_offloads_(tun_offloads) {}

absl::StatusOr<std::unique_ptr<TapBridge>> TapBridge::Create(Frontend* frontend, UniqueFd tap) {
  if (frontend == nullptr || !frontend->connected() || frontend->queue(kRxQueue) == nullptr) {
    return absl::InvalidArgumentError("the frontend is not connected");
  }
  if (!tap.valid()) return absl::InvalidArgumentError("no tap fd");
  if (frontend->options().max_frame_size < kMinFrame) {
    return absl::InvalidArgumentError("the frontend's max_frame_size is below a frame");
  }
  // A read from the tap fills a transmit buffer as is: the same header size.
  int header_size = static_cast<int>(frontend->net_header_size());
  if (ioctl(tap.get(), TUNSETVNETHDRSZ, &header_size) < 0) return Errno("TUNSETVNETHDRSZ");
  // What the kernel may hand us goes to the backend's transmit queue: with
  // VIRTIO_NET_F_CSUM partial checksums (TUN_F_CSUM; vunet never verifies a
  // guest's TCP or UDP checksum: it sends the payload on a host socket),
  // with HOST_TSO4/6, HOST_ECN and HOST_USO segmentation.
  unsigned offloads = TunOffloadFlags(frontend->features());
  if (ioctl(tap.get(), TUNSETOFFLOAD, static_cast<unsigned long>(offloads)) < 0) {
    // Before Linux 6.2 the kernel refuses USO4/6 (EINVAL): without them the
    // kernel segments UDP itself.
    const unsigned uso = kTunFUso4 | kTunFUso6;
    if (errno != EINVAL || (offloads & uso) == 0) return Errno("TUNSETOFFLOAD");
    offloads &= ~uso;
    if (ioctl(tap.get(), TUNSETOFFLOAD, static_cast<unsigned long>(offloads)) < 0) {
      return Errno("TUNSETOFFLOAD");
    }
    VUNET_LOG(kWarning, "tap_bridge: this kernel's taps take no USO: UDP is segmented by it");
  }
  return std::unique_ptr<TapBridge>(new TapBridge(frontend, std::move(tap), offloads));
}

absl::StatusOr<size_t> TapBridge::ReadFromTap(const TxBuffer& buffer, bool* drained) {
  const absl::Span<uint8_t> whole = buffer.whole();
  while (true) {
    const ssize_t n = read(tap_.get(), whole.data(), whole.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        *drained = true;
        return 0;
      }
      return Errno("read from the tap");
    }
    const size_t len = static_cast<size_t>(n) > header_size_ ? n - header_size_ : 0;
    // The first 10 bytes are the tap's; num_buffers (if any) stays as the
    // frontend zeroed it.
    VirtioNetHdr header;
    std::memcpy(&header, buffer.header.data(), header_size_);
    // The tap marks frames its stack had verified; a driver must not set
    // DATA_VALID on transmit.
    if ((header.flags & virtio::kVirtioNetHdrFDataValid) != 0) {
      header.flags &= static_cast<uint8_t>(~virtio::kVirtioNetHdrFDataValid);
      buffer.header[0] = header.flags;
    }
    // A frame filling the buffer may have been cut short; one whose offloads
    // were not negotiated (the tap's flags rule them out) cannot be
    // completed: dropped rather than sent half-made.
    const HeaderProblem problem =
        len < kMinFrame || len >= buffer.frame.size()
            ? HeaderProblem::kNone
            : CheckHeader(header, buffer.frame.first(len), features_, Direction::kToBackend);
    if (len < kMinFrame || len >= buffer.frame.size() || problem != HeaderProblem::kNone) {
      ++stats_.tap_read_dropped;
      VUNET_LOG_RATELIMITED(kWarning, "tap_bridge: dropped a %d-byte frame from the tap (%s)", len,
                            problem == HeaderProblem::kNone ? "size" : HeaderProblemName(problem));
      continue;
    }
    ++stats_.to_backend_frames;
    stats_.to_backend_bytes += len;
    if ((header.flags & virtio::kVirtioNetHdrFNeedsCsum) != 0) ++stats_.to_backend_partial;
    if (header.gso_type != kGsoNone) ++stats_.to_backend_gso;
    return len;
  }
}

absl::StatusOr<bool> TapBridge::PumpTap() {
  for (int round = 0; round < kTapRounds; ++round) {
    bool drained = false;
    absl::StatusOr<size_t> sent = frontend_->SendFramesFrom(
        kBatch, [this, &drained](const TxBuffer& buffer) { return ReadFromTap(buffer, &drained); });
    if (!sent.ok()) return sent.status();
    if (*sent > 0) ++stats_.tx_batches;
    if (drained) return false;
    if (*sent < kBatch) {
      // The ring is full. SendFramesFrom took back what had been returned,
      // which armed the notification for the next return; a fence, then one
      // more look, so a return that raced with the arming is not missed.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      absl::StatusOr<size_t> reclaimed = frontend_->ReclaimTx();
      if (!reclaimed.ok()) return reclaimed.status();
      if (*reclaimed == 0) {
        ++stats_.tx_ring_full;
        return true;
      }
    }
  }
  // The tap may hold more: poll says so next time round.
  return false;
}

void TapBridge::WriteToTap(const ReceivedFrame& frame) {
  // The kernel checks the header too, but would say only EINVAL.
  if (const HeaderProblem problem =
          CheckHeader(frame.header, frame.data, features_, Direction::kToGuest);
      problem != HeaderProblem::kNone) {
    ++stats_.backend_bad_headers;
    VUNET_LOG_RATELIMITED(kWarning,
                          "tap_bridge: dropped a %d-byte frame from the backend: %s (flags 0x%x "
                          "gso_type 0x%x gso_size %d hdr_len %d csum_start %d csum_offset %d)",
                          frame.data.size(), HeaderProblemName(problem), frame.header.flags,
                          frame.header.gso_type, frame.header.gso_size, frame.header.hdr_len,
                          frame.header.csum_start, frame.header.csum_offset);
    return;
  }
  VirtioNetHdr header = frame.header;
  header.num_buffers = 0;
  // DATA_VALID (the backend vouches for a checksum it may not have written)
  // makes a guest's virtio-net driver skip verification, but a tap ignores
  // the flag and the kernel would verify and drop. A partial checksum
  // (NEEDS_CSUM) is what a tap takes that the receiving stack also trusts.
  // Fine for a stack that delivers locally; one that forwarded the frame
  // would finish the checksum from a field that holds no pseudo-header sum.
  if ((header.flags & (virtio::kVirtioNetHdrFDataValid | virtio::kVirtioNetHdrFNeedsCsum)) ==
      virtio::kVirtioNetHdrFDataValid) {
    header.flags &= static_cast<uint8_t>(~virtio::kVirtioNetHdrFDataValid);
    if (std::optional<ChecksumField> field = FindChecksumField(frame.data)) {
      header.flags |= virtio::kVirtioNetHdrFNeedsCsum;
      header.csum_start = field->start;
      header.csum_offset = field->offset;
      ++stats_.data_valid_marked_partial;
    }
  }
  iovec iov[2] = {{&header, header_size_},
                  {const_cast<uint8_t*>(frame.data.data()), frame.data.size()}};
  const ssize_t n = writev(tap_.get(), iov, 2);
  if (n < 0) {
    ++stats_.tap_write_errors;
    VUNET_LOG_RATELIMITED(kWarning, "tap_bridge: the tap refused a %d-byte frame: %s",
                          frame.data.size(), strerror(errno));
    return;
  }
  ++stats_.to_tap_frames;
  stats_.to_tap_bytes += frame.data.size();
  if (header.gso_type != kGsoNone) ++stats_.to_tap_gso;
}

absl::Status TapBridge::PumpRx() {
  while (true) {
    absl::StatusOr<size_t> n = frontend_->ReceiveFrames(
        kBatch, absl::ZeroDuration(), [this](const ReceivedFrame& frame) { WriteToTap(frame); });
    if (!n.ok()) return n.status();
    if (*n == 0) return absl::OkStatus();
    // Consuming entries armed the next notification; the fence orders that
    // before the next look at the used index, so none is missed.
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

absl::Status TapBridge::Run(int stop_fd) {
  const int rx_call = frontend_->call_fd(kRxQueue);
  const int tx_call = frontend_->call_fd(kTxQueue);
  // Frames the backend queued before we started.
  if (absl::Status s = PumpRx(); !s.ok()) return s;
  bool tx_waiting = false;
  while (true) {
    pollfd fds[4];
    nfds_t count = 0;
    const auto add = [&fds, &count](int fd) {
      fds[count] = {.fd = fd, .events = POLLIN, .revents = 0};
      return count++;
    };
    const nfds_t stop_i = stop_fd >= 0 ? add(stop_fd) : 4;
    const nfds_t socket_i = add(frontend_->socket_fd());
    const nfds_t rx_i = add(rx_call);
    const nfds_t tx_i = add(tx_waiting ? tx_call : tap_.get());
    int timeout_ms = tx_waiting ? kTxWaitMs : -1;
    // Frames held back by loss injection are let go when they are due.
    const absl::Time release = frontend_->next_release();
    if (release != absl::InfiniteFuture()) {
      const int64_t ms = absl::ToInt64Milliseconds(
          absl::Ceil(std::max(release - absl::Now(), absl::ZeroDuration()), absl::Milliseconds(1)));
      if (timeout_ms < 0 || ms < timeout_ms) {
        timeout_ms = static_cast<int>(std::min<int64_t>(ms, 1000));
      }
    }
    const int ready = poll(fds, count, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return Errno("poll");
    }
    ++stats_.polls;
    if (ready == 0 && tx_waiting) ++stats_.tx_wait_timeouts;
    const bool release_due = release != absl::InfiniteFuture() && release <= absl::Now();
    if (stop_i < count && fds[stop_i].revents != 0) return absl::OkStatus();
    if (fds[socket_i].revents != 0) {
      char byte;
      const ssize_t peeked = recv(frontend_->socket_fd(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (peeked == 0 || (fds[socket_i].revents & (POLLHUP | POLLERR)) != 0) {
        return absl::UnavailableError("the backend closed the vhost-user connection");
      }
      if (peeked > 0) {
        // We ask for no backend-initiated requests; read and ignore one.
        absl::StatusOr<vu::Message> message = frontend_->ReadReply();
        if (!message.ok()) return message.status();
        VUNET_LOG_RATELIMITED(kWarning, "tap_bridge: ignored an unexpected message (request %d)",
                              message->header.request);
      }
    }
    if (fds[rx_i].revents != 0 || release_due) {
      uint64_t value;
      // Ours and non-blocking; cleared before the ring is read, so a later
      // notification is kept.
      if (fds[rx_i].revents != 0) (void)!read(rx_call, &value, sizeof(value));
      if (absl::Status s = PumpRx(); !s.ok()) return s;
    }
    if (tx_waiting || fds[tx_i].revents != 0 || release_due) {
      if (tx_waiting && fds[tx_i].revents != 0) {
        uint64_t value;
        (void)!read(tx_call, &value, sizeof(value));
      }
      absl::StatusOr<bool> full = PumpTap();
      if (!full.ok()) return full.status();
      tx_waiting = *full;
    }
  }
}

}  // namespace vunet::vu_frontend
