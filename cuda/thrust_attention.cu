// The Thrust backend's softmax and attention operations. Each call runs three steps over the
// whole batch, one launch each: every logit (item, row, column) as a float32 dot product under the
// finite-logit rule; every row's max-stabilized softmax (one thread per row); every output as a
// sum over rows or columns (one thread per output element, summing in a fixed order).
#include <math.h>
#include <thrust/execution_policy.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>

#include <cfloat>
#include <cstdint>
#include <vector>

#include "common/status_macros.h"
#include "compressor/compute/contract.h"
#include "cuda/internal/thrust_backend.h"

namespace nexuskv::cuda::internal {

namespace {

// One item of an attention batch, with where each of its parts starts in the packed buffers.
struct AttnMeta {
  int64_t query = 0, key = 0, value = 0;  // packed floats
  int64_t causal = -1, bias = -1;         // packed entries; -1: none
  int64_t logit = 0;                      // R * T logits
  int64_t row = 0;                        // R rows (log-sum-exp, row_shift)
  int64_t column = 0;                     // T columns (mass, key_mass, ColumnLogSumExp's out)
  int64_t output = 0;                     // R * Dv outputs
  int32_t r = 0, t = 0, d = 0, dv = 0;
  float scale = 1.0f, row_weight = 1.0f;
};

// The packed batch on the device and the offsets of its index spaces.
struct Batch {
  std::vector<AttnMeta> meta;
  std::vector<int64_t> logit_sizes, row_sizes, column_sizes, output_sizes;
  int64_t queries = 0, keys = 0, values = 0, causal = 0, bias = 0;

  void Add(AttnMeta t, bool has_causal, bool has_bias) {
    t.query = queries;
    t.key = keys;
    t.value = values;
    t.causal = has_causal ? causal : -1;
    t.bias = has_bias ? bias : -1;
    t.logit = Total(logit_sizes);
    t.row = Total(row_sizes);
    t.column = Total(column_sizes);
    t.output = Total(output_sizes);
    queries += static_cast<int64_t>(t.r) * t.d;
    keys += static_cast<int64_t>(t.t) * t.d;
    values += static_cast<int64_t>(t.t) * t.dv;
    if (has_causal) causal += t.r;
    if (has_bias) bias += t.t;
    logit_sizes.push_back(static_cast<int64_t>(t.r) * t.t);
    row_sizes.push_back(t.r);
    column_sizes.push_back(t.t);
    output_sizes.push_back(static_cast<int64_t>(t.r) * t.dv);
    meta.push_back(t);
  }
  static int64_t Total(const std::vector<int64_t>& sizes) {
    int64_t total = 0;
    for (int64_t s : sizes) total += s;
    return total;
  }
  int64_t logits() const { return Total(logit_sizes); }
  int64_t rows() const { return Total(row_sizes); }
  int64_t columns() const { return Total(column_sizes); }
  int64_t outputs() const { return Total(output_sizes); }
  int items() const { return static_cast<int>(meta.size()); }
};

// logit[(k, r, c)] = Finite(scale * q_r . k_c), then + bias[c] and Finite again when the item has
// a bias; -infinity (masked) for c > causal[r].
struct Logits {
  const AttnMeta* meta;
  const int64_t* logit_starts;
  int items;
  const float* queries;
  const float* keys;
  const int32_t* causal;
  const float* bias;
  float* logits;
  NEXUSKV_HD void operator()(int64_t e) const {
    const int k = FindItem(logit_starts, items, e);
    const AttnMeta& t = meta[k];
    const int64_t local = e - logit_starts[k];
    const int r = static_cast<int>(local / t.t), c = static_cast<int>(local % t.t);
    if (t.causal >= 0 && c > causal[t.causal + r]) {
      logits[e] = -INFINITY;
      return;
    }
    const float* q = queries + t.query + static_cast<int64_t>(r) * t.d;
    const float* key = keys + t.key + static_cast<int64_t>(c) * t.d;
    float dot = 0.0f;
    for (int i = 0; i < t.d; ++i) dot += q[i] * key[i];
    float x = Finite(t.scale * dot);
    if (t.bias >= 0) x = Finite(x + bias[t.bias + c]);
    logits[e] = x;
  }
};

// Softmax's first step on a plain [rows, width] matrix: the finite-logit rule, and -infinity
// (masked) past each row's causal limit.
struct ClampAndMask {
  float* x;
  const int32_t* causal;  // null: no mask
  int width;
  NEXUSKV_HD void operator()(int64_t e) const {
    const int64_t r = e / width, c = e % width;
    x[e] = (causal != nullptr && c > causal[r]) ? -INFINITY : Finite(x[e]);
  }
};

// The softmax of `cols` logits at `row` (masked entries -infinity come out 0), scaled by weight;
// returns the log-sum-exp of the unmasked logits (-infinity when there are none).
NEXUSKV_HD inline float SoftmaxInPlace(float* row, int cols, float weight) {
  float max_logit = -FLT_MAX;
  bool any = false;
  for (int c = 0; c < cols; ++c) {
    if (row[c] == -INFINITY) continue;
    any = true;
    max_logit = row[c] > max_logit ? row[c] : max_logit;
  }
  if (!any) {
    for (int c = 0; c < cols; ++c) row[c] = 0.0f;
    return -INFINITY;
  }
  // The sum runs in double: one thread adds a whole row in order, and a float32 sum of 20000 terms
  // drifts past compute.h's tolerance (the CPU sums in SIMD lanes, which drift less).
  double sum = 0.0;
  for (int c = 0; c < cols; ++c) {
    row[c] = row[c] == -INFINITY ? 0.0f : expf(row[c] - max_logit);
    sum += row[c];
  }
  const float scale = static_cast<float>(weight / sum);
  for (int c = 0; c < cols; ++c) row[c] *= scale;
  return static_cast<float>(max_logit + log(sum));
}

// Row (k, r)'s softmax in place; its log-sum-exp into lse (when not null).
struct RowSoftmax {
  const AttnMeta* meta;
  const int64_t* row_starts;
  int items;
  float* logits;
  float* lse;
  NEXUSKV_HD void operator()(int64_t row) const {
    const int k = FindItem(row_starts, items, row);
    const AttnMeta& t = meta[k];
    const int64_t r = row - row_starts[k];
    const float v = SoftmaxInPlace(logits + t.logit + r * t.t, t.t, t.row_weight);
    if (lse != nullptr) lse[row] = v;
  }
};

// column_sum[(k, c)] = sum over rows r (ascending) of weight[(k, r, c)].
struct ColumnSum {
  const AttnMeta* meta;
  const int64_t* column_starts;
  int items;
  const float* weights;
  float* out;
  NEXUSKV_HD void operator()(int64_t col) const {
    const int k = FindItem(column_starts, items, col);
    const AttnMeta& t = meta[k];
    const int64_t c = col - column_starts[k];
    float sum = 0.0f;
    for (int r = 0; r < t.r; ++r) sum += weights[t.logit + static_cast<int64_t>(r) * t.t + c];
    out[col] = sum;
  }
};

// output[(k, r, v)] = sum over columns c of weight[(k, r, c)] * value[c][v].
struct WeightedValues {
  const AttnMeta* meta;
  const int64_t* output_starts;
  int items;
  const float* weights;
  const float* values;
  float* out;
  NEXUSKV_HD void operator()(int64_t o) const {
    const int k = FindItem(output_starts, items, o);
    const AttnMeta& t = meta[k];
    const int64_t local = o - output_starts[k];
    const int64_t r = local / t.dv, v = local % t.dv;
    const float* w = weights + t.logit + r * t.t;
    float sum = 0.0f;
    for (int c = 0; c < t.t; ++c)
      sum += w[c] * values[t.value + static_cast<int64_t>(c) * t.dv + v];
    out[o] = sum;
  }
};

// out[(k, j)] = log sum_r exp(Finite(scale * q_r . c_j) - shift[r]), running max, in double.
struct ColumnLse {
  const AttnMeta* meta;
  const int64_t* column_starts;
  int items;
  const float* queries;
  const float* columns;
  const float* shift;
  double* out;
  NEXUSKV_HD void operator()(int64_t col) const {
    const int k = FindItem(column_starts, items, col);
    const AttnMeta& t = meta[k];
    const float* c = columns + t.key + (col - column_starts[k]) * t.d;
    double max = -INFINITY, sum = 0.0;
    for (int r = 0; r < t.r; ++r) {
      const float* q = queries + t.query + static_cast<int64_t>(r) * t.d;
      float dot = 0.0f;
      for (int i = 0; i < t.d; ++i) dot += q[i] * c[i];
      const double x = static_cast<double>(Finite(t.scale * dot)) - shift[t.row + r];
      if (x > max) {
        sum = sum * exp(max - x) + 1.0;
        max = x;
      } else {
        sum += exp(x - max);
      }
    }
    out[col] = max + log(sum);
  }
};

// Device copies of a batch's metadata and index-space offsets.
struct DeviceBatch {
  explicit DeviceBatch(const Batch& batch)
      : meta(ToDevice(batch.meta)),
        logit_starts(ToDevice(Starts(batch.logit_sizes))),
        row_starts(ToDevice(Starts(batch.row_sizes))),
        column_starts(ToDevice(Starts(batch.column_sizes))),
        output_starts(ToDevice(Starts(batch.output_sizes))) {}
  DeviceVector<AttnMeta> meta;
  DeviceVector<int64_t> logit_starts, row_starts, column_starts, output_starts;
};

}  // namespace

absl::Status ThrustBackend::Softmax(std::span<float> logits, int rows, int cols,
                                    std::span<const int32_t> causal,
                                    std::span<float> log_sum_exp) const {
  constexpr std::string_view kOp = "Softmax";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckSoftmax(logits, rows, cols, causal, log_sum_exp));
  if (rows == 0) return absl::OkStatus();
  NEXUSKV_RETURN_IF_ERROR(CheckFits(kOp, logits.size() * 4 + static_cast<uint64_t>(rows) * 8));
  return Guard(kOp, [&]() -> absl::Status {
    Batch batch;
    AttnMeta t;
    t.r = rows;
    t.t = cols;
    batch.Add(t, !causal.empty(), false);
    const DeviceBatch d(batch);
    DeviceVector<float> d_logits = ToDevice(std::span<const float>(logits));
    // The finite-logit rule first, then the causal mask as -infinity.
    const int32_t* d_causal = nullptr;
    DeviceVector<int32_t> causal_copy = ToDevice(causal);
    if (!causal.empty()) d_causal = Raw(causal_copy);
    float* x = Raw(d_logits);
    ForEach(static_cast<int64_t>(logits.size()), ClampAndMask{x, d_causal, cols});
    DeviceVector<float> lse(rows);
    ForEach(rows, RowSoftmax{Raw(d.meta), Raw(d.row_starts), 1, x, Raw(lse)});
    CopyOut(d_logits, logits);
    if (!log_sum_exp.empty()) CopyOut(lse, log_sum_exp);
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::AttentionMass(std::span<const compressor::AttentionMassItem> items,
                                          std::span<float> mass) const {
  constexpr std::string_view kOp = "AttentionMass";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckAttentionMass(items, mass));
  if (items.empty()) return absl::OkStatus();
  Batch batch;
  for (const compressor::AttentionMassItem& item : items) {
    AttnMeta t;
    t.r = item.queries.rows;
    t.t = item.keys.rows;
    t.d = item.keys.cols;
    t.scale = item.scale;
    t.row_weight = item.row_weight;
    batch.Add(t, !item.causal.empty(), false);
  }
  NEXUSKV_RETURN_IF_ERROR(CheckFits(
      kOp,
      static_cast<uint64_t>(batch.queries + batch.keys + batch.logits() + batch.columns()) * 4 +
          static_cast<uint64_t>(batch.causal) * 4));
  return Guard(kOp, [&]() -> absl::Status {
    const DeviceBatch d(batch);
    const Packed<float> queries = Pack<float>(
        items, [](const compressor::AttentionMassItem& item) { return item.queries.data; });
    const Packed<float> keys = Pack<float>(
        items, [](const compressor::AttentionMassItem& item) { return item.keys.data; });
    const Packed<int32_t> causal =
        Pack<int32_t>(items, [](const compressor::AttentionMassItem& item) { return item.causal; });
    DeviceVector<float> logits(batch.logits()), d_mass(batch.columns());
    const int n = batch.items();
    ForEach(batch.logits(), Logits{Raw(d.meta), Raw(d.logit_starts), n, Raw(queries.data),
                                   Raw(keys.data), Raw(causal.data), nullptr, Raw(logits)});
    ForEach(batch.rows(), RowSoftmax{Raw(d.meta), Raw(d.row_starts), n, Raw(logits), nullptr});
    ForEach(batch.columns(),
            ColumnSum{Raw(d.meta), Raw(d.column_starts), n, Raw(logits), Raw(d_mass)});
    CopyOut(d_mass, mass);
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::Attend(std::span<const compressor::AttendItem> items,
                                   const compressor::AttendOutputs& out) const {
  constexpr std::string_view kOp = "Attend";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckAttend(items, out));
  if (items.empty()) return absl::OkStatus();
  Batch batch;
  for (const compressor::AttendItem& item : items) {
    AttnMeta t;
    t.r = item.queries.rows;
    t.t = item.keys.rows;
    t.d = item.keys.cols;
    t.dv = item.values.cols;
    t.scale = item.scale;
    batch.Add(t, false, !item.key_bias.empty());
  }
  NEXUSKV_RETURN_IF_ERROR(CheckFits(
      kOp,
      static_cast<uint64_t>(batch.queries + batch.keys + batch.values + batch.bias +
                            batch.logits() + batch.rows() + batch.outputs() + batch.columns()) *
          4));
  return Guard(kOp, [&]() -> absl::Status {
    const DeviceBatch d(batch);
    const Packed<float> queries =
        Pack<float>(items, [](const compressor::AttendItem& item) { return item.queries.data; });
    const Packed<float> keys =
        Pack<float>(items, [](const compressor::AttendItem& item) { return item.keys.data; });
    const Packed<float> values =
        Pack<float>(items, [](const compressor::AttendItem& item) { return item.values.data; });
    const Packed<float> bias =
        Pack<float>(items, [](const compressor::AttendItem& item) { return item.key_bias; });
    DeviceVector<float> logits(batch.logits()), lse(batch.rows()), outputs(batch.outputs());
    const int n = batch.items();
    ForEach(batch.logits(), Logits{Raw(d.meta), Raw(d.logit_starts), n, Raw(queries.data),
                                   Raw(keys.data), nullptr, Raw(bias.data), Raw(logits)});
    ForEach(batch.rows(), RowSoftmax{Raw(d.meta), Raw(d.row_starts), n, Raw(logits), Raw(lse)});
    ForEach(batch.outputs(), WeightedValues{Raw(d.meta), Raw(d.output_starts), n, Raw(logits),
                                            Raw(values.data), Raw(outputs)});
    CopyOut(lse, out.log_mass);
    CopyOut(outputs, out.outputs);
    if (!out.key_mass.empty()) {
      DeviceVector<float> key_mass(batch.columns());
      ForEach(batch.columns(),
              ColumnSum{Raw(d.meta), Raw(d.column_starts), n, Raw(logits), Raw(key_mass)});
      CopyOut(key_mass, out.key_mass);
    }
    return absl::OkStatus();
  });
}

absl::Status ThrustBackend::ColumnLogSumExp(std::span<const compressor::ColumnLogSumExpItem> items,
                                            std::span<double> out) const {
  constexpr std::string_view kOp = "ColumnLogSumExp";
  NEXUSKV_RETURN_IF_ERROR(compressor::CheckColumnLogSumExp(items, out));
  if (items.empty()) return absl::OkStatus();
  Batch batch;
  for (const compressor::ColumnLogSumExpItem& item : items) {
    AttnMeta t;
    t.r = item.queries.rows;
    t.t = item.columns.rows;
    t.d = item.columns.cols;
    t.scale = item.scale;
    batch.Add(t, false, false);
  }
  NEXUSKV_RETURN_IF_ERROR(
      CheckFits(kOp, static_cast<uint64_t>(batch.queries + batch.keys + batch.rows()) * 4 +
                         static_cast<uint64_t>(batch.columns()) * 8));
  return Guard(kOp, [&]() -> absl::Status {
    const DeviceBatch d(batch);
    const Packed<float> queries = Pack<float>(
        items, [](const compressor::ColumnLogSumExpItem& item) { return item.queries.data; });
    const Packed<float> columns = Pack<float>(
        items, [](const compressor::ColumnLogSumExpItem& item) { return item.columns.data; });
    const Packed<float> shift = Pack<float>(
        items, [](const compressor::ColumnLogSumExpItem& item) { return item.row_shift; });
    DeviceVector<double> d_out(batch.columns());
    ForEach(batch.columns(),
            ColumnLse{Raw(d.meta), Raw(d.column_starts), batch.items(), Raw(queries.data),
                      Raw(columns.data), Raw(shift.data), Raw(d_out)});
    CopyOut(d_out, out);
    return absl::OkStatus();
  });
}

}  // namespace nexuskv::cuda::internal
