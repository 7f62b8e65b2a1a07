#include "vu/device.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/log.h"

namespace vunet::vu {
namespace {

// The reply to `request` carrying `payload`.
template <typename T>
Message ReplyWith(const Header& request, const T& payload) {
  Message r;
  r.header = {.request = request.request, .flags = kVersion | kFlagReply, .size = 0};
  r.SetPayload(payload);
  return r;
}

// A u64 reply: every integer given is widened to the wire's 8 bytes.
Message Reply(const Header& request, uint64_t value) { return ReplyWith(request, value); }

bool IsAligned(uint64_t v, uint64_t alignment) { return v % alignment == 0; }

// The payload as T. Only for requests ValidateRequest passed, whose size it
// checked; never reads outside the payload buffer whatever the size says.
template <typename T>
T Payload(const Message& m) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kMaxPayloadSize);
  T value;
  std::memcpy(&value, m.payload, sizeof(T));
  return value;
}

// The requests Dispatch() implements.
bool Supported(Request r) {
  switch (r) {
    case Request::kGetFeatures:
    case Request::kSetFeatures:
    case Request::kSetOwner:
    case Request::kResetOwner:
    case Request::kResetDevice:
    case Request::kSetMemTable:
    case Request::kSetLogBase:
    case Request::kSetLogFd:
    case Request::kSetVringNum:
    case Request::kSetVringAddr:
    case Request::kSetVringBase:
    case Request::kGetVringBase:
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
    case Request::kGetProtocolFeatures:
    case Request::kSetProtocolFeatures:
    case Request::kGetQueueNum:
    case Request::kSetVringEnable:
    case Request::kSendRarp:
    case Request::kGetMaxMemSlots:
    case Request::kAddMemReg:
    case Request::kRemMemReg:
    case Request::kSetStatus:
    case Request::kGetStatus:
    case Request::kSetDeviceStateFd:
    case Request::kCheckDeviceState:
      return true;
    default:
      return false;
  }
}

// Kick, call and error fds are eventfds the data path reads or writes: one of
// another kind (a pipe nobody drains) or a blocking one (whose counter the
// frontend has filled) could stall the loop. Refuse other kinds where /proc
// tells, and make the fd non-blocking. The frontend shares the file
// description and could clear the flag and fill the counter again; only a
// signalling thread that may block would close that gap (a known limit).
//
// /proc is opened when the program starts and read through that fd, so the
// check still works once a sandbox has hidden the filesystem
// (tools/vunet/sandbox.h); "self" is resolved at each lookup, so it also
// survives a daemonizing fork.
const int g_proc_dir = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);

absl::Status PrepareEventFd(int fd) {
  char path[32];
  char target[64] = {};
  std::snprintf(path, sizeof(path), "self/fd/%d", fd);
  const ssize_t n = g_proc_dir >= 0 ? readlinkat(g_proc_dir, path, target, sizeof(target) - 1) : -1;
  if (n > 0 && std::string_view(target, n) != "anon_inode:[eventfd]") {
    return absl::InvalidArgumentError(absl::StrCat("fd is not an eventfd (", target, ")"));
  }
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("fcntl: ", strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DataPlane::BeginStateTransfer(StateDirection, UniqueFd) {
  return absl::UnimplementedError("this data plane keeps no state to transfer");
}

absl::Status DataPlane::CheckStateTransfer() {
  return absl::UnimplementedError("this data plane keeps no state to transfer");
}

Device::Device(DataPlane* data_plane, const Options& options)
    : data_plane_(data_plane),
      num_queues_(options.num_queues == 0 || options.num_queues > kMaxQueues ? 2
                                                                             : options.num_queues),
      offered_features_(kOfferedFeatures | (options.offloads & kOffloadFeatures)),
      offered_protocol_features_(kOfferedProtocolFeatures |
                                 (options.device_state ? kDeviceStateProtocolFeature : 0)) {
  if (num_queues_ != options.num_queues) {
    VUNET_LOG(kWarning, "vhost-user: %d queues asked for, 1 to %d possible; using %d",
              options.num_queues, kMaxQueues, num_queues_);
  }
}

Device::~Device() { StopAll(); }

absl::StatusOr<std::optional<Message>> Device::Handle(Message& m) {
  const uint32_t request = m.header.request;
  std::optional<Message> reply;
  absl::Status status = ValidateRequest(&m, num_queues_);
  if (!status.ok()) {
    // The frontend waits for this reply, and there is no right answer to a
    // malformed question: the connection must go. SET_LOG_BASE's reply is a
    // plain u64 and can say failure.
    if (HasOwnReply(request) && m.request() != Request::kSetLogBase) {
      last_status_ = status;
      return absl::InvalidArgumentError(
          absl::StrCat("vhost-user: cannot answer: ", status.message()));
    }
  } else {
    status = Dispatch(m, &reply);
    // A request we do not support whose answer is a payload of its own
    // (GET_CONFIG, GET_INFLIGHT_FD...): a frontend that sent it waits for a
    // reply we cannot form, so say so by dropping the connection.
    if (!Supported(m.request()) && HasOwnReply(request)) {
      last_status_ = status;
      VUNET_LOG_RATELIMITED(kWarning, "vhost-user: %s is not supported and needs its own reply",
                            RequestName(request));
      return absl::UnimplementedError(
          absl::StrFormat("vhost-user: cannot answer %s", RequestName(request)));
    }
  }
  if (!status.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "vhost-user: %s failed: %s", RequestName(request),
                          status.message());
  }
  last_status_ = status;
  if (reply.has_value()) return reply;
  if (m.request() == Request::kSetLogBase) return Reply(m.header, status.ok() ? 0 : 1);
  if (!m.need_reply()) return std::nullopt;
  // A request we do not support gets a failure reply whenever it asks for
  // one, negotiated or not: its frontend may be waiting. Others get an
  // acknowledgement where REPLY_ACK was negotiated, unless their own reply
  // was due (and the connection is gone by now).
  if (!Supported(m.request()) ||
      (has_protocol_feature(kProtocolFReplyAck) && !HasOwnReply(request))) {
    return Reply(m.header, status.ok() ? 0 : 1);
  }
  return std::nullopt;
}

absl::Status Device::Dispatch(Message& m, std::optional<Message>* reply) {
  // ValidateRequest checked each payload's size and fd count.
  switch (m.request()) {
    case Request::kGetFeatures:
      reply->emplace(Reply(m.header, offered_features_));
      return absl::OkStatus();
    case Request::kSetFeatures:
      return SetFeatures(Payload<uint64_t>(m));
    case Request::kGetProtocolFeatures:
      reply->emplace(Reply(m.header, offered_protocol_features_));
      return absl::OkStatus();
    case Request::kSetProtocolFeatures:
      return SetProtocolFeatures(Payload<uint64_t>(m));
    case Request::kSetOwner:
      return absl::OkStatus();
    case Request::kResetOwner:
    case Request::kResetDevice:
      Reset();
      return absl::OkStatus();
    case Request::kGetQueueNum:
      // Queue pairs, as virtio-net frontends read it.
      reply->emplace(Reply(m.header, num_queues_ / 2 > 0 ? num_queues_ / 2 : 1));
      return absl::OkStatus();
    case Request::kGetMaxMemSlots:
      reply->emplace(Reply(m.header, virtio::GuestMemory::kMaxRegions));
      return absl::OkStatus();
    case Request::kSetMemTable:
      return SetMemTable(m);
    case Request::kAddMemReg:
      return AddMemReg(m);
    case Request::kRemMemReg:
      return RemMemReg(m);
    case Request::kSetVringNum:
      return SetVringNum(Payload<VringState>(m));
    case Request::kSetVringAddr:
      return SetVringAddr(Payload<VringAddr>(m));
    case Request::kSetVringBase:
      return SetVringBase(Payload<VringState>(m));
    case Request::kGetVringBase: {
      absl::StatusOr<VringState> state = GetVringBase(Payload<VringState>(m));
      if (!state.ok()) return state.status();
      reply->emplace(ReplyWith(m.header, *state));
      return absl::OkStatus();
    }
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      return SetVringFd(m);
    case Request::kSetVringEnable:
      return SetVringEnable(Payload<VringState>(m));
    case Request::kSetLogBase:
      return SetLogBase(m);
    case Request::kSetLogFd:
      log_fd_ = std::move(m.fds[0]);
      return absl::OkStatus();
    case Request::kSetStatus: {
      const uint64_t value = Payload<uint64_t>(m);
      if (value > 0xff) return absl::InvalidArgumentError(absl::StrCat("status ", value));
      status_ = static_cast<uint8_t>(value);
      // Writing 0 is the driver's reset; it also clears our need for one.
      if (value == 0) needs_reset_ = false;
      return absl::OkStatus();
    }
    case Request::kGetStatus:
      reply->emplace(Reply(m.header, status()));
      return absl::OkStatus();
    case Request::kSendRarp:
      return SendRarp(Payload<uint64_t>(m));
    case Request::kSetDeviceStateFd: {
      const uint64_t result = SetDeviceStateFd(m);
      reply->emplace(Reply(m.header, result));
      return (result & kDeviceStateErrorMask) == 0
                 ? absl::OkStatus()
                 : absl::FailedPreconditionError("state transfer refused");
    }
    case Request::kCheckDeviceState: {
      const uint64_t result = CheckDeviceState();
      reply->emplace(Reply(m.header, result));
      return result == 0 ? absl::OkStatus() : absl::DataLossError("state transfer failed");
    }
    default:
      return absl::UnimplementedError("request not supported");
  }
}

uint64_t Device::SetDeviceStateFd(Message& m) {
  // We never hand back a channel of our own: the invalid-fd flag is always
  // set, with an error in the low byte or none.
  constexpr uint64_t kFailed = kDeviceStateNoFd | 1;
  if (!has_protocol_feature(kProtocolFDeviceState)) {
    VUNET_LOG_RATELIMITED(kWarning,
                          "vhost-user: SET_DEVICE_STATE_FD without the DEVICE_STATE "
                          "protocol feature negotiated");
    return kFailed;
  }
  const DeviceStateTransfer t = Payload<DeviceStateTransfer>(m);
  if (t.direction > 1 || t.phase != 0) {
    VUNET_LOG_RATELIMITED(kWarning,
                          "vhost-user: SET_DEVICE_STATE_FD direction %d phase %d: only save (0) "
                          "and load (1) in the stopped phase (0) exist",
                          t.direction, t.phase);
    return kFailed;
  }
  for (uint32_t i = 0; i < num_queues_; ++i) {
    if (queues_[i].vq.started()) {
      VUNET_LOG_RATELIMITED(kWarning,
                            "vhost-user: SET_DEVICE_STATE_FD with queue %d running: the "
                            "device must be suspended",
                            i);
      return kFailed;
    }
  }
  const auto direction = static_cast<DataPlane::StateDirection>(t.direction);
  transfer_.reset();
  if (absl::Status s = data_plane_->BeginStateTransfer(direction, std::move(m.fds[0])); !s.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "vhost-user: state %s refused: %s",
                          direction == DataPlane::StateDirection::kSave ? "save" : "load",
                          s.message());
    return kFailed;
  }
  transfer_ = direction;
  return kDeviceStateNoFd;
}

uint64_t Device::CheckDeviceState() {
  if (!transfer_.has_value()) {
    VUNET_LOG_RATELIMITED(kWarning, "vhost-user: CHECK_DEVICE_STATE with no transfer begun");
    return 1;
  }
  const DataPlane::StateDirection direction = *transfer_;
  transfer_.reset();
  if (absl::Status s = data_plane_->CheckStateTransfer(); !s.ok()) {
    VUNET_LOG(kWarning, "vhost-user: state %s failed: %s",
              direction == DataPlane::StateDirection::kSave ? "save" : "load", s.message());
    return 1;
  }
  return 0;
}

absl::Status Device::SetFeatures(uint64_t features) {
  if (features & ~offered_features_) {
    return absl::InvalidArgumentError(absl::StrFormat("features 0x%x include 0x%x, never offered",
                                                      features, features & ~offered_features_));
  }
  const bool changed = !features_set_ || features != acked_features_;
  if (changed) {
    // Event index, indirect descriptors, logging and whether rings start
    // enabled are all fixed at Virtqueue::Start: restart what runs.
    StopAll();
    acked_features_ = features;
    features_set_ = true;
    UpdateAll();
  }
  return absl::OkStatus();
}

absl::Status Device::SetProtocolFeatures(uint64_t features) {
  if (features & ~offered_protocol_features_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("protocol features 0x%x include 0x%x, never offered", features,
                        features & ~offered_protocol_features_));
  }
  acked_protocol_features_ = features;
  return absl::OkStatus();
}

absl::Status Device::SetMemTable(Message& m) {
  // Shorter than MemoryTable unless it has kMaxMemTableRegions regions; the
  // payload buffer holds all of it, and validation checked nregions.
  const MemoryTable table = Payload<MemoryTable>(m);
  // Validated: 1 to kMaxMemTableRegions regions, one fd each. Build the new
  // table aside, so a bad region leaves the old one in place.
  virtio::GuestMemory memory;
  for (uint32_t i = 0; i < table.nregions; ++i) {
    if (absl::Status s = memory.AddRegion(table.regions[i], m.fds[i].get()); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("region ", i, ": ", s.message()));
    }
  }
  StopAll();  // Before the old mappings go.
  memory_ = std::move(memory);
  WarnIfUnsealed();
  UpdateAll();
  VUNET_LOG_RATELIMITED(kInfo, "vhost-user: memory table of %d regions", table.nregions);
  return absl::OkStatus();
}

absl::Status Device::AddMemReg(Message& m) {
  const SingleMemoryRegion r = Payload<SingleMemoryRegion>(m);
  StopAll();
  absl::Status s = memory_.AddRegion(r.region, m.fds[0].get());
  if (s.ok()) WarnIfUnsealed();
  UpdateAll();
  return s;
}

absl::Status Device::RemMemReg(const Message& m) {
  const SingleMemoryRegion r = Payload<SingleMemoryRegion>(m);
  StopAll();  // Before the region is unmapped.
  absl::Status s = memory_.RemoveRegion(r.region);
  UpdateAll();
  return s;
}

absl::Status Device::SetVringNum(const VringState& s) {
  if (s.num == 0 || s.num > kMaxQueueSize || !std::has_single_bit(s.num)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "queue %d: size %d is not a power of two from 1 to %d", s.index, s.num, kMaxQueueSize));
  }
  Queue& q = queues_[s.index];
  Stop(s.index);
  q.num = s.num;
  // The ring parts' sizes follow num: check them again.
  if (q.addr_set) {
    if (absl::Status t = TranslateRing(q); !t.ok()) {
      VUNET_LOG_RATELIMITED(kWarning, "vhost-user: queue %d: addresses no longer fit: %s", s.index,
                            t.message());
    }
  }
  Update(s.index);
  return absl::OkStatus();
}

absl::Status Device::TranslateRing(Queue& q) {
  q.desc = q.avail = q.used = nullptr;
  if (q.num == 0 || !q.addr_set) return absl::FailedPreconditionError("ring not configured");
  absl::StatusOr<void*> desc =
      memory_.TranslateUva(q.addr.desc_user_addr, virtio::VirtqDescTableBytes(q.num));
  if (!desc.ok())
    return absl::OutOfRangeError(absl::StrCat("descriptor table: ", desc.status().message()));
  absl::StatusOr<void*> avail =
      memory_.TranslateUva(q.addr.avail_user_addr, virtio::VirtqAvailRingBytes(q.num));
  if (!avail.ok())
    return absl::OutOfRangeError(absl::StrCat("avail ring: ", avail.status().message()));
  absl::StatusOr<void*> used =
      memory_.TranslateUva(q.addr.used_user_addr, virtio::VirtqUsedRingBytes(q.num));
  if (!used.ok())
    return absl::OutOfRangeError(absl::StrCat("used ring: ", used.status().message()));
  q.desc = *desc;
  q.avail = *avail;
  q.used = *used;
  return absl::OkStatus();
}

absl::Status Device::SetVringAddr(const VringAddr& a) {
  Queue& q = queues_[a.index];
  // The used ring's log address is only used for logging, but a value near
  // 2^64 would wrap and mark the wrong pages.
  if ((a.flags & kVringFLog) &&
      a.log_guest_addr > UINT64_MAX - virtio::VirtqUsedRingBytes(kMaxQueueSize)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "queue %d: used ring log address 0x%x overflows", a.index, a.log_guest_addr));
  }
  if (memory_.region_count() == 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("queue %d: ring addresses before any memory table", a.index));
  }
  if (q.num == 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("queue %d: ring addresses before the ring size", a.index));
  }
  if (!IsAligned(a.desc_user_addr, 16) || !IsAligned(a.avail_user_addr, 2) ||
      !IsAligned(a.used_user_addr, 4)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("queue %d: misaligned ring (desc 0x%x, avail 0x%x, used 0x%x)", a.index,
                        a.desc_user_addr, a.avail_user_addr, a.used_user_addr));
  }
  // Check the new addresses before anything changes.
  Queue probe;
  probe.num = q.num;
  probe.addr = a;
  probe.addr_set = true;
  if (absl::Status s = TranslateRing(probe); !s.ok()) {
    return absl::OutOfRangeError(
        absl::StrFormat("queue %d: %s is outside guest memory", a.index, s.message()));
  }
  Stop(a.index);
  q.addr = a;
  q.addr_set = true;
  q.desc = probe.desc;
  q.avail = probe.avail;
  q.used = probe.used;
  Update(a.index);
  return absl::OkStatus();
}

absl::Status Device::SetVringBase(const VringState& s) {
  if (s.num > UINT16_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("queue %d: base %d above a split ring's 16 bits", s.index, s.num));
  }
  Stop(s.index);
  queues_[s.index].base = static_cast<uint16_t>(s.num);
  Update(s.index);
  return absl::OkStatus();
}

absl::StatusOr<VringState> Device::GetVringBase(const VringState& s) {
  Queue& q = queues_[s.index];
  Stop(s.index);
  // The ring is stopped until the next SET_VRING_KICK.
  q.started = false;
  q.broken = false;
  q.kick.reset();
  VUNET_LOG_RATELIMITED(kInfo, "vhost-user: queue %d stopped at %d", s.index, q.base);
  return VringState{.index = s.index, .num = q.base};
}

absl::Status Device::SetVringFd(Message& m) {
  const uint64_t value = Payload<uint64_t>(m);
  const uint32_t i = static_cast<uint32_t>(value & kVringIndexMask);
  // Validated: one fd unless the no-fd bit is set.
  UniqueFd fd = m.fds.empty() ? UniqueFd() : std::move(m.fds[0]);
  if (fd.valid()) {
    if (absl::Status s = PrepareEventFd(fd.get()); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("queue %d: %s: %s", i, RequestName(m.header.request), s.message()));
    }
  }
  Queue& q = queues_[i];
  switch (m.request()) {
    case Request::kSetVringKick:
      if (!fd.valid()) {
        return absl::UnimplementedError(
            absl::StrFormat("queue %d: polling without a kick fd is not supported", i));
      }
      Stop(i);
      q.kick = std::move(fd);
      q.started = true;
      q.broken = false;
      Update(i);
      return absl::OkStatus();
    case Request::kSetVringCall:
      // The running queue holds the call fd: stop it before the fd closes.
      Stop(i);
      q.call = std::move(fd);
      Update(i);
      return absl::OkStatus();
    default:
      q.err = std::move(fd);
      return absl::OkStatus();
  }
}

absl::Status Device::SetVringEnable(const VringState& s) {
  if (s.num > 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("queue %d: enable value %d is neither 0 nor 1", s.index, s.num));
  }
  queues_[s.index].enabled = s.num == 1;
  Update(s.index);
  return absl::OkStatus();
}

absl::Status Device::SetLogBase(Message& m) {
  const Log log = Payload<Log>(m);
  absl::StatusOr<std::unique_ptr<virtio::DirtyLog>> mapped =
      virtio::DirtyLog::Map(m.fds[0].get(), log.mmap_size, log.mmap_offset);
  if (!mapped.ok()) return mapped.status();
  StopAll();  // Before the old log is unmapped.
  log_ = std::move(*mapped);
  UpdateAll();
  VUNET_LOG_RATELIMITED(kInfo, "vhost-user: dirty log of %d bytes", log.mmap_size);
  return absl::OkStatus();
}

absl::Status Device::SendRarp(uint64_t mac) {
  std::array<uint8_t, 6> bytes;
  std::memcpy(bytes.data(), &mac, bytes.size());
  VUNET_LOG_RATELIMITED(kInfo, "vhost-user: asked to announce %02x:%02x:%02x:%02x:%02x:%02x",
                        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]);
  rarp_ = bytes;
  return absl::OkStatus();
}

void Device::Reset() {
  StopAll();
  for (Queue& q : queues_) {
    q.num = 0;
    q.addr_set = false;
    q.addr = {};
    q.desc = q.avail = q.used = nullptr;
    q.base = 0;
    q.kick.reset();
    q.call.reset();
    q.err.reset();
    q.started = q.enabled = q.broken = false;
  }
  acked_features_ = 0;
  features_set_ = false;
  status_ = 0;
  needs_reset_ = false;
  memory_.Clear();
  log_.reset();
  log_fd_.reset();
  rarp_.reset();
}

uint8_t Device::status() const {
  return static_cast<uint8_t>(status_ | (needs_reset_ ? kStatusDeviceNeedsReset : 0));
}

virtio::DirtyLog* Device::dirty_log() const {
  return has_feature(kVhostFLogAll) ? log_.get() : nullptr;
}

std::optional<std::array<uint8_t, 6>> Device::TakeRarpRequest() { return std::exchange(rarp_, {}); }

void Device::ReportBroken(uint32_t index) {
  if (index >= num_queues_) return;
  Queue& q = queues_[index];
  VUNET_LOG_RATELIMITED(
      kError, "vhost-user: queue %d broken, device needs reset: %s", index,
      q.vq.broken() ? q.vq.broken_reason() : std::string("reported by the data plane"));
  needs_reset_ = true;
  q.broken = true;
  Stop(index);
  if (q.err.valid()) (void)eventfd_write(q.err.get(), 1);
}

bool Device::ShouldRun(const Queue& q) const {
  const bool enabled = q.enabled || !has_feature(kVhostUserFProtocolFeatures);
  return memory_.region_count() > 0 && q.num != 0 && q.desc != nullptr && q.kick.valid() &&
         q.started && enabled && !q.broken;
}

void Device::Update(uint32_t i) {
  Queue& q = queues_[i];
  const bool should_run = ShouldRun(q);
  if (q.vq.started() && !should_run) Stop(i);
  if (q.vq.started() || !should_run) return;
  virtio::DirtyLog* log = dirty_log();
  const virtio::Virtqueue::Config config{
      .size = q.num,
      .desc = q.desc,
      .avail = q.avail,
      .used = q.used,
      .event_idx = has_feature(virtio::kVirtioRingFEventIdx),
      .indirect_desc = has_feature(virtio::kVirtioRingFIndirectDesc),
      .avail_base = q.base,
      .dirty_log = log,
      .log_used = log != nullptr && (q.addr.flags & kVringFLog) != 0,
      .used_gpa = q.addr.log_guest_addr,
  };
  if (absl::Status s = q.vq.Start(&memory_, config); !s.ok()) {
    VUNET_LOG_RATELIMITED(kWarning, "vhost-user: queue %d cannot start: %s", i, s.message());
    return;
  }
  q.vq.set_call_fd(q.call.get());
  VUNET_LOG_RATELIMITED(kInfo, "vhost-user: queue %d running (size %d, base %d%s)", i, q.num,
                        q.base, log != nullptr ? ", logging" : "");
  data_plane_->OnQueueStart(i, &q.vq, q.kick.get());
}

void Device::Stop(uint32_t i) {
  Queue& q = queues_[i];
  if (!q.vq.started()) return;
  data_plane_->OnQueueStop(i);
  // Chains popped and never returned are served again on restart.
  q.base = static_cast<uint16_t>(q.vq.last_avail_idx() - q.vq.in_use());
  q.vq.Stop();
  q.vq.set_call_fd(-1);
}

void Device::StopAll() {
  for (uint32_t i = 0; i < num_queues_; ++i) Stop(i);
}

void Device::UpdateAll() {
  for (uint32_t i = 0; i < num_queues_; ++i) {
    Queue& q = queues_[i];
    if (q.addr_set && q.num != 0) {
      if (absl::Status s = TranslateRing(q); !s.ok() && memory_.region_count() > 0) {
        VUNET_LOG_RATELIMITED(kWarning, "vhost-user: queue %d: %s is outside guest memory", i,
                              s.message());
      }
    }
    Update(i);
  }
}

void Device::WarnIfUnsealed() const {
  if (!memory_.sealed()) {
    VUNET_LOG_RATELIMITED(
        kWarning,
        "vhost-user: guest memory is not sealed against shrinking; a frontend that "
        "shrinks it makes our next access fault with SIGBUS (contained where "
        "virtio::ContainGuestMemoryFaults runs: the queues break and need a reset; use "
        "memory-backend-memfd with seal=on)");
  }
}

}  // namespace vunet::vu
