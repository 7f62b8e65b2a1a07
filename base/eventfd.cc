#include "base/eventfd.h"

#include <poll.h>
#include <unistd.h>

namespace vunet {

uint64_t DrainEventfd(int fd) {
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN)) return 0;
  uint64_t value;
  if (read(fd, &value, sizeof(value)) != sizeof(value)) return 0;
  return value;
}

}  // namespace vunet
