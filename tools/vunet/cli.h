// The command line of the vunet backend: passt's option names where the
// meaning is the same (so that tooling written for passt's vhost-user mode,
// libvirt's for one, can drive vunet), parsed with gflags.
//
// gflags has long options only, spelled with underscores. ExpandArgs is a
// pre-pass over argv that turns what a passt user types into what gflags
// parses: short options (-s PATH, -sPATH, clusters such as -fd) become their
// long forms, dashes in long names become underscores (--one-off ->
// --one_off), and a value given as the next argument is joined with '='.
// Options passt lets you repeat (-a, -g, -D, -o, --dns-forward...) are
// gathered into one comma-separated value (a string flag, split in
// OptionsFromFlags); -S, -t and -u, whose values hold spaces or commas of
// their own, are joined with newlines. --socket-path is --socket (QEMU's
// convention for vhost-user backend programs). pasta's own options (--netns,
// -T, --config-net...) are refused by name.
// It also refuses whatever gflags would report in several lines of its own
// (and exit), or not at all: unknown options (gflags' own --helpfull,
// --flagfile, --noX and the like too), missing values, positional
// arguments, a switch given a value other than true, false, yes, no, 1 or 0;
// so every command-line error is one line. --help and --version are left
// for main to answer before gflags parses.
//
//   absl::StatusOr<std::vector<std::string>> args = ExpandArgs(argv);
//   ...gflags::ParseCommandLineNonHelpFlags over *args...
//   absl::StatusOr<CliOptions> options = OptionsFromFlags();

#ifndef VUNET_TOOLS_VUNET_CLI_H_
#define VUNET_TOOLS_VUNET_CLI_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "net/config/config.h"
#include "net/config/port_forward.h"
#include "net/forward/destination_map.h"
#include "net/forward/outbound.h"

namespace vunet::tools {

inline constexpr char kVersion[] = "0.1.0";

// One option of the command line.
struct OptionSpec {
  const char* name;  // The gflags flag's name (underscores).
  char short_name;   // 0 if none.
  bool takes_value;
  bool repeatable = false;  // Values gathered into one comma-separated list.
  // Repeatable options whose values may hold commas themselves (-t, -u) are
  // joined with a newline instead, and split again in OptionsFromFlags.
  bool join_lines = false;
};

// Every option the backend accepts, in the order --help lists them.
absl::Span<const OptionSpec> Options();

// The pre-pass described above. argv[0] is kept as is. A switch's value is
// normalized: --name for true, --name=false. Errors are one line
// (kInvalidArgument) naming the option as the user typed it.
absl::StatusOr<std::vector<std::string>> ExpandArgs(absl::Span<const char* const> argv);
absl::StatusOr<std::vector<std::string>> ExpandArgs(absl::Span<const std::string> argv);

enum class LogLevel { kNormal, kQuiet, kDebug };

// passt's default --log-size, and the smallest we take.
inline constexpr uint64_t kDefaultLogSize = uint64_t{1} << 20;
inline constexpr uint64_t kMinLogSize = 4096;

// --tcp-reorder-bytes' bounds (besides 0).
inline constexpr uint64_t kMinTcpReorderBytes = uint64_t{64} << 10;
inline constexpr uint64_t kMaxTcpReorderBytes = uint64_t{1} << 30;

// What the flags ask for, checked.
struct CliOptions {
  // -s, --socket, --socket-path; empty with --fd.
  std::string socket_path;
  // -F, --fd: an inherited UNIX stream socket, listening or connected, served
  // instead of a socket path (one_off is implied, as in passt); -1: none.
  int inherited_fd = -1;
  bool foreground = false;
  bool one_off = false;
  std::string pid_file;
  std::string pcap_file;  // --pcap; empty: no capture.
  // -l, --log-file: log lines go to this file (appended) rather than stderr,
  // or syslog once daemonized. Empty: those.
  std::string log_file;
  // --log-size: the -l file is kept under this many bytes (the oldest lines
  // go); passt's default, 1 MiB.
  uint64_t log_size = kDefaultLogSize;
  // -d, --debug, and --trace (the same here: vunet logs no single packets);
  // -q, --quiet. -e/--stderr is accepted and does nothing, as in passt.
  LogLevel log_level = LogLevel::kNormal;
  // --stats DELAY: a line of counters every DELAY seconds (needs
  // --foreground, as passt's does); 0: none.
  int stats_interval = 0;
  bool print_capabilities = false;
  std::string runas;        // --runas; empty: nobody when root.
  bool no_sandbox = false;  // --no-sandbox (tools/vunet/sandbox.h).
  // --max-flows: TCP and UDP flows at a time (the shared flow table's
  // capacity); 0 keeps the backend's default.
  size_t max_flows = 0;
  // --tcp-reorder-bytes: the TCP out-of-order pool's size
  // (net::TcpTranslatorOptions::reorder.bytes; 0: none); unset keeps the
  // translator's default (32 MiB).
  std::optional<uint64_t> tcp_reorder_bytes;
  // -i, --interface: the host interface whose addresses and default routes
  // the guest's addressing mirrors (net::HostSources::interface). Empty:
  // each default route's.
  std::string interface;
  // --no-tcp, --no-udp: no such translator (the guest's frames of that
  // protocol are dropped, and -t/-u are refused); --no-icmp: no ICMP echo.
  bool no_tcp = false;
  bool no_udp = false;
  bool no_icmp = false;

  // -t / -u, one raw spec per occurrence as given, and what they forward:
  // parsed (net::ParsePortForwards), overlaps between specs refused, each
  // with --freebind's setting.
  std::vector<std::string> tcp_forwards;
  std::vector<std::string> udp_forwards;
  std::vector<net::PortForward> tcp_ports;
  std::vector<net::PortForward> udp_ports;
  // --freebind: listeners may bind addresses the host does not have (yet).
  bool freebind = false;

  // Addressing overrides, checked later by net::ApplyOverrides.
  net::ConfigOverrides overrides;
  // -m 0: no MTU is advertised (DHCP option 26, the RA's MTU option), as
  // passt defines it; the guest picks its own.
  bool advertise_mtu = true;
  // -H, --hostname and --fqdn: the guest's host name (DHCP option 12) and
  // FQDN (DHCP option 81, DHCPv6 option 39); net::IsHostName checked.
  std::string hostname;
  std::string fqdn;

  // -o/--outbound, --outbound-if4, --outbound-if6: where outbound flows
  // leave from (interfaces checked to exist).
  net::OutboundBinding outbound;
  // --map-host-loopback, --no-map-gw, --map-guest-addr, --dns-forward,
  // --dns-host: the forwarding rules are made of them (net::RulesFromConfig).
  net::DestinationMap destinations;

  // -c, --conf-path: the socket passt serves pesto(1) on, to change
  // forwards at run time. Checked and accepted; vunet serves no such socket.
  std::string conf_path;
  // Live migration (BackendOptions::repair_path, migrate_linger,
  // migrate_exit): --repair-path, the TCP_REPAIR helper's socket (default:
  // the socket path + ".repair", as passt's; none with --fd, or where that
  // path would not fit a socket address; "none": none); --migrate-exit;
  // --migrate-no-linger.
  struct Migration {
    std::string repair_path;
    bool exit_after = false;
    bool no_linger = false;
  } migration;
};

// Reads the parsed flags into CliOptions; kInvalidArgument (one line naming
// the option) for a bad value or an impossible combination. Looks at the
// system where a value names something in it: --fd's descriptor, the
// interfaces of --outbound-if4/6, the ephemeral ports "all" leaves out.
absl::StatusOr<CliOptions> OptionsFromFlags();

// Checks that `fd` is an open UNIX stream socket (what -F/--fd takes).
absl::Status CheckInheritedSocket(int fd);

// The default socket: $XDG_RUNTIME_DIR/vunet.socket, else /tmp/vunet.socket.
std::string DefaultSocketPath();

// --help text, --version line, --print-capabilities JSON.
std::string UsageText(const char* argv0);
std::string VersionText();
std::string CapabilitiesJson();

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_CLI_H_
