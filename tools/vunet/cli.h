// The command line of the vunet backend: passt's option names where the
// meaning is the same, parsed with Abseil flags.
//
// Abseil flags has long options only, spelled with underscores. ExpandArgs is
// a pre-pass over argv that turns what a passt user types into what Abseil
// parses: short options (-s PATH, -sPATH, clusters such as -fd) become their
// long forms, dashes in long names become underscores (--one-off ->
// --one_off), and a value given as the next argument is joined with '='.
// Options passt lets you repeat (-a, -g, -D, -S) are gathered into one
// comma-separated value, which Abseil parses as a list.
// It also refuses what Abseil would report in several lines or not at all
// (unknown options, missing values, positional arguments), so that every
// command-line error is one line.
//
//   absl::StatusOr<std::vector<std::string>> args = ExpandArgs(argv);
//   ...absl::ParseCommandLine over *args...
//   absl::StatusOr<CliOptions> options = OptionsFromFlags();

#ifndef VUNET_TOOLS_VUNET_CLI_H_
#define VUNET_TOOLS_VUNET_CLI_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "net/config.h"

namespace vunet::tools {

inline constexpr char kVersion[] = "0.1.0";

// One option of the command line.
struct OptionSpec {
  const char* name;  // The Abseil flag's name (underscores).
  char short_name;   // 0 if none.
  bool takes_value;
  bool repeatable = false;  // Values gathered into one comma-separated list.
  // Repeatable options whose values may hold commas themselves (-t, -u) are
  // joined with a newline instead, and split again in OptionsFromFlags.
  bool join_lines = false;
};

// Every option the backend accepts, in the order --help lists them.
absl::Span<const OptionSpec> Options();

// The pre-pass described above. argv[0] is kept as is. Errors are one line
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
  LogLevel log_level = LogLevel::kNormal;
  bool print_capabilities = false;
  std::string runas;        // --runas; empty: nobody when root.
  bool no_sandbox = false;  // --no-sandbox (tools/vunet/sandbox.h).
  // --max-flows: TCP and UDP flows at a time (the shared flow table's
  // capacity); 0 keeps the backend's default.
  size_t max_flows = 0;

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
