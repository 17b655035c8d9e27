#include "compressor/internal/sonic_allocate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>

#include "compressor/internal/methods.h"
#include "compressor/internal/sonic_fit.h"
#include "compressor/internal/sonic_ladder.h"

namespace nexuskv::compressor::internal {
namespace {

constexpr double kDroppedError = 2.0;

struct Upgrade {
  double gain = 0.0;  // weighted error reduction per entry
  size_t turn = 0;
  size_t to = 0;  // option index
  bool operator<(const Upgrade& other) const {
    // std::priority_queue pops the largest: higher gain first, then the later turn.
    return gain < other.gain || (gain == other.gain && turn < other.turn);
  }
};

// Exact multiple-choice knapsack: minimizes sum_t weight_t * error_t(choice_t) subject to
// sum_t entries_t(choice_t) <= budget, ties to fewer entries. false (nothing chosen) when the
// table would be too large (turns * (budget + 1) > kMaxDpCells).
constexpr int64_t kMaxDpCells = int64_t{1} << 24;
bool DpChoice(const std::vector<std::vector<LadderOption>>& options,
              const std::vector<double>& weight, int64_t budget, std::vector<size_t>* choice) {
  const size_t count = options.size();
  int64_t cap = 0;
  for (const auto& o : options) cap += o.back().entries;
  budget = std::min(budget, cap);
  if (count == 0 || static_cast<int64_t>(count) * (budget + 1) > kMaxDpCells) return false;
  const size_t width = static_cast<size_t>(budget) + 1;
  // best[b]: least cost of the turns so far within b entries; pick[i][b]: turn i's option there.
  std::vector<double> best(width, 0.0), next(width);
  std::vector<std::vector<uint8_t>> pick(count, std::vector<uint8_t>(width, 0));
  for (size_t i = 0; i < count; ++i) {
    const std::vector<LadderOption>& o = options[i];
    for (size_t b = 0; b < width; ++b) {
      double cost = std::numeric_limits<double>::infinity();
      uint8_t arg = 0;
      for (size_t k = 0; k < o.size() && k < 256; ++k) {
        if (o[k].entries > static_cast<int64_t>(b)) break;
        const double c = best[b - static_cast<size_t>(o[k].entries)] + weight[i] * o[k].error;
        if (c < cost - 1e-12) {
          cost = c;
          arg = static_cast<uint8_t>(k);
        }
      }
      next[b] = cost;
      pick[i][b] = arg;
    }
    best.swap(next);
  }
  size_t b = width - 1;
  for (size_t i = count; i-- > 0;) {
    (*choice)[i] = pick[i][b];
    b -= static_cast<size_t>(options[i][pick[i][b]].entries);
  }
  return true;
}

}  // namespace

std::vector<LadderOption> TurnOptions(const TurnShape& turn) {
  const int64_t t = std::max<int64_t>(turn.num_tokens, 0);
  std::vector<LadderOption> options = {{0, kDroppedError}};
  if (t == 0) return options;
  std::vector<int> rungs;
  std::vector<double> errors;
  absl::StatusOr<SonicSummary> summary = DecodeSonicSummary(turn.fit_summary);
  if (summary.ok() && summary->num_tokens == t && !summary->rungs.empty()) {
    rungs = summary->rungs;
    for (const SonicRungError& e : summary->errors) {
      const double sum = double{e.output_error} + e.log_mass_error;
      errors.push_back(std::isfinite(sum) ? sum : kDroppedError);
    }
  } else {
    rungs = SonicRungSizes(static_cast<int>(std::min<int64_t>(t, 1 << 30)));
    for (int m : rungs) errors.push_back(1.0 - static_cast<double>(m) / static_cast<double>(t));
  }
  std::vector<LadderOption> ladder;
  for (size_t k = 0; k < rungs.size(); ++k) ladder.push_back({rungs[k], errors[k]});
  std::sort(ladder.begin(), ladder.end(),
            [](const LadderOption& x, const LadderOption& y) { return x.entries < y.entries; });
  for (const LadderOption& o : ladder) {
    if (o.entries <= 0 || o.entries > t) continue;
    if (o.entries == t && turn.raw_available) continue;  // raw (error 0) replaces it below
    if (options.back().entries == o.entries) continue;
    options.push_back(o);
  }
  if (turn.raw_available) options.push_back({t, 0.0});
  return options;
}

namespace {

void GreedyChoice(const std::vector<std::vector<LadderOption>>& options,
                  const std::vector<double>& weight, int64_t left, std::vector<size_t>* out) {
  const size_t count = options.size();
  std::vector<size_t>& choice = *out;

  // The best upgrade of turn i that fits in `left`, if any.
  auto best_upgrade = [&](size_t i) -> std::optional<Upgrade> {
    const std::vector<LadderOption>& o = options[i];
    const LadderOption& now = o[choice[i]];
    std::optional<Upgrade> best;
    for (size_t k = choice[i] + 1; k < o.size(); ++k) {
      const int64_t extra = o[k].entries - now.entries;
      if (extra <= 0 || extra > left) continue;
      const double gain = weight[i] * (now.error - o[k].error) / static_cast<double>(extra);
      if (!(gain > 0.0)) continue;
      if (!best || gain > best->gain) best = Upgrade{gain, i, k};
    }
    return best;
  };

  std::priority_queue<Upgrade> queue;
  for (size_t i = 0; i < count; ++i) {
    if (auto u = best_upgrade(i)) queue.push(*u);
  }
  while (!queue.empty()) {
    const Upgrade u = queue.top();
    queue.pop();
    const int64_t extra = options[u.turn][u.to].entries - options[u.turn][choice[u.turn]].entries;
    if (extra > left) {
      // The budget shrank since this was computed: look again for what still fits.
      if (auto again = best_upgrade(u.turn)) queue.push(*again);
      continue;
    }
    choice[u.turn] = u.to;
    left -= extra;
    if (auto next = best_upgrade(u.turn)) queue.push(*next);
  }
}

std::vector<int64_t> TopUpRemainder(std::span<const TurnShape> turns,
                                    const std::vector<std::vector<LadderOption>>& options,
                                    const std::vector<double>& weight,
                                    const std::vector<size_t>& choice, int64_t budget) {
  const size_t count = turns.size();
  std::vector<int64_t> result(count);
  int64_t left = budget;
  for (size_t i = 0; i < count; ++i) {
    result[i] = options[i][choice[i]].entries;
    left -= result[i];
  }
  // Turns with stored raw KV and a chosen rung can take 1 .. (next option - rung - 1) more
  // entries as raw top-ups; the remainder goes to the steepest (weighted error per entry, the
  // next option's error linearly interpolated) first, ties to the later turn.
  std::vector<std::pair<double, size_t>> slopes;
  for (size_t i = 0; i < count; ++i) {
    const std::vector<LadderOption>& o = options[i];
    if (!turns[i].raw_available || choice[i] == 0 || choice[i] + 1 >= o.size()) continue;
    const LadderOption& now = o[choice[i]];
    const LadderOption& next = o[choice[i] + 1];
    slopes.push_back(
        {weight[i] * (now.error - next.error) / static_cast<double>(next.entries - now.entries),
         i});
  }
  std::stable_sort(slopes.begin(), slopes.end(), [](const auto& x, const auto& y) {
    return x.first > y.first || (x.first == y.first && x.second > y.second);
  });
  for (const auto& [slope, i] : slopes) {
    if (left <= 0 || !(slope > 0.0)) break;
    const int64_t room = options[i][choice[i] + 1].entries - result[i] - 1;
    const int64_t give = std::min(room, left);
    result[i] += give;
    left -= give;
  }
  return result;
}

}  // namespace

std::vector<int64_t> AllocateOnLadders(std::span<const TurnShape> turns, int64_t budget) {
  const size_t count = turns.size();
  std::vector<std::vector<LadderOption>> options(count);
  std::vector<double> weight(count);
  for (size_t i = 0; i < count; ++i) {
    options[i] = TurnOptions(turns[i]);
    const double age = static_cast<double>(count - 1 - i);
    weight[i] =
        static_cast<double>(std::max<int64_t>(turns[i].num_tokens, 0)) * (1.0 + std::exp2(-age));
  }
  std::vector<size_t> choice(count, 0);
  int64_t left = std::max<int64_t>(budget, 0);
  if (!DpChoice(options, weight, left, &choice)) GreedyChoice(options, weight, left, &choice);
  return TopUpRemainder(turns, options, weight, choice, left);
}

std::vector<int64_t> AllocateSonic(std::span<const TurnShape> turns, int64_t budget,
                                   double summary_share) {
  const size_t count = turns.size();
  int64_t total = 0;
  for (const TurnShape& t : turns) total += std::max<int64_t>(t.num_tokens, 0);
  const int64_t b = std::max<int64_t>(budget, 0);
  if (total == 0) return std::vector<int64_t>(count, 0);

  // Largest rung of a turn without raw KV that is at most `n` (else its smallest).
  auto rung_at_most = [&](size_t i, int64_t n) {
    const std::vector<LadderOption> options = TurnOptions(turns[i]);
    int64_t best = options.size() > 1 ? options[1].entries : 0;
    for (const LadderOption& o : options) {
      if (o.entries <= n) best = std::max(best, o.entries);
    }
    return best;
  };

  // 1. A summary of every turn, in proportion to its length (the session's first turn at least
  //    kSinkTokens entries: its attention sinks); a turn without raw KV lands on a rung. The
  //    summaries' share of the budget shrinks with the budget: the smaller it is, the more the
  //    recent tokens are worth.
  const double keep = std::min(1.0, static_cast<double>(b) / static_cast<double>(total));
  const double share = summary_share * keep;
  std::vector<int64_t> result(count, 0);
  int64_t used = 0;
  for (size_t i = 0; i < count && share > 0.0; ++i) {
    const int64_t t = std::max<int64_t>(turns[i].num_tokens, 0);
    if (t == 0) continue;
    int64_t f = std::max<int64_t>(
        1, std::llround(share * static_cast<double>(b) * static_cast<double>(t) /
                        static_cast<double>(total)));
    if (turns[i].session_start) f = std::max<int64_t>(f, kSinkTokens);
    f = std::min(f, t);
    if (!turns[i].raw_available) f = rung_at_most(i, f);
    result[i] = f;
    used += f;
  }
  if (used > b) return AllocateOnLadders(turns, budget);

  // 2. The rest newest first, raw: each turn grows to all its tokens (served raw) before an older
  //    one gets more; a turn left partial is its summary rung topped up with raw tokens.
  int64_t left = b - used;
  for (size_t i = count; i-- > 0 && left > 0;) {
    if (!turns[i].raw_available) continue;
    const int64_t give = std::min(left, turns[i].num_tokens - result[i]);
    result[i] += give;
    left -= give;
  }
  // 3. Turns without raw KV climb their ladders with what is left, newest first.
  for (size_t i = count; i-- > 0 && left > 0;) {
    if (turns[i].raw_available) continue;
    const int64_t next = rung_at_most(i, result[i] + left);
    if (next > result[i]) {
      left -= next - result[i];
      result[i] = next;
    }
  }
  return result;
}

}  // namespace nexuskv::compressor::internal
