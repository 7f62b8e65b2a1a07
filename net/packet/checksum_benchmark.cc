// Throughput of the Internet checksum implementations, side by side in one
// run (these machines are shared: compare the ratios, not the figures).
//
//   bazel run -c opt //net:checksum_benchmark
//
// Reference is the RFC's byte-at-a-time definition; Fast sums 64-bit words
// with carries; Avx2 is what the data path uses where the CPU has AVX2.

#include <cstdint>
#include <vector>

#include "benchmark/benchmark.h"
#include "net/packet/checksum.h"

namespace vunet::net {
namespace {

using SumFn = uint16_t (*)(const void*, size_t);

void Run(benchmark::State& state, SumFn fn) {
  const size_t len = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> data(len + 1);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 131 + 7);
  // Start one byte in: frames in guest memory are rarely 8-byte aligned.
  const uint8_t* p = data.data() + 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(p);
    benchmark::DoNotOptimize(fn(p, len));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(len));
}

void BM_Reference(benchmark::State& state) { Run(state, &checksum_internal::SumReference); }
void BM_Fast(benchmark::State& state) { Run(state, &checksum_internal::SumFast); }
void BM_Avx2(benchmark::State& state) {
  if (!checksum_internal::HaveAvx2()) {
    state.SkipWithError("no AVX2 on this CPU");
    return;
  }
  Run(state, &checksum_internal::SumAvx2);
}

BENCHMARK(BM_Reference)->Arg(64)->Arg(1500)->Arg(65536);
BENCHMARK(BM_Fast)->Arg(64)->Arg(1500)->Arg(65536);
BENCHMARK(BM_Avx2)->Arg(64)->Arg(1500)->Arg(65536);

}  // namespace
}  // namespace vunet::net
