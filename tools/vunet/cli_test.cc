#include "tools/vunet/cli.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gflags/gflags.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

DECLARE_string(socket);
DECLARE_bool(quiet);
DECLARE_bool(debug);
DECLARE_bool(vhost_user);
DECLARE_string(address);
DECLARE_string(dns);
DECLARE_string(search);
DECLARE_string(gateway);
DECLARE_string(mtu);
DECLARE_string(netmask);
DECLARE_bool(ipv4_only);
DECLARE_string(pcap);
DECLARE_string(log_file);
DECLARE_string(max_flows);
DECLARE_string(interface);
DECLARE_bool(no_tcp);
DECLARE_bool(no_udp);
DECLARE_bool(no_icmp);
DECLARE_bool(no_dhcp_dns);
DECLARE_bool(no_dhcp_search);
DECLARE_string(tcp_ports);
DECLARE_string(udp_ports);

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
  EXPECT_THAT(Expanded({"-1", "-l", "/tmp/x.log", "-i", "eth0"}),
              ElementsAre("--one_off", "--log_file=/tmp/x.log", "--interface=eth0"));
}

TEST(ExpandArgs, AttachedValueAndClusters) {
  EXPECT_THAT(Expanded({"-s/tmp/x.sock"}), ElementsAre("--socket=/tmp/x.sock"));
  EXPECT_THAT(Expanded({"-fd"}), ElementsAre("--foreground", "--debug"));
  EXPECT_THAT(Expanded({"-1fieth1"}), ElementsAre("--one_off", "--foreground", "--interface=eth1"));
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
  EXPECT_THAT(
      Expanded({"--no-tcp", "--no-udp", "--no-icmp", "--no-dhcp-dns", "--no-dhcp-search"}),
      ElementsAre("--no_tcp", "--no_udp", "--no_icmp", "--no_dhcp_dns", "--no_dhcp_search"));
  EXPECT_THAT(Expanded({"--log-file=/tmp/a-b.log", "--interface", "br-lan"}),
              ElementsAre("--log_file=/tmp/a-b.log", "--interface=br-lan"));
  // Values keep their dashes.
  EXPECT_THAT(Expanded({"--socket", "/tmp/a-b", "--pid=/tmp/c-d"}),
              ElementsAre("--socket=/tmp/a-b", "--pid=/tmp/c-d"));
}

TEST(ExpandArgs, SwitchValuesAreNormalized) {
  EXPECT_THAT(Expanded({"--foreground=false"}), ElementsAre("--foreground=false"));
  EXPECT_THAT(Expanded({"--foreground=true"}), ElementsAre("--foreground"));
  EXPECT_THAT(Expanded({"--foreground=YES", "--no-tcp=No", "--no-udp=1", "--vhost-user=0"}),
              ElementsAre("--foreground", "--no_tcp=false", "--no_udp", "--vhost_user=false"));
  // main answers --help however it is spelt.
  EXPECT_THAT(Expanded({"--help=True"}), ElementsAre("--help"));
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
  // gflags' own flags are not ours to accept (it would answer them in lines
  // of its own, or read files and the environment).
  EXPECT_EQ(ExpandError({"--helpfull"}), "unknown option '--helpfull'");
  EXPECT_EQ(ExpandError({"--helpshort"}), "unknown option '--helpshort'");
  EXPECT_EQ(ExpandError({"--helpxml"}), "unknown option '--helpxml'");
  EXPECT_EQ(ExpandError({"--flagfile=/etc/passwd"}), "unknown option '--flagfile'");
  EXPECT_EQ(ExpandError({"--fromenv=socket"}), "unknown option '--fromenv'");
  EXPECT_EQ(ExpandError({"--tryfromenv=socket"}), "unknown option '--tryfromenv'");
  EXPECT_EQ(ExpandError({"--undefok=bogus"}), "unknown option '--undefok'");
  // Nor its negated switches.
  EXPECT_EQ(ExpandError({"--noforeground"}), "unknown option '--noforeground'");
  EXPECT_EQ(ExpandError({"--no-foreground"}), "unknown option '--no-foreground'");
}

TEST(ExpandArgs, SwitchValuesGflagsWouldRefuseOrWeDoNotTake) {
  for (const char* bad : {"maybe", "", "t", "f", "y", "n", "2", "on", "off"}) {
    EXPECT_EQ(ExpandError({std::string("--foreground=") + bad}),
              absl::StrCat("option '--foreground' is a switch: '", bad,
                           "' is not true or false (yes, no, 1, 0)"));
  }
  EXPECT_THAT(ExpandError({"--no-icmp=maybe"}), HasSubstr("option '--no-icmp' is a switch"));
}

// A string flag for each option that takes a value, a bool flag for each
// switch (help and version are gflags' own; main answers them).
TEST(ExpandArgs, EveryOptionIsAFlagOfItsKind) {
  for (const OptionSpec& o : Options()) {
    gflags::CommandLineFlagInfo info;
    ASSERT_TRUE(gflags::GetCommandLineFlagInfo(o.name, &info)) << o.name;
    EXPECT_EQ(info.type, o.takes_value ? "string" : "bool") << o.name;
  }
}

// What ExpandArgs makes, gflags parses (it would print its own error and
// exit otherwise), and OptionsFromFlags reads back.
TEST(ExpandArgs, GflagsParsesTheExpansion) {
  gflags::FlagSaver saver;
  absl::StatusOr<std::vector<std::string>> args = Expand({"-1fd",
                                                          "-s/tmp/a.sock",
                                                          "--foreground=yes",
                                                          "--vhost-user=true",
                                                          "-l",
                                                          "/tmp/v.log",
                                                          "-i",
                                                          "eth1",
                                                          "-a",
                                                          "10.0.0.2/24",
                                                          "--address=fd00::2",
                                                          "-D",
                                                          "192.0.2.53",
                                                          "-D",
                                                          "none",
                                                          "-S",
                                                          "example.com",
                                                          "--no-dhcp-dns",
                                                          "--no-dhcp-search=0",
                                                          "--no-icmp",
                                                          "-t",
                                                          "127.0.0.1/80,443",
                                                          "-t",
                                                          "8080:80",
                                                          "--udp-ports",
                                                          "53",
                                                          "--"});
  ASSERT_TRUE(args.ok()) << args.status();
  std::vector<char*> argv;
  for (std::string& a : *args) argv.push_back(a.data());
  int argc = static_cast<int>(argv.size());
  char** argvp = argv.data();
  gflags::ParseCommandLineNonHelpFlags(&argc, &argvp, true);
  EXPECT_EQ(argc, 1);
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->one_off);
  EXPECT_TRUE(o->foreground);
  EXPECT_EQ(o->log_level, LogLevel::kDebug);
  EXPECT_EQ(o->socket_path, "/tmp/a.sock");
  EXPECT_EQ(o->log_file, "/tmp/v.log");
  EXPECT_EQ(o->interface, "eth1");
  EXPECT_THAT(o->overrides.addresses, ElementsAre("10.0.0.2/24", "fd00::2"));
  EXPECT_THAT(o->overrides.dns, ElementsAre("192.0.2.53", "none"));
  EXPECT_THAT(o->overrides.search, ElementsAre("example.com"));
  EXPECT_TRUE(o->overrides.no_dhcp_dns);
  EXPECT_FALSE(o->overrides.no_dhcp_search);
  EXPECT_TRUE(o->no_icmp);
  EXPECT_FALSE(o->no_tcp || o->no_udp);
  EXPECT_THAT(o->tcp_forwards, ElementsAre("127.0.0.1/80,443", "8080:80"));
  EXPECT_THAT(o->udp_forwards, ElementsAre("53"));
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
  gflags::FlagSaver saver_;
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
  EXPECT_TRUE(o->log_file.empty());
  EXPECT_TRUE(o->interface.empty());
  EXPECT_FALSE(o->no_tcp || o->no_udp || o->no_icmp);
  EXPECT_FALSE(o->overrides.no_dhcp_dns || o->overrides.no_dhcp_search);
  EXPECT_TRUE(o->overrides.dns.empty());
  EXPECT_TRUE(o->tcp_forwards.empty());
}

TEST_F(OptionsFromFlagsTest, Pcap) {
  FLAGS_pcap = "/tmp/vunet.pcap";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->pcap_file, "/tmp/vunet.pcap");
}

TEST_F(OptionsFromFlagsTest, MaxFlows) {
  EXPECT_EQ(OptionsFromFlags()->max_flows, 0u);  // The backend's default.
  FLAGS_max_flows = "32";
  EXPECT_EQ(OptionsFromFlags()->max_flows, 32u);
  for (const char* bad : {"0", "-1", "x", "1048577"}) {
    FLAGS_max_flows = bad;
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
  FLAGS_quiet = true;
  FLAGS_debug = true;
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(o.status().message(), HasSubstr("-q and -d"));
}

TEST_F(OptionsFromFlagsTest, LogLevels) {
  FLAGS_debug = true;
  EXPECT_EQ(OptionsFromFlags()->log_level, LogLevel::kDebug);
  FLAGS_debug = false;
  FLAGS_quiet = true;
  EXPECT_EQ(OptionsFromFlags()->log_level, LogLevel::kQuiet);
}

TEST_F(OptionsFromFlagsTest, SocketPathTooLong) {
  FLAGS_socket = "/tmp/" + std::string(200, 'x');
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(o.status().message(), HasSubstr("too long"));
}

TEST_F(OptionsFromFlagsTest, NoVhostUserRefused) {
  FLAGS_vhost_user = false;
  EXPECT_FALSE(OptionsFromFlags().ok());
}

TEST_F(OptionsFromFlagsTest, AddressingGoesToOverrides) {
  FLAGS_address = "10.0.0.2,fd00::2";
  FLAGS_dns = "192.0.2.53";
  FLAGS_gateway = "10.0.0.1";
  FLAGS_search = "a.example,b.example";
  FLAGS_mtu = "1500";
  FLAGS_netmask = "255.255.0.0";
  FLAGS_ipv4_only = true;
  FLAGS_no_dhcp_dns = true;
  FLAGS_no_dhcp_search = true;
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->overrides.addresses, ElementsAre("10.0.0.2", "fd00::2"));
  EXPECT_THAT(o->overrides.dns, ElementsAre("192.0.2.53"));
  EXPECT_THAT(o->overrides.gateways, ElementsAre("10.0.0.1"));
  EXPECT_THAT(o->overrides.search, ElementsAre("a.example", "b.example"));
  EXPECT_TRUE(o->overrides.no_dhcp_dns);
  EXPECT_TRUE(o->overrides.no_dhcp_search);
  EXPECT_EQ(o->overrides.mtu, "1500");
  EXPECT_EQ(o->overrides.netmask, "255.255.0.0");
  EXPECT_TRUE(o->overrides.ipv4_only);
  // net::ApplyOverrides judges the values (an IPv6 address with -4 is refused).
  net::GuestConfig config;
  EXPECT_FALSE(net::ApplyOverrides(&config, o->overrides).ok());
}

TEST_F(OptionsFromFlagsTest, PortSpecsOnePerOccurrence) {
  FLAGS_tcp_ports = "127.0.0.1/80,443\n8080:80";
  FLAGS_udp_ports = "53";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->tcp_forwards, ElementsAre("127.0.0.1/80,443", "8080:80"));
  EXPECT_THAT(o->udp_forwards, ElementsAre("53"));
}

TEST_F(OptionsFromFlagsTest, LogFileAndInterface) {
  FLAGS_log_file = "/var/log/vunet.log";
  FLAGS_interface = "enp0s31f6";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->log_file, "/var/log/vunet.log");
  EXPECT_EQ(o->interface, "enp0s31f6");
  FLAGS_interface = "0123456789abcdef";  // IFNAMSIZ: 15 bytes at most.
  o = OptionsFromFlags();
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(o.status().message(), HasSubstr("-i/--interface"));
  FLAGS_interface = "0123456789abcde";
  EXPECT_TRUE(OptionsFromFlags().ok());
}

TEST_F(OptionsFromFlagsTest, NoTcpNoUdpNoIcmp) {
  FLAGS_no_tcp = true;
  FLAGS_no_udp = true;
  FLAGS_no_icmp = true;
  FLAGS_tcp_ports = "none";  // Forwards nothing: fine.
  FLAGS_udp_ports = "none";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->no_tcp && o->no_udp && o->no_icmp);
  FLAGS_tcp_ports = "none\n8080:80";
  o = OptionsFromFlags();
  ASSERT_FALSE(o.ok());
  EXPECT_EQ(o.status().message(), "-t 8080:80: TCP is off (--no-tcp)");
  FLAGS_tcp_ports = "";
  FLAGS_udp_ports = "53";
  o = OptionsFromFlags();
  ASSERT_FALSE(o.ok());
  EXPECT_EQ(o.status().message(), "-u 53: UDP is off (--no-udp)");
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
