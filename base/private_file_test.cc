#include "base/private_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vunet {
namespace {

using ::testing::HasSubstr;

std::string Temp(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name + "." + std::to_string(getpid());
}

TEST(OpenPrivateFile, CreatesMode0600TruncatesOrAppends) {
  const std::string path = Temp("private");
  {
    absl::StatusOr<UniqueFd> fd = OpenPrivateFile(path, PrivateFileMode::kTruncate);
    ASSERT_TRUE(fd.ok()) << fd.status();
    ASSERT_EQ(write(fd->get(), "abc", 3), 3);
  }
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  {
    absl::StatusOr<UniqueFd> fd = OpenPrivateFile(path, PrivateFileMode::kAppend);
    ASSERT_TRUE(fd.ok());
    ASSERT_EQ(write(fd->get(), "de", 2), 2);
  }
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 5);
  ASSERT_TRUE(OpenPrivateFile(path, PrivateFileMode::kTruncate).ok());
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  unlink(path.c_str());
}

TEST(OpenPrivateFile, RefusesSymlinksAndFifosWithoutBlocking) {
  const std::string target = Temp("target");
  const std::string link = Temp("link");
  const std::string fifo = Temp("fifo");
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  absl::StatusOr<UniqueFd> l = OpenPrivateFile(link, PrivateFileMode::kAppend);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(l.status().message(), HasSubstr("symbolic link"));
  // No reader: a blocking open would hang here.
  absl::StatusOr<UniqueFd> f = OpenPrivateFile(fifo, PrivateFileMode::kAppend);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("not a regular file"));
  unlink(link.c_str());
  unlink(fifo.c_str());
}

}  // namespace
}  // namespace vunet
