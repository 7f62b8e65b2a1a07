// vunet's end of the repair socket: how an unprivileged backend gets TCP
// sockets into and out of repair mode (TCP_REPAIR, which needs CAP_NET_ADMIN)
// for live migration, through a small privileged helper.
//
// The protocol is passt-repair's, so either helper (vunet-repair or
// passt-repair) serves either backend:
//  - the backend listens on a UNIX stream socket (by default the vhost-user
//    socket's path with ".repair" appended); the helper connects to it;
//  - each request is one signed byte, the repair mode (TCP_REPAIR_ON 1,
//    TCP_REPAIR_OFF 0, TCP_REPAIR_OFF_NO_WP -1), with 1 to 253 (SCM_MAX_FD)
//    sockets attached as SCM_RIGHTS;
//  - the helper sets TCP_REPAIR to that value on every socket and replies with
//    the same byte and nothing attached; on failure it closes the connection;
//  - the backend closes the connection on error, or when migration is done.
//
// The helper's connection is treated as hostile input: a wrong byte, extra
// bytes, fds sent back, silence past the deadline or a hang-up each fail the
// request with a status saying which, and drop the connection. Nothing here
// aborts or leaks an fd because of what the helper does.
//
// Not thread-safe. Fits an epoll loop someone else owns:
//
//   absl::StatusOr<RepairChannel> repair = RepairChannel::Listen(socket_path + ".repair");
//   epoll_ctl(ADD, repair->listen_fd());            // before the sandbox is entered
//   ... listen_fd readable:  if (repair->OnListenReadable()) epoll_ctl(ADD, repair->helper_fd());
//   ... helper_fd readable:  repair->OnHelperReadable();
//   ... migrating:           absl::Status s = repair->Set(fds, RepairMode::kOn, absl::Seconds(5));

#ifndef VUNET_NET_REPAIR_REPAIR_CHANNEL_H_
#define VUNET_NET_REPAIR_REPAIR_CHANNEL_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
#include "net/migrate/repair_control.h"

namespace vunet::net {

// "on", "off", "off-no-window-probe", or the number for anything else.
std::string RepairModeName(int8_t mode);

class RepairChannel {
 public:
  // The most sockets one request carries (the kernel's SCM_MAX_FD).
  static constexpr size_t kMaxFdsPerMessage = 253;

  // Creates the listening socket at `path` (non-blocking, close-on-exec): call
  // it before the sandbox is entered. A socket file already at `path` is
  // removed first: it is taken as a stale one (the vhost-user socket's own
  // probe is what keeps two backends off one path; connecting here to probe
  // would take a live backend's helper away from it). Anything else at
  // `path` is refused (kFailedPrecondition), as is a path that does not fit
  // a UNIX socket address (kInvalidArgument).
  static absl::StatusOr<RepairChannel> Listen(std::string path);

  RepairChannel(RepairChannel&& other) noexcept;
  RepairChannel& operator=(RepairChannel&& other) noexcept;
  RepairChannel(const RepairChannel&) = delete;
  RepairChannel& operator=(const RepairChannel&) = delete;
  // Close().
  ~RepairChannel();

  const std::string& path() const { return path_; }
  // -1 once closed.
  int listen_fd() const { return listen_.get(); }
  // The connected helper's socket, or -1 when none is connected. It changes
  // when OnListenReadable returns true; a connection dropped here is closed
  // (which takes it out of any epoll set).
  int helper_fd() const { return helper_.get(); }
  bool connected() const { return helper_.valid(); }

  // Accepts a waiting helper (call when listen_fd() is readable). A new
  // helper replaces one already connected, which is dropped (logged). True
  // if helper_fd() is now a newly accepted connection.
  bool OnListenReadable();

  // Call when helper_fd() is readable outside Set(): a helper has nothing to
  // say between requests, so a hang-up or any byte drops it (logged).
  void OnHelperReadable();

  // Asks the helper to set repair mode `mode` on every socket in `fds`, in
  // requests of at most kMaxFdsPerMessage sockets, one at a time, each
  // waiting for its reply; all of it within `timeout` from now. OK when every
  // reply came back right (an empty `fds` is OK at once).
  //
  // Errors, after which the helper is dropped: kFailedPrecondition with no
  // helper connected; kDeadlineExceeded when a reply is late; kUnavailable
  // when the helper hung up (what it does when setsockopt fails) or the
  // connection failed; kDataLoss for a reply that is not the byte sent,
  // extra bytes or fds sent back; kInvalidArgument for a negative fd (nothing
  // sent). The message says how many sockets were confirmed before the
  // failure: those are in the new mode, the ones of the failed request may
  // or may not be, the rest were not asked for.
  absl::Status Set(absl::Span<const int> fds, RepairMode mode, absl::Duration timeout);

  // Closes the helper's connection, if any: how the backend says that
  // migration is over (the helper then exits).
  void DropHelper();

  // Drops the helper, closes the listening socket and removes the socket
  // file, if it is still the one this channel created. Idempotent.
  void Close();

 private:
  RepairChannel(std::string path, UniqueFd listen, dev_t dev, ino_t ino);

  // One request of at most kMaxFdsPerMessage sockets and its reply.
  absl::Status SendRequest(absl::Span<const int> fds, RepairMode mode, absl::Time deadline);
  absl::Status AwaitReply(RepairMode mode, absl::Time deadline);

  std::string path_;
  UniqueFd listen_;
  UniqueFd helper_;
  // The socket file we bound, so Close() never removes another's.
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

}  // namespace vunet::net

#endif  // VUNET_NET_REPAIR_REPAIR_CHANNEL_H_
