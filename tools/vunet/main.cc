// vunet: the backend binary. A vhost-user virtio-net backend serving one
// VM at a time on a UNIX socket; see UsageText (tools/vunet/cli.cc) or
// `vunet --help`.
//
//   vunet -f --one-off -s /tmp/vunet.socket

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/log.h"
#include "base/private_file.h"
#include "base/unique_fd.h"
#include "gflags/gflags.h"
#include "net/config/config.h"
#include "net/config/port_forward.h"
#include "net/forward/forward.h"
#include "net/gateway/from_config.h"
#include "net/translate/frame_path.h"
#include "tools/vunet/backend.h"
#include "tools/vunet/cli.h"
#include "tools/vunet/fd_budget.h"
#include "tools/vunet/sandbox.h"
#include "virtio/memory_fault.h"

namespace vunet::tools {
namespace {

// A daemon's child holds this until it is ready: its stderr is /dev/null by
// then, so a start-up error goes here, for the waiting parent to print.
int g_startup_report_fd = -1;
// Log lines go to syslog or the -l file, not stderr: Fail records its error
// there too.
bool g_logging_elsewhere = false;

int Fail(const std::string& message) {
  if (g_logging_elsewhere) VUNET_LOG(kError, "%s", message);  // For the record.
  if (g_startup_report_fd >= 0) {
    // One write under PIPE_BUF: the parent reads it whole.
    const std::string line = message.substr(0, 1024);
    (void)!write(g_startup_report_fd, line.data(), line.size());
    close(g_startup_report_fd);
    g_startup_report_fd = -1;
  } else {
    std::fprintf(stderr, "vunet: %s\n", message.c_str());
  }
  return 1;
}

std::string Ntop(const in_addr& a) {
  char buf[INET_ADDRSTRLEN];
  return inet_ntop(AF_INET, &a, buf, sizeof(buf)) != nullptr ? buf : "?";
}

std::string Ntop(const in6_addr& a) {
  char buf[INET6_ADDRSTRLEN];
  return inet_ntop(AF_INET6, &a, buf, sizeof(buf)) != nullptr ? buf : "?";
}

template <typename T>
std::string List(const std::vector<T>& addrs) {
  if (addrs.empty()) return "none";
  std::vector<std::string> parts;
  parts.reserve(addrs.size());
  for (const T& a : addrs) parts.push_back(Ntop(a));
  return absl::StrJoin(parts, ", ");
}

constexpr char kReady[] = "ready";

// Forks. The parent waits for the child to report: it exits 0 once the child
// is ready (socket open, pid file written, confined), or prints the child's
// error and exits 1, so that whoever started vunet learns the outcome and
// finds the pid file in place. The child leaves the terminal and keeps the
// report pipe in g_startup_report_fd until ReportReady.
absl::Status Daemonize() {
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  }
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid > 0) {
    close(report[1]);
    char buf[1100];
    ssize_t n;
    do {
      n = read(report[0], buf, sizeof(buf) - 1);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(sizeof(kReady) - 1) && std::memcmp(buf, kReady, n) == 0) {
      _exit(0);  // No destructors: the child owns the socket now.
    }
    if (n > 0) {
      buf[n] = '\0';
      std::fprintf(stderr, "vunet: %s\n", buf);
    } else {
      int status = 0;
      (void)waitpid(pid, &status, 0);
      std::fprintf(stderr, "vunet: the daemon ended during start-up (%s %d)\n",
                   WIFSIGNALED(status) ? "signal" : "exit status",
                   WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    _exit(1);
  }
  close(report[0]);
  g_startup_report_fd = report[1];
  if (setsid() < 0) return absl::InternalError(absl::StrCat("setsid: ", strerror(errno)));
  return absl::OkStatus();
}

// The daemon's child, once its files are written and before it is confined:
// logs go to syslog, stdio to /dev/null. With a log file (log_fd, already
// logged to), stderr becomes that file instead: what else writes there (the
// sandbox's reports of refused syscalls, a sanitizer) lands in it too.
absl::Status DetachStdio(int log_fd) {
  if (log_fd < 0) {
    log::UseSyslog("vunet");
    g_logging_elsewhere = true;
  }
  const int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) return absl::InternalError(absl::StrCat("/dev/null: ", strerror(errno)));
  for (int fd = 0; fd <= 2; ++fd) dup2(fd == STDERR_FILENO && log_fd >= 0 ? log_fd : null, fd);
  if (null > 2) close(null);
  return absl::OkStatus();
}

// -l: appended to, created mode 0600; O_NOFOLLOW, as the pid file. Opened
// before anything worth logging and long before the sandbox, which forbids
// open; kept for the life of the process, above the stdio fds (DetachStdio
// replaces those).
absl::StatusOr<int> OpenLogFile(const std::string& path) {
  // A regular file only: writing to a FIFO or a terminal could block the loop.
  absl::StatusOr<UniqueFd> file = OpenPrivateFile(path, PrivateFileMode::kAppend);
  if (!file.ok())
    return absl::InvalidArgumentError(absl::StrCat("log file ", file.status().message()));
  int fd = file->release();
  if (fd <= STDERR_FILENO) {
    const int high = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    close(fd);
    fd = high;
    if (fd < 0) return absl::InternalError(absl::StrCat("log file ", path, ": ", strerror(errno)));
  }
  return fd;
}

// Releases a daemon's waiting parent with success.
void ReportReady() {
  if (g_startup_report_fd < 0) return;
  (void)!write(g_startup_report_fd, kReady, sizeof(kReady) - 1);
  close(g_startup_report_fd);
  g_startup_report_fd = -1;
}

absl::Status WritePidFile(const std::string& path) {
  // O_NOFOLLOW: a pid file in a shared directory must not be redirected
  // through a symlink someone else planted.
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat(path, ": ", strerror(errno)));
  FILE* f = fdopen(fd, "w");
  if (f == nullptr) {
    close(fd);
    return absl::InternalError(absl::StrCat(path, ": ", strerror(errno)));
  }
  std::fprintf(f, "%d\n", static_cast<int>(getpid()));
  if (std::fclose(f) != 0) return absl::InternalError(absl::StrCat(path, ": ", strerror(errno)));
  return absl::OkStatus();
}

// Confines the process (tools/vunet/sandbox.h) once the socket and the files
// are open; the socket and the pid file are removed at exit by its helper.
absl::StatusOr<std::unique_ptr<Sandbox>> Confine(const CliOptions& options,
                                                 const std::optional<Identity>& runas) {
  SandboxOptions sandbox;
  sandbox.runas = runas;
  if (!options.socket_path.empty()) sandbox.remove_at_exit.push_back(options.socket_path);
  if (!options.migration.repair_path.empty()) {
    sandbox.remove_at_exit.push_back(options.migration.repair_path);
  }
  if (!options.pid_file.empty()) sandbox.remove_at_exit.push_back(options.pid_file);
  // With -l, a daemon's stderr is the log file (DetachStdio).
  sandbox.syslog = !options.foreground && options.log_file.empty();
  absl::StatusOr<std::unique_ptr<Sandbox>> entered = Sandbox::Enter(sandbox);
  if (entered.ok()) VUNET_LOG(kInfo, "%s", (*entered)->Describe());
  return entered;
}

// Every flow holds a socket: take the open-file limit's hard value as the
// soft one (commonly 1024 of 524288), as a server of many connections does.
void RaiseFdLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  limit.rlim_cur = limit.rlim_max;
  (void)setrlimit(RLIMIT_NOFILE, &limit);
}

// The command line as given, for the log (what libvirt or another manager
// passed); arguments with spaces or quotes in single quotes.
std::string CommandLine(int argc, char** argv) {
  std::vector<std::string> parts;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.empty() || a.find_first_of(" \t\n'\"\\$`") != std::string::npos) {
      std::string quoted = "'";
      for (char c : a) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      a = quoted + "'";
    }
    parts.push_back(std::move(a));
  }
  return absl::StrJoin(parts, " ");
}

// True if `rules` send the guest's DNS to `guest` somewhere.
bool ForwardsDns(const net::ForwardRules& rules, const net::InetAddr& guest) {
  for (const net::DnsForward& d : rules.dns) {
    if (d.guest.addr == guest) return true;
  }
  return false;
}

// What is accepted with passt's meaning but not in effect yet: one line each.
void LogNotYetInEffect(const CliOptions& o) {
  if (!o.conf_path.empty()) {
    VUNET_LOG(kWarning,
              "-c/--conf-path %s: no configuration socket is served (pesto's protocol "
              "is not implemented); forwards stay as given",
              o.conf_path);
  }
}

// What the backend is to serve, from the command line and the guest's
// addressing `g`.
BackendOptions BackendOptionsFor(const CliOptions& options, const net::GuestConfig& g) {
  const bool v4 = !g.ipv6_only;
  const bool v6 = !g.ipv4_only;
  BackendOptions backend_options;
  backend_options.socket_path = options.socket_path;
  backend_options.inherited_fd = options.inherited_fd;
  backend_options.one_off = options.one_off;
  // Live migration (docs/MIGRATION.md): the TCP_REPAIR helper's socket, and
  // what the source does once the guest has moved.
  backend_options.repair_path = options.migration.repair_path;
  backend_options.migrate_linger = !options.migration.no_linger;
  backend_options.migrate_exit = options.migration.exit_after;
  backend_options.stats_interval = std::chrono::seconds(options.stats_interval);
  backend_options.pcap_path = options.pcap_file;
  net::FramePathOptions& path = backend_options.path;
  path.arp = net::ToArpConfig(g);
  if (v4 && !g.no_dhcp) {
    path.dhcp = net::ToDhcpConfig(g);
    path.dhcp->hostname = options.hostname;
    path.dhcp->fqdn = options.fqdn;
    if (!options.advertise_mtu) path.dhcp->mtu = 0;  // -m 0.
  }
  if (v6 && !g.no_ndp) {
    path.ndp = net::ToNdpConfig(g);
    if (!options.advertise_mtu) path.ndp->mtu = 0;
  }
  backend_options.send_ra = v6 && !g.no_ndp && !g.no_ra;
  if (v6 && !g.no_dhcpv6) {
    path.dhcpv6 = net::ToDhcpv6Config(g);
    path.dhcpv6->fqdn = options.fqdn;
  }
  if (options.no_icmp) {
    path.icmp.reset();
  } else {
    path.icmp->outbound = options.outbound;
  }
  backend_options.guest = g;
  // Where guest flows go (net/forward): the gateway's addresses, or
  // --map-host-loopback's, for the host's loopback, --map-guest-addr's for
  // the guest's own address on the host; DNS to --dns-forward's address and
  // to the gateway (where it stands for a resolver on the host's loopback)
  // to the host's resolver, TCP and UDP alike.
  const net::DestinationMap& map = options.destinations;
  backend_options.forward = net::RulesFromConfig(g, net::HostResolvers(), map);
  if (map.dns_forward4 &&
      !ForwardsDns(backend_options.forward, net::InetAddr::V4(*map.dns_forward4))) {
    VUNET_LOG(kWarning, "--dns-forward %s: no IPv4 resolver to send it to (--dns-host)",
              Ntop(*map.dns_forward4));
  }
  if (map.dns_forward6 &&
      !ForwardsDns(backend_options.forward, net::InetAddr::V6(*map.dns_forward6))) {
    VUNET_LOG(kWarning, "--dns-forward %s: no IPv6 resolver to send it to (--dns-host)",
              Ntop(*map.dns_forward6));
  }
  for (const net::DnsForward& d : backend_options.forward.dns) {
    VUNET_LOG(kInfo, "DNS: the guest's queries to %s go to %s", d.guest.ToString(),
              d.host.ToString());
  }
  if (options.max_flows != 0) backend_options.max_flows = options.max_flows;
  if (options.no_tcp) {
    path.tcp.reset();
  } else {
    path.tcp->forwards = options.tcp_ports;
    path.tcp->outbound = options.outbound;
    if (options.tcp_reorder_bytes) path.tcp->reorder.bytes = *options.tcp_reorder_bytes;
  }
  if (options.no_udp) {
    path.udp.reset();
  } else {
    path.udp->forwards = options.udp_ports;
    path.udp->outbound = options.outbound;
  }

  return backend_options;
}

int Main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();
  const std::string command_line = CommandLine(argc, argv);
  absl::StatusOr<std::vector<std::string>> args =
      ExpandArgs(absl::Span<const char* const>(argv, argc));
  if (!args.ok()) return Fail(absl::StrCat(args.status().message(), " (try --help)"));
  for (const std::string& a : *args) {
    if (a == "--help") {
      std::fputs(UsageText(argv[0]).c_str(), stdout);
      return 0;
    }
    if (a == "--version") {
      std::fputs(VersionText().c_str(), stdout);
      return 0;
    }
  }
  std::vector<char*> expanded;
  for (std::string& a : *args) expanded.push_back(a.data());
  expanded.push_back(nullptr);
  int expanded_argc = static_cast<int>(expanded.size()) - 1;
  char** expanded_argv = expanded.data();
  // Prints nothing and does not exit: ExpandArgs let through only what gflags
  // takes, and --help and --version were answered above.
  gflags::ParseCommandLineNonHelpFlags(&expanded_argc, &expanded_argv, /*remove_flags=*/true);

  absl::StatusOr<CliOptions> options = OptionsFromFlags();
  if (!options.ok()) return Fail(std::string(options.status().message()));
  if (options->print_capabilities) {
    std::fputs(CapabilitiesJson().c_str(), stdout);
    return 0;
  }
  switch (options->log_level) {
    case LogLevel::kQuiet:
      log::SetLevel(log::Level::kError);
      break;
    case LogLevel::kDebug:
      log::SetLevel(log::Level::kDebug);
      break;
    case LogLevel::kNormal:
      log::SetLevel(log::Level::kInfo);
      break;
  }

  int log_fd = -1;
  if (!options->log_file.empty()) {
    absl::StatusOr<int> fd = OpenLogFile(options->log_file);
    if (!fd.ok()) return Fail(std::string(fd.status().message()));
    log_fd = *fd;
    log::UseFd(log_fd, options->log_size);
    g_logging_elsewhere = true;
  }

  net::HostSources host;
  host.interface = options->interface;  // -i
  // Without -i, --outbound-if4/6 name the interface addresses and routes
  // come from too, as in passt; one interface for both versions here.
  if (host.interface.empty()) {
    const std::string& if4 = options->outbound.ifname4;
    const std::string& if6 = options->outbound.ifname6;
    if (if4.empty() || if6.empty() || if4 == if6) {
      host.interface = if4.empty() ? if6 : if4;
    } else {
      VUNET_LOG(kInfo,
                "--outbound-if4 %s, --outbound-if6 %s: addresses and routes come from each "
                "default route's interface (give -i to choose one)",
                if4, if6);
    }
  }
  absl::StatusOr<net::GuestConfig> guest = net::MirrorHost(host);
  if (!guest.ok()) return Fail(absl::StrCat("host addressing: ", guest.status().message()));
  if (absl::Status s = net::ApplyOverrides(&*guest, options->overrides); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  const net::GuestConfig& g = *guest;
  // Every forwarded port is a listening socket: they must fit the fd limit
  // with room for flows, or vunet says so now rather than fail halfway.
  if (absl::Status s = CheckFdBudget(
          CountListeners(options->tcp_ports, options->udp_ports, g.ipv4_only, g.ipv6_only),
          SoftFdLimit());
      !s.ok()) {
    return Fail(std::string(s.message()));
  }
  const bool v4 = !g.ipv6_only;
  const bool v6 = !g.ipv4_only;

  const BackendOptions backend_options = BackendOptionsFor(*options, g);

  // --runas before anything is created, so that a bad name is a one-line error.
  absl::StatusOr<std::optional<Identity>> runas = RunAsFor(options->runas, geteuid() == 0);
  if (!runas.ok()) return Fail(std::string(runas.status().message()));

  absl::StatusOr<std::unique_ptr<Backend>> backend = Backend::Create(backend_options);
  if (!backend.ok()) return Fail(std::string(backend.status().message()));

  VUNET_LOG(kInfo, "started as: %s", command_line);
  LogNotYetInEffect(*options);
  if (options->inherited_fd >= 0) {
    VUNET_LOG(kInfo, "vunet %s: vhost-user backend on inherited fd %d", kVersion,
              options->inherited_fd);
  } else {
    VUNET_LOG(kInfo, "vunet %s: vhost-user backend listening on %s", kVersion,
              options->socket_path);
  }
  if (v4) {
    VUNET_LOG(kInfo, "IPv4: guest %s/%d, gateway %s, DNS %s%s; DHCP %s", Ntop(g.addr4),
              g.prefix_len4, Ntop(g.gateway4), List(g.dns4), g.mirrored4 ? " (from the host)" : "",
              g.no_dhcp ? "off" : "on");
  }
  if (v6) {
    VUNET_LOG(kInfo,
              "IPv6: guest %s/%d, gateway %s (router %s), DNS %s%s; NDP %s, RA %s, DHCPv6 %s",
              Ntop(g.addr6), g.prefix_len6, Ntop(g.gateway6), Ntop(g.our_link_local6), List(g.dns6),
              g.mirrored6 ? " (from the host)" : "", g.no_ndp ? "off" : "on",
              backend_options.send_ra ? "on" : "off", g.no_dhcpv6 ? "off" : "on");
  }
  if (g.no_dhcp_dns || g.no_dhcp_search) {
    VUNET_LOG(kInfo, "DHCP, DHCPv6 and router advertisements offer no %s",
              g.no_dhcp_dns && g.no_dhcp_search ? "DNS servers and no search list"
              : g.no_dhcp_dns                   ? "DNS servers (--no-dhcp-dns)"
                                                : "search list (--no-dhcp-search)");
  }
  const char* flows = "Guest TCP and UDP flows are translated to host sockets.";
  if (options->no_tcp && options->no_udp) {
    flows = "Guest TCP and UDP are dropped (--no-tcp, --no-udp).";
  } else if (options->no_tcp) {
    flows = "Guest UDP flows are translated to host sockets; TCP is dropped (--no-tcp).";
  } else if (options->no_udp) {
    flows = "Guest TCP flows are translated to host sockets; UDP is dropped (--no-udp).";
  }
  VUNET_LOG(kInfo, "MTU %d. %s%s", g.mtu, flows,
            options->no_icmp ? " ICMP echo is off (--no-icmp)." : "");
  const net::MacAddr& mac = g.guest_mac;
  VUNET_LOG(kInfo, "attach a VM with these QEMU options:");
  VUNET_LOG(kInfo,
            "  qemu-system-x86_64 ... -m 1G -chardev socket,id=vunet0,path=%s "
            "-netdev vhost-user,id=net0,chardev=vunet0 "
            "-device virtio-net-pci,netdev=net0,mac=%02x:%02x:%02x:%02x:%02x:%02x "
            "-object memory-backend-memfd,id=mem0,size=1G,share=on -numa node,memdev=mem0",
            options->socket_path, mac.bytes[0], mac.bytes[1], mac.bytes[2], mac.bytes[3],
            mac.bytes[4], mac.bytes[5]);
  VUNET_LOG(kInfo,
            "  (the guest's RAM must be a shared memory backend: -m and size= must be the same; "
            "tested with QEMU 10; under TCG, QEMU 7.2 also needs vectors=0 on the -device)");

  if (!options->foreground) {
    if (absl::Status s = Daemonize(); !s.ok()) return Fail(std::string(s.message()));
  }
  if (!options->pid_file.empty()) {
    if (absl::Status s = WritePidFile(options->pid_file); !s.ok()) {
      return Fail(std::string(s.message()));
    }
  }
  if (!options->foreground) {
    if (absl::Status s = DetachStdio(log_fd); !s.ok()) return Fail(std::string(s.message()));
  }

  // A frontend that shrinks an unsealable memory file under our mapping
  // faults our next access to it: contained (virtio/memory_fault.h).
  if (absl::Status s = virtio::ContainGuestMemoryFaults(); !s.ok()) {
    VUNET_LOG(kWarning, "%s", s.message());
  }
  std::unique_ptr<Sandbox> sandbox;
  if (!options->no_sandbox) {
    absl::StatusOr<std::unique_ptr<Sandbox>> confined = Confine(*options, *runas);
    if (!confined.ok()) return Fail(std::string(confined.status().message()));
    sandbox = *std::move(confined);
  } else {
    VUNET_LOG(kWarning, "--no-sandbox: running unconfined");
  }
  ReportReady();

  const absl::Status s = (*backend)->Run();
  backend->reset();  // Stops the queues, removes the socket.
  sandbox.reset();   // Its helper removes the socket and the pid file.
  if (!options->pid_file.empty()) unlink(options->pid_file.c_str());
  if (!s.ok()) {
    VUNET_LOG(kError, "%s", s.ToString());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace vunet::tools

int main(int argc, char** argv) { return vunet::tools::Main(argc, argv); }
