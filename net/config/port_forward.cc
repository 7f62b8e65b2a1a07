#include "net/config/port_forward.h"

#include <arpa/inet.h>
#include <net/if.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace vunet::net {
namespace {

absl::Status Bad(const std::string& spec, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("forwarding spec '", spec, "': ", why));
}

// "N" or "N-M" with 1 <= N <= M <= 65535.
bool ParseRange(absl::string_view text, uint32_t* first, uint32_t* last) {
  const size_t dash = text.find('-');
  absl::string_view a = text.substr(0, dash);
  absl::string_view b = dash == absl::string_view::npos ? a : text.substr(dash + 1);
  uint32_t x = 0, y = 0;
  // SimpleAtoi takes a sign and spaces; a port is digits only.
  for (absl::string_view part : {a, b}) {
    if (part.empty() || part.size() > 5 ||
        part.find_first_not_of("0123456789") != absl::string_view::npos) {
      return false;
    }
  }
  if (!absl::SimpleAtoi(a, &x) || !absl::SimpleAtoi(b, &y)) return false;
  if (x < 1 || y > 65535 || x > y) return false;
  *first = x;
  *last = y;
  return true;
}

// An included range of a spec: host ports [first, last] to the guest's
// [guest_first, ...].
struct Included {
  uint32_t first = 0;
  uint32_t last = 0;
  uint32_t guest_first = 0;
  absl::string_view text;
};

}  // namespace

PortRange EphemeralPorts() {
  PortRange range{32768, 60999};
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  uint32_t first = 0, last = 0;
  if (in >> first >> last && first >= 1 && first <= last && last <= 65535) {
    range.first = static_cast<uint16_t>(first);
    range.last = static_cast<uint16_t>(last);
  }
  return range;
}

absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec) {
  return ParsePortForwards(spec, EphemeralPorts());
}

absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec,
                                                           PortRange ephemeral) {
  std::vector<PortForward> out;
  if (spec == "none") return out;
  if (spec.empty()) return Bad(spec, "empty");

  // An address or interface binding, before a '/', applies to every range.
  PortForward base;
  absl::string_view ports = spec;
  if (const size_t slash = spec.rfind('/'); slash != std::string::npos) {
    absl::string_view bind = absl::string_view(spec).substr(0, slash);
    ports = absl::string_view(spec).substr(slash + 1);
    if (const size_t pct = bind.find('%'); pct != absl::string_view::npos) {
      const absl::string_view ifname = bind.substr(pct + 1);
      bind = bind.substr(0, pct);
      if (ifname.empty() || ifname.size() >= IF_NAMESIZE || ifname == "." || ifname == ".." ||
          ifname.find_first_of(" \t\n:%/[]") != absl::string_view::npos) {
        return Bad(spec, absl::StrCat("'", ifname, "' is not an interface name"));
      }
      base.ifname = std::string(ifname);
    }
    if (bind.size() >= 2 && bind.front() == '[' && bind.back() == ']') {
      bind = bind.substr(1, bind.size() - 2);
    }
    if (!bind.empty()) {
      const std::string addr(bind);
      if (inet_pton(AF_INET, addr.c_str(), &base.bind4) == 1) {
        base.family = AF_INET;
      } else if (inet_pton(AF_INET6, addr.c_str(), &base.bind6) == 1) {
        base.family = AF_INET6;
      } else {
        return Bad(spec, absl::StrCat("'", addr, "' is not an IPv4 or IPv6 address"));
      }
    } else if (base.ifname.empty()) {
      return Bad(spec, "no address or interface before '/'");
    }
  }
  if (ports.empty()) return Bad(spec, "no ports");

  // Host ports left out: exclusions, and for "all" the ephemeral ones.
  std::vector<bool> excluded(65536, false);
  std::vector<Included> included;
  for (absl::string_view part : absl::StrSplit(ports, ',')) {
    if (part.empty()) return Bad(spec, "empty port range");
    if (part == "auto") {
      return absl::UnimplementedError(absl::StrCat(
          "forwarding spec '", spec,
          "': 'auto' (ports bound in a namespace) is pasta's; list the ports or use all"));
    }
    if (part == "all") {
      if (ports != "all") return Bad(spec, "'all' stands alone (exclude ports with ~PORT)");
      continue;
    }
    if (part[0] == '~') {
      uint32_t first = 0, last = 0;
      if (part.size() == 1) return Bad(spec, "'~' needs a port or range to exclude");
      if (!ParseRange(part.substr(1), &first, &last)) {
        return Bad(
            spec, absl::StrCat("'", part.substr(1), "' is not a port or range of ports (1-65535)"));
      }
      for (uint32_t p = first; p <= last; ++p) excluded[p] = true;
      continue;
    }
    const size_t colon = part.find(':');
    Included in;
    in.text = part;
    uint32_t host_first = 0, host_last = 0;
    if (!ParseRange(part.substr(0, colon), &host_first, &host_last)) {
      return Bad(spec, absl::StrCat("'", part, "' is not a port or range of ports (1-65535)"));
    }
    uint32_t guest_first = host_first, guest_last = host_last;
    if (colon != absl::string_view::npos) {
      absl::string_view target = part.substr(colon + 1);
      if (!ParseRange(target, &guest_first, &guest_last)) {
        return Bad(spec, absl::StrCat("'", target, "' is not a port or range of ports (1-65535)"));
      }
      // A single target port for a range would make many host ports one guest
      // port; the sizes must match, or the target be one port for one port.
      if (guest_last - guest_first != host_last - host_first) {
        return Bad(spec, absl::StrCat("'", part, "': host and guest ranges differ in size"));
      }
    }
    in.first = host_first;
    in.last = host_last;
    in.guest_first = guest_first;
    included.push_back(in);
  }
  std::sort(included.begin(), included.end(),
            [](const Included& a, const Included& b) { return a.first < b.first; });
  for (size_t i = 1; i < included.size(); ++i) {
    if (included[i].first <= included[i - 1].last) {
      return Bad(spec,
                 absl::StrCat("'", included[i - 1].text, "' and '", included[i].text, "' overlap"));
    }
  }

  const bool weak = included.empty();  // "all", or exclusions only.
  if (weak) {
    for (uint32_t p = ephemeral.first; p >= 1 && p <= ephemeral.last; ++p) excluded[p] = true;
    included.push_back(Included{.first = 1, .last = 65535, .guest_first = 1, .text = ports});
  }
  // Each included range, cut at excluded ports into maximal runs.
  for (const Included& in : included) {
    uint32_t p = in.first;
    while (p <= in.last) {
      if (excluded[p]) {
        ++p;
        continue;
      }
      uint32_t end = p;
      while (end + 1 <= in.last && !excluded[end + 1]) ++end;
      PortForward f = base;
      f.host_port = static_cast<uint16_t>(p);
      f.guest_port = static_cast<uint16_t>(in.guest_first + (p - in.first));
      f.count = end - p + 1;
      f.weak = weak;
      out.push_back(f);
      p = end + 1;
    }
  }
  if (out.empty()) return Bad(spec, "every port is excluded");
  return out;
}

bool ForwardsOverlap(const PortForward& a, const PortForward& b) {
  const uint32_t a_last = uint32_t{a.host_port} + a.count - 1;
  const uint32_t b_last = uint32_t{b.host_port} + b.count - 1;
  if (a.host_port > b_last || b.host_port > a_last) return false;
  if (!a.ifname.empty() && !b.ifname.empty() && a.ifname != b.ifname) return false;
  if (a.family == AF_UNSPEC || b.family == AF_UNSPEC) return true;
  if (a.family != b.family) return false;  // IPv6 sockets are IPv6-only here.
  if (a.family == AF_INET) {
    return a.bind4.s_addr == b.bind4.s_addr || a.bind4.s_addr == INADDR_ANY ||
           b.bind4.s_addr == INADDR_ANY;
  }
  return IN6_ARE_ADDR_EQUAL(&a.bind6, &b.bind6) || IN6_IS_ADDR_UNSPECIFIED(&a.bind6) ||
         IN6_IS_ADDR_UNSPECIFIED(&b.bind6);
}

}  // namespace vunet::net
