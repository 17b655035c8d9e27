#include "compressor/testing/history_eval.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tensor/dtype.h"
#include "tensor/safetensors.h"

namespace nexuskv::compressor::testing {
namespace {

absl::StatusOr<int> MetaInt(const SafetensorsFile& file, const std::string& key) {
  auto it = file.metadata().find(key);
  int value = 0;
  if (it == file.metadata().end() || !absl::SimpleAtoi(it->second, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata ", key, " is missing or not a number"));
  }
  return value;
}

// Parses a JSON list of integers such as "[0, 21, 28]".
std::vector<int64_t> MetaList(const SafetensorsFile& file, const std::string& key) {
  std::vector<int64_t> out;
  auto it = file.metadata().find(key);
  if (it == file.metadata().end()) return out;
  std::string digits;
  for (char c : it->second + ",") {
    if (c >= '0' && c <= '9') {
      digits.push_back(c);
    } else if (!digits.empty()) {
      out.push_back(std::stoll(digits));
      digits.clear();
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> Tensor(const SafetensorsFile& file, const std::string& name,
                                          std::vector<uint64_t>* shape) {
  const SafetensorsTensor* t = file.Find(name);
  if (t == nullptr) return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " is missing"));
  DType dtype = DType::kFloat32;
  if (t->dtype == "F16") {
    dtype = DType::kFloat16;
  } else if (t->dtype == "BF16") {
    dtype = DType::kBFloat16;
  } else if (t->dtype != "F32") {
    return absl::InvalidArgumentError(absl::StrCat(name, " has dtype ", t->dtype));
  }
  std::vector<float> out(t->data.size() / DTypeSize(dtype));
  NEXUSKV_RETURN_IF_ERROR(DecodeToFloat(t->data, dtype, out));
  *shape = t->shape;
  return out;
}

struct Attention {
  std::vector<float> keys, values, bias;  // per kv head, concatenated
};

// Reads turn t's layers (from layer 0 up to the first one missing) into `turn`, and the
// dialogue's shape into `d`.
absl::Status ReadTurnLayers(const SafetensorsFile& file, int t, RealDialogue* d, RealTurn* turn) {
  for (int l = 0;; ++l) {
    const std::string prefix = absl::StrCat("turns.", t, ".layers.", l, ".");
    if (file.Find(prefix + "keys") == nullptr) break;
    std::vector<uint64_t> ks, vs, ps, hs;
    NEXUSKV_ASSIGN_OR_RETURN(auto k, Tensor(file, prefix + "keys", &ks));
    NEXUSKV_ASSIGN_OR_RETURN(auto v, Tensor(file, prefix + "values", &vs));
    NEXUSKV_ASSIGN_OR_RETURN(auto p, Tensor(file, prefix + "probe_queries", &ps));
    NEXUSKV_ASSIGN_OR_RETURN(auto h, Tensor(file, prefix + "heldout_queries", &hs));
    if (ks.size() != 3 || ps.size() != 3 || hs.size() != 3 || ks != vs) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "*: unexpected shapes"));
    }
    d->num_kv_heads = static_cast<int>(ks[0]);
    d->head_dim = static_cast<int>(ks[2]);
    d->num_query_heads = static_cast<int>(ps[0]);
    turn->num_tokens = static_cast<int>(ks[1]);
    turn->num_probes = static_cast<int>(ps[1]);
    turn->num_heldout = static_cast<int>(hs[1]);
    turn->keys.push_back(std::move(k));
    turn->values.push_back(std::move(v));
    turn->probes.push_back(std::move(p));
    turn->heldout.push_back(std::move(h));
  }
  return absl::OkStatus();
}

// Reads turn t's num_probes offsets from `offsets` (every turn's, one list after another),
// starting at *next_offset and advancing it.
absl::Status ReadProbeOffsets(const std::vector<int64_t>& offsets, int t, size_t* next_offset,
                              RealTurn* turn) {
  if (*next_offset + turn->num_probes > offsets.size()) {
    return absl::InvalidArgumentError(
        "metadata probe_offsets has fewer entries than the turns' probes");
  }
  for (int j = 0; j < turn->num_probes; ++j) {
    const int64_t offset = offsets[(*next_offset)++];
    if (offset >= turn->num_tokens || (j > 0 && offset <= turn->probe_offsets.back())) {
      return absl::InvalidArgumentError(
          absl::StrCat("turn ", t, ": probe offsets must ascend within the turn"));
    }
    turn->probe_offsets.push_back(static_cast<uint32_t>(offset));
  }
  return absl::OkStatus();
}

// The attention output of query q (unscaled, dim floats) over one kv head's history, into *out.
void Attend(const Attention& a, const float* q, size_t dim, double scale,
            std::vector<double>* out) {
  const size_t count = a.keys.size() / dim;
  std::vector<double> logit(count);
  double max = -INFINITY;
  for (size_t i = 0; i < count; ++i) {
    double s = 0.0;
    for (size_t c = 0; c < dim; ++c) s += double{q[c]} * a.keys[i * dim + c];
    logit[i] = s * scale + (a.bias.empty() ? 0.0 : a.bias[i]);
    max = std::max(max, logit[i]);
  }
  out->assign(dim, 0.0);
  double z = 0.0;
  for (size_t i = 0; i < count; ++i) {
    const double w = std::exp(logit[i] - max);
    z += w;
    for (size_t c = 0; c < dim; ++c) (*out)[c] += w * a.values[i * dim + c];
  }
  for (double& x : *out) x /= z;
}

// The layers evaluated: every layer, or max_layers of them spread evenly from first to last.
std::vector<int> EvaluatedLayers(int num_layers, int max_layers) {
  std::vector<int> layers;
  if (max_layers <= 0 || max_layers >= num_layers) {
    for (int l = 0; l < num_layers; ++l) layers.push_back(l);
  } else {
    for (int i = 0; i < max_layers; ++i) {
      layers.push_back(i * (num_layers - 1) / std::max(max_layers - 1, 1));
    }
  }
  return layers;
}

// One prefix 0..last of the dialogue: its first `compressed` turns (`tokens` tokens in all) keep
// alloc[u] entries per kv head each; the newer ones stay raw.
struct Prefix {
  int last = 0;
  int compressed = 0;
  int64_t tokens = 0;
  std::vector<int64_t> alloc;
};

// EvaluateHistory's steps over one dialogue and method. Each turn's fits (of every evaluated
// layer) are computed once, on first use: a turn's fit does not depend on the prefix.
class HistoryEvaluator {
 public:
  HistoryEvaluator(const RealDialogue& d, const Compressor& method, const HistoryOptions& options)
      : d_(d),
        method_(method),
        options_(options),
        dim_(static_cast<size_t>(d.head_dim)),
        layers_(EvaluatedLayers(d.num_layers, options.max_layers)) {}

  size_t num_layers() const { return layers_.size(); }

  // Prefix 0..t with the method's split of floor(keep_ratio * tokens) entries per kv head over
  // its compressed turns (fitting those turns first).
  absl::StatusOr<Prefix> PlanPrefix(int t) {
    Prefix p;
    p.last = t;
    p.compressed = std::max(0, t + 1 - options_.keep_recent_turns);
    std::vector<TurnShape> shapes;
    for (int u = 0; u < p.compressed; ++u) {
      NEXUSKV_RETURN_IF_ERROR(EnsureFit(u));
      shapes.push_back({.num_tokens = d_.turns[u].num_tokens,
                        .session_start = u == 0,
                        .fit_summary = summaries_[u]});
      p.tokens += d_.turns[u].num_tokens;
    }
    const int64_t budget = static_cast<int64_t>(std::floor(options_.keep_ratio * p.tokens + 1e-9));
    p.alloc = method_.Allocate(shapes, budget);
    return p;
  }

  // Adds the relative error of every (query head, held-out query of the prefix's last turn) on
  // layer layers_[li] to *error_sum, and counts them in *samples.
  absl::Status AddLayerErrors(const Prefix& p, size_t li, double* error_sum, int64_t* samples) {
    const int l = layers_[li];
    std::vector<Attention> full(d_.num_kv_heads), comp(d_.num_kv_heads);
    for (int u = 0; u <= p.last; ++u) {
      NEXUSKV_RETURN_IF_ERROR(AppendTurn(p, u, li, &full, &comp));
    }
    const RealTurn& last = d_.turns[p.last];
    const double scale = 1.0 / std::sqrt(static_cast<double>(d_.head_dim));
    const int group = d_.num_query_heads / d_.num_kv_heads;
    for (int qh = 0; qh < d_.num_query_heads; ++qh) {
      const int h = qh / group;
      for (int j = 0; j < last.num_heldout; ++j) {
        const float* q =
            last.heldout[l].data() + (static_cast<size_t>(qh) * last.num_heldout + j) * dim_;
        std::vector<double> want, got;
        Attend(full[h], q, dim_, scale, &want);
        Attend(comp[h], q, dim_, scale, &got);
        double diff = 0.0, norm = 0.0;
        for (size_t c = 0; c < dim_; ++c) {
          diff += (got[c] - want[c]) * (got[c] - want[c]);
          norm += want[c] * want[c];
        }
        *error_sum += std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
        ++*samples;
      }
    }
    return absl::OkStatus();
  }

 private:
  // Turn u's layer l as the server fits it: with its probes unless they are dropped.
  LayerView View(int u, int l) const {
    const RealTurn& turn = d_.turns[u];
    LayerView v;
    v.num_kv_heads = d_.num_kv_heads;
    v.num_query_heads = d_.num_query_heads;
    v.num_tokens = turn.num_tokens;
    v.head_dim = d_.head_dim;
    v.num_probes = options_.drop_probes ? 0 : turn.num_probes;
    v.first_position = turn.first_position;
    v.session_start = u == 0;
    v.keys = turn.keys[l];
    v.values = turn.values[l];
    if (!options_.drop_probes) {
      v.probes = turn.probes[l];
      v.probe_offsets = turn.probe_offsets;
    }
    return v;
  }

  // Fits turn u's evaluated layers and summarizes them, unless that is done already.
  absl::Status EnsureFit(int u) {
    if (fits_.count(u)) return absl::OkStatus();
    std::vector<std::string>& per_layer = fits_[u];
    for (int l : layers_) {
      NEXUSKV_ASSIGN_OR_RETURN(std::string fit, method_.Fit(View(u, l)));
      per_layer.push_back(std::move(fit));
    }
    summaries_[u] = method_.SummarizeFit(per_layer);
    return absl::OkStatus();
  }

  // Appends turn u's layer layers_[li] to each kv head's history: raw to *full, and to *comp raw
  // or as the method serves it at the prefix's allocation (nothing when that is 0).
  absl::Status AppendTurn(const Prefix& p, int u, size_t li, std::vector<Attention>* full,
                          std::vector<Attention>* comp) {
    const int l = layers_[li];
    const RealTurn& turn = d_.turns[u];
    const size_t span = static_cast<size_t>(turn.num_tokens) * dim_;
    const bool raw = u >= p.compressed ||
                     (p.alloc[u] == turn.num_tokens && method_.capabilities().serves_without_raw);
    for (int h = 0; h < d_.num_kv_heads; ++h) {
      const float* k = turn.keys[l].data() + h * span;
      const float* v = turn.values[l].data() + h * span;
      (*full)[h].keys.insert((*full)[h].keys.end(), k, k + span);
      (*full)[h].values.insert((*full)[h].values.end(), v, v + span);
      if (raw) {
        (*comp)[h].keys.insert((*comp)[h].keys.end(), k, k + span);
        (*comp)[h].values.insert((*comp)[h].values.end(), v, v + span);
        (*comp)[h].bias.insert((*comp)[h].bias.end(), turn.num_tokens, 0.0f);
      }
    }
    if (raw || p.alloc[u] == 0) return absl::OkStatus();
    const int m = static_cast<int>(p.alloc[u]);
    NEXUSKV_ASSIGN_OR_RETURN(const LayerEntries entries, Serve(p.last, u, li, m));
    for (int h = 0; h < d_.num_kv_heads; ++h) {
      Attention& a = (*comp)[h];
      const size_t off = static_cast<size_t>(h) * m * dim_;
      a.keys.insert(a.keys.end(), entries.keys.begin() + off,
                    entries.keys.begin() + off + m * dim_);
      a.values.insert(a.values.end(), entries.values.begin() + off,
                      entries.values.begin() + off + m * dim_);
      if (entries.bias.empty()) {
        a.bias.insert(a.bias.end(), m, 0.0f);
      } else {
        a.bias.insert(a.bias.end(), entries.bias.begin() + h * m,
                      entries.bias.begin() + (h + 1) * m);
      }
    }
    return absl::OkStatus();
  }

  // Turn u's m entries per kv head of layer layers_[li], as the service serves them in prefix
  // 0..t: the newest probes of the prefix (turn t's, unless they are dropped) as lookahead
  // queries.
  absl::StatusOr<LayerEntries> Serve(int t, int u, size_t li, int m) const {
    const int l = layers_[li];
    LayerView served = View(u, l);
    if (method_.capabilities().lookahead && !options_.drop_probes && d_.turns[t].num_probes > 0) {
      served.lookahead = d_.turns[t].probes[l];
      served.num_lookahead = d_.turns[t].num_probes;
    }
    const std::string& fit = fits_.at(u)[li];
    return options_.bias_free ? method_.MaterializeBiasFree(served, fit, m)
                              : method_.Materialize(served, fit, m);
  }

  const RealDialogue& d_;
  const Compressor& method_;
  const HistoryOptions& options_;
  const size_t dim_;
  const std::vector<int> layers_;
  std::map<int, std::vector<std::string>> fits_;  // [turn][evaluated layer]
  std::map<int, std::string> summaries_;          // [turn]
};

}  // namespace

absl::StatusOr<RealDialogue> LoadRealDialogue(const std::string& path) {
  if (!std::filesystem::exists(path)) {
    return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  }
  NEXUSKV_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensorsFile(path));
  RealDialogue d;
  d.path = path;
  NEXUSKV_ASSIGN_OR_RETURN(int turns, MetaInt(file, "num_turns"));
  const std::vector<int64_t> first = MetaList(file, "first_positions");
  // Every turn's probe offsets, one list after another (absent in files with last-P probes).
  const std::vector<int64_t> offsets = MetaList(file, "probe_offsets");
  size_t next_offset = 0;
  for (int t = 0; t < turns; ++t) {
    RealTurn turn;
    NEXUSKV_RETURN_IF_ERROR(ReadTurnLayers(file, t, &d, &turn));
    if (turn.keys.empty()) return absl::InvalidArgumentError(absl::StrCat("turn ", t, " is empty"));
    if (!offsets.empty()) {
      NEXUSKV_RETURN_IF_ERROR(ReadProbeOffsets(offsets, t, &next_offset, &turn));
    }
    turn.first_position = t < static_cast<int>(first.size()) ? first[t] : 0;
    if (t > 0 && t >= static_cast<int>(first.size())) {
      turn.first_position = d.turns.back().first_position + d.turns.back().num_tokens;
    }
    d.num_layers = static_cast<int>(turn.keys.size());
    d.turns.push_back(std::move(turn));
  }
  if (next_offset != offsets.size()) {
    return absl::InvalidArgumentError(
        "metadata probe_offsets has more entries than the turns' probes");
  }
  return d;
}

absl::StatusOr<HistoryError> EvaluateHistory(const RealDialogue& d, const Compressor& method,
                                             const HistoryOptions& options) {
  HistoryEvaluator evaluator(d, method, options);
  HistoryError result;
  double error_sum = 0.0;
  double kept_sum = 0.0;
  int prefixes = 0;
  for (int t = std::max(options.min_history_turns - 1, 0); t < static_cast<int>(d.turns.size());
       ++t) {
    NEXUSKV_ASSIGN_OR_RETURN(const Prefix prefix, evaluator.PlanPrefix(t));
    int64_t kept = 0;
    for (int64_t a : prefix.alloc) kept += a;
    kept_sum += prefix.tokens > 0 ? static_cast<double>(kept) / prefix.tokens : 1.0;
    ++prefixes;
    for (size_t li = 0; li < evaluator.num_layers(); ++li) {
      NEXUSKV_RETURN_IF_ERROR(evaluator.AddLayerErrors(prefix, li, &error_sum, &result.samples));
    }
  }
  result.mean_relative_error = result.samples > 0 ? error_sum / result.samples : 0.0;
  result.kept_ratio = prefixes > 0 ? kept_sum / prefixes : 0.0;
  return result;
}

}  // namespace nexuskv::compressor::testing
