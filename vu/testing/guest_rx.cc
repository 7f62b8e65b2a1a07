#include "vu/testing/guest_rx.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vunet::vu::testing {
namespace {

// The device broke the ring's contract: say how, and stop the test (or the
// fuzzer) right there.
[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "GuestRxRing: %s\n", what.c_str());
  std::abort();
}

}  // namespace

using virtio::VirtqUsedElem;
using virtio::testing::DriverMemory;
using virtio::testing::DriverQueue;

GuestRxRing::GuestRxRing(const Options& options) : options_(options), rx_(options.rx) {
  memory_ = DriverMemory::Create(options.memory).value();
  if (!memory_->MapInto(&device_memory_).ok()) Fail("guest memory not mapped");
  driver_ = std::make_unique<DriverQueue>(memory_.get(), options.queue_size, options.event_idx);
  vq_config_ = driver_->DeviceConfig(device_memory_).value();
  vq_config_.event_idx = options.event_idx;
  if (!vq_.Start(&device_memory_, vq_config_).ok()) Fail("queue not started");
  config_.mergeable_rx = options.mergeable;
  config_.guest_csum = options.guest_csum;
  config_.guest_tso4 = config_.guest_tso6 = config_.guest_ecn =
      options.guest_csum && options.guest_tso;
  config_.guest_uso4 = config_.guest_uso6 = options.guest_csum && options.guest_uso;
  config_.vnet_hdr_len = options.vnet_hdr_len;
  rx_.Start(&vq_, config_);
}

void GuestRxRing::StopQueue() {
  if (!vq_.started()) return;
  rx_.Stop();
  vq_config_.avail_base = vq_.last_avail_idx();
  vq_.Stop();
}

void GuestRxRing::StartQueue() {
  if (vq_.started()) return;
  if (!vq_.Start(&device_memory_, vq_config_).ok()) Fail("queue not restarted");
  rx_.Start(&vq_, config_);
}

int GuestRxRing::Post(int count, uint32_t size) {
  int posted = 0;
  for (; posted < count && driver_->free_descriptors() > 0; ++posted) {
    std::vector<uint64_t>& pool = free_[size];
    uint64_t gpa;
    if (!pool.empty()) {
      gpa = pool.back();
      pool.pop_back();
    } else {
      gpa = memory_->Alloc(size, 8).value();
    }
    const DriverQueue::Buffer b{gpa, size, true};
    const std::optional<uint16_t> head = driver_->AddChain({&b, 1});
    if (!head) break;
    posted_[*head] = {b};
  }
  driver_->Publish();
  return posted;
}

bool GuestRxRing::PostChain(const std::vector<uint32_t>& sizes) {
  std::vector<DriverQueue::Buffer> buffers;
  buffers.reserve(sizes.size());
  for (uint32_t s : sizes) buffers.push_back({memory_->Alloc(s, 8).value(), s, true});
  const std::optional<uint16_t> head = driver_->AddChain(buffers);
  if (!head) return false;
  posted_[*head] = buffers;
  driver_->Publish();
  return true;
}

std::vector<uint8_t> GuestRxRing::Read(const VirtqUsedElem& e) {
  std::vector<uint8_t> out;
  auto it = posted_.find(static_cast<uint16_t>(e.id));
  if (it == posted_.end()) Fail(absl::StrCat("used entry for chain ", e.id, ", not posted"));
  size_t left = e.len;
  for (const DriverQueue::Buffer& b : it->second) {
    const size_t n = std::min<size_t>(left, b.len);
    const uint8_t* p = memory_->Host(b.gpa);
    out.insert(out.end(), p, p + n);
    left -= n;
    if (it->second.size() == 1) free_[b.len].push_back(b.gpa);
  }
  if (left != 0) Fail(absl::StrCat("used length ", e.len, " exceeds chain ", e.id));
  posted_.erase(it);
  return out;
}

std::vector<GuestRxRing::Frame> GuestRxRing::Take() {
  rx_.Flush();
  std::vector<Frame> frames;
  const size_t hdr_len = config_.vnet_hdr_len;
  while (std::optional<VirtqUsedElem> e = driver_->PopUsed()) {
    if (e->len == 0) {
      ++returned_empty_;
      Read(*e);
      continue;
    }
    std::vector<uint8_t> bytes = Read(*e);
    if (bytes.size() < hdr_len) {
      Fail(absl::StrCat("used entry of ", bytes.size(), " bytes, shorter than the header"));
    }
    Frame f;
    std::memcpy(&f.hdr, bytes.data(), hdr_len);
    f.buffers = config_.mergeable_rx ? f.hdr.num_buffers : 1;
    if (f.buffers == 0) Fail("num_buffers 0");
    for (uint16_t i = 1; i < f.buffers; ++i) {
      std::optional<VirtqUsedElem> more = driver_->PopUsed();
      if (!more) Fail(absl::StrCat("num_buffers ", f.buffers, " but only ", i, " used entries"));
      std::vector<uint8_t> m = Read(*more);
      bytes.insert(bytes.end(), m.begin(), m.end());
    }
    f.bytes.assign(bytes.begin() + static_cast<std::ptrdiff_t>(hdr_len), bytes.end());
    frames.push_back(std::move(f));
  }
  return frames;
}

std::vector<std::vector<uint8_t>> GuestRxRing::TakeBytes() {
  std::vector<std::vector<uint8_t>> out;
  for (Frame& f : Take()) out.push_back(std::move(f.bytes));
  return out;
}

}  // namespace vunet::vu::testing
