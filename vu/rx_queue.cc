#include "vu/rx_queue.h"

#include <algorithm>

#include "base/iov.h"
#include "base/log.h"
#include "base/static_status.h"

namespace vunet::vu {

using virtio::VirtqElement;

RxQueue::RxQueue(const Options& options)
    : options_(options),
      elems_(new VirtqElement[std::max<size_t>(options.max_elems, 1)]),
      iov_(new iovec[std::max<size_t>(options.max_iov, 1)]),
      reservations_(new Reservation[std::max<size_t>(options.max_reservations, 1)]) {
  options_.max_elems = std::max<size_t>(options_.max_elems, 1);
  options_.max_iov = std::max<size_t>(options_.max_iov, 1);
  options_.max_reservations = std::max<size_t>(options_.max_reservations, 1);
}

void RxQueue::Start(virtio::Virtqueue* vq, const NetConfig& config) {
  Stop();
  vq_ = vq;
  config_ = config;
}

void RxQueue::Stop() {
  // Frames committed and not yet flushed are published first (their writers
  // counted them as sent), unless the ring broke: then nothing more is
  // written into it.
  if (vq_ != nullptr && vq_->started() && !vq_->broken()) Flush();
  vq_ = nullptr;
  elems_used_ = 0;
  iov_used_ = 0;
  reserved_ = 0;
  committed_ = 0;
  unused_first_ = 0;
  unused_count_ = 0;
  fill_ = 0;
  pending_frames_ = 0;
  retry_ = false;
}

void RxQueue::Refuse(Refusal why, Refusal* refusal) {
  if (why == Refusal::kNeverFits) {
    ++stats_.never_fits;
  } else {
    ++stats_.no_room;
  }
  if (why == Refusal::kLater) retry_ = true;
  if (refusal != nullptr) *refusal = why;
}

void RxQueue::ResetPoolsIfIdle() {
  if (committed_ == reserved_ && unused_count_ == 0) {
    reserved_ = 0;
    committed_ = 0;
    elems_used_ = 0;
    iov_used_ = 0;
  }
}

void RxQueue::GiveBack(uint32_t count, size_t iov_mark) {
  if (count > 0) vq_->Rewind(count);
  iov_used_ = iov_mark;
}

const RxQueue::Reservation* RxQueue::Reserve(size_t min_bytes, size_t want_bytes,
                                             Refusal* refusal) {
  if (refusal != nullptr) *refusal = Refusal::kNone;
  if (vq_ == nullptr || vq_->broken()) {
    Refuse(Refusal::kStopped, refusal);
    return nullptr;
  }
  // Elements a committed frame did not need are the tail of what is popped
  // while nothing follows them: hand them back before popping more.
  if (committed_ == reserved_ && unused_count_ > 0) {
    vq_->Rewind(unused_count_);
    stats_.released += unused_count_;
    unused_count_ = 0;
  }
  ResetPoolsIfIdle();
  if (reserved_ == options_.max_reservations) {
    Refuse(Refusal::kLater, refusal);
    return nullptr;
  }
  const size_t floor = config_.vnet_hdr_len + kEthMinFrame;
  min_bytes = std::max(min_bytes, floor);
  want_bytes = std::max(want_bytes, min_bytes);

  const uint32_t first = elems_used_;
  const size_t iov_mark = iov_used_;
  uint32_t count = 0;
  size_t got = 0;
  auto refuse = [&](Refusal why) {
    GiveBack(count, iov_mark);
    Refuse(why, refusal);
    return nullptr;
  };
  while (got < want_bytes) {
    size_t more = 0;
    const size_t m =
        Collect(config_, vq_, elems_.get() + first + count, options_.max_elems - first - count,
                iov_.get(), options_.max_iov, &iov_used_, want_bytes - got, &more, &fill_);
    count += static_cast<uint32_t>(m);
    got += more;
    if (got >= want_bytes) break;
    if (vq_->broken()) {
      GiveBack(count, iov_mark);
      VUNET_LOG_RATELIMITED(kWarning, "rx: the receive queue broke: %s", vq_->broken_reason());
      if (observer_ != nullptr) observer_->OnBroken();
      Refuse(Refusal::kStopped, refusal);
      return nullptr;
    }
    if (got >= min_bytes && (!config_.mergeable_rx || m == 0 || vq_->IsEmpty())) break;
    if (!config_.mergeable_rx && m == 1) {
      // Its one buffer is too small, and a driver posts buffers alike.
      return refuse(Refusal::kNeverFits);
    }
    if (vq_->IsEmpty()) {
      // Every buffer the ring holds is out and still too few: while they
      // are all for this one frame, nothing the guest posts changes that.
      const bool whole_ring = vq_->in_use() >= vq_->size();
      const bool only_this = vq_->in_use() == count;
      if (whole_ring) return refuse(only_this ? Refusal::kNeverFits : Refusal::kLater);
      return refuse(Refusal::kNoRoom);
    }
    if (m == 0 || first + count == options_.max_elems || iov_used_ == options_.max_iov) {
      // Chains are there but the pools cannot take the next (or it is
      // unusable and could not be returned yet): with nothing else of ours
      // outstanding, it never fits.
      const bool alone = vq_->in_use() == count;
      return refuse(alone ? Refusal::kNeverFits : Refusal::kLater);
    }
    // The guest posted more while we collected: go on.
  }
  // Collect gathers at least a minimum frame per call, so it may have taken
  // an element more than want_bytes reaches: hand it back.
  while (count > 1 && got - elems_[first + count - 1].in_len >= want_bytes) {
    const VirtqElement& last = elems_[first + count - 1];
    got -= last.in_len;
    --count;
    GiveBack(1, iov_used_ - last.in_num);
  }
  elems_used_ = first + count;
  Reservation& r = reservations_[reserved_];
  r.iov = absl::MakeConstSpan(iov_.get() + iov_mark, iov_used_ - iov_mark);
  r.capacity = got;
  r.index = reserved_;
  r.first_elem = first;
  r.elem_count = count;
  ++reserved_;
  return &r;
}

void RxQueue::ReturnEmpty(uint32_t first, uint32_t count) {
  for (uint32_t i = 0; i < count; ++i) vq_->Fill(elems_[first + i], 0, fill_++);
  stats_.returned_empty += count;
}

bool RxQueue::Commit(const Reservation& r, size_t frame_len, const VirtioNetHdr& hdr) {
  if (vq_ == nullptr || r.index != committed_ || committed_ == reserved_ ||
      &r != &reservations_[r.index] || config_.vnet_hdr_len + frame_len > r.capacity) {
    ++stats_.writer_bugs;
    VUNET_LOG_RATELIMITED(kError, "rx: commit of reservation %d (of %d, %d committed) refused",
                          r.index, reserved_, committed_);
    return false;
  }
  // Unused elements of the frame before this one are no longer the tail.
  if (unused_count_ > 0) {
    ReturnEmpty(unused_first_, unused_count_);
    unused_count_ = 0;
  }
  const absl::Span<const iovec> iov = r.iov;
  IovFromBuf(iov.data(), iov.size(), 0, &hdr, config_.vnet_hdr_len);
  if (observer_ != nullptr) observer_->OnFrameToGuest(iov, config_.vnet_hdr_len, frame_len);
  // FillFrame pads a short frame (the reservation has room for the minimum).
  const size_t total = config_.vnet_hdr_len + frame_len;
  const uint32_t used = static_cast<uint32_t>(
      FillFrame(config_, vq_, elems_.get() + r.first_elem, r.elem_count, total, &fill_));
  ++committed_;
  ++pending_frames_;
  ++stats_.frames;
  stats_.bytes += total;
  if (hdr.gso_type != kVirtioNetHdrGsoNone) ++stats_.gso_frames;
  unused_first_ = r.first_elem + used;
  unused_count_ = r.elem_count - used;
  if (committed_ == reserved_ && unused_count_ > 0) {
    vq_->Rewind(unused_count_);
    stats_.released += unused_count_;
    unused_count_ = 0;
  }
  ResetPoolsIfIdle();
  return true;
}

bool RxQueue::Abandon(const Reservation& r) {
  if (vq_ == nullptr || r.index != committed_ || committed_ == reserved_ ||
      &r != &reservations_[r.index]) {
    ++stats_.writer_bugs;
    VUNET_LOG_RATELIMITED(kError, "rx: abandon of reservation %d (of %d, %d committed) refused",
                          r.index, reserved_, committed_);
    return false;
  }
  if (unused_count_ > 0) {
    ReturnEmpty(unused_first_, unused_count_);
    unused_count_ = 0;
  }
  if (committed_ + 1 == reserved_) {
    // The newest: it is the tail, so it goes back unseen.
    vq_->Rewind(r.elem_count);
    stats_.released += r.elem_count;
  } else {
    ReturnEmpty(r.first_elem, r.elem_count);
  }
  ++committed_;
  ResetPoolsIfIdle();
  return true;
}

void RxQueue::ReleaseUncommitted() {
  if (vq_ == nullptr) return;
  uint32_t count = unused_count_;
  for (uint32_t i = committed_; i < reserved_; ++i) count += reservations_[i].elem_count;
  if (count > 0) {
    vq_->Rewind(count);
    stats_.released += count;
  }
  unused_count_ = 0;
  committed_ = reserved_;
  ResetPoolsIfIdle();
}

absl::Status RxQueue::Send(absl::Span<const uint8_t> frame) {
  VirtioNetHdr hdr;
  // Frames built here carry complete checksums: with GUEST_CSUM the guest
  // may skip checking them.
  if (config_.guest_csum) hdr.flags = virtio::kVirtioNetHdrFDataValid;
  return Send(frame, hdr);
}

absl::Status RxQueue::Send(absl::Span<const uint8_t> frame, const VirtioNetHdr& hdr) {
  if (vq_ == nullptr || vq_->broken()) {
    return VUNET_STATIC_STATUS(absl::FailedPreconditionError("the receive queue is not running"));
  }
  if (committed_ != reserved_) {
    ++stats_.writer_bugs;
    VUNET_LOG_RATELIMITED(kError, "rx: a writer left %d reservations; released",
                          reserved_ - committed_);
    ReleaseUncommitted();
  }
  const size_t len = config_.vnet_hdr_len + frame.size();
  const Reservation* r = Reserve(len, len);
  if (r == nullptr) {
    return VUNET_STATIC_STATUS(absl::UnavailableError("no room in the guest's receive queue"));
  }
  IovFromBuf(r->iov.data(), r->iov.size(), config_.vnet_hdr_len, frame.data(), frame.size());
  Commit(*r, frame.size(), hdr);
  ++stats_.sends;
  return absl::OkStatus();
}

bool RxQueue::Flush() {
  const bool retry = retry_;
  retry_ = false;
  if (vq_ == nullptr) return false;
  if (committed_ != reserved_) {
    ++stats_.writer_bugs;
    VUNET_LOG_RATELIMITED(kError, "rx: %d reservations left at flush; released",
                          reserved_ - committed_);
  }
  ReleaseUncommitted();
  if (fill_ == 0) return retry;
  vq_->Flush(fill_);
  fill_ = 0;
  pending_frames_ = 0;
  ++stats_.flushes;
  if (vq_->Notify()) ++stats_.notifies;
  return retry;
}

}  // namespace vunet::vu
