// vunet-repair, the privileged helper that puts a backend's TCP sockets into
// and out of repair mode (TCP_REPAIR needs CAP_NET_ADMIN; the backend has
// none). It speaks passt-repair's protocol (see net/repair/repair_channel.h),
// so it serves vunet and passt alike, and passt-repair serves vunet.
//
// It runs with CAP_NET_ADMIN, so it does as little as it can: it connects to
// the backend's repair socket, and for each request (one byte: 1 on, 0 off,
// -1 off without a window probe; 1 to 253 sockets attached) checks the byte
// and that every socket is a TCP one, sets TCP_REPAIR on each, replies with
// the byte and closes the sockets it was given. Beyond passt-repair, a socket
// put into repair mode also gets a socket filter that drops every segment,
// removed when it leaves repair mode: a frozen socket takes nothing more from
// its peer (see net/tcp/tcp_migrate.cc), which an unprivileged backend cannot
// arrange itself where the kernel refuses it socket filters. Anything else
// ends the connection with an error; the backend closing it ends the helper
// normally. No fd it receives outlives its request; nothing but the repair
// mode and that filter is touched.

#ifndef VUNET_TOOLS_VUNET_REPAIR_REPAIR_HELPER_H_
#define VUNET_TOOLS_VUNET_REPAIR_REPAIR_HELPER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace vunet::tools {

// Connects to the backend's repair socket. `path` is either the socket, or a
// directory: then waits (inotify) until a socket whose name ends in
// ".repair" is created there, and connects to it. Only one created after the
// wait began counts: one already there may be another backend's, or stale.
// Errors say what failed, with the path.
absl::StatusOr<UniqueFd> ConnectToRepairSocket(const std::string& path);

// Handles one request on `connection`: reads it, checks it, sets the repair
// mode on its sockets, replies, closes them. false when the backend has
// closed the connection (between requests: the normal end). An error for
// anything wrong: the caller then closes the connection, which is how the
// protocol says "failed".
absl::StatusOr<bool> HandleRepairRequest(int connection);

// HandleRepairRequest until the backend closes the connection (OK) or a
// request fails (its error).
absl::Status ServeRepairRequests(int connection);

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_REPAIR_REPAIR_HELPER_H_
