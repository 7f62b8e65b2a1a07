#include "base/private_file.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace vunet {

absl::StatusOr<UniqueFd> OpenPrivateFile(const std::string& path, PrivateFileMode mode) {
  // O_NONBLOCK: opening a FIFO must not wait for a reader (it is refused
  // below); a regular file ignores the flag.
  const int flags = O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK |
                    (mode == PrivateFileMode::kTruncate ? O_WRONLY | O_TRUNC : O_RDWR | O_APPEND);
  UniqueFd fd(open(path.c_str(), flags, 0600));
  if (!fd.valid() && errno == EACCES && mode == PrivateFileMode::kAppend) {
    // A file we may write but not read: appended to all the same.
    fd.reset(open(path.c_str(), (flags & ~O_RDWR) | O_WRONLY, 0600));
  }
  if (!fd.valid()) {
    if (errno == ELOOP) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": is a symbolic link"));
    }
    if (errno == ENXIO) {  // A FIFO with no reader.
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", strerror(errno)));
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  return fd;
}

}  // namespace vunet
