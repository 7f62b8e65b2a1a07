#include "net/flow/timer_wheel.h"

#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vunet::net {
namespace {

constexpr int64_t kMs = TimerWheel::kTickNs;

std::vector<uint32_t> Fire(TimerWheel& w, int64_t now) {
  std::vector<uint32_t> fired;
  w.Expire(now, [&](uint32_t i) { fired.push_back(i); });
  return fired;
}

TEST(TimerWheel, FiresInDeadlineOrderOnceAndNeverEarly) {
  TimerWheel w(16);
  ASSERT_TRUE(w.ok());
  w.Set(3, 5 * kMs);
  w.Set(1, 2 * kMs);
  w.Set(2, 2 * kMs + 1);  // Rounded up to tick 3.
  EXPECT_EQ(w.size(), 3u);
  EXPECT_EQ(w.NextDeadline(), 2 * kMs);
  EXPECT_TRUE(Fire(w, 2 * kMs - 1).empty());
  EXPECT_EQ(Fire(w, 2 * kMs), std::vector<uint32_t>{1});
  EXPECT_EQ(w.NextDeadline(), 3 * kMs);
  EXPECT_EQ(Fire(w, 10 * kMs), (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(w.size(), 0u);
  EXPECT_FALSE(w.NextDeadline().has_value());
}

TEST(TimerWheel, SetReplacesAndCancelClears) {
  TimerWheel w(4);
  w.Set(0, 50 * kMs);
  w.Set(0, 20 * kMs);
  EXPECT_EQ(w.Deadline(0), 20 * kMs);
  EXPECT_EQ(w.size(), 1u);
  w.Cancel(0);
  w.Cancel(0);  // Twice is fine.
  EXPECT_FALSE(w.armed(0));
  EXPECT_TRUE(Fire(w, 100 * kMs).empty());
}

TEST(TimerWheel, CallbacksMaySetAndPastDeadlinesFireNextTime) {
  TimerWheel w(4);
  w.Set(0, kMs);
  int rounds = 0;
  w.Expire(kMs, [&](uint32_t i) {
    ++rounds;
    w.Set(i, 0);  // Already passed: the next Expire, not this one.
    EXPECT_EQ(w.Expire(kMs, [](uint32_t) {}), 0u);  // Not reentrant.
  });
  EXPECT_EQ(rounds, 1);
  EXPECT_EQ(Fire(w, kMs), std::vector<uint32_t>{0});
}

// Against a model: random sets, cancels and expiries over days of ticks,
// every timer fires once, no earlier than its deadline and no later than its
// tick, and NextDeadline is never past the earliest deadline's tick.
TEST(TimerWheel, PropertyAgainstModel) {
  constexpr uint32_t kCount = 256;
  TimerWheel w(kCount);
  std::map<uint32_t, int64_t> model;
  std::mt19937_64 rng(7);
  int64_t now = 0;
  for (int step = 0; step < 20000; ++step) {
    const uint32_t i = static_cast<uint32_t>(rng() % kCount);
    switch (rng() % 4) {
      case 0:
      case 1: {
        const int64_t delay = static_cast<int64_t>(rng() % (rng() % 2 ? 100 : 5'000'000)) * kMs / 7;
        w.Set(i, now + delay);
        model[i] = now + delay;
        break;
      }
      case 2:
        w.Cancel(i);
        model.erase(i);
        break;
      case 3: {
        const std::optional<int64_t> next = w.NextDeadline();
        if (next.has_value()) {
          ASSERT_LE(*next,
                    (model.empty()
                         ? *next
                         : ((std::min_element(model.begin(), model.end(),
                                              [](auto& a, auto& b) { return a.second < b.second; })
                                 ->second +
                             kMs - 1) /
                            kMs) *
                               kMs));
          now = std::max(now, *next);
        }
        w.Expire(now, [&](uint32_t f) {
          ASSERT_TRUE(model.count(f));
          EXPECT_LE(model[f], now);  // Never early.
          model.erase(f);
        });
        for (const auto& [index, deadline] : model) EXPECT_GT(deadline, now - kMs) << index;
        break;
      }
    }
    ASSERT_EQ(w.size(), model.size());
  }
}

}  // namespace
}  // namespace vunet::net
