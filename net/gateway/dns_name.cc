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

}  // namespace vunet::net
