// The vhost-user device: the state machine behind one frontend connection.
// It takes the messages a frontend sends (features, memory table, vrings,
// dirty log, status), keeps the state they build, and produces the replies.
// When a queue becomes ready it hands it to the data plane; before any memory
// or fd a running queue uses goes away, it takes the queue back.
//
// Every request is checked with ValidateRequest and then against the state:
// a request that cannot be honoured (an address outside the memory table, a
// queue size that is not a power of two, rings before memory...) fails with a
// logged line and, with REPLY_ACK, a failure reply; nothing the frontend
// sends makes the device abort or touch memory outside what was mapped. The
// only failure Handle() returns is one after which the connection cannot go
// on: a request whose own reply cannot be given (malformed, or a request with
// a reply of its own that we do not support, such as GET_CONFIG).
//
// A queue runs (DataPlane::OnQueueStart) once it has memory, a size,
// addresses, a kick fd, has been started (SET_VRING_KICK) and is enabled
// (SET_VRING_ENABLE 1 when VHOST_USER_F_PROTOCOL_FEATURES is negotiated, at
// once otherwise). It stops (DataPlane::OnQueueStop) on GET_VRING_BASE, on
// SET_VRING_ENABLE 0, on RESET_OWNER / RESET_DEVICE, before the memory table
// or the dirty log changes, before any of its fds or addresses is replaced
// (it restarts afterwards, resuming where it stopped), and when the device is
// destroyed (the frontend disconnected).
//
// Threading: the device and its data plane callbacks run on the thread that
// calls Handle(); a data plane on other threads must stop touching a queue
// before OnQueueStop returns.
//
// Example (what //vu:server does for each message):
//   Device device(&data_plane);
//   absl::StatusOr<Message> m = ReadMessage(fd);
//   absl::StatusOr<std::optional<Message>> reply = device.Handle(*m);
//   if (!reply.ok()) { /* drop the connection */ }
//   else if (reply->has_value()) WriteMessage(fd, **reply);

#ifndef VUNET_VU_DEVICE_H_
#define VUNET_VU_DEVICE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "virtio/dirty_log.h"
#include "virtio/guest_memory.h"
#include "virtio/virtio_net.h"
#include "virtio/virtqueue.h"
#include "vu/message.h"

namespace vunet::vu {

// What the device drives: the code that processes the queues.
class DataPlane {
 public:
  virtual ~DataPlane() = default;
  // Queue `index` may be processed now: started and enabled. vq is valid
  // until OnQueueStop(index). kick_fd is the eventfd the guest signals (owned
  // by the device, valid as long as vq); vq->call_fd() the one to signal it.
  virtual void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) = 0;
  // Queue `index` must no longer be touched.
  virtual void OnQueueStop(uint32_t index) = 0;

  // Back-end state transfer for live migration
  // (VHOST_USER_PROTOCOL_F_DEVICE_STATE, offered when Options::device_state
  // says the data plane implements these). SET_DEVICE_STATE_FD: every queue
  // is stopped (the device is suspended). kSave: write the state into `fd`
  // and close it, which ends the transfer; kLoad: read the state from `fd`
  // until end of file. Either may go on after this returns (the frontend
  // reads or writes the other end once it has the reply). An error refuses
  // the transfer.
  enum class StateDirection : uint32_t { kSave = 0, kLoad = 1 };
  virtual absl::Status BeginStateTransfer(StateDirection direction, UniqueFd fd);
  // CHECK_DEVICE_STATE: finishes the transfer begun last (the frontend has
  // read everything, or written and closed its end) and says whether it
  // succeeded; on the destination, whether the state was loaded in full.
  virtual absl::Status CheckStateTransfer();
};

using virtio::kVirtioNetFCsum;
using virtio::kVirtioNetFGuestCsum;
using virtio::kVirtioNetFMrgRxbuf;

// Device status bits (virtio 1.x, section 2.1).
inline constexpr uint8_t kStatusDeviceNeedsReset = 0x40;

class Device {
 public:
  // The most queues a device is built for (the array of queue states).
  static constexpr uint32_t kMaxQueues = 8;
  // A split ring of at most this many entries.
  static constexpr uint32_t kMaxQueueSize = virtio::Virtqueue::kMaxSize;

  static constexpr uint64_t kOfferedFeatures =
      (1ull << virtio::kVirtioFVersion1) | (1ull << kVirtioNetFMrgRxbuf) |
      (1ull << virtio::kVirtioRingFEventIdx) | (1ull << virtio::kVirtioRingFIndirectDesc) |
      (1ull << kVirtioNetFGuestCsum) | (1ull << kVirtioNetFCsum) | (1ull << kVhostFLogAll) |
      (1ull << kVhostUserFProtocolFeatures);
  // Segmentation offloads a data plane may take on (Options::offloads),
  // offered on top of kOfferedFeatures: HOST_TSO4/6, HOST_ECN, HOST_USO
  // (the guest sends frames of up to 64 KiB to be segmented) and GUEST_TSO4/6,
  // GUEST_ECN, GUEST_USO4/6 (the device may send such frames). A driver
  // takes each only with its prerequisites (CSUM, GUEST_CSUM).
  static constexpr uint64_t kOffloadFeatures =
      (1ull << virtio::kVirtioNetFHostTso4) | (1ull << virtio::kVirtioNetFHostTso6) |
      (1ull << virtio::kVirtioNetFHostEcn) | (1ull << virtio::kVirtioNetFHostUso) |
      (1ull << virtio::kVirtioNetFGuestTso4) | (1ull << virtio::kVirtioNetFGuestTso6) |
      (1ull << virtio::kVirtioNetFGuestEcn) | (1ull << virtio::kVirtioNetFGuestUso4) |
      (1ull << virtio::kVirtioNetFGuestUso6);
  // RARP: after a migration QEMU asks the back-end to announce the guest's
  // MAC (SEND_RARP) to the switches of its network; vunet's network is the
  // guest's link alone, so there is no one to tell, and taking the request
  // spares QEMU's warning that nobody would.
  static constexpr uint64_t kOfferedProtocolFeatures =
      (1ull << kProtocolFReplyAck) | (1ull << kProtocolFConfigureMemSlots) |
      (1ull << kProtocolFLogShmfd) | (1ull << kProtocolFStatus) | (1ull << kProtocolFRarp);
  // Offered besides kOfferedProtocolFeatures with Options::device_state.
  static constexpr uint64_t kDeviceStateProtocolFeature = 1ull << kProtocolFDeviceState;

  struct Options {
    // Queues the device has: rx 0, tx 1 for one queue pair. 1 to kMaxQueues.
    uint32_t num_queues = 2;
    // The data plane transfers its state for migration (BeginStateTransfer,
    // CheckStateTransfer): VHOST_USER_PROTOCOL_F_DEVICE_STATE is offered.
    bool device_state = false;
    // The offloads (of kOffloadFeatures; other bits are ignored) offered
    // besides kOfferedFeatures: only those the data plane handles.
    uint64_t offloads = 0;
  };

  // `data_plane` must outlive the device.
  explicit Device(DataPlane* data_plane) : Device(data_plane, Options()) {}
  Device(DataPlane* data_plane, const Options& options);
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  // Stops every running queue (OnQueueStop) before anything is unmapped or
  // closed.
  ~Device();

  // Processes one message read from the frontend; takes or closes its fds.
  // Returns the reply to write, if any: the request's own reply, or with
  // REPLY_ACK negotiated and kFlagNeedReply set, u64 0 for success and 1 for
  // failure. An error status means the connection cannot continue (a request
  // whose own reply cannot be given, such as GET_VRING_BASE of a queue that
  // does not exist): drop it.
  absl::StatusOr<std::optional<Message>> Handle(Message& message);

  // The data plane reports that queue `index` broke (Virtqueue::broken()):
  // the reason is logged, the queue stops (OnQueueStop is called before this
  // returns), DEVICE_NEEDS_RESET is set in the status and the error eventfd
  // (SET_VRING_ERR) is signalled. The queue stays stopped until the frontend
  // restarts it (SET_VRING_KICK, usually after GET_VRING_BASE) or resets the
  // device.
  void ReportBroken(uint32_t index);

  // The outcome of the last request Handle() processed (for tests and logs).
  const absl::Status& last_status() const { return last_status_; }

  uint32_t num_queues() const { return num_queues_; }
  // What GET_PROTOCOL_FEATURES answers.
  uint64_t offered_protocol_features() const { return offered_protocol_features_; }
  // What GET_FEATURES answers: kOfferedFeatures and Options::offloads.
  uint64_t offered_features() const { return offered_features_; }
  uint64_t acked_features() const { return acked_features_; }
  uint64_t acked_protocol_features() const { return acked_protocol_features_; }
  bool has_feature(unsigned bit) const { return acked_features_ & (1ull << bit); }
  bool has_protocol_feature(unsigned bit) const { return acked_protocol_features_ & (1ull << bit); }
  // The status byte as GET_STATUS reports it.
  uint8_t status() const;
  const virtio::GuestMemory& memory() const { return memory_; }
  // True while queue `index` is handed to the data plane.
  bool running(uint32_t index) const { return index < num_queues_ && queues_[index].vq.started(); }
  // The dirty log while VHOST_F_LOG_ALL is negotiated and a log is mapped,
  // else nullptr. Running queues carry it too (Virtqueue::dirty_log()), for
  // the data plane's buffer writes (Virtqueue::LogWrite).
  virtio::DirtyLog* dirty_log() const;
  // The MAC address of the last SEND_RARP not yet taken: the data plane may
  // announce it with a RARP frame.
  std::optional<std::array<uint8_t, 6>> TakeRarpRequest();

 private:
  struct Queue {
    uint32_t num = 0;  // 0 until SET_VRING_NUM.
    bool addr_set = false;
    VringAddr addr;
    // Host pointers for addr, valid for the current memory table.
    void* desc = nullptr;
    void* avail = nullptr;
    void* used = nullptr;
    uint16_t base = 0;
    UniqueFd kick;
    UniqueFd call;
    UniqueFd err;
    bool started = false;  // Between SET_VRING_KICK and GET_VRING_BASE.
    bool enabled = false;  // SET_VRING_ENABLE.
    bool broken = false;   // Reported broken; no restart until the frontend does one.
    virtio::Virtqueue vq;
  };

  // The request handlers. Each returns the request's outcome; `reply` gets
  // the payload of a request with its own reply.
  absl::Status Dispatch(Message& m, std::optional<Message>* reply);
  absl::Status SetFeatures(uint64_t features);
  absl::Status SetProtocolFeatures(uint64_t features);
  absl::Status SetMemTable(Message& m);
  absl::Status AddMemReg(Message& m);
  absl::Status RemMemReg(const Message& m);
  absl::Status SetVringNum(const VringState& s);
  absl::Status SetVringAddr(const VringAddr& a);
  absl::Status SetVringBase(const VringState& s);
  absl::StatusOr<VringState> GetVringBase(const VringState& s);
  absl::Status SetVringFd(Message& m);
  absl::Status SetVringEnable(const VringState& s);
  absl::Status SetLogBase(Message& m);
  absl::Status SendRarp(uint64_t mac);
  // SET_DEVICE_STATE_FD's u64 reply (no fd of ours: bit 8 always set) and
  // CHECK_DEVICE_STATE's.
  uint64_t SetDeviceStateFd(Message& m);
  uint64_t CheckDeviceState();
  void Reset();
  // Logs once per memory table that a region's file could shrink under us.
  void WarnIfUnsealed() const;

  // Translates queue i's addresses through the current memory table.
  absl::Status TranslateRing(Queue& q);
  // True if every condition for queue i to run holds.
  bool ShouldRun(const Queue& q) const;
  // Starts or stops queue i to match ShouldRun.
  void Update(uint32_t i);
  void Stop(uint32_t i);
  void StopAll();
  void UpdateAll();

  DataPlane* const data_plane_;
  const uint32_t num_queues_;
  const uint64_t offered_features_;
  const uint64_t offered_protocol_features_;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
  bool features_set_ = false;
  uint8_t status_ = 0;
  bool needs_reset_ = false;
  virtio::GuestMemory memory_;
  std::unique_ptr<virtio::DirtyLog> log_;
  UniqueFd log_fd_;
  std::optional<std::array<uint8_t, 6>> rarp_;
  // The state transfer SET_DEVICE_STATE_FD began, until CHECK_DEVICE_STATE.
  std::optional<DataPlane::StateDirection> transfer_;
  absl::Status last_status_;
  std::array<Queue, kMaxQueues> queues_;
};

}  // namespace vunet::vu

#endif  // VUNET_VU_DEVICE_H_
