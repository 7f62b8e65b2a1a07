// Confinement of the vunet process, entered once everything it needs from
// the filesystem is open (the listening socket, the pid file, the capture
// file; resolv.conf and the user database read) and before the event loop
// runs. In order:
//
//  1. A clean-up helper is forked. It keeps the identity vunet started with,
//     closes every fd but a pipe and the directories of the paths to remove,
//     confines itself to a seccomp filter of its own (read, fstatat,
//     unlinkat, exit) and waits for the pipe to close: when vunet ends,
//     however it ends (exit, SIGKILL, a seccomp kill), it removes the socket
//     and the pid file, if they are still the files vunet made (same device
//     and inode). ~Sandbox closes the pipe and waits for the helper, so that
//     they are gone when vunet's exit is seen.
//  2. Root becomes the --runas identity (default nobody): setgroups(0),
//     setgid, setuid, each checked, then checked again through getres[ug]id
//     and a setuid(0) that must fail. A process that is not root keeps its
//     identity (and see RunAsFor for root of a user namespace).
//  3. PR_SET_NO_NEW_PRIVS.
//  4. Best effort (an info line where the kernel refuses; containers often
//     do): new user and mount namespaces, the root pivoted to an empty
//     read-only tmpfs (nothing of the host's filesystem is reachable by
//     path), every capability of the new user namespace dropped.
//  5. A seccomp filter (libseccomp): an allowlist of what the event loop,
//     the vhost-user device, ICMP echo and the TCP/UDP translators call,
//     with arguments checked where that narrows something (sockets: AF_INET
//     and AF_INET6 stream and datagram sockets and ping sockets only; mmap
//     and mprotect: never PROT_EXEC; ioctl: FIONREAD, TIOCOUTQ, SIOCOUTQNSD,
//     FIONBIO, TCGETS; fcntl: flags, seals, F_DUPFD_CLOEXEC; setsockopt: no
//     eBPF programs, no TCP_ULP; tgkill: this process only; no open or
//     openat at all). Calls only an exploit
//     makes (execve, ptrace, mount, unshare, bpf, io_uring_*, setuid...)
//     kill the process. Any other call is refused: it fails with EPERM and a
//     SIGSYS handler logs it (the syscall's name, once per syscall up to a
//     few times) to stderr, or to syslog when daemonized. unlink and
//     unlinkat fail with EACCES and are not logged: the helper removes the
//     files.
//
//   absl::StatusOr<std::optional<Identity>> runas = RunAsFor(flag, geteuid() == 0);
//   ... open everything ...
//   absl::StatusOr<std::unique_ptr<Sandbox>> sandbox = Sandbox::Enter(options);
//   ... run ...
//   sandbox->reset();  // After the socket is closed: waits for the clean-up.
//
// The process must be single-threaded when it calls Enter (a multithreaded
// process cannot enter a user namespace) and must not need to open files,
// execute programs or create threads afterwards.
//
// Sanitizer builds: LeakSanitizer's exit-time check needs ptrace and
// /proc, which the sandbox takes away, so Enter runs the leak check at once
// (__lsan_do_leak_check, which also turns the exit-time check off), and
// __sanitizer_sandbox_on_notify lets the runtime cache what its reports need.

#ifndef VUNET_TOOLS_VUNET_SANDBOX_H_
#define VUNET_TOOLS_VUNET_SANDBOX_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace vunet::tools {

// A user and group to run as.
struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string user;   // As given, or the user database's name.
  std::string group;  // Likewise; may be the number.
};

// USER[:GROUP], each a name or a number. GROUP defaults to USER's primary
// group. Errors (kInvalidArgument, one line): a name the user or group
// database does not know, a number without a user entry and no GROUP, an
// empty part.
absl::StatusOr<Identity> ResolveIdentity(absl::string_view spec);

// What --runas means for a process that is (is_root) or is not root: the
// flag's identity, or nobody if the flag is empty, for root; nullopt (no
// change) otherwise, though a given flag is still resolved so that a typo is
// an error everywhere. One exception, logged: root of a user namespace that
// does not map nobody (a container or build sandbox that maps root alone)
// stays root when no flag is given.
absl::StatusOr<std::optional<Identity>> RunAsFor(const std::string& runas_flag, bool is_root);

struct SandboxOptions {
  // Switched to when the process is root (see RunAsFor).
  std::optional<Identity> runas;
  // Removed by the clean-up helper when the process ends, if each is still
  // the file it is when Enter runs. Paths that do not exist are skipped.
  std::vector<std::string> remove_at_exit;
  // Step 4 above.
  bool namespaces = true;
  // Step 5 above.
  bool seccomp = true;
  // Refused syscalls are reported to syslog (a datagram socket to /dev/log
  // connected by Enter) rather than stderr.
  bool syslog = false;
};

class Sandbox {
 public:
  // What Enter achieved.
  struct State {
    bool helper = false;        // The clean-up helper runs.
    bool dropped = false;       // The identity changed.
    uid_t uid = 0;              // The identity now (as the initial namespace
    gid_t gid = 0;              // sees it).
    bool no_new_privs = false;  //
    bool namespaces = false;    // New user and mount namespaces.
    bool empty_root = false;    // The root is an empty read-only tmpfs.
    bool seccomp = false;       // The filter is loaded.
  };

  // Enters the sandbox described above; a failure to change identity, set
  // no_new_privs or load the filter is an error (the process must then
  // exit: it may be half confined). Call once per process.
  static absl::StatusOr<std::unique_ptr<Sandbox>> Enter(const SandboxOptions& options);

  // Closes the helper's pipe and waits (at most a few seconds) for it to
  // remove the files.
  ~Sandbox();
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  const State& state() const { return state_; }
  // One line for the log: who we run as and what is in force.
  std::string Describe() const;

 private:
  Sandbox() = default;

  State state_;
  int helper_pipe_ = -1;  // Write end; the helper reads EOF when it closes.
  pid_t helper_pid_ = -1;
  std::string user_;
};

// Loads the seccomp filter of step 5 into the calling process (and installs
// its SIGSYS handler), with no other step. For tests; Enter calls it.
// `report_fd` receives a line for each refused call (see above);
// `syslog_format` prefixes each with a syslog priority and tag.
absl::Status InstallSeccompFilter(int report_fd, bool syslog_format);

// Calls refused (EPERM) by the filter in this process so far.
uint64_t RefusedSyscalls();

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_SANDBOX_H_
