#include "tools/vunet/cli.h"

#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

ABSL_DECLARE_FLAG(std::string, socket);
ABSL_DECLARE_FLAG(bool, quiet);
ABSL_DECLARE_FLAG(bool, debug);
ABSL_DECLARE_FLAG(bool, vhost_user);
ABSL_DECLARE_FLAG(std::vector<std::string>, address);
ABSL_DECLARE_FLAG(std::vector<std::string>, dns);
ABSL_DECLARE_FLAG(std::string, mtu);
ABSL_DECLARE_FLAG(std::string, netmask);
ABSL_DECLARE_FLAG(bool, ipv4_only);
ABSL_DECLARE_FLAG(std::string, pcap);
ABSL_DECLARE_FLAG(std::string, max_flows);
ABSL_DECLARE_FLAG(std::string, tcp_ports);
ABSL_DECLARE_FLAG(std::string, udp_ports);

namespace vunet::tools {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::StatusOr<std::vector<std::string>> Expand(std::vector<std::string> args) {
  args.insert(args.begin(), "vunet");
  return ExpandArgs(absl::Span<const std::string>(args));
}

std::vector<std::string> Expanded(std::vector<std::string> args) {
  absl::StatusOr<std::vector<std::string>> out = Expand(std::move(args));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return {};
  out->erase(out->begin());
  return *out;
}

std::string ExpandError(std::vector<std::string> args) {
  absl::StatusOr<std::vector<std::string>> out = Expand(std::move(args));
  EXPECT_FALSE(out.ok());
  return out.ok() ? "" : std::string(out.status().message());
}

TEST(ExpandArgs, KeepsArgv0AndNothingElse) {
  const char* argv[] = {"/usr/bin/vunet"};
  absl::StatusOr<std::vector<std::string>> out = ExpandArgs(absl::Span<const char* const>(argv));
  ASSERT_TRUE(out.ok());
  EXPECT_THAT(*out, ElementsAre("/usr/bin/vunet"));
}

TEST(ExpandArgs, ShortOptionsBecomeLong) {
  EXPECT_THAT(Expanded({"-s", "/tmp/x.sock", "-f", "-q", "-P", "/run/pid"}),
              ElementsAre("--socket=/tmp/x.sock", "--foreground", "--quiet", "--pid=/run/pid"));
  EXPECT_THAT(Expanded({"-d", "-4"}), ElementsAre("--debug", "--ipv4_only"));
  EXPECT_THAT(Expanded({"-p", "/tmp/x.pcap", "--pcap", "/tmp/y.pcap"}),
              ElementsAre("--pcap=/tmp/x.pcap", "--pcap=/tmp/y.pcap"));
  EXPECT_THAT(Expanded({"-6", "-m", "1500", "-n", "24"}),
              ElementsAre("--ipv6_only", "--mtu=1500", "--netmask=24"));
  EXPECT_THAT(Expanded({"-M", "02:00:00:00:00:01", "-h"}),
              ElementsAre("--mac_addr=02:00:00:00:00:01", "--help"));
}

TEST(ExpandArgs, AttachedValueAndClusters) {
  EXPECT_THAT(Expanded({"-s/tmp/x.sock"}), ElementsAre("--socket=/tmp/x.sock"));
  EXPECT_THAT(Expanded({"-fd"}), ElementsAre("--foreground", "--debug"));
  // A value-taking option ends the cluster: the rest is its value...
  EXPECT_THAT(Expanded({"-fs/tmp/a"}), ElementsAre("--foreground", "--socket=/tmp/a"));
  // ...or the next argument is.
  EXPECT_THAT(Expanded({"-fs", "/tmp/a"}), ElementsAre("--foreground", "--socket=/tmp/a"));
}

TEST(ExpandArgs, LongOptionsWithDashes) {
  EXPECT_THAT(Expanded({"--one-off", "--print-capabilities", "--vhost-user"}),
              ElementsAre("--one_off", "--print_capabilities", "--vhost_user"));
  EXPECT_THAT(Expanded({"--no-dhcp", "--no-ndp", "--no-dhcpv6", "--no-ra"}),
              ElementsAre("--no_dhcp", "--no_ndp", "--no_dhcpv6", "--no_ra"));
  EXPECT_THAT(Expanded({"--ipv4-only", "--ipv6_only"}), ElementsAre("--ipv4_only", "--ipv6_only"));
  // Values keep their dashes.
  EXPECT_THAT(Expanded({"--socket", "/tmp/a-b", "--pid=/tmp/c-d"}),
              ElementsAre("--socket=/tmp/a-b", "--pid=/tmp/c-d"));
  EXPECT_THAT(Expanded({"--foreground=false"}), ElementsAre("--foreground=false"));
}

TEST(ExpandArgs, RepeatableOptionsAreGathered) {
  EXPECT_THAT(
      Expanded({"-D", "192.0.2.53", "-a", "10.0.0.2", "--dns=2001:db8::53", "-a", "fd00::2", "-q"}),
      ElementsAre("--quiet", "--dns=192.0.2.53,2001:db8::53", "--address=10.0.0.2,fd00::2"));
  EXPECT_THAT(Expanded({"-g", "10.0.0.1", "--gateway", "fe80::1", "-S", "example.com"}),
              ElementsAre("--gateway=10.0.0.1,fe80::1", "--search=example.com"));
}

TEST(ExpandArgs, PortSpecsKeepTheirCommas) {
  EXPECT_THAT(Expanded({"-t", "127.0.0.1/80,443", "--tcp-ports", "8080:80", "-u53"}),
              ElementsAre("--tcp_ports=127.0.0.1/80,443\n8080:80", "--udp_ports=53"));
}

TEST(ExpandArgs, DoubleDashEndsOptions) {
  EXPECT_THAT(Expanded({"-f", "--"}), ElementsAre("--foreground"));
  EXPECT_THAT(ExpandError({"-f", "--", "x"}), HasSubstr("unexpected argument 'x'"));
}

TEST(ExpandArgs, Errors) {
  EXPECT_EQ(ExpandError({"-x"}), "unknown option '-x'");
  EXPECT_EQ(ExpandError({"-fx"}), "unknown option '-x'");
  EXPECT_EQ(ExpandError({"--bogus"}), "unknown option '--bogus'");
  EXPECT_EQ(ExpandError({"--bogus=1"}), "unknown option '--bogus'");
  EXPECT_EQ(ExpandError({"-s"}), "option '-s' needs a value");
  EXPECT_EQ(ExpandError({"--socket"}), "option '--socket' needs a value");
  EXPECT_EQ(ExpandError({"--socket="}), "option '--socket' needs a value");
  EXPECT_EQ(ExpandError({"stray"}), "unexpected argument 'stray'");
  EXPECT_EQ(ExpandError({"-"}), "unexpected argument '-'");
  // Abseil's own flags are not ours to accept.
  EXPECT_EQ(ExpandError({"--helpfull"}), "unknown option '--helpfull'");
  EXPECT_EQ(ExpandError({"--flagfile=/etc/passwd"}), "unknown option '--flagfile'");
}

TEST(ExpandArgs, EveryOptionIsAFlag) {
  for (const OptionSpec& o : Options()) {
    // main answers these two itself (they are Abseil's own flags' names).
    if (std::string(o.name) == "help" || std::string(o.name) == "version") continue;
    EXPECT_NE(absl::FindCommandLineFlag(o.name), nullptr) << o.name;
  }
}

TEST(ExpandArgs, ShortNamesAreUnique) {
  for (const OptionSpec& a : Options()) {
    for (const OptionSpec& b : Options()) {
      if (&a != &b && a.short_name != 0) {
        EXPECT_NE(a.short_name, b.short_name) << a.name;
      }
    }
  }
}

class OptionsFromFlagsTest : public ::testing::Test {
 private:
  absl::FlagSaver saver_;
};

TEST_F(OptionsFromFlagsTest, Defaults) {
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->socket_path, DefaultSocketPath());
  EXPECT_FALSE(o->foreground);
  EXPECT_FALSE(o->one_off);
  EXPECT_EQ(o->log_level, LogLevel::kNormal);
  EXPECT_TRUE(o->overrides.addresses.empty());
  EXPECT_FALSE(o->overrides.mtu.has_value());
  EXPECT_TRUE(o->pcap_file.empty());
}

TEST_F(OptionsFromFlagsTest, Pcap) {
  absl::SetFlag(&FLAGS_pcap, "/tmp/vunet.pcap");
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->pcap_file, "/tmp/vunet.pcap");
}

TEST_F(OptionsFromFlagsTest, MaxFlows) {
  EXPECT_EQ(OptionsFromFlags()->max_flows, 0u);  // The backend's default.
  absl::SetFlag(&FLAGS_max_flows, "32");
  EXPECT_EQ(OptionsFromFlags()->max_flows, 32u);
  for (const char* bad : {"0", "-1", "x", "1048577"}) {
    absl::SetFlag(&FLAGS_max_flows, bad);
    absl::StatusOr<CliOptions> o = OptionsFromFlags();
    ASSERT_FALSE(o.ok()) << bad;
    EXPECT_THAT(o.status().message(), HasSubstr("--max-flows")) << bad;
  }
}

TEST_F(OptionsFromFlagsTest, DefaultSocketFollowsXdgRuntimeDir) {
  setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
  EXPECT_EQ(DefaultSocketPath(), "/run/user/1000/vunet.socket");
  unsetenv("XDG_RUNTIME_DIR");
  EXPECT_EQ(DefaultSocketPath(), "/tmp/vunet.socket");
}

TEST_F(OptionsFromFlagsTest, QuietAndDebugConflict) {
  absl::SetFlag(&FLAGS_quiet, true);
  absl::SetFlag(&FLAGS_debug, true);
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(o.status().message(), HasSubstr("-q and -d"));
}

TEST_F(OptionsFromFlagsTest, LogLevels) {
  absl::SetFlag(&FLAGS_debug, true);
  EXPECT_EQ(OptionsFromFlags()->log_level, LogLevel::kDebug);
  absl::SetFlag(&FLAGS_debug, false);
  absl::SetFlag(&FLAGS_quiet, true);
  EXPECT_EQ(OptionsFromFlags()->log_level, LogLevel::kQuiet);
}

TEST_F(OptionsFromFlagsTest, SocketPathTooLong) {
  absl::SetFlag(&FLAGS_socket, "/tmp/" + std::string(200, 'x'));
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(o.status().message(), HasSubstr("too long"));
}

TEST_F(OptionsFromFlagsTest, NoVhostUserRefused) {
  absl::SetFlag(&FLAGS_vhost_user, false);
  EXPECT_FALSE(OptionsFromFlags().ok());
}

TEST_F(OptionsFromFlagsTest, AddressingGoesToOverrides) {
  absl::SetFlag(&FLAGS_address, {"10.0.0.2", "fd00::2"});
  absl::SetFlag(&FLAGS_dns, {"192.0.2.53"});
  absl::SetFlag(&FLAGS_mtu, "1500");
  absl::SetFlag(&FLAGS_netmask, "255.255.0.0");
  absl::SetFlag(&FLAGS_ipv4_only, true);
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->overrides.addresses, ElementsAre("10.0.0.2", "fd00::2"));
  EXPECT_THAT(o->overrides.dns, ElementsAre("192.0.2.53"));
  EXPECT_EQ(o->overrides.mtu, "1500");
  EXPECT_EQ(o->overrides.netmask, "255.255.0.0");
  EXPECT_TRUE(o->overrides.ipv4_only);
  // net::ApplyOverrides judges the values (an IPv6 address with -4 is refused).
  net::GuestConfig config;
  EXPECT_FALSE(net::ApplyOverrides(&config, o->overrides).ok());
}

TEST_F(OptionsFromFlagsTest, PortSpecsOnePerOccurrence) {
  absl::SetFlag(&FLAGS_tcp_ports, "127.0.0.1/80,443\n8080:80");
  absl::SetFlag(&FLAGS_udp_ports, "53");
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->tcp_forwards, ElementsAre("127.0.0.1/80,443", "8080:80"));
  EXPECT_THAT(o->udp_forwards, ElementsAre("53"));
}

TEST(Texts, CapabilitiesVersionUsage) {
  EXPECT_EQ(CapabilitiesJson(), "{\n  \"type\": \"net\"\n}\n");
  EXPECT_THAT(VersionText(), HasSubstr("vunet "));
  const std::string usage = UsageText("vunet");
  EXPECT_THAT(usage, HasSubstr("TCP and UDP flows become ordinary host sockets"));
  for (const OptionSpec& o : Options()) {
    std::string dashed = o.name;
    for (char& c : dashed) {
      if (c == '_') c = '-';
    }
    EXPECT_THAT(usage, HasSubstr("--" + dashed)) << o.name;
  }
}

}  // namespace
}  // namespace vunet::tools
