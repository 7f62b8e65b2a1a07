// The vhost-user server: a listening UNIX socket that serves one frontend at
// a time, each connection with a fresh Device. A frontend that disconnects
// (or breaks the framing) takes its device with it: queues are stopped
// (DataPlane::OnQueueStop), memory unmapped, every fd it sent closed; then the
// next frontend may connect.
//
// The server owns no loop. A backend puts listen_fd() and connection_fd() in
// its own epoll set, level-triggered (one call handles one message, and more
// may be waiting), and calls HandleReadable() when either is readable; the
// connection fd changes as frontends come and go, so re-read it after each
// call. Run() is a small poll loop doing the same, for tests and simple uses.
//
//   auto server = Server::Listen({.socket_path = "/run/vunet.sock"}, &data_plane);
//   if (!server.ok()) ...;
//   std::atomic<bool> stop{false};
//   (*server)->Run(stop);
//
// A connection has a receive timeout, so a frontend that sends half a message
// and stalls is dropped rather than blocking the loop forever. A second
// frontend that connects while one is served is accepted and closed at once.

#ifndef VUNET_VU_SERVER_H_
#define VUNET_VU_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "vu/device.h"

namespace vunet::vu {

class Server {
 public:
  struct Options {
    std::string socket_path;
    // Serve one frontend, then report done() instead of accepting another.
    bool one_off = false;
    // How long one message may take to arrive once it has started.
    std::chrono::milliseconds receive_timeout = std::chrono::seconds(2);
    Device::Options device;
  };

  // Listens on options.socket_path. A socket file left there by a process
  // that no longer listens (connect() is refused) is removed first; a socket
  // someone listens on, or a path that is not a socket, is refused
  // (kAlreadyExists, kFailedPrecondition). `data_plane` must outlive the
  // server.
  static absl::StatusOr<std::unique_ptr<Server>> Listen(const Options& options,
                                                        DataPlane* data_plane);

  // Serves on a socket handed over already open (the vhost-user convention
  // for backend programs, --fd): a listening UNIX stream socket is served as
  // Listen's is, with no file of ours to remove; a connected one is the
  // frontend itself, served at once, and once it leaves the server is done()
  // (one_off is implied; listen_fd() is -1). options.socket_path is ignored.
  // kInvalidArgument if `fd` is not a UNIX stream socket.
  static absl::StatusOr<std::unique_ptr<Server>> Adopt(const Options& options, UniqueFd fd,
                                                       DataPlane* data_plane);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  // Drops the connection (stopping its queues) and removes the socket file.
  ~Server();

  // The listening socket, or -1 when serving a connected socket (Adopt).
  int listen_fd() const { return listen_.get(); }
  // The connected frontend's socket, or -1 when none is connected.
  int connection_fd() const { return connection_.get(); }

  // Handles readiness of `fd`, which is listen_fd() or connection_fd(): on
  // the listening socket accepts a frontend (or turns it away); on the
  // connection reads and processes one message and writes its reply. A
  // frontend that misbehaves or leaves is dropped (logged), which is not an
  // error of the server: the status is OK. kInvalidArgument for an fd that is
  // neither; other errors for failures of our own sockets.
  absl::Status HandleReadable(int fd);

  // Serves until `stop` becomes true (checked at least every 100 ms), or with
  // one_off until the first frontend has left.
  absl::Status Run(const std::atomic<bool>& stop);

  // The current frontend's device; nullptr when none is connected.
  Device* device() { return device_.get(); }
  // True once a one_off server's frontend has left.
  bool done() const { return done_; }
  // Frontends accepted and served so far (not counting those turned away).
  uint64_t connections_served() const { return connections_served_; }
  const std::string& socket_path() const { return options_.socket_path; }

 private:
  Server(const Options& options, DataPlane* data_plane, UniqueFd listen, dev_t dev, ino_t ino);
  absl::Status Accept();
  // Makes `fd` the connection: timeouts set, a fresh device.
  absl::Status Connect(UniqueFd fd);
  void HandleMessage();
  void Disconnect(const absl::Status& why);

  const Options options_;
  DataPlane* const data_plane_;
  UniqueFd listen_;
  // The socket file we created, to remove only ours on destruction; none
  // (options_.socket_path empty) for an adopted socket.
  const dev_t dev_;
  const ino_t ino_;
  UniqueFd connection_;
  std::unique_ptr<Device> device_;
  bool done_ = false;
  uint64_t connections_served_ = 0;
};

}  // namespace vunet::vu

#endif  // VUNET_VU_SERVER_H_
