#include "base/log.h"

#include "gtest/gtest.h"

namespace vunet::log {
namespace {

TEST(LogTest, LevelsFilterLines) {
  SetLevel(Level::kWarning);
  const uint64_t before_info = LinesWritten(Level::kInfo);
  const uint64_t before_warning = LinesWritten(Level::kWarning);
  VUNET_LOG(kInfo, "not written %d", 1);
  VUNET_LOG(kWarning, "written %s", "once");
  EXPECT_EQ(LinesWritten(Level::kInfo), before_info);
  EXPECT_EQ(LinesWritten(Level::kWarning), before_warning + 1);
  SetLevel(Level::kInfo);
}

TEST(LogTest, RateLimitedSiteWritesABurstThenStops) {
  const uint64_t before = LinesWritten(Level::kError);
  for (int i = 0; i < 1000; ++i) VUNET_LOG_RATELIMITED(kError, "flood %d", i);
  EXPECT_EQ(LinesWritten(Level::kError) - before, static_cast<uint64_t>(RateLimiter::kBurst));
}

TEST(LogTest, LimiterReportsSuppressedLines) {
  RateLimiter limiter;
  uint64_t suppressed = 0;
  for (int i = 0; i < RateLimiter::kBurst; ++i) EXPECT_TRUE(limiter.Allow(&suppressed));
  EXPECT_FALSE(limiter.Allow(&suppressed));
  EXPECT_FALSE(limiter.Allow(&suppressed));
}

}  // namespace
}  // namespace vunet::log
