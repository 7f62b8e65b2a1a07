#include "net/gateway/dns_name.h"

#include <algorithm>
#include <cstddef>

namespace vunet::net {

bool AppendDnsName(std::string_view name, std::vector<uint8_t>* out) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return false;
  std::vector<uint8_t> wire;
  while (true) {
    const size_t dot = std::min(name.find('.'), name.size());
    if (dot == 0 || dot > 63) return false;
    wire.push_back(static_cast<uint8_t>(dot));
    wire.insert(wire.end(), name.begin(), name.begin() + static_cast<ptrdiff_t>(dot));
    if (dot == name.size()) break;
    name.remove_prefix(dot + 1);
  }
  wire.push_back(0);
  out->insert(out->end(), wire.begin(), wire.end());
  return true;
}

bool IsHostName(std::string_view name) {
  std::vector<uint8_t> wire;
  if (!AppendDnsName(name, &wire)) return false;
  if (name.back() == '.') name.remove_suffix(1);
  size_t label_start = 0;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == '.') {
      if (name[label_start] == '-' || name[i - 1] == '-') return false;
      label_start = i + 1;
      continue;
    }
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace vunet::net
