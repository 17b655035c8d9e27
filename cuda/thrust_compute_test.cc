// Parity of the Thrust backend (cuda/thrust_compute.h) with the CPU reference (CpuCompute(), the
// specification): every operation of compressor/compute/compute.h, every dtype, random shapes
// (T 1 to 8192, head_dim 64/80/128, GQA groups 1 to 8, ragged batches with empty items) and the
// real SmolLM2 fixture (tests/data), with the tolerances named below. The same source builds
// cuda_thrust_test (the host twin, "cuda-host", run by ctest on every CI run) and
// cuda_thrust_gpu_test (the real GPU build, "cuda", run by tests/gpu/run.sh): it gets whichever
// backend is linked from MakeThrustCompute({}) and never assumes which.
//
// Every comparison goes through a Parity checker that prints, per operation, how many values it
// compared, the largest error and the largest error / tolerance ratio (how close the backend came
// to the bound), and reports the first mismatches with the item, its shape, the index, the
// expected (CPU) and the got (device) value. All random data comes from fixed seeds.
#include "cuda/thrust_compute.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "compressor/compute/compute.h"
#include "gtest/gtest.h"
#include "tensor/dtype.h"

namespace nexuskv::cuda {
namespace {

using compressor::AttendItem;
using compressor::AttendOutputs;
using compressor::AttentionMassItem;
using compressor::ColumnLogSumExpItem;
using compressor::ComputeBackend;
using compressor::ConstMatrix;
using compressor::FoldItem;
using compressor::GatherItem;
using compressor::KMeansItem;
using compressor::MergeRunItem;

// ---------------------------------------------------------------------------------------------
// Tolerances. The named constants come from compute.h's contract; the derived bounds below them
// add what that contract does not cover (logits that are float32 dot products the two backends sum
// in different orders, and sums of many weights), each from a worst-case rounding bound, never
// from what made a run pass.
// ---------------------------------------------------------------------------------------------

// float32 unit roundoff, 2^-24: one rounding of x is within kFloatRoundoff * |x|.
constexpr double kFloatRoundoff = 0x1p-24;
// double unit roundoff, 2^-53.
constexpr double kDoubleRoundoff = 0x1p-53;

// A softmax weight, given the same logits: |got - want| <= kWeightRel * |want| + kWeightAbs
// (compute.h: "within kSoftmaxRelTolerance of each weight (plus 1e-7 absolute)"). Used as is for
// Softmax, whose logits both backends receive.
constexpr double kWeightRel = compressor::kSoftmaxRelTolerance;
constexpr double kWeightAbs = 1e-7;

// A log-sum-exp (Softmax's log_sum_exp, Attend's log_mass, ColumnLogSumExp's out): compute.h's
// 1e-5 absolute. A float32 log-sum-exp is itself rounded to 2^-24 of its size, so a large one (a
// row whose max logit is in the thousands) is also allowed kLogSumExpUlps roundings of itself.
constexpr double kLogSumExpAbs = 1e-5;
constexpr double kLogSumExpUlps = 2.0;

// FoldVectors: compute.h's "1e-4 relative to max |u|", per component, per item.
constexpr double kFoldRel = 1e-4;

// Exact operations (TopK, Gather, MergeRuns, DecodeToFloat, EncodeFromFloat, k-means assignments
// away from near ties): compared bit for bit, no constant.

// Higham's bound on a float32 sum or dot product of n terms in any order: |fl(sum) - sum| <=
// gamma(n) * sum |terms|. Summation order is what differs between a BLAS GEMM and a device loop.
double Gamma(int64_t n) {
  const double nu = static_cast<double>(n) * kFloatRoundoff;
  return nu / (1.0 - nu);
}

// How far apart two backends' logits FiniteLogit(scale * q . k) (+ bias) can be for an item:
// each is within (gamma(D) + u) * |scale| |q| |k| of the exact value (the dot product summed in
// any order, |sum q_c k_c| <= |q| |k| by Cauchy-Schwarz, then one rounding by the scale), and a
// key bias adds one more rounding of |logit| + |bias|. Bound on |logit| = |scale| max|q| max|k|.
double LogitSlack(int d, double scale, double max_q, double max_k, double max_bias = -1.0) {
  const double logit = std::abs(scale) * max_q * max_k;
  double slack = 2.0 * (Gamma(d) + kFloatRoundoff) * logit;
  if (max_bias >= 0.0) slack += 2.0 * kFloatRoundoff * (logit + max_bias);
  return slack;
}

// A weight exp(x - lse) whose logit x and log-sum-exp lse each move by at most `slack` moves by a
// factor of at most exp(2 slack): the relative tolerance of an attention weight whose logits the
// backend computed itself (AttentionMass, Attend) is compute.h's plus that.
double AttentionWeightRel(double slack) { return kWeightRel + std::expm1(2.0 * slack); }

// A sum S of n nonnegative weights w_i, each within rel * w_i + abs of the reference, summed in
// float32 by both backends in possibly different orders: |got - want| <= rel * S + n * abs +
// 2 gamma(n) * S. (AttentionMass sums R rows, key_mass sums R rows, Attend's outputs sum M keys;
// for outputs the weights multiply |v| and S is sum p |v|.)
double SumTolerance(double rel, double abs_per_term, int64_t n, double sum) {
  return (rel + 2.0 * Gamma(n)) * sum + static_cast<double>(n) * abs_per_term;
}

// ---------------------------------------------------------------------------------------------
// Comparison with reporting.
// ---------------------------------------------------------------------------------------------

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

std::string Hex(uint32_t u) {
  std::ostringstream s;
  s << "0x" << std::hex << std::setw(8) << std::setfill('0') << u;
  return s.str();
}

// Counts and reports the comparisons of one operation. Prints a summary line when destroyed.
class Parity {
 public:
  explicit Parity(std::string what) : what_(std::move(what)) {}
  Parity(const Parity&) = delete;
  Parity& operator=(const Parity&) = delete;
  ~Parity() {
    if (failures_ > kShown) {
      ADD_FAILURE() << what_ << ": " << failures_ << " mismatches in all (first " << kShown
                    << " shown)";
    }
    std::printf(
        "[parity] %-58s %10lld values  max|err| %-10.3g max|err|/tol %-8.3g mismatches %lld\n",
        what_.c_str(), static_cast<long long>(count_), max_err_, max_ratio_,
        static_cast<long long>(failures_));
    std::fflush(stdout);
  }

  // |got - want| <= tol; infinities must match exactly and NaN must meet NaN.
  template <typename Where>
  bool Near(double got, double want, double tol, Where&& where) {
    ++count_;
    if (!std::isfinite(want) || !std::isfinite(got)) {
      if (got == want || (std::isnan(got) && std::isnan(want))) return true;
      return Fail(where(), got, want, tol);
    }
    const double err = std::abs(got - want);
    max_err_ = std::max(max_err_, err);
    if (tol > 0.0) max_ratio_ = std::max(max_ratio_, err / tol);
    if (err <= tol) return true;
    return Fail(where(), got, want, tol);
  }

  // Same bits (a float compared exactly, NaN payload included).
  template <typename Where>
  bool SameBits(float got, float want, Where&& where) {
    ++count_;
    if (Bits(got) == Bits(want)) return true;
    ++failures_;
    if (failures_ <= kShown) {
      ADD_FAILURE() << std::setprecision(9) << what_ << " " << where() << ": expected " << want
                    << " (" << Hex(Bits(want)) << ") got " << got << " (" << Hex(Bits(got)) << ")";
    }
    return false;
  }

  // Same integer.
  template <typename Where>
  bool Same(int64_t got, int64_t want, Where&& where) {
    ++count_;
    if (got == want) return true;
    ++failures_;
    if (failures_ <= kShown) {
      ADD_FAILURE() << what_ << " " << where() << ": expected " << want << " got " << got;
    }
    return false;
  }

  // A mismatch found by the caller's own rule.
  void Mismatch(const std::string& message) {
    ++failures_;
    if (failures_ <= kShown) ADD_FAILURE() << what_ << " " << message;
  }
  void Count(int64_t n = 1) { count_ += n; }
  int64_t failures() const { return failures_; }

 private:
  static constexpr int64_t kShown = 10;

  bool Fail(const std::string& where, double got, double want, double tol) {
    ++failures_;
    if (failures_ <= kShown) {
      ADD_FAILURE() << std::setprecision(10) << what_ << " " << where << ": expected " << want
                    << " got " << got << " (|diff| " << std::abs(got - want) << " > tol " << tol
                    << ")";
    }
    return false;
  }

  std::string what_;
  int64_t count_ = 0, failures_ = 0;
  double max_err_ = 0.0, max_ratio_ = 0.0;
};

// ---------------------------------------------------------------------------------------------
// Backends and data.
// ---------------------------------------------------------------------------------------------

const ComputeBackend& Cpu() { return compressor::CpuCompute(); }

// The linked Thrust backend, made once; null (and *error set) when it cannot be made.
const ComputeBackend* SharedDevice(std::string* error) {
  static const absl::StatusOr<std::unique_ptr<ComputeBackend>>* const made =
      new absl::StatusOr<std::unique_ptr<ComputeBackend>>(MakeThrustCompute({}));
  if (!made->ok()) {
    *error = made->status().ToString();
    return nullptr;
  }
  return made->value().get();
}

#define NEXUSKV_GET_DEVICE(var)                                                            \
  std::string var##_error;                                                                 \
  const ComputeBackend* var##_ptr = SharedDevice(&var##_error);                            \
  ASSERT_NE(var##_ptr, nullptr) << "MakeThrustCompute({}) failed: " << var##_error << " (" \
                                << ProbeDevice().description << ")";                       \
  const ComputeBackend& var = *var##_ptr

#define NEXUSKV_ASSERT_OK(expr)                            \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (0)

// Deterministic on every platform: mt19937's bits, and our own uniform and normal from them.
class Rng {
 public:
  explicit Rng(uint32_t seed) : gen_(seed) {}
  uint32_t Bits() { return static_cast<uint32_t>(gen_()); }
  double Uniform() { return (Bits() >> 8) * 0x1p-24; }  // [0, 1)
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  int Int(int n) { return static_cast<int>(Bits() % static_cast<uint32_t>(n)); }  // [0, n)
  float Normal(double stddev) {
    const double u1 = 1.0 - Uniform(), u2 = Uniform();
    return static_cast<float>(stddev * std::sqrt(-2.0 * std::log(u1)) *
                              std::cos(6.283185307179586 * u2));
  }
  std::vector<float> Normals(size_t n, double stddev) {
    std::vector<float> out(n);
    for (float& x : out) x = Normal(stddev);
    return out;
  }

 private:
  std::mt19937 gen_;
};

double Dot(const float* a, const float* b, int d) {
  double s = 0.0;
  for (int c = 0; c < d; ++c) s += static_cast<double>(a[c]) * b[c];
  return s;
}

double Norm(const float* a, int d) { return std::sqrt(Dot(a, a, d)); }

// The largest Euclidean norm of a [rows, d] matrix's rows.
double MaxRowNorm(const std::vector<float>& m, int rows, int d) {
  double best = 0.0;
  for (int r = 0; r < rows; ++r)
    best = std::max(best, Norm(m.data() + static_cast<size_t>(r) * d, d));
  return best;
}

double MaxAbs(std::span<const float> v) {
  double best = 0.0;
  for (float x : v) best = std::max(best, std::abs(static_cast<double>(x)));
  return best;
}

constexpr int kTokens[] = {1, 7, 128, 1000, 8192};
constexpr int kHeadDims[] = {64, 80, 128};
constexpr int kGroups[] = {1, 2, 4, 8};

// One kv head of an attention batch: G query heads of `probes` rows each over T keys, plus what
// Attend and ColumnLogSumExp read. Owns what the items borrow.
struct Head {
  int t = 0, d = 0, g = 0, probes = 0, rows = 0, dv = 0;
  float scale = 1.0f;
  float row_weight = 1.0f;
  std::vector<float> queries, keys, values, bias, shift;
  std::vector<int32_t> causal;  // [rows]: query head h's probe p sees keys 0 .. its offset

  ConstMatrix Q() const { return {queries, rows, d}; }
  ConstMatrix K() const { return {keys, t, d}; }
  ConstMatrix V() const { return {values, t, dv}; }
  std::string Shape() const {
    return absl::StrCat("T=", t, " D=", d, " G=", g, " R=", rows, " Dv=", dv);
  }
};

// Keys and values N(0, 1); half of the query rows are 1.5 x a key plus noise (a peaked attention
// row, as real heads have: on the last, the first or a random key), the rest N(0, 1). Probe p of
// every query head sits at an offset spread evenly over the T tokens, first and last included.
Head MakeHead(int t, int d, int g, int probes, Rng* rng, int dv = -1) {
  Head h;
  h.t = t;
  h.d = d;
  h.g = g;
  h.probes = probes;
  h.rows = g * probes;
  h.dv = dv < 0 ? d : dv;
  h.scale = 1.0f / std::sqrt(static_cast<float>(d));
  h.keys = rng->Normals(static_cast<size_t>(t) * d, 1.0);
  h.values = rng->Normals(static_cast<size_t>(t) * h.dv, 1.0);
  h.queries.resize(static_cast<size_t>(h.rows) * d);
  for (int r = 0; r < h.rows; ++r) {
    float* q = h.queries.data() + static_cast<size_t>(r) * d;
    if (r % 2 == 0 && t > 0) {
      // The peaked rows aim at the last key, the first key and random keys in turn, so that a
      // backend losing a boundary key (an off-by-one over T) moves a large weight, not ~1/T.
      const int target = (r / 2) % 3 == 0 ? t - 1 : ((r / 2) % 3 == 1 ? 0 : rng->Int(t));
      const float* k = h.keys.data() + static_cast<size_t>(target) * d;
      for (int c = 0; c < d; ++c) q[c] = 1.5f * k[c] + rng->Normal(0.5);
    } else {
      for (int c = 0; c < d; ++c) q[c] = rng->Normal(1.0);
    }
  }
  for (int head = 0; head < g; ++head) {
    for (int p = 0; p < probes; ++p) {
      h.causal.push_back(
          probes == 1 ? t - 1
                      : static_cast<int32_t>(static_cast<int64_t>(p) * (t - 1) / (probes - 1)));
    }
  }
  h.bias.resize(t);
  for (float& b : h.bias) b = static_cast<float>(rng->Uniform(-3.0, 1.0));
  h.shift.resize(h.rows);
  for (float& s : h.shift) s = rng->Normal(2.0);
  return h;
}

// A batch of heads of one head_dim over every T and GQA group, with empty (R = 0) items at the
// start, in the middle and at the end, so that the device's ragged packing meets them.
std::vector<Head> RandomBatch(int d, Rng* rng, int probes_per_head = 4) {
  std::vector<Head> heads;
  heads.push_back(MakeHead(5, d, 1, 0, rng));
  for (int t : kTokens) {
    for (int g : kGroups) {
      heads.push_back(MakeHead(t, d, g, std::min(t, probes_per_head), rng));
      if (t == 128 && g == 2) heads.push_back(MakeHead(3, d, 2, 0, rng));
    }
  }
  heads.push_back(MakeHead(1, d, 1, 0, rng));
  return heads;
}

// ---------------------------------------------------------------------------------------------
// The backend itself.
// ---------------------------------------------------------------------------------------------

TEST(ThrustComputeTest, NameAndProbe) {
  NEXUSKV_GET_DEVICE(dev);
  EXPECT_TRUE(dev.name() == "cuda" || dev.name() == "cuda-host") << dev.name();
  const DeviceInfo info = ProbeDevice();
  EXPECT_TRUE(info.usable);
  EXPECT_FALSE(info.description.empty());
  std::printf("[parity] backend %s on %s\n", std::string(dev.name()).c_str(),
              info.description.c_str());
}

TEST(ThrustComputeTest, ZeroMemoryLimitIsInvalid) {
  const absl::StatusOr<std::unique_ptr<ComputeBackend>> made =
      MakeThrustCompute({.memory_limit_bytes = 0});
  EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << made.status();
}

// ---------------------------------------------------------------------------------------------
// Softmax.
// ---------------------------------------------------------------------------------------------

// Runs Softmax on both backends and compares every weight and log-sum-exp.
void CompareSoftmax(const ComputeBackend& dev, const std::string& what, std::vector<float> logits,
                    int rows, int cols, const std::vector<int32_t>& causal, bool with_lse) {
  std::vector<float> want = logits, got = logits;
  std::vector<float> want_lse(with_lse ? rows : 0), got_lse(with_lse ? rows : 0, -123.0f);
  ASSERT_TRUE(Cpu().Softmax(want, rows, cols, causal, want_lse).ok());
  const absl::Status s = dev.Softmax(got, rows, cols, causal, got_lse);
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  Parity weights(absl::StrCat("Softmax weights ", what));
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r) * cols + c;
      const auto where = [&] {
        return absl::StrCat("row ", r, " col ", c, " (logit ", logits[i], ")");
      };
      if (!causal.empty() && c > causal[r]) {
        weights.SameBits(got[i], 0.0f, where);  // "its other columns are set to 0"
      } else {
        weights.Near(got[i], want[i], kWeightRel * std::abs(want[i]) + kWeightAbs, where);
      }
    }
  }
  if (!with_lse) return;
  Parity lse(absl::StrCat("Softmax log_sum_exp ", what));
  for (int r = 0; r < rows; ++r) {
    lse.Near(got_lse[r], want_lse[r],
             kLogSumExpAbs + kLogSumExpUlps * kFloatRoundoff * std::abs(want_lse[r]),
             [&] { return absl::StrCat("row ", r); });
  }
}

TEST(ThrustComputeTest, SoftmaxRandomRowsWithAndWithoutCausalAndLogSumExp) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(101);
  for (int cols : kTokens) {
    const int rows = cols == 8192 ? 6 : 33;
    std::vector<float> logits = rng.Normals(static_cast<size_t>(rows) * cols, 4.0);
    std::vector<int32_t> causal(rows);
    for (int r = 0; r < rows; ++r) causal[r] = rng.Int(cols);
    causal[0] = 0;                // sees only the first column
    causal[rows - 1] = cols - 1;  // sees them all
    const std::string shape = absl::StrCat("[", rows, " x ", cols, "]");
    CompareSoftmax(dev, shape + " plain", logits, rows, cols, {}, false);
    CompareSoftmax(dev, shape + " log_sum_exp", logits, rows, cols, {}, true);
    CompareSoftmax(dev, shape + " causal+log_sum_exp", logits, rows, cols, causal, true);
    CompareSoftmax(dev, shape + " causal", logits, rows, cols, causal, false);
  }
}

TEST(ThrustComputeTest, SoftmaxNonFiniteAndHugeLogitsAndEdgeShapes) {
  NEXUSKV_GET_DEVICE(dev);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  // Rows: +inf and FLT_MAX tie at FLT_MAX; all NaN (uniform); all -inf (uniform at -FLT_MAX);
  // huge finite spread; one NaN among finite; large logits (lse in the thousands).
  const std::vector<float> logits = {
      kInf,    FLT_MAX, -kInf,   kNaN,  3.0f,     -FLT_MAX,  //
      kNaN,    kNaN,    kNaN,    kNaN,  kNaN,     kNaN,      //
      -kInf,   -kInf,   -kInf,   -kInf, -kInf,    -kInf,     //
      1e30f,   -1e30f,  1e-30f,  0.0f,  -0.0f,    3e38f,     //
      1.0f,    2.0f,    kNaN,    4.0f,  -5.0f,    0.5f,      //
      2000.0f, 2001.5f, 1999.0f, -3.0f, 2001.25f, 2000.0f,
  };
  CompareSoftmax(dev, "non-finite [6 x 6]", logits, 6, 6, {}, true);
  CompareSoftmax(dev, "non-finite causal [6 x 6]", logits, 6, 6, {0, 5, 2, 3, 1, 4}, true);
  CompareSoftmax(dev, "[5 x 1] causal 0", {1.0f, -2.0f, kNaN, kInf, 0.0f}, 5, 1, {0, 0, 0, 0, 0},
                 true);
  // cols == 0: every row covers nothing, log_sum_exp -inf.
  CompareSoftmax(dev, "[3 x 0]", {}, 3, 0, {}, true);
  CompareSoftmax(dev, "[0 x 7]", {}, 0, 7, {}, true);
  CompareSoftmax(dev, "[0 x 0]", {}, 0, 0, {}, false);
}

// ---------------------------------------------------------------------------------------------
// AttentionMass.
// ---------------------------------------------------------------------------------------------

// Checks the device's mass of every item against the reference's (shapes[k] describes item k).
// exact_logits: the caller built logits both backends compute bit for bit, so compute.h's weight
// tolerance applies without LogitSlack.
void CheckMass(const std::string& what, const std::vector<AttentionMassItem>& items,
               const std::vector<std::string>& shapes, const std::vector<float>& want,
               const std::vector<float>& got, bool exact_logits = false) {
  Parity mass(absl::StrCat("AttentionMass ", what));
  size_t offset = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const AttentionMassItem& item = items[k];
    const int t = item.keys.rows, d = item.keys.cols, r = item.queries.rows;
    const double slack =
        exact_logits
            ? 0.0
            : LogitSlack(d, item.scale,
                         MaxRowNorm({item.queries.data.begin(), item.queries.data.end()}, r, d),
                         MaxRowNorm({item.keys.data.begin(), item.keys.data.end()}, t, d));
    const double rel = AttentionWeightRel(slack);
    const double w = std::abs(item.row_weight);
    for (int i = 0; i < t; ++i) {
      const double m = want[offset + i];
      // Each row adds row_weight * p_ri: relative `rel`, absolute row_weight * kWeightAbs.
      const double tol = SumTolerance(rel, w * kWeightAbs, std::max(r, 1), m);
      mass.Near(got[offset + i], m, r == 0 ? 0.0 : tol, [&] {
        return absl::StrCat("item ", k, " (", shapes[k], item.causal.empty() ? "" : " causal",
                            " row_weight ", item.row_weight, ") key ", i);
      });
    }
    offset += static_cast<size_t>(t);
  }
}

// Runs AttentionMass on both backends and checks every item.
void CompareMass(const ComputeBackend& dev, const std::string& what,
                 const std::vector<AttentionMassItem>& items,
                 const std::vector<std::string>& shapes, bool exact_logits = false) {
  size_t total = 0;
  for (const AttentionMassItem& item : items) total += static_cast<size_t>(item.keys.rows);
  std::vector<float> want(total), got(total, std::numeric_limits<float>::quiet_NaN());
  NEXUSKV_ASSERT_OK(Cpu().AttentionMass(items, want));
  NEXUSKV_ASSERT_OK(dev.AttentionMass(items, got));
  CheckMass(what, items, shapes, want, got, exact_logits);
}

TEST(ThrustComputeTest, AttentionMassRandomShapesRaggedBatches) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(202);
  for (int d : kHeadDims) {
    const std::vector<Head> heads = RandomBatch(d, &rng);
    std::vector<AttentionMassItem> items;
    std::vector<std::string> shapes;
    for (size_t k = 0; k < heads.size(); ++k) {
      const Head& h = heads[k];
      // Every other item causal; row weights 1, 1 / G and 2.5 in turn.
      const float weight = k % 3 == 0 ? 1.0f : (k % 3 == 1 ? 1.0f / h.g : 2.5f);
      items.push_back(
          {.queries = h.Q(),
           .keys = h.K(),
           .scale = h.scale,
           .row_weight = weight,
           .causal = k % 2 == 1 ? std::span<const int32_t>(h.causal) : std::span<const int32_t>()});
      shapes.push_back(h.Shape());
    }
    CompareMass(dev, absl::StrCat("D=", d, " (", items.size(), " items)"), items, shapes);
  }
}

TEST(ThrustComputeTest, AttentionMassManyQueryRowsOnLongKeys) {
  // R = 256 rows (GQA 8 x 32 probes) over T = 8192 keys, causal: every row's softmax is long and
  // the mass of the first keys sums 256 rows.
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(203);
  const Head h = MakeHead(8192, 128, 8, 32, &rng);
  const std::vector<AttentionMassItem> items = {
      {.queries = h.Q(), .keys = h.K(), .scale = h.scale, .row_weight = 0.125f, .causal = h.causal},
      {.queries = h.Q(), .keys = h.K(), .scale = h.scale, .row_weight = 1.0f}};
  CompareMass(dev, "R=256 T=8192 D=128", items, {h.Shape(), h.Shape()});
}

TEST(ThrustComputeTest, AttentionMassEmptyBatch) {
  NEXUSKV_GET_DEVICE(dev);
  std::vector<float> none;
  EXPECT_TRUE(dev.AttentionMass({}, none).ok());
}

// ---------------------------------------------------------------------------------------------
// Attend.
// ---------------------------------------------------------------------------------------------

// Compares log_mass, outputs and (when wanted) key_mass of every item.
void CompareAttend(const ComputeBackend& dev, const std::string& what,
                   const std::vector<AttendItem>& items, const std::vector<std::string>& shapes,
                   bool want_key_mass, bool exact_logits = false) {
  size_t rows = 0, outputs = 0, keys = 0;
  for (const AttendItem& item : items) {
    rows += item.queries.rows;
    outputs += static_cast<size_t>(item.queries.rows) * item.values.cols;
    keys += item.keys.rows;
  }
  constexpr float kUnset = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> want_lse(rows), want_out(outputs), want_km(want_key_mass ? keys : 0);
  std::vector<float> got_lse(rows, kUnset), got_out(outputs, kUnset),
      got_km(want_key_mass ? keys : 0, kUnset);
  NEXUSKV_ASSERT_OK(Cpu().Attend(items, {want_lse, want_out, want_km}));
  NEXUSKV_ASSERT_OK(dev.Attend(items, {got_lse, got_out, got_km}));

  // sum_i p_ri |v_ic|, the size of each output's terms, from the reference on |V|.
  std::vector<std::vector<float>> abs_values(items.size());
  std::vector<AttendItem> abs_items = items;
  for (size_t k = 0; k < items.size(); ++k) {
    abs_values[k].assign(items[k].values.data.begin(), items[k].values.data.end());
    for (float& v : abs_values[k]) v = std::abs(v);
    abs_items[k].values.data = abs_values[k];
  }
  std::vector<float> abs_lse(rows), abs_out(outputs);
  NEXUSKV_ASSERT_OK(Cpu().Attend(abs_items, {abs_lse, abs_out, {}}));

  Parity lse(absl::StrCat("Attend log_mass ", what));
  Parity out(absl::StrCat("Attend outputs ", what));
  std::unique_ptr<Parity> km;
  if (want_key_mass) km = std::make_unique<Parity>(absl::StrCat("Attend key_mass ", what));
  size_t row_off = 0, out_off = 0, key_off = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const AttendItem& item = items[k];
    const int r = item.queries.rows, m = item.keys.rows, d = item.keys.cols, dv = item.values.cols;
    // exact_logits: the caller built logits both backends compute bit for bit (see
    // AttendExtremeKeyBias), so compute.h's tolerances apply unchanged.
    const double slack =
        exact_logits
            ? 0.0
            : LogitSlack(d, item.scale,
                         MaxRowNorm({item.queries.data.begin(), item.queries.data.end()}, r, d),
                         MaxRowNorm({item.keys.data.begin(), item.keys.data.end()}, m, d),
                         item.key_bias.empty() ? -1.0 : MaxAbs(item.key_bias));
    const double rel = AttentionWeightRel(slack);
    const auto where = [&](const char* part, int64_t i) {
      return [&, part, i] {
        return absl::StrCat("item ", k, " (", shapes[k], item.key_bias.empty() ? "" : " bias", ") ",
                            part, " ", i);
      };
    };
    for (int i = 0; i < r; ++i) {
      const double w = want_lse[row_off + i];
      // M = 0: -inf, compared exactly by Near.
      lse.Near(got_lse[row_off + i], w,
               kLogSumExpAbs + slack + kLogSumExpUlps * kFloatRoundoff * std::abs(w),
               where("row", i));
    }
    std::vector<double> abs_column_sum(dv, 0.0);  // sum_i |v_ic|: each weight's kWeightAbs
    for (int i = 0; i < m; ++i) {
      for (int c = 0; c < dv; ++c) {
        abs_column_sum[c] += std::abs(item.values.data[static_cast<size_t>(i) * dv + c]);
      }
    }
    for (int64_t o = 0; o < static_cast<int64_t>(r) * dv; ++o) {
      const int c = static_cast<int>(o % dv);
      const double size = abs_out[out_off + o];  // sum_i p_ri |v_ic|
      const double tol =
          (rel + 2.0 * Gamma(std::max(m, 1))) * size + kWeightAbs * abs_column_sum[c];
      out.Near(got_out[out_off + o], want_out[out_off + o], m == 0 ? 0.0 : tol, where("output", o));
    }
    if (km) {
      for (int i = 0; i < m; ++i) {
        const double mass = want_km[key_off + i];
        km->Near(got_km[key_off + i], mass, r == 0 ? 0.0 : SumTolerance(rel, kWeightAbs, r, mass),
                 where("key", i));
      }
    }
    row_off += r;
    out_off += static_cast<size_t>(r) * dv;
    key_off += m;
  }
}

TEST(ThrustComputeTest, AttendRandomShapesWithAndWithoutBiasAndKeyMass) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(303);
  for (int d : kHeadDims) {
    std::vector<Head> heads = RandomBatch(d, &rng);
    // M = 0 items (no keys: log_mass -inf, outputs 0), one with rows and one with Dv != D.
    heads.insert(heads.begin() + 3, MakeHead(0, d, 2, 3, &rng));
    heads.push_back(MakeHead(0, d, 1, 1, &rng, 16));
    heads.push_back(MakeHead(300, d, 4, 4, &rng, d / 2));  // Dv = D / 2
    heads.push_back(MakeHead(50, d, 1, 2, &rng, 0));       // Dv = 0: no outputs
    std::vector<AttendItem> items;
    std::vector<std::string> shapes;
    for (size_t k = 0; k < heads.size(); ++k) {
      const Head& h = heads[k];
      items.push_back(
          {.queries = h.Q(),
           .keys = h.K(),
           .values = h.V(),
           .key_bias = k % 2 == 0 ? std::span<const float>(h.bias) : std::span<const float>(),
           .scale = h.scale});
      shapes.push_back(h.Shape());
    }
    const std::string what = absl::StrCat("D=", d, " (", items.size(), " items)");
    CompareAttend(dev, what + " +key_mass", items, shapes, true);
    CompareAttend(dev, what, items, shapes, false);
  }
}

TEST(ThrustComputeTest, AttendExtremeKeyBias) {
  // A -inf bias gives its key nothing (the clamped logit sinks to -FLT_MAX); a row whose every
  // key is biased -inf is uniform; biases of 1e30 swamp the logits and tie. Queries and keys are
  // small integers and the scale a power of two, so every dot product is exact in float32 in any
  // order and both backends hold the same logits (plus bias, rounded once the same way): the
  // weights are held to compute.h's tolerances alone.
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(304);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const auto integer_head = [&](int t, int g, int probes, std::vector<float> bias) {
    Head h = MakeHead(t, 64, g, probes, &rng);
    for (float& x : h.queries) x = static_cast<float>(rng.Int(7) - 3);
    for (float& x : h.keys) x = static_cast<float>(rng.Int(7) - 3);
    h.scale = 0.125f;
    h.bias = std::move(bias);
    return h;
  };
  const Head a = integer_head(9, 2, 3, {-kInf, 0.0f, 1.0f, -kInf, 2.0f, 0.0f, 0.0f, -kInf, 30.0f});
  const Head b = integer_head(4, 1, 2, {-kInf, -kInf, -kInf, -kInf});
  const Head c = integer_head(5, 1, 2, {1e30f, -1e30f, 0.0f, 1e30f, 5.0f});
  const Head e = integer_head(6, 1, 3, {FLT_MAX, 0.0f, -FLT_MAX, 1.0f, FLT_MAX, -3.0f});
  std::vector<AttendItem> items;
  for (const Head* h : {&a, &b, &c, &e}) {
    items.push_back({.queries = h->Q(),
                     .keys = h->K(),
                     .values = h->V(),
                     .key_bias = h->bias,
                     .scale = h->scale});
  }
  CompareAttend(dev, "extreme key_bias", items, {a.Shape(), b.Shape(), c.Shape(), e.Shape()}, true,
                /*exact_logits=*/true);
}

TEST(ThrustComputeTest, SoftmaxAndAttentionOnTheRowsOfAScoredGetCache) {
  // 20 turns x 1024 tokens (the scored GetCache shape): rows of 20480 columns, longer
  // than kTokens' largest. Softmax keeps compute.h's weight and log-sum-exp tolerances here too;
  // peaked logits (N(0, 4^2)) make the row sum the sum of a few large and many small terms.
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(102);
  constexpr int kCols = 20 * 1024;
  CompareSoftmax(dev, "[6 x 20480] log_sum_exp", rng.Normals(size_t{6} * kCols, 4.0), 6, kCols, {},
                 true);
  const Head h = MakeHead(kCols, 128, 8, 2, &rng);
  const AttentionMassItem mass{.queries = h.Q(), .keys = h.K(), .scale = h.scale};
  CompareMass(dev, "T=20480 D=128 G=8", {mass}, {h.Shape()});
  const AttendItem attend{.queries = h.Q(), .keys = h.K(), .values = h.V(), .scale = h.scale};
  CompareAttend(dev, "T=20480 D=128 G=8", {attend}, {h.Shape()}, true);
}

// ---------------------------------------------------------------------------------------------
// ColumnLogSumExp.
// ---------------------------------------------------------------------------------------------

void CompareColumnLse(const ComputeBackend& dev, const std::string& what,
                      const std::vector<ColumnLogSumExpItem>& items,
                      const std::vector<std::string>& shapes, bool exact_logits = false) {
  size_t total = 0;
  for (const ColumnLogSumExpItem& item : items) total += item.columns.rows;
  std::vector<double> want(total), got(total, std::numeric_limits<double>::quiet_NaN());
  NEXUSKV_ASSERT_OK(Cpu().ColumnLogSumExp(items, want));
  NEXUSKV_ASSERT_OK(dev.ColumnLogSumExp(items, got));
  Parity lse(absl::StrCat("ColumnLogSumExp ", what));
  size_t offset = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const ColumnLogSumExpItem& item = items[k];
    const int r = item.queries.rows, m = item.columns.rows, d = item.columns.cols;
    // The logits are float32 dot products (LogitSlack); the rest is double on both sides.
    const double slack =
        exact_logits
            ? 0.0
            : LogitSlack(d, item.scale,
                         MaxRowNorm({item.queries.data.begin(), item.queries.data.end()}, r, d),
                         MaxRowNorm({item.columns.data.begin(), item.columns.data.end()}, m, d));
    for (int j = 0; j < m; ++j) {
      lse.Near(got[offset + j], want[offset + j], kLogSumExpAbs + slack,
               [&] { return absl::StrCat("item ", k, " (", shapes[k], ") column ", j); });
    }
    offset += m;
  }
}

TEST(ThrustComputeTest, ColumnLogSumExpRandomShapesIncludingNoRows) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(404);
  for (int d : kHeadDims) {
    std::vector<Head> heads = RandomBatch(d, &rng);               // has R = 0 items: -inf columns
    heads.insert(heads.begin() + 2, MakeHead(0, d, 2, 3, &rng));  // M = 0: nothing to write
    std::vector<ColumnLogSumExpItem> items;
    std::vector<std::string> shapes;
    for (const Head& h : heads) {
      items.push_back({.queries = h.Q(), .columns = h.K(), .row_shift = h.shift, .scale = h.scale});
      shapes.push_back(h.Shape());
    }
    CompareColumnLse(dev, absl::StrCat("D=", d, " (", items.size(), " items)"), items, shapes);
  }
}

TEST(ThrustComputeTest, OverflowingDotProductsFollowTheFiniteLogitRule) {
  // Dot products that overflow float32: products of +-1e20 entries are +-inf in any summation
  // order, and +inf meeting -inf is NaN in any order, so every logit is the same on both backends:
  // +inf -> FLT_MAX, -inf -> -FLT_MAX, NaN -> -FLT_MAX (compute.h's finite-logit rule). Every
  // other entry is a small integer (exact sums), so the logits are bit-identical and compute.h's
  // tolerances apply as they are.
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(405);
  constexpr float kBig = 1e20f;
  const int t = 12, d = 64, rows = 8;
  Head h = MakeHead(t, d, 2, rows / 2, &rng);
  for (float& x : h.queries) x = static_cast<float>(rng.Int(5) - 2);
  for (float& x : h.keys) x = static_cast<float>(rng.Int(5) - 2);
  for (float& x : h.shift) x = static_cast<float>(rng.Int(9) - 4);
  h.scale = 0.25f;
  const float col0[] = {kBig, 0, -kBig, kBig, 0, 0, -kBig, kBig, 0, 0, 0, -kBig};
  const float col1[] = {-kBig, 0, 0, kBig, kBig, 0, 0, 0, -kBig, 0, 0, kBig};
  for (int i = 0; i < t; ++i) {
    h.keys[static_cast<size_t>(i) * d] = col0[i];
    h.keys[static_cast<size_t>(i) * d + 1] = col1[i];
  }
  for (int r = 0; r < rows; ++r) {  // rows 0..3 reach the huge columns; 4..7 do not
    h.queries[static_cast<size_t>(r) * d] = r < 2 ? kBig : (r < 4 ? -kBig : 0.0f);
    h.queries[static_cast<size_t>(r) * d + 1] = r % 2 == 1 && r < 4 ? kBig : 0.0f;
  }
  const std::vector<std::string> shapes = {h.Shape() + " overflowing"};
  const AttentionMassItem mass[] = {
      {.queries = h.Q(), .keys = h.K(), .scale = h.scale, .row_weight = 1.0f, .causal = h.causal}};
  CompareMass(dev, "overflowing dot products", {mass[0]}, shapes, /*exact_logits=*/true);
  const AttentionMassItem plain{.queries = h.Q(), .keys = h.K(), .scale = h.scale};
  CompareMass(dev, "overflowing dot products, no causal", {plain}, shapes, true);
  const AttendItem attend{.queries = h.Q(), .keys = h.K(), .values = h.V(), .scale = h.scale};
  const AttendItem biased{
      .queries = h.Q(), .keys = h.K(), .values = h.V(), .key_bias = h.bias, .scale = h.scale};
  CompareAttend(dev, "overflowing dot products", {attend, biased}, {shapes[0], shapes[0]}, true,
                true);
  const ColumnLogSumExpItem lse{
      .queries = h.Q(), .columns = h.K(), .row_shift = h.shift, .scale = h.scale};
  CompareColumnLse(dev, "overflowing dot products", {lse}, shapes, true);
}

// ---------------------------------------------------------------------------------------------
// WeightedKMeans.
// ---------------------------------------------------------------------------------------------

// One k-means problem and what its item borrows.
struct KMeansCase {
  int d = 0;
  std::vector<float> points;  // [N, D]
  std::vector<uint32_t> members, seeds;
  std::vector<float> weights;
  int n_points() const { return static_cast<int>(points.size() / d); }
  KMeansItem Item() const { return {{points, n_points(), d}, members, weights, seeds}; }
  std::string Shape() const {
    return absl::StrCat("N=", n_points(), " n=", members.size(), " m=", seeds.size(), " D=", d);
  }
};

// n members in m well separated clusters (centres N(0, 3^2) per coordinate, spread 0.05): every
// member is far nearer its own centre than any other, so no assignment is near a tie. Members are
// a shuffled subset of a larger pool, with repeats; seed j is a member of cluster j; weights in
// [0, 1) with some exact zeros, and the last cluster (when m > 1) weighs nothing in all, so its
// centroid must stay at its seed.
KMeansCase Clusters(int n, int m, int d, Rng* rng) {
  KMeansCase c;
  c.d = d;
  const std::vector<float> centres = rng->Normals(static_cast<size_t>(m) * d, 3.0);
  const int pool = n + n / 4 + 1;
  std::vector<int> cluster(pool);
  c.points.resize(static_cast<size_t>(pool) * d);
  for (int p = 0; p < pool; ++p) {
    cluster[p] = p % m;
    for (int x = 0; x < d; ++x) {
      c.points[static_cast<size_t>(p) * d + x] =
          centres[static_cast<size_t>(cluster[p]) * d + x] + rng->Normal(0.05);
    }
  }
  // Members: pool rows in a shuffled order, the first m covering every cluster; a few repeats.
  std::vector<uint32_t> order(pool);
  std::iota(order.begin(), order.end(), 0u);
  for (int i = pool - 1; i > m; --i) std::swap(order[i], order[m + rng->Int(i - m + 1)]);
  for (int i = 0; i < n; ++i) {
    c.members.push_back(i > m && i % 97 == 0 ? c.members[rng->Int(i)] : order[i]);
  }
  for (int j = 0; j < m; ++j) c.seeds.push_back(static_cast<uint32_t>(j));
  c.weights.resize(n);
  for (int i = 0; i < n; ++i) {
    c.weights[i] = i % 11 == 5 ? 0.0f : static_cast<float>(rng->Uniform());
    if (m > 1 && cluster[c.members[i]] == m - 1) c.weights[i] = 0.0f;
  }
  return c;
}

// Unstructured points N(0, 1): assignments can come near ties, where the contract lets them flip.
KMeansCase Unstructured(int n, int m, int d, Rng* rng) {
  KMeansCase c;
  c.d = d;
  c.points = rng->Normals(static_cast<size_t>(n) * d, 1.0);
  for (int i = 0; i < n; ++i) c.members.push_back(static_cast<uint32_t>(n - 1 - i));
  for (int j = 0; j < m; ++j) c.seeds.push_back(static_cast<uint32_t>(j * (n / m)));
  c.weights.resize(n);
  for (float& w : c.weights) w = static_cast<float>(rng->Uniform(0.1, 2.0));
  return c;
}

// Member i's assignment may differ only if, under the reference's final centroids, its scores
// p . c - |c|^2 / 2 for the two centroids are within what float32 rounding of both backends can
// swap: each score is within (gamma(D) + u) (|p| |c| + |c|^2 / 2) of exact, per backend.
bool NearTie(const float* p, const float* ca, const float* cb, int d) {
  const double na = Norm(ca, d), nb = Norm(cb, d), np = Norm(p, d);
  const double sa = Dot(p, ca, d) - 0.5 * na * na, sb = Dot(p, cb, d) - 0.5 * nb * nb;
  const double slack =
      2.0 * (Gamma(d) + kFloatRoundoff) * (np * na + 0.5 * na * na + np * nb + 0.5 * nb * nb);
  return std::abs(sa - sb) <= slack;
}

// Compares a batch: assignments exactly except at near ties; centroids to one float32 rounding
// (both are weighted means summed in double, rounded once to float32; a different summation order
// moves the double by at most n * 2^-53 * max|p|).
void CompareKMeans(const ComputeBackend& dev, const std::string& what,
                   const std::vector<KMeansCase>& cases, int iterations, bool ties_possible) {
  std::vector<KMeansItem> items;
  size_t cent_total = 0, member_total = 0;
  for (const KMeansCase& c : cases) {
    items.push_back(c.Item());
    cent_total += c.seeds.size() * c.d;
    member_total += c.members.size();
  }
  std::vector<float> want_c(cent_total), got_c(cent_total, std::numeric_limits<float>::quiet_NaN());
  std::vector<uint32_t> want_a(member_total), got_a(member_total, 0xffffffffu);
  NEXUSKV_ASSERT_OK(Cpu().WeightedKMeans(items, iterations, want_c, want_a));
  NEXUSKV_ASSERT_OK(dev.WeightedKMeans(items, iterations, got_c, got_a));
  Parity assign(absl::StrCat("WeightedKMeans assignment ", what, " it=", iterations));
  Parity cent(absl::StrCat("WeightedKMeans centroids ", what, " it=", iterations));
  int64_t near_ties = 0;
  size_t c_off = 0, a_off = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    const KMeansCase& c = cases[k];
    const int d = c.d, n = static_cast<int>(c.members.size()), m = static_cast<int>(c.seeds.size());
    int64_t item_flips = 0;
    for (int i = 0; i < n; ++i) {
      const uint32_t w = want_a[a_off + i], g = got_a[a_off + i];
      assign.Count();
      if (w == g) continue;
      const bool in_range = g < static_cast<uint32_t>(m);
      if (ties_possible && in_range &&
          NearTie(c.points.data() + static_cast<size_t>(c.members[i]) * d,
                  want_c.data() + c_off + static_cast<size_t>(w) * d,
                  want_c.data() + c_off + static_cast<size_t>(g) * d, d)) {
        ++near_ties;
        ++item_flips;
        continue;
      }
      assign.Mismatch(absl::StrCat("item ", k, " (", c.Shape(), ") member ", i,
                                   ": expected centroid ", w, " got ", g,
                                   in_range ? " (not a near tie)" : " (out of range)"));
    }
    double max_point = 0.0;
    for (uint32_t p : c.members) {
      max_point =
          std::max(max_point,
                   MaxAbs({c.points.data() + static_cast<size_t>(p) * d, static_cast<size_t>(d)}));
    }
    for (int64_t e = 0; e < static_cast<int64_t>(m) * d; ++e) {
      const double want = want_c[c_off + e];
      const double tol =
          2.0 * kFloatRoundoff * std::abs(want) + 2.0 * n * kDoubleRoundoff * max_point;
      cent.Near(got_c[c_off + e], want, tol, [&] {
        return absl::StrCat("item ", k, " (", c.Shape(), ") centroid ", e / d, " coordinate ",
                            e % d, item_flips > 0 ? " (after near-tie flips)" : "");
      });
    }
    c_off += static_cast<size_t>(m) * d;
    a_off += n;
  }
  if (near_ties > 0) {
    std::printf("[parity] WeightedKMeans %s it=%d: %lld assignments flipped at near ties\n",
                what.c_str(), iterations, static_cast<long long>(near_ties));
  }
}

TEST(ThrustComputeTest, WeightedKMeansSeparatedClustersExact) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(505);
  // n members in m clusters; one batch per head_dim with every n (ragged).
  const std::pair<int, int> sizes[] = {{1, 1}, {7, 2}, {128, 8}, {1000, 32}, {8192, 64}};
  for (int d : kHeadDims) {
    std::vector<KMeansCase> cases;
    for (const auto& [n, m] : sizes) cases.push_back(Clusters(n, m, d, &rng));
    for (int iterations : {0, 1, 4}) {
      CompareKMeans(dev, absl::StrCat("clusters D=", d), cases, iterations, false);
    }
  }
}

TEST(ThrustComputeTest, WeightedKMeansUnstructuredPointsAllowNearTiesOnly) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(506);
  std::vector<KMeansCase> cases = {Unstructured(1000, 31, 80, &rng),
                                   Unstructured(128, 16, 64, &rng),
                                   Unstructured(300, 300, 128, &rng), Unstructured(2, 1, 64, &rng)};
  for (int iterations : {0, 3}) CompareKMeans(dev, "unstructured", cases, iterations, true);
}

TEST(ThrustComputeTest, WeightedKMeansExactTiesGoToTheLowerCentroid) {
  // Two identical seeds (members 0 and 1 are the same point): every member ties between them
  // exactly and must go to centroid 0 on both backends.
  NEXUSKV_GET_DEVICE(dev);
  KMeansCase c;
  c.d = 64;
  Rng rng(507);
  const std::vector<float> p = rng.Normals(64, 1.0);
  c.points = p;
  c.points.insert(c.points.end(), p.begin(), p.end());
  const std::vector<float> more = rng.Normals(64 * 6, 1.0);
  c.points.insert(c.points.end(), more.begin(), more.end());
  c.members = {0, 1, 2, 3, 4, 5, 6, 7};
  c.seeds = {0, 1, 5};
  c.weights = {1, 1, 1, 1, 1, 1, 1, 1};
  CompareKMeans(dev, "exact ties", {c}, 0, false);
  CompareKMeans(dev, "exact ties", {c}, 2, false);
}

// ---------------------------------------------------------------------------------------------
// FoldVectors.
// ---------------------------------------------------------------------------------------------

// Items whose shape says "zero" (no rows, all-zero rows) must give u = 0; every other item must
// give a nonzero u, so that the relative comparison is never vacuous.
void CompareFold(const ComputeBackend& dev, const std::string& what,
                 const std::vector<FoldItem>& items, const std::vector<std::string>& shapes) {
  size_t total = 0;
  for (const FoldItem& item : items) total += item.rows.cols;
  std::vector<float> want(total), got(total, std::numeric_limits<float>::quiet_NaN());
  NEXUSKV_ASSERT_OK(Cpu().FoldVectors(items, want));
  NEXUSKV_ASSERT_OK(dev.FoldVectors(items, got));
  Parity fold(absl::StrCat("FoldVectors ", what));
  size_t offset = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const int d = items[k].rows.cols;
    const std::span<const float> u(want.data() + offset, d);
    const double tol = kFoldRel * MaxAbs(u);  // 0 when u is 0: zeros must be exact
    const bool zero = shapes[k].find("zero") != std::string::npos;
    EXPECT_EQ(MaxAbs(u) == 0.0, zero)
        << what << " item " << k << " (" << shapes[k] << "): reference max |u| = " << MaxAbs(u);
    for (int c = 0; c < d; ++c) {
      fold.Near(got[offset + c], want[offset + c], tol, [&] {
        return absl::StrCat("item ", k, " (", shapes[k], " ridge ", items[k].ridge, ") component ",
                            c);
      });
    }
    offset += d;
  }
}

TEST(ThrustComputeTest, FoldVectorsRidgeFullRankAndZeroRows) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(606);
  for (int d : kHeadDims) {
    std::vector<std::vector<float>> owned;
    std::vector<FoldItem> items;
    std::vector<std::string> shapes;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto add = [&](int r, double ridge, double mean, const std::string& kind) {
      // Query-like rows: a shared mean direction plus noise (so q.u ~ 1 is a real fit).
      std::vector<float> rows(static_cast<size_t>(r) * d);
      const std::vector<float> centre = rng.Normals(d, mean);
      for (int i = 0; i < r; ++i) {
        for (int c = 0; c < d; ++c)
          rows[static_cast<size_t>(i) * d + c] = centre[c] + rng.Normal(1.0);
      }
      owned.push_back(std::move(rows));
      items.push_back({{owned.back(), r, d}, scale, ridge});
      shapes.push_back(absl::StrCat("R=", r, " D=", d, " ", kind));
    };
    owned.reserve(16);
    add(0, 1e-3, 1.0, "no rows: zero");  // u = 0
    add(1, 1e-3, 1.0, "one row, ridge");
    add(7, 1e-3, 2.0, "rank 7, ridge");
    add(2 * d, 0.0, 2.0, "full rank, ridge 0");  // R = 2D: G is well conditioned
    add(300, 0.0, 0.5, "full rank, ridge 0");
    add(300, 1e-2, 0.5, "ridge");
    add(8192, 1e-4, 1.0, "T=8192 rows, ridge");
    // All-zero rows: trace 0, u = 0.
    owned.emplace_back(static_cast<size_t>(5) * d, 0.0f);
    items.push_back({{owned.back(), 5, d}, scale, 0.0});
    shapes.push_back(absl::StrCat("R=5 D=", d, " all zero"));
    // Rows with +-inf and NaN entries: the finite-logit rule makes them +-FLT_MAX (huge but
    // finite in double), so the Gram matrix stays finite.
    {
      std::vector<float> rows = rng.Normals(static_cast<size_t>(3) * d * 4, 1.0);
      rows[3] = std::numeric_limits<float>::infinity();
      rows[d + 5] = -std::numeric_limits<float>::infinity();
      rows[2 * d + 7] = std::numeric_limits<float>::quiet_NaN();
      owned.push_back(std::move(rows));
      items.push_back({{owned.back(), 3 * 4, d}, scale, 1e-3});
      shapes.push_back(absl::StrCat("R=12 D=", d, " with inf and NaN entries"));
    }
    CompareFold(dev, absl::StrCat("D=", d), items, shapes);
  }
}

// ---------------------------------------------------------------------------------------------
// TopK.
// ---------------------------------------------------------------------------------------------

void CompareTopK(const ComputeBackend& dev, const std::string& what,
                 const std::vector<float>& scores, const std::vector<int64_t>& row_starts,
                 const std::vector<int64_t>& k) {
  const int64_t total = std::accumulate(k.begin(), k.end(), int64_t{0});
  std::vector<uint32_t> want(total), got(total, 0xffffffffu);
  NEXUSKV_ASSERT_OK(Cpu().TopK(scores, row_starts, k, want));
  NEXUSKV_ASSERT_OK(dev.TopK(scores, row_starts, k, got));
  Parity topk(absl::StrCat("TopK ", what));
  int64_t offset = 0;
  for (size_t r = 0; r < k.size(); ++r) {
    for (int64_t i = 0; i < k[r]; ++i) {
      topk.Same(got[offset + i], want[offset + i], [&] {
        const int64_t len = row_starts[r + 1] - row_starts[r];
        return absl::StrCat("row ", r, " (length ", len, ", k ", k[r], ") pick ", i,
                            " (score at expected offset ", scores[row_starts[r] + want[offset + i]],
                            ")");
      });
    }
    offset += k[r];
  }
}

// Scores drawn from a few values (many ties), with NaN, +-inf, -0.0 and +0.0 sprinkled in.
float TiedScore(Rng* rng) {
  switch (rng->Int(16)) {
    case 0:
      return std::numeric_limits<float>::quiet_NaN();
    case 1:
      return -std::numeric_limits<float>::infinity();
    case 2:
      return std::numeric_limits<float>::infinity();
    case 3:
      return -0.0f;
    case 4:
      return 0.0f;
    case 5:
      return -std::numeric_limits<float>::quiet_NaN();
    default:
      return static_cast<float>(rng->Int(6)) - 2.0f;
  }
}

TEST(ThrustComputeTest, TopKRaggedRowsWithTiesNaNSignedZerosAndEdgeKs) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(707);
  std::vector<float> scores;
  std::vector<int64_t> row_starts = {0}, k;
  const auto add_row = [&](std::vector<float> row, int64_t want) {
    scores.insert(scores.end(), row.begin(), row.end());
    row_starts.push_back(static_cast<int64_t>(scores.size()));
    k.push_back(want);
  };
  for (int len : {0, 1, 7, 128, 1000, 8192}) {
    for (int64_t want :
         {int64_t{0}, int64_t{1}, int64_t{len / 3}, int64_t{len - 1}, int64_t{len}}) {
      if (want < 0 || want > len) continue;
      std::vector<float> tied(len), distinct(len);
      for (float& s : tied) s = TiedScore(&rng);
      for (float& s : distinct) s = rng.Normal(1.0);
      add_row(tied, want);
      add_row(distinct, want);
    }
  }
  // Rows of one repeated value: NaN only, -0.0 / +0.0 alternating, -inf only, +inf only.
  add_row(std::vector<float>(50, std::numeric_limits<float>::quiet_NaN()), 17);
  std::vector<float> zeros(60);
  for (int i = 0; i < 60; ++i) zeros[i] = i % 2 == 0 ? -0.0f : 0.0f;
  add_row(zeros, 21);
  add_row(std::vector<float>(40, -std::numeric_limits<float>::infinity()), 9);
  add_row(std::vector<float>(40, std::numeric_limits<float>::infinity()), 9);
  // NaN against -inf: NaN counts as -inf, so they tie and the lower offset wins.
  add_row({std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(),
           std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(), 1.0f},
          3);
  // -0.0 before +0.0 and +0.0 before -0.0: equal scores, lower offset first.
  add_row({-0.0f, 0.0f, -1.0f, 0.0f, -0.0f}, 2);
  add_row({0.0f, -0.0f, -1.0f, -0.0f, 0.0f}, 3);
  // Denormals and FLT_MAX neighbours.
  add_row({1e-45f, -1e-45f, 0.0f, FLT_MAX, -FLT_MAX, FLT_MIN, -FLT_MIN, 1e-45f}, 4);
  CompareTopK(dev, absl::StrCat("ragged (", k.size(), " rows)"), scores, row_starts, k);

  // Many short rows (the row lookup of the device's packing), empty ones among them.
  scores.clear();
  row_starts = {0};
  k.clear();
  for (int r = 0; r < 5000; ++r) {
    const int len = rng.Int(6);
    std::vector<float> row(len);
    for (float& x : row) x = TiedScore(&rng);
    add_row(row, len == 0 ? 0 : rng.Int(len + 1));
  }
  CompareTopK(dev, "5000 short rows", scores, row_starts, k);
}

TEST(ThrustComputeTest, TopKOneLongRowAndEmptyRequests) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(708);
  std::vector<float> scores(200000);
  for (float& s : scores) s = static_cast<float>(rng.Int(1000)) * 0.25f;  // heavy ties
  CompareTopK(dev, "one row of 200000, k 40000", scores, {0, 200000}, {40000});
  CompareTopK(dev, "one row of 200000, k 0", scores, {0, 200000}, {0});
  CompareTopK(dev, "no rows", {}, {0}, {});
  CompareTopK(dev, "empty rows", {}, {0, 0, 0}, {0, 0});
}

// ---------------------------------------------------------------------------------------------
// Gather and MergeRuns (exact).
// ---------------------------------------------------------------------------------------------

TEST(ThrustComputeTest, GatherRaggedItemsBitExact) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(808);
  std::vector<std::vector<float>> sources;
  std::vector<std::vector<uint32_t>> rows;
  std::vector<GatherItem> items;
  sources.reserve(2100);
  rows.reserve(2100);
  const auto add = [&](int n, int w, int picks) {
    std::vector<float> src(static_cast<size_t>(n) * w);
    for (float& x : src) x = FromBits(rng.Bits());  // every bit pattern, NaN payloads included
    std::vector<uint32_t> r(picks);
    for (uint32_t& x : r) x = static_cast<uint32_t>(rng.Int(std::max(n, 1)));
    sources.push_back(std::move(src));
    rows.push_back(std::move(r));
    items.push_back({{sources.back(), n, w}, rows.back()});
  };
  add(5, 64, 0);  // no rows
  for (int t : kTokens) {
    for (int w : kHeadDims) add(t, w, t == 8192 ? 3000 : t + 5);  // repeats
  }
  add(10, 0, 4);  // W = 0
  add(3, 1, 9);
  add(8, 128, 0);
  for (int i = 0; i < 2000; ++i) add(1 + rng.Int(9), 1 + rng.Int(5), rng.Int(4));  // many items
  size_t total = 0;
  for (const GatherItem& item : items) total += item.rows.size() * item.source.cols;
  std::vector<float> want(total), got(total);
  std::fill(got.begin(), got.end(), FromBits(0xdeadbeefu));
  NEXUSKV_ASSERT_OK(Cpu().Gather(items, want));
  NEXUSKV_ASSERT_OK(dev.Gather(items, got));
  Parity gather("Gather ragged");
  for (size_t i = 0; i < total; ++i) {
    gather.SameBits(got[i], want[i], [&] { return absl::StrCat("output float ", i); });
  }
}

TEST(ThrustComputeTest, MergeRunsBitExact) {
  NEXUSKV_GET_DEVICE(dev);
  Rng rng(909);
  struct Run {
    std::vector<float> keys, values;
    std::vector<uint32_t> members;
    std::vector<double> weights;
    int t = 0, d = 0;
  };
  std::vector<Run> runs;
  runs.reserve(64);
  for (int d : kHeadDims) {
    for (int t : kTokens) {
      for (int n : {1, 2, 9, 50}) {
        Run run;
        run.t = t;
        run.d = d;
        run.keys = rng.Normals(static_cast<size_t>(t) * d, 2.0);
        run.values = rng.Normals(static_cast<size_t>(t) * d, 1.0);
        const int first = rng.Int(t);
        for (int i = 0; i < n; ++i) {
          run.members.push_back(static_cast<uint32_t>(std::min(first + i, t - 1)));  // a run
          run.weights.push_back(i % 5 == 3 ? 0.0 : rng.Uniform(1e-3, 3.0));
        }
        if (run.weights.back() == 0.0 && n == 1) run.weights.back() = 1.0;
        if (std::accumulate(run.weights.begin(), run.weights.end(), 0.0) == 0.0) {
          run.weights[0] = 0.5;
        }
        runs.push_back(std::move(run));
      }
    }
  }
  // Values past FLT_MAX: a mean of +inf keys clamps to FLT_MAX (and -inf to -FLT_MAX); a mean
  // near FLT_MAX with tiny weights; denormal values.
  {
    Run run;
    run.t = 3;
    run.d = 4;
    constexpr float kInf = std::numeric_limits<float>::infinity();
    run.keys = {kInf,    -kInf,   FLT_MAX, 1e-42f, kInf, -kInf,
                FLT_MAX, -1e-42f, 1.0f,    2.0f,   3.0f, 4.0f};
    run.values = {FLT_MAX, -FLT_MAX, 1e-40f, 0.0f, FLT_MAX, -FLT_MAX,
                  1e-40f,  -0.0f,    1.0f,   1.0f, 1.0f,    1.0f};
    run.members = {0, 1};
    run.weights = {1e-300, 3e-300};
    runs.push_back(std::move(run));
  }
  std::vector<MergeRunItem> items;
  size_t total = 0;
  for (const Run& run : runs) {
    items.push_back(
        {{run.keys, run.t, run.d}, {run.values, run.t, run.d}, run.members, run.weights});
    total += run.d;
  }
  std::vector<float> want_k(total), want_v(total), want_b(items.size());
  std::vector<float> got_k(total, -7.0f), got_v(total, -7.0f), got_b(items.size(), -7.0f);
  NEXUSKV_ASSERT_OK(Cpu().MergeRuns(items, want_k, want_v, want_b));
  NEXUSKV_ASSERT_OK(dev.MergeRuns(items, got_k, got_v, got_b));
  Parity keys("MergeRuns keys"), values("MergeRuns values"), bias("MergeRuns bias");
  size_t offset = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const auto where = [&](int c) {
      return [&, c] {
        return absl::StrCat("item ", k, " (T=", runs[k].t, " D=", runs[k].d,
                            " n=", runs[k].members.size(), ") component ", c);
      };
    };
    for (int c = 0; c < runs[k].d; ++c) {
      keys.SameBits(got_k[offset + c], want_k[offset + c], where(c));
      values.SameBits(got_v[offset + c], want_v[offset + c], where(c));
    }
    bias.SameBits(got_b[k], want_b[k], where(-1));
    offset += runs[k].d;
  }
}

// ---------------------------------------------------------------------------------------------
// dtype conversion (exact).
// ---------------------------------------------------------------------------------------------

std::vector<std::byte> AsBytes(const std::vector<uint16_t>& v) {
  std::vector<std::byte> out(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    out[2 * i] = static_cast<std::byte>(v[i] & 0xff);
    out[2 * i + 1] = static_cast<std::byte>(v[i] >> 8);
  }
  return out;
}

TEST(ThrustComputeTest, DecodeEveryFloat16AndBFloat16Pattern) {
  NEXUSKV_GET_DEVICE(dev);
  std::vector<uint16_t> all(65536);
  std::iota(all.begin(), all.end(), uint16_t{0});
  const std::vector<std::byte> bytes = AsBytes(all);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    std::vector<float> want(65536), got(65536);
    NEXUSKV_ASSERT_OK(Cpu().DecodeToFloat(bytes, dtype, want));
    NEXUSKV_ASSERT_OK(dev.DecodeToFloat(bytes, dtype, got));
    Parity decode(absl::StrCat("DecodeToFloat every ", DTypeName(dtype), " pattern"));
    for (int i = 0; i < 65536; ++i) {
      decode.SameBits(got[i], want[i], [&] { return absl::StrCat("pattern ", Hex(i)); });
    }
  }
  // float32: every byte pattern of random words, NaN payloads included.
  Rng rng(1001);
  std::vector<std::byte> words(4 * 100000);
  for (std::byte& b : words) b = static_cast<std::byte>(rng.Bits() & 0xff);
  std::vector<float> want(100000), got(100000);
  NEXUSKV_ASSERT_OK(Cpu().DecodeToFloat(words, DType::kFloat32, want));
  NEXUSKV_ASSERT_OK(dev.DecodeToFloat(words, DType::kFloat32, got));
  Parity decode("DecodeToFloat float32 random words");
  for (int i = 0; i < 100000; ++i) {
    decode.SameBits(got[i], want[i], [&] { return absl::StrCat("word ", i); });
  }
}

// float32 inputs that exercise every rounding decision of the 16-bit encodings.
std::vector<float> EncodingInputs() {
  std::vector<uint32_t> bits;
  // bfloat16 keeps the high 16 bits: around each of its rounding boundaries (low half 0x8000,
  // the tie; 0x7fff and 0x8001 beside it) and at the exact values, for every high half.
  for (uint32_t hi = 0; hi < 65536; ++hi) {
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      bits.push_back(hi << 16 | lo);
    }
  }
  // float16: every midpoint between adjacent float16 values (a tie; its neighbours one and two
  // float32 ulps away on each side), from subnormals through the overflow boundary 65520.
  std::vector<float> halves;
  std::vector<uint16_t> positive(0x7c01);  // +0 .. +inf
  std::iota(positive.begin(), positive.end(), uint16_t{0});
  halves.resize(positive.size());
  EXPECT_TRUE(
      DecodeToFloat(std::string_view(reinterpret_cast<const char*>(AsBytes(positive).data()),
                                     positive.size() * 2),
                    DType::kFloat16, halves)
          .ok());
  for (float half : halves) {  // the exact float16 values themselves, both signs
    bits.push_back(Bits(half));
    bits.push_back(Bits(half) | 0x80000000u);
  }
  for (size_t i = 0; i + 1 < halves.size(); ++i) {
    const double lo = halves[i];
    const double hi = std::isinf(halves[i + 1]) ? 65536.0 : halves[i + 1];  // past max: 65520 tie
    const uint32_t mid = Bits(static_cast<float>((lo + hi) / 2));           // exact: 12 bits
    for (int delta = -2; delta <= 2; ++delta) {
      for (uint32_t sign : {0u, 0x80000000u}) bits.push_back((mid + delta) | sign);
    }
  }
  // float32 subnormals, zeros, infinities, NaN payloads (quiet and signalling, both signs),
  // FLT_MAX and the float16 / bfloat16 limits.
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t u :
         {0x00000000u, 0x00000001u, 0x00000fffu, 0x00400000u, 0x007fffffu, 0x00800000u, 0x7f7fffffu,
          0x7f800000u, 0x7f800001u, 0x7fa00000u, 0x7fbfffffu, 0x7fc00000u, 0x7fc00001u, 0x7fd55555u,
          0x7fffffffu, 0x7f7f8000u, 0x7f7f7fffu, 0x477fe000u, 0x477fefffu, 0x477ff000u, 0x477ff001u,
          0x38800000u, 0x387fffffu, 0x33800000u, 0x33000000u, 0x33000001u, 0x32ffffffu}) {
      bits.push_back(u | sign);
    }
  }
  Rng rng(1002);
  for (int i = 0; i < 1000000; ++i) bits.push_back(rng.Bits());
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = FromBits(bits[i]);
  return out;
}

TEST(ThrustComputeTest, EncodeFloat32BoundariesNaNPayloadsSubnormalsAndRandomBits) {
  NEXUSKV_GET_DEVICE(dev);
  const std::vector<float> inputs = EncodingInputs();
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    const size_t size = DTypeSize(dtype);
    std::vector<std::byte> want(inputs.size() * size), got(inputs.size() * size, std::byte{0xa5});
    NEXUSKV_ASSERT_OK(Cpu().EncodeFromFloat(inputs, dtype, want));
    NEXUSKV_ASSERT_OK(dev.EncodeFromFloat(inputs, dtype, got));
    Parity encode(absl::StrCat("EncodeFromFloat to ", DTypeName(dtype)));
    for (size_t i = 0; i < inputs.size(); ++i) {
      uint32_t w = 0, g = 0;
      for (size_t b = 0; b < size; ++b) {
        w |= static_cast<uint32_t>(want[i * size + b]) << (8 * b);
        g |= static_cast<uint32_t>(got[i * size + b]) << (8 * b);
      }
      encode.Same(g, w, [&] { return absl::StrCat("input ", Hex(Bits(inputs[i]))); });
    }
  }
  // Empty spans.
  std::vector<std::byte> none;
  EXPECT_TRUE(dev.EncodeFromFloat({}, DType::kFloat16, none).ok());
  EXPECT_TRUE(dev.DecodeToFloat({}, DType::kBFloat16, {}).ok());
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2 fixture (tests/data/README.md).
// ---------------------------------------------------------------------------------------------

// Where tests/data is: $NEXUSKV_TEST_DATA_DIR, else a NEXUSKV_TEST_DATA_DIR compile definition,
// else beside this source (cuda/../tests/data), which CMake compiles by absolute path.
std::string FixtureDir() {
  if (const char* env = std::getenv("NEXUSKV_TEST_DATA_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
#ifdef NEXUSKV_TEST_DATA_DIR
  return NEXUSKV_TEST_DATA_DIR;
#else
  return (std::filesystem::path(__FILE__).parent_path().parent_path() / "tests" / "data").string();
#endif
}

struct FixtureTurn {
  int t = 0, p = 0, q = 0;
  std::vector<int32_t> probe_offsets;
  // Per layer, float32: keys/values [H, T, D], probes [Hq, P, D], heldout [Hq, Q, D].
  std::vector<std::vector<float>> keys, values, probes, heldout;
};

struct Fixture {
  std::string name;
  int layers = 0, kv_heads = 0, query_heads = 0, d = 0;
  std::vector<FixtureTurn> turns;
  std::vector<std::byte> float16;  // every tensor's raw bytes, concatenated
};

// Reads a tests/data file (safetensors: u64 header length, JSON header, data), decoding its
// float16 tensors with the reference.
absl::StatusOr<Fixture> LoadFixture(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(path);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (file.size() < 8) return absl::InvalidArgumentError(path + ": too short");
  uint64_t header_size = 0;
  for (int b = 7; b >= 0; --b) header_size = header_size << 8 | static_cast<uint8_t>(file[b]);
  if (8 + header_size > file.size()) return absl::InvalidArgumentError(path + ": bad header");
  const nlohmann::json header = nlohmann::json::parse(file.substr(8, header_size));
  const size_t data = 8 + header_size;
  const nlohmann::json& meta = header.at("__metadata__");
  const auto meta_int = [&](const char* key) { return std::stoi(meta.at(key).get<std::string>()); };
  const auto meta_json = [&](const char* key) {
    return nlohmann::json::parse(meta.at(key).get<std::string>());
  };
  Fixture f;
  f.name = std::filesystem::path(path).filename().string();
  f.layers = meta_int("num_layers");
  f.kv_heads = meta_int("num_kv_heads");
  f.query_heads = meta_int("num_query_heads");
  f.d = meta_int("head_dim");
  const std::vector<int> tokens = meta_json("num_tokens").get<std::vector<int>>();
  const std::vector<int> probes = meta_json("num_probe_queries").get<std::vector<int>>();
  const std::vector<int> heldout = meta_json("num_heldout_queries").get<std::vector<int>>();
  const nlohmann::json offsets =
      meta.contains("probe_offsets") ? meta_json("probe_offsets") : nlohmann::json::array();
  const auto tensor = [&](const std::string& name,
                          size_t want_floats) -> absl::StatusOr<std::vector<float>> {
    if (!header.contains(name)) return absl::InvalidArgumentError(path + ": no " + name);
    const nlohmann::json& t = header.at(name);
    if (t.at("dtype") != "F16") return absl::InvalidArgumentError(name + " is not F16");
    const size_t begin = t.at("data_offsets")[0].get<size_t>();
    const size_t end = t.at("data_offsets")[1].get<size_t>();
    if (end - begin != 2 * want_floats || data + end > file.size()) {
      return absl::InvalidArgumentError(name + ": unexpected size");
    }
    const std::byte* bytes = reinterpret_cast<const std::byte*>(file.data() + data + begin);
    f.float16.insert(f.float16.end(), bytes, bytes + (end - begin));
    std::vector<float> out(want_floats);
    const absl::Status s =
        compressor::CpuCompute().DecodeToFloat({bytes, end - begin}, DType::kFloat16, out);
    if (!s.ok()) return s;
    return out;
  };
  for (size_t t = 0; t < tokens.size(); ++t) {
    FixtureTurn turn;
    turn.t = tokens[t];
    turn.p = probes[t];
    turn.q = heldout[t];
    if (t < offsets.size() && !offsets[t].is_null()) {
      turn.probe_offsets = offsets[t].get<std::vector<int32_t>>();
    } else {
      for (int p = 0; p < turn.p; ++p) turn.probe_offsets.push_back(turn.t - turn.p + p);
    }
    for (int l = 0; l < f.layers; ++l) {
      const std::string prefix = absl::StrCat("turns.", t, ".layers.", l, ".");
      const size_t kv = static_cast<size_t>(f.kv_heads) * turn.t * f.d;
      absl::StatusOr<std::vector<float>> keys = tensor(prefix + "keys", kv);
      absl::StatusOr<std::vector<float>> values = tensor(prefix + "values", kv);
      absl::StatusOr<std::vector<float>> pq =
          tensor(prefix + "probe_queries", static_cast<size_t>(f.query_heads) * turn.p * f.d);
      absl::StatusOr<std::vector<float>> hq =
          tensor(prefix + "heldout_queries", static_cast<size_t>(f.query_heads) * turn.q * f.d);
      for (const auto* s : {&keys, &values, &pq, &hq}) {
        if (!s->ok()) return s->status();
      }
      turn.keys.push_back(*std::move(keys));
      turn.values.push_back(*std::move(values));
      turn.probes.push_back(*std::move(pq));
      turn.heldout.push_back(*std::move(hq));
    }
    f.turns.push_back(std::move(turn));
  }
  return f;
}

// Rows of `heads` consecutive heads from `first` of one layer's [H or Hq, N, D] tensor (the query
// heads of a GQA group are consecutive), appended to *out.
void AppendHeads(const std::vector<float>& tensor, int first, int heads, int n, int d,
                 std::vector<float>* out) {
  const size_t begin = static_cast<size_t>(first) * n * d;
  out->insert(out->end(), tensor.begin() + begin,
              tensor.begin() + begin + static_cast<size_t>(heads) * n * d);
}

class FixtureTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fixtures_ = new std::vector<Fixture>();
    for (const char* name : {"smollm2_dialogue0.safetensors", "smollm2_dialogue1.safetensors"}) {
      const std::string path = FixtureDir() + "/" + name;
      if (!std::filesystem::exists(path)) {
        missing_ = path;
        return;
      }
      absl::StatusOr<Fixture> f = LoadFixture(path);
      if (!f.ok()) {
        missing_ = f.status().ToString();
        return;
      }
      fixtures_->push_back(*std::move(f));
    }
  }
  static void TearDownTestSuite() {
    delete fixtures_;
    fixtures_ = nullptr;
  }
  void SetUp() override {
    if (!missing_.empty()) {
      GTEST_SKIP() << "real-KV fixture unavailable: " << missing_
                   << " (tests/data, written by `python -m eval.export_fixture`; set "
                      "NEXUSKV_TEST_DATA_DIR to point elsewhere)";
    }
  }

  static std::vector<Fixture>* fixtures_;
  static std::string missing_;
};
std::vector<Fixture>* FixtureTest::fixtures_ = nullptr;
std::string FixtureTest::missing_;

// Every (layer, kv head, turn t) of a dialogue: the turn's probes (the G query heads of the kv
// head, causal at their offsets) and the next turn's held-out queries, over the keys and values of
// turns 0 .. t concatenated, as the server scores and fits them.
struct HistoryHead {
  int layer = 0, head = 0, turn = 0, tokens = 0, d = 0, probe_rows = 0, heldout_rows = 0;
  std::vector<float> keys, values, probes, heldout, bias;
  std::vector<int32_t> causal;
  std::string Shape(const std::string& file) const {
    return absl::StrCat(file, " layer ", layer, " kv head ", head, " turn ", turn, " (T=", tokens,
                        " probes ", probe_rows, " heldout ", heldout_rows, ")");
  }
};

std::vector<HistoryHead> HistoryHeads(const Fixture& f) {
  std::vector<HistoryHead> out;
  const int g = f.query_heads / f.kv_heads;
  for (int l = 0; l < f.layers; ++l) {
    for (int h = 0; h < f.kv_heads; ++h) {
      int before = 0;
      HistoryHead acc;
      for (size_t t = 0; t < f.turns.size(); ++t) {
        const FixtureTurn& turn = f.turns[t];
        AppendHeads(turn.keys[l], h, 1, turn.t, f.d, &acc.keys);
        AppendHeads(turn.values[l], h, 1, turn.t, f.d, &acc.values);
        HistoryHead head;
        head.layer = l;
        head.head = h;
        head.turn = static_cast<int>(t);
        head.d = f.d;
        head.tokens = before + turn.t;
        head.keys = acc.keys;
        head.values = acc.values;
        AppendHeads(turn.probes[l], h * g, g, turn.p, f.d, &head.probes);
        AppendHeads(turn.heldout[l], h * g, g, turn.q, f.d, &head.heldout);
        head.probe_rows = g * turn.p;
        head.heldout_rows = g * turn.q;
        for (int q = 0; q < g; ++q) {
          for (int p = 0; p < turn.p; ++p) head.causal.push_back(before + turn.probe_offsets[p]);
        }
        // Merged-entry-like biases log(n) on a third of the keys, on odd layers.
        head.bias.assign(head.tokens, 0.0f);
        for (int i = 0; i < head.tokens; i += 3)
          head.bias[i] = std::log(static_cast<float>(1 + i % 4));
        before += turn.t;
        out.push_back(std::move(head));
      }
    }
  }
  return out;
}

TEST_F(FixtureTest, DecodesTheFixturesFloat16Exactly) {
  NEXUSKV_GET_DEVICE(dev);
  for (const Fixture& f : *fixtures_) {
    const size_t n = f.float16.size() / 2;
    std::vector<float> want(n), got(n);
    NEXUSKV_ASSERT_OK(Cpu().DecodeToFloat(f.float16, DType::kFloat16, want));
    NEXUSKV_ASSERT_OK(dev.DecodeToFloat(f.float16, DType::kFloat16, got));
    Parity decode(absl::StrCat("DecodeToFloat SmolLM2 ", f.name));
    for (size_t i = 0; i < n; ++i) {
      decode.SameBits(got[i], want[i], [&] { return absl::StrCat("element ", i); });
    }
    // And back: the float32 round trip re-encodes every value to the same bytes.
    std::vector<std::byte> want_b(f.float16.size()), got_b(f.float16.size());
    NEXUSKV_ASSERT_OK(Cpu().EncodeFromFloat(want, DType::kFloat16, want_b));
    NEXUSKV_ASSERT_OK(dev.EncodeFromFloat(want, DType::kFloat16, got_b));
    EXPECT_TRUE(want_b == got_b) << f.name << ": float16 re-encoding differs";
    NEXUSKV_ASSERT_OK(Cpu().EncodeFromFloat(want, DType::kBFloat16, want_b));
    NEXUSKV_ASSERT_OK(dev.EncodeFromFloat(want, DType::kBFloat16, got_b));
    EXPECT_TRUE(want_b == got_b) << f.name << ": bfloat16 encoding differs";
  }
}

TEST_F(FixtureTest, AttentionMassAttendAndColumnLogSumExpOnEveryLayer) {
  NEXUSKV_GET_DEVICE(dev);
  for (const Fixture& f : *fixtures_) {
    const std::vector<HistoryHead> heads = HistoryHeads(f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(f.d));
    const float row_weight = 1.0f / static_cast<float>(f.query_heads / f.kv_heads);
    std::vector<AttentionMassItem> mass_items;
    std::vector<AttendItem> attend_items;
    std::vector<std::string> shapes;
    for (const HistoryHead& h : heads) {
      // Probes score the history causally (H2O / SnapKV / SONIC's lookahead).
      mass_items.push_back({.queries = {h.probes, h.probe_rows, h.d},
                            .keys = {h.keys, h.tokens, h.d},
                            .scale = scale,
                            .row_weight = row_weight,
                            .causal = h.causal});
      // Held-out queries attend over the whole history (the fit's targets).
      attend_items.push_back(
          {.queries = {h.heldout, h.heldout_rows, h.d},
           .keys = {h.keys, h.tokens, h.d},
           .values = {h.values, h.tokens, h.d},
           .key_bias = h.layer % 2 == 1 ? std::span<const float>(h.bias) : std::span<const float>(),
           .scale = scale});
      shapes.push_back(h.Shape(f.name));
    }
    CompareMass(dev, absl::StrCat("SmolLM2 ", f.name, " (", mass_items.size(), " items)"),
                mass_items, shapes);
    CompareAttend(dev, absl::StrCat("SmolLM2 ", f.name), attend_items, shapes, true);

    // ColumnLogSumExp of the held-out queries, shifted by their log_mass (the fit's use).
    size_t rows = 0, outputs = 0;
    for (const AttendItem& item : attend_items) {
      rows += item.queries.rows;
      outputs += static_cast<size_t>(item.queries.rows) * item.values.cols;
    }
    std::vector<float> log_mass(rows), out(outputs);
    NEXUSKV_ASSERT_OK(Cpu().Attend(attend_items, {log_mass, out, {}}));
    std::vector<ColumnLogSumExpItem> lse_items;
    size_t offset = 0;
    for (const AttendItem& item : attend_items) {
      lse_items.push_back(
          {.queries = item.queries,
           .columns = item.keys,
           .row_shift = {log_mass.data() + offset, static_cast<size_t>(item.queries.rows)},
           .scale = scale});
      offset += item.queries.rows;
    }
    CompareColumnLse(dev, absl::StrCat("SmolLM2 ", f.name), lse_items, shapes);
  }
}

TEST_F(FixtureTest, WeightedKMeansOnRealKeysWeightedByRealAttention) {
  NEXUSKV_GET_DEVICE(dev);
  for (const Fixture& f : *fixtures_) {
    // The whole dialogue's keys per (layer, kv head), weighted by the attention mass the last
    // turn's held-out queries give them (the CPU's), clustered to a quarter of the tokens.
    std::vector<HistoryHead> heads = HistoryHeads(f);
    heads.erase(std::remove_if(heads.begin(), heads.end(),
                               [&](const HistoryHead& h) {
                                 return h.turn != static_cast<int>(f.turns.size()) - 1;
                               }),
                heads.end());
    const float scale = 1.0f / std::sqrt(static_cast<float>(f.d));
    std::vector<KMeansCase> cases;
    for (const HistoryHead& h : heads) {
      KMeansCase c;
      c.d = h.d;
      c.points = h.keys;
      c.members.resize(h.tokens);
      std::iota(c.members.begin(), c.members.end(), 0u);
      const AttentionMassItem item{.queries = {h.heldout, h.heldout_rows, h.d},
                                   .keys = {h.keys, h.tokens, h.d},
                                   .scale = scale};
      c.weights.resize(h.tokens);
      NEXUSKV_ASSERT_OK(Cpu().AttentionMass({&item, 1}, c.weights));
      for (int j = 0; j < h.tokens / 4; ++j) c.seeds.push_back(static_cast<uint32_t>(4 * j + 1));
      cases.push_back(std::move(c));
    }
    for (int iterations : {0, 5}) {
      CompareKMeans(dev, absl::StrCat("SmolLM2 ", f.name, " (", cases.size(), " heads)"), cases,
                    iterations, true);
    }
  }
}

TEST_F(FixtureTest, FoldVectorsOnRealQueries) {
  NEXUSKV_GET_DEVICE(dev);
  for (const Fixture& f : *fixtures_) {
    // Per (layer, kv head): every probe and held-out query of its G query heads over the whole
    // dialogue (3 x 62 = 186 rows > D = 64: full rank), with ridge 0 and with the ladder's ridges.
    const int g = f.query_heads / f.kv_heads;
    std::vector<std::vector<float>> rows;
    std::vector<std::pair<int, int>> where;
    rows.reserve(f.layers * f.kv_heads);
    for (int l = 0; l < f.layers; ++l) {
      for (int h = 0; h < f.kv_heads; ++h) {
        std::vector<float> r;
        for (const FixtureTurn& turn : f.turns) {
          AppendHeads(turn.probes[l], h * g, g, turn.p, f.d, &r);
          AppendHeads(turn.heldout[l], h * g, g, turn.q, f.d, &r);
        }
        rows.push_back(std::move(r));
        where.emplace_back(l, h);
      }
    }
    for (double ridge : {0.0, 1e-3, 1e-1}) {
      std::vector<FoldItem> items;
      std::vector<std::string> shapes;
      for (size_t i = 0; i < rows.size(); ++i) {
        const int r = static_cast<int>(rows[i].size() / f.d);
        items.push_back({{rows[i], r, f.d}, 1.0 / std::sqrt(static_cast<double>(f.d)), ridge});
        shapes.push_back(absl::StrCat(f.name, " layer ", where[i].first, " kv head ",
                                      where[i].second, " R=", r));
      }
      CompareFold(dev, absl::StrCat("SmolLM2 ", f.name, " ridge ", ridge), items, shapes);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Contract: the same InvalidArgument as the reference; the memory bound.
// ---------------------------------------------------------------------------------------------

// Both backends fail with the same code and message.
void ExpectSameError(const absl::Status& want, const absl::Status& got, const std::string& what) {
  EXPECT_EQ(want.code(), absl::StatusCode::kInvalidArgument) << what << ": " << want;
  EXPECT_EQ(got.code(), want.code()) << what << ": " << got;
  EXPECT_EQ(got.message(), want.message()) << what;
}

TEST(ThrustComputeTest, BadBatchesGetTheReferencesInvalidArgument) {
  NEXUSKV_GET_DEVICE(dev);
  const std::vector<float> four(4, 1.0f), six(6, 1.0f), eight(8, 1.0f);
  const std::vector<int32_t> bad_causal = {0, 2};
  const std::vector<uint32_t> rows_ok = {0, 1}, rows_bad = {0, 2}, seeds_bad = {5};
  const std::vector<float> weights2 = {1.0f, 1.0f};
  const std::vector<double> dweights_bad = {1.0, -1.0};
  std::vector<float> out4(4), out2(2), out1(1), out3(3);
  std::vector<double> dout2(2);
  std::vector<uint32_t> uout2(2);
  {
    std::vector<float> a(four), b(four);
    ExpectSameError(Cpu().Softmax(a, 2, 2, bad_causal, {}), dev.Softmax(b, 2, 2, bad_causal, {}),
                    "Softmax causal out of range");
    std::vector<float> c(3), e(3);
    ExpectSameError(Cpu().Softmax(c, 2, 2, {}, {}), dev.Softmax(e, 2, 2, {}, {}),
                    "Softmax wrong size");
  }
  {
    const AttentionMassItem bad{.queries = {four, 2, 2}, .keys = {six, 2, 2}};
    ExpectSameError(Cpu().AttentionMass({&bad, 1}, out2), dev.AttentionMass({&bad, 1}, out2),
                    "AttentionMass keys size");
    const AttentionMassItem ok{.queries = {four, 2, 2}, .keys = {four, 2, 2}};
    const AttentionMassItem no_keys{.queries = {four, 2, 2}, .keys = {{}, 0, 2}};
    const AttentionMassItem two[] = {ok, no_keys};
    ExpectSameError(Cpu().AttentionMass(two, out2), dev.AttentionMass(two, out2),
                    "AttentionMass item 1 without keys");
    ExpectSameError(Cpu().AttentionMass({&ok, 1}, out3), dev.AttentionMass({&ok, 1}, out3),
                    "AttentionMass mass size");
  }
  {
    const AttendItem bad{.queries = {four, 2, 2},
                         .keys = {four, 2, 2},
                         .values = {four, 2, 2},
                         .key_bias = {six.data(), 3}};
    ExpectSameError(Cpu().Attend({&bad, 1}, {out2, out4, {}}),
                    dev.Attend({&bad, 1}, {out2, out4, {}}), "Attend key_bias size");
    const AttendItem ok{.queries = {four, 2, 2}, .keys = {four, 2, 2}, .values = {four, 2, 2}};
    ExpectSameError(Cpu().Attend({&ok, 1}, {out2, out4, out3}),
                    dev.Attend({&ok, 1}, {out2, out4, out3}), "Attend key_mass size");
  }
  {
    const ColumnLogSumExpItem bad{
        .queries = {four, 2, 2}, .columns = {four, 2, 2}, .row_shift = {four.data(), 1}};
    ExpectSameError(Cpu().ColumnLogSumExp({&bad, 1}, dout2), dev.ColumnLogSumExp({&bad, 1}, dout2),
                    "ColumnLogSumExp row_shift");
  }
  {
    const KMeansItem bad{{four, 2, 2}, rows_ok, weights2, seeds_bad};
    ExpectSameError(Cpu().WeightedKMeans({&bad, 1}, 1, out2, uout2),
                    dev.WeightedKMeans({&bad, 1}, 1, out2, uout2), "WeightedKMeans seed");
    const KMeansItem ok{{four, 2, 2}, rows_ok, weights2, {rows_ok.data(), 1}};
    ExpectSameError(Cpu().WeightedKMeans({&ok, 1}, -1, out2, uout2),
                    dev.WeightedKMeans({&ok, 1}, -1, out2, uout2), "WeightedKMeans iterations");
  }
  {
    const FoldItem bad{{four, 2, 2}, 1.0, -1.0};
    ExpectSameError(Cpu().FoldVectors({&bad, 1}, out2), dev.FoldVectors({&bad, 1}, out2),
                    "FoldVectors ridge");
  }
  {
    const std::vector<int64_t> starts = {0, 2, 4}, k_bad = {1, 3}, starts_bad = {0, 2, 3};
    const std::vector<int64_t> k_ok = {1, 1};
    ExpectSameError(Cpu().TopK(four, starts, k_bad, {uout2.data(), 2}),
                    dev.TopK(four, starts, k_bad, {uout2.data(), 2}), "TopK k > length");
    ExpectSameError(Cpu().TopK(four, starts_bad, k_ok, uout2),
                    dev.TopK(four, starts_bad, k_ok, uout2), "TopK row_starts");
  }
  {
    const GatherItem bad{{four, 2, 2}, rows_bad};
    ExpectSameError(Cpu().Gather({&bad, 1}, out4), dev.Gather({&bad, 1}, out4), "Gather row");
  }
  {
    const MergeRunItem bad{{four, 2, 2}, {four, 2, 2}, rows_ok, dweights_bad};
    ExpectSameError(Cpu().MergeRuns({&bad, 1}, out2, out2, out1),
                    dev.MergeRuns({&bad, 1}, out2, out2, out1), "MergeRuns weight");
  }
  {
    const std::vector<std::byte> bytes(5);
    ExpectSameError(Cpu().DecodeToFloat(bytes, DType::kFloat16, out2),
                    dev.DecodeToFloat(bytes, DType::kFloat16, out2), "DecodeToFloat size");
    std::vector<std::byte> dst(3);
    ExpectSameError(Cpu().EncodeFromFloat(four, DType::kBFloat16, dst),
                    dev.EncodeFromFloat(four, DType::kBFloat16, dst), "EncodeFromFloat size");
  }
}

TEST(ThrustComputeTest, BatchOverTheMemoryLimitIsResourceExhaustedNamingTheOperation) {
  absl::StatusOr<std::unique_ptr<ComputeBackend>> made =
      MakeThrustCompute({.memory_limit_bytes = 1024});
  ASSERT_TRUE(made.ok()) << made.status();
  const ComputeBackend& dev = **made;
  Rng rng(1201);
  const Head h = MakeHead(128, 64, 2, 4, &rng);  // 32 KiB of keys alone
  const auto expect = [](const absl::Status& s, const std::string& op) {
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << op << ": " << s;
    EXPECT_NE(s.message().find(op), std::string::npos) << op << ": " << s;
  };
  {
    std::vector<float> logits = h.keys;
    expect(dev.Softmax(logits, 128, 64, {}, {}), "Softmax");
  }
  {
    const AttentionMassItem item{.queries = h.Q(), .keys = h.K(), .scale = h.scale};
    std::vector<float> mass(128);
    expect(dev.AttentionMass({&item, 1}, mass), "AttentionMass");
  }
  {
    const AttendItem item{.queries = h.Q(), .keys = h.K(), .values = h.V(), .scale = h.scale};
    std::vector<float> lse(h.rows), out(static_cast<size_t>(h.rows) * 64), km(128);
    expect(dev.Attend({&item, 1}, {lse, out, km}), "Attend");
  }
  {
    const ColumnLogSumExpItem item{
        .queries = h.Q(), .columns = h.K(), .row_shift = h.shift, .scale = h.scale};
    std::vector<double> out(128);
    expect(dev.ColumnLogSumExp({&item, 1}, out), "ColumnLogSumExp");
  }
  {
    const KMeansCase c = Clusters(128, 8, 64, &rng);
    const KMeansItem item = c.Item();
    std::vector<float> cent(8 * 64);
    std::vector<uint32_t> assign(128);
    expect(dev.WeightedKMeans({&item, 1}, 2, cent, assign), "WeightedKMeans");
  }
  {
    const FoldItem item{h.K(), 0.125, 1e-3};
    std::vector<float> out(64);
    expect(dev.FoldVectors({&item, 1}, out), "FoldVectors");
  }
  {
    const std::vector<int64_t> starts = {0, static_cast<int64_t>(h.keys.size())}, k = {100};
    std::vector<uint32_t> out(100);
    expect(dev.TopK(h.keys, starts, k, out), "TopK");
  }
  {
    const std::vector<uint32_t> rows = {0, 5, 127, 3};
    const GatherItem item{h.K(), rows};
    std::vector<float> out(4 * 64);
    expect(dev.Gather({&item, 1}, out), "Gather");
  }
  {
    const std::vector<uint32_t> members = {3, 4, 5};
    const std::vector<double> weights = {1.0, 2.0, 3.0};
    const MergeRunItem item{h.K(), {h.values, 128, 64}, members, weights};
    std::vector<float> keys(64), values(64), bias(1);
    expect(dev.MergeRuns({&item, 1}, keys, values, bias), "MergeRuns");
  }
  {
    std::vector<float> out(h.keys.size());
    std::vector<std::byte> bytes(h.keys.size() * 2);
    expect(dev.EncodeFromFloat(h.keys, DType::kBFloat16, bytes), "EncodeFromFloat");
    expect(dev.DecodeToFloat(bytes, DType::kBFloat16, out), "DecodeToFloat");
  }
  // A batch within the limit still runs.
  {
    const std::vector<float> one = {1.0f, 2.0f};
    const std::vector<uint32_t> rows = {1, 0};
    const GatherItem item{{one, 2, 1}, rows};
    std::vector<float> out(2);
    ASSERT_TRUE(dev.Gather({&item, 1}, out).ok());
    EXPECT_EQ(out, (std::vector<float>{2.0f, 1.0f}));
  }
}

// ---------------------------------------------------------------------------------------------
// Thread safety: calls from several threads at once give the single-threaded answers.
// ---------------------------------------------------------------------------------------------

TEST(ThrustComputeTest, ConcurrentCallsMatchTheReference) {
  NEXUSKV_GET_DEVICE(dev);
  constexpr int kThreads = 4;
  std::vector<Head> heads;
  Rng rng(1301);
  for (int i = 0; i < kThreads; ++i) heads.push_back(MakeHead(500 + 100 * i, 64, 1 + i, 4, &rng));
  std::vector<std::vector<float>> got(kThreads), want(kThreads);
  std::vector<absl::Status> status(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    want[i].resize(heads[i].t);
    got[i].resize(heads[i].t);
    const AttentionMassItem item{
        .queries = heads[i].Q(), .keys = heads[i].K(), .scale = heads[i].scale};
    ASSERT_TRUE(Cpu().AttentionMass({&item, 1}, want[i]).ok());
    threads.emplace_back([&, i, item] {
      for (int repeat = 0; repeat < 5 && status[i].ok(); ++repeat) {
        status[i] = dev.AttentionMass({&item, 1}, got[i]);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(status[i].ok()) << status[i];
    const AttentionMassItem item{
        .queries = heads[i].Q(), .keys = heads[i].K(), .scale = heads[i].scale};
    CheckMass(absl::StrCat("AttentionMass from ", kThreads, " threads at once, thread ", i), {item},
              {heads[i].Shape()}, want[i], got[i]);
  }
}

}  // namespace
}  // namespace nexuskv::cuda
