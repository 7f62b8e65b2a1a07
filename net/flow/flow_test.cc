#include "net/flow/flow.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "base/unique_fd.h"
#include "gtest/gtest.h"
#include "net/packet/frame.h"

namespace vunet::net {
namespace {

constexpr int64_t kMs = 1'000'000;

in_addr V4(const char* s) {
  in_addr a{};
  EXPECT_EQ(inet_pton(AF_INET, s, &a), 1) << s;
  return a;
}

in6_addr V6(const char* s) {
  in6_addr a{};
  EXPECT_EQ(inet_pton(AF_INET6, s, &a), 1) << s;
  return a;
}

// Distinct keys for n = 0, 1, ...: guest ports and remote addresses vary.
FlowKey KeyN(uint32_t n, FlowProto proto = FlowProto::kTcp) {
  in_addr remote;
  remote.s_addr = htonl(0x5db80000u + (n >> 16));
  return FlowKey::V4(proto, V4("10.0.2.15"), static_cast<uint16_t>(n), remote, 80);
}

std::unique_ptr<FlowTable> MakeTable(size_t capacity, uint64_t seed = 1) {
  absl::StatusOr<std::unique_ptr<FlowTable>> t =
      FlowTable::Create({.capacity = capacity, .seed = seed, .name = "test flow"});
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(*t);
}

TEST(FlowKeyTest, V4IsStoredMappedAndDiffersFromV6) {
  const FlowKey k4 = FlowKey::V4(FlowProto::kUdp, V4("10.0.2.15"), 5353, V4("1.2.3.4"), 53);
  EXPECT_TRUE(k4.is_v4());
  EXPECT_EQ(k4.family, AF_INET);
  const in6_addr mapped = V6("::ffff:10.0.2.15");
  EXPECT_EQ(std::memcmp(&k4.local_addr, &mapped, 16), 0);
  EXPECT_EQ(k4.local4().s_addr, V4("10.0.2.15").s_addr);
  EXPECT_EQ(k4.remote4().s_addr, V4("1.2.3.4").s_addr);
  // The same addresses as an IPv6 flow (v4-mapped) are another key.
  const FlowKey k6 = FlowKey::V6(FlowProto::kUdp, mapped, 5353, V6("::ffff:1.2.3.4"), 53);
  EXPECT_NE(k4, k6);
  EXPECT_EQ(k4, FlowKey::V4(FlowProto::kUdp, V4("10.0.2.15"), 5353, V4("1.2.3.4"), 53));
  EXPECT_NE(k4, FlowKey::V4(FlowProto::kTcp, V4("10.0.2.15"), 5353, V4("1.2.3.4"), 53));
  EXPECT_NE(k4, FlowKey::V4(FlowProto::kUdp, V4("10.0.2.15"), 5353, V4("1.2.3.4"), 54));
}

TEST(FlowKeyTest, ToString) {
  EXPECT_EQ(
      FlowKey::V4(FlowProto::kTcp, V4("10.0.2.15"), 40000, V4("93.184.216.34"), 80).ToString(),
      "TCP 10.0.2.15:40000 -> 93.184.216.34:80");
  EXPECT_EQ(FlowKey::V6(FlowProto::kUdp, V6("fd00::2"), 5353, V6("2001:db8::1"), 53).ToString(),
            "UDP [fd00::2]:5353 -> [2001:db8::1]:53");
  EXPECT_EQ(FlowKey::V4(FlowProto::kIcmp, V4("10.0.2.15"), 7, V4("1.1.1.1"), 0).ToString(),
            "ICMP 10.0.2.15 id 7 -> 1.1.1.1");
}

TEST(FlowKeyTest, FromFrame) {
  ParsedFrame p;
  p.l3 = L3Kind::kIpv4;
  p.ip.src4 = V4("10.0.2.15");
  p.ip.dst4 = V4("8.8.8.8");
  p.l4 = L4Kind::kUdp;
  p.src_port = 1234;
  p.dst_port = 53;
  std::optional<FlowKey> k = FlowKey::FromFrame(p);
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(*k, FlowKey::V4(FlowProto::kUdp, V4("10.0.2.15"), 1234, V4("8.8.8.8"), 53));

  p.l4 = L4Kind::kIcmp;
  p.icmp.type = 8;
  p.icmp.id = 77;
  k = FlowKey::FromFrame(p);
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(*k, FlowKey::V4(FlowProto::kIcmp, V4("10.0.2.15"), 77, V4("8.8.8.8"), 0));
  p.icmp.type = 0;  // An echo reply is no flow of ours.
  EXPECT_FALSE(FlowKey::FromFrame(p).has_value());

  p.l3 = L3Kind::kIpv6;
  p.ip.src6 = V6("fd00::2");
  p.ip.dst6 = V6("2001:db8::1");
  p.l4 = L4Kind::kTcp;
  k = FlowKey::FromFrame(p);
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(*k, FlowKey::V6(FlowProto::kTcp, V6("fd00::2"), 1234, V6("2001:db8::1"), 53));
  p.l4 = L4Kind::kIcmpv6;
  p.icmp.type = 128;
  k = FlowKey::FromFrame(p);
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->proto, FlowProto::kIcmp);
  EXPECT_EQ(k->local_port, 77);

  p.l3 = L3Kind::kArp;
  EXPECT_FALSE(FlowKey::FromFrame(p).has_value());
}

TEST(FlowRefTest, RoundTripsThroughU64) {
  const FlowId id{0xabcdef, 0x89abcdef};
  const FlowRef ref(id, 0x5a);
  EXPECT_EQ(ref.id(), id);
  EXPECT_EQ(ref.kind(), 0x5a);
  const FlowRef back = FlowRef::FromU64(ref.u64());
  EXPECT_EQ(back.id(), id);
  EXPECT_EQ(back.kind(), 0x5a);
  EXPECT_EQ(ref.u64() >> 56, 0x5au);
  EXPECT_FALSE(FlowRef().id().valid());
}

TEST(FlowTableTest, CreateChecksCapacity) {
  EXPECT_EQ(FlowTable::Create({.capacity = 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FlowTable::Create({.capacity = FlowTable::kMaxCapacity + 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<FlowTable>> max =
      FlowTable::Create({.capacity = FlowTable::kMaxCapacity});
  ASSERT_TRUE(max.ok()) << max.status();
  EXPECT_EQ((*max)->capacity(), FlowTable::kMaxCapacity);
  absl::StatusOr<std::unique_ptr<FlowTable>> def = FlowTable::Create({});
  ASSERT_TRUE(def.ok());
  EXPECT_EQ((*def)->capacity(), FlowTable::kDefaultCapacity);
}

TEST(FlowTableTest, InsertFindRemoveAtCapacityAndRefuseWhenFull) {
  constexpr size_t kCap = 1000;
  std::unique_ptr<FlowTable> t = MakeTable(kCap);
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < kCap; ++i) {
    absl::StatusOr<FlowId> id = t->Insert(KeyN(i));
    ASSERT_TRUE(id.ok()) << i << ": " << id.status();
    ids.push_back(*id);
  }
  EXPECT_TRUE(t->full());
  EXPECT_EQ(t->size(), kCap);
  for (uint32_t i = 0; i < kCap; ++i) {
    EXPECT_EQ(t->Find(KeyN(i)), ids[i]);
    ASSERT_NE(t->Key(ids[i]), nullptr);
    EXPECT_EQ(*t->Key(ids[i]), KeyN(i));
  }
  EXPECT_FALSE(t->Find(KeyN(kCap)).valid());

  absl::StatusOr<FlowId> refused = t->Insert(KeyN(kCap));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(t->stats().full_refusals, 1u);

  EXPECT_TRUE(t->Remove(ids[500]));
  EXPECT_FALSE(t->Remove(ids[500]));
  EXPECT_FALSE(t->Find(KeyN(500)).valid());
  absl::StatusOr<FlowId> again = t->Insert(KeyN(kCap));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->index, ids[500].index);  // The one free slot.
  EXPECT_NE(again->generation, ids[500].generation);
  EXPECT_EQ(t->Find(KeyN(kCap)), *again);

  // Every other flow still found after the churn.
  for (uint32_t i = 0; i < kCap; ++i) {
    if (i != 500) {
      EXPECT_EQ(t->Find(KeyN(i)), ids[i]) << i;
    }
  }
  for (uint32_t i = 0; i < kCap; ++i) {
    if (i != 500) {
      EXPECT_TRUE(t->Remove(ids[i]));
    }
  }
  EXPECT_TRUE(t->Remove(*again));
  EXPECT_EQ(t->size(), 0u);
  EXPECT_EQ(t->stats().inserts, kCap + 1);
  EXPECT_EQ(t->stats().removals, kCap + 1);
  EXPECT_EQ(t->stats().peak_flows, kCap);
}

TEST(FlowTableTest, DuplicateInsertRefused) {
  std::unique_ptr<FlowTable> t = MakeTable(16);
  ASSERT_TRUE(t->Insert(KeyN(1)).ok());
  EXPECT_EQ(t->Insert(KeyN(1)).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(t->size(), 1u);
  EXPECT_EQ(t->stats().duplicate_refusals, 1u);
}

TEST(FlowTableTest, StaleRefsAreDetectedAfterReuse) {
  std::unique_ptr<FlowTable> t = MakeTable(1);
  absl::StatusOr<FlowId> a = t->Insert(KeyN(1));
  ASSERT_TRUE(a.ok());
  const FlowRef ref_a(*a, 3);
  EXPECT_EQ(t->FindByRef(FlowRef::FromU64(ref_a.u64())), *a);
  ASSERT_TRUE(t->Remove(*a));
  EXPECT_FALSE(t->FindByRef(ref_a).valid());

  absl::StatusOr<FlowId> b = t->Insert(KeyN(2));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->index, a->index);
  EXPECT_FALSE(t->FindByRef(ref_a).valid());  // Same slot, old generation.
  EXPECT_EQ(t->FindByRef(FlowRef(*b, 3)), *b);
  EXPECT_FALSE(t->IsLive(*a));
  EXPECT_EQ(t->Key(*a), nullptr);
  EXPECT_FALSE(t->SetTimer(*a, 5));
  EXPECT_FALSE(t->Remove(*a));
  EXPECT_TRUE(t->IsLive(*b));

  // Garbage: an index past the capacity, generation zero.
  EXPECT_FALSE(t->FindByRef(FlowRef(FlowId{5, b->generation})).valid());
  EXPECT_FALSE(t->FindByRef(FlowRef(FlowId{0, 0})).valid());
  EXPECT_FALSE(t->FindByRef(FlowRef::FromU64(~uint64_t{0})).valid());
  EXPECT_EQ(t->stats().stale_refs, 5u);
}

TEST(FlowTableTest, FreedSlotsAreReusedLast) {
  std::unique_ptr<FlowTable> t = MakeTable(4);
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < 4; ++i) ids.push_back(*t->Insert(KeyN(i)));
  ASSERT_TRUE(t->Remove(ids[1]));
  ASSERT_TRUE(t->Remove(ids[3]));
  EXPECT_EQ(t->Insert(KeyN(10))->index, ids[1].index);  // First freed, first reused.
  EXPECT_EQ(t->Insert(KeyN(11))->index, ids[3].index);
}

TEST(FlowTableTest, HostKeys) {
  std::unique_ptr<FlowTable> t = MakeTable(8);
  const FlowId a = *t->Insert(KeyN(1));
  const FlowId b = *t->Insert(KeyN(2));
  const FlowKey host_a =
      FlowKey::V4(FlowProto::kTcp, V4("192.168.1.10"), 40001, V4("93.184.0.0"), 80);
  ASSERT_TRUE(t->SetHostKey(a, host_a).ok());
  EXPECT_EQ(t->Find(host_a, FlowSide::kHost), a);
  EXPECT_FALSE(t->Find(host_a, FlowSide::kGuest).valid());
  EXPECT_FALSE(t->Find(KeyN(1), FlowSide::kHost).valid());
  ASSERT_NE(t->Key(a, FlowSide::kHost), nullptr);
  EXPECT_EQ(*t->Key(a, FlowSide::kHost), host_a);
  EXPECT_EQ(t->Key(b, FlowSide::kHost), nullptr);

  // A host key equal to another flow's guest key: the sides are apart.
  ASSERT_TRUE(t->SetHostKey(b, KeyN(1)).ok());
  EXPECT_EQ(t->Find(KeyN(1), FlowSide::kHost), b);
  EXPECT_EQ(t->Find(KeyN(1), FlowSide::kGuest), a);

  EXPECT_EQ(t->SetHostKey(b, host_a).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(t->SetHostKey(a, host_a).ok());  // Its own already.

  // Replacing and clearing.
  const FlowKey host_a2 =
      FlowKey::V4(FlowProto::kTcp, V4("192.168.1.10"), 40002, V4("93.184.0.0"), 80);
  ASSERT_TRUE(t->SetHostKey(a, host_a2).ok());
  EXPECT_FALSE(t->Find(host_a, FlowSide::kHost).valid());
  EXPECT_EQ(t->Find(host_a2, FlowSide::kHost), a);
  t->ClearHostKey(a);
  EXPECT_FALSE(t->Find(host_a2, FlowSide::kHost).valid());
  EXPECT_EQ(t->Key(a, FlowSide::kHost), nullptr);

  // Removal drops both keys.
  ASSERT_TRUE(t->Remove(b));
  EXPECT_FALSE(t->Find(KeyN(1), FlowSide::kHost).valid());
  EXPECT_FALSE(t->Find(KeyN(2)).valid());
  EXPECT_EQ(t->SetHostKey(b, host_a).code(), absl::StatusCode::kNotFound);
}

struct Counted {
  explicit Counted(int* alive, int v) : alive(alive), value(v) { ++*alive; }
  ~Counted() { --*alive; }
  int* alive;
  int value;
  char state[200];
};

struct Other {
  int x = 0;
};

TEST(FlowTableTest, PerFlowDataIsTypedAndDestroyed) {
  int alive = 0;
  {
    std::unique_ptr<FlowTable> t = MakeTable(8);
    const FlowId a = *t->Insert(KeyN(1));
    const FlowId b = *t->Insert(KeyN(2));
    EXPECT_EQ(t->Data<Counted>(a), nullptr);
    Counted* ca = t->Emplace<Counted>(a, &alive, 7);
    ASSERT_NE(ca, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(ca) % kFlowDataAlign, 0u);
    EXPECT_EQ(t->Data<Counted>(a), ca);
    EXPECT_EQ(t->Data<Counted>(a)->value, 7);
    EXPECT_EQ(t->Data<Other>(a), nullptr);  // Wrong type.
    EXPECT_NE(t->Emplace<Counted>(b, &alive, 8), nullptr);
    EXPECT_EQ(alive, 2);

    // Replacing destroys the old value.
    ASSERT_NE(t->Emplace<Counted>(a, &alive, 9), nullptr);
    EXPECT_EQ(alive, 2);
    EXPECT_EQ(t->Data<Counted>(a)->value, 9);
    ASSERT_NE(t->Emplace<Other>(a), nullptr);
    EXPECT_EQ(alive, 1);
    EXPECT_EQ(t->Data<Counted>(a), nullptr);
    t->ClearData(a);
    EXPECT_EQ(t->Data<Other>(a), nullptr);

    const FlowId c = *t->Insert(KeyN(3));
    ASSERT_NE(t->Emplace<Counted>(c, &alive, 1), nullptr);
    EXPECT_EQ(alive, 2);
    ASSERT_TRUE(t->Remove(c));
    EXPECT_EQ(alive, 1);
    EXPECT_EQ(t->Data<Counted>(c), nullptr);
    EXPECT_EQ(t->Emplace<Counted>(c, &alive, 1), nullptr);  // Stale.
    EXPECT_EQ(alive, 1);
    // A new flow in a reused slot starts without data.
    const FlowId d = *t->Insert(KeyN(4));
    EXPECT_EQ(t->Data<Counted>(d), nullptr);
  }
  EXPECT_EQ(alive, 0);  // The table's destructor destroyed b's.
}

struct WithFd {
  UniqueFd fd;
};

TEST(FlowTableTest, RemoveClosesAnFdInTheData) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  close(fds[1]);
  std::unique_ptr<FlowTable> t = MakeTable(4);
  const FlowId a = *t->Insert(KeyN(1));
  t->Emplace<WithFd>(a)->fd.reset(fds[0]);
  EXPECT_EQ(fcntl(fds[0], F_GETFD), 0);
  ASSERT_TRUE(t->Remove(a));
  EXPECT_EQ(fcntl(fds[0], F_GETFD), -1);
}

TEST(FlowTableTest, ForEachVisitsLiveFlowsAndToleratesRemoval) {
  std::unique_ptr<FlowTable> t = MakeTable(64);
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < 50; ++i) ids.push_back(*t->Insert(KeyN(i)));
  for (uint32_t i = 0; i < 50; i += 5) t->Remove(ids[i]);
  std::vector<FlowId> seen;
  t->ForEach([&](FlowId id) { seen.push_back(id); });
  ASSERT_EQ(seen.size(), 40u);
  for (FlowId id : seen) EXPECT_TRUE(t->IsLive(id));

  // Removing the flow visited, and the one after it, while walking.
  std::set<uint32_t> visited;
  t->ForEach([&](FlowId id) {
    visited.insert(id.index);
    const FlowKey key = *t->Key(id);
    if (key.local_port % 2 == 1) {
      const FlowId next = t->Find(KeyN(key.local_port + 1u));
      t->Remove(id);
      if (next.valid()) t->Remove(next);
    }
  });
  size_t live = 0;
  t->ForEach([&](FlowId id) {
    ++live;
    EXPECT_TRUE(t->IsLive(id));
  });
  EXPECT_EQ(live, t->size());
  for (uint32_t idx : visited) EXPECT_LT(idx, 64u);
}

// Random inserts, finds, removes and host keys against std::map models.
// kKeySpace is above the capacity, so the table fills up.
void RunModel(size_t kCap, uint32_t kKeySpace, int ops, uint64_t rng_seed) {
  std::unique_ptr<FlowTable> t = MakeTable(kCap, /*seed=*/0);  // A random seed.
  std::mt19937_64 rng(rng_seed);
  std::map<uint32_t, FlowId> model;         // Guest key number -> flow.
  std::map<uint32_t, uint32_t> host_model;  // Host key number -> guest key number.
  std::map<uint32_t, uint32_t> host_of;     // Guest key number -> host key number.
  std::vector<FlowRef> dead_refs;
  auto host_key = [](uint32_t n) { return KeyN(n, FlowProto::kUdp); };
  size_t full = 0;
  for (int op = 0; op < ops; ++op) {
    const uint32_t n = static_cast<uint32_t>(rng() % kKeySpace);
    // Phases of filling (no removals) and draining (fewer inserts).
    const bool filling = (op / (5 * static_cast<int>(kCap))) % 2 == 0;
    uint64_t choice = rng() % 6;
    if (filling && choice == 3) choice = 0;
    if (!filling && choice == 0) choice = 3;
    switch (choice) {
      case 0:
      case 1: {  // Insert.
        absl::StatusOr<FlowId> id = t->Insert(KeyN(n));
        if (model.count(n)) {
          ASSERT_EQ(id.status().code(), absl::StatusCode::kAlreadyExists);
        } else if (model.size() == kCap) {
          ASSERT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
          ++full;
        } else {
          ASSERT_TRUE(id.ok()) << id.status();
          model[n] = *id;
        }
        break;
      }
      case 2: {  // Find.
        const FlowId id = t->Find(KeyN(n));
        auto it = model.find(n);
        if (it == model.end()) {
          ASSERT_FALSE(id.valid());
        } else {
          ASSERT_EQ(id, it->second);
        }
        break;
      }
      case 3: {  // Remove (a model member, or a stale ref).
        auto it = model.lower_bound(n);
        if (it == model.end()) break;
        dead_refs.push_back(FlowRef(it->second));
        ASSERT_TRUE(t->Remove(it->second));
        ASSERT_FALSE(t->Remove(it->second));
        if (host_of.count(it->first)) {
          host_model.erase(host_of[it->first]);
          host_of.erase(it->first);
        }
        model.erase(it);
        break;
      }
      case 4: {  // Host key for a live flow.
        auto it = model.lower_bound(n);
        if (it == model.end()) break;
        const uint32_t h = static_cast<uint32_t>(rng() % kKeySpace);
        absl::Status s = t->SetHostKey(it->second, host_key(h));
        auto owner = host_model.find(h);
        if (owner != host_model.end() && owner->second != it->first) {
          ASSERT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
        } else {
          ASSERT_TRUE(s.ok()) << s;
          if (host_of.count(it->first)) host_model.erase(host_of[it->first]);
          host_model[h] = it->first;
          host_of[it->first] = h;
        }
        break;
      }
      case 5: {  // Find by host key, and by refs live and dead.
        const FlowId id = t->Find(host_key(n), FlowSide::kHost);
        auto it = host_model.find(n);
        if (it == host_model.end()) {
          ASSERT_FALSE(id.valid());
        } else {
          ASSERT_EQ(id, model.at(it->second));
        }
        if (!model.empty()) {
          auto m = model.lower_bound(n);
          if (m == model.end()) m = model.begin();
          ASSERT_EQ(t->FindByRef(FlowRef(m->second, 1)), m->second);
        }
        if (!dead_refs.empty()) {
          ASSERT_FALSE(t->FindByRef(dead_refs[rng() % dead_refs.size()]).valid());
        }
        break;
      }
    }
    ASSERT_EQ(t->size(), model.size());
  }
  EXPECT_GT(full, 0u);
  // Everything the model has, the table has, and nothing else.
  for (const auto& [n, id] : model) ASSERT_EQ(t->Find(KeyN(n)), id);
  for (const auto& [h, n] : host_model) ASSERT_EQ(t->Find(host_key(h), FlowSide::kHost), model[n]);
  size_t walked = 0;
  t->ForEach([&](FlowId id) {
    ++walked;
    const FlowKey* k = t->Key(id);
    ASSERT_NE(k, nullptr);
    ASSERT_EQ(model.at(k->local_port), id);
  });
  EXPECT_EQ(walked, model.size());
}

TEST(FlowTableTest, PropertyAgainstMapModel) { RunModel(2048, 3000, 100000, 12345); }

// A tiny table: its index (16 slots) is half full when the table is, so runs
// are long and backward-shift deletion is exercised hard.
TEST(FlowTableTest, PropertyAgainstMapModelTinyTable) {
  for (uint64_t seed = 1; seed <= 20; ++seed) RunModel(8, 24, 5000, seed);
}

// Timers.

std::vector<FlowId> ExpireAll(FlowTable& t, int64_t now) {
  std::vector<FlowId> fired;
  t.Expire(now, [&](FlowId id) { fired.push_back(id); });
  return fired;
}

TEST(FlowTimerTest, FireInOrderOnce) {
  std::unique_ptr<FlowTable> t = MakeTable(16);
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < 5; ++i) ids.push_back(*t->Insert(KeyN(i)));
  const int64_t base = 1000 * kMs;
  t->Expire(base, [](FlowId) { FAIL(); });
  EXPECT_FALSE(t->NextDeadline().has_value());
  // Armed out of order; deadlines 5, 1, 3, 2, 4 ms on.
  const int64_t offsets[] = {5, 1, 3, 2, 4};
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(t->SetTimer(ids[i], base + offsets[i] * kMs));
  EXPECT_EQ(t->timer_count(), 5u);
  EXPECT_EQ(t->Deadline(ids[0]), base + 5 * kMs);
  EXPECT_EQ(t->NextDeadline(), base + 1 * kMs);
  EXPECT_TRUE(ExpireAll(*t, base + kMs - 1).empty());  // Never early.
  EXPECT_EQ(ExpireAll(*t, base + kMs), std::vector<FlowId>{ids[1]});
  EXPECT_EQ(t->NextDeadline(), base + 2 * kMs);
  EXPECT_EQ(ExpireAll(*t, base + 10 * kMs), (std::vector<FlowId>{ids[3], ids[2], ids[4], ids[0]}));
  EXPECT_TRUE(ExpireAll(*t, base + 20 * kMs).empty());
  EXPECT_EQ(t->timer_count(), 0u);
  EXPECT_FALSE(t->NextDeadline().has_value());
  EXPECT_FALSE(t->Deadline(ids[0]).has_value());
  EXPECT_EQ(t->stats().timers_fired, 5u);
}

TEST(FlowTimerTest, DeadlinesRoundUpToATick) {
  std::unique_ptr<FlowTable> t = MakeTable(4);
  const FlowId a = *t->Insert(KeyN(1));
  t->Expire(0, [](FlowId) {});
  t->SetTimer(a, 10 * kMs + 1);
  EXPECT_EQ(t->NextDeadline(), 11 * kMs);
  EXPECT_TRUE(ExpireAll(*t, 10 * kMs + 500'000).empty());
  EXPECT_EQ(ExpireAll(*t, 11 * kMs).size(), 1u);
}

TEST(FlowTimerTest, CancelAndRearm) {
  std::unique_ptr<FlowTable> t = MakeTable(16);
  const FlowId a = *t->Insert(KeyN(1));
  const FlowId b = *t->Insert(KeyN(2));
  t->Expire(0, [](FlowId) {});
  t->SetTimer(a, 10 * kMs);
  t->SetTimer(b, 20 * kMs);
  EXPECT_TRUE(t->CancelTimer(a));
  EXPECT_TRUE(t->CancelTimer(a));  // Twice is fine.
  EXPECT_EQ(t->timer_count(), 1u);
  EXPECT_EQ(t->NextDeadline(), 20 * kMs);
  // Re-arming moves the deadline, both later and earlier.
  t->SetTimer(b, 30 * kMs);
  t->SetTimer(b, 25 * kMs);
  EXPECT_EQ(t->timer_count(), 1u);
  EXPECT_TRUE(ExpireAll(*t, 24 * kMs).empty());
  EXPECT_EQ(ExpireAll(*t, 25 * kMs), std::vector<FlowId>{b});
  // Removing a flow cancels its timer.
  t->SetTimer(a, 40 * kMs);
  t->Remove(a);
  EXPECT_EQ(t->timer_count(), 0u);
  EXPECT_TRUE(ExpireAll(*t, 50 * kMs).empty());
  EXPECT_FALSE(t->CancelTimer(a));
}

TEST(FlowTimerTest, PastDeadlinesFireOnTheNextExpire) {
  std::unique_ptr<FlowTable> t = MakeTable(4);
  const FlowId a = *t->Insert(KeyN(1));
  t->Expire(100 * kMs, [](FlowId) {});
  t->SetTimer(a, 50 * kMs);
  EXPECT_EQ(t->NextDeadline(), 50 * kMs);
  EXPECT_EQ(ExpireAll(*t, 100 * kMs), std::vector<FlowId>{a});
  t->SetTimer(a, -5);
  EXPECT_EQ(ExpireAll(*t, -1), std::vector<FlowId>{a});
}

TEST(FlowTimerTest, CallbackMayRearmCancelAndRemove) {
  std::unique_ptr<FlowTable> t = MakeTable(16);
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < 4; ++i) ids.push_back(*t->Insert(KeyN(i)));
  t->Expire(0, [](FlowId) {});
  for (int i = 0; i < 4; ++i) t->SetTimer(ids[i], 10 * kMs);
  int calls = 0;
  size_t fired = t->Expire(10 * kMs, [&](FlowId id) {
    ++calls;
    EXPECT_EQ(t->Expire(10 * kMs, [](FlowId) {}), 0u);  // Not reentrant.
    if (id == ids[0]) {
      t->SetTimer(id, 5 * kMs);  // Already passed: the next Expire, not this one.
      t->Remove(ids[1]);         // Another flow still to fire.
      t->CancelTimer(ids[2]);
    } else if (id == ids[3]) {
      t->Remove(id);
    }
  });
  EXPECT_EQ(fired, 2u);
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(t->IsLive(ids[3]));
  EXPECT_EQ(t->timer_count(), 1u);
  EXPECT_EQ(ExpireAll(*t, 10 * kMs), std::vector<FlowId>{ids[0]});
}

TEST(FlowTimerTest, WheelWrapsAndCascades) {
  std::unique_ptr<FlowTable> t = MakeTable(16);
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < 8; ++i) ids.push_back(*t->Insert(KeyN(i)));
  const int64_t start = 123'456 * kMs + 17;
  t->Expire(start, [](FlowId) {});
  // Deadlines on every level, and across level boundaries.
  const int64_t after_ms[] = {63, 64, 65, 4095, 4097, 262'143, 3'600'000, 86'400'000};
  for (int i = 0; i < 8; ++i) t->SetTimer(ids[i], start + after_ms[i] * kMs);
  // Step in uneven strides, well past several wraps of level 0.
  std::vector<std::pair<FlowId, int64_t>> fired;
  for (int64_t now = start; now <= start + 86'400'001 * kMs; now += 997 * kMs / 10 + 3) {
    t->Expire(now, [&](FlowId id) { fired.emplace_back(id, now); });
  }
  const int64_t end = start + 86'400'050 * kMs;
  t->Expire(end, [&](FlowId id) { fired.emplace_back(id, end); });
  ASSERT_EQ(fired.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(fired[i].first, ids[i]);
    const int64_t deadline = start + after_ms[i] * kMs;
    EXPECT_GE(fired[i].second, deadline) << i;
    EXPECT_LT(fired[i].second, deadline + kMs + 100 * kMs) << i;  // Within a step.
  }
}

TEST(FlowTimerTest, FollowingNextDeadlineFiresEachTimerOnTime) {
  // The owner's loop: arm the timerfd at NextDeadline, Expire when it fires.
  std::unique_ptr<FlowTable> t = MakeTable(64);
  std::mt19937_64 rng(7);
  const int64_t start = 5'000 * kMs;
  t->Expire(start, [](FlowId) {});
  std::map<uint32_t, int64_t> deadline;  // index -> deadline.
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < 64; ++i) {
    ids.push_back(*t->Insert(KeyN(i)));
    // From a microsecond to about a month on.
    const int64_t d = start + static_cast<int64_t>(rng() % (int64_t{1} << (10 + i % 42)));
    t->SetTimer(ids.back(), d);
    deadline[ids.back().index] = d;
  }
  int wakeups = 0;
  size_t fired = 0;
  int64_t now = start;
  while (std::optional<int64_t> next = t->NextDeadline()) {
    ASSERT_GE(*next, now - 0) << "the wheel never asks to go back";
    // Never later than the earliest deadline's tick.
    int64_t earliest = std::numeric_limits<int64_t>::max();
    for (uint32_t i = 0; i < 64; ++i) {
      if (std::optional<int64_t> d = t->Deadline(ids[i])) earliest = std::min(earliest, *d);
    }
    ASSERT_LE(*next, (earliest + kMs - 1) / kMs * kMs);
    now = *next;
    ++wakeups;
    t->Expire(now, [&](FlowId id) {
      ++fired;
      const int64_t d = deadline.at(id.index);
      EXPECT_GE(now, d);
      EXPECT_LT(now - d, kMs);  // Exactly its tick.
    });
    ASSERT_LT(wakeups, 1000);
  }
  EXPECT_EQ(fired, 64u);
  EXPECT_LT(wakeups, 64 * 5);
}

TEST(FlowTimerTest, FarFutureDeadlines) {
  std::unique_ptr<FlowTable> t = MakeTable(4);
  const FlowId a = *t->Insert(KeyN(1));
  const FlowId b = *t->Insert(KeyN(2));
  const int64_t start = 1'000 * kMs;
  t->Expire(start, [](FlowId) {});
  const int64_t kDay = 86'400'000 * kMs;
  t->SetTimer(a, start + 40 * kDay);  // Beyond the top level (about 12 days).
  t->SetTimer(b, std::numeric_limits<int64_t>::max());
  EXPECT_TRUE(ExpireAll(*t, start + 39 * kDay).empty());
  EXPECT_TRUE(ExpireAll(*t, start + 40 * kDay - 1).empty());
  EXPECT_EQ(ExpireAll(*t, start + 40 * kDay), std::vector<FlowId>{a});
  // INT64_MAX never fires before the clock gets there.
  EXPECT_TRUE(ExpireAll(*t, start + 1000 * kDay).empty());
  EXPECT_TRUE(t->NextDeadline().has_value());
  EXPECT_LE(*t->NextDeadline(), std::numeric_limits<int64_t>::max());
  // Rounded up to a tick past the clock's end: it never fires.
  EXPECT_TRUE(ExpireAll(*t, std::numeric_limits<int64_t>::max()).empty());
  EXPECT_EQ(t->Deadline(b), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(t->NextDeadline(), std::numeric_limits<int64_t>::max());
}

TEST(FlowTimerTest, NextDeadlineAfterAGapWithoutTimers) {
  // The wheel catches up at once when idle (no per-tick walk from zero).
  std::unique_ptr<FlowTable> t = MakeTable(4);
  const FlowId a = *t->Insert(KeyN(1));
  const int64_t now = int64_t{40} * 86'400'000 * kMs;  // 40 days of uptime.
  t->Expire(now, [](FlowId) {});
  t->SetTimer(a, now + 30 * kMs);
  EXPECT_EQ(t->NextDeadline(), now + 30 * kMs);
  EXPECT_EQ(ExpireAll(*t, now + 30 * kMs), std::vector<FlowId>{a});
}

// Random timers against a model: after every Expire(now), exactly the timers
// whose tick is at or before now have fired, each once.
TEST(FlowTimerTest, PropertyAgainstModel) {
  constexpr size_t kCap = 512;
  std::unique_ptr<FlowTable> t = MakeTable(kCap);
  std::mt19937_64 rng(99);
  std::vector<FlowId> ids;
  for (uint32_t i = 0; i < kCap; ++i) ids.push_back(*t->Insert(KeyN(i)));
  std::map<uint32_t, int64_t> armed;  // index -> deadline.
  int64_t now = 77 * kMs + 3;
  t->Expire(now, [](FlowId) {});
  size_t total_fired = 0;
  for (int op = 0; op < 100000; ++op) {
    const uint32_t i = static_cast<uint32_t>(rng() % kCap);
    switch (rng() % 4) {
      case 0:
      case 1: {
        // Mostly near (ms to seconds), sometimes minutes to days, sometimes past.
        int64_t d;
        switch (rng() % 4) {
          case 0:
            d = now + static_cast<int64_t>(rng() % (100 * kMs));
            break;
          case 1:
            d = now + static_cast<int64_t>(rng() % (10'000 * kMs));
            break;
          case 2:
            d = now + static_cast<int64_t>(rng() % (int64_t{20} * 86'400'000 * kMs));
            break;
          default:
            d = now - static_cast<int64_t>(rng() % (10 * kMs));
        }
        ASSERT_TRUE(t->SetTimer(ids[i], d));
        armed[ids[i].index] = d;
        break;
      }
      case 2:
        ASSERT_TRUE(t->CancelTimer(ids[i]));
        armed.erase(ids[i].index);
        break;
      case 3: {
        // Advance: mostly small steps, occasionally a long jump.
        now += rng() % 16 == 0 ? static_cast<int64_t>(rng() % (int64_t{3} * 86'400'000 * kMs))
                               : static_cast<int64_t>(rng() % (5 * kMs));
        std::set<uint32_t> fired;
        t->Expire(now, [&](FlowId id) {
          ASSERT_TRUE(fired.insert(id.index).second) << "fired twice";
          auto it = armed.find(id.index);
          ASSERT_NE(it, armed.end()) << "not armed";
          ASSERT_LE((it->second + kMs - 1) / kMs * kMs, now) << "early";
        });
        for (uint32_t idx : fired) armed.erase(idx);
        total_fired += fired.size();
        for (const auto& [idx, d] : armed) {
          ASSERT_GT((std::max<int64_t>(d, 0) + kMs - 1) / kMs * kMs, now) << "missed";
        }
        break;
      }
    }
    ASSERT_EQ(t->timer_count(), armed.size());
    if (op % 97 == 0 && !armed.empty()) {
      int64_t earliest = std::numeric_limits<int64_t>::max();
      for (const auto& [idx, d] : armed) earliest = std::min(earliest, d);
      std::optional<int64_t> next = t->NextDeadline();
      ASSERT_TRUE(next.has_value());
      ASSERT_LE(*next, std::max<int64_t>(0, (earliest + kMs - 1) / kMs * kMs));
    }
  }
  EXPECT_GT(total_fired, 1000u);
}

}  // namespace
}  // namespace vunet::net
