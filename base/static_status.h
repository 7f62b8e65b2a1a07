// A status made once per call site and shared from then on. Copying an
// absl::Status shares its message (a reference count), so code a guest or a
// frontend can drive once per frame can refuse without allocating:
//
//   if (ring_full) return VUNET_STATIC_STATUS(absl::UnavailableError("no room"));
//
// The expression is evaluated once, the first time that line runs; the
// status lives for the rest of the process.

#ifndef VUNET_BASE_STATIC_STATUS_H_
#define VUNET_BASE_STATIC_STATUS_H_

#include "absl/status/status.h"

#define VUNET_STATIC_STATUS(expr)                                               \
  (*[] {                                                                        \
    static const ::absl::Status* const vunet_status = new ::absl::Status(expr); \
    return vunet_status;                                                        \
  }())

#endif  // VUNET_BASE_STATIC_STATUS_H_
