// Reading eventfds that may belong to someone else: a vhost-user kick eventfd
// is the frontend's, and its flags (blocking or not) are not ours to choose.
//
//   if (DrainEventfd(kick_fd) > 0) ProcessQueue();

#ifndef VUNET_BASE_EVENTFD_H_
#define VUNET_BASE_EVENTFD_H_

#include <cstdint>

namespace vunet {

// Reads and clears an eventfd's counter without blocking, whatever the fd's
// flags: reads only if poll() says it is readable. Returns the value read, 0
// if none was pending (or the fd is not a readable eventfd).
uint64_t DrainEventfd(int fd);

}  // namespace vunet

#endif  // VUNET_BASE_EVENTFD_H_
