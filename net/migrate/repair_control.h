// How a translator asks for TCP_REPAIR on its sockets during a migration.
// Setting and clearing repair mode needs CAP_NET_ADMIN, which the backend
// does not have: a privileged helper connected to the backend's repair
// socket does it on sockets the backend passes it (passt-repair's protocol;
// net/repair). Tests implement it with setsockopt directly.

#ifndef VUNET_NET_MIGRATE_REPAIR_CONTROL_H_
#define VUNET_NET_MIGRATE_REPAIR_CONTROL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace vunet::net {

// TCP_REPAIR's values (linux/tcp.h): on, off, and off without the window
// probe the kernel otherwise sends on leaving repair mode.
enum class RepairMode : int8_t { kOff = 0, kOn = 1, kOffNoWindowProbe = -1 };

class RepairControl {
 public:
  virtual ~RepairControl() = default;
  // True if repair mode can be asked for now (a helper is connected).
  virtual bool available() const = 0;
  // Sets `mode` on every socket in `fds`, all or none as far as the caller
  // can tell: an error means the sockets' modes are unknown (the helper
  // failed part way) and the migration of their flows is off.
  virtual absl::Status SetRepair(absl::Span<const int> fds, RepairMode mode) = 0;
};

}  // namespace vunet::net

#endif  // VUNET_NET_MIGRATE_REPAIR_CONTROL_H_
