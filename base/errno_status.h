// The status of a failed system call: `what` and errno's text, with the
// code errno maps to (absl::ErrnoToStatus: EMFILE is kResourceExhausted,
// ENOENT kNotFound...). Read errno before anything else can change it.
//
//   if (bind(fd, addr, len) != 0) return ErrnoStatus("bind");

#ifndef VUNET_BASE_ERRNO_STATUS_H_
#define VUNET_BASE_ERRNO_STATUS_H_

#include <cerrno>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace vunet {

inline absl::Status ErrnoStatus(absl::string_view what) { return absl::ErrnoToStatus(errno, what); }

}  // namespace vunet

#endif  // VUNET_BASE_ERRNO_STATUS_H_
