// The socket filter that keeps a TCP socket in repair mode from taking
// anything more from its peer while it is dumped (live migration): a classic
// BPF program that drops every segment before TCP sees it, so nothing is
// acknowledged, queued, or allowed to reopen the send window. Attached by the
// backend where the kernel lets it, else by the repair helper (some kernels
// refuse unprivileged processes socket filters: kernel.unprivileged_bpf_disabled;
// CAP_NET_ADMIN lifts it).

#ifndef VUNET_NET_REPAIR_SOCKET_FILTER_H_
#define VUNET_NET_REPAIR_SOCKET_FILTER_H_

namespace vunet::net {

// Attaches the drop-everything filter to `fd`, replacing any other. False,
// with errno set, if the kernel refused it.
bool AttachDropAllFilter(int fd);

// Whether `fd` has a socket filter attached (by anyone).
bool HasSocketFilter(int fd);

// Removes `fd`'s socket filter, if it has one.
void DetachSocketFilter(int fd);

}  // namespace vunet::net

#endif  // VUNET_NET_REPAIR_SOCKET_FILTER_H_
