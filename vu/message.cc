#include "vu/message.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/iov.h"

namespace vunet::vu {
namespace {

using Fds = absl::InlinedVector<UniqueFd, kMaxFds>;

// What a request carries: payload size range, fd count range, and where its
// queue index is.
enum class IndexAt { kNone, kVringState, kVringAddr, kVringFd };
struct Rule {
  uint32_t min_size = 0;
  uint32_t max_size = 0;
  uint32_t min_fds = 0;
  uint32_t max_fds = 0;
  IndexAt index = IndexAt::kNone;
};

constexpr Rule kNoPayload{0, 0, 0, 0};
constexpr Rule kU64{8, 8, 0, 0};
constexpr Rule kVringStateRule{8, 8, 0, 0, IndexAt::kVringState};

// nullopt-like: max_size of UINT32_MAX marks an unknown request.
constexpr Rule kUnknown{0, UINT32_MAX, 0, UINT32_MAX};

Rule RuleFor(uint32_t request) {
  switch (static_cast<Request>(request)) {
    case Request::kGetFeatures:
    case Request::kSetOwner:
    case Request::kResetOwner:
    case Request::kGetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kPostcopyAdvise:
    case Request::kPostcopyListen:
    case Request::kPostcopyEnd:
    case Request::kResetDevice:
    case Request::kGetMaxMemSlots:
    case Request::kGetStatus:
    case Request::kCheckDeviceState:
      return kNoPayload;
    case Request::kSetFeatures:
    case Request::kSetProtocolFeatures:
    case Request::kSendRarp:
    case Request::kNetSetMtu:
    case Request::kSetStatus:
    case Request::kCloseCryptoSession:
      return kU64;
    case Request::kSetMemTable:  // Checked against nregions separately.
      return {8 + sizeof(MemoryRegion), sizeof(MemoryTable), 1, kMaxMemTableRegions};
    case Request::kSetLogBase:
      return {sizeof(Log), sizeof(Log), 1, 1};
    case Request::kSetLogFd:
    case Request::kSetBackendReqFd:
    case Request::kGpuSetSocket:
      return {0, 0, 1, 1};
    case Request::kSetVringNum:
    case Request::kSetVringBase:
    case Request::kGetVringBase:
    case Request::kSetVringEnable:
    case Request::kSetVringEndian:
    case Request::kVringKick:
      return kVringStateRule;
    case Request::kSetVringAddr:
      return {sizeof(VringAddr), sizeof(VringAddr), 0, 0, IndexAt::kVringAddr};
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:  // The fd count depends on the payload.
      return {8, 8, 0, 1, IndexAt::kVringFd};
    case Request::kIotlbMsg:
      // iova, size, uaddr, perm, type: 26 bytes, 32 as C compilers pad it.
      return {26, 32, 0, 0};
    case Request::kGetConfig:
    case Request::kSetConfig:
      return {12, 12 + DeviceConfigSpace::kMaxSize, 0, 0};
    case Request::kCreateCryptoSession:
      return {0, kMaxPayloadSize, 0, 0};
    case Request::kGetInflightFd:
      // Two u64 and two u16: 20 bytes, 24 as C compilers pad it.
      return {20, 24, 0, 0};
    case Request::kSetInflightFd:
      return {20, 24, 1, 1};
    case Request::kAddMemReg:
      return {sizeof(SingleMemoryRegion), sizeof(SingleMemoryRegion), 1, 1};
    case Request::kRemMemReg:
      // The specification sends no fd; QEMU sends one anyway.
      return {sizeof(SingleMemoryRegion), sizeof(SingleMemoryRegion), 0, 1};
    case Request::kGetSharedObject:
      return {16, 16, 0, 0};
    case Request::kSetDeviceStateFd:
      return {sizeof(DeviceStateTransfer), sizeof(DeviceStateTransfer), 1, 1};
    case Request::kNone:
      break;
  }
  return kUnknown;
}

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint64_t LoadU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

absl::Status Invalid(const Message& m, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: %s", RequestName(m.header.request), what));
}

// Closes fds beyond the first `keep`.
void CloseSurplus(Message* m, size_t keep) {
  if (m->fds.size() > keep) m->fds.erase(m->fds.begin() + keep, m->fds.end());
}

// Receives at most `len` bytes into `buf`, appending any fds that come with
// them to `fds`. Returns the byte count (0 at EOF).
absl::StatusOr<size_t> ReceiveSome(int socket, uint8_t* buf, size_t len, Fds* fds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxReceivedFds)];
  iovec iov{buf, len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return absl::DeadlineExceededError("vhost-user: receive timed out inside a message");
    }
    return absl::InternalError(absl::StrCat("vhost-user: recvmsg: ", strerror(errno)));
  }
  // Own every fd that arrived before looking at anything else, so that each
  // error below closes them.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const uint8_t* data = CMSG_DATA(c);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
      fds->emplace_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    return absl::DataLossError(
        absl::StrCat("vhost-user: ancillary data truncated (more than ", kMaxReceivedFds, " fds)"));
  }
  if (fds->size() > kMaxReceivedFds) {
    return absl::DataLossError(
        absl::StrCat("vhost-user: more than ", kMaxReceivedFds, " fds with one message"));
  }
  return static_cast<size_t>(n);
}

// The time by which a message that has begun must be complete: the socket's
// receive timeout (SO_RCVTIMEO), counted from the start of the message.
class Deadline {
 public:
  explicit Deadline(int socket) {
    timeval tv{};
    socklen_t len = sizeof(tv);
    if (getsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0 &&
        (tv.tv_sec > 0 || tv.tv_usec > 0)) {
      end_ = std::chrono::steady_clock::now() + std::chrono::seconds(tv.tv_sec) +
             std::chrono::microseconds(tv.tv_usec);
    }
  }

  // Waits until `socket` is readable or the deadline passes.
  absl::Status WaitReadable(int socket) const {
    if (!end_) return absl::OkStatus();  // No timeout set: block as asked.
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          *end_ - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{.fd = socket, .events = POLLIN, .revents = 0};
      const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX)));
      if (r > 0) return absl::OkStatus();
      if (r < 0 && errno != EINTR) {
        return absl::InternalError(absl::StrCat("vhost-user: poll: ", strerror(errno)));
      }
    }
    return absl::DeadlineExceededError("vhost-user: message not complete in time");
  }

 private:
  std::optional<std::chrono::steady_clock::time_point> end_;
};

// Receives exactly `len` bytes. `what` names the part for messages; `first`
// says whether EOF before any byte is an orderly close.
absl::Status ReceiveExact(int socket, uint8_t* buf, size_t len, Fds* fds, bool first,
                          std::string_view what, const Deadline& deadline) {
  size_t done = 0;
  while (done < len) {
    // Once a message has begun, the whole of it must arrive before the
    // deadline: a per-call timeout alone would let a frontend trickle one
    // byte at a time and hold the loop for hours.
    if (!(first && done == 0)) {
      if (absl::Status s = deadline.WaitReadable(socket); !s.ok()) return s;
    }
    absl::StatusOr<size_t> n = ReceiveSome(socket, buf + done, len - done, fds);
    if (!n.ok()) return n.status();
    if (*n == 0) {
      if (first && done == 0) return absl::UnavailableError("vhost-user: frontend closed");
      return absl::DataLossError(absl::StrFormat(
          "vhost-user: connection closed after %d of %d %s bytes", done, len, what));
    }
    done += *n;
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view RequestName(uint32_t request) {
  switch (static_cast<Request>(request)) {
    case Request::kNone:
      return "NONE";
    case Request::kGetFeatures:
      return "GET_FEATURES";
    case Request::kSetFeatures:
      return "SET_FEATURES";
    case Request::kSetOwner:
      return "SET_OWNER";
    case Request::kResetOwner:
      return "RESET_OWNER";
    case Request::kSetMemTable:
      return "SET_MEM_TABLE";
    case Request::kSetLogBase:
      return "SET_LOG_BASE";
    case Request::kSetLogFd:
      return "SET_LOG_FD";
    case Request::kSetVringNum:
      return "SET_VRING_NUM";
    case Request::kSetVringAddr:
      return "SET_VRING_ADDR";
    case Request::kSetVringBase:
      return "SET_VRING_BASE";
    case Request::kGetVringBase:
      return "GET_VRING_BASE";
    case Request::kSetVringKick:
      return "SET_VRING_KICK";
    case Request::kSetVringCall:
      return "SET_VRING_CALL";
    case Request::kSetVringErr:
      return "SET_VRING_ERR";
    case Request::kGetProtocolFeatures:
      return "GET_PROTOCOL_FEATURES";
    case Request::kSetProtocolFeatures:
      return "SET_PROTOCOL_FEATURES";
    case Request::kGetQueueNum:
      return "GET_QUEUE_NUM";
    case Request::kSetVringEnable:
      return "SET_VRING_ENABLE";
    case Request::kSendRarp:
      return "SEND_RARP";
    case Request::kNetSetMtu:
      return "NET_SET_MTU";
    case Request::kSetBackendReqFd:
      return "SET_BACKEND_REQ_FD";
    case Request::kIotlbMsg:
      return "IOTLB_MSG";
    case Request::kSetVringEndian:
      return "SET_VRING_ENDIAN";
    case Request::kGetConfig:
      return "GET_CONFIG";
    case Request::kSetConfig:
      return "SET_CONFIG";
    case Request::kCreateCryptoSession:
      return "CREATE_CRYPTO_SESSION";
    case Request::kCloseCryptoSession:
      return "CLOSE_CRYPTO_SESSION";
    case Request::kPostcopyAdvise:
      return "POSTCOPY_ADVISE";
    case Request::kPostcopyListen:
      return "POSTCOPY_LISTEN";
    case Request::kPostcopyEnd:
      return "POSTCOPY_END";
    case Request::kGetInflightFd:
      return "GET_INFLIGHT_FD";
    case Request::kSetInflightFd:
      return "SET_INFLIGHT_FD";
    case Request::kGpuSetSocket:
      return "GPU_SET_SOCKET";
    case Request::kResetDevice:
      return "RESET_DEVICE";
    case Request::kVringKick:
      return "VRING_KICK";
    case Request::kGetMaxMemSlots:
      return "GET_MAX_MEM_SLOTS";
    case Request::kAddMemReg:
      return "ADD_MEM_REG";
    case Request::kRemMemReg:
      return "REM_MEM_REG";
    case Request::kSetStatus:
      return "SET_STATUS";
    case Request::kGetStatus:
      return "GET_STATUS";
    case Request::kGetSharedObject:
      return "GET_SHARED_OBJECT";
    case Request::kSetDeviceStateFd:
      return "SET_DEVICE_STATE_FD";
    case Request::kCheckDeviceState:
      return "CHECK_DEVICE_STATE";
  }
  // A few buffers per thread, used in turn, so that several unknown names
  // can appear in one log line.
  thread_local std::string unknown[8];
  thread_local unsigned next = 0;
  std::string& name = unknown[next++ % 8];
  name = absl::StrCat("UNKNOWN(", request, ")");
  return name;
}

bool HasOwnReply(uint32_t request) {
  switch (static_cast<Request>(request)) {
    case Request::kGetFeatures:
    case Request::kGetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kGetVringBase:
    case Request::kSetLogBase:
    case Request::kGetConfig:
    case Request::kCreateCryptoSession:
    case Request::kPostcopyAdvise:
    case Request::kPostcopyEnd:
    case Request::kGetInflightFd:
    case Request::kGetMaxMemSlots:
    case Request::kGetStatus:
    case Request::kGetSharedObject:
    case Request::kSetDeviceStateFd:
    case Request::kCheckDeviceState:
      return true;
    default:
      return false;
  }
}

absl::Status ValidateRequest(Message* m, uint32_t num_queues) {
  const Rule rule = RuleFor(m->header.request);
  if (rule.max_size == UINT32_MAX) return absl::OkStatus();  // Unknown: the device answers.
  const uint32_t size = m->header.size;
  if (size < rule.min_size || size > rule.max_size) {
    return Invalid(
        *m, rule.min_size == rule.max_size
                ? absl::StrFormat("payload of %d bytes, expected %d", size, rule.min_size)
                : absl::StrFormat("payload of %d bytes, expected %d to %d", size, rule.min_size,
                                  rule.max_size));
  }
  uint32_t min_fds = rule.min_fds;
  uint32_t max_fds = rule.max_fds;
  uint32_t index = 0;
  switch (rule.index) {
    case IndexAt::kNone:
      break;
    case IndexAt::kVringState:
      index = LoadU32(m->payload + offsetof(VringState, index));
      break;
    case IndexAt::kVringAddr:
      index = LoadU32(m->payload + offsetof(VringAddr, index));
      break;
    case IndexAt::kVringFd: {
      const uint64_t value = LoadU64(m->payload);
      if (value & ~(kVringIndexMask | kVringNoFdMask)) {
        return Invalid(*m, absl::StrFormat("unknown bits in 0x%x", value));
      }
      index = static_cast<uint32_t>(value & kVringIndexMask);
      const uint32_t fds = (value & kVringNoFdMask) ? 0 : 1;
      min_fds = max_fds = fds;
      break;
    }
  }
  if (m->request() == Request::kSetMemTable) {
    const uint32_t nregions = LoadU32(m->payload);
    if (nregions == 0 || nregions > kMaxMemTableRegions) {
      return Invalid(
          *m, absl::StrFormat("%d regions, expected 1 to %d", nregions, kMaxMemTableRegions));
    }
    if (size != 8 + sizeof(MemoryRegion) * nregions) {
      return Invalid(*m, absl::StrFormat("payload of %d bytes for %d regions", size, nregions));
    }
    min_fds = max_fds = nregions;
  }
  if (rule.index != IndexAt::kNone && index >= num_queues) {
    return Invalid(*m, absl::StrFormat("queue %d does not exist (%d queues)", index, num_queues));
  }
  if (m->fds.size() < min_fds) {
    return Invalid(*m, absl::StrFormat("%d fds, expected %d", m->fds.size(), min_fds));
  }
  CloseSurplus(m, max_fds);
  return absl::OkStatus();
}

absl::StatusOr<Message> ReadMessage(int socket) {
  Message m;
  const Deadline deadline(socket);
  if (absl::Status s = ReceiveExact(socket, reinterpret_cast<uint8_t*>(&m.header), sizeof(m.header),
                                    &m.fds, /*first=*/true, "header", deadline);
      !s.ok()) {
    return s;
  }
  if ((m.header.flags & kVersionMask) != kVersion) {
    return absl::DataLossError(absl::StrFormat("vhost-user: %s with version %d, expected %d",
                                               RequestName(m.header.request),
                                               m.header.flags & kVersionMask, kVersion));
  }
  if (m.header.size > kMaxPayloadSize) {
    return absl::DataLossError(absl::StrFormat("vhost-user: %s with a %d-byte payload, above %d",
                                               RequestName(m.header.request), m.header.size,
                                               kMaxPayloadSize));
  }
  if (absl::Status s = ReceiveExact(socket, m.payload, m.header.size, &m.fds, /*first=*/false,
                                    "payload", deadline);
      !s.ok()) {
    return s;
  }
  return m;
}

absl::Status WriteMessage(int socket, const Header& header, absl::Span<const uint8_t> payload,
                          absl::Span<const int> fds) {
  if (fds.size() > kMaxSentFds) {
    return absl::InvalidArgumentError(absl::StrCat("vhost-user: more than ", kMaxSentFds, " fds"));
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxSentFds)];
  iovec iov[2] = {{const_cast<Header*>(&header), sizeof(header)},
                  {const_cast<uint8_t*>(payload.data()), payload.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = payload.empty() ? 1 : 2;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  size_t count = msg.msg_iovlen;
  while (count > 0) {
    const ssize_t n = sendmsg(socket, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return absl::UnavailableError("vhost-user: peer closed the connection");
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return absl::DeadlineExceededError("vhost-user: send timed out");
      }
      return absl::InternalError(absl::StrCat("vhost-user: sendmsg: ", strerror(errno)));
    }
    // The fds went with the first byte; skip what was sent.
    msg.msg_control = nullptr;
    msg.msg_controllen = 0;
    msg.msg_iov = IovConsume(msg.msg_iov, &count, static_cast<size_t>(n));
    msg.msg_iovlen = count;
  }
  return absl::OkStatus();
}

absl::Status WriteMessage(int socket, const Message& message) {
  int fds[kMaxSentFds];
  if (message.fds.size() > kMaxSentFds) {
    return absl::InvalidArgumentError(absl::StrCat("vhost-user: more than ", kMaxSentFds, " fds"));
  }
  for (size_t i = 0; i < message.fds.size(); ++i) fds[i] = message.fds[i].get();
  const size_t size = message.header.size < kMaxPayloadSize ? message.header.size : kMaxPayloadSize;
  return WriteMessage(socket, message.header, absl::MakeConstSpan(message.payload, size),
                      absl::MakeConstSpan(fds, message.fds.size()));
}

}  // namespace vunet::vu
