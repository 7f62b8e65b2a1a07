// A data plane for tests of the control plane and of frontends: it returns
// every frame the guest transmits (queue 1) to the guest's receive queue
// (queue 0) byte for byte, or only consumes it. It runs its own thread, woken
// by the queues' kick eventfds, and owns no socket: what it proves is that
// rings set up through vhost-user carry frames both ways.
//
// Backpressure: a transmitted frame waits on the transmit ring (it is handed
// back with Unpop) until the guest has posted enough receive space, and the
// thread then waits for a receive kick. With `mergeable` a frame spreads
// over as many receive buffers as it needs and num_buffers says how many;
// without it, a frame must fit in one buffer or it is dropped.
//
// Example:
//   EchoDataPlane plane({.mergeable = true});
//   auto server = vu::Server::Listen({.socket_path = path}, &plane).value();
//   ... server->Run(stop) on a thread; a frontend sends and receives ...

#ifndef VUNET_TOOLS_VU_FRONTEND_ECHO_DATA_PLANE_H_
#define VUNET_TOOLS_VU_FRONTEND_ECHO_DATA_PLANE_H_

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

#include "base/unique_fd.h"
#include "virtio/virtqueue.h"
#include "vu/device.h"

namespace vunet::vu_frontend {

class EchoDataPlane : public vu::DataPlane {
 public:
  struct Options {
    // Return frames to the guest (false: consume and count them only).
    bool echo = true;
    // VIRTIO_NET_F_MRG_RXBUF as negotiated (the data plane is not told).
    bool mergeable = true;
    // The virtio-net header on the rings: 12 (VERSION_1 or MRG_RXBUF) or 10.
    size_t net_header_size = 12;
    // Return each frame with the virtio-net header it was sent with (its
    // first 10 bytes: checksum and segmentation fields; num_buffers is the
    // echo's), as a backend that took the offloads the frontend negotiated
    // both ways would; false: a zeroed header.
    bool echo_header = false;
    // Called on the server's thread for each queue start and stop.
    std::function<void(uint32_t index, bool started)> on_queue = nullptr;
  };

  EchoDataPlane() : EchoDataPlane(Options()) {}
  explicit EchoDataPlane(const Options& options);
  ~EchoDataPlane() override;
  EchoDataPlane(const EchoDataPlane&) = delete;
  EchoDataPlane& operator=(const EchoDataPlane&) = delete;

  void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) override;
  void OnQueueStop(uint32_t index) override;

  // Counters, readable from any thread.
  uint64_t frames_echoed() const { return echoed_.load(); }
  uint64_t frames_consumed() const { return consumed_.load(); }
  uint64_t frames_dropped() const { return dropped_.load(); }
  uint64_t queue_starts(uint32_t index) const { return index < 2 ? starts_[index].load() : 0; }
  bool running(uint32_t index) const;
  // Waits until both queues run; false on timeout.
  bool WaitRunning(int timeout_ms) const;

 private:
  void Loop();
  // Moves frames from the transmit ring to the receive ring until one of
  // them runs dry. Called with mu_ held and both queues running.
  void Process();
  // One frame: false if it has to wait for receive buffers.
  bool EchoOne();
  void Wake();

  const Options options_;
  mutable std::mutex mu_;
  mutable std::condition_variable running_cv_;
  virtio::Virtqueue* vq_[2] = {nullptr, nullptr};
  int kick_[2] = {-1, -1};
  UniqueFd wake_;
  bool stop_ = false;
  std::atomic<uint64_t> echoed_{0};
  std::atomic<uint64_t> consumed_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> starts_[2] = {0, 0};

  static constexpr size_t kPool = 1024;  // iovec entries for one frame each way.
  iovec out_[kPool];
  iovec in_[kPool];
  virtio::VirtqElement rx_elems_[kPool];
  std::thread thread_;
};

}  // namespace vunet::vu_frontend

#endif  // VUNET_TOOLS_VU_FRONTEND_ECHO_DATA_PLANE_H_
