// An owned file descriptor, closed when the owner goes away. Every fd vunet
// receives from a frontend or opens for a flow is held in one of these, so no
// error path can leak it.

#ifndef VUNET_BASE_UNIQUE_FD_H_
#define VUNET_BASE_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace vunet {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }

  // Closes the fd held (if any) and takes `fd`.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace vunet

#endif  // VUNET_BASE_UNIQUE_FD_H_
