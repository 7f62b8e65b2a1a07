// Loss and reordering injected into one direction of a frontend's frames,
// for tests and benchmarks of how a backend (and the guest's stack behind
// it) copes: deterministic patterns and seeded random loss.
//
// A spec is a comma-separated list of rules; frames are counted from 1
// among those the filter selects (the others pass untouched and uncounted):
//   nth:N               drop frame N
//   burst:N:K           drop K frames from frame N on
//   every:N             drop every Nth frame (N, 2N, 3N, ...)
//   reorder:N:D         hold frame N back until D later frames went (or the
//                       holder's timeout passed), then send it
//   random:P[:seed=S]   drop each frame with probability P (0 to 1), drawn
//                       from a generator seeded with S (default 1): the same
//                       spec drops the same frames of the same stream
//   after:N             the rules above count from frame N + 1 on: the first
//                       N frames pass (a handshake, a warm-up)
// Rules combine: a frame is dropped if any drop rule says so (every random
// rule draws once per counted frame whatever the others decide, so adding a
// rule does not change which frames a random one picks), else held back if
// a reorder rule says so. "" and "none" are no rules. Examples:
// "nth:500", "burst:1000:10", "every:100", "reorder:200:3",
// "random:0.01:seed=7", "after:1000,random:0.001,reorder:5000:2".
//
// A filter is a comma-separated list of frame classes: tcp-data (TCP with
// payload), tcp-ack (TCP without: SYN, FIN, RST, pure ACKs), tcp (both),
// udp, ip (any IPv4 or IPv6, ARP excluded), all. A segmentation-offloaded
// frame is one frame here: dropping it drops every segment it stands for.
//
// Pure logic, no I/O: the caller (vu_frontend::Frontend) classifies frames,
// holds what is to be held (HeldFrames) and counts.

#ifndef VUNET_TOOLS_VU_FRONTEND_LOSS_H_
#define VUNET_TOOLS_VU_FRONTEND_LOSS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tools/vu_frontend/net_header.h"

namespace vunet::vu_frontend {

// Classes of frames, as bits of a filter.
enum FrameClass : uint8_t {
  kFrameTcpData = 1,
  kFrameTcpAck = 2,
  kFrameUdp = 4,
  kFrameOtherIp = 8,  // IPv4/IPv6 that is neither TCP nor UDP (ICMP, fragments).
  kFrameNonIp = 16,   // ARP and anything else.
};
inline constexpr uint8_t kFilterTcp = kFrameTcpData | kFrameTcpAck;
inline constexpr uint8_t kFilterIp = kFilterTcp | kFrameUdp | kFrameOtherIp;
inline constexpr uint8_t kFilterAll = kFilterIp | kFrameNonIp;

FrameClass ClassOf(const FrameInfo& info);
// "tcp,udp" -> kFilterTcp | kFrameUdp; kInvalidArgument for an unknown name
// or an empty list.
absl::StatusOr<uint8_t> ParseLossFilter(absl::string_view text);
std::string LossFilterNames(uint8_t filter);

struct LossRule {
  enum class Kind : uint8_t { kNth, kBurst, kEvery, kReorder, kRandom };
  Kind kind = Kind::kNth;
  uint64_t n = 0;      // nth, burst, reorder: the frame; every: the period.
  uint64_t count = 0;  // burst: frames dropped; reorder: frames to wait.
  double rate = 0;     // random.
  uint64_t seed = 1;   // random.
};

struct LossSpec {
  std::vector<LossRule> rules;
  uint64_t after = 0;
  uint8_t filter = kFilterAll;

  bool empty() const { return rules.empty(); }
  bool reorders() const;
};

// Parses a spec (above) with `filter`. kInvalidArgument, naming the rule,
// for anything else: unknown rules, numbers that do not parse, N or D of 0,
// a rate outside [0, 1].
absl::StatusOr<LossSpec> ParseLossSpec(absl::string_view text, uint8_t filter = kFilterAll);
// The spec in the syntax above, and its filter: "random:0.01:seed=1 (tcp)".
std::string LossSpecString(const LossSpec& spec);

struct LossCounters {
  uint64_t frames = 0;         // Frames the filter selected.
  uint64_t dropped = 0;        // By any rule; each dropped frame once.
  uint64_t dropped_nth = 0;    // By the rule that decided (nth, then burst,
  uint64_t dropped_burst = 0;  // every, random, in that order, when several
  uint64_t dropped_every = 0;  // matched).
  uint64_t dropped_random = 0;
  uint64_t held = 0;                 // Held back by a reorder rule.
  uint64_t released_by_count = 0;    // Sent after their D frames.
  uint64_t released_by_timeout = 0;  // Sent when the timeout passed first.
  uint64_t not_held = 0;             // Sent at once: no room to hold them.
};
// "1234 of 120000 frames dropped (nth 1, burst 10, every 0, random 1223),
// 1 held back (1 after D frames, 0 by timeout, 0 not held)".
std::string LossCountersString(const LossCounters& counters);

class LossInjector {
 public:
  enum class Action : uint8_t { kPass, kDrop, kHold };
  struct Decision {
    Action action = Action::kPass;
    uint64_t hold_for = 0;  // kHold: frames to wait.
  };

  LossInjector() = default;
  explicit LossInjector(const LossSpec& spec);

  bool active() const { return !spec_.empty(); }
  const LossSpec& spec() const { return spec_; }
  bool Selects(FrameClass frame_class) const { return (spec_.filter & frame_class) != 0; }

  // The fate of the next frame, of class `frame_class` (frames the filter
  // does not select pass and are not counted). Counts drops and holds.
  Decision Next(FrameClass frame_class);

  // The holder reports how held frames went out, and frames it could not
  // hold (sent at once, counted as such).
  void CountRelease(bool by_timeout);
  void CountNotHeld();

  const LossCounters& counters() const { return counters_; }

 private:
  LossSpec spec_;
  std::vector<uint64_t> random_state_;  // Per random rule, in rule order.
  LossCounters counters_;
};

// Frames held back by reorder rules, by the holder's handle for each (a
// transmit slot, a copy buffer). A held frame is due once `frames` frames
// of its direction went after it, or at its deadline. Fixed capacity,
// allocated at construction.
class HeldFrames {
 public:
  struct Entry {
    uint32_t handle = 0;
    uint32_t length = 0;  // The holder's, for its own use.
    uint64_t frames_left = 0;
    absl::Time deadline;
  };

  explicit HeldFrames(size_t capacity = 0) { entries_.reserve(capacity); }

  size_t capacity() const { return entries_.capacity(); }
  size_t size() const { return entries_.size(); }
  bool full() const { return entries_.size() == entries_.capacity(); }
  bool empty() const { return entries_.empty(); }

  // Holds a frame (not full(): the caller checks).
  void Hold(uint32_t handle, uint32_t length, uint64_t frames, absl::Time deadline);
  // A frame of the direction went out: one fewer to wait for, for each.
  void OnSent();
  // Takes the longest-held due entry: one whose frames have gone, else one
  // whose deadline is at or before `now`; nullopt if none is due. `*by_timeout`
  // says which.
  std::optional<Entry> TakeDue(absl::Time now, bool* by_timeout);
  // The earliest deadline; InfiniteFuture when nothing is held.
  absl::Time next_deadline() const;
  // Takes every entry, oldest first (a ring reset).
  std::vector<Entry> TakeAll();

 private:
  std::vector<Entry> entries_;  // Oldest first.
};

}  // namespace vunet::vu_frontend

#endif  // VUNET_TOOLS_VU_FRONTEND_LOSS_H_
