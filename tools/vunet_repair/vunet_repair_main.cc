// vunet-repair PATH: sets and clears TCP_REPAIR on a backend's sockets for
// live migration (see repair_helper.h). PATH is the backend's repair socket
// (the vhost-user socket's path with ".repair" appended), or a directory in
// which to wait for one. Needs CAP_NET_ADMIN:
//   setcap cap_net_admin+ep vunet-repair   (or run it as root)
// Exits 0 when the backend closes the connection, 1 on any error (one line
// on stderr), 2 on a wrong command line.

#include <sys/socket.h>
#include <sys/un.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "tools/vunet_repair/repair_helper.h"

namespace {

constexpr char kUsage[] =
    "usage: vunet-repair PATH\n"
    "Sets and clears TCP_REPAIR on a backend's TCP sockets for live migration (vunet or passt).\n"
    "PATH: the backend's repair socket (its vhost-user socket's path with \".repair\"\n"
    "appended), or a directory in which to wait for a *.repair socket to appear.\n"
    "Needs CAP_NET_ADMIN (setcap cap_net_admin+ep, or root).\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0)) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc != 2 || argv[1][0] == '\0') {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string path = argv[1];
  absl::StatusOr<vunet::UniqueFd> connection = vunet::tools::ConnectToRepairSocket(path);
  if (!connection.ok()) {
    std::fprintf(stderr, "vunet-repair: %s\n", std::string(connection.status().message()).c_str());
    return 1;
  }
  // The socket's own name: in a directory, which one was found.
  sockaddr_un peer{};
  socklen_t len = sizeof(peer) - 1;
  if (getpeername(connection->get(), reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    std::fprintf(stderr, "vunet-repair: connected to %s\n", peer.sun_path);
  }
  const absl::Status served = vunet::tools::ServeRepairRequests(connection->get());
  if (!served.ok()) {
    std::fprintf(stderr, "vunet-repair: %s\n", std::string(served.message()).c_str());
    return 1;
  }
  return 0;
}
