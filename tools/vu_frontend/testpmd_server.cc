// testpmd_server: a vhost-user backend (vu::Server) whose data plane only
// reports what a frontend does with the rings, for checking third-party
// frontends such as DPDK's virtio-user (dpdk-testpmd) against our control
// plane. It prints a line when each queue starts or stops and, once both
// rings run and --min_frames frames came through the transmit ring, "READY";
// it exits when the frontend disconnects (0 if READY was reached) or after
// --timeout (1).
//
//   testpmd_server --socket=/tmp/vu.sock --min_frames=64 --echo
//
// With --echo, frames the frontend transmits come back on its receive ring,
// so a frontend that forwards what it receives (testpmd's io mode) keeps a
// burst going around; every pass counts.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tools/vu_frontend/echo_data_plane.h"
#include "tools/vu_frontend/frontend.h"
#include "vu/server.h"

ABSL_FLAG(std::string, socket, "", "where to listen (required)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(60), "give up after this long");
ABSL_FLAG(uint64_t, min_frames, 0, "transmitted frames to see before READY");
ABSL_FLAG(bool, echo, false, "return transmitted frames on the receive ring");
ABSL_FLAG(bool, mergeable, true, "spread echoed frames over several receive buffers");

namespace vunet::vu_frontend {
namespace {

int Run() {
  const std::string path = absl::GetFlag(FLAGS_socket);
  if (path.empty()) {
    std::fprintf(stderr, "testpmd_server: --socket is required\n");
    return 2;
  }
  const uint64_t min_frames = absl::GetFlag(FLAGS_min_frames);
  std::atomic<bool> stop{false};
  vu::Server* server_ptr = nullptr;  // Set before Run(), which calls on_queue.
  bool features_printed = false;
  const auto on_queue = [&](uint32_t index, bool started) {
    if (started && !features_printed && server_ptr != nullptr && server_ptr->device() != nullptr) {
      const vu::Device& device = *server_ptr->device();
      std::printf("frontend features: %s; protocol features: %s\n",
                  FeatureNames(device.acked_features()).c_str(),
                  ProtocolFeatureNames(device.acked_protocol_features()).c_str());
      features_printed = true;
    }
    std::printf("queue %u %s\n", index, started ? "started" : "stopped");
    std::fflush(stdout);
  };
  EchoDataPlane plane({.echo = absl::GetFlag(FLAGS_echo),
                       .mergeable = absl::GetFlag(FLAGS_mergeable),
                       .on_queue = on_queue});
  vu::Server::Options options;
  options.socket_path = path;
  options.one_off = true;
  absl::StatusOr<std::unique_ptr<vu::Server>> server = vu::Server::Listen(options, &plane);
  if (!server.ok()) {
    std::fprintf(stderr, "testpmd_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  server_ptr = server->get();
  std::printf("listening on %s\n", path.c_str());
  std::fflush(stdout);

  // Watches the counters and the clock; the server loop runs on this thread.
  std::atomic<bool> ready{false};
  std::atomic<bool> timed_out{false};
  std::thread watcher([&] {
    const absl::Time deadline = absl::Now() + absl::GetFlag(FLAGS_timeout);
    while (!stop.load()) {
      const uint64_t frames = plane.frames_echoed() + plane.frames_consumed();
      if (!ready.load() && plane.queue_starts(0) > 0 && plane.queue_starts(1) > 0 &&
          frames >= min_frames) {
        ready = true;
        std::printf("READY: both rings started, %llu frames\n",
                    static_cast<unsigned long long>(frames));
        std::fflush(stdout);
      }
      if (absl::Now() > deadline) {
        timed_out = true;
        stop = true;
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  });
  const absl::Status s = (*server)->Run(stop);
  stop = true;
  watcher.join();
  std::printf("frames: %llu echoed, %llu consumed, %llu dropped; queue starts: %llu, %llu\n",
              static_cast<unsigned long long>(plane.frames_echoed()),
              static_cast<unsigned long long>(plane.frames_consumed()),
              static_cast<unsigned long long>(plane.frames_dropped()),
              static_cast<unsigned long long>(plane.queue_starts(0)),
              static_cast<unsigned long long>(plane.queue_starts(1)));
  if (!s.ok()) std::printf("server: %s\n", s.ToString().c_str());
  if (timed_out.load()) std::printf("timed out\n");
  return ready.load() ? 0 : 1;
}

}  // namespace
}  // namespace vunet::vu_frontend

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  absl::ParseCommandLine(argc, argv);
  return vunet::vu_frontend::Run();
}
