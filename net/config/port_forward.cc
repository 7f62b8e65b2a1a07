#include "net/config/port_forward.h"

#include <arpa/inet.h>
#include <net/if.h>

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
  if (a.empty() || b.empty() || !absl::SimpleAtoi(a, &x) || !absl::SimpleAtoi(b, &y)) return false;
  if (x < 1 || y > 65535 || x > y) return false;
  *first = x;
  *last = y;
  return true;
}

}  // namespace

absl::StatusOr<std::vector<PortForward>> ParsePortForwards(const std::string& spec) {
  std::vector<PortForward> out;
  if (spec == "none") return out;
  if (spec == "all" || spec == "auto") {
    return absl::UnimplementedError(
        absl::StrCat("forwarding spec '", spec, "': not supported yet; list the ports"));
  }
  if (spec.empty()) return Bad(spec, "empty");

  // An address or interface binding, before a '/', applies to every range.
  PortForward base;
  absl::string_view ports = spec;
  if (const size_t slash = spec.rfind('/'); slash != std::string::npos) {
    absl::string_view bind = absl::string_view(spec).substr(0, slash);
    ports = absl::string_view(spec).substr(slash + 1);
    if (const size_t pct = bind.find('%'); pct != absl::string_view::npos) {
      base.ifname = std::string(bind.substr(pct + 1));
      bind = bind.substr(0, pct);
      if (base.ifname.empty() || base.ifname.size() >= IF_NAMESIZE) {
        return Bad(spec, "bad interface name");
      }
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
    }
  }
  if (ports.empty()) return Bad(spec, "no ports");

  for (absl::string_view part : absl::StrSplit(ports, ',')) {
    if (part.empty()) return Bad(spec, "empty port range");
    if (part[0] == '~')
      return absl::UnimplementedError(
          absl::StrCat("forwarding spec '", spec, "': excluded ports are not supported"));
    const size_t colon = part.find(':');
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
    PortForward f = base;
    f.host_port = static_cast<uint16_t>(host_first);
    f.guest_port = static_cast<uint16_t>(guest_first);
    f.count = host_last - host_first + 1;
    out.push_back(f);
  }
  return out;
}

}  // namespace vunet::net
