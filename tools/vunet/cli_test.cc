#include "tools/vunet/cli.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>
#include <tuple>
#include <utility>
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
DECLARE_string(tcp_reorder_bytes);
DECLARE_string(interface);
DECLARE_bool(no_tcp);
DECLARE_bool(no_udp);
DECLARE_bool(no_icmp);
DECLARE_bool(no_dhcp_dns);
DECLARE_bool(no_dhcp_search);
DECLARE_string(tcp_ports);
DECLARE_string(udp_ports);
DECLARE_string(fd);
DECLARE_string(hostname);
DECLARE_string(fqdn);
DECLARE_string(outbound);
DECLARE_string(outbound_if4);
DECLARE_string(outbound_if6);
DECLARE_string(dns_forward);
DECLARE_string(dns_host);
DECLARE_string(map_host_loopback);
DECLARE_string(map_guest_addr);
DECLARE_bool(no_map_gw);
DECLARE_bool(freebind);
DECLARE_bool(trace);
DECLARE_bool(foreground);
DECLARE_string(stats);
DECLARE_string(log_size);
DECLARE_string(conf_path);
DECLARE_string(repair_path);
DECLARE_bool(migrate_exit);
DECLARE_bool(migrate_no_linger);

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
TEST(ExpandArgs, PasstsNamesForTheNewOptions) {
  EXPECT_THAT(Expanded({"--socket-path", "/tmp/a.sock"}), ElementsAre("--socket=/tmp/a.sock"));
  EXPECT_THAT(Expanded({"-F", "3", "-H", "vm", "-e", "-c", "/tmp/c.sock"}),
              ElementsAre("--fd=3", "--hostname=vm", "--stderr", "--conf_path=/tmp/c.sock"));
  EXPECT_THAT(Expanded({"--fqdn", "vm.example.org", "--trace", "--stats", "5", "--log-size=65536"}),
              ElementsAre("--fqdn=vm.example.org", "--trace", "--stats=5", "--log_size=65536"));
  EXPECT_THAT(Expanded({"-o", "192.0.2.10", "--outbound", "2001:db8::10", "--outbound-if4", "eth0",
                        "--freebind", "--no-map-gw"}),
              ElementsAre("--outbound_if4=eth0", "--freebind", "--no_map_gw",
                          "--outbound=192.0.2.10,2001:db8::10"));
  EXPECT_THAT(Expanded({"--repair-path", "none", "--migrate-exit", "--migrate-no-linger"}),
              ElementsAre("--repair_path=none", "--migrate_exit", "--migrate_no_linger"));
  // -S keeps its spaces: each value is a list.
  EXPECT_THAT(Expanded({"-S", "a.example b.example", "-S", "c.example"}),
              ElementsAre("--search=a.example b.example\nc.example"));
}

TEST(ExpandArgs, PastasOwnOptionsAreRefusedByName) {
  for (const char* opt : {"--netns", "--userns", "--netns-only", "--no-netns-quit", "--config-net",
                          "--no-copy-routes", "--no-copy-addrs", "--ns-mac-addr", "--no-splice",
                          "--splice-only", "--host-lo-to-ns-lo", "--dhcp-dns", "--dhcp-search",
                          "--tcp-ns", "--udp-ns", "--ns-ifname", "-T", "-U", "-I"}) {
    EXPECT_THAT(ExpandError({opt, "x"}), HasSubstr("is pasta's")) << opt;
  }
  EXPECT_THAT(ExpandError({"-fT"}), HasSubstr("option '-T' is pasta's"));
}

TEST(ExpandArgs, EmptyValuesAreRefused) {
  EXPECT_EQ(ExpandError({"-c", ""}), "option '-c' needs a value");
  EXPECT_EQ(ExpandError({"--fqdn", ""}), "option '--fqdn' needs a value");
  EXPECT_EQ(ExpandError({"--log-size="}), "option '--log-size' needs a value");
}

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

TEST_F(OptionsFromFlagsTest, TcpReorderBytes) {
  EXPECT_FALSE(OptionsFromFlags()->tcp_reorder_bytes.has_value());  // The translator's default.
  for (const auto& [text, bytes] :
       std::vector<std::pair<const char*, uint64_t>>{{"0", 0},
                                                     {"65536", 65536},
                                                     {"64K", 65536},
                                                     {"32M", uint64_t{32} << 20},
                                                     {"1g", uint64_t{1} << 30}}) {
    FLAGS_tcp_reorder_bytes = text;
    absl::StatusOr<CliOptions> o = OptionsFromFlags();
    ASSERT_TRUE(o.ok()) << text << ": " << o.status();
    EXPECT_EQ(o->tcp_reorder_bytes, bytes) << text;
  }
  for (const char* bad : {"x", "-1", "65535", "63K", "1025M", "2G", "1T", "M", " 1M", "1.5M",
                          "0x10000", "99999999999G"}) {
    FLAGS_tcp_reorder_bytes = bad;
    absl::StatusOr<CliOptions> o = OptionsFromFlags();
    ASSERT_FALSE(o.ok()) << bad;
    EXPECT_THAT(o.status().message(),
                HasSubstr("--tcp-reorder-bytes: not 0 (no pool) or a size from 65536 to "
                          "1073741824 bytes"))
        << bad;
    EXPECT_THAT(o.status().message(), HasSubstr(bad));
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
  FLAGS_search = "a.example b.example";
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

// One line naming the option, for each malformed value.
void ExpectRefused(const std::string& want) {
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_FALSE(o.ok()) << "accepted; wanted: " << want;
  EXPECT_THAT(o.status().message(), HasSubstr(want));
  EXPECT_EQ(std::string(o.status().message()).find('\n'), std::string::npos);
}

TEST_F(OptionsFromFlagsTest, PortSpecsParsedWithPasstsMeaning) {
  // What libvirt passes for <portForward>s with ranges and one without.
  FLAGS_tcp_ports = "%lo/all\n2222:22,3000-3010:4000-4010,~3005";
  FLAGS_udp_ports = "127.0.0.1/5000-5003,~5001-5002";
  FLAGS_freebind = true;
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_GE(o->tcp_ports.size(), 4u);
  EXPECT_EQ(o->tcp_ports[1].host_port, 3000);
  EXPECT_EQ(o->tcp_ports[1].count, 5u);
  EXPECT_EQ(o->tcp_ports[2].host_port, 3006);
  EXPECT_EQ(o->tcp_ports[2].guest_port, 4006);
  // "all" yields to the others: listed (and bound) after them.
  EXPECT_FALSE(o->tcp_ports[0].weak);
  EXPECT_TRUE(o->tcp_ports[3].weak);
  EXPECT_EQ(o->tcp_ports[3].ifname, "lo");
  EXPECT_EQ(o->tcp_ports[3].host_port, 1);
  ASSERT_EQ(o->udp_ports.size(), 2u);
  EXPECT_TRUE(o->udp_ports[0].freebind);
  EXPECT_EQ(o->udp_ports[1].host_port, 5003);
}

TEST_F(OptionsFromFlagsTest, MalformedPortSpecs) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"0", "forwarding spec '0'"},
      {"65536", "forwarding spec '65536'"},
      {"90-80", "forwarding spec '90-80'"},
      {"~", "'~' needs a port"},
      {"80,~", "'~' needs a port"},
      {"8000-8010,8005", "overlap"},
      {"8080\n8000-8100", "forwarding specs '8080' and '8000-8100' overlap"},
      {"8080\nnone", "-t none: conflicts"},
      {"all,80", "'all' stands alone"},
      {"300.1.2.3/80", "'300.1.2.3' is not an IPv4 or IPv6 address"},
      {"%/80", "not an interface name"},
      {"%0123456789abcdef/80", "not an interface name"},
      {"8000-8010:80", "host and guest ranges differ in size"},
      {"~1-65535", "every port is excluded"},
  };
  for (const auto& [spec, want] : cases) {
    FLAGS_tcp_ports = spec;
    ExpectRefused(want);
  }
  FLAGS_tcp_ports = "";
  FLAGS_udp_ports = "53\n53";
  ExpectRefused("-u: forwarding specs '53' and '53' overlap");
  // Different addresses of one version, or of two: no overlap.
  FLAGS_udp_ports = "127.0.0.1/53\n127.0.0.2/53\n::1/53\nnone";
  ExpectRefused("-u none: conflicts");
  FLAGS_udp_ports = "none\n127.0.0.1/53\n127.0.0.2/53\n::1/53";
  EXPECT_TRUE(OptionsFromFlags().ok());
}

TEST_F(OptionsFromFlagsTest, InheritedSocket) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  FLAGS_fd = std::to_string(sv[0]);
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->inherited_fd, sv[0]);
  EXPECT_TRUE(o->one_off);              // As passt's --fd.
  EXPECT_TRUE(o->socket_path.empty());  // No path of ours.
  FLAGS_socket = "/tmp/x.sock";
  ExpectRefused("-F/--fd and -s/--socket exclude each other");
  FLAGS_socket = "";
  for (const char* bad : {"x", "-3", "1", "2", "99999999999"}) {
    FLAGS_fd = bad;
    ExpectRefused("-F/--fd");
  }
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  FLAGS_fd = std::to_string(pipefd[0]);
  ExpectRefused("not a socket");
  const int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  FLAGS_fd = std::to_string(udp);
  ExpectRefused("not a UNIX domain socket");
  const int dgram = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  FLAGS_fd = std::to_string(dgram);
  ExpectRefused("not a stream socket");
  close(pipefd[1]);
  FLAGS_fd = std::to_string(pipefd[1]);  // Closed.
  ExpectRefused("not an open file descriptor");
  for (int fd : {sv[0], sv[1], pipefd[0], udp, dgram}) close(fd);
}

TEST_F(OptionsFromFlagsTest, HostNameAndFqdn) {
  FLAGS_hostname = "vm1";
  FLAGS_fqdn = "vm1.example.org.";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->hostname, "vm1");
  EXPECT_EQ(o->fqdn, "vm1.example.org.");
  FLAGS_fqdn = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') +
               "." + std::string(61, 'd');  // 253 characters: 255 octets, DNS's most.
  EXPECT_TRUE(OptionsFromFlags().ok());
  FLAGS_fqdn += "d";
  ExpectRefused("--fqdn " + FLAGS_fqdn + ": longer than DNS allows");
  FLAGS_fqdn = std::string(64, 'a') + ".org";
  ExpectRefused("a label is longer than DNS allows");
  FLAGS_fqdn = "a..org";
  ExpectRefused("--fqdn a..org: an empty label");
  FLAGS_fqdn = "";
  for (const char* bad : {"vm 1", "-vm", "vm;reboot", "$(id)", "vm/1"}) {
    FLAGS_hostname = bad;
    ExpectRefused(std::string("-H/--hostname ") + bad + ": not a host name");
  }
}

TEST_F(OptionsFromFlagsTest, SearchListsAndMtuZero) {
  FLAGS_search = "a.example b.example\nc.example";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->overrides.search, ElementsAre("a.example", "b.example", "c.example"));
  FLAGS_search = "a.example\nnone";  // passt: none clears what came before.
  o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->overrides.search, ElementsAre("none"));
  FLAGS_search = "none\nb.example";
  EXPECT_THAT(OptionsFromFlags()->overrides.search, ElementsAre("none", "b.example"));
  FLAGS_search = "a.example none";
  ExpectRefused("none stands alone");
  FLAGS_search = "bad..example";
  ExpectRefused("-S/--search bad..example: not a domain name");
  FLAGS_search = "";
  FLAGS_mtu = "0";
  o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->advertise_mtu);
  EXPECT_FALSE(o->overrides.mtu.has_value());
}

TEST_F(OptionsFromFlagsTest, OutboundAndDestinations) {
  FLAGS_outbound = "127.0.0.1,fd00::10";
  FLAGS_outbound_if4 = "lo";
  FLAGS_map_host_loopback = "192.0.2.1,fd00::1";
  FLAGS_map_guest_addr = "192.0.2.2";
  FLAGS_dns_forward = "192.0.2.53,fd00::53";
  FLAGS_dns_host = "127.0.0.53";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->outbound.addr4.has_value() && o->outbound.addr6.has_value());
  EXPECT_EQ(o->outbound.ifname4, "lo");
  const net::DestinationMap& d = o->destinations;
  EXPECT_TRUE(d.map_gateway);
  EXPECT_TRUE(d.host_loopback4 && d.host_loopback6 && d.guest_addr4 && !d.guest_addr6);
  EXPECT_TRUE(d.dns_forward4 && d.dns_forward6 && d.dns_host4 && !d.dns_host6);
  EXPECT_TRUE(d.customized());
  // "none" clears both versions; for --map-host-loopback it is --no-map-gw.
  FLAGS_map_host_loopback = "192.0.2.1,none";
  o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->destinations.map_gateway);
  EXPECT_FALSE(o->destinations.host_loopback4.has_value());
  FLAGS_map_host_loopback = "";
  FLAGS_no_map_gw = true;
  EXPECT_FALSE(OptionsFromFlags()->destinations.map_gateway);

  const std::vector<std::tuple<std::string*, std::string, std::string>> bad = {
      {&FLAGS_outbound, "0.0.0.0", "-o/--outbound 0.0.0.0: not a unicast address"},
      {&FLAGS_outbound, "::1", "-o/--outbound ::1"},
      {&FLAGS_outbound, "::ffff:1.2.3.4", "-o/--outbound ::ffff:1.2.3.4"},
      {&FLAGS_outbound, "eth0", "-o/--outbound eth0: not an IPv4 or IPv6 address"},
      {&FLAGS_outbound_if4, "nosuch0", "--outbound-if4 nosuch0: no such interface"},
      {&FLAGS_outbound_if6, "a/b", "--outbound-if6 a/b: not an interface name"},
      {&FLAGS_outbound_if6, "0123456789abcdef", "--outbound-if6 0123456789abcdef"},
      {&FLAGS_map_host_loopback, "127.0.0.1", "--map-host-loopback 127.0.0.1"},
      {&FLAGS_map_guest_addr, "ff02::1", "--map-guest-addr ff02::1"},
      {&FLAGS_map_guest_addr, "1.2.3", "--map-guest-addr 1.2.3: not an IPv4 or IPv6"},
      {&FLAGS_dns_forward, "127.0.0.53", "--dns-forward 127.0.0.53"},
      {&FLAGS_dns_forward, "255.255.255.255", "--dns-forward 255.255.255.255"},
      {&FLAGS_dns_host, "::", "--dns-host ::: not a unicast address"},
      {&FLAGS_dns_host, "none", "--dns-host none: not an IPv4 or IPv6 address"},
  };
  for (const auto& [flag, value, want] : bad) {
    const std::string saved = *flag;
    *flag = value;
    ExpectRefused(want);
    *flag = saved;
  }
}

TEST_F(OptionsFromFlagsTest, LoggingStatsAndPasstsNoOps) {
  EXPECT_EQ(OptionsFromFlags()->log_size, kDefaultLogSize);
  FLAGS_log_size = "65536";
  EXPECT_EQ(OptionsFromFlags()->log_size, 65536u);
  FLAGS_log_size = "0x10000";  // passt reads it with strtol(..., 0).
  EXPECT_EQ(OptionsFromFlags()->log_size, 65536u);
  for (const char* bad : {"0", "4095", "-1", "1k", "", "0x", "1099511627777"}) {
    FLAGS_log_size = bad;
    if (*bad == '\0') continue;  // ExpandArgs refuses empty values.
    ExpectRefused("--log-size");
  }
  FLAGS_log_size = "";
  FLAGS_trace = true;
  EXPECT_EQ(OptionsFromFlags()->log_level, LogLevel::kDebug);
  FLAGS_quiet = true;
  ExpectRefused("-q and --trace");
  FLAGS_quiet = false;
  FLAGS_trace = false;
  FLAGS_stats = "10";
  ExpectRefused("--stats: counters go to the terminal: needs -f/--foreground");
  FLAGS_foreground = true;
  EXPECT_EQ(OptionsFromFlags()->stats_interval, 10);
  for (const char* bad : {"0", "x", "86401"}) {
    FLAGS_stats = bad;
    ExpectRefused("--stats");
  }
}

TEST_F(OptionsFromFlagsTest, ConfAndMigrationPaths) {
  FLAGS_socket = "/run/vunet/a.sock";
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->migration.repair_path, "/run/vunet/a.sock.repair");  // passt's default.
  EXPECT_FALSE(o->migration.exit_after || o->migration.no_linger);
  FLAGS_repair_path = "none";
  EXPECT_TRUE(OptionsFromFlags()->migration.repair_path.empty());
  FLAGS_repair_path = "/run/vunet/r.sock";
  FLAGS_migrate_exit = true;
  FLAGS_migrate_no_linger = true;
  FLAGS_conf_path = "/run/vunet/c.sock";
  o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->migration.repair_path, "/run/vunet/r.sock");
  EXPECT_TRUE(o->migration.exit_after && o->migration.no_linger);
  EXPECT_EQ(o->conf_path, "/run/vunet/c.sock");
  FLAGS_repair_path = "/" + std::string(120, 'r');
  ExpectRefused("--repair-path: not a socket path");
  FLAGS_repair_path = "";
  // A socket path too long for ".repair" to fit a socket address: none.
  FLAGS_socket = "/" + std::string(sizeof(sockaddr_un{}.sun_path) - 5, 's');
  o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->migration.repair_path.empty());
  FLAGS_socket = "";
  FLAGS_conf_path = "/" + std::string(120, 'c');
  ExpectRefused("-c/--conf-path: not a socket path");
}

// --fd: no socket path, so no repair socket unless --repair-path names one.
TEST_F(OptionsFromFlagsTest, InheritedSocketHasNoDefaultRepairPath) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  FLAGS_fd = std::to_string(pair[0]);
  absl::StatusOr<CliOptions> o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->socket_path.empty());
  EXPECT_TRUE(o->migration.repair_path.empty());
  FLAGS_repair_path = "/run/vunet/r.sock";
  o = OptionsFromFlags();
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->migration.repair_path, "/run/vunet/r.sock");
  FLAGS_repair_path = "";
  FLAGS_fd = "";
  close(pair[0]);
  close(pair[1]);
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
