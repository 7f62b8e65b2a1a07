// Fuzzes the device state machine with the messages a hostile frontend could
// send: the stream is read and validated as the server does, and every
// message goes to a Device whose data plane pops from each queue it is
// handed, so the ring addresses and memory tables the fuzzer chose are used.
// Input: see fuzz_stream.h.

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

#include "base/unique_fd.h"
#include "virtio/virtqueue.h"
#include "vu/device.h"
#include "vu/fuzz_stream.h"
#include "vu/message.h"

namespace {

using namespace vunet;
using namespace vunet::vu;

class PoppingDataPlane : public DataPlane {
 public:
  void OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) override {
    if (!vq->started() || kick_fd < 0 || running_[index]) __builtin_trap();
    running_[index] = true;
    iovec in[8];
    iovec out[8];
    for (int i = 0; i < 4; ++i) {
      virtio::VirtqElement elem;
      absl::StatusOr<bool> popped = vq->Pop(&elem, in, 8, out, 8);
      if (!popped.ok()) {
        if (vq->broken()) broken_ = index + 1;
        break;
      }
      if (!*popped) break;
      vq->LogWrite(elem, 100);
      vq->Push(elem, 0);
    }
    vq->Notify();
  }
  void OnQueueStop(uint32_t index) override {
    if (!running_[index]) __builtin_trap();
    running_[index] = false;
  }
  // 1 + the index of a queue found broken, or 0.
  uint32_t TakeBroken() { return std::exchange(broken_, 0); }

 private:
  bool running_[Device::kMaxQueues] = {};
  uint32_t broken_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return 0;
  UniqueFd front(pair[0]);
  UniqueFd back(pair[1]);
  if (!fuzz::SendRecords(front.get(), data, size)) return 0;

  PoppingDataPlane data_plane;
  Device device(&data_plane);
  for (;;) {
    absl::StatusOr<Message> m = ReadMessage(back.get());
    if (!m.ok()) break;
    absl::StatusOr<std::optional<Message>> reply = device.Handle(*m);
    if (!reply.ok()) break;  // The server would drop the connection.
    if (reply->has_value() && (**reply).header.size > sizeof(VringState)) __builtin_trap();
    if (const uint32_t broken = data_plane.TakeBroken(); broken != 0) {
      device.ReportBroken(broken - 1);
    }
  }
  return 0;
}
