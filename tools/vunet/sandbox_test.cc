#include "tools/vunet/sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vunet::tools {
namespace {

using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// --runas.

TEST(ResolveIdentity, NamesAndNumbers) {
  const passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr) << "the test needs a user 'nobody'";
  const uid_t uid = nobody->pw_uid;
  const gid_t gid = nobody->pw_gid;

  absl::StatusOr<Identity> id = ResolveIdentity("nobody");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->uid, uid);
  EXPECT_EQ(id->gid, gid);
  EXPECT_EQ(id->user, "nobody");

  id = ResolveIdentity(std::to_string(uid));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->uid, uid);
  EXPECT_EQ(id->gid, gid);
  EXPECT_EQ(id->user, "nobody");

  id = ResolveIdentity("nobody:0");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->uid, uid);
  EXPECT_EQ(id->gid, 0u);
  EXPECT_EQ(id->group, "root");

  id = ResolveIdentity("root:root");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->uid, 0u);
  EXPECT_EQ(id->gid, 0u);

  // Numbers without entries, given both.
  id = ResolveIdentity("4000000:4000001");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->uid, 4000000u);
  EXPECT_EQ(id->gid, 4000001u);
}

TEST(ResolveIdentity, OneLineErrors) {
  for (const char* bad : {"vunet-no-such-user", "nobody:vunet-no-such-group", "", ":0",
                          "nobody:", "4000000", "-1", "4294967295:0"}) {
    const absl::StatusOr<Identity> id = ResolveIdentity(bad);
    ASSERT_FALSE(id.ok()) << bad;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(id.status().message()), HasSubstr("--runas")) << bad;
    EXPECT_EQ(std::string(id.status().message()).find('\n'), std::string::npos) << bad;
  }
  EXPECT_THAT(std::string(ResolveIdentity("vunet-no-such-user").status().message()),
              HasSubstr("no such user 'vunet-no-such-user'"));
}

bool CanBecome(uid_t uid);

TEST(RunAsFor, RootDefaultsToNobodyOthersStay) {
  absl::StatusOr<std::optional<Identity>> r = RunAsFor("", /*is_root=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  const passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  if (geteuid() != 0 || CanBecome(nobody->pw_uid)) {
    ASSERT_TRUE(r->has_value());
    EXPECT_EQ((*r)->user, "nobody");
  }  // Else: RootWhereNobodyIsNotMapped.

  r = RunAsFor("root", /*is_root=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->uid, 0u);

  r = RunAsFor("", /*is_root=*/false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->has_value());
  r = RunAsFor("nobody", /*is_root=*/false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->has_value());
  // A typo is an error whoever runs it.
  EXPECT_FALSE(RunAsFor("vunet-no-such-user", /*is_root=*/false).ok());
  EXPECT_FALSE(RunAsFor("vunet-no-such-user", /*is_root=*/true).ok());
}

// ---------------------------------------------------------------------------
// Children: the filter cannot be lifted, so each case runs in a fork.

// In a child: a failed check prints its line and exits with status 1.
#define CHILD_CHECK(cond)                                                                     \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      std::fprintf(stderr, "child check failed at line %d: %s (errno %d)\n", __LINE__, #cond, \
                   errno);                                                                    \
      _exit(1);                                                                               \
    }                                                                                         \
  } while (0)

// Runs `body` in a child and returns its wait status.
int RunInChild(const std::function<void()>& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    body();
    _exit(0);
  }
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  return status;
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  return out;
}

// A failed call's errno, or 0 if the call succeeded (its fd closed).
int ErrnoOfFd(int fd) {
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  return errno;
}

// What AllowsWhatTheBackendNeedsAndRefusesTheRest checks in its child, the
// filter installed, in parts: a failed check exits the child (CHILD_CHECK).

// The event loop's fds.
void CheckEventLoopCalls() {
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  CHILD_CHECK(ep >= 0);
  const int ev = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  CHILD_CHECK(ev >= 0);
  epoll_event e{};
  e.events = EPOLLIN;
  CHILD_CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0);
  CHILD_CHECK(epoll_wait(ep, &e, 1, 0) == 0);
  CHILD_CHECK(ErrnoOfFd(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)) == 0);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  CHILD_CHECK(sigprocmask(SIG_BLOCK, &mask, nullptr) == 0);
  CHILD_CHECK(ErrnoOfFd(signalfd(-1, &mask, SFD_CLOEXEC)) == 0);
  uint64_t random;
  CHILD_CHECK(getrandom(&random, sizeof(random), 0) == sizeof(random));
  timespec ts;
  CHILD_CHECK(clock_gettime(CLOCK_MONOTONIC, &ts) == 0);
}

// Memory: read/write yes, executable never.
void CheckMemory() {
  void* rw = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHILD_CHECK(rw != MAP_FAILED);
  CHILD_CHECK(mprotect(rw, 4096, PROT_READ) == 0);
  CHILD_CHECK(mprotect(rw, 4096, PROT_READ | PROT_EXEC) != 0 && errno == EPERM);
  CHILD_CHECK(mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) ==
                  MAP_FAILED &&
              errno == EPERM);
  CHILD_CHECK(munmap(rw, 4096) == 0);
}

// Sockets: IPv4/IPv6 TCP and UDP, ping sockets (refused by the host's
// ping_group_range perhaps, but not by us); nothing else.
void CheckSockets() {
  CHILD_CHECK(ErrnoOfFd(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) == 0);
  CHILD_CHECK(ErrnoOfFd(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP)) == 0);
  CHILD_CHECK(ErrnoOfFd(socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK, IPPROTO_UDP)) == 0);
  CHILD_CHECK(ErrnoOfFd(socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)) != EPERM);
  CHILD_CHECK(ErrnoOfFd(socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6)) != EPERM);
  CHILD_CHECK(ErrnoOfFd(socket(AF_UNIX, SOCK_STREAM, 0)) == EPERM);
  CHILD_CHECK(ErrnoOfFd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == EPERM);
  CHILD_CHECK(ErrnoOfFd(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)) == EPERM);
  CHILD_CHECK(ErrnoOfFd(socket(AF_INET, SOCK_DGRAM, IPPROTO_TCP)) == EPERM);
  CHILD_CHECK(ErrnoOfFd(socket(AF_NETLINK, SOCK_RAW, 0)) == EPERM);
  CHILD_CHECK(ErrnoOfFd(socket(AF_PACKET, SOCK_RAW, 0)) == EPERM);
}

// Socket options and ioctls.
void CheckSocketOptionsAndIoctls() {
  const int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHILD_CHECK(tcp >= 0);
  const int one = 1;
  CHILD_CHECK(setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0);
  CHILD_CHECK(setsockopt(tcp, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0);
  CHILD_CHECK(setsockopt(tcp, IPPROTO_IP, IP_TOS, &one, sizeof(one)) == 0);
  CHILD_CHECK(setsockopt(tcp, IPPROTO_TCP, TCP_ULP, "tls", 3) != 0 && errno == EPERM);
  // Classic filters (a migrating socket's drop-everything one), not eBPF.
  sock_filter insn = BPF_STMT(BPF_RET | BPF_K, 0);
  sock_fprog prog = {1, &insn};
  CHILD_CHECK(setsockopt(tcp, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) == 0);
  CHILD_CHECK(setsockopt(tcp, SOL_SOCKET, SO_DETACH_FILTER, &one, sizeof(one)) == 0);
  const int bpf_fd = 3;
  CHILD_CHECK(setsockopt(tcp, SOL_SOCKET, SO_ATTACH_BPF, &bpf_fd, sizeof(bpf_fd)) != 0 &&
              errno == EPERM);
  int queued = -1;
  CHILD_CHECK(ioctl(tcp, FIONREAD, &queued) == 0 || errno != EPERM);
  CHILD_CHECK(ioctl(tcp, TIOCOUTQ, &queued) == 0);
  CHILD_CHECK(ioctl(tcp, TIOCSTI, "x") != 0 && errno == EPERM);
  CHILD_CHECK(fcntl(tcp, F_GETFL) >= 0);
  CHILD_CHECK(fcntl(tcp, F_SETOWN, getpid()) != 0 && errno == EPERM);
  close(tcp);
}

// The filesystem, processes, signals to others.
void CheckFilesProcessesAndSignals() {
  CHILD_CHECK(ErrnoOfFd(open("/etc/passwd", O_RDONLY | O_CLOEXEC)) == EPERM);
  CHILD_CHECK(unlink("/vunet-sandbox-test-no-such-file") != 0 && errno == EACCES);
  CHILD_CHECK(fork() < 0 && errno == EPERM);
  CHILD_CHECK(kill(getppid(), 0) != 0 && errno == EPERM);
}

TEST(SeccompFilter, AllowsWhatTheBackendNeedsAndRefusesTheRest) {
  int report[2];
  ASSERT_EQ(pipe2(report, O_CLOEXEC), 0);
  const int status = RunInChild([&] {
    close(report[0]);
    CHILD_CHECK(InstallSeccompFilter(report[1], /*syslog_format=*/false).ok());

    CheckEventLoopCalls();
    CheckMemory();
    CheckSockets();
    CheckSocketOptionsAndIoctls();
    CheckFilesProcessesAndSignals();
    CHILD_CHECK(RefusedSyscalls() >= 10);
  });
  close(report[1]);
  const std::string log = ReadAll(report[0]);
  close(report[0]);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "status " << status << "; refusals:\n"
      << log;
  EXPECT_THAT(log, HasSubstr("sandbox: refused syscall openat"));
  EXPECT_THAT(log, HasSubstr("sandbox: refused syscall socket"));
  EXPECT_THAT(log, HasSubstr("sandbox: refused syscall kill"));
}

// Calls only an exploit makes kill the process with SIGSYS.
TEST(SeccompFilter, KillsOnExecPtraceAndNamespaces) {
  const std::function<void()> forbidden[] = {
      [] {
        char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
        execve("/bin/true", argv, environ);
      },
      [] { ptrace(PTRACE_TRACEME, 0, nullptr, nullptr); },
      [] { unshare(CLONE_NEWUSER); },
      // Its result is never seen: the filter kills the caller first.
      [] { [[maybe_unused]] const int result = setuid(0); },
  };
  int i = 0;
  for (const auto& call : forbidden) {
    const int status = RunInChild([&] {
      CHILD_CHECK(InstallSeccompFilter(STDERR_FILENO, false).ok());
      call();
      _exit(3);  // Still alive: the call was not killed.
    });
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS)
        << "case " << i << ": status " << status;
    ++i;
  }
}

// ---------------------------------------------------------------------------
// The whole sandbox.

// Reads exactly one `T` (trivially copyable) from `fd`: false on a short read
// or an error. The bytes land in a buffer first, so what is filled is plainly
// the whole object.
template <typename T>
bool ReadWhole(int fd, T* value) {
  static_assert(std::is_trivially_copyable_v<T>);
  unsigned char bytes[sizeof(T)];
  if (read(fd, bytes, sizeof(bytes)) != static_cast<ssize_t>(sizeof(bytes))) return false;
  std::memcpy(value, bytes, sizeof(bytes));
  return true;
}

std::string ProcStatus(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Link(const std::string& path) {
  char buf[256];
  const ssize_t n = readlink(path.c_str(), buf, sizeof(buf));
  return n > 0 ? std::string(buf, n) : std::string();
}

// Whether a process with the identity the sandbox takes (`runas`, or this
// one's) may make user and mount namespaces: some kernels or containers
// forbid it, to unprivileged users only or to all.
bool CanUnshareUserAndMount(const std::optional<Identity>& runas) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (runas.has_value() &&
        (setgroups(0, nullptr) != 0 || setresgid(runas->gid, runas->gid, runas->gid) != 0 ||
         setresuid(runas->uid, runas->uid, runas->uid) != 0)) {
      _exit(2);
    }
    _exit(unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0 ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name + "." + std::to_string(getpid());
}

void Touch(const std::string& path) {
  std::ofstream out(path);
  out << "x\n";
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// Polls for `path` to disappear (the helper is a grandchild).
bool GoneWithin(const std::string& path, int ms) {
  for (int i = 0; i < ms / 10 && Exists(path); ++i) usleep(10'000);
  return !Exists(path);
}

// Whether this process can become `uid`: real root in a namespace where
// `uid` is mapped and setgroups is allowed (Bazel's sandbox maps root alone).
bool CanBecome(uid_t uid) {
  if (geteuid() != 0) return false;
  std::ifstream setgroups("/proc/self/setgroups");
  std::string policy;
  if (setgroups >> policy && policy == "deny") return false;
  std::ifstream map("/proc/self/uid_map");
  uint64_t inside, outside, count;
  while (map >> inside >> outside >> count) {
    if (uid >= inside && uid - inside < count) return true;
  }
  return false;
}

// The identity the whole-sandbox tests ask for: nobody where this process
// can become nobody; otherwise no change.
std::optional<Identity> TestRunAs() {
  const passwd* nobody = getpwnam("nobody");
  if (nobody == nullptr || !CanBecome(nobody->pw_uid)) return std::nullopt;
  return *RunAsFor("", /*is_root=*/true);
}

enum class Ending { kReturn, kKill };

// A child enters the sandbox, reports its state, waits for the go, then
// either ends cleanly (~Sandbox) or is killed. Returns the child's status.
struct ChildRun {
  Sandbox::State state;
  std::string status_file;  // /proc/PID/status while it ran.
  std::string user_ns;      // Its /proc/PID/ns/user and ns/mnt links.
  std::string mount_ns;
  std::vector<std::string> root_entries;  // What it saw as "/" (/proc/PID/root).
  int wait_status = 0;
  bool ok = false;
};

ChildRun EnterInChild(const SandboxOptions& options, Ending ending,
                      const std::function<void()>& while_running = {}) {
  ChildRun run;
  int ready[2], go[2];
  EXPECT_EQ(pipe2(ready, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(go, O_CLOEXEC), 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    close(ready[0]);
    close(go[1]);
    absl::StatusOr<std::unique_ptr<Sandbox>> sandbox = Sandbox::Enter(options);
    if (!sandbox.ok()) {
      std::fprintf(stderr, "Enter: %s\n", sandbox.status().ToString().c_str());
      _exit(2);
    }
    std::fprintf(stderr, "%s\n", (*sandbox)->Describe().c_str());
    // Confined now: a file cannot be opened.
    CHILD_CHECK(ErrnoOfFd(open("/etc/passwd", O_RDONLY | O_CLOEXEC)) == EPERM);
    const Sandbox::State state = (*sandbox)->state();
    CHILD_CHECK(write(ready[1], &state, sizeof(state)) == sizeof(state));
    char c;
    (void)!read(go[0], &c, 1);
    sandbox->reset();
    _exit(0);
  }
  close(ready[1]);
  close(go[0]);
  if (ReadWhole(ready[0], &run.state)) {
    run.ok = true;
    run.status_file = ProcStatus(pid);
    const std::string proc = "/proc/" + std::to_string(pid);
    run.user_ns = Link(proc + "/ns/user");
    run.mount_ns = Link(proc + "/ns/mnt");
    if (DIR* d = opendir((proc + "/root").c_str()); d != nullptr) {
      while (const dirent* e = readdir(d)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
          run.root_entries.push_back(e->d_name);
        }
      }
      closedir(d);
    }
    if (while_running) while_running();
  }
  if (ending == Ending::kKill) kill(pid, SIGKILL);
  close(go[1]);
  EXPECT_EQ(waitpid(pid, &run.wait_status, 0), pid);
  close(ready[0]);
  return run;
}

TEST(Sandbox, EntersDropsRootAndRemovesFilesWhenDone) {
  const std::string socket_path = TempPath("vunet-sandbox-socket");
  const std::string pid_path = TempPath("vunet-sandbox-pid");
  const std::string other_path = TempPath("vunet-sandbox-other");
  Touch(socket_path);
  Touch(pid_path);
  Touch(other_path);
  SandboxOptions options;
  options.runas = TestRunAs();
  options.remove_at_exit = {socket_path, pid_path, TempPath("vunet-sandbox-missing")};

  const ChildRun run = EnterInChild(options, Ending::kReturn);
  ASSERT_TRUE(run.ok) << "the child did not enter the sandbox; status " << run.wait_status;
  EXPECT_TRUE(WIFEXITED(run.wait_status) && WEXITSTATUS(run.wait_status) == 0) << run.wait_status;
  EXPECT_TRUE(run.state.helper);
  EXPECT_TRUE(run.state.no_new_privs);
  EXPECT_TRUE(run.state.seccomp);
  EXPECT_THAT(run.status_file, HasSubstr("NoNewPrivs:\t1\n"));
  EXPECT_THAT(run.status_file, HasSubstr("Seccomp:\t2\n"));
  if (options.runas.has_value()) {
    const passwd* nobody = getpwnam("nobody");
    ASSERT_NE(nobody, nullptr);
    const std::string uid = std::to_string(nobody->pw_uid);
    EXPECT_TRUE(run.state.dropped);
    EXPECT_EQ(run.state.uid, nobody->pw_uid);
    EXPECT_THAT(run.status_file, HasSubstr("Uid:\t" + uid + "\t" + uid + "\t" + uid + "\t" + uid));
    // No supplementary groups ("Groups:\t" then nothing but a space).
    const size_t groups = run.status_file.find("Groups:");
    ASSERT_NE(groups, std::string::npos);
    const std::string line =
        run.status_file.substr(groups, run.status_file.find('\n', groups) - groups);
    EXPECT_EQ(line.find_first_of("0123456789"), std::string::npos) << line;
  } else {
    std::printf("not checked: becoming nobody (this process cannot)\n");
    EXPECT_FALSE(run.state.dropped);
    EXPECT_EQ(run.state.uid, getuid());
  }
  std::printf("namespaces: %d, empty root: %d\n", run.state.namespaces, run.state.empty_root);
  if (CanUnshareUserAndMount(options.runas)) {
    EXPECT_TRUE(run.state.namespaces) << "the kernel allows them, yet the sandbox has none";
  }
  if (run.state.namespaces) {
    // Namespaces of its own, not ours.
    EXPECT_NE(run.user_ns, Link("/proc/self/ns/user"));
    EXPECT_NE(run.mount_ns, Link("/proc/self/ns/mnt"));
    EXPECT_FALSE(run.user_ns.empty());
  }
  if (run.state.empty_root) {
    EXPECT_TRUE(run.root_entries.empty())
        << "its root holds " << run.root_entries.size() << " entries, " << run.root_entries[0];
  }
  // ~Sandbox waited for the helper: the files are gone already.
  EXPECT_FALSE(Exists(socket_path));
  EXPECT_FALSE(Exists(pid_path));
  EXPECT_TRUE(Exists(other_path));
  unlink(other_path.c_str());
}

TEST(Sandbox, HelperRemovesFilesWhenTheProcessIsKilled) {
  const std::string path = TempPath("vunet-sandbox-killed");
  Touch(path);
  SandboxOptions options;
  options.runas = TestRunAs();
  options.remove_at_exit = {path};
  const ChildRun run = EnterInChild(options, Ending::kKill);
  ASSERT_TRUE(run.ok);
  EXPECT_TRUE(WIFSIGNALED(run.wait_status) && WTERMSIG(run.wait_status) == SIGKILL);
  EXPECT_TRUE(GoneWithin(path, 3000));
}

TEST(Sandbox, HelperLeavesAReplacedFileAlone) {
  const std::string path = TempPath("vunet-sandbox-replaced");
  Touch(path);
  SandboxOptions options;
  options.remove_at_exit = {path};
  const ChildRun run = EnterInChild(options, Ending::kReturn, [&] {
    // Another file under the same name (a new inode: the old one is kept
    // alive by a link so the number cannot be reused).
    const std::string kept = path + ".old";
    ASSERT_EQ(rename(path.c_str(), kept.c_str()), 0);
    Touch(path);
    unlink(kept.c_str());
  });
  ASSERT_TRUE(run.ok);
  EXPECT_TRUE(WIFEXITED(run.wait_status) && WEXITSTATUS(run.wait_status) == 0);
  EXPECT_TRUE(Exists(path));
  unlink(path.c_str());
}

// Root that cannot become nobody (a user namespace that maps root alone, as
// Bazel's sandbox does) stays root by default; asked explicitly, it refuses
// to go on, naming the identity, and no half-dropped process runs.
TEST(Sandbox, RootWhereNobodyIsNotMapped) {
  const passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  if (geteuid() != 0 || CanBecome(nobody->pw_uid)) {
    GTEST_SKIP() << "needs root that cannot become nobody (Bazel's sandbox)";
  }
  const absl::StatusOr<std::optional<Identity>> by_default = RunAsFor("", /*is_root=*/true);
  ASSERT_TRUE(by_default.ok()) << by_default.status();
  EXPECT_FALSE(by_default->has_value());

  SandboxOptions options;
  options.runas = *ResolveIdentity("nobody");
  const int status = RunInChild([&] {
    const absl::StatusOr<std::unique_ptr<Sandbox>> sandbox = Sandbox::Enter(options);
    CHILD_CHECK(!sandbox.ok());
    CHILD_CHECK(std::string(sandbox.status().message()).find("cannot run as nobody") !=
                std::string::npos);
  });
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace vunet::tools
