#include "net/repair/socket_filter.h"

#include <linux/filter.h>
#include <sys/socket.h>

namespace vunet::net {

bool AttachDropAllFilter(int fd) {
  sock_filter drop_all[] = {BPF_STMT(BPF_RET | BPF_K, 0)};
  const sock_fprog program = {.len = 1, .filter = drop_all};
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program)) == 0;
}

bool HasSocketFilter(int fd) {
  // With no room given, the kernel reports the filter's length in blocks.
  socklen_t blocks = 0;
  return getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &blocks) == 0 && blocks > 0;
}

void DetachSocketFilter(int fd) {
  const int unused = 0;
  (void)setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof(unused));
}

}  // namespace vunet::net
