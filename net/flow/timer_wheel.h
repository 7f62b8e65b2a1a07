// A hierarchical timer wheel over a fixed set of indices [0, capacity): at
// most one deadline per index, 5 levels of 64 slots, 1 ms ticks (about 12
// days before the top level wraps; later deadlines are re-placed when they
// come round). Links live in the wheel's own array, touched only as indices
// are used (an anonymous mapping), so a large capacity costs address space
// more than memory; setting, cancelling and expiring a timer allocate
// nothing. Deadlines are rounded up to the next tick: a timer never fires
// early and at most one tick (plus the owner's latency) late.
//
// The owner arms one timerfd at NextDeadline() and calls Expire(now) when it
// fires. The flow table keeps its flows' timers here (index = flow slot).
//
//   TimerWheel wheel(1024);
//   wheel.Set(7, now + 5'000'000);
//   ... wheel.Expire(now, [&](uint32_t index) { /* index 7's deadline passed */ });
//
// Not thread-safe.

#ifndef VUNET_NET_FLOW_TIMER_WHEEL_H_
#define VUNET_NET_FLOW_TIMER_WHEEL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/functional/function_ref.h"

namespace vunet::net {

class TimerWheel {
 public:
  static constexpr int64_t kTickNs = 1'000'000;  // The granularity.

  // A wheel for indices [0, capacity). ok() is false if its memory could not
  // be mapped.
  explicit TimerWheel(size_t capacity);
  TimerWheel(const TimerWheel&) = delete;
  TimerWheel& operator=(const TimerWheel&) = delete;
  bool ok() const { return links_ != nullptr; }

  // Sets index's deadline (CLOCK_MONOTONIC ns, or any clock used
  // consistently), replacing one it had; a deadline at or before the last
  // Expire fires on the next one. Indices must be below the capacity.
  void Set(uint32_t index, int64_t deadline_ns);
  void Cancel(uint32_t index);
  bool armed(uint32_t index) const { return links_[index].list != 0; }
  // The deadline as set, or nullopt if none.
  std::optional<int64_t> Deadline(uint32_t index) const;

  // Calls `fire` once for every index whose deadline (rounded up to a tick)
  // is at or before now_ns, earliest tick first and in the order set within
  // a tick; the timer is cleared before the call. The callback may set or
  // cancel any timer; one set for a time already passed fires on the next
  // call, not this one. Returns how many fired. Not reentrant: Expire from
  // within the callback returns 0.
  size_t Expire(int64_t now_ns, absl::FunctionRef<void(uint32_t)> fire);

  // When the owner's timerfd should fire next (absolute ns, possibly already
  // passed), or nullopt if no timer is set: the earliest deadline rounded up
  // to a tick, or an earlier tick at which the wheel moves timers down a
  // level (an Expire then fires nothing, and the next answer is closer; at
  // most one such wake-up per level per slot of that level). Never later
  // than the earliest deadline's tick. A deadline of INT64_MAX never fires.
  std::optional<int64_t> NextDeadline() const;
  size_t size() const { return timers_; }

 private:
  static constexpr int kLevels = 5;
  static constexpr int kSlotBits = 6;
  static constexpr int kSlots = 1 << kSlotBits;
  static constexpr uint32_t kNil = 0xffffffff;
  // Lists besides the wheel's slots (level * kSlots + slot).
  static constexpr uint16_t kDueList = kLevels * kSlots;  // Deadlines already passed.
  static constexpr uint16_t kFiringList = kDueList + 1;   // Being called back by Expire.
  static constexpr uint16_t kListCount = kFiringList + 1;

  // Zero bytes: no timer (the array is a fresh mapping).
  struct Link {
    int64_t deadline_ns;
    uint32_t next;
    uint32_t prev;
    uint16_t list;  // Plus one (0: none).
  };
  struct Unmapper {
    size_t len;
    void operator()(Link* p) const;
  };

  void ListPushBack(uint16_t list, uint32_t index);
  void ListUnlink(uint32_t index);
  // Puts an armed index in the wheel (or the due list) relative to now_tick_.
  void Place(uint32_t index);
  // The first tick at or after now_tick_ at which level `level` (>= 1) next
  // moves a slot down, or nullopt if the level is empty.
  std::optional<uint64_t> NextCascade(int level) const;
  std::optional<uint64_t> NextLevel0() const;
  // Moves every timer due at or before `target` to the firing list.
  void Advance(uint64_t target);

  std::unique_ptr<Link[], Unmapper> links_;
  uint32_t list_head_[kListCount];
  uint32_t list_tail_[kListCount];
  uint64_t occupied_[kLevels] = {};  // Non-empty slots, per level.
  uint64_t now_tick_ = 0;            // Ticks before this one have been expired.
  size_t timers_ = 0;                // Set timers (wheel and due list).
  size_t wheel_timers_ = 0;          // Of which in the wheel.
  bool expiring_ = false;
};

}  // namespace vunet::net

#endif  // VUNET_NET_FLOW_TIMER_WHEEL_H_
