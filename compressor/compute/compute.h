// The compute seam: every dense kernel that a GetCache or a fit spends its time in, behind one
// interface, so that a GPU implementation (cuda/, issue 14) replaces the CPU reference whole.
//
// Every operation takes a batch: one call covers many (layer, kv head, turn) items, so a device
// implementation launches once per batch (strided or grouped GEMMs, one softmax kernel over all
// rows), not once per head. Inputs and outputs are plain host memory: float32 row-major matrices
// as spans with shapes (ConstMatrix), index spans, and packed output spans whose layout each
// operation states (item i's part follows item i - 1's). No Eigen, BLAS or CUDA type appears here.
//
//   const ComputeBackend& compute = CpuCompute();
//   std::vector<AttentionMassItem> items;  // one per kv head: its query rows and its keys
//   ...
//   std::vector<float> mass(num_heads * T);
//   NEXUSKV_RETURN_IF_ERROR(compute.AttentionMass(items, mass));
//
// Shared rules, which a twin must keep:
//   - Logits are float32 dot products, scale * (q . k), accumulated in float32 (the CPU uses
//     cblas_sgemm with alpha = scale, on blocks of rows of at most kLogitBlockFloats logits).
//   - The finite-logit rule (FiniteLogit below): a logit above FLT_MAX becomes FLT_MAX, one below
//     -FLT_MAX becomes -FLT_MAX and NaN becomes -FLT_MAX, so finite inputs never yield NaN or Inf
//     even when a dot product overflows.
//   - The softmax of a row is max-stabilized: e_i = exp(x_i - max), weights e_i / sum e. The CPU
//     uses a vectorized exp of relative error < 3e-7 and sums in float32 in SIMD lanes; a twin
//     must agree within kSoftmaxRelTolerance of each weight (plus 1e-7 absolute) and its log-sum-
//     exp within 1e-5 absolute, not bit for bit.
//   - Selections (TopK, k-means assignment) are exact: ties break to the lower index, so a twin
//     given the same scores picks the same indices. (A k-means assignment reads dot products a
//     twin may sum in another order: a near tie can flip there, and parity tests allow it.)
//   - Gather, MergeRuns and the dtype conversions are exact.
//
// Errors: InvalidArgument when shapes disagree (the message names the item and the field); a
// device implementation may also return ResourceExhausted (a batch that does not fit its memory
// bound) or Internal. An operation that fails leaves its outputs unspecified. CpuCompute() fails
// only on InvalidArgument, so a caller that builds shapes correctly by construction may treat an
// error from it as a bug (see DieUnlessOk).
//
// Implementations are thread-safe: any number of threads may call any operation at once. Every
// span is the caller's host memory, borrowed for the call only; a device backend copies what it
// needs. The CPU backend allocates only scratch.
#ifndef NEXUSKV_COMPRESSOR_COMPUTE_COMPUTE_H_
#define NEXUSKV_COMPRESSOR_COMPUTE_COMPUTE_H_

#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "tensor/dtype.h"

namespace nexuskv::compressor {

// Logits a backend holds in scratch at once per item (16 MiB of float32): long turns are scored a
// block of rows at a time. Only memory depends on it, never a result.
inline constexpr size_t kLogitBlockFloats = size_t{1} << 22;

// The tolerance a device twin of Softmax / AttentionMass / Attend is held to, per weight,
// relative (see the file comment).
inline constexpr float kSoftmaxRelTolerance = 1e-5f;

// The finite-logit rule: clamps x into [-FLT_MAX, FLT_MAX], NaN to -FLT_MAX.
inline float FiniteLogit(float x) {
  x = x > FLT_MAX ? FLT_MAX : x;
  x = x < -FLT_MAX ? -FLT_MAX : x;
  return x == x ? x : -FLT_MAX;
}

// A row-major float32 matrix [rows, cols], borrowed: data.size() must equal rows * cols.
struct ConstMatrix {
  std::span<const float> data;
  int rows = 0;
  int cols = 0;
};

// One item of AttentionMass: query rows attending over one set of keys.
struct AttentionMassItem {
  ConstMatrix queries;      // [R, D], R >= 0, unscaled
  ConstMatrix keys;         // [T, D], T >= 1, same D
  float scale = 1.0f;       // logits = scale * q . k (1/sqrt(D) for attention)
  float row_weight = 1.0f;  // each row's softmax is added this many times
  // Empty: every row sees all T keys. Else [R]: row r sees keys 0 .. causal[r] (inclusive, each
  // in [0, T)), and its softmax is over those keys only; the keys after it get nothing from it.
  std::span<const int32_t> causal;
};

// One item of Attend: query rows attending over keys with an optional per-key log-weight.
struct AttendItem {
  ConstMatrix queries;              // [R, D], R >= 0, unscaled
  ConstMatrix keys;                 // [M, D], M >= 0, same D
  ConstMatrix values;               // [M, Dv], Dv >= 0
  std::span<const float> key_bias;  // empty, or [M]: added to each finite-clamped logit
  float scale = 1.0f;
};

// Where Attend writes, packed over the items (see Attend).
struct AttendOutputs {
  std::span<float> log_mass;  // sum of R_i
  std::span<float> outputs;   // sum of R_i * Dv_i
  std::span<float> key_mass;  // empty (not wanted), or sum of M_i
};

// One item of ColumnLogSumExp.
struct ColumnLogSumExpItem {
  ConstMatrix queries;               // [R, D], R >= 0, unscaled
  ConstMatrix columns;               // [M, D], M >= 0, same D
  std::span<const float> row_shift;  // [R], subtracted from row r's logits
  float scale = 1.0f;
};

// One item of WeightedKMeans: a subset of a matrix's rows, clustered.
struct KMeansItem {
  ConstMatrix points;                 // [N, D]: the pool `members` indexes
  std::span<const uint32_t> members;  // [n], n >= 1: rows of `points`, in the order clustered
  std::span<const float> weights;     // [n], one per member, finite and >= 0
  // [m], 1 <= m <= n: distinct indices into `members`; centroid j starts at member seeds[j].
  std::span<const uint32_t> seeds;
};

// One item of FoldVectors: the query rows of one kv head.
struct FoldItem {
  ConstMatrix rows;    // [R, D], R >= 0, unscaled
  double scale = 1.0;  // the rows' scale (1/sqrt(D))
  double ridge = 0.0;  // relative ridge, >= 0
};

// One item of Gather: rows of a matrix copied out in the given order.
struct GatherItem {
  ConstMatrix source;              // [N, W]
  std::span<const uint32_t> rows;  // [n], each < N, repeats allowed
};

// One item of MergeRuns: a run of tokens merged into one entry.
struct MergeRunItem {
  ConstMatrix keys;                   // [T, D]
  ConstMatrix values;                 // [T, D]
  std::span<const uint32_t> members;  // [n], n >= 1, each < T
  std::span<const double> weights;    // [n], >= 0, with a finite positive sum
};

class ComputeBackend {
 public:
  virtual ~ComputeBackend() = default;

  // "cpu", or the device kind ("cuda").
  virtual std::string_view name() const = 0;

  // The one softmax. logits [rows, cols] row-major, in place: each row becomes softmax weights
  // under the finite-logit rule. `causal` empty, or [rows]: row r's softmax covers columns
  // 0 .. causal[r] (inclusive, < cols) and its other columns are set to 0. `log_sum_exp` empty,
  // or [rows]: receives max + log(sum of exp(x - max)) of the row's covered logits (after the
  // clamp). A row covering nothing (cols == 0) gets log_sum_exp -inf.
  virtual absl::Status Softmax(std::span<float> logits, int rows, int cols,
                               std::span<const int32_t> causal,
                               std::span<float> log_sum_exp) const = 0;

  // Attention mass, the scoring kernel of H2O, SnapKV and SONIC's lookahead: for each item,
  // mass[i] = row_weight * sum over rows r of softmax_r(scale * Q K^T)[i], under the item's causal
  // rule. `mass` is packed: item k's [T_k] starts at T_0 + ... + T_{k-1}, and is overwritten
  // (R = 0 gives zeros). Rows are added in ascending order in float32; each row's weights sum to
  // 1, so sum_i mass[i] == row_weight * R up to rounding.
  virtual absl::Status AttentionMass(std::span<const AttentionMassItem> items,
                                     std::span<float> mass) const = 0;

  // Attention with values, the fit's targets and its error measure: for each item and row r,
  //   logits x_ri = FiniteLogit(scale * q_r . k_i) + key_bias[i]   (no bias: + 0),
  //   p_r = softmax(x_r) (no causal mask), log_mass[r] = log sum_i exp(x_ri),
  //   outputs[r] = sum_i p_ri v_i  (a float32 GEMM of P and V), key_mass[i] = sum_r p_ri.
  // Packed: item k's log_mass at sum R_j, outputs at sum R_j * Dv_j, key_mass at sum M_j (j < k).
  // M = 0: log_mass -inf and outputs 0.
  virtual absl::Status Attend(std::span<const AttendItem> items,
                              const AttendOutputs& out) const = 0;

  // For each item and column j: out[j] = log sum_r exp(FiniteLogit(scale * q_r . c_j) -
  // row_shift[r]), with a running max per column, in double (logits in float32). R = 0: -inf.
  // Packed: item k's [M_k] at sum M_j (j < k).
  virtual absl::Status ColumnLogSumExp(std::span<const ColumnLogSumExpItem> items,
                                       std::span<double> out) const = 0;

  // Weighted Lloyd iterations, every item for `iterations` rounds (>= 0): centroid j starts at
  // member seeds[j]; each round assigns every member to argmax_j FiniteLogit(p . c_j - |c_j|^2 / 2)
  // (p . c_j a float32 GEMM, |c_j|^2 summed in float32 over c in order; ties to the lower j), then
  // moves each centroid with members to their weighted mean (summed in double, in member order; a
  // centroid with zero total weight stays). The assignment returned is the one after the last move.
  // Packed: item k's centroids [m_k, D] at sum m_j * D, its assignment [n_k] (centroid indices)
  // at sum n_j (j < k).
  virtual absl::Status WeightedKMeans(std::span<const KMeansItem> items, int iterations,
                                      std::span<float> centroids,
                                      std::span<uint32_t> assignment) const = 0;

  // The ladder's solve (SONIC's bias fold): for each item, with q_r = scale * FiniteLogit(row r)
  // in double, u = (G + ridge * trace(G) / D * I)^-1 sum_r q_r where G = sum_r q_r q_r^T, by a
  // Cholesky factorization in double, so that q.u ~ 1 on the rows. u is 0 when trace(G) is not
  // positive and finite (no rows, all-zero rows), and each non-finite component is 0. Packed:
  // item k's [D_k] at sum D_j (j < k). Tolerance for a twin: 1e-4 relative to max |u|.
  virtual absl::Status FoldVectors(std::span<const FoldItem> items, std::span<float> out) const = 0;

  // Per row of a ragged batch of scores, the k largest, as ascending offsets within the row:
  // row r is scores[row_starts[r] .. row_starts[r + 1]) (row_starts [rows + 1], non-decreasing,
  // from 0 to scores.size()) and picks k[r] (0 <= k[r] <= its length) of them. Order: higher score
  // first, NaN counting as -infinity, ties to the lower offset (the rule of AppendByScore in
  // compressor/internal/ranking.h), so the pick is exact.
  // Packed: row r's k[r] offsets at k[0] + ... + k[r - 1]; `selected` holds sum k. O(length) per
  // row plus O(k log k) to sort the pick.
  virtual absl::Status TopK(std::span<const float> scores, std::span<const int64_t> row_starts,
                            std::span<const int64_t> k, std::span<uint32_t> selected) const = 0;

  // Copies each item's rows of `source`, in order, into `out`: item k's [n_k, W_k] at
  // sum n_j * W_j (j < k). Exact.
  virtual absl::Status Gather(std::span<const GatherItem> items, std::span<float> out) const = 0;

  // Merged entries: for each item, key = sum_i w_i k_{m_i} / sum_i w_i and the same for values
  // (summed in double in member order, clamped to +-FLT_MAX, then rounded to float32), and
  // bias = log(n). Packed: item k's key and value [D_k] at sum D_j, its bias at k.
  virtual absl::Status MergeRuns(std::span<const MergeRunItem> items, std::span<float> keys,
                                 std::span<float> values, std::span<float> bias) const = 0;

  // dtype conversion, elementwise (a batch is one concatenated span), exactly as tensor/dtype.h:
  // round to nearest even, NaN preserved. DecodeToFloat reads src.size() / DTypeSize(dtype)
  // little-endian elements into dst (sizes must match); EncodeFromFloat writes dst.size() bytes.
  virtual absl::Status DecodeToFloat(std::span<const std::byte> src, DType dtype,
                                     std::span<float> dst) const = 0;
  virtual absl::Status EncodeFromFloat(std::span<const float> src, DType dtype,
                                       std::span<std::byte> dst) const = 0;
};

// The CPU reference (Eigen and OpenBLAS): the specification every other backend is tested
// against. A process-wide singleton; never destroyed.
const ComputeBackend& CpuCompute();

// Threads each OpenBLAS call may use, process-wide (CpuCompute's products and SONIC's fits). A
// server already runs many calls at once on its RPC and fit threads; with more than one BLAS
// thread per call, on a small product (a GetCache's lookahead: 24 probe rows against a few
// thousand keys) the extra threads spin waiting for work and burn CPU without making the call
// faster (docs/performance.md). threads < 1 leaves OpenBLAS's default (one per core).
void SetCpuBlasThreads(int threads);

// For wrappers whose shapes are valid by construction and that run on CpuCompute (which fails
// only on shapes that break an operation's contract): an error is a bug, so this prints it and
// aborts, as a CHECK would. Never use it on a device backend's result.
void DieUnlessOk(const absl::Status& status);

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_COMPUTE_COMPUTE_H_
