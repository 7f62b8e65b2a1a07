// The vhost-user wire format (the "vhost-user protocol" specification in
// QEMU's docs/interop/vhost-user.rst): a 12-byte header, a payload whose
// layout depends on the request, and file descriptors passed alongside with
// SCM_RIGHTS. Both directions are here: the backend reads requests and writes
// replies; a frontend (tools/vu_frontend) writes requests and reads replies.
//
// Every message read is validated before any field of its payload is used:
// the payload size must be what the request carries, the fd count what the
// request carries (surplus fds are closed, never leaked), and a queue index
// must name a queue that exists. A message that fails validation is reported
// with a status; whether to fail the request or drop the connection is the
// caller's decision (a header whose size cannot be trusted leaves the stream
// unframed, so the connection must go).

#ifndef VUNET_VU_MESSAGE_H_
#define VUNET_VU_MESSAGE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "virtio/guest_memory.h"

namespace vunet::vu {

// Front-end requests (numbers from the specification).
enum class Request : uint32_t {
  kNone = 0,
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
  kGetSharedObject = 41,
  kSetDeviceStateFd = 42,
  kCheckDeviceState = 43,
};

// "GET_FEATURES", or "UNKNOWN(n)" for a number outside the list (that view
// stays valid for the next seven unknown names this thread asks for).
std::string_view RequestName(uint32_t request);

// Header flags.
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;

// Virtio feature bits that belong to vhost-user itself.
inline constexpr unsigned kVhostFLogAll = 26;
inline constexpr unsigned kVhostUserFProtocolFeatures = 30;

// Protocol feature bits.
inline constexpr unsigned kProtocolFMq = 0;
inline constexpr unsigned kProtocolFLogShmfd = 1;
inline constexpr unsigned kProtocolFRarp = 2;
inline constexpr unsigned kProtocolFReplyAck = 3;
inline constexpr unsigned kProtocolFMtu = 4;
inline constexpr unsigned kProtocolFBackendReq = 5;
inline constexpr unsigned kProtocolFConfig = 9;
inline constexpr unsigned kProtocolFInflightShmfd = 12;
inline constexpr unsigned kProtocolFResetDevice = 13;
inline constexpr unsigned kProtocolFConfigureMemSlots = 15;
inline constexpr unsigned kProtocolFStatus = 16;
inline constexpr unsigned kProtocolFDeviceState = 19;

// The memory table of SET_MEM_TABLE holds at most this many regions.
inline constexpr size_t kMaxMemTableRegions = 8;
// The most fds one message carries (SET_MEM_TABLE's).
inline constexpr size_t kMaxFds = kMaxMemTableRegions;
// The largest payload accepted; anything larger is refused unread.
inline constexpr size_t kMaxPayloadSize = 4096;
// The most fds ReadMessage takes from one message before it gives up on the
// connection: kMaxFds and some slack, so a message with a few surplus fds is
// still read (and the surplus closed by ValidateRequest).
inline constexpr size_t kMaxReceivedFds = kMaxFds + 8;
// The most fds WriteMessage sends (more than kMaxReceivedFds, so tests can
// play a frontend that sends too many).
inline constexpr size_t kMaxSentFds = 64;
// SET_VRING_KICK/CALL/ERR: the low byte is the queue index, this bit says
// no fd is sent (polling).
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdMask = 1u << 8;
// VringAddr flags: log used ring writes.
inline constexpr uint32_t kVringFLog = 1;

struct Header {
  uint32_t request = 0;
  uint32_t flags = 0;
  uint32_t size = 0;  // Of the payload.
};
static_assert(sizeof(Header) == 12);

// Payloads (little-endian, packed as the specification lays them out).
struct VringState {
  uint32_t index = 0;
  uint32_t num = 0;
};
struct VringAddr {
  uint32_t index = 0;
  uint32_t flags = 0;
  uint64_t desc_user_addr = 0;
  uint64_t used_user_addr = 0;
  uint64_t avail_user_addr = 0;
  uint64_t log_guest_addr = 0;
};
static_assert(sizeof(VringAddr) == 40);
// Same layout as the wire's region: guest address, size, user address, offset.
using MemoryRegion = virtio::GuestMemoryRegion;
static_assert(sizeof(MemoryRegion) == 32);
struct MemoryTable {
  uint32_t nregions = 0;
  uint32_t padding = 0;
  MemoryRegion regions[kMaxMemTableRegions];
};
static_assert(sizeof(MemoryTable) == 8 + 32 * kMaxMemTableRegions);
struct SingleMemoryRegion {
  uint64_t padding = 0;
  MemoryRegion region;
};
struct Log {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
};
struct Inflight {
  uint64_t mmap_size = 0;
  uint64_t mmap_offset = 0;
  uint16_t num_queues = 0;
  uint16_t queue_size = 0;
};
struct DeviceConfigSpace {
  static constexpr size_t kMaxSize = 256;
  uint32_t offset = 0;
  uint32_t size = 0;
  uint32_t flags = 0;
  uint8_t region[kMaxSize] = {};
};
struct DeviceStateTransfer {
  uint32_t direction = 0;  // 0 save (back-end to front-end), 1 load.
  uint32_t phase = 0;      // 0: the device is stopped (the only phase).
};
// SET_DEVICE_STATE_FD's reply: an error in bits 0-7, and bit 8 set when the
// back-end returns no fd of its own.
inline constexpr uint64_t kDeviceStateErrorMask = 0xff;
inline constexpr uint64_t kDeviceStateNoFd = 1ull << 8;

// One message as read or to be written. Fds are owned: whatever the receiver
// does not take is closed with the message.
struct Message {
  Header header;
  alignas(8) uint8_t payload[kMaxPayloadSize] = {};
  absl::InlinedVector<UniqueFd, kMaxFds> fds;

  Request request() const { return static_cast<Request>(header.request); }
  bool need_reply() const { return header.flags & kFlagNeedReply; }

  // The payload as T; kInvalidArgument if the payload is shorter than
  // sizeof(T) bytes (ValidateRequest is what checks exact sizes).
  template <typename T>
  absl::StatusOr<T> PayloadAs() const {
    static_assert(std::is_trivially_copyable_v<T>);
    if (header.size < sizeof(T)) return absl::InvalidArgumentError("payload too short");
    T value;
    std::memcpy(&value, payload, sizeof(T));
    return value;
  }
  // Sets the payload to `value` and the header's size to match.
  template <typename T>
  void SetPayload(const T& value) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kMaxPayloadSize);
    std::memcpy(payload, &value, sizeof(T));
    header.size = sizeof(T);
  }
};

// Checks a request read by a backend against what its type requires: payload
// size, number of fds (surplus fds are closed and the message is accepted
// without them; missing fds fail), and, where a queue index is carried, that
// it is below `num_queues`. Unknown requests pass (the device answers them).
absl::Status ValidateRequest(Message* message, uint32_t num_queues);

// True for the requests whose reply is their own payload (GET_FEATURES,
// GET_VRING_BASE, SET_LOG_BASE, ...): the frontend waits for that reply
// whatever the flags say. For every other request a reply is sent only as a
// REPLY_ACK acknowledgement.
bool HasOwnReply(uint32_t request);

// Reads one message from a connected SOCK_STREAM UNIX socket (blocking),
// exactly the header and then exactly header.size payload bytes, so the
// stream stays framed. EINTR is retried. Fds are received close-on-exec.
// kUnavailable on orderly close (EOF before any byte); kDataLoss on a short
// message (EOF inside it), a version other than 1, a payload above
// kMaxPayloadSize (refused unread), more than kMaxReceivedFds fds or
// truncated ancillary data (whatever fds arrived are closed);
// kDeadlineExceeded if the socket's receive timeout (SO_RCVTIMEO) expires;
// kInternal for other socket errors. After any error the stream is unframed:
// drop the connection.
absl::StatusOr<Message> ReadMessage(int socket);

// Writes `header`, then `payload`, then sends `fds` (at most kMaxSentFds)
// with the first byte. The header's size is written as given, not derived
// from `payload`, so a test can play a frontend whose size lies. Partial
// writes and EINTR are retried; SIGPIPE is not raised (a closed peer gives
// kUnavailable).
absl::Status WriteMessage(int socket, const Header& header, absl::Span<const uint8_t> payload,
                          absl::Span<const int> fds = {});

// Writes `message`: its header, header.size payload bytes and its fds.
absl::Status WriteMessage(int socket, const Message& message);

// The reply to `request` carrying `payload` (flags: version and reply bit).
template <typename T>
absl::Status WriteReply(int socket, const Header& request, const T& payload) {
  static_assert(std::is_trivially_copyable_v<T>);
  const Header header{.request = request.request,
                      .flags = kVersion | kFlagReply,
                      .size = static_cast<uint32_t>(sizeof(T))};
  return WriteMessage(socket, header,
                      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&payload), sizeof(T)));
}

}  // namespace vunet::vu

#endif  // VUNET_VU_MESSAGE_H_
