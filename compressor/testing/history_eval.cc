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
      d.num_kv_heads = static_cast<int>(ks[0]);
      d.head_dim = static_cast<int>(ks[2]);
      d.num_query_heads = static_cast<int>(ps[0]);
      turn.num_tokens = static_cast<int>(ks[1]);
      turn.num_probes = static_cast<int>(ps[1]);
      turn.num_heldout = static_cast<int>(hs[1]);
      turn.keys.push_back(std::move(k));
      turn.values.push_back(std::move(v));
      turn.probes.push_back(std::move(p));
      turn.heldout.push_back(std::move(h));
    }
    if (turn.keys.empty()) return absl::InvalidArgumentError(absl::StrCat("turn ", t, " is empty"));
    if (!offsets.empty()) {
      if (next_offset + turn.num_probes > offsets.size()) {
        return absl::InvalidArgumentError(
            "metadata probe_offsets has fewer entries than the turns' probes");
      }
      for (int j = 0; j < turn.num_probes; ++j) {
        const int64_t offset = offsets[next_offset++];
        if (offset >= turn.num_tokens || (j > 0 && offset <= turn.probe_offsets.back())) {
          return absl::InvalidArgumentError(
              absl::StrCat("turn ", t, ": probe offsets must ascend within the turn"));
        }
        turn.probe_offsets.push_back(static_cast<uint32_t>(offset));
      }
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
  const int n = static_cast<int>(d.turns.size());
  const size_t dim = static_cast<size_t>(d.head_dim);
  const int group = d.num_query_heads / d.num_kv_heads;
  std::vector<int> layers;
  if (options.max_layers <= 0 || options.max_layers >= d.num_layers) {
    for (int l = 0; l < d.num_layers; ++l) layers.push_back(l);
  } else {
    for (int i = 0; i < options.max_layers; ++i) {
      layers.push_back(i * (d.num_layers - 1) / std::max(options.max_layers - 1, 1));
    }
  }
  auto view = [&](int u, int l) {
    const RealTurn& turn = d.turns[u];
    LayerView v;
    v.num_kv_heads = d.num_kv_heads;
    v.num_query_heads = d.num_query_heads;
    v.num_tokens = turn.num_tokens;
    v.head_dim = d.head_dim;
    v.num_probes = options.drop_probes ? 0 : turn.num_probes;
    v.first_position = turn.first_position;
    v.session_start = u == 0;
    v.keys = turn.keys[l];
    v.values = turn.values[l];
    if (!options.drop_probes) {
      v.probes = turn.probes[l];
      v.probe_offsets = turn.probe_offsets;
    }
    return v;
  };
  // fits[u][i] for layer layers[i], computed once: a turn's fit does not depend on the prefix.
  std::map<int, std::vector<std::string>> fits;
  std::map<int, std::string> summaries;
  auto ensure_fit = [&](int u) -> absl::Status {
    if (fits.count(u)) return absl::OkStatus();
    std::vector<std::string>& per_layer = fits[u];
    for (int l : layers) {
      NEXUSKV_ASSIGN_OR_RETURN(std::string fit, method.Fit(view(u, l)));
      per_layer.push_back(std::move(fit));
    }
    summaries[u] = method.SummarizeFit(per_layer);
    return absl::OkStatus();
  };

  HistoryError result;
  double error_sum = 0.0;
  double kept_sum = 0.0;
  int prefixes = 0;
  for (int t = std::max(options.min_history_turns - 1, 0); t < n; ++t) {
    const int compressed = std::max(0, t + 1 - options.keep_recent_turns);
    std::vector<TurnShape> shapes;
    int64_t tokens = 0;
    for (int u = 0; u < compressed; ++u) {
      NEXUSKV_RETURN_IF_ERROR(ensure_fit(u));
      shapes.push_back({.num_tokens = d.turns[u].num_tokens,
                        .session_start = u == 0,
                        .fit_summary = summaries[u]});
      tokens += d.turns[u].num_tokens;
    }
    const int64_t budget = static_cast<int64_t>(std::floor(options.keep_ratio * tokens + 1e-9));
    const std::vector<int64_t> alloc = method.Allocate(shapes, budget);
    int64_t kept = 0;
    for (int64_t a : alloc) kept += a;
    kept_sum += tokens > 0 ? static_cast<double>(kept) / tokens : 1.0;
    ++prefixes;

    for (size_t li = 0; li < layers.size(); ++li) {
      const int l = layers[li];
      std::vector<Attention> full(d.num_kv_heads), comp(d.num_kv_heads);
      for (int u = 0; u <= t; ++u) {
        const RealTurn& turn = d.turns[u];
        const size_t span = static_cast<size_t>(turn.num_tokens) * dim;
        LayerEntries e;
        const bool raw =
            u >= compressed || (alloc[u] == turn.num_tokens && method.capabilities().serves_without_raw);
        for (int h = 0; h < d.num_kv_heads; ++h) {
          const float* k = turn.keys[l].data() + h * span;
          const float* v = turn.values[l].data() + h * span;
          full[h].keys.insert(full[h].keys.end(), k, k + span);
          full[h].values.insert(full[h].values.end(), v, v + span);
          if (raw) {
            comp[h].keys.insert(comp[h].keys.end(), k, k + span);
            comp[h].values.insert(comp[h].values.end(), v, v + span);
            comp[h].bias.insert(comp[h].bias.end(), turn.num_tokens, 0.0f);
          }
        }
        if (raw || alloc[u] == 0) continue;
        const int m = static_cast<int>(alloc[u]);
        // As the service serves it: the newest probes of the prefix (turn t's, unless they are
        // dropped) as lookahead queries.
        LayerView served = view(u, l);
        if (method.capabilities().lookahead && !options.drop_probes && d.turns[t].num_probes > 0) {
          served.lookahead = d.turns[t].probes[l];
          served.num_lookahead = d.turns[t].num_probes;
        }
        auto entries = options.bias_free ? method.MaterializeBiasFree(served, fits[u][li], m)
                                         : method.Materialize(served, fits[u][li], m);
        if (!entries.ok()) return entries.status();
        for (int h = 0; h < d.num_kv_heads; ++h) {
          const size_t off = static_cast<size_t>(h) * m * dim;
          comp[h].keys.insert(comp[h].keys.end(), entries->keys.begin() + off,
                              entries->keys.begin() + off + m * dim);
          comp[h].values.insert(comp[h].values.end(), entries->values.begin() + off,
                                entries->values.begin() + off + m * dim);
          if (entries->bias.empty()) {
            comp[h].bias.insert(comp[h].bias.end(), m, 0.0f);
          } else {
            comp[h].bias.insert(comp[h].bias.end(), entries->bias.begin() + h * m,
                                entries->bias.begin() + (h + 1) * m);
          }
        }
      }
      const RealTurn& last = d.turns[t];
      const double scale = 1.0 / std::sqrt(static_cast<double>(d.head_dim));
      auto attend = [&](const Attention& a, const float* q, std::vector<double>* out) {
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
      };
      for (int qh = 0; qh < d.num_query_heads; ++qh) {
        const int h = qh / group;
        for (int j = 0; j < last.num_heldout; ++j) {
          const float* q =
              last.heldout[l].data() + (static_cast<size_t>(qh) * last.num_heldout + j) * dim;
          std::vector<double> want, got;
          attend(full[h], q, &want);
          attend(comp[h], q, &got);
          double diff = 0.0, norm = 0.0;
          for (size_t c = 0; c < dim; ++c) {
            diff += (got[c] - want[c]) * (got[c] - want[c]);
            norm += want[c] * want[c];
          }
          error_sum += std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
          ++result.samples;
        }
      }
    }
  }
  result.mean_relative_error = result.samples > 0 ? error_sum / result.samples : 0.0;
  result.kept_ratio = prefixes > 0 ? kept_sum / prefixes : 0.0;
  return result;
}

}  // namespace nexuskv::compressor::testing
