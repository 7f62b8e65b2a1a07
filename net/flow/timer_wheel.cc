#include "net/flow/timer_wheel.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <limits>

namespace vunet::net {
namespace {

uint64_t TickAtOrAfter(int64_t deadline_ns) {
  if (deadline_ns <= 0) return 0;
  const uint64_t d = static_cast<uint64_t>(deadline_ns);
  const uint64_t tick = static_cast<uint64_t>(TimerWheel::kTickNs);
  return d / tick + (d % tick != 0 ? 1 : 0);
}

int64_t TickToNs(uint64_t tick) {
  constexpr uint64_t kMaxTick =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / TimerWheel::kTickNs);
  if (tick > kMaxTick) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(tick) * TimerWheel::kTickNs;
}

}  // namespace

void TimerWheel::Unmapper::operator()(Link* p) const {
  if (p != nullptr) munmap(p, len);
}

TimerWheel::TimerWheel(size_t capacity) : links_(nullptr, Unmapper{0}) {
  const size_t len = std::max<size_t>(capacity, 1) * sizeof(Link);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p != MAP_FAILED) links_ = std::unique_ptr<Link[], Unmapper>(static_cast<Link*>(p), {len});
  std::fill(std::begin(list_head_), std::end(list_head_), kNil);
  std::fill(std::begin(list_tail_), std::end(list_tail_), kNil);
}

void TimerWheel::ListPushBack(uint16_t list, uint32_t index) {
  Link& e = links_[index];
  e.list = static_cast<uint16_t>(list + 1);
  e.next = kNil;
  e.prev = list_tail_[list];
  if (list_tail_[list] != kNil) {
    links_[list_tail_[list]].next = index;
  } else {
    list_head_[list] = index;
    if (list < kDueList) occupied_[list / kSlots] |= uint64_t{1} << (list % kSlots);
  }
  list_tail_[list] = index;
  if (list < kDueList) ++wheel_timers_;
}

void TimerWheel::ListUnlink(uint32_t index) {
  Link& e = links_[index];
  const uint16_t list = static_cast<uint16_t>(e.list - 1);
  if (e.prev != kNil) {
    links_[e.prev].next = e.next;
  } else {
    list_head_[list] = e.next;
  }
  if (e.next != kNil) {
    links_[e.next].prev = e.prev;
  } else {
    list_tail_[list] = e.prev;
  }
  e.list = 0;
  if (list < kDueList) {
    --wheel_timers_;
    if (list_head_[list] == kNil) occupied_[list / kSlots] &= ~(uint64_t{1} << (list % kSlots));
  }
}

void TimerWheel::Place(uint32_t index) {
  const uint64_t d = TickAtOrAfter(links_[index].deadline_ns);
  if (d < now_tick_) {
    ListPushBack(kDueList, index);
    return;
  }
  constexpr uint64_t kRange = uint64_t{1} << (kSlotBits * kLevels);
  // Beyond the top level's reach: parked at its far end, and placed again
  // (by the real deadline) when that slot comes down.
  const uint64_t diff = std::min(d - now_tick_, kRange - 1);
  const uint64_t p = now_tick_ + diff;
  const int level = diff < kSlots ? 0 : (63 - std::countl_zero(diff)) / kSlotBits;
  const uint64_t slot = (p >> (kSlotBits * level)) & (kSlots - 1);
  ListPushBack(static_cast<uint16_t>(level * kSlots + slot), index);
}

std::optional<uint64_t> TimerWheel::NextLevel0() const {
  if (occupied_[0] == 0) return std::nullopt;
  // Level 0 holds ticks now_tick_ .. now_tick_ + 63, each in slot tick % 64.
  const int offset =
      std::countr_zero(std::rotr(occupied_[0], static_cast<int>(now_tick_ & (kSlots - 1))));
  return now_tick_ + static_cast<uint64_t>(offset);
}

std::optional<uint64_t> TimerWheel::NextCascade(int level) const {
  if (occupied_[level] == 0) return std::nullopt;
  // A level-k slot comes down when the tick enters the block of 64^k ticks
  // it stands for; the blocks held start at or after now_tick_, within 64.
  const int shift = kSlotBits * level;
  const uint64_t first_block = (now_tick_ + (uint64_t{1} << shift) - 1) >> shift;
  const int offset =
      std::countr_zero(std::rotr(occupied_[level], static_cast<int>(first_block & (kSlots - 1))));
  return (first_block + static_cast<uint64_t>(offset)) << shift;
}

void TimerWheel::Advance(uint64_t target) {
  while (wheel_timers_ > 0) {
    uint64_t next = std::numeric_limits<uint64_t>::max();
    if (std::optional<uint64_t> t = NextLevel0()) next = *t;
    for (int level = 1; level < kLevels; ++level) {
      if (std::optional<uint64_t> t = NextCascade(level)) next = std::min(next, *t);
    }
    if (next > target) break;
    now_tick_ = next;
    // Higher levels first: what comes down from level 2 may go on down with
    // level 1's slot for the same tick.
    for (int level = kLevels - 1; level >= 1; --level) {
      const int shift = kSlotBits * level;
      if ((next & ((uint64_t{1} << shift) - 1)) != 0) continue;
      const uint16_t list =
          static_cast<uint16_t>(level * kSlots + ((next >> shift) & (kSlots - 1)));
      // Place never puts an entry back into the slot being emptied: what
      // it holds is due within this block, so goes to a lower level (or, for
      // deadlines past the top level, to the slot before this one).
      while (list_head_[list] != kNil) {
        const uint32_t index = list_head_[list];
        ListUnlink(index);
        Place(index);
      }
    }
    const uint16_t list = static_cast<uint16_t>(next & (kSlots - 1));
    while (list_head_[list] != kNil) {
      const uint32_t index = list_head_[list];
      ListUnlink(index);
      ListPushBack(kFiringList, index);
    }
    now_tick_ = next + 1;
  }
  now_tick_ = std::max(now_tick_, target + 1);
}

void TimerWheel::Set(uint32_t index, int64_t deadline_ns) {
  if (links_[index].list != 0) {
    ListUnlink(index);
  } else {
    ++timers_;
  }
  links_[index].deadline_ns = deadline_ns;
  Place(index);
}

void TimerWheel::Cancel(uint32_t index) {
  if (links_[index].list == 0) return;
  ListUnlink(index);
  --timers_;
}

std::optional<int64_t> TimerWheel::Deadline(uint32_t index) const {
  if (links_[index].list == 0) return std::nullopt;
  return links_[index].deadline_ns;
}

size_t TimerWheel::Expire(int64_t now_ns, absl::FunctionRef<void(uint32_t)> fire) {
  if (expiring_) return 0;
  expiring_ = true;
  while (list_head_[kDueList] != kNil) {
    const uint32_t index = list_head_[kDueList];
    ListUnlink(index);
    ListPushBack(kFiringList, index);
  }
  if (now_ns >= 0) {
    const uint64_t target = static_cast<uint64_t>(now_ns / kTickNs);
    if (target >= now_tick_) Advance(target);
  }
  size_t fired = 0;
  while (list_head_[kFiringList] != kNil) {
    const uint32_t index = list_head_[kFiringList];
    ListUnlink(index);
    --timers_;
    ++fired;
    fire(index);
  }
  expiring_ = false;
  return fired;
}

std::optional<int64_t> TimerWheel::NextDeadline() const {
  if (timers_ == 0) return std::nullopt;
  int64_t best = std::numeric_limits<int64_t>::max();
  bool any = false;
  for (uint32_t i = list_head_[kDueList]; i != kNil; i = links_[i].next) {
    best = std::min(best, links_[i].deadline_ns);
    any = true;
  }
  // (The firing list is empty outside Expire; inside it, those are due now.)
  for (uint32_t i = list_head_[kFiringList]; i != kNil; i = links_[i].next) {
    best = std::min(best, links_[i].deadline_ns);
    any = true;
  }
  if (std::optional<uint64_t> t = NextLevel0()) {
    best = std::min(best, TickToNs(*t));
    any = true;
  }
  for (int level = 1; level < kLevels; ++level) {
    if (std::optional<uint64_t> t = NextCascade(level)) {
      best = std::min(best, TickToNs(*t));
      any = true;
    }
  }
  if (!any) return std::nullopt;
  return best;
}

}  // namespace vunet::net
