// A vhost-user relay for tests of what a frontend does with virtio features
// a backend lacks (the segmentation offloads vu::Device does not offer): the
// frontend talks to the relay as to a backend; every message goes on to the
// real backend and every reply back, fds included, except that the
// backend's GET_FEATURES reply gains `extra` features and SET_FEATURES
// loses them before the backend sees it. The backend's data plane is then
// told nothing of them: with EchoDataPlane's echo_header, frames come back
// with the offload fields they were sent with, as from a backend that took
// them.
//
//   auto proxy = FeatureProxy::Start("/tmp/vu.sock", kGsoFeatures).value();
//   frontend->Attach(proxy->TakeFrontendSocket());
//   frontend->Negotiate();  // Offloads negotiated, as far as it can tell.
//
// One connection; the relay ends (closing both sides) when either side
// closes or sends something that is not a vhost-user message.

#ifndef VUNET_TOOLS_VU_FRONTEND_FEATURE_PROXY_H_
#define VUNET_TOOLS_VU_FRONTEND_FEATURE_PROXY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace vunet::vu_frontend {

class FeatureProxy {
 public:
  // Connects to the backend listening at `backend_socket` and starts
  // relaying on a thread of its own.
  static absl::StatusOr<std::unique_ptr<FeatureProxy>> Start(const std::string& backend_socket,
                                                             uint64_t extra_features);

  // Stops relaying and closes both connections.
  ~FeatureProxy();
  FeatureProxy(const FeatureProxy&) = delete;
  FeatureProxy& operator=(const FeatureProxy&) = delete;

  // The frontend's end of the relay (Frontend::Attach); once.
  UniqueFd TakeFrontendSocket() { return std::move(frontend_end_); }

 private:
  FeatureProxy(UniqueFd ours, UniqueFd frontend_end, UniqueFd backend, UniqueFd stop,
               uint64_t extra)
      : ours_(std::move(ours)),
        frontend_end_(std::move(frontend_end)),
        backend_(std::move(backend)),
        stop_(std::move(stop)),
        extra_(extra) {}
  void Relay();

  UniqueFd ours_;          // Our end of the frontend's socketpair.
  UniqueFd frontend_end_;  // The frontend's, until taken.
  UniqueFd backend_;
  UniqueFd stop_;  // An eventfd.
  const uint64_t extra_;
  std::thread thread_;
};

}  // namespace vunet::vu_frontend

#endif  // VUNET_TOOLS_VU_FRONTEND_FEATURE_PROXY_H_
