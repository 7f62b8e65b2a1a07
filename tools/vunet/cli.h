// The command line of the vunet backend: passt's option names where the
// meaning is the same (so that tooling written for passt's vhost-user mode,
// libvirt's for one, can drive vunet), parsed with gflags.
//
// gflags has long options only, spelled with underscores. ExpandArgs is a
// pre-pass over argv that turns what a passt user types into what gflags
// parses: short options (-s PATH, -sPATH, clusters such as -fd) become their
// long forms, dashes in long names become underscores (--one-off ->
// --one_off), and a value given as the next argument is joined with '='.
// Options passt lets you repeat (-a, -g, -D, -S) are gathered into one
// comma-separated value (a string flag, split in OptionsFromFlags).
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

// What the flags ask for, checked.
struct CliOptions {
  std::string socket_path;
  bool foreground = false;
  bool one_off = false;
  std::string pid_file;
  std::string pcap_file;  // --pcap; empty: no capture.
  // -l, --log-file: log lines go to this file (appended) rather than stderr,
  // or syslog once daemonized. Empty: those.
  std::string log_file;
  LogLevel log_level = LogLevel::kNormal;
  bool print_capabilities = false;
  std::string runas;        // --runas; empty: nobody when root.
  bool no_sandbox = false;  // --no-sandbox (tools/vunet/sandbox.h).
  // --max-flows: TCP and UDP flows at a time (the shared flow table's
  // capacity); 0 keeps the backend's default.
  size_t max_flows = 0;
  // -i, --interface: the host interface whose addresses and default routes
  // the guest's addressing mirrors (net::HostSources::interface). Empty:
  // each default route's.
  std::string interface;
  // --no-tcp, --no-udp: no such translator (the guest's frames of that
  // protocol are dropped, and -t/-u are refused); --no-icmp: no ICMP echo.
  bool no_tcp = false;
  bool no_udp = false;
  bool no_icmp = false;

  // -t / -u, one raw spec per occurrence, checked later by
  // net::ParsePortForwards (net/translator.h).
  std::vector<std::string> tcp_forwards;
  std::vector<std::string> udp_forwards;

  // Addressing overrides, checked later by net::ApplyOverrides.
  net::ConfigOverrides overrides;
};

// Reads the parsed flags into CliOptions; kInvalidArgument (one line) for a
// bad value or an impossible combination.
absl::StatusOr<CliOptions> OptionsFromFlags();

// The default socket: $XDG_RUNTIME_DIR/vunet.socket, else /tmp/vunet.socket.
std::string DefaultSocketPath();

// --help text, --version line, --print-capabilities JSON.
std::string UsageText(const char* argv0);
std::string VersionText();
std::string CapabilitiesJson();

}  // namespace vunet::tools

#endif  // VUNET_TOOLS_VUNET_CLI_H_
