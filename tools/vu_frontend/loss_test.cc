#include "tools/vu_frontend/loss.h"

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace vunet::vu_frontend {
namespace {

LossSpec Spec(const std::string& text, uint8_t filter = kFilterAll) {
  absl::StatusOr<LossSpec> spec = ParseLossSpec(text, filter);
  EXPECT_TRUE(spec.ok()) << text << ": " << spec.status();
  return spec.value_or(LossSpec());
}

// The frames (numbered from 1) an injector for `spec` drops out of `count`
// TCP data frames.
std::vector<uint64_t> Dropped(const std::string& spec, uint64_t count) {
  LossInjector injector(Spec(spec));
  std::vector<uint64_t> dropped;
  for (uint64_t i = 1; i <= count; ++i) {
    if (injector.Next(kFrameTcpData).action == LossInjector::Action::kDrop) dropped.push_back(i);
  }
  EXPECT_EQ(injector.counters().dropped, dropped.size());
  // An injector without rules counts nothing.
  EXPECT_EQ(injector.counters().frames, injector.active() ? count : 0);
  return dropped;
}

// The order in which frames 1..count leave a holder that works as
// vu_frontend::Frontend does: a held frame goes out once its frames went
// after it; at the end (the stream stops) the rest go by timeout.
std::vector<uint64_t> Order(const std::string& spec, uint64_t count, size_t capacity = 4) {
  LossInjector injector(Spec(spec));
  HeldFrames held(capacity);
  std::vector<uint64_t> out;
  const absl::Time t0 = absl::UnixEpoch();
  const auto send = [&](uint64_t frame) {
    out.push_back(frame);
    held.OnSent();
    bool by_timeout;
    while (std::optional<HeldFrames::Entry> due = held.TakeDue(t0, &by_timeout)) {
      EXPECT_FALSE(by_timeout);
      injector.CountRelease(by_timeout);
      out.push_back(due->handle);
      held.OnSent();
    }
  };
  for (uint64_t i = 1; i <= count; ++i) {
    const LossInjector::Decision d = injector.Next(kFrameTcpData);
    if (d.action == LossInjector::Action::kDrop) continue;
    if (d.action == LossInjector::Action::kHold) {
      if (!held.full()) {
        held.Hold(static_cast<uint32_t>(i), 0, d.hold_for, t0 + absl::Milliseconds(20));
        continue;
      }
      injector.CountNotHeld();
    }
    send(i);
  }
  bool by_timeout;
  while (std::optional<HeldFrames::Entry> due =
             held.TakeDue(t0 + absl::Milliseconds(20), &by_timeout)) {
    EXPECT_TRUE(by_timeout);
    injector.CountRelease(by_timeout);
    out.push_back(due->handle);
  }
  const LossCounters& c = injector.counters();
  EXPECT_EQ(c.held, c.released_by_count + c.released_by_timeout);
  return out;
}

TEST(LossSpecTest, ParsesEachRule) {
  LossSpec spec = Spec("nth:500, burst:1000:10,every:100,reorder:200:3,random:0.01:seed=7,after:5");
  ASSERT_EQ(spec.rules.size(), 5u);
  EXPECT_EQ(spec.rules[0].kind, LossRule::Kind::kNth);
  EXPECT_EQ(spec.rules[0].n, 500u);
  EXPECT_EQ(spec.rules[1].kind, LossRule::Kind::kBurst);
  EXPECT_EQ(spec.rules[1].n, 1000u);
  EXPECT_EQ(spec.rules[1].count, 10u);
  EXPECT_EQ(spec.rules[2].kind, LossRule::Kind::kEvery);
  EXPECT_EQ(spec.rules[3].kind, LossRule::Kind::kReorder);
  EXPECT_EQ(spec.rules[3].count, 3u);
  EXPECT_EQ(spec.rules[4].kind, LossRule::Kind::kRandom);
  EXPECT_DOUBLE_EQ(spec.rules[4].rate, 0.01);
  EXPECT_EQ(spec.rules[4].seed, 7u);
  EXPECT_EQ(spec.after, 5u);
  EXPECT_TRUE(spec.reorders());
  EXPECT_EQ(LossSpecString(spec),
            "after:5,nth:500,burst:1000:10,every:100,reorder:200:3,random:0.01:seed=7 (all)");
  EXPECT_EQ(Spec("random:0.001").rules[0].seed, 1u);
  EXPECT_FALSE(Spec("random:0.001").reorders());
  EXPECT_TRUE(Spec("").empty());
  EXPECT_TRUE(Spec(" none ").empty());
  EXPECT_EQ(LossSpecString(Spec("")), "none");
  EXPECT_EQ(LossSpecString(Spec("every:3", kFilterTcp | kFrameUdp)), "every:3 (tcp,udp)");
}

TEST(LossSpecTest, RefusesWhatDoesNotParse) {
  for (const char* bad :
       {"nth", "nth:0", "nth:-1", "nth:x", "nth:1:2", "burst:5", "burst:5:0", "every:0",
        "reorder:3", "reorder:3:0", "random", "random:1.5", "random:-0.1", "random:nan",
        "random:0.1:7", "random:0.1:seed=x", "drop:5", "nth:5,", "after:0"}) {
    EXPECT_EQ(ParseLossSpec(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(LossFilterTest, ParsesClassesAndGroups) {
  EXPECT_EQ(ParseLossFilter("tcp").value(), kFilterTcp);
  EXPECT_EQ(ParseLossFilter("tcp-data").value(), kFrameTcpData);
  EXPECT_EQ(ParseLossFilter("tcp, udp").value(), kFilterTcp | kFrameUdp);
  EXPECT_EQ(ParseLossFilter("ip").value(), kFilterIp);
  EXPECT_EQ(ParseLossFilter("all").value(), kFilterAll);
  EXPECT_EQ(ParseLossFilter("non-ip,other-ip").value(), kFrameNonIp | kFrameOtherIp);
  EXPECT_FALSE(ParseLossFilter("").ok());
  EXPECT_FALSE(ParseLossFilter("icmp").ok());
  EXPECT_EQ(LossFilterNames(kFilterAll), "all");
  EXPECT_EQ(LossFilterNames(kFilterTcp | kFrameUdp), "tcp,udp");
  EXPECT_EQ(LossFilterNames(kFrameTcpAck), "tcp-ack");
}

TEST(ClassOfTest, FromTheFrameInfo) {
  FrameInfo info;
  EXPECT_EQ(ClassOf(info), kFrameNonIp);
  info.ip_version = 4;
  info.protocol = 1;
  EXPECT_EQ(ClassOf(info), kFrameOtherIp);
  info.protocol = 6;
  info.l4_header_size = 20;
  EXPECT_EQ(ClassOf(info), kFrameTcpAck);
  info.payload_size = 1;
  EXPECT_EQ(ClassOf(info), kFrameTcpData);
  info.protocol = 17;
  info.l4_header_size = 8;
  EXPECT_EQ(ClassOf(info), kFrameUdp);
}

TEST(LossInjectorTest, DeterministicPatterns) {
  EXPECT_EQ(Dropped("nth:5", 20), (std::vector<uint64_t>{5}));
  EXPECT_EQ(Dropped("nth:50", 20), (std::vector<uint64_t>{}));
  EXPECT_EQ(Dropped("burst:3:4", 20), (std::vector<uint64_t>{3, 4, 5, 6}));
  EXPECT_EQ(Dropped("every:4", 20), (std::vector<uint64_t>{4, 8, 12, 16, 20}));
  EXPECT_EQ(Dropped("every:1", 3), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(Dropped("after:10,nth:1,every:5", 22), (std::vector<uint64_t>{11, 15, 20}));
  EXPECT_EQ(Dropped("nth:2,burst:2:2,nth:9", 12), (std::vector<uint64_t>{2, 3, 9}));
  EXPECT_EQ(Dropped("", 5), (std::vector<uint64_t>{}));
}

TEST(LossInjectorTest, CountsEachDropOnceByTheFirstRuleKind) {
  LossInjector injector(Spec("every:5,nth:5,burst:4:3,random:1"));
  for (int i = 0; i < 10; ++i) injector.Next(kFrameTcpData);
  const LossCounters& c = injector.counters();
  EXPECT_EQ(c.frames, 10u);
  EXPECT_EQ(c.dropped, 10u);
  EXPECT_EQ(c.dropped_nth, 1u);    // 5.
  EXPECT_EQ(c.dropped_burst, 2u);  // 4 and 6.
  EXPECT_EQ(c.dropped_every, 1u);  // 10.
  EXPECT_EQ(c.dropped_random, 6u);
}

TEST(LossInjectorTest, TheFilterSelectsWhatIsCounted) {
  LossInjector injector(Spec("nth:2", kFilterTcp));
  EXPECT_FALSE(injector.Selects(kFrameUdp));
  EXPECT_TRUE(injector.Selects(kFrameTcpAck));
  // ARP and UDP pass untouched and are not counted: the second TCP frame goes.
  const FrameClass stream[] = {kFrameNonIp, kFrameTcpAck, kFrameUdp, kFrameUdp, kFrameTcpData};
  std::vector<LossInjector::Action> actions;
  for (FrameClass c : stream) actions.push_back(injector.Next(c).action);
  using A = LossInjector::Action;
  EXPECT_EQ(actions, (std::vector<A>{A::kPass, A::kPass, A::kPass, A::kPass, A::kDrop}));
  EXPECT_EQ(injector.counters().frames, 2u);
  EXPECT_FALSE(LossInjector().active());
  EXPECT_EQ(LossInjector().Next(kFrameTcpData).action, A::kPass);
}

TEST(LossInjectorTest, RandomLossIsSeededAndNearItsRate) {
  const std::vector<uint64_t> a = Dropped("random:0.01:seed=1", 100000);
  EXPECT_GT(a.size(), 850u);
  EXPECT_LT(a.size(), 1150u);
  EXPECT_EQ(Dropped("random:0.01:seed=1", 100000), a);
  const std::vector<uint64_t> b = Dropped("random:0.01:seed=2", 100000);
  EXPECT_NE(a, b);
  EXPECT_EQ(Dropped("random:0", 1000).size(), 0u);
  EXPECT_EQ(Dropped("random:1", 1000).size(), 1000u);
  const size_t tenth = Dropped("random:0.001:seed=3", 100000).size();
  EXPECT_GT(tenth, 60u);
  EXPECT_LT(tenth, 140u);
  // Other rules do not change which frames a random rule picks.
  std::set<uint64_t> with(a.begin(), a.end());
  for (uint64_t i : Dropped("nth:7,random:0.01:seed=1,every:1000", 100000)) with.erase(i);
  for (uint64_t i = 1000; i <= 100000; i += 1000) with.erase(i);
  with.erase(7);
  EXPECT_TRUE(with.empty());
  // Two random rules draw from generators of their own.
  const size_t both = Dropped("random:0.01:seed=1,random:0.01:seed=2", 100000).size();
  EXPECT_GT(both, a.size() + b.size() - 60);
  EXPECT_LE(both, a.size() + b.size());
}

TEST(LossInjectorTest, ReorderHoldsAFrameForItsCount) {
  EXPECT_EQ(Order("reorder:3:2", 8), (std::vector<uint64_t>{1, 2, 4, 5, 3, 6, 7, 8}));
  EXPECT_EQ(Order("reorder:1:1", 3), (std::vector<uint64_t>{2, 1, 3}));
  // Not enough frames after it: the timeout sends it.
  EXPECT_EQ(Order("reorder:4:5", 6), (std::vector<uint64_t>{1, 2, 3, 5, 6, 4}));
  // Held frames count each other, and drops do not count as sent.
  EXPECT_EQ(Order("reorder:2:2,reorder:3:1,nth:5", 7), (std::vector<uint64_t>{1, 4, 3, 2, 6, 7}));
  // A drop rule wins over a reorder rule for the same frame.
  EXPECT_EQ(Order("reorder:2:1,nth:2", 4), (std::vector<uint64_t>{1, 3, 4}));
  // No room to hold: sent at once and counted.
  LossInjector injector(Spec("reorder:1:1"));
  EXPECT_EQ(injector.Next(kFrameTcpData).action, LossInjector::Action::kHold);
  injector.CountNotHeld();
  EXPECT_EQ(injector.counters().held, 0u);
  EXPECT_EQ(injector.counters().not_held, 1u);
  EXPECT_EQ(Order("reorder:1:3,reorder:2:3", 5, /*capacity=*/1),
            (std::vector<uint64_t>{2, 3, 4, 1, 5}));
}

TEST(HeldFramesTest, DueByCountThenByDeadline) {
  HeldFrames held(3);
  EXPECT_EQ(held.capacity(), 3u);
  EXPECT_TRUE(held.empty());
  EXPECT_EQ(held.next_deadline(), absl::InfiniteFuture());
  const absl::Time t0 = absl::UnixEpoch();
  held.Hold(7, 100, 2, t0 + absl::Milliseconds(30));
  held.Hold(8, 200, 1, t0 + absl::Milliseconds(10));
  held.Hold(9, 300, 5, t0 + absl::Milliseconds(20));
  EXPECT_TRUE(held.full());
  EXPECT_EQ(held.next_deadline(), t0 + absl::Milliseconds(10));
  bool by_timeout = true;
  EXPECT_FALSE(held.TakeDue(t0, &by_timeout));
  held.OnSent();
  std::optional<HeldFrames::Entry> e = held.TakeDue(t0, &by_timeout);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->handle, 8u);
  EXPECT_EQ(e->length, 200u);
  EXPECT_FALSE(by_timeout);
  // Frame 9's deadline has passed: due by timeout, before 7 is by count.
  e = held.TakeDue(t0 + absl::Milliseconds(25), &by_timeout);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->handle, 9u);
  EXPECT_TRUE(by_timeout);
  held.OnSent();
  e = held.TakeDue(t0, &by_timeout);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->handle, 7u);
  EXPECT_FALSE(by_timeout);
  EXPECT_TRUE(held.empty());

  held.Hold(1, 0, 1, t0);
  held.Hold(2, 0, 1, t0);
  const std::vector<HeldFrames::Entry> all = held.TakeAll();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].handle, 1u);
  EXPECT_TRUE(held.empty());
  EXPECT_EQ(held.capacity(), 3u);
}

TEST(LossCountersTest, PrintsEveryCounter) {
  LossCounters c;
  c.frames = 100;
  c.dropped = 3;
  c.dropped_random = 3;
  c.held = 1;
  c.released_by_timeout = 1;
  EXPECT_EQ(LossCountersString(c),
            "3 of 100 frames dropped (nth 0, burst 0, every 0, random 3), 1 held back (0 after "
            "their frames, 1 by timeout, 0 not held)");
}

}  // namespace
}  // namespace vunet::vu_frontend
