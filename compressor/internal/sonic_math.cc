#include "compressor/internal/sonic_math.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "common/status_macros.h"

namespace nexuskv::compressor::internal {
namespace {

float Scale(int head_dim) { return 1.0f / std::sqrt(static_cast<float>(head_dim)); }

ConstMatrix RowMatrix(Rows rows, int head_dim) {
  const size_t size = static_cast<size_t>(rows.count) * static_cast<size_t>(head_dim);
  return {{rows.data, rows.data == nullptr ? 0 : size}, rows.count, head_dim};
}

}  // namespace

absl::StatusOr<std::vector<SegmentTargets>> ComputeTargets(std::span<const TargetsInput> inputs,
                                                           const ComputeBackend& compute) {
  std::vector<AttendItem> items;
  items.reserve(inputs.size());
  size_t rows = 0, outputs = 0, tokens = 0;
  for (const TargetsInput& in : inputs) {
    const size_t span = static_cast<size_t>(in.num_tokens) * static_cast<size_t>(in.head_dim);
    items.push_back({.queries = RowMatrix(in.rows, in.head_dim),
                     .keys = {{in.keys, span}, in.num_tokens, in.head_dim},
                     .values = {{in.values, span}, in.num_tokens, in.head_dim},
                     .scale = Scale(in.head_dim)});
    rows += static_cast<size_t>(in.rows.count);
    outputs += static_cast<size_t>(in.rows.count) * static_cast<size_t>(in.head_dim);
    tokens += static_cast<size_t>(in.num_tokens);
  }
  std::vector<float> log_mass(rows), output(outputs), mass(tokens);
  NEXUSKV_RETURN_IF_ERROR(compute.Attend(items, {log_mass, output, mass}));
  std::vector<SegmentTargets> out(inputs.size());
  rows = outputs = tokens = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const size_t r = static_cast<size_t>(inputs[k].rows.count);
    const size_t o = r * static_cast<size_t>(inputs[k].head_dim);
    const size_t t = static_cast<size_t>(inputs[k].num_tokens);
    out[k].log_mass.assign(log_mass.begin() + rows, log_mass.begin() + rows + r);
    out[k].outputs.assign(output.begin() + outputs, output.begin() + outputs + o);
    out[k].attention.assign(mass.begin() + tokens, mass.begin() + tokens + t);
    rows += r;
    outputs += o;
    tokens += t;
  }
  return out;
}

SegmentTargets ComputeTargets(const float* keys, const float* values, int num_tokens, int head_dim,
                              Rows rows) {
  const TargetsInput input{
      .keys = keys, .values = values, .num_tokens = num_tokens, .head_dim = head_dim, .rows = rows};
  absl::StatusOr<std::vector<SegmentTargets>> out =
      ComputeTargets(std::span<const TargetsInput>(&input, 1), CpuCompute());
  DieUnlessOk(out.status());
  return std::move(out->front());
}

absl::StatusOr<std::vector<SonicRungError>> EvaluateNexusSets(
    std::span<const SetEvaluation> evaluations, const ComputeBackend& compute) {
  std::vector<AttendItem> items;
  std::vector<size_t> measured;  // indices of the evaluations with rows and entries
  size_t rows = 0;
  for (size_t k = 0; k < evaluations.size(); ++k) {
    const SetEvaluation& e = evaluations[k];
    const int m = static_cast<int>(e.set->bias.size());
    if (e.rows.count == 0 || m == 0) continue;
    measured.push_back(k);
    items.push_back({.queries = RowMatrix(e.rows, e.head_dim),
                     .keys = {e.set->keys, m, e.head_dim},
                     .values = {e.set->values, m, e.head_dim},
                     .key_bias = e.set->bias,
                     .scale = Scale(e.head_dim)});
    rows += static_cast<size_t>(e.rows.count);
  }
  // Every item has the same D here, so outputs are [rows, D] packed.
  std::vector<float> log_mass(rows);
  size_t output_size = 0;
  for (const AttendItem& item : items) {
    output_size += static_cast<size_t>(item.queries.rows) * item.values.cols;
  }
  std::vector<float> outputs(output_size);
  NEXUSKV_RETURN_IF_ERROR(compute.Attend(items, {log_mass, outputs, {}}));

  std::vector<SonicRungError> errors(evaluations.size());
  size_t row_offset = 0, output_offset = 0;
  for (size_t k : measured) {
    const SetEvaluation& e = evaluations[k];
    const size_t d = static_cast<size_t>(e.head_dim);
    double output_error = 0.0;
    double mass_error = 0.0;
    for (int r = 0; r < e.rows.count; ++r) {
      mass_error +=
          std::abs(static_cast<double>(log_mass[row_offset + r]) - e.targets->log_mass[r]);
      const float* want = e.targets->outputs.data() + r * d;
      const float* got = outputs.data() + output_offset + r * d;
      double diff = 0.0, norm = 0.0;
      for (size_t c = 0; c < d; ++c) {
        diff += (double{got[c]} - want[c]) * (double{got[c]} - want[c]);
        norm += double{want[c]} * want[c];
      }
      output_error += std::min(std::sqrt(diff) / std::max(std::sqrt(norm), 1e-20), 1e6);
    }
    errors[k].output_error = static_cast<float>(output_error / e.rows.count);
    errors[k].log_mass_error = static_cast<float>(std::min(mass_error / e.rows.count, 1e30));
    row_offset += static_cast<size_t>(e.rows.count);
    output_offset += static_cast<size_t>(e.rows.count) * d;
  }
  return errors;
}

}  // namespace nexuskv::compressor::internal
