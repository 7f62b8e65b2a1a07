// Opening a file vunet writes for its user (a capture, a log) safely: created
// mode 0600, never through a symbolic link, and only if it is a regular file
// (opening a FIFO does not wait for a reader, and a FIFO or a device is
// refused, so that writing to it can never block the event loop).
//
//   absl::StatusOr<UniqueFd> fd = OpenPrivateFile("/tmp/vunet.pcap", PrivateFileMode::kTruncate);

#ifndef VUNET_BASE_PRIVATE_FILE_H_
#define VUNET_BASE_PRIVATE_FILE_H_

#include <string>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace vunet {

// kTruncate: write-only, emptied. kAppend: O_APPEND, and readable too where
// the file's mode allows (so that a capped log can drop its oldest lines).
enum class PrivateFileMode { kTruncate, kAppend };

// kInvalidArgument naming the path: a symbolic link, not a regular file, or
// the errno of open.
absl::StatusOr<UniqueFd> OpenPrivateFile(const std::string& path, PrivateFileMode mode);

}  // namespace vunet

#endif  // VUNET_BASE_PRIVATE_FILE_H_
