#include "tools/vu_frontend/loss.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace vunet::vu_frontend {
namespace {

constexpr std::pair<const char*, uint8_t> kClassNames[] = {
    {"tcp-data", kFrameTcpData}, {"tcp-ack", kFrameTcpAck}, {"udp", kFrameUdp},
    {"other-ip", kFrameOtherIp}, {"non-ip", kFrameNonIp},
};
constexpr std::pair<const char*, uint8_t> kFilterNames[] = {
    {"all", kFilterAll},
    {"ip", kFilterIp},
    {"tcp", kFilterTcp},
};

// SplitMix64: a 64-bit state advanced by a constant, mixed on the way out.
uint64_t NextRandom(uint64_t& state) {
  state += 0x9e3779b97f4a7c15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) from the top 53 bits.
double NextUniform(uint64_t& state) {
  return static_cast<double>(NextRandom(state) >> 11) * 0x1p-53;
}

absl::Status Bad(absl::string_view rule, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("loss rule \"", rule, "\": ", why));
}

// A positive whole number.
bool ParseCount(absl::string_view text, uint64_t* value) {
  return absl::SimpleAtoi(text, value) && *value > 0;
}

}  // namespace

FrameClass ClassOf(const FrameInfo& info) {
  if (info.is_tcp()) return info.payload_size > 0 ? kFrameTcpData : kFrameTcpAck;
  if (info.is_udp()) return kFrameUdp;
  if (info.ip_version != 0) return kFrameOtherIp;
  return kFrameNonIp;
}

absl::StatusOr<uint8_t> ParseLossFilter(absl::string_view text) {
  uint8_t filter = 0;
  for (absl::string_view name : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    name = absl::StripAsciiWhitespace(name);
    bool known = false;
    for (const auto& [known_name, bits] : kFilterNames) {
      if (name == known_name) {
        filter |= bits;
        known = true;
      }
    }
    for (const auto& [known_name, bits] : kClassNames) {
      if (name == known_name) {
        filter |= bits;
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("loss filter: unknown frame class \"", name,
                       "\" (tcp-data, tcp-ack, tcp, udp, other-ip, ip, non-ip, all)"));
    }
  }
  if (filter == 0) return absl::InvalidArgumentError("loss filter: no frame class");
  return filter;
}

std::string LossFilterNames(uint8_t filter) {
  std::vector<std::string> names;
  for (const auto& [name, bits] : kFilterNames) {
    if ((filter & bits) == bits) {
      names.push_back(name);
      filter &= ~bits;
    }
  }
  for (const auto& [name, bits] : kClassNames) {
    if ((filter & bits) != 0) names.push_back(name);
  }
  if (names.empty()) return "none";
  return absl::StrJoin(names, ",");
}

bool LossSpec::reorders() const {
  for (const LossRule& rule : rules) {
    if (rule.kind == LossRule::Kind::kReorder) return true;
  }
  return false;
}

absl::StatusOr<LossSpec> ParseLossSpec(absl::string_view text, uint8_t filter) {
  LossSpec spec;
  spec.filter = filter;
  text = absl::StripAsciiWhitespace(text);
  if (text.empty() || text == "none") return spec;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    const std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    const absl::string_view kind = parts[0];
    LossRule rule;
    if (kind == "nth" || kind == "every" || kind == "after") {
      if (parts.size() != 2) return Bad(item, absl::StrCat("wants ", kind, ":N"));
      uint64_t n;
      if (!ParseCount(parts[1], &n)) return Bad(item, "N must be a whole number from 1");
      if (kind == "after") {
        spec.after = n;
        continue;
      }
      rule.kind = kind == "nth" ? LossRule::Kind::kNth : LossRule::Kind::kEvery;
      rule.n = n;
    } else if (kind == "burst" || kind == "reorder") {
      if (parts.size() != 3) {
        return Bad(item, kind == "burst" ? "wants burst:N:K" : "wants reorder:N:D");
      }
      if (!ParseCount(parts[1], &rule.n) || !ParseCount(parts[2], &rule.count)) {
        return Bad(item, "both numbers must be whole numbers from 1");
      }
      rule.kind = kind == "burst" ? LossRule::Kind::kBurst : LossRule::Kind::kReorder;
    } else if (kind == "random") {
      if (parts.size() != 2 && parts.size() != 3) return Bad(item, "wants random:P[:seed=S]");
      rule.kind = LossRule::Kind::kRandom;
      if (!absl::SimpleAtod(parts[1], &rule.rate) || !(rule.rate >= 0 && rule.rate <= 1)) {
        return Bad(item, "P must be a probability from 0 to 1");
      }
      if (parts.size() == 3) {
        absl::string_view seed = parts[2];
        if (!absl::ConsumePrefix(&seed, "seed=") || !absl::SimpleAtoi(seed, &rule.seed)) {
          return Bad(item, "the third part must be seed=S (a whole number)");
        }
      }
    } else {
      return Bad(item, "unknown (nth, burst, every, reorder, random, after)");
    }
    spec.rules.push_back(rule);
  }
  return spec;
}

std::string LossSpecString(const LossSpec& spec) {
  std::vector<std::string> items;
  if (spec.after != 0) items.push_back(absl::StrCat("after:", spec.after));
  for (const LossRule& rule : spec.rules) {
    switch (rule.kind) {
      case LossRule::Kind::kNth:
        items.push_back(absl::StrCat("nth:", rule.n));
        break;
      case LossRule::Kind::kBurst:
        items.push_back(absl::StrCat("burst:", rule.n, ":", rule.count));
        break;
      case LossRule::Kind::kEvery:
        items.push_back(absl::StrCat("every:", rule.n));
        break;
      case LossRule::Kind::kReorder:
        items.push_back(absl::StrCat("reorder:", rule.n, ":", rule.count));
        break;
      case LossRule::Kind::kRandom:
        items.push_back(absl::StrFormat("random:%g:seed=%d", rule.rate, rule.seed));
        break;
    }
  }
  if (items.empty()) return "none";
  return absl::StrCat(absl::StrJoin(items, ","), " (", LossFilterNames(spec.filter), ")");
}

std::string LossCountersString(const LossCounters& c) {
  return absl::StrFormat(
      "%d of %d frames dropped (nth %d, burst %d, every %d, random %d), %d held back (%d after "
      "their frames, %d by timeout, %d not held)",
      c.dropped, c.frames, c.dropped_nth, c.dropped_burst, c.dropped_every, c.dropped_random,
      c.held, c.released_by_count, c.released_by_timeout, c.not_held);
}

LossInjector::LossInjector(const LossSpec& spec) : spec_(spec) {
  for (const LossRule& rule : spec_.rules) {
    if (rule.kind == LossRule::Kind::kRandom) random_state_.push_back(rule.seed);
  }
}

LossInjector::Decision LossInjector::Next(FrameClass frame_class) {
  if (spec_.empty() || !Selects(frame_class)) return {};
  ++counters_.frames;
  if (counters_.frames <= spec_.after) return {};
  const uint64_t i = counters_.frames - spec_.after;
  // The deciding drop rule, by precedence: nth, burst, every, random.
  int dropped_by = -1;
  uint64_t hold_for = 0;
  size_t random_index = 0;
  for (const LossRule& rule : spec_.rules) {
    int by = -1;
    switch (rule.kind) {
      case LossRule::Kind::kNth:
        if (i == rule.n) by = 0;
        break;
      case LossRule::Kind::kBurst:
        if (i >= rule.n && i - rule.n < rule.count) by = 1;
        break;
      case LossRule::Kind::kEvery:
        if (i % rule.n == 0) by = 2;
        break;
      case LossRule::Kind::kRandom:
        if (NextUniform(random_state_[random_index++]) < rule.rate) by = 3;
        break;
      case LossRule::Kind::kReorder:
        if (i == rule.n && rule.count > hold_for) hold_for = rule.count;
        break;
    }
    if (by >= 0 && (dropped_by < 0 || by < dropped_by)) dropped_by = by;
  }
  if (dropped_by >= 0) {
    ++counters_.dropped;
    uint64_t* const by_kind[] = {&counters_.dropped_nth, &counters_.dropped_burst,
                                 &counters_.dropped_every, &counters_.dropped_random};
    ++*by_kind[dropped_by];
    return {.action = Action::kDrop};
  }
  if (hold_for > 0) {
    ++counters_.held;
    return {.action = Action::kHold, .hold_for = hold_for};
  }
  return {};
}

void LossInjector::CountRelease(bool by_timeout) {
  ++(by_timeout ? counters_.released_by_timeout : counters_.released_by_count);
}

void LossInjector::CountNotHeld() {
  --counters_.held;
  ++counters_.not_held;
}

void HeldFrames::Hold(uint32_t handle, uint32_t length, uint64_t frames, absl::Time deadline) {
  entries_.push_back(
      {.handle = handle, .length = length, .frames_left = frames, .deadline = deadline});
}

void HeldFrames::OnSent() {
  for (Entry& e : entries_) {
    if (e.frames_left > 0) --e.frames_left;
  }
}

std::optional<HeldFrames::Entry> HeldFrames::TakeDue(absl::Time now, bool* by_timeout) {
  for (int pass = 0; pass < 2; ++pass) {
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      const bool due = pass == 0 ? it->frames_left == 0 : it->deadline <= now;
      if (!due) continue;
      const Entry entry = *it;
      entries_.erase(it);
      *by_timeout = pass == 1;
      return entry;
    }
  }
  return std::nullopt;
}

absl::Time HeldFrames::next_deadline() const {
  absl::Time next = absl::InfiniteFuture();
  for (const Entry& e : entries_) next = std::min(next, e.deadline);
  return next;
}

std::vector<HeldFrames::Entry> HeldFrames::TakeAll() {
  std::vector<Entry> all;
  all.swap(entries_);
  entries_.reserve(all.capacity());
  return all;
}

}  // namespace vunet::vu_frontend
