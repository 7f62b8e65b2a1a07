// The flow table's costs: lookups (hit and miss) at 1k and 64k flows, by key
// and by epoll reference, insert + remove, and timers (set + expire). An
// absl::flat_hash_map from key to index, measured in the same run, is the
// baseline (these machines are shared: compare the ratios, not the figures).
//
//   bazel run -c opt //net:flow_benchmark

#include <arpa/inet.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "benchmark/benchmark.h"
#include "net/flow/flow.h"

namespace vunet::net {

template <typename H>
H AbslHashValue(H h, const FlowKey& k) {
  return H::combine_contiguous(std::move(h), reinterpret_cast<const unsigned char*>(&k), sizeof(k));
}

namespace {

// Keys spread like a busy guest's: one guest address, many ports and peers.
std::vector<FlowKey> Keys(size_t n, uint32_t salt) {
  std::vector<FlowKey> keys;
  keys.reserve(n);
  in_addr guest{};
  inet_pton(AF_INET, "10.0.2.15", &guest);
  for (size_t i = 0; i < n; ++i) {
    in_addr remote;
    remote.s_addr = htonl(0x5db80000u + static_cast<uint32_t>(i / 50000) + (salt << 20));
    keys.push_back(FlowKey::V4(FlowProto::kTcp, guest, static_cast<uint16_t>(10000 + i % 50000),
                               remote, static_cast<uint16_t>(443 + salt)));
  }
  std::shuffle(keys.begin(), keys.end(), std::mt19937_64(salt));
  return keys;
}

std::unique_ptr<FlowTable> Filled(size_t n, std::vector<FlowId>* ids) {
  std::unique_ptr<FlowTable> t =
      std::move(*FlowTable::Create({.capacity = FlowTable::kDefaultCapacity}));
  for (const FlowKey& k : Keys(n, 0)) {
    absl::StatusOr<FlowId> id = t->Insert(k);
    if (ids != nullptr) ids->push_back(*id);
  }
  return t;
}

void BM_FindHit(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::unique_ptr<FlowTable> t = Filled(n, nullptr);
  std::vector<FlowKey> keys = Keys(n, 0);  // The same keys, another order.
  std::shuffle(keys.begin(), keys.end(), std::mt19937_64(1));
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(t->Find(keys[i]));
    if (++i == n) i = 0;
  }
  if (t->stats().hits != t->stats().lookups) state.SkipWithError("missed");
}

void BM_FindMiss(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::unique_ptr<FlowTable> t = Filled(n, nullptr);
  const std::vector<FlowKey> keys = Keys(n, 1);  // Other remote ports.
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(t->Find(keys[i]));
    if (++i == n) i = 0;
  }
  if (t->stats().hits != 0) state.SkipWithError("hit");
}

void BM_FindByRef(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<FlowId> ids;
  std::unique_ptr<FlowTable> t = Filled(n, &ids);
  std::vector<uint64_t> refs;
  refs.reserve(ids.size());
  for (FlowId id : ids) refs.push_back(FlowRef(id, 1).u64());
  std::shuffle(refs.begin(), refs.end(), std::mt19937_64(2));
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(t->FindByRef(FlowRef::FromU64(refs[i])));
    if (++i == n) i = 0;
  }
}

// The baseline: absl::flat_hash_map<FlowKey, uint32_t>, same keys and order.
void BM_FlatHashMapHit(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  absl::flat_hash_map<FlowKey, uint32_t> map;
  uint32_t v = 0;
  for (const FlowKey& k : Keys(n, 0)) map[k] = v++;
  std::vector<FlowKey> keys = Keys(n, 0);
  std::shuffle(keys.begin(), keys.end(), std::mt19937_64(1));
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(map.find(keys[i]));
    if (++i == n) i = 0;
  }
}

void BM_FlatHashMapMiss(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  absl::flat_hash_map<FlowKey, uint32_t> map;
  uint32_t v = 0;
  for (const FlowKey& k : Keys(n, 0)) map[k] = v++;
  const std::vector<FlowKey> keys = Keys(n, 1);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(map.find(keys[i]));
    if (++i == n) i = 0;
  }
}

// One new flow in and one old flow out, the table kept at n flows.
void BM_InsertRemove(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<FlowId> ids;
  std::unique_ptr<FlowTable> t = Filled(n, &ids);
  // ids[i] has cur[i] (Filled inserted Keys(n, 0) in order); each round
  // replaces it with next[i], and the two swap for the next round.
  std::vector<FlowKey> cur = Keys(n, 0);
  std::vector<FlowKey> next = Keys(n, 2);
  size_t i = 0;
  for (auto _ : state) {
    t->Remove(ids[i]);
    ids[i] = *t->Insert(next[i]);
    std::swap(cur[i], next[i]);
    if (++i == n) i = 0;
  }
}

// A timer set per flow (an idle timeout re-armed), then expired in batches:
// per iteration, one SetTimer and its share of Expire.
void BM_TimerSetExpire(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<FlowId> ids;
  std::unique_ptr<FlowTable> t = Filled(n, &ids);
  std::mt19937_64 rng(3);
  std::vector<int64_t> delay(n);
  for (int64_t& d : delay) d = static_cast<int64_t>(rng() % 200) * FlowTable::kTickNs;
  int64_t now = 1'000'000'000;
  t->Expire(now, [](FlowId) {});
  size_t i = 0;
  size_t fired = 0;
  for (auto _ : state) {
    t->SetTimer(ids[i], now + delay[i]);
    if (++i == n) i = 0;
    if ((i & 63) == 0) {  // A timerfd wake-up per 64 timers armed.
      now += FlowTable::kTickNs;
      fired += t->Expire(now, [](FlowId) {});
    }
  }
  state.counters["fired_per_set"] =
      static_cast<double>(fired) / static_cast<double>(state.iterations());
}

// Re-arming an idle timeout far out (seconds to minutes): the common case of
// a busy flow, which moves its timer on every segment.
void BM_TimerRearmFar(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<FlowId> ids;
  std::unique_ptr<FlowTable> t = Filled(n, &ids);
  int64_t now = 1'000'000'000;
  t->Expire(now, [](FlowId) {});
  size_t i = 0;
  for (auto _ : state) {
    t->SetTimer(ids[i], now + 180'000'000'000);
    if (++i == n) i = 0;
    now += 1000;
  }
}

BENCHMARK(BM_FindHit)->Arg(1024)->Arg(65536);
BENCHMARK(BM_FlatHashMapHit)->Arg(1024)->Arg(65536);
BENCHMARK(BM_FindMiss)->Arg(1024)->Arg(65536);
BENCHMARK(BM_FlatHashMapMiss)->Arg(1024)->Arg(65536);
BENCHMARK(BM_FindByRef)->Arg(1024)->Arg(65536);
BENCHMARK(BM_InsertRemove)->Arg(1024)->Arg(65536);
BENCHMARK(BM_TimerSetExpire)->Arg(1024)->Arg(65536);
BENCHMARK(BM_TimerRearmFar)->Arg(1024)->Arg(65536);

}  // namespace
}  // namespace vunet::net
