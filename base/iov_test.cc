#include "base/iov.h"

#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace vunet {
namespace {

TEST(IovTest, CopiesAcrossEntries) {
  char a[3], b[1], c[5];
  iovec iov[] = {{a, 3}, {b, 1}, {c, 5}};
  EXPECT_EQ(IovSize(iov, 3), 9u);
  EXPECT_EQ(IovFromBuf(iov, 3, 2, "hello", 5), 5u);
  char out[9] = {};
  EXPECT_EQ(IovToBuf(iov, 3, 2, out, 9), 7u);  // Only 7 bytes from offset 2.
  EXPECT_EQ(std::string(out, 5), "hello");
  EXPECT_EQ(IovFromBuf(iov, 3, 8, "xyz", 3), 1u);
  EXPECT_EQ(IovFromBuf(iov, 3, 9, "xyz", 3), 0u);
  EXPECT_EQ(IovFromBuf(iov, 3, 100, "xyz", 3), 0u);
  EXPECT_EQ(IovMemset(iov, 3, 0, 0, 4), 4u);
  EXPECT_EQ(a[0], 0);
  EXPECT_EQ(b[0], 0);
}

TEST(IovTest, ConsumesWholeAndPartialEntries) {
  char a[4], b[4], c[4];
  iovec iov[] = {{a, 4}, {b, 4}, {c, 4}};
  size_t count = 3;
  iovec* rest = IovConsume(iov, &count, 6);
  EXPECT_EQ(count, 2u);
  EXPECT_EQ(rest->iov_base, b + 2);
  EXPECT_EQ(rest->iov_len, 2u);
  rest = IovConsume(rest, &count, 2);
  EXPECT_EQ(count, 1u);
  EXPECT_EQ(rest->iov_base, c);
  rest = IovConsume(rest, &count, 100);
  EXPECT_EQ(count, 0u);
}

TEST(IovTest, ConsumeSkipsEmptyLeadingEntries) {
  char a[4];
  iovec iov[] = {{nullptr, 0}, {a, 4}};
  size_t count = 2;
  iovec* rest = IovConsume(iov, &count, 0);
  EXPECT_EQ(count, 1u);
  EXPECT_EQ(rest->iov_base, a);
}

}  // namespace
}  // namespace vunet
