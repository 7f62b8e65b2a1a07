#include "tools/vunet/fd_budget.h"

#include <string>

#include "gtest/gtest.h"

namespace vunet::tools {
namespace {

TEST(FdBudget, CountsSocketsPerPortAndVersion) {
  const net::PortRange ephemeral{32768, 60999};
  const std::vector<net::PortForward> all = net::ParsePortForwards("all", ephemeral).value();
  const std::vector<net::PortForward> some =
      net::ParsePortForwards("127.0.0.1/5000-5009,~5005", ephemeral).value();
  ListenerCount n = CountListeners(all, all, false, false);
  EXPECT_EQ(n.tcp, 65535u - 28232u);
  EXPECT_EQ(n.udp, 2 * (65535u - 28232u));
  n = CountListeners(all, all, true, false);
  EXPECT_EQ(n.udp, 65535u - 28232u);
  n = CountListeners(some, some, false, false);
  EXPECT_EQ(n.tcp, 9u);
  EXPECT_EQ(n.udp, 9u);  // Bound to one address: one version.
}

TEST(FdBudget, RefusesWhatTheLimitCannotHoldInOneLine) {
  const ListenerCount n{.tcp = 37303, .udp = 74606};
  EXPECT_TRUE(CheckFdBudget(n, 1'048'576).ok());
  EXPECT_TRUE(CheckFdBudget(n, n.total() + kFdReserve).ok());
  const absl::Status s = CheckFdBudget(n, 20000);
  ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  const std::string m(s.message());
  EXPECT_EQ(m.find('\n'), std::string::npos);
  EXPECT_NE(m.find("RLIMIT_NOFILE 20000"), std::string::npos) << m;
  EXPECT_NE(m.find("at least 112933"), std::string::npos) << m;
  EXPECT_NE(m.find("rather than all"), std::string::npos) << m;
  EXPECT_GE(SoftFdLimit(), 3u);
}

// A small limit keeps half for the rest: a few forwards still start (the
// fault tests run vunet with 64 descriptors).
TEST(FdBudget, SmallLimitsKeepHalf) {
  EXPECT_EQ(FdReserve(64), 32u);
  EXPECT_EQ(FdReserve(1'000'000), kFdReserve);
  EXPECT_TRUE(CheckFdBudget({.tcp = 1}, 64).ok());
  EXPECT_TRUE(CheckFdBudget({.tcp = 32}, 64).ok());
  const absl::Status s = CheckFdBudget({.tcp = 33}, 64);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("and 32 more for flows"), std::string::npos) << s;
  EXPECT_NE(s.message().find("at least 1057"), std::string::npos) << s;
}

}  // namespace
}  // namespace vunet::tools
