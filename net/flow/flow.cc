#include "net/flow/flow.h"

#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"
#include "base/log.h"
#include "base/static_status.h"

namespace vunet::net {
namespace {

constexpr uint8_t kIcmpEchoRequest = 8;
constexpr uint8_t kIcmpv6EchoRequest = 128;

in6_addr MapV4(in_addr a) {
  in6_addr m{};
  m.s6_addr[10] = 0xff;
  m.s6_addr[11] = 0xff;
  std::memcpy(&m.s6_addr[12], &a, 4);
  return m;
}

in_addr UnmapV4(const in6_addr& m) {
  in_addr a;
  std::memcpy(&a, &m.s6_addr[12], 4);
  return a;
}

// The 128-bit product of a and b, folded to 64 bits.
inline uint64_t Mum(uint64_t a, uint64_t b) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
}

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The tick at or after deadline_ns (deadlines at or before 0 are tick 0).
uint64_t TickAtOrAfter(int64_t deadline_ns) {
  if (deadline_ns <= 0) return 0;
  const uint64_t d = static_cast<uint64_t>(deadline_ns);
  const uint64_t tick = static_cast<uint64_t>(FlowTable::kTickNs);
  return d / tick + (d % tick != 0 ? 1 : 0);
}

int64_t TickToNs(uint64_t tick) {
  constexpr uint64_t kMaxTick =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / FlowTable::kTickNs);
  if (tick > kMaxTick) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(tick) * FlowTable::kTickNs;
}

const char* ProtoName(FlowProto proto, bool v4) {
  switch (proto) {
    case FlowProto::kTcp:
      return "TCP";
    case FlowProto::kUdp:
      return "UDP";
    case FlowProto::kIcmp:
      return v4 ? "ICMP" : "ICMPv6";
  }
  return "?";
}

}  // namespace

FlowKey FlowKey::V4(FlowProto proto, in_addr local, uint16_t local_port, in_addr remote,
                    uint16_t remote_port) {
  FlowKey k;
  std::memset(&k, 0, sizeof(k));
  k.local_addr = MapV4(local);
  k.remote_addr = MapV4(remote);
  k.local_port = local_port;
  k.remote_port = remote_port;
  k.proto = proto;
  k.family = AF_INET;
  return k;
}

FlowKey FlowKey::V6(FlowProto proto, const in6_addr& local, uint16_t local_port,
                    const in6_addr& remote, uint16_t remote_port) {
  FlowKey k;
  std::memset(&k, 0, sizeof(k));
  k.local_addr = local;
  k.remote_addr = remote;
  k.local_port = local_port;
  k.remote_port = remote_port;
  k.proto = proto;
  k.family = AF_INET6;
  return k;
}

std::optional<FlowKey> FlowKey::FromFrame(const ParsedFrame& parsed) {
  const bool v4 = parsed.l3 == L3Kind::kIpv4;
  if (!v4 && parsed.l3 != L3Kind::kIpv6) return std::nullopt;
  FlowProto proto;
  uint16_t local_port = parsed.src_port;
  uint16_t remote_port = parsed.dst_port;
  switch (parsed.l4) {
    case L4Kind::kTcp:
      proto = FlowProto::kTcp;
      break;
    case L4Kind::kUdp:
      proto = FlowProto::kUdp;
      break;
    case L4Kind::kIcmp:
      if (!v4 || parsed.icmp.type != kIcmpEchoRequest) return std::nullopt;
      proto = FlowProto::kIcmp;
      local_port = parsed.icmp.id;
      remote_port = 0;
      break;
    case L4Kind::kIcmpv6:
      if (v4 || parsed.icmp.type != kIcmpv6EchoRequest) return std::nullopt;
      proto = FlowProto::kIcmp;
      local_port = parsed.icmp.id;
      remote_port = 0;
      break;
    default:
      return std::nullopt;
  }
  if (v4) return V4(proto, parsed.ip.src4, local_port, parsed.ip.dst4, remote_port);
  return V6(proto, parsed.ip.src6, local_port, parsed.ip.dst6, remote_port);
}

FlowKey FlowKey::Of(FlowProto proto, const InetAddr& local, uint16_t local_port,
                    const InetAddr& remote, uint16_t remote_port) {
  if (local.is_v4()) return V4(proto, local.v4(), local_port, remote.v4(), remote_port);
  return V6(proto, local.v6(), local_port, remote.v6(), remote_port);
}

InetAddr FlowKey::local() const {
  return is_v4() ? InetAddr::V4(local4()) : InetAddr::V6(local_addr);
}

InetAddr FlowKey::remote() const {
  return is_v4() ? InetAddr::V4(remote4()) : InetAddr::V6(remote_addr);
}

in_addr FlowKey::local4() const { return UnmapV4(local_addr); }
in_addr FlowKey::remote4() const { return UnmapV4(remote_addr); }

std::string FlowKey::ToString() const {
  char local[INET6_ADDRSTRLEN] = "?";
  char remote[INET6_ADDRSTRLEN] = "?";
  if (is_v4()) {
    const in_addr l = local4(), r = remote4();
    inet_ntop(AF_INET, &l, local, sizeof(local));
    inet_ntop(AF_INET, &r, remote, sizeof(remote));
  } else {
    inet_ntop(AF_INET6, &local_addr, local, sizeof(local));
    inet_ntop(AF_INET6, &remote_addr, remote, sizeof(remote));
  }
  const char* name = ProtoName(proto, is_v4());
  if (proto == FlowProto::kIcmp) {
    return is_v4() ? absl::StrFormat("%s %s id %d -> %s", name, local, local_port, remote)
                   : absl::StrFormat("%s [%s] id %d -> [%s]", name, local, local_port, remote);
  }
  return is_v4()
             ? absl::StrFormat("%s %s:%d -> %s:%d", name, local, local_port, remote, remote_port)
             : absl::StrFormat("%s [%s]:%d -> [%s]:%d", name, local, local_port, remote,
                               remote_port);
}

absl::StatusOr<std::unique_ptr<FlowTable>> FlowTable::Create(const FlowTableConfig& config) {
  if (config.capacity < 1 || config.capacity > kMaxCapacity) {
    return absl::InvalidArgumentError(
        absl::StrFormat("flow table capacity %d outside 1..%d", config.capacity, kMaxCapacity));
  }
  uint64_t seed = config.seed;
  while (seed == 0) {
    const ssize_t n = getrandom(&seed, sizeof(seed), 0);
    if (n < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrFormat("getrandom: %s", std::strerror(errno)));
    }
  }
  std::unique_ptr<FlowTable> table(new FlowTable(config, seed));
  if (!table->entries_ || !table->data_ || !table->slots_[0] || !table->slots_[1]) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("no memory for a flow table of %d flows", config.capacity));
  }
  return table;
}

FlowTable::FlowTable(const FlowTableConfig& config, uint64_t seed)
    : capacity_(config.capacity), name_(config.name != nullptr ? config.name : "flow") {
  for (uint64_t& s : seeds_) s = SplitMix64(&seed);
  // A load of at most one half.
  const size_t slots = std::max<size_t>(8, std::bit_ceil(capacity_ * 2));
  slot_mask_ = static_cast<uint32_t>(slots - 1);
  // Fresh mappings are zero (free entries, empty slots) and page-aligned.
  entries_ = Map<Entry>(capacity_);
  slots_[0] = Map<Slot>(slots);
  slots_[1] = Map<Slot>(slots);
  data_ = Map<std::byte>(capacity_ * kFlowDataSize);
  std::fill(std::begin(list_head_), std::end(list_head_), kNil);
  std::fill(std::begin(list_tail_), std::end(list_tail_), kNil);
}

void FlowTable::Unmapper::operator()(void* p) const {
  if (p != nullptr) munmap(p, len);
}

template <typename T>
FlowTable::Mapped<T> FlowTable::Map(size_t count) {
  const size_t len = count * sizeof(T);
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Mapped<T>(nullptr, Unmapper{0});
  // Huge pages where the kernel allows them (advice: failure is harmless).
  if (len >= (size_t{2} << 20)) madvise(p, len, MADV_HUGEPAGE);
  return Mapped<T>(static_cast<T*>(p), Unmapper{len});
}

FlowTable::~FlowTable() {
  if (!entries_ || !data_) return;
  for (uint32_t i = 0; i < high_water_; ++i) {
    if (entries_[i].live) DestroyData(entries_[i], i);
  }
}

uint64_t FlowTable::Hash(const FlowKey& key, FlowSide side) const {
  uint64_t w[5];
  std::memcpy(w, &key, sizeof(w));
  w[4] ^= uint64_t{static_cast<uint8_t>(side)} << 56;  // The reserved bytes are zero.
  const uint64_t a = Mum(w[0] ^ seeds_[0], w[1] ^ seeds_[1]);
  const uint64_t b = Mum(w[2] ^ seeds_[2], w[3] ^ seeds_[3]);
  const uint64_t c = Mum(w[4] ^ seeds_[4], a ^ seeds_[5]);
  return Mum(b ^ seeds_[6], c ^ seeds_[7]);
}

uint32_t FlowTable::FindEntry(const FlowKey& key, FlowSide side, uint64_t hash) const {
  const int s = static_cast<int>(side);
  const Slot* slots = slots_[s].get();
  const uint32_t hash32 = static_cast<uint32_t>(hash);
  for (uint32_t pos = hash32 & slot_mask_;; pos = (pos + 1) & slot_mask_) {
    const Slot slot = slots[pos];
    if (slot.ref == 0) return kNil;  // The load is at most 1/2: an empty slot ends every probe.
    if (slot.hash == hash32 && entries_[slot.ref - 1].keys[s] == key) return slot.ref - 1;
  }
}

void FlowTable::IndexInsert(uint32_t index, FlowSide side, uint64_t hash) {
  Slot* slots = slots_[static_cast<int>(side)].get();
  const uint32_t hash32 = static_cast<uint32_t>(hash);
  uint32_t pos = hash32 & slot_mask_;
  while (slots[pos].ref != 0) pos = (pos + 1) & slot_mask_;
  slots[pos] = Slot{index + 1, hash32};
}

void FlowTable::IndexErase(uint32_t index, FlowSide side) {
  const int s = static_cast<int>(side);
  Slot* slots = slots_[s].get();
  uint32_t hole = static_cast<uint32_t>(Hash(entries_[index].keys[s], side)) & slot_mask_;
  while (slots[hole].ref != index + 1) hole = (hole + 1) & slot_mask_;
  // Backward-shift deletion: move later members of the run into the hole
  // when their home position allows, so that no tombstones are needed.
  for (uint32_t j = (hole + 1) & slot_mask_; slots[j].ref != 0; j = (j + 1) & slot_mask_) {
    const uint32_t home = slots[j].hash & slot_mask_;
    if (((j - home) & slot_mask_) >= ((j - hole) & slot_mask_)) {
      slots[hole] = slots[j];
      hole = j;
    }
  }
  slots[hole] = Slot{0, 0};
}

uint32_t FlowTable::AllocateEntry() {
  uint32_t index;
  if (free_head_ != kNil) {
    // First in, first out: a freed slot is reused as late as possible.
    index = free_head_;
    free_head_ = entries_[index].next;
    if (free_head_ == kNil) free_tail_ = kNil;
  } else if (high_water_ < capacity_) {
    index = high_water_++;
  } else {
    return kNil;
  }
  Entry& e = entries_[index];
  e.generation = e.generation + 1 == 0 ? 1 : e.generation + 1;
  e.live = true;
  e.has_key[0] = e.has_key[1] = false;
  e.timer_list = 0;
  e.type = nullptr;
  e.next = kNil;
  return index;
}

void FlowTable::FreeEntry(uint32_t index) {
  Entry& e = entries_[index];
  e.live = false;
  e.next = kNil;
  if (free_tail_ != kNil) {
    entries_[free_tail_].next = index;
  } else {
    free_head_ = index;
  }
  free_tail_ = index;
}

absl::StatusOr<FlowId> FlowTable::Insert(const FlowKey& guest_key) {
  const uint64_t hash = Hash(guest_key, FlowSide::kGuest);
  // Statuses made once: a guest can make every frame a refused insert.
  if (FindEntry(guest_key, FlowSide::kGuest, hash) != kNil) {
    ++stats_.duplicate_refusals;
    return VUNET_STATIC_STATUS(absl::AlreadyExistsError("a flow has this key"));
  }
  const uint32_t index = AllocateEntry();
  if (index == kNil) {
    ++stats_.full_refusals;
    VUNET_LOG_RATELIMITED(kWarning, "%s table full (%d flows): refusing %s", name_, capacity_,
                          guest_key.ToString());
    return VUNET_STATIC_STATUS(absl::ResourceExhaustedError("the flow table is full"));
  }
  Entry& e = entries_[index];
  e.keys[0] = guest_key;
  e.has_key[0] = true;
  IndexInsert(index, FlowSide::kGuest, hash);
  ++size_;
  ++stats_.inserts;
  stats_.peak_flows = std::max<uint64_t>(stats_.peak_flows, size_);
  return FlowId{index, e.generation};
}

absl::Status FlowTable::SetHostKey(FlowId id, const FlowKey& host_key) {
  Entry* e = Live(id);
  if (e == nullptr) return absl::NotFoundError("stale flow id");
  const uint64_t hash = Hash(host_key, FlowSide::kHost);
  const uint32_t owner = FindEntry(host_key, FlowSide::kHost, hash);
  if (owner != kNil) {
    if (owner == id.index) return absl::OkStatus();  // Already its key.
    ++stats_.duplicate_refusals;
    return absl::AlreadyExistsError(
        absl::StrFormat("host key %s belongs to another flow", host_key.ToString()));
  }
  if (e->has_key[1]) IndexErase(id.index, FlowSide::kHost);
  e->keys[1] = host_key;
  e->has_key[1] = true;
  IndexInsert(id.index, FlowSide::kHost, hash);
  return absl::OkStatus();
}

void FlowTable::ClearHostKey(FlowId id) {
  Entry* e = Live(id);
  if (e == nullptr || !e->has_key[1]) return;
  IndexErase(id.index, FlowSide::kHost);
  e->has_key[1] = false;
}

FlowId FlowTable::Find(const FlowKey& key, FlowSide side) {
  ++stats_.lookups;
  const uint32_t index = FindEntry(key, side, Hash(key, side));
  if (index == kNil) return FlowId{};
  ++stats_.hits;
  return FlowId{index, entries_[index].generation};
}

FlowId FlowTable::FindByRef(FlowRef ref) {
  ++stats_.lookups;
  const FlowId id = ref.id();
  if (Live(id) == nullptr) {
    ++stats_.stale_refs;
    return FlowId{};
  }
  ++stats_.hits;
  return id;
}

bool FlowTable::Remove(FlowId id) {
  Entry* e = Live(id);
  if (e == nullptr) return false;
  if (e->timer_list != 0) {
    ListUnlink(id.index);
    --timers_;
  }
  DestroyData(*e, id.index);
  if (e->has_key[0]) IndexErase(id.index, FlowSide::kGuest);
  if (e->has_key[1]) IndexErase(id.index, FlowSide::kHost);
  e->has_key[0] = e->has_key[1] = false;
  FreeEntry(id.index);
  --size_;
  ++stats_.removals;
  return true;
}

const FlowKey* FlowTable::Key(FlowId id, FlowSide side) const {
  const Entry* e = Live(id);
  const int s = static_cast<int>(side);
  if (e == nullptr || !e->has_key[s]) return nullptr;
  return &e->keys[s];
}

void FlowTable::DestroyData(Entry& e, uint32_t index) {
  // Cleared first: a destructor that looks the flow up finds no data.
  const TypeInfo* type = e.type;
  e.type = nullptr;
  if (type != nullptr && type->destroy != nullptr) type->destroy(DataSlot(index));
}

void FlowTable::ClearData(FlowId id) {
  Entry* e = Live(id);
  if (e != nullptr) DestroyData(*e, id.index);
}

void FlowTable::ForEach(absl::FunctionRef<void(FlowId)> f) {
  for (uint32_t i = 0; i < high_water_; ++i) {
    if (entries_[i].live) f(FlowId{i, entries_[i].generation});
  }
}

// Timers.

void FlowTable::ListPushBack(uint16_t list, uint32_t index) {
  Entry& e = entries_[index];
  e.timer_list = static_cast<uint16_t>(list + 1);
  e.timer_next = kNil;
  e.timer_prev = list_tail_[list];
  if (list_tail_[list] != kNil) {
    entries_[list_tail_[list]].timer_next = index;
  } else {
    list_head_[list] = index;
    if (list < kDueList) occupied_[list / kSlots] |= uint64_t{1} << (list % kSlots);
  }
  list_tail_[list] = index;
  if (list < kDueList) ++wheel_timers_;
}

void FlowTable::ListUnlink(uint32_t index) {
  Entry& e = entries_[index];
  const uint16_t list = static_cast<uint16_t>(e.timer_list - 1);
  if (e.timer_prev != kNil) {
    entries_[e.timer_prev].timer_next = e.timer_next;
  } else {
    list_head_[list] = e.timer_next;
  }
  if (e.timer_next != kNil) {
    entries_[e.timer_next].timer_prev = e.timer_prev;
  } else {
    list_tail_[list] = e.timer_prev;
  }
  e.timer_list = 0;
  if (list < kDueList) {
    --wheel_timers_;
    if (list_head_[list] == kNil) occupied_[list / kSlots] &= ~(uint64_t{1} << (list % kSlots));
  }
}

void FlowTable::Place(uint32_t index) {
  const uint64_t d = TickAtOrAfter(entries_[index].deadline_ns);
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

std::optional<uint64_t> FlowTable::NextLevel0() const {
  if (occupied_[0] == 0) return std::nullopt;
  // Level 0 holds ticks now_tick_ .. now_tick_ + 63, each in slot tick % 64.
  const int offset =
      std::countr_zero(std::rotr(occupied_[0], static_cast<int>(now_tick_ & (kSlots - 1))));
  return now_tick_ + static_cast<uint64_t>(offset);
}

std::optional<uint64_t> FlowTable::NextCascade(int level) const {
  if (occupied_[level] == 0) return std::nullopt;
  // A level-k slot comes down when the tick enters the block of 64^k ticks
  // it stands for; the blocks held start at or after now_tick_, within 64.
  const int shift = kSlotBits * level;
  const uint64_t first_block = (now_tick_ + (uint64_t{1} << shift) - 1) >> shift;
  const int offset =
      std::countr_zero(std::rotr(occupied_[level], static_cast<int>(first_block & (kSlots - 1))));
  return (first_block + static_cast<uint64_t>(offset)) << shift;
}

void FlowTable::Advance(uint64_t target) {
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

bool FlowTable::SetTimer(FlowId id, int64_t deadline_ns) {
  Entry* e = Live(id);
  if (e == nullptr) return false;
  if (e->timer_list != 0) {
    ListUnlink(id.index);
  } else {
    ++timers_;
  }
  e->deadline_ns = deadline_ns;
  Place(id.index);
  return true;
}

bool FlowTable::CancelTimer(FlowId id) {
  Entry* e = Live(id);
  if (e == nullptr) return false;
  if (e->timer_list != 0) {
    ListUnlink(id.index);
    --timers_;
  }
  return true;
}

std::optional<int64_t> FlowTable::Deadline(FlowId id) const {
  const Entry* e = Live(id);
  if (e == nullptr || e->timer_list == 0) return std::nullopt;
  return e->deadline_ns;
}

size_t FlowTable::Expire(int64_t now_ns, absl::FunctionRef<void(FlowId)> expired) {
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
    ++stats_.timers_fired;
    expired(FlowId{index, entries_[index].generation});
  }
  expiring_ = false;
  return fired;
}

std::optional<int64_t> FlowTable::NextDeadline() const {
  if (timers_ == 0) return std::nullopt;
  int64_t best = std::numeric_limits<int64_t>::max();
  bool any = false;
  for (uint32_t i = list_head_[kDueList]; i != kNil; i = entries_[i].timer_next) {
    best = std::min(best, entries_[i].deadline_ns);
    any = true;
  }
  // (The firing list is empty outside Expire; inside it, those are due now.)
  for (uint32_t i = list_head_[kFiringList]; i != kNil; i = entries_[i].timer_next) {
    best = std::min(best, entries_[i].deadline_ns);
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
