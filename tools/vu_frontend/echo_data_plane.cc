#include "tools/vu_frontend/echo_data_plane.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "base/eventfd.h"
#include "base/iov.h"

namespace vunet::vu_frontend {
namespace {

constexpr uint32_t kRx = 0;
constexpr uint32_t kTx = 1;

}  // namespace

EchoDataPlane::EchoDataPlane(const Options& options)
    : options_(options), wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  thread_ = std::thread([this] { Loop(); });
}

EchoDataPlane::~EchoDataPlane() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  Wake();
  thread_.join();
}

void EchoDataPlane::Wake() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_.get(), &one, sizeof(one));
}

void EchoDataPlane::OnQueueStart(uint32_t index, virtio::Virtqueue* vq, int kick_fd) {
  if (index < 2) {
    std::lock_guard<std::mutex> lock(mu_);
    vq_[index] = vq;
    kick_[index] = kick_fd;
    ++starts_[index];
  }
  running_cv_.notify_all();
  Wake();
  if (options_.on_queue) options_.on_queue(index, true);
}

void EchoDataPlane::OnQueueStop(uint32_t index) {
  if (index < 2) {
    std::lock_guard<std::mutex> lock(mu_);
    vq_[index] = nullptr;
    kick_[index] = -1;
  }
  Wake();
  if (options_.on_queue) options_.on_queue(index, false);
}

bool EchoDataPlane::running(uint32_t index) const {
  std::lock_guard<std::mutex> lock(mu_);
  return index < 2 && vq_[index] != nullptr;
}

bool EchoDataPlane::WaitRunning(int timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  return running_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                              [this] { return vq_[kRx] != nullptr && vq_[kTx] != nullptr; });
}

void EchoDataPlane::Loop() {
  while (true) {
    pollfd p[3] = {{.fd = wake_.get(), .events = POLLIN, .revents = 0},
                   {.fd = -1, .events = POLLIN, .revents = 0},
                   {.fd = -1, .events = POLLIN, .revents = 0}};
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      p[1].fd = kick_[kRx];
      p[2].fd = kick_[kTx];
    }
    if (poll(p, 3, -1) < 0) continue;
    if (p[0].revents & POLLIN) DrainEventfd(wake_.get());
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    // Read a kick only from the fd that is still the queue's.
    for (uint32_t i = 0; i < 2; ++i) {
      if ((p[1 + i].revents & POLLIN) && p[1 + i].fd == kick_[i]) DrainEventfd(kick_[i]);
    }
    if (vq_[kTx] != nullptr && (vq_[kRx] != nullptr || !options_.echo)) Process();
  }
}

void EchoDataPlane::Process() {
  virtio::Virtqueue& tx = *vq_[kTx];
  while (true) {
    while (EchoOne()) {
    }
    tx.Notify();
    if (options_.echo) vq_[kRx]->Notify();
    if (tx.broken() || (options_.echo && vq_[kRx]->broken())) return;
    // Ask for kicks, then look again: buffers may have come just before.
    tx.SetNotification(true);
    if (options_.echo) vq_[kRx]->SetNotification(true);
    if (tx.IsEmpty()) return;
    if (options_.echo && vq_[kRx]->IsEmpty()) return;  // Waits for receive buffers.
  }
}

bool EchoDataPlane::EchoOne() {
  virtio::Virtqueue& tx = *vq_[kTx];
  const size_t header = options_.net_header_size;
  virtio::VirtqElement frame;
  absl::StatusOr<bool> popped = tx.Pop(&frame, nullptr, 0, out_, kPool);
  if (!popped.ok()) {
    if (popped.status().code() == absl::StatusCode::kResourceExhausted) {
      ++dropped_;
      return tx.DiscardNext().value_or(false);
    }
    return false;  // Broken; the queue stays stopped.
  }
  if (!*popped) return false;
  const size_t out_total = IovSize(frame.out_sg, frame.out_num);
  if (out_total < header || !options_.echo) {
    tx.Push(frame, 0);
    ++(out_total < header ? dropped_ : consumed_);
    return true;
  }
  const size_t needed = out_total;  // Header and frame, the same on both sides.

  virtio::Virtqueue& rx = *vq_[kRx];
  size_t elems = 0;
  size_t iov_used = 0;
  size_t capacity = 0;
  bool too_small = false;
  while (capacity < needed) {
    if (elems == kPool || iov_used == kPool || (!options_.mergeable && elems == 1)) {
      too_small = true;
      break;
    }
    virtio::VirtqElement& e = rx_elems_[elems];
    absl::StatusOr<bool> got = rx.Pop(&e, in_ + iov_used, kPool - iov_used, nullptr, 0);
    if (!got.ok() && got.status().code() == absl::StatusCode::kResourceExhausted) {
      too_small = true;  // Receive chains too fragmented for the iovec pool.
      break;
    }
    if (!got.ok() || !*got) {
      // No receive space yet: hand everything back and wait for a kick.
      rx.Rewind(static_cast<uint32_t>(elems));
      tx.Unpop();
      return false;
    }
    iov_used += e.in_num;
    capacity += IovSize(e.in_sg, e.in_num);
    ++elems;
  }
  if (too_small) {
    rx.Rewind(static_cast<uint32_t>(elems));
    tx.Push(frame, 0);
    ++dropped_;
    return true;
  }

  uint8_t net_header[12] = {};
  if (options_.echo_header) IovToBuf(frame.out_sg, frame.out_num, 0, net_header, 10);
  const uint16_t num_buffers = static_cast<uint16_t>(elems);
  if (header >= 12) std::memcpy(net_header + 10, &num_buffers, sizeof(num_buffers));
  IovFromBuf(in_, iov_used, 0, net_header, header);
  // The frame after its header, one transmit buffer at a time.
  size_t skip = header;
  size_t to = header;
  for (size_t i = 0; i < frame.out_num; ++i) {
    const iovec& from = frame.out_sg[i];
    if (skip >= from.iov_len) {
      skip -= from.iov_len;
      continue;
    }
    to += IovFromBuf(in_, iov_used, to, static_cast<const uint8_t*>(from.iov_base) + skip,
                     from.iov_len - skip);
    skip = 0;
  }

  size_t remaining = needed;
  for (size_t i = 0; i < elems; ++i) {
    const size_t len = std::min(remaining, IovSize(rx_elems_[i].in_sg, rx_elems_[i].in_num));
    remaining -= len;
    rx.Fill(rx_elems_[i], static_cast<uint32_t>(len), static_cast<uint32_t>(i));
  }
  rx.Flush(static_cast<uint32_t>(elems));
  tx.Push(frame, 0);
  ++echoed_;
  return true;
}

}  // namespace vunet::vu_frontend
