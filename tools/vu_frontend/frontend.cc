#include "tools/vu_frontend/frontend.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/eventfd.h"

namespace vunet::vu_frontend {
namespace {

using virtio::VirtqDesc;
using virtio::testing::DriverMemory;
using virtio::testing::DriverQueue;
using Buffer = DriverQueue::Buffer;

constexpr uint64_t kPage = 4096;

uint64_t AlignUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

absl::Status ErrnoError(const char* what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

// RequestName returns std::string_view, which Debian's Abseil does not take.
std::string Name(uint32_t request) { return std::string(vu::RequestName(request)); }
std::string Name(vu::Request request) { return Name(static_cast<uint32_t>(request)); }

template <typename T>
absl::Span<const uint8_t> AsBytes(const T& value) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&value), sizeof(T));
}

std::string BitNames(uint64_t bits, absl::Span<const std::pair<unsigned, const char*>> names) {
  std::vector<std::string> parts;
  for (const auto& [bit, name] : names) {
    if (bits & Bit(bit)) {
      parts.push_back(name);
      bits &= ~Bit(bit);
    }
  }
  if (bits != 0) parts.push_back(absl::StrFormat("0x%x", bits));
  if (parts.empty()) return "none";
  return absl::StrJoin(parts, "|");
}

}  // namespace

std::string FeatureNames(uint64_t features) {
  static constexpr std::pair<unsigned, const char*> kNames[] = {
      {kVirtioNetFCsum, "CSUM"},
      {kVirtioNetFGuestCsum, "GUEST_CSUM"},
      {kVirtioNetFMtu, "MTU"},
      {kVirtioNetFMac, "MAC"},
      {kVirtioNetFGuestTso4, "GUEST_TSO4"},
      {kVirtioNetFGuestTso6, "GUEST_TSO6"},
      {kVirtioNetFGuestEcn, "GUEST_ECN"},
      {kVirtioNetFGuestUfo, "GUEST_UFO"},
      {kVirtioNetFHostTso4, "HOST_TSO4"},
      {kVirtioNetFHostTso6, "HOST_TSO6"},
      {kVirtioNetFHostEcn, "HOST_ECN"},
      {kVirtioNetFHostUfo, "HOST_UFO"},
      {kVirtioNetFMrgRxbuf, "MRG_RXBUF"},
      {kVirtioNetFStatus, "STATUS"},
      {kVirtioNetFMq, "MQ"},
      {vu::kVhostFLogAll, "LOG_ALL"},
      {virtio::kVirtioRingFIndirectDesc, "INDIRECT_DESC"},
      {virtio::kVirtioRingFEventIdx, "EVENT_IDX"},
      {vu::kVhostUserFProtocolFeatures, "PROTOCOL_FEATURES"},
      {virtio::kVirtioFVersion1, "VERSION_1"},
      {kVirtioNetFGuestUso4, "GUEST_USO4"},
      {kVirtioNetFGuestUso6, "GUEST_USO6"},
      {kVirtioNetFHostUso, "HOST_USO"},
  };
  return BitNames(features, kNames);
}

std::string ProtocolFeatureNames(uint64_t protocol_features) {
  static constexpr std::pair<unsigned, const char*> kNames[] = {
      {vu::kProtocolFMq, "MQ"},
      {vu::kProtocolFLogShmfd, "LOG_SHMFD"},
      {vu::kProtocolFRarp, "RARP"},
      {vu::kProtocolFReplyAck, "REPLY_ACK"},
      {vu::kProtocolFMtu, "MTU"},
      {vu::kProtocolFBackendReq, "BACKEND_REQ"},
      {vu::kProtocolFConfig, "CONFIG"},
      {vu::kProtocolFInflightShmfd, "INFLIGHT_SHMFD"},
      {vu::kProtocolFResetDevice, "RESET_DEVICE"},
      {vu::kProtocolFConfigureMemSlots, "CONFIGURE_MEM_SLOTS"},
      {vu::kProtocolFStatus, "STATUS"},
      {vu::kProtocolFDeviceState, "DEVICE_STATE"},
  };
  return BitNames(protocol_features, kNames);
}

absl::StatusOr<std::unique_ptr<Frontend>> Frontend::Create(const FrontendOptions& options) {
  const uint32_t qs = options.queue_size;
  if (qs == 0 || qs > virtio::Virtqueue::kMaxSize || (qs & (qs - 1)) != 0) {
    return absl::InvalidArgumentError("queue_size must be a power of two up to 32768");
  }
  if (options.memory_regions < 1 ||
      options.memory_regions > static_cast<int>(vu::kMaxMemTableRegions)) {
    return absl::InvalidArgumentError("memory_regions must be 1 to 8");
  }
  if (options.rx_descriptors == 0 || (!options.rx_indirect && options.rx_descriptors > qs) ||
      options.rx_descriptors > virtio::Virtqueue::kMaxIndirectEntries) {
    return absl::InvalidArgumentError("rx_descriptors must be 1 to the queue size");
  }
  if (options.rx_buffer_size < sizeof(VirtioNetHdr) ||
      options.rx_buffer_size < options.rx_descriptors) {
    return absl::InvalidArgumentError(
        "rx_buffer_size must hold a virtio-net header and one byte per descriptor");
  }
  if (options.max_frame_size == 0 || options.max_frame_size > (1u << 30)) {
    return absl::InvalidArgumentError("max_frame_size must be 1 byte to 1 GiB");
  }

  auto frontend = std::unique_ptr<Frontend>(new Frontend(options));
  Frontend& f = *frontend;
  f.rx_count_ = options.rx_indirect ? qs : qs / options.rx_descriptors;
  if (options.rx_buffers != 0) f.rx_count_ = std::min(f.rx_count_, options.rx_buffers);
  const uint32_t tx_descriptors = options.tx_header_separate ? 2 : 1;
  f.tx_count_ = options.tx_indirect ? qs : qs / tx_descriptors;
  f.tx_slot_size_ =
      static_cast<uint32_t>(AlignUp(sizeof(VirtioNetHdr) + options.max_frame_size, 64));

  const uint64_t ring_bytes = AlignUp(virtio::VirtqDescTableBytes(qs), kPage) +
                              AlignUp(virtio::VirtqAvailRingBytes(qs), kPage) +
                              AlignUp(virtio::VirtqUsedRingBytes(qs), kPage) + kPage;
  const uint64_t rx_table_bytes =
      options.rx_indirect ? uint64_t{f.rx_count_} * options.rx_descriptors * sizeof(VirtqDesc) : 0;
  const uint64_t tx_table_bytes =
      options.tx_indirect ? uint64_t{f.tx_count_} * 2 * sizeof(VirtqDesc) : 0;
  const uint64_t needed = kNumQueues * ring_bytes + rx_table_bytes + tx_table_bytes +
                          uint64_t{f.rx_count_} * options.rx_buffer_size +
                          uint64_t{f.tx_count_} * f.tx_slot_size_ + 4 * kPage;
  uint64_t memory_size = options.memory_size;
  if (memory_size == 0) memory_size = AlignUp(needed, kPage * options.memory_regions);
  if (memory_size < needed) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "memory_size %d is below the %d bytes the rings and pools need", memory_size, needed));
  }
  absl::StatusOr<std::unique_ptr<DriverMemory>> memory =
      DriverMemory::Create(memory_size, options.memory_regions);
  if (!memory.ok()) return memory.status();
  f.memory_ = *std::move(memory);

  for (uint32_t i = 0; i < kNumQueues; ++i) {
    f.ring_gpa_[i] = f.memory_->allocation_mark();
    f.queues_[i] = std::make_unique<DriverQueue>(f.memory_.get(), qs);
  }
  const auto alloc = [&f](uint64_t bytes, uint64_t align) -> uint64_t {
    if (bytes == 0) return 0;
    return f.memory_->Alloc(bytes, align).value_or(0);
  };
  f.rx_tables_gpa_ = alloc(rx_table_bytes, 16);
  f.tx_tables_gpa_ = alloc(tx_table_bytes, 16);
  f.rx_pool_gpa_ = alloc(uint64_t{f.rx_count_} * options.rx_buffer_size, 64);
  f.tx_pool_gpa_ = alloc(uint64_t{f.tx_count_} * f.tx_slot_size_, 64);
  if ((rx_table_bytes != 0 && f.rx_tables_gpa_ == 0) ||
      (tx_table_bytes != 0 && f.tx_tables_gpa_ == 0) || f.rx_pool_gpa_ == 0 ||
      f.tx_pool_gpa_ == 0) {
    // Guest-physical 0 is where the first ring sits, so 0 means "failed" here.
    return absl::InvalidArgumentError("guest memory too small for the buffer pools");
  }

  f.rx_free_.reserve(f.rx_count_);
  f.rx_buffer_of_head_.assign(qs, -1);
  f.tx_free_.reserve(f.tx_count_);
  f.tx_slot_of_head_.assign(qs, -1);
  f.chain_.reserve(std::max<uint32_t>(options.rx_descriptors, 2));
  f.reassembly_.resize(options.max_frame_size);

  f.loss_tx_ = LossInjector(options.loss_to_backend);
  f.loss_rx_ = LossInjector(options.loss_to_guest);
  if (options.loss_to_backend.reorders()) f.tx_held_ = HeldFrames(kMaxHeldFrames);
  if (options.loss_to_guest.reorders()) {
    f.rx_held_ = HeldFrames(kMaxHeldFrames);
    f.rx_held_slot_size_ = std::max<size_t>(options.max_frame_size, options.rx_buffer_size);
    f.rx_held_pool_.resize(kMaxHeldFrames * f.rx_held_slot_size_);
    f.rx_held_meta_.resize(kMaxHeldFrames);
    for (uint32_t i = kMaxHeldFrames; i > 0; --i) f.rx_held_free_.push_back(i - 1);
  }

  for (uint32_t i = 0; i < kNumQueues; ++i) {
    f.kick_[i].reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    f.call_[i].reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!f.kick_[i].valid() || !f.call_[i].valid()) return ErrnoError("eventfd");
  }
  return frontend;
}

Frontend::~Frontend() = default;

virtio::testing::DriverQueue* Frontend::queue(uint32_t index) const {
  return index < kNumQueues ? queues_[index].get() : nullptr;
}

absl::Status Frontend::Connect(const std::string& socket_path, absl::Duration retry_for) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("bad socket path: ", socket_path));
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  const absl::Time deadline = absl::Now() + retry_for;
  while (true) {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return ErrnoError("socket");
    if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      Attach(std::move(fd));
      return absl::OkStatus();
    }
    const int error = errno;
    if ((error != ENOENT && error != ECONNREFUSED && error != EAGAIN) || absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("connect ", socket_path, ": ", strerror(error)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

void Frontend::Attach(UniqueFd socket) {
  Disconnect();
  socket_ = std::move(socket);
  const absl::Duration timeout = options_.reply_timeout;
  if (timeout > absl::ZeroDuration() && timeout != absl::InfiniteDuration()) {
    const timeval tv = absl::ToTimeval(timeout);
    setsockopt(socket_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
}

void Frontend::Disconnect() {
  socket_.reset();
  ring_running_[kRxQueue] = ring_running_[kTxQueue] = false;
  offered_features_ = features_ = 0;
  offered_protocol_features_ = protocol_features_ = 0;
  net_header_size_ = sizeof(VirtioNetHdr);
}

absl::Status Frontend::SendMessage(const vu::Header& header, absl::Span<const uint8_t> payload,
                                   absl::Span<const int> fds) {
  if (!socket_.valid()) return absl::FailedPreconditionError("not connected");
  return vu::WriteMessage(socket_.get(), header, payload, fds);
}

absl::Status Frontend::SendRequest(vu::Request request, absl::Span<const uint8_t> payload,
                                   absl::Span<const int> fds, bool need_reply) {
  const vu::Header header{.request = static_cast<uint32_t>(request),
                          .flags = vu::kVersion | (need_reply ? vu::kFlagNeedReply : 0),
                          .size = static_cast<uint32_t>(payload.size())};
  return SendMessage(header, payload, fds);
}

absl::StatusOr<vu::Message> Frontend::ReadReply() {
  if (!socket_.valid()) return absl::FailedPreconditionError("not connected");
  return vu::ReadMessage(socket_.get());
}

template <typename T>
absl::StatusOr<T> Frontend::Reply(vu::Request request) {
  absl::StatusOr<vu::Message> reply = ReadReply();
  if (!reply.ok()) {
    return absl::Status(reply.status().code(),
                        absl::StrCat("reply to ", Name(request), ": ", reply.status().message()));
  }
  if (reply->header.request != static_cast<uint32_t>(request) ||
      (reply->header.flags & vu::kFlagReply) == 0 || reply->header.size != sizeof(T)) {
    return absl::DataLossError(absl::StrFormat(
        "expected a %d-byte reply to %s, got %s flags 0x%x size %d", sizeof(T), Name(request),
        Name(reply->header.request), reply->header.flags, reply->header.size));
  }
  return reply->PayloadAs<T>();
}

absl::Status Frontend::ReadAck(vu::Request request) {
  absl::StatusOr<uint64_t> ack = Reply<uint64_t>(request);
  if (!ack.ok()) return ack.status();
  if (*ack != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("backend refused %s (ack %d)", Name(request), *ack));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status Frontend::Send(vu::Request request, const T& value, absl::Span<const int> fds) {
  const bool ack = reply_ack();
  if (absl::Status s = SendRequest(request, AsBytes(value), fds, ack); !s.ok()) return s;
  return ack ? ReadAck(request) : absl::OkStatus();
}

absl::StatusOr<uint64_t> Frontend::GetFeatures() {
  if (absl::Status s = SendRequest(vu::Request::kGetFeatures, {}); !s.ok()) return s;
  absl::StatusOr<uint64_t> features = Reply<uint64_t>(vu::Request::kGetFeatures);
  if (features.ok()) offered_features_ = *features;
  return features;
}

absl::Status Frontend::SetFeatures(uint64_t features) {
  if (absl::Status s = Send(vu::Request::kSetFeatures, features); !s.ok()) return s;
  features_ = features;
  net_header_size_ = virtio::VirtioNetHdrSize(features);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Frontend::GetProtocolFeatures() {
  if (absl::Status s = SendRequest(vu::Request::kGetProtocolFeatures, {}); !s.ok()) return s;
  absl::StatusOr<uint64_t> features = Reply<uint64_t>(vu::Request::kGetProtocolFeatures);
  if (features.ok()) offered_protocol_features_ = *features;
  return features;
}

absl::Status Frontend::SetProtocolFeatures(uint64_t protocol_features) {
  // The new set takes effect after this request, so it asks for no ack.
  if (absl::Status s = SendRequest(vu::Request::kSetProtocolFeatures, AsBytes(protocol_features));
      !s.ok()) {
    return s;
  }
  protocol_features_ = protocol_features;
  return absl::OkStatus();
}

absl::Status Frontend::SetOwner() {
  const bool ack = reply_ack();
  if (absl::Status s = SendRequest(vu::Request::kSetOwner, {}, {}, ack); !s.ok()) return s;
  return ack ? ReadAck(vu::Request::kSetOwner) : absl::OkStatus();
}

absl::Status Frontend::SetMemTable() {
  vu::MemoryTable table;
  const std::vector<virtio::GuestMemoryRegion>& regions = memory_->regions();
  table.nregions = static_cast<uint32_t>(regions.size());
  int fds[vu::kMaxMemTableRegions];
  for (size_t i = 0; i < regions.size(); ++i) {
    table.regions[i] = regions[i];
    fds[i] = memory_->fd();
  }
  // As QEMU and DPDK send it: the regions in use, not the whole array.
  const size_t size =
      offsetof(vu::MemoryTable, regions) + regions.size() * sizeof(vu::MemoryRegion);
  const bool ack = reply_ack();
  if (absl::Status s = SendRequest(vu::Request::kSetMemTable, AsBytes(table).first(size),
                                   absl::MakeConstSpan(fds, regions.size()), ack);
      !s.ok()) {
    return s;
  }
  return ack ? ReadAck(vu::Request::kSetMemTable) : absl::OkStatus();
}

absl::Status Frontend::SetUpRing(uint32_t index) {
  if (index >= kNumQueues) return absl::InvalidArgumentError("no such ring");
  if (!socket_.valid()) return absl::FailedPreconditionError("not connected");
  ring_running_[index] = false;

  // Lay the ring out afresh at its fixed place, with the negotiated EVENT_IDX.
  const uint64_t mark = memory_->allocation_mark();
  memory_->ResetAllocations(ring_gpa_[index]);
  queues_[index] = std::make_unique<DriverQueue>(memory_.get(), options_.queue_size,
                                                 has_feature(virtio::kVirtioRingFEventIdx));
  memory_->ResetAllocations(mark);
  published_avail_[index] = 0;
  used_seen_[index] = 0;
  DrainEventfd(kick_[index].get());
  DrainEventfd(call_[index].get());
  if (index == kRxQueue) {
    rx_free_.clear();
    for (uint32_t i = rx_count_; i > 0; --i) rx_free_.push_back(i - 1);
    // Frames held back are lost with the ring's state.
    for (const HeldFrames::Entry& e : rx_held_.TakeAll()) rx_held_free_.push_back(e.handle);
    std::fill(rx_buffer_of_head_.begin(), rx_buffer_of_head_.end(), -1);
    PostRxBuffers();
    queues_[index]->Publish();
    published_avail_[index] = queues_[index]->avail_idx();
  } else {
    tx_free_.clear();
    for (uint32_t i = tx_count_; i > 0; --i) tx_free_.push_back(i - 1);
    tx_held_.TakeAll();  // Their slots are free again.
    std::fill(tx_slot_of_head_.begin(), tx_slot_of_head_.end(), -1);
    tx_in_flight_ = 0;
  }

  const DriverQueue& q = *queues_[index];
  const auto uva = [this](uint64_t gpa) { return reinterpret_cast<uint64_t>(memory_->Host(gpa)); };
  absl::Status s = Send(vu::Request::kSetVringNum, vu::VringState{index, q.size()});
  if (s.ok()) {
    s = Send(vu::Request::kSetVringAddr, vu::VringAddr{.index = index,
                                                       .flags = 0,
                                                       .desc_user_addr = uva(q.desc_gpa()),
                                                       .used_user_addr = uva(q.used_gpa()),
                                                       .avail_user_addr = uva(q.avail_gpa()),
                                                       .log_guest_addr = 0});
  }
  if (s.ok()) s = Send(vu::Request::kSetVringBase, vu::VringState{index, 0});
  const int call = call_[index].get();
  const int kick = kick_[index].get();
  if (s.ok()) s = Send(vu::Request::kSetVringCall, uint64_t{index}, absl::MakeConstSpan(&call, 1));
  if (s.ok()) s = Send(vu::Request::kSetVringKick, uint64_t{index}, absl::MakeConstSpan(&kick, 1));
  if (!s.ok()) return s;
  ring_running_[index] = true;
  return absl::OkStatus();
}

absl::Status Frontend::EnableRing(uint32_t index, bool enable) {
  return Send(vu::Request::kSetVringEnable, vu::VringState{index, enable ? 1u : 0u});
}

absl::StatusOr<uint32_t> Frontend::GetVringBase(uint32_t index) {
  if (absl::Status s = SendRequest(vu::Request::kGetVringBase, AsBytes(vu::VringState{index, 0}));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<vu::VringState> state = Reply<vu::VringState>(vu::Request::kGetVringBase);
  if (!state.ok()) return state.status();
  if (index < kNumQueues) ring_running_[index] = false;
  return state->num;
}

namespace {

// The u64 of a SET_DEVICE_STATE_FD or CHECK_DEVICE_STATE reply.
absl::StatusOr<uint64_t> U64Of(const absl::StatusOr<vu::Message>& reply) {
  if (!reply.ok()) return reply.status();
  absl::StatusOr<uint64_t> v = reply->PayloadAs<uint64_t>();
  if (!v.ok()) return absl::DataLossError("a device state reply without its u64");
  return *v;
}

}  // namespace

absl::StatusOr<std::string> Frontend::SaveDeviceState() {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  UniqueFd read_end(p[0]), write_end(p[1]);
  const vu::DeviceStateTransfer t{.direction = 0, .phase = 0};
  const int fd = write_end.get();
  if (absl::Status s = SendRequest(vu::Request::kSetDeviceStateFd, AsBytes(t), {&fd, 1}); !s.ok()) {
    return s;
  }
  write_end.reset();  // Ours: the backend's copy is the writer now.
  absl::StatusOr<uint64_t> r = U64Of(ReadReply());
  if (!r.ok()) return r.status();
  if (*r & vu::kDeviceStateErrorMask) {
    return absl::FailedPreconditionError("SET_DEVICE_STATE_FD (save) refused");
  }
  std::string state;
  char buf[65536];
  for (;;) {
    const ssize_t n = read(read_end.get(), buf, sizeof(buf));
    if (n > 0) {
      state.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      return absl::ErrnoToStatus(errno, "reading the device state");
    }
  }
  if (absl::Status s = SendRequest(vu::Request::kCheckDeviceState, {}); !s.ok()) return s;
  absl::StatusOr<uint64_t> check = U64Of(ReadReply());
  if (!check.ok()) return check.status();
  if (*check != 0) return absl::DataLossError("CHECK_DEVICE_STATE failed after the save");
  return state;
}

absl::Status Frontend::LoadDeviceState(absl::string_view state) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  UniqueFd read_end(p[0]), write_end(p[1]);
  const vu::DeviceStateTransfer t{.direction = 1, .phase = 0};
  const int fd = read_end.get();
  if (absl::Status s = SendRequest(vu::Request::kSetDeviceStateFd, AsBytes(t), {&fd, 1}); !s.ok()) {
    return s;
  }
  read_end.reset();
  absl::StatusOr<uint64_t> r = U64Of(ReadReply());
  if (!r.ok()) return r.status();
  if (*r & vu::kDeviceStateErrorMask) {
    return absl::FailedPreconditionError("SET_DEVICE_STATE_FD (load) refused");
  }
  for (size_t done = 0; done < state.size();) {
    const ssize_t n = write(write_end.get(), state.data() + done, state.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      return absl::ErrnoToStatus(errno, "writing the device state");
    }
  }
  write_end.reset();  // The end of the state.
  if (absl::Status s = SendRequest(vu::Request::kCheckDeviceState, {}); !s.ok()) return s;
  absl::StatusOr<uint64_t> check = U64Of(ReadReply());
  if (!check.ok()) return check.status();
  if (*check != 0) return absl::DataLossError("CHECK_DEVICE_STATE failed after the load");
  return absl::OkStatus();
}

absl::Status Frontend::Negotiate() {
  absl::StatusOr<uint64_t> offered = GetFeatures();
  if (!offered.ok()) return offered.status();
  uint64_t features = WithPrerequisites(*offered & options_.features);
  // Without mergeable buffers a segmentation-offloaded frame must fit in one
  // receive buffer.
  if ((features & Bit(kVirtioNetFMrgRxbuf)) == 0 &&
      options_.rx_buffer_size < kBigPacketBufferSize) {
    features = WithPrerequisites(features & ~kGuestGsoFeatures);
  }
  if (features & Bit(vu::kVhostUserFProtocolFeatures)) {
    absl::StatusOr<uint64_t> offered_protocol = GetProtocolFeatures();
    if (!offered_protocol.ok()) return offered_protocol.status();
    if (absl::Status s = SetProtocolFeatures(*offered_protocol & options_.protocol_features);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = SetOwner(); !s.ok()) return s;
  if (absl::Status s = SetFeatures(features); !s.ok()) return s;
  if (absl::Status s = SetMemTable(); !s.ok()) return s;
  for (uint32_t i = 0; i < kNumQueues; ++i) {
    if (absl::Status s = SetUpRing(i); !s.ok()) return s;
  }
  if (features & Bit(vu::kVhostUserFProtocolFeatures)) {
    for (uint32_t i = 0; i < kNumQueues; ++i) {
      if (absl::Status s = EnableRing(i, true); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

std::optional<uint16_t> Frontend::AddChain(uint32_t index, absl::Span<const Buffer> buffers,
                                           uint64_t table_gpa) {
  DriverQueue& q = *queues_[index];
  if (table_gpa == 0) return q.AddChain(buffers);
  auto* table = reinterpret_cast<VirtqDesc*>(memory_->Host(table_gpa));
  for (size_t i = 0; i < buffers.size(); ++i) {
    const bool last = i + 1 == buffers.size();
    table[i] = {
        .addr = buffers[i].gpa,
        .len = buffers[i].len,
        .flags = static_cast<uint16_t>((buffers[i].writable ? virtio::kVirtqDescFWrite : 0) |
                                       (last ? 0 : virtio::kVirtqDescFNext)),
        .next = static_cast<uint16_t>(last ? 0 : i + 1)};
  }
  const uint32_t table_len = static_cast<uint32_t>(buffers.size() * sizeof(VirtqDesc));
  const Buffer ring[] = {{.gpa = table_gpa, .len = table_len, .writable = false}};
  std::optional<uint16_t> head = q.AddChain(ring);
  if (head) {
    q.SetDesc(
        *head,
        {.addr = table_gpa, .len = table_len, .flags = virtio::kVirtqDescFIndirect, .next = 0});
  }
  return head;
}

void Frontend::PostRxBuffers() {
  const uint32_t pieces = options_.rx_descriptors;
  const uint32_t size = options_.rx_buffer_size;
  while (!rx_free_.empty()) {
    const uint32_t buffer = rx_free_.back();
    const uint64_t gpa = rx_pool_gpa_ + uint64_t{buffer} * size;
    chain_.clear();
    const uint32_t piece = size / pieces;
    for (uint32_t i = 0; i < pieces; ++i) {
      const uint32_t len = i + 1 == pieces ? size - piece * (pieces - 1) : piece;
      chain_.push_back({.gpa = gpa + uint64_t{piece} * i, .len = len, .writable = true});
    }
    const uint64_t table =
        options_.rx_indirect ? rx_tables_gpa_ + uint64_t{buffer} * pieces * sizeof(VirtqDesc) : 0;
    std::optional<uint16_t> head = AddChain(kRxQueue, chain_, table);
    if (!head) return;  // Ring full; the buffer waits in rx_free_.
    rx_buffer_of_head_[*head] = static_cast<int32_t>(buffer);
    rx_free_.pop_back();
  }
}

void Frontend::PublishAndKick(uint32_t index) {
  DriverQueue& q = *queues_[index];
  const uint16_t old_idx = published_avail_[index];
  const uint16_t new_idx = q.avail_idx();
  if (old_idx == new_idx) return;
  q.Publish();
  published_avail_[index] = new_idx;
  // Publishing the index must be visible before the suppression fields are read.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool kick;
  if (has_feature(virtio::kVirtioRingFEventIdx)) {
    const uint16_t event = q.avail_event();
    kick = static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
  } else {
    kick = (q.used_flags() & virtio::kVirtqUsedFNoNotify) == 0;
  }
  if (!kick) return;
  const uint64_t one = 1;
  if (write(kick_[index].get(), &one, sizeof(one)) == sizeof(one)) {
    ++(index == kRxQueue ? stats_.rx_kicks : stats_.tx_kicks);
  }
}

absl::StatusOr<bool> Frontend::WaitReadable(int fd, absl::Time deadline) {
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
    const int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1 << 30)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return ErrnoError("poll");
  }
}

absl::StatusOr<uint16_t> Frontend::UsedPending(uint32_t index) const {
  const DriverQueue& q = *queues_[index];
  const uint16_t pending = static_cast<uint16_t>(q.used_idx() - used_seen_[index]);
  if (pending > q.size()) {
    return absl::DataLossError(absl::StrFormat("ring %d: backend's used index %d runs %d ahead",
                                               index, q.used_idx(), pending));
  }
  return pending;
}

absl::StatusOr<Frontend::Used> Frontend::PopUsed(uint32_t index, std::vector<int32_t>& owner) {
  DriverQueue& q = *queues_[index];
  const virtio::VirtqUsedElem e = q.used_elem(used_seen_[index]);
  if (e.id >= q.size() || owner[e.id] < 0) {
    return absl::DataLossError(absl::StrFormat(
        "ring %d: backend returned descriptor %d, which is not outstanding", index, e.id));
  }
  q.PopUsed();
  ++used_seen_[index];
  const Used used{.owner = static_cast<uint32_t>(owner[e.id]), .len = e.len};
  owner[e.id] = -1;
  return used;
}

absl::StatusOr<size_t> Frontend::ReclaimTx() {
  if (!ring_running_[kTxQueue] && tx_in_flight_ == 0) return 0;
  absl::StatusOr<uint16_t> pending = UsedPending(kTxQueue);
  if (!pending.ok()) return pending.status();
  for (uint16_t i = 0; i < *pending; ++i) {
    absl::StatusOr<Used> used = PopUsed(kTxQueue, tx_slot_of_head_);
    if (!used.ok()) return used.status();
    tx_free_.push_back(used->owner);
    --tx_in_flight_;
  }
  stats_.tx_reclaimed += *pending;
  return *pending;
}

absl::StatusOr<size_t> Frontend::SendFrames(absl::Span<const absl::Span<const uint8_t>> frames) {
  if (!ring_running_[kTxQueue]) return absl::FailedPreconditionError("transmit ring not running");
  for (const absl::Span<const uint8_t>& frame : frames) {
    if (frame.empty() || frame.size() > options_.max_frame_size) {
      return absl::InvalidArgumentError(absl::StrFormat("frame of %d bytes: must be 1 to %d",
                                                        frame.size(), options_.max_frame_size));
    }
  }
  size_t next = 0;
  return SendFramesFrom(frames.size(), [&](const TxBuffer& buffer) -> absl::StatusOr<size_t> {
    const absl::Span<const uint8_t> frame = frames[next++];
    std::memcpy(buffer.frame.data(), frame.data(), frame.size());
    return frame.size();
  });
}

absl::StatusOr<size_t> Frontend::SendFramesWithHeaders(absl::Span<const TxFrame> frames) {
  if (!ring_running_[kTxQueue]) return absl::FailedPreconditionError("transmit ring not running");
  for (const TxFrame& frame : frames) {
    if (frame.data.empty() || frame.data.size() > options_.max_frame_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "frame of %d bytes: must be 1 to %d", frame.data.size(), options_.max_frame_size));
    }
  }
  size_t next = 0;
  return SendFramesFrom(frames.size(), [&](const TxBuffer& buffer) -> absl::StatusOr<size_t> {
    const TxFrame& frame = frames[next++];
    std::memcpy(buffer.header.data(), &frame.header, buffer.header.size());
    std::memcpy(buffer.frame.data(), frame.data.data(), frame.data.size());
    return frame.data.size();
  });
}

absl::Status Frontend::QueueTxSlot(uint32_t slot, uint32_t len) {
  const size_t header = net_header_size_;
  const uint64_t gpa = tx_pool_gpa_ + uint64_t{slot} * tx_slot_size_;
  Buffer chain[2];
  size_t n = 0;
  if (options_.tx_header_separate) {
    chain[n++] = {.gpa = gpa, .len = static_cast<uint32_t>(header), .writable = false};
    chain[n++] = {.gpa = gpa + header, .len = len, .writable = false};
  } else {
    chain[n++] = {.gpa = gpa, .len = static_cast<uint32_t>(header) + len, .writable = false};
  }
  const uint64_t table =
      options_.tx_indirect ? tx_tables_gpa_ + uint64_t{slot} * 2 * sizeof(VirtqDesc) : 0;
  std::optional<uint16_t> head = AddChain(kTxQueue, absl::MakeConstSpan(chain, n), table);
  if (!head) {
    // Ruled out by the callers' checks; the frame is lost rather than sent wrong.
    return absl::InternalError("transmit ring out of descriptors");
  }
  tx_slot_of_head_[*head] = static_cast<int32_t>(slot);
  ++tx_in_flight_;
  ++stats_.tx_frames;
  stats_.tx_bytes += len;
  return absl::OkStatus();
}

absl::Status Frontend::ReleaseDueTx(absl::Time now) {
  const uint32_t descriptors = options_.tx_indirect ? 1 : (options_.tx_header_separate ? 2 : 1);
  while (!tx_held_.empty() && queues_[kTxQueue]->free_descriptors() >= descriptors) {
    bool by_timeout;
    std::optional<HeldFrames::Entry> due = tx_held_.TakeDue(now, &by_timeout);
    if (!due) break;
    if (absl::Status s = QueueTxSlot(due->handle, due->length); !s.ok()) return s;
    loss_tx_.CountRelease(by_timeout);
    tx_held_.OnSent();
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> Frontend::SendFramesFrom(size_t max, TxFill fill) {
  if (!ring_running_[kTxQueue]) return absl::FailedPreconditionError("transmit ring not running");
  // Slots the backend has finished with go back on the free stack first, so
  // the next frames land in memory that is still in cache.
  absl::StatusOr<size_t> reclaimed = ReclaimTx();
  if (!reclaimed.ok()) return reclaimed.status();
  const bool lossy = loss_tx_.active();
  absl::Time now = lossy ? absl::Now() : absl::InfinitePast();
  if (absl::Status s = ReleaseDueTx(now); !s.ok()) return s;
  const size_t header = net_header_size_;
  const uint32_t descriptors = options_.tx_indirect ? 1 : (options_.tx_header_separate ? 2 : 1);
  DriverQueue& q = *queues_[kTxQueue];
  size_t sent = 0;
  size_t unpublished_bytes = 0;
  absl::Status status;
  while (sent < max) {
    if (tx_free_.empty()) {
      reclaimed = ReclaimTx();
      if (!reclaimed.ok()) {
        status = reclaimed.status();
        break;
      }
      if (tx_free_.empty()) break;
    }
    // The frame cannot be given back once `fill` has it: check for ring
    // space before.
    if (q.free_descriptors() < descriptors) break;
    const uint32_t slot = tx_free_.back();
    const uint64_t gpa = tx_pool_gpa_ + uint64_t{slot} * tx_slot_size_;
    uint8_t* host = memory_->Host(gpa);
    std::memset(host, 0, header);
    const TxBuffer buffer{.header = absl::MakeSpan(host, header),
                          .frame = absl::MakeSpan(host + header, options_.max_frame_size)};
    absl::StatusOr<size_t> filled = fill(buffer);
    if (!filled.ok()) {
      status = filled.status();
      break;
    }
    if (*filled == 0) break;
    if (*filled > buffer.frame.size()) {
      status = absl::InvalidArgumentError(absl::StrFormat(
          "filled a frame of %d bytes into a %d-byte buffer", *filled, buffer.frame.size()));
      break;
    }
    const uint32_t len = static_cast<uint32_t>(*filled);
    bool selected = false;
    if (lossy) {
      const FrameClass frame_class = ClassOf(ClassifyFrame(buffer.frame.first(len)));
      selected = loss_tx_.Selects(frame_class);
      const LossInjector::Decision decision = loss_tx_.Next(frame_class);
      if (decision.action == LossInjector::Action::kDrop) {
        ++sent;  // Lost on the way: the slot takes the next frame.
        continue;
      }
      if (decision.action == LossInjector::Action::kHold) {
        if (!tx_held_.full()) {
          now = absl::Now();
          tx_held_.Hold(slot, len, decision.hold_for, now + options_.reorder_timeout);
          tx_free_.pop_back();
          ++sent;
          continue;
        }
        loss_tx_.CountNotHeld();
      }
    }
    if (absl::Status s = QueueTxSlot(slot, len); !s.ok()) {
      status = s;
      break;
    }
    tx_free_.pop_back();
    ++sent;
    unpublished_bytes += len;
    if (selected && !tx_held_.empty()) {
      tx_held_.OnSent();
      if (absl::Status s = ReleaseDueTx(now); !s.ok()) {
        status = s;
        break;
      }
    }
    if (options_.tx_publish_bytes != 0 && unpublished_bytes >= options_.tx_publish_bytes) {
      PublishAndKick(kTxQueue);
      unpublished_bytes = 0;
    }
  }
  PublishAndKick(kTxQueue);
  if (!status.ok()) return status;
  return sent;
}

absl::StatusOr<size_t> Frontend::WaitTx(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<size_t> reclaimed = ReclaimTx();
    if (!reclaimed.ok() || *reclaimed > 0 || tx_in_flight_ == 0) return reclaimed;
    absl::StatusOr<bool> readable = WaitReadable(call_[kTxQueue].get(), deadline);
    if (!readable.ok()) return readable.status();
    if (!*readable) return 0;
    DrainEventfd(call_[kTxQueue].get());
  }
}

absl::StatusOr<bool> Frontend::DeliverOne(absl::FunctionRef<void(const ReceivedFrame&)> callback,
                                          absl::Time deadline) {
  const size_t header_size = net_header_size_;
  const uint32_t buffer_size = options_.rx_buffer_size;
  absl::StatusOr<Used> first = PopUsed(kRxQueue, rx_buffer_of_head_);
  if (!first.ok()) return first.status();
  ++stats_.rx_buffers;
  if (first->len > buffer_size) {
    rx_free_.push_back(first->owner);
    return absl::DataLossError(
        absl::StrFormat("backend wrote %d bytes into a %d-byte buffer", first->len, buffer_size));
  }
  const uint8_t* first_host = memory_->Host(rx_pool_gpa_ + uint64_t{first->owner} * buffer_size);
  ReceivedFrame frame;
  if (first->len < header_size) {
    rx_free_.push_back(first->owner);
    ++stats_.rx_dropped;
    return false;
  }
  std::memcpy(&frame.header, first_host, header_size);
  uint16_t buffers = 1;
  if (has_feature(kVirtioNetFMrgRxbuf)) buffers = frame.header.num_buffers;
  if (buffers == 0) {
    rx_free_.push_back(first->owner);
    ++stats_.rx_dropped;
    return false;
  }
  if (buffers > rx_count_) {
    rx_free_.push_back(first->owner);
    return absl::DataLossError(absl::StrFormat(
        "backend says a frame took %d buffers; %d were posted", buffers, rx_count_));
  }
  frame.buffers = buffers;
  if (buffers == 1) {
    // Contiguous in guest memory however many descriptors the buffer took.
    frame.data = absl::MakeConstSpan(first_host + header_size, first->len - header_size);
    const bool delivered = Deliver(frame, callback);
    rx_free_.push_back(first->owner);
    return delivered;
  }

  // Mergeable buffers: gather the pieces into the reassembly buffer, handing
  // each buffer back as soon as it is copied.
  size_t total = first->len - header_size;
  bool too_big = total > reassembly_.size();
  if (!too_big) std::memcpy(reassembly_.data(), first_host + header_size, total);
  rx_free_.push_back(first->owner);
  for (uint16_t i = 1; i < buffers; ++i) {
    while (true) {
      absl::StatusOr<uint16_t> pending = UsedPending(kRxQueue);
      if (!pending.ok()) return pending.status();
      if (*pending > 0) break;
      // The rest of the frame should have been published with its head; wait
      // briefly in case the backend publishes in pieces.
      PostRxBuffers();
      PublishAndKick(kRxQueue);
      absl::StatusOr<bool> readable = WaitReadable(call_[kRxQueue].get(), deadline);
      if (!readable.ok()) return readable.status();
      if (!*readable) {
        return absl::DataLossError(
            absl::StrFormat("frame of %d buffers: only %d arrived in time", buffers, i));
      }
      DrainEventfd(call_[kRxQueue].get());
    }
    absl::StatusOr<Used> next = PopUsed(kRxQueue, rx_buffer_of_head_);
    if (!next.ok()) return next.status();
    ++stats_.rx_buffers;
    rx_free_.push_back(next->owner);
    if (next->len > buffer_size) {
      return absl::DataLossError(
          absl::StrFormat("backend wrote %d bytes into a %d-byte buffer", next->len, buffer_size));
    }
    const uint8_t* host = memory_->Host(rx_pool_gpa_ + uint64_t{next->owner} * buffer_size);
    if (!too_big && total + next->len <= reassembly_.size()) {
      std::memcpy(reassembly_.data() + total, host, next->len);
    } else {
      too_big = true;
    }
    total += next->len;
  }
  if (too_big) {
    ++stats_.rx_dropped;
    return false;
  }
  frame.data = absl::MakeConstSpan(reassembly_.data(), total);
  return Deliver(frame, callback);
}

bool Frontend::Deliver(const ReceivedFrame& frame,
                       absl::FunctionRef<void(const ReceivedFrame&)> callback) {
  bool selected = false;
  if (loss_rx_.active()) {
    const FrameClass frame_class = ClassOf(ClassifyFrame(frame.data));
    selected = loss_rx_.Selects(frame_class);
    const LossInjector::Decision decision = loss_rx_.Next(frame_class);
    if (decision.action == LossInjector::Action::kDrop) return false;
    if (decision.action == LossInjector::Action::kHold) {
      if (!rx_held_free_.empty() && frame.data.size() <= rx_held_slot_size_) {
        const uint32_t slot = rx_held_free_.back();
        rx_held_free_.pop_back();
        std::memcpy(rx_held_pool_.data() + size_t{slot} * rx_held_slot_size_, frame.data.data(),
                    frame.data.size());
        rx_held_meta_[slot] = {.header = frame.header, .buffers = frame.buffers};
        rx_held_.Hold(slot, static_cast<uint32_t>(frame.data.size()), decision.hold_for,
                      absl::Now() + options_.reorder_timeout);
        return false;
      }
      loss_rx_.CountNotHeld();
    }
  }
  callback(frame);
  ++stats_.rx_frames;
  stats_.rx_bytes += frame.data.size();
  if (selected) rx_held_.OnSent();
  return true;
}

bool Frontend::DeliverDueHeld(absl::FunctionRef<void(const ReceivedFrame&)> callback) {
  if (rx_held_.empty()) return false;
  bool by_timeout;
  std::optional<HeldFrames::Entry> due = rx_held_.TakeDue(absl::Now(), &by_timeout);
  if (!due) return false;
  const HeldMeta& meta = rx_held_meta_[due->handle];
  ReceivedFrame frame;
  frame.header = meta.header;
  frame.buffers = meta.buffers;
  frame.data = absl::MakeConstSpan(rx_held_pool_.data() + size_t{due->handle} * rx_held_slot_size_,
                                   due->length);
  callback(frame);
  ++stats_.rx_frames;
  stats_.rx_bytes += frame.data.size();
  rx_held_free_.push_back(due->handle);
  loss_rx_.CountRelease(by_timeout);
  rx_held_.OnSent();
  return true;
}

absl::Time Frontend::next_release() const {
  return std::min(tx_held_.next_deadline(), rx_held_.next_deadline());
}

absl::StatusOr<size_t> Frontend::ReceiveFrames(
    size_t max, absl::Duration timeout, absl::FunctionRef<void(const ReceivedFrame&)> callback) {
  if (!ring_running_[kRxQueue]) return absl::FailedPreconditionError("receive ring not running");
  const absl::Time deadline = absl::Now() + timeout;
  size_t delivered = 0;
  absl::Status status;
  while (delivered < max) {
    if (DeliverDueHeld(callback)) {
      ++delivered;
      continue;
    }
    absl::StatusOr<uint16_t> pending = UsedPending(kRxQueue);
    if (!pending.ok()) {
      status = pending.status();
      break;
    }
    if (*pending == 0) {
      // Give the buffers back before waiting: the backend may need them.
      PostRxBuffers();
      PublishAndKick(kRxQueue);
      if (delivered > 0) break;
      // A held frame's timeout ends the wait early, to deliver it.
      const absl::Time wake = std::min(deadline, rx_held_.next_deadline());
      absl::StatusOr<bool> readable = WaitReadable(call_[kRxQueue].get(), wake);
      if (!readable.ok()) {
        status = readable.status();
        break;
      }
      if (!*readable) {
        if (wake < deadline) continue;
        break;
      }
      DrainEventfd(call_[kRxQueue].get());
      ++stats_.rx_calls;
      continue;
    }
    absl::StatusOr<bool> one = DeliverOne(callback, deadline);
    if (!one.ok()) {
      status = one.status();
      break;
    }
    if (*one) ++delivered;
  }
  PostRxBuffers();
  PublishAndKick(kRxQueue);
  if (!status.ok()) return status;
  return delivered;
}

absl::StatusOr<OwnedFrame> Frontend::ReceiveFrameWithHeader(absl::Duration timeout) {
  OwnedFrame out;
  absl::StatusOr<size_t> n = ReceiveFrames(1, timeout, [&out](const ReceivedFrame& frame) {
    out.header = frame.header;
    out.data.assign(frame.data.begin(), frame.data.end());
    out.buffers = frame.buffers;
  });
  if (!n.ok()) return n.status();
  if (*n == 0) return absl::DeadlineExceededError("no frame received in time");
  return out;
}

absl::StatusOr<std::vector<uint8_t>> Frontend::ReceiveFrame(absl::Duration timeout) {
  std::vector<uint8_t> out;
  absl::StatusOr<size_t> n = ReceiveFrames(1, timeout, [&out](const ReceivedFrame& frame) {
    out.assign(frame.data.begin(), frame.data.end());
  });
  if (!n.ok()) return n.status();
  if (*n == 0) return absl::DeadlineExceededError("no frame received in time");
  return out;
}

}  // namespace vunet::vu_frontend
