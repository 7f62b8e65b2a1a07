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
  if (!table->entries_ || !table->data_ || !table->slots_[0] || !table->slots_[1] ||
      !table->wheel_.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("no memory for a flow table of %d flows", config.capacity));
  }
  return table;
}

FlowTable::FlowTable(const FlowTableConfig& config, uint64_t seed)
    : capacity_(config.capacity),
      name_(config.name != nullptr ? config.name : "flow"),
      wheel_(config.capacity) {
  for (uint64_t& s : seeds_) s = SplitMix64(&seed);
  // A load of at most one half.
  const size_t slots = std::max<size_t>(8, std::bit_ceil(capacity_ * 2));
  slot_mask_ = static_cast<uint32_t>(slots - 1);
  // Fresh mappings are zero (free entries, empty slots) and page-aligned.
  entries_ = Map<Entry>(capacity_);
  slots_[0] = Map<Slot>(slots);
  slots_[1] = Map<Slot>(slots);
  data_ = Map<std::byte>(capacity_ * kFlowDataSize);
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
  wheel_.Cancel(id.index);
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

// Timers: the wheel's, by entry index.

bool FlowTable::SetTimer(FlowId id, int64_t deadline_ns) {
  if (Live(id) == nullptr) return false;
  wheel_.Set(id.index, deadline_ns);
  return true;
}

bool FlowTable::CancelTimer(FlowId id) {
  if (Live(id) == nullptr) return false;
  wheel_.Cancel(id.index);
  return true;
}

std::optional<int64_t> FlowTable::Deadline(FlowId id) const {
  if (Live(id) == nullptr) return std::nullopt;
  return wheel_.Deadline(id.index);
}

size_t FlowTable::Expire(int64_t now_ns, absl::FunctionRef<void(FlowId)> expired) {
  return wheel_.Expire(now_ns, [&](uint32_t index) {
    ++stats_.timers_fired;
    expired(FlowId{index, entries_[index].generation});
  });
}

}  // namespace vunet::net
