// The flow table: every TCP connection, UDP association and ICMP echo stream
// the backend translates, in one table of fixed capacity.
//
// All storage is allocated when the table is created (entries, per-flow data
// slots, the hash index, the timer wheel); inserting, finding, removing and
// timing flows allocate nothing afterwards. The arrays are anonymous mappings
// (transparent huge pages where the kernel allows, for fewer TLB misses on
// random lookups), touched only as they are used, so a large capacity costs
// address space more than resident memory.
//
// Each flow is found three ways:
//  - by its guest-side key (FlowKey: protocol, family, the guest's address
//    and port, the remote address and port as the guest addressed it): what a
//    frame from the guest carries;
//  - by an optional host-side key (SetHostKey: our socket's local address and
//    port, and its peer), for flows whose host side is not told apart by the
//    socket alone (an inbound forwarded connection, a shared UDP socket);
//  - by a FlowRef, the 64-bit value an epoll event carries (data.u64) for a
//    socket of the flow: its slot index, the slot's generation and an owner-
//    defined kind. Slots are reused; the generation changes on every reuse,
//    so an event queued for a flow that has since been removed (and its slot
//    given to a new flow) is recognized as stale and ignored.
//
// Keys are hashed with a per-table random seed (getrandom), so a guest that
// chooses its ports and addresses cannot aim flows at one bucket (hash
// flooding) without knowing the seed.
//
// When the table is full, Insert fails with kResourceExhausted, counts it and
// logs a rate-limited line; the caller refuses the connection (RST for TCP,
// the datagram dropped for UDP).
//
// Per-flow state: each flow has a data slot of kFlowDataSize bytes in which
// the translator constructs its state (Emplace<T>); it is destroyed when the
// flow is removed or the table destroyed, so a UniqueFd kept in it is closed.
//
// Timers: at most one deadline per flow, in a TimerWheel (timer_wheel.h: 5
// levels of 64 slots, 1 ms ticks) indexed by the flow's slot. The owner arms one timerfd at
// NextDeadline() and calls Expire(now) when it fires; idle timeouts are timers the translator
// re-arms. Deadlines are rounded up to the next tick: a timer never fires early and at most one
// tick (plus the owner's latency) late.
//
// Not thread-safe: one table per epoll loop (per queue pair).
//
//   absl::StatusOr<std::unique_ptr<FlowTable>> flows = FlowTable::Create({});
//   FlowKey key = FlowKey::V4(FlowProto::kTcp, guest_ip, sport, dst_ip, dport);
//   FlowId id = (*flows)->Find(key);
//   if (!id.valid()) {
//     absl::StatusOr<FlowId> added = (*flows)->Insert(key);
//     if (!added.ok()) { /* send RST */ return; }
//     id = *added;
//     TcpState* tcp = (*flows)->Emplace<TcpState>(id, ...);
//     ev.data.u64 = FlowRef(id, kTcpSocket).u64();  // epoll_ctl(...)
//   }
//   (*flows)->SetTimer(id, now + idle_timeout);
//   ... on an epoll event: FlowRef ref = FlowRef::FromU64(ev.data.u64);
//       FlowId id = (*flows)->FindByRef(ref); if (!id.valid()) return;  // stale
//   ... on the timerfd: (*flows)->Expire(now, [&](FlowId id) { ... });
//       then re-arm the timerfd at (*flows)->NextDeadline().

#ifndef VUNET_NET_FLOW_H_
#define VUNET_NET_FLOW_H_

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "net/flow/timer_wheel.h"
#include "net/packet/frame.h"
#include "net/packet/inet.h"

namespace vunet::net {

// The protocol of a flow; the values are the IP protocol numbers. ICMP means
// ICMP echo over IPv4 and ICMPv6 echo over IPv6 (the family tells which).
enum class FlowProto : uint8_t { kIcmp = 1, kTcp = 6, kUdp = 17 };

// A flow's identity as one side sees it. "local" is the end we serve (the
// guest, on the guest side; our socket standing in for it, on the host side),
// "remote" the other end. For ICMP echo, local_port is the echo identifier
// and remote_port is 0.
//
// Addresses are kept as 16 bytes whatever the family: an IPv4 address is
// stored v4-mapped (::ffff:a.b.c.d) and `family` (AF_INET or AF_INET6) says
// which it is, so an IPv4 flow and an IPv6 flow to the v4-mapped address are
// different keys. Build keys with V4/V6/FromFrame: they zero every byte, and
// equality and hashing look at the bytes.
struct FlowKey {
  in6_addr local_addr;
  in6_addr remote_addr;
  uint16_t local_port;  // Host order.
  uint16_t remote_port;
  FlowProto proto;
  uint8_t family;
  uint8_t reserved[2];  // Zero.

  static FlowKey V4(FlowProto proto, in_addr local, uint16_t local_port, in_addr remote,
                    uint16_t remote_port);
  static FlowKey V6(FlowProto proto, const in6_addr& local, uint16_t local_port,
                    const in6_addr& remote, uint16_t remote_port);
  // From addresses of one family (that of `local`; `remote` must match).
  static FlowKey Of(FlowProto proto, const InetAddr& local, uint16_t local_port,
                    const InetAddr& remote, uint16_t remote_port);
  // The guest-side key of a frame from the guest: TCP or UDP over IPv4 or
  // IPv6 (source = local), or an ICMP/ICMPv6 echo request (the identifier as
  // local_port). nullopt for anything else.
  static std::optional<FlowKey> FromFrame(const ParsedFrame& parsed);

  bool is_v4() const { return family == AF_INET; }
  in_addr local4() const;  // For IPv4 keys: the address unmapped.
  in_addr remote4() const;
  InetAddr local() const;
  InetAddr remote() const;

  // "TCP 10.0.2.15:40000 -> 93.184.216.34:80" (IPv6 addresses in brackets).
  std::string ToString() const;

  friend bool operator==(const FlowKey& a, const FlowKey& b) {
    return std::memcmp(&a, &b, sizeof(FlowKey)) == 0;
  }
  friend bool operator!=(const FlowKey& a, const FlowKey& b) { return !(a == b); }
};
static_assert(sizeof(FlowKey) == 40, "FlowKey is hashed as five 64-bit words");

enum class FlowSide : uint8_t { kGuest = 0, kHost = 1 };

// A live flow: its slot and the slot's generation. Generation 0 is never
// used, so FlowId{} is "no flow".
struct FlowId {
  uint32_t index = 0;
  uint32_t generation = 0;

  bool valid() const { return generation != 0; }
  friend bool operator==(FlowId a, FlowId b) {
    return a.index == b.index && a.generation == b.generation;
  }
  friend bool operator!=(FlowId a, FlowId b) { return !(a == b); }
};

// A flow reference for epoll's data.u64: bits 0-23 the slot index, 24-55 the
// generation, 56-63 a kind the owner chooses (which of the flow's fds, or to
// tell flow events from its other event sources). A FlowRef of a flow that
// has been removed finds nothing, even once its slot is reused.
class FlowRef {
 public:
  static constexpr int kIndexBits = 24;
  constexpr FlowRef() = default;
  constexpr explicit FlowRef(FlowId id, uint8_t kind = 0)
      : value_((uint64_t{id.index} & ((uint64_t{1} << kIndexBits) - 1)) |
               (uint64_t{id.generation} << kIndexBits) | (uint64_t{kind} << 56)) {}
  static constexpr FlowRef FromU64(uint64_t value) {
    FlowRef ref;
    ref.value_ = value;
    return ref;
  }

  constexpr uint64_t u64() const { return value_; }
  constexpr FlowId id() const {
    return FlowId{static_cast<uint32_t>(value_ & ((uint64_t{1} << kIndexBits) - 1)),
                  static_cast<uint32_t>(value_ >> kIndexBits)};
  }
  constexpr uint8_t kind() const { return static_cast<uint8_t>(value_ >> 56); }

 private:
  uint64_t value_ = 0;
};

struct FlowTableConfig {
  size_t capacity = 65536;  // 1..FlowTable::kMaxCapacity flows.
  // The hash seed; 0 draws one from getrandom (what the backend wants).
  // Tests and benchmarks may fix it.
  uint64_t seed = 0;
  const char* name = "flow";  // In log lines.
};

struct FlowStats {
  uint64_t inserts = 0;
  uint64_t removals = 0;
  uint64_t lookups = 0;  // Find and FindByRef.
  uint64_t hits = 0;
  uint64_t full_refusals = 0;       // Insert with the table full.
  uint64_t duplicate_refusals = 0;  // Insert or SetHostKey of a key in use.
  uint64_t stale_refs = 0;          // FindByRef of a removed flow.
  uint64_t timers_fired = 0;
  uint64_t peak_flows = 0;
};

// Bytes of per-flow data (alignment kFlowDataAlign): a TCP connection's state
// is the largest (five cache lines; the table maps its slots lazily).
inline constexpr size_t kFlowDataSize = 320;
inline constexpr size_t kFlowDataAlign = 16;

class FlowTable {
 public:
  static constexpr size_t kDefaultCapacity = 65536;
  static constexpr size_t kMaxCapacity = size_t{1} << 20;
  static constexpr int64_t kTickNs = TimerWheel::kTickNs;  // The timers' granularity.

  // kInvalidArgument for a capacity outside 1..kMaxCapacity; kInternal if
  // getrandom fails; kResourceExhausted if memory cannot be had.
  static absl::StatusOr<std::unique_ptr<FlowTable>> Create(const FlowTableConfig& config);

  ~FlowTable();  // Destroys every live flow's data.
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  // Adds a flow with this guest-side key. kResourceExhausted if the table is
  // full (counted, logged rate-limited: refuse the connection),
  // kAlreadyExists if a flow has the key.
  absl::StatusOr<FlowId> Insert(const FlowKey& guest_key);

  // Gives flow `id` a host-side key (replacing one it had). kNotFound for a
  // stale id, kAlreadyExists if another flow has the key as its host key.
  absl::Status SetHostKey(FlowId id, const FlowKey& host_key);
  void ClearHostKey(FlowId id);

  // The flow with this key on this side, or FlowId{}.
  FlowId Find(const FlowKey& key, FlowSide side = FlowSide::kGuest);
  // The flow `ref` was made for if it is still live, or FlowId{} (stale or
  // garbage refs, counted).
  FlowId FindByRef(FlowRef ref);
  bool IsLive(FlowId id) const { return Live(id) != nullptr; }

  // Removes the flow: cancels its timer, drops its keys, destroys its data.
  // False (and nothing done) for a stale id.
  bool Remove(FlowId id);

  // The flow's key on `side`, or nullptr (stale id, or no host key).
  const FlowKey* Key(FlowId id, FlowSide side = FlowSide::kGuest) const;

  // Per-flow data. Emplace constructs a T in the flow's slot (destroying what
  // was there) and returns it, nullptr for a stale id. Data<T> returns the T
  // if the flow is live and holds a T (the type is checked), else nullptr.
  template <typename T, typename... Args>
  T* Emplace(FlowId id, Args&&... args);
  template <typename T>
  T* Data(FlowId id);
  template <typename T>
  const T* Data(FlowId id) const;
  void ClearData(FlowId id);

  // Calls f for every live flow, in slot order (a scan of the slots ever
  // used: meant for sweeps and shutdown, not the data path). f may remove
  // any flow; flows f inserts may or may not be visited.
  void ForEach(absl::FunctionRef<void(FlowId)> f);

  // Timers: at most one deadline per flow (CLOCK_MONOTONIC ns, or any clock
  // the owner uses consistently). SetTimer replaces the flow's deadline;
  // a deadline at or before the last Expire fires on the next one. False for
  // a stale id.
  bool SetTimer(FlowId id, int64_t deadline_ns);
  bool CancelTimer(FlowId id);
  // The flow's deadline as set, or nullopt if it has none (or is stale).
  std::optional<int64_t> Deadline(FlowId id) const;

  // Calls `expired` once for every flow whose deadline (rounded up to a
  // tick) is at or before now_ns, earliest tick first and in the order armed
  // within a tick; the timer is cleared before the call. The callback may
  // re-arm, cancel or remove any flow; a timer re-armed for a time already
  // passed fires on the next call, not this one. Returns how many fired.
  // Not reentrant: Expire from within the callback returns 0.
  size_t Expire(int64_t now_ns, absl::FunctionRef<void(FlowId)> expired);

  // When the owner's timerfd should fire next (absolute ns, possibly already
  // passed), or nullopt if no timer is armed: the earliest deadline rounded
  // up to a tick, or an earlier tick at which the wheel moves timers down a
  // level (an Expire then fires nothing, and the next answer is closer; at
  // most one such wake-up per level per slot of that level). Never later than
  // the earliest deadline's tick. A deadline of INT64_MAX never fires.
  std::optional<int64_t> NextDeadline() const { return wheel_.NextDeadline(); }
  size_t timer_count() const { return wheel_.size(); }

  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  bool full() const { return size_ == capacity_; }
  const FlowStats& stats() const { return stats_; }

 private:
  static constexpr uint32_t kNil = 0xffffffff;

  // What Emplace<T> records of T: its identity (the address) and how to
  // destroy it.
  struct TypeInfo {
    void (*destroy)(void*);
  };

  // Zero bytes are a free, never used entry (the array is a fresh mapping).
  // 128 bytes, aligned to a cache line: the guest key a lookup compares is
  // in the first line.
  struct alignas(64) Entry {
    FlowKey keys[2];      // By FlowSide.
    uint32_t generation;  // Of the current or last occupant; 0 before the first.
    uint32_t next;        // The free list's link.
    bool live;
    bool has_key[2];
    const TypeInfo* type;  // Of the data held, or nullptr.
  };
  static_assert(sizeof(Entry) == 128);

  // The two indexes (one per side) are open-addressed with linear probing,
  // at most half full. A slot holds the entry index plus one (0: empty) and
  // the low 32 bits of the key's hash: the home position, and above it tag
  // bits that spare most mismatches a look at the entry.
  struct Slot {
    uint32_t ref;
    uint32_t hash;
  };

  // An anonymous mapping of `len` bytes.
  struct Unmapper {
    size_t len;  // (No initializer: it would make this not default-constructible here.)
    void operator()(void* p) const;
  };
  template <typename T>
  using Mapped = std::unique_ptr<T[], Unmapper>;
  template <typename T>
  static Mapped<T> Map(size_t count);

  template <typename T>
  static const TypeInfo* TypeOf() {
    // Not const: each T's object has an address of its own.
    static TypeInfo info = {
        std::is_trivially_destructible_v<T> ? nullptr : +[](void* p) { static_cast<T*>(p)->~T(); }};
    return &info;
  }

  FlowTable(const FlowTableConfig& config, uint64_t seed);

  Entry* Live(FlowId id) {
    return const_cast<Entry*>(static_cast<const FlowTable*>(this)->Live(id));
  }
  const Entry* Live(FlowId id) const {
    if (id.index >= capacity_) return nullptr;
    const Entry& e = entries_[id.index];
    return e.live && e.generation == id.generation ? &e : nullptr;
  }
  void* DataSlot(uint32_t index) const { return data_.get() + size_t{index} * kFlowDataSize; }
  void DestroyData(Entry& e, uint32_t index);

  uint64_t Hash(const FlowKey& key, FlowSide side) const;
  // The entry holding `key` on `side`, or kNil.
  uint32_t FindEntry(const FlowKey& key, FlowSide side, uint64_t hash) const;
  void IndexInsert(uint32_t index, FlowSide side, uint64_t hash);
  void IndexErase(uint32_t index, FlowSide side);

  uint32_t AllocateEntry();
  void FreeEntry(uint32_t index);

  const size_t capacity_;
  const std::string name_;
  uint64_t seeds_[8];

  Mapped<Entry> entries_{nullptr, Unmapper{0}};
  Mapped<std::byte> data_{nullptr, Unmapper{0}};
  Mapped<Slot> slots_[2] = {{nullptr, Unmapper{0}}, {nullptr, Unmapper{0}}};  // By side.
  uint32_t slot_mask_ = 0;

  size_t size_ = 0;
  uint32_t high_water_ = 0;  // Entries at and above were never used.
  uint32_t free_head_ = kNil;
  uint32_t free_tail_ = kNil;

  // The flows' timers, by entry index.
  TimerWheel wheel_;

  FlowStats stats_;
};

template <typename T, typename... Args>
T* FlowTable::Emplace(FlowId id, Args&&... args) {
  static_assert(sizeof(T) <= kFlowDataSize, "per-flow data is kFlowDataSize bytes");
  static_assert(alignof(T) <= kFlowDataAlign, "per-flow data is aligned to kFlowDataAlign");
  Entry* e = Live(id);
  if (e == nullptr) return nullptr;
  DestroyData(*e, id.index);
  T* t = ::new (DataSlot(id.index)) T(std::forward<Args>(args)...);
  e->type = TypeOf<T>();
  return t;
}

template <typename T>
T* FlowTable::Data(FlowId id) {
  Entry* e = Live(id);
  if (e == nullptr || e->type != TypeOf<T>()) return nullptr;
  return std::launder(static_cast<T*>(DataSlot(id.index)));
}

template <typename T>
const T* FlowTable::Data(FlowId id) const {
  const Entry* e = Live(id);
  if (e == nullptr || e->type != TypeOf<T>()) return nullptr;
  return std::launder(static_cast<const T*>(DataSlot(id.index)));
}

}  // namespace vunet::net

#endif  // VUNET_NET_FLOW_H_
