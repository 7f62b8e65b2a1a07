#include "tools/vunet/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/log.h"

// AddressSanitizer (and its LeakSanitizer): see sandbox.h.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VUNET_SANDBOX_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define VUNET_SANDBOX_ASAN 1
#endif
#ifdef VUNET_SANDBOX_ASAN
#include <sanitizer/common_interface_defs.h>
#include <sanitizer/lsan_interface.h>
#endif

namespace vunet::tools {
namespace {

absl::Status BadRunAs(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--runas: ", why));
}

// ---------------------------------------------------------------------------
// The user database.

bool ParseId(absl::string_view s, uint32_t* id) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), absl::ascii_isdigit)) return false;
  return absl::SimpleAtoi(s, id) && *id != static_cast<uint32_t>(-1);
}

// getpw*_r / getgr*_r with a buffer that grows on ERANGE. `call` returns
// the function's result and sets *found.
template <typename Call>
int WithBuffer(Call call) {
  std::string buffer(4096, '\0');
  for (;;) {
    const int rc = call(buffer.data(), buffer.size());
    if (rc != ERANGE || buffer.size() >= (1u << 20)) return rc;
    buffer.resize(buffer.size() * 2);
  }
}

// The user `name` (a name or a number): uid, name and primary group.
struct UserEntry {
  bool found = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
};

UserEntry LookUpUser(absl::string_view user) {
  UserEntry e;
  uint32_t id;
  const bool numeric = ParseId(user, &id);
  const std::string name(user);
  WithBuffer([&](char* buf, size_t len) {
    passwd pw;
    passwd* result = nullptr;
    const int rc = numeric ? getpwuid_r(id, &pw, buf, len, &result)
                           : getpwnam_r(name.c_str(), &pw, buf, len, &result);
    if (rc == 0 && result != nullptr) {
      e.found = true;
      e.uid = pw.pw_uid;
      e.gid = pw.pw_gid;
      e.name = pw.pw_name;
    }
    return rc;
  });
  if (!e.found && numeric) e.uid = id;
  return e;
}

struct GroupEntry {
  bool found = false;
  gid_t gid = 0;
  std::string name;
};

GroupEntry LookUpGroup(absl::string_view group) {
  GroupEntry e;
  uint32_t id;
  const bool numeric = ParseId(group, &id);
  const std::string name(group);
  WithBuffer([&](char* buf, size_t len) {
    struct group gr;
    struct group* result = nullptr;
    const int rc = numeric ? getgrgid_r(id, &gr, buf, len, &result)
                           : getgrnam_r(name.c_str(), &gr, buf, len, &result);
    if (rc == 0 && result != nullptr) {
      e.found = true;
      e.gid = gr.gr_gid;
      e.name = gr.gr_name;
    }
    return rc;
  });
  if (!e.found && numeric) e.gid = id;
  return e;
}

// Whether `id` is mapped in `map_path` (/proc/self/uid_map or gid_map).
bool Mapped(const char* map_path, uint32_t id) {
  FILE* f = std::fopen(map_path, "re");
  if (f == nullptr) return true;  // No /proc: assume the initial namespace.
  unsigned long inside, outside, count;
  bool mapped = false;
  while (!mapped && std::fscanf(f, "%lu %lu %lu", &inside, &outside, &count) == 3) {
    mapped = id >= inside && id - inside < count;
  }
  std::fclose(f);
  return mapped;
}

// The initial user namespace maps every id to itself.
bool InInitialUserNamespace() {
  FILE* f = std::fopen("/proc/self/uid_map", "re");
  if (f == nullptr) return true;
  unsigned long inside = 1, outside = 1, count = 0;
  const int n = std::fscanf(f, "%lu %lu %lu", &inside, &outside, &count);
  std::fclose(f);
  return n == 3 && inside == 0 && outside == 0 && count == 4294967295ul;
}

// Whether this (root) process could switch to `id` here.
bool Reachable(const Identity& id) {
  if (!Mapped("/proc/self/uid_map", id.uid) || !Mapped("/proc/self/gid_map", id.gid)) {
    return false;
  }
  FILE* f = std::fopen("/proc/self/setgroups", "re");
  if (f == nullptr) return true;
  char policy[16] = {};
  const bool deny = std::fscanf(f, "%15s", policy) == 1 && std::strcmp(policy, "deny") == 0;
  std::fclose(f);
  return !deny;
}

// ---------------------------------------------------------------------------
// Refused syscalls: the SIGSYS handler. Everything it touches is prepared
// before the filter is loaded; it calls write(2) only.

constexpr int kNamedSyscalls = 512;
constexpr int kLogsPerSyscall = 3;
char g_syscall_names[kNamedSyscalls][28];
std::atomic<uint32_t> g_logged[kNamedSyscalls + 1];
std::atomic<uint64_t> g_refused{0};
int g_report_fd = STDERR_FILENO;
bool g_report_syslog = false;
pid_t g_pid = 0;

// A fixed buffer that async-signal-safe code appends to.
struct Line {
  char buf[256];
  size_t len = 0;
  void Add(const char* s) {
    while (*s != '\0' && len < sizeof(buf)) buf[len++] = *s++;
  }
  void Add(uint64_t v, int base = 10) {
    char digits[24];
    int n = 0;
    do {
      digits[n++] = "0123456789abcdef"[v % base];
      v /= base;
    } while (v != 0);
    if (base == 16) Add("0x");
    while (n > 0 && len < sizeof(buf)) buf[len++] = digits[--n];
  }
};

void OnSigsys(int, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  auto* uc = static_cast<ucontext_t*>(context);
  const int nr = info->si_syscall;
  uint64_t args[3] = {};
#if defined(__x86_64__)
  args[0] = uc->uc_mcontext.gregs[REG_RDI];
  args[1] = uc->uc_mcontext.gregs[REG_RSI];
  args[2] = uc->uc_mcontext.gregs[REG_RDX];
  uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
#elif defined(__aarch64__)
  for (int i = 0; i < 3; ++i) args[i] = uc->uc_mcontext.regs[i];
  uc->uc_mcontext.regs[0] = -EPERM;
#else
#error "the SIGSYS handler knows x86_64 and aarch64"
#endif
  g_refused.fetch_add(1, std::memory_order_relaxed);
  const int slot = nr >= 0 && nr < kNamedSyscalls ? nr : kNamedSyscalls;
  // Counted up to kLogsPerSyscall and no further (no wrap-around).
  uint32_t logged = g_logged[slot].load(std::memory_order_relaxed);
  if (logged < kLogsPerSyscall &&
      g_logged[slot].compare_exchange_strong(logged, logged + 1, std::memory_order_relaxed)) {
    Line line;
    if (g_report_syslog) {
      line.Add("<");
      line.Add(uint64_t{LOG_DAEMON | LOG_WARNING});
      line.Add(">vunet[");
      line.Add(static_cast<uint64_t>(g_pid));
      line.Add("]: ");
    } else {
      line.Add("vunet warning: ");
    }
    line.Add("sandbox: refused syscall ");
    if (slot < kNamedSyscalls && g_syscall_names[slot][0] != '\0') {
      line.Add(g_syscall_names[slot]);
      line.Add(" ");
    }
    line.Add("(");
    line.Add(static_cast<uint64_t>(static_cast<uint32_t>(nr)));
    line.Add(") with ");
    for (int i = 0; i < 3; ++i) {
      line.Add(args[i], 16);
      line.Add(i < 2 ? ", " : ", ...: EPERM");
    }
    if (!g_report_syslog) line.Add("\n");
    (void)!write(g_report_fd, line.buf, line.len);
  }
  errno = saved_errno;
}

// ---------------------------------------------------------------------------
// libseccomp.

class Filter {
 public:
  explicit Filter(uint32_t default_action) : ctx_(seccomp_init(default_action)) {
    if (ctx_ == nullptr) status_ = absl::InternalError("seccomp_init failed");
  }
  ~Filter() {
    if (ctx_ != nullptr) seccomp_release(ctx_);
  }
  Filter(const Filter&) = delete;
  Filter& operator=(const Filter&) = delete;

  void Attribute(scmp_filter_attr attr, uint32_t value) {
    if (ctx_ == nullptr) return;
    if (const int rc = seccomp_attr_set(ctx_, attr, value); rc < 0) {
      Fail(absl::StrCat("seccomp_attr_set(", attr, "): ", strerror(-rc)));
    }
  }

  // A rule; a syscall this architecture does not have is skipped.
  void Add(uint32_t action, const char* name, std::initializer_list<scmp_arg_cmp> args = {}) {
    if (ctx_ == nullptr) return;
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr < 0) return;  // __NR_SCMP_ERROR, or a pseudo-syscall elsewhere.
    const int rc = seccomp_rule_add_array(ctx_, action, nr, static_cast<unsigned>(args.size()),
                                          args.size() == 0 ? nullptr : args.begin());
    if (rc < 0) Fail(absl::StrCat("seccomp rule for ", name, ": ", strerror(-rc)));
  }
  void Allow(const char* name, std::initializer_list<scmp_arg_cmp> args = {}) {
    Add(SCMP_ACT_ALLOW, name, args);
  }

  absl::Status Load() {
    if (!status_.ok()) return status_;
    if (const int rc = seccomp_load(ctx_); rc < 0) {
      return absl::InternalError(absl::StrCat("seccomp_load: ", strerror(-rc)));
    }
    return absl::OkStatus();
  }

 private:
  void Fail(const std::string& message) {
    if (status_.ok()) status_ = absl::InternalError(message);
  }

  scmp_filter_ctx ctx_;
  absl::Status status_;
};

// Calls no backend needs and only an exploit makes: the process dies.
// clang-format off
constexpr const char* kKilled[] = {
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd", "add_key", "request_key", "keyctl",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "iopl", "ioperm", "modify_ldt", "swapon", "swapoff", "reboot", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "kcmp", "lookup_dcookie",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "personality", "pkey_mprotect",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog", "uselib", "vhangup",
};

// Calls made without conditions on their arguments.
constexpr const char* kAllowed[] = {
    // I/O on fds we hold (pwritev, and ftruncate to drop a partial record:
    // the capture file).
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "close", "lseek", "fstat", "newfstatat", "ftruncate",
    // The kind of an fd the frontend sent (vu/device.cc: /proc/self/fd/N
    // through a /proc fd opened at start; nothing else is reachable).
    "readlink", "readlinkat",
    // Sanitizer runtimes test whether memory is readable by writing it into
    // a pipe (UBSan's vptr check).
    "pipe", "pipe2",
    // Memory (mmap and mprotect: below): guest memory, the allocator.
    "munmap", "mremap", "madvise", "brk",
    // The event loop; poll: draining eventfds, a vhost-user message's deadline.
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
    "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd4",
    // Sockets (socket and setsockopt: below): the vhost-user connection and
    // its SCM_RIGHTS, ping sockets, the TCP and UDP translators, syslog.
    "connect", "bind", "listen", "accept", "accept4", "getsockopt", "getsockname",
    "getpeername", "shutdown", "sendmsg", "sendmmsg", "recvmsg", "recvmmsg", "recvfrom",
    "sendto",
    // Signals (signalfd's mask, this handler's return, abort()).
    "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack",
    // Time.
    "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep",
    // The process itself; wait4: the clean-up helper.
    "exit", "exit_group", "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "getgroups", "getrandom", "futex", "sched_yield",
    "restart_syscall", "wait4", "uname", "getrlimit",
};
// clang-format on

void AddMainRules(Filter& f) {
  for (const char* name : kKilled) f.Add(SCMP_ACT_KILL_PROCESS, name);
  for (const char* name : kAllowed) f.Allow(name);
  // The clean-up helper removes the socket and the pid file; the server's
  // and main's own attempts fail quietly.
  f.Add(SCMP_ACT_ERRNO(EACCES), "unlink");
  f.Add(SCMP_ACT_ERRNO(EACCES), "unlinkat");

  // Never executable memory.
  f.Allow("mmap", {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  f.Allow("mprotect", {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});

  // IPv4 and IPv6 stream and datagram sockets, and ping sockets.
  const uint64_t type_mask = ~static_cast<uint64_t>(SOCK_NONBLOCK | SOCK_CLOEXEC);
  for (const uint64_t family : {uint64_t{AF_INET}, uint64_t{AF_INET6}}) {
    for (const uint64_t proto : {uint64_t{0}, uint64_t{IPPROTO_TCP}}) {
      f.Allow("socket",
              {SCMP_A0(SCMP_CMP_EQ, family), SCMP_A1(SCMP_CMP_MASKED_EQ, type_mask, SOCK_STREAM),
               SCMP_A2(SCMP_CMP_EQ, proto)});
    }
    const uint64_t ping = family == AF_INET ? uint64_t{IPPROTO_ICMP} : uint64_t{IPPROTO_ICMPV6};
    for (const uint64_t proto : {uint64_t{0}, uint64_t{IPPROTO_UDP}, ping}) {
      f.Allow("socket",
              {SCMP_A0(SCMP_CMP_EQ, family), SCMP_A1(SCMP_CMP_MASKED_EQ, type_mask, SOCK_DGRAM),
               SCMP_A2(SCMP_CMP_EQ, proto)});
    }
  }

  // Socket options, except those that attach eBPF programs to sockets
  // (SO_ATTACH_BPF, reuseport programs: kernel attack surface no translator
  // needs) and upper-layer protocols on TCP (kTLS). Classic socket filters
  // are allowed: a migrating TCP socket gets one that drops everything, so
  // that nothing more is taken (and acknowledged) after its state was
  // dumped (net/tcp/tcp_migrate.cc).
  for (uint64_t opt = 0; opt < 128; ++opt) {
    if (opt == SO_ATTACH_BPF || opt == SO_ATTACH_REUSEPORT_CBPF ||
        opt == SO_ATTACH_REUSEPORT_EBPF) {
      continue;
    }
    f.Allow("setsockopt", {SCMP_A1(SCMP_CMP_EQ, SOL_SOCKET), SCMP_A2(SCMP_CMP_EQ, opt)});
  }
  f.Allow("setsockopt", {SCMP_A1(SCMP_CMP_EQ, IPPROTO_TCP), SCMP_A2(SCMP_CMP_LT, TCP_ULP)});
  f.Allow("setsockopt", {SCMP_A1(SCMP_CMP_EQ, IPPROTO_TCP), SCMP_A2(SCMP_CMP_GT, TCP_ULP)});
  for (const uint64_t level : {uint64_t{IPPROTO_IP}, uint64_t{IPPROTO_IPV6}, uint64_t{IPPROTO_UDP},
                               uint64_t{IPPROTO_ICMPV6}}) {
    f.Allow("setsockopt", {SCMP_A1(SCMP_CMP_EQ, level)});
  }

  // Queue sizes, non-blocking mode, isatty().
  for (const uint64_t request : {uint64_t{FIONREAD}, uint64_t{TIOCOUTQ}, uint64_t{SIOCOUTQNSD},
                                 uint64_t{FIONBIO}, uint64_t{TCGETS}}) {
    f.Allow("ioctl", {SCMP_A1(SCMP_CMP_EQ, request)});
  }
  for (const uint64_t cmd :
       {F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_ADD_SEALS, F_GET_SEALS, F_DUPFD_CLOEXEC}) {
    f.Allow("fcntl", {SCMP_A1(SCMP_CMP_EQ, cmd)});
  }
  // Signals to this process only (raise, abort).
  const uint64_t pid = static_cast<uint64_t>(getpid());
  f.Allow("tgkill", {SCMP_A0(SCMP_CMP_EQ, pid)});
  f.Allow("tkill", {SCMP_A0(SCMP_CMP_EQ, pid)});
  // getrlimit through prlimit64 (no new limit).
  f.Allow("prlimit64", {SCMP_A0(SCMP_CMP_EQ, 0), SCMP_A2(SCMP_CMP_EQ, 0)});
}

// ---------------------------------------------------------------------------
// The clean-up helper.

struct Removal {
  int dir_fd = -1;
  std::string name;
  dev_t dev = 0;
  ino_t ino = 0;
};

// Closes every fd but those in `keep` (sorted).
void CloseAllBut(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  unsigned first = 0;
  for (const int fd : keep) {
    if (static_cast<unsigned>(fd) > first) {
      syscall(SYS_close_range, first, static_cast<unsigned>(fd) - 1, 0);
    }
    first = static_cast<unsigned>(fd) + 1;
  }
  syscall(SYS_close_range, first, ~0u, 0);
}

[[noreturn]] void RunHelper(int pipe_fd, const std::vector<Removal>& removals) {
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);  // Ctrl-C reaches the whole group.
  std::vector<int> keep = {pipe_fd, STDERR_FILENO};
  for (const Removal& r : removals) keep.push_back(r.dir_fd);
  CloseAllBut(keep);
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  {
    Filter f(SCMP_ACT_KILL_PROCESS);
    f.Attribute(SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    for (const char* name : {"read", "write", "close", "newfstatat", "fstatat64", "unlinkat",
                             "exit", "exit_group", "rt_sigreturn", "restart_syscall"}) {
      f.Allow(name);
    }
    if (const absl::Status s = f.Load(); !s.ok()) {
      // It keeps vunet's identity (root, often) and directory fds: never
      // unconfined. The files then stay behind after vunet ends.
      static constexpr char kMessage[] =
          "vunet: clean-up helper: no seccomp filter; not running (the socket and pid file "
          "will stay after vunet ends)\n";
      (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
      _exit(1);
    }
  }
  char buf[64];
  for (;;) {
    const ssize_t n = read(pipe_fd, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno != EINTR)) break;
  }
  for (const Removal& r : removals) {
    struct stat st;
    if (fstatat(r.dir_fd, r.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (st.st_dev != r.dev || st.st_ino != r.ino) continue;  // Someone else's now.
    if (unlinkat(r.dir_fd, r.name.c_str(), 0) != 0) {
      Line line;
      line.Add("vunet: clean-up helper: cannot remove ");
      line.Add(r.name.c_str());
      line.Add("\n");
      (void)!write(STDERR_FILENO, line.buf, line.len);
    }
  }
  _exit(0);
}

absl::StatusOr<std::vector<Removal>> PrepareRemovals(const std::vector<std::string>& paths) {
  std::vector<Removal> removals;
  auto close_all = [&] {
    for (Removal& r : removals) close(r.dir_fd);
  };
  for (const std::string& path : paths) {
    struct stat st;
    if (path.empty() || lstat(path.c_str(), &st) != 0) continue;
    const size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    Removal r;
    r.name = slash == std::string::npos ? path : path.substr(slash + 1);
    if (r.name.empty() || r.name == "." || r.name == "..") continue;
    r.dev = st.st_dev;
    r.ino = st.st_ino;
    r.dir_fd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (r.dir_fd < 0) {
      const absl::Status s = ErrnoStatus(dir);
      close_all();
      return s;
    }
    removals.push_back(std::move(r));
  }
  return removals;
}

// ---------------------------------------------------------------------------
// Identity and namespaces.

absl::Status DropTo(const Identity& id) {
  if (setgroups(0, nullptr) != 0) return ErrnoStatus("setgroups");
  if (setresgid(id.gid, id.gid, id.gid) != 0) return ErrnoStatus(absl::StrCat("setgid ", id.gid));
  if (setresuid(id.uid, id.uid, id.uid) != 0) return ErrnoStatus(absl::StrCat("setuid ", id.uid));
  uid_t ruid, euid, suid;
  gid_t rgid, egid, sgid;
  if (getresuid(&ruid, &euid, &suid) != 0 || getresgid(&rgid, &egid, &sgid) != 0) {
    return ErrnoStatus("getresuid");
  }
  if (ruid != id.uid || euid != id.uid || suid != id.uid || rgid != id.gid || egid != id.gid ||
      sgid != id.gid || getgroups(0, nullptr) != 0) {
    return absl::InternalError("the identity did not change as asked");
  }
  if (id.uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
    return absl::InternalError("root could be regained after dropping it");
  }
  return absl::OkStatus();
}

// New user and mount namespaces; then, if it works, an empty read-only
// root. Each failure is logged at info; the caller goes on without.
void EnterNamespaces(Sandbox::State* state) {
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
    VUNET_LOG(kInfo, "sandbox: no user and mount namespaces (unshare: %s); going on without",
              strerror(errno));
    return;
  }
  state->namespaces = true;
  // Nothing we do propagates back to the host's mounts.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    VUNET_LOG(kInfo, "sandbox: mount namespace: making / private: %s", strerror(errno));
    return;
  }
  // Any directory serves as the mount point of the new root; it then
  // becomes "/" (pivot_root with both arguments ".": the old root is
  // stacked on the new one and detached at once).
  const char* target = nullptr;
  for (const char* dir : {"/tmp", "/mnt", "/dev"}) {
    if (mount("vunet", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555") == 0) {
      target = dir;
      break;
    }
  }
  if (target == nullptr) {
    VUNET_LOG(kInfo, "sandbox: no empty root (tmpfs: %s)", strerror(errno));
    return;
  }
  if (chdir(target) != 0 || syscall(SYS_pivot_root, ".", ".") != 0 ||
      umount2(".", MNT_DETACH) != 0 || chdir("/") != 0) {
    VUNET_LOG(kInfo, "sandbox: no empty root (pivot_root: %s)", strerror(errno));
    return;
  }
  if (mount(nullptr, "/", nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            nullptr) != 0) {
    VUNET_LOG(kInfo, "sandbox: the empty root stays writable (remount: %s)", strerror(errno));
  }
  state->empty_root = true;
}

// Drops every capability (of the user namespace just entered).
void DropCapabilities() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capset, &header, data) != 0) {
    VUNET_LOG(kInfo, "sandbox: capset: %s", strerror(errno));
  }
}

}  // namespace

absl::StatusOr<Identity> ResolveIdentity(absl::string_view spec) {
  const size_t colon = spec.find(':');
  const absl::string_view user = spec.substr(0, colon);
  const absl::string_view group =
      colon == absl::string_view::npos ? absl::string_view() : spec.substr(colon + 1);
  if (user.empty() || (colon != absl::string_view::npos && group.empty())) {
    return BadRunAs(absl::StrCat("expected USER[:GROUP], got '", spec, "'"));
  }
  Identity id;
  const UserEntry u = LookUpUser(user);
  uint32_t number;
  if (!u.found && !ParseId(user, &number)) {
    return BadRunAs(absl::StrCat("no such user '", user, "'"));
  }
  id.uid = u.uid;
  id.user = u.found ? u.name : std::string(user);
  if (group.empty()) {
    if (!u.found) return BadRunAs(absl::StrCat("no user with id ", user, " (give ", user, ":GID)"));
    id.gid = u.gid;
    const GroupEntry g = LookUpGroup(absl::StrCat(u.gid));
    id.group = g.found ? g.name : absl::StrCat(u.gid);
    return id;
  }
  const GroupEntry g = LookUpGroup(group);
  if (!g.found && !ParseId(group, &number)) {
    return BadRunAs(absl::StrCat("no such group '", group, "'"));
  }
  id.gid = g.gid;
  id.group = g.found ? g.name : std::string(group);
  return id;
}

absl::StatusOr<std::optional<Identity>> RunAsFor(const std::string& runas_flag, bool is_root) {
  if (runas_flag.empty()) {
    if (!is_root) return std::optional<Identity>();
    absl::StatusOr<Identity> nobody = ResolveIdentity("nobody");
    if (!nobody.ok()) {
      return BadRunAs("started as root, and there is no user 'nobody' to run as: give --runas");
    }
    // Root of a user namespace that cannot map nobody (a container or build
    // sandbox that maps root alone) has only the powers its creator gave
    // it; the rest of the sandbox still applies.
    if (!InInitialUserNamespace() && !Reachable(*nobody)) {
      VUNET_LOG(kWarning,
                "root in a user namespace where nobody is not mapped: staying root (--runas "
                "picks an identity)");
      return std::optional<Identity>();
    }
    return std::optional<Identity>(*std::move(nobody));
  }
  absl::StatusOr<Identity> id = ResolveIdentity(runas_flag);
  if (!id.ok()) return id.status();
  if (!is_root) return std::optional<Identity>();
  return std::optional<Identity>(*std::move(id));
}

absl::Status InstallSeccompFilter(int report_fd, bool syslog_format) {
  // The handler's names, resolved now: libseccomp allocates.
  for (int nr = 0; nr < kNamedSyscalls; ++nr) {
    char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    g_syscall_names[nr][0] = '\0';
    if (name != nullptr) {
      std::strncat(g_syscall_names[nr], name, sizeof(g_syscall_names[nr]) - 1);
      std::free(name);
    }
  }
  g_report_fd = report_fd;
  g_report_syslog = syslog_format;
  g_pid = getpid();

  struct sigaction sa = {};
  sa.sa_sigaction = OnSigsys;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0) return ErrnoStatus("sigaction(SIGSYS)");
  sigset_t sys;
  sigemptyset(&sys);
  sigaddset(&sys, SIGSYS);
  if (sigprocmask(SIG_UNBLOCK, &sys, nullptr) != 0) return ErrnoStatus("sigprocmask");

  Filter f(SCMP_ACT_TRAP);
  f.Attribute(SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
  AddMainRules(f);
  return f.Load();
}

uint64_t RefusedSyscalls() { return g_refused.load(std::memory_order_relaxed); }

absl::StatusOr<std::unique_ptr<Sandbox>> Sandbox::Enter(const SandboxOptions& options) {
  std::unique_ptr<Sandbox> sandbox(new Sandbox());
  State& state = sandbox->state_;

  // Sanitizer runtimes first, while they can still read /proc and ptrace.
#ifdef VUNET_SANDBOX_ASAN
  __lsan_do_leak_check();
  __sanitizer_sandbox_on_notify(nullptr);
#endif

  // 1. The clean-up helper, with the identity we started with.
  absl::StatusOr<std::vector<Removal>> removals = PrepareRemovals(options.remove_at_exit);
  if (!removals.ok()) return removals.status();
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return ErrnoStatus("pipe2");
  const pid_t helper = fork();
  if (helper < 0) {
    const absl::Status s = ErrnoStatus("fork");
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    for (Removal& r : *removals) close(r.dir_fd);
    return s;
  }
  if (helper == 0) RunHelper(pipe_fds[0], *removals);
  close(pipe_fds[0]);
  for (Removal& r : *removals) close(r.dir_fd);
  sandbox->helper_pipe_ = pipe_fds[1];
  sandbox->helper_pid_ = helper;
  state.helper = true;

  // The syslog socket for the SIGSYS handler, while /dev/log is reachable.
  int report_fd = STDERR_FILENO;
  if (options.syslog && options.seccomp) {
    const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, "/dev/log");
    if (fd >= 0 && connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      report_fd = fd;  // Kept for the life of the process.
    } else if (fd >= 0) {
      close(fd);
    }
  }

  // 2. Identity.
  if (options.runas.has_value() && geteuid() == 0 && options.runas->uid != 0) {
    if (absl::Status s = DropTo(*options.runas); !s.ok()) {
      return absl::InternalError(absl::StrCat(
          "sandbox: cannot run as ", options.runas->user, ":", options.runas->group, ": ",
          s.message(), " (--runas USER[:GROUP] picks another identity; --runas root keeps it)"));
    }
    state.dropped = true;
    sandbox->user_ = absl::StrCat(options.runas->user, ":", options.runas->group);
  }
  state.uid = getuid();
  state.gid = getgid();
  if (sandbox->user_.empty()) sandbox->user_ = absl::StrCat(state.uid, ":", state.gid);

  // 3. No new privileges.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return ErrnoStatus("sandbox: PR_SET_NO_NEW_PRIVS");
  state.no_new_privs = true;

  // 4. Namespaces, best effort.
  if (options.namespaces) {
    EnterNamespaces(&state);
    if (state.namespaces) DropCapabilities();
  }

  // 5. The filter.
  if (options.seccomp) {
    if (absl::Status s = InstallSeccompFilter(report_fd, report_fd != STDERR_FILENO); !s.ok()) {
      return absl::InternalError(absl::StrCat("sandbox: ", s.message()));
    }
    state.seccomp = true;
  }
  return sandbox;
}

Sandbox::~Sandbox() {
  if (state_.seccomp && RefusedSyscalls() > 0) {
    VUNET_LOG(kWarning, "sandbox: %d syscalls were refused (the first of each kind logged)",
              RefusedSyscalls());
  }
  if (helper_pipe_ >= 0) close(helper_pipe_);
  if (helper_pid_ > 0) {
    // The helper only unlinks two files; 3 s is plenty.
    for (int i = 0; i < 300; ++i) {
      const pid_t pid = waitpid(helper_pid_, nullptr, WNOHANG);
      if (pid == helper_pid_ || (pid < 0 && errno != EINTR)) break;
      const timespec ten_ms = {0, 10'000'000};
      nanosleep(&ten_ms, nullptr);
    }
  }
}

std::string Sandbox::Describe() const {
  const State& s = state_;
  std::string line = absl::StrCat("sandbox: running as ", user_, s.dropped ? "" : " (unchanged)",
                                  s.no_new_privs ? "; no new privileges" : "");
  if (s.namespaces) {
    absl::StrAppend(&line, "; user and mount namespaces",
                    s.empty_root ? ", an empty root" : " (host filesystem visible)");
  }
  if (s.seccomp) absl::StrAppend(&line, "; seccomp filter (other syscalls fail with EPERM)");
  if (s.helper) absl::StrAppend(&line, "; clean-up helper ", helper_pid_);
  return line;
}

}  // namespace vunet::tools
