// CpuCompute against naive double-precision references, op by op: hand-made edge cases (ties,
// T = 1, causal edges, empty batches, -inf/NaN/overflowing logits) and random shapes. Random
// cases print their seed and shape on failure. A device backend's parity test reuses these
// references with the tolerances named in compute.h.
#include "compressor/compute/compute.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "compressor/compute/internal/cpu_kernels.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nexuskv::compressor {
namespace {

TEST(CpuBlasThreadsTest, SetsOpenBlasPoolAndZeroLeavesIt) {
  const int before = openblas_get_num_threads();
  SetCpuBlasThreads(2);
  EXPECT_EQ(openblas_get_num_threads(), 2);
  SetCpuBlasThreads(1);
  EXPECT_EQ(openblas_get_num_threads(), 1);
  SetCpuBlasThreads(0);
  EXPECT_EQ(openblas_get_num_threads(), 1) << "0 leaves the pool as it is";
  SetCpuBlasThreads(before);
  EXPECT_EQ(openblas_get_num_threads(), before);
}

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Relative tolerance of the CPU kernels against a double reference (vectorized exp, float sums).
constexpr double kRelTolerance = 1e-5;
constexpr double kAbsTolerance = 1e-6;

std::vector<float> Random(size_t n, std::mt19937* rng, float stddev = 1.0f) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> out(n);
  for (float& x : out) x = normal(*rng);
  return out;
}

ConstMatrix Matrix(const std::vector<float>& data, int rows, int cols) {
  return {data, rows, cols};
}

double Dot(const float* a, const float* b, int d) {
  double s = 0.0;
  for (int c = 0; c < d; ++c) s += double{a[c]} * b[c];
  return s;
}

// Softmax of x[0, n) in double under the finite-logit rule; returns the log-sum-exp.
double NaiveSoftmax(std::vector<double>* x) {
  for (double& v : *x) v = FiniteLogit(static_cast<float>(v));
  if (x->empty()) return -std::numeric_limits<double>::infinity();
  const double max = *std::max_element(x->begin(), x->end());
  double sum = 0.0;
  for (double& v : *x) sum += (v = std::exp(v - max));
  for (double& v : *x) v /= sum;
  return max + std::log(sum);
}

void ExpectNear(double got, double want, const std::string& where) {
  EXPECT_NEAR(got, want, kAbsTolerance + kRelTolerance * std::abs(want)) << where;
}

TEST(ComputeTest, NameIsCpu) { EXPECT_EQ(CpuCompute().name(), "cpu"); }

TEST(ComputeTest, ExpNonPositiveTracksExpf) {
  for (float x = 0.0f; x >= -87.0f; x -= 0.0137f) {
    const float want = std::exp(x);
    EXPECT_NEAR(internal::ExpNonPositive(x), want, 3e-7f * want) << "x=" << x;
  }
  EXPECT_EQ(internal::ExpNonPositive(0.0f), 1.0f);
  EXPECT_EQ(internal::ExpNonPositive(-87.5f), 0.0f);
  EXPECT_EQ(internal::ExpNonPositive(-kInf), 0.0f);
}

TEST(ComputeTest, FiniteLogitClampsOverflowAndNaN) {
  EXPECT_EQ(FiniteLogit(kInf), FLT_MAX);
  EXPECT_EQ(FiniteLogit(-kInf), -FLT_MAX);
  EXPECT_EQ(FiniteLogit(kNaN), -FLT_MAX);
  EXPECT_EQ(FiniteLogit(1.5f), 1.5f);
}

TEST(ComputeTest, SoftmaxMatchesNaiveWithCausalRows) {
  std::mt19937 rng(7);
  const int rows = 5, cols = 13;
  std::vector<float> logits = Random(rows * cols, &rng, 4.0f);
  const std::vector<float> input = logits;
  const std::vector<int32_t> causal = {0, 12, 6, 1, 12};  // first and last columns: the edges
  std::vector<float> lse(rows);
  ASSERT_TRUE(CpuCompute().Softmax(logits, rows, cols, causal, lse).ok());
  for (int r = 0; r < rows; ++r) {
    std::vector<double> want(input.begin() + r * cols, input.begin() + r * cols + causal[r] + 1);
    const double want_lse = NaiveSoftmax(&want);
    ExpectNear(lse[r], want_lse, "lse row " + std::to_string(r));
    for (int i = 0; i < cols; ++i) {
      const double w = i <= causal[r] ? want[i] : 0.0;
      ExpectNear(logits[r * cols + i], w, "row " + std::to_string(r) + " col " + std::to_string(i));
    }
  }
}

TEST(ComputeTest, SoftmaxKeepsInfNaNAndHugeLogitsFinite) {
  // +inf and FLT_MAX tie at FLT_MAX and share the row; NaN and -inf get 0.
  std::vector<float> row = {kInf, FLT_MAX, -kInf, kNaN, 3.0f, -FLT_MAX};
  std::vector<float> lse(1);
  ASSERT_TRUE(CpuCompute().Softmax(row, 1, 6, {}, lse).ok());
  EXPECT_THAT(row, ::testing::ElementsAre(0.5f, 0.5f, 0.0f, 0.0f, 0.0f, 0.0f));
  EXPECT_TRUE(std::isfinite(lse[0]));
  // All NaN: every logit is -FLT_MAX, a uniform row.
  std::vector<float> nan_row = {kNaN, kNaN, kNaN, kNaN};
  ASSERT_TRUE(CpuCompute().Softmax(nan_row, 1, 4, {}, {}).ok());
  EXPECT_THAT(nan_row, ::testing::Each(0.25f));
}

TEST(ComputeTest, SoftmaxEdgeShapesAndErrors) {
  std::vector<float> none;
  EXPECT_TRUE(CpuCompute().Softmax(none, 0, 0, {}, {}).ok());
  std::vector<float> one = {42.0f};
  std::vector<float> lse(1);
  ASSERT_TRUE(CpuCompute().Softmax(one, 1, 1, {}, lse).ok());
  EXPECT_EQ(one[0], 1.0f);
  EXPECT_EQ(lse[0], 42.0f);
  std::vector<float> empty_rows(0);
  std::vector<float> lse2(2);
  ASSERT_TRUE(CpuCompute().Softmax(empty_rows, 2, 0, {}, lse2).ok());
  EXPECT_EQ(lse2[0], -kInf);

  std::vector<float> three(3);
  EXPECT_EQ(CpuCompute().Softmax(three, 2, 2, {}, {}).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> four(4);
  const std::vector<int32_t> bad_causal = {0, 2};
  EXPECT_EQ(CpuCompute().Softmax(four, 2, 2, bad_causal, {}).code(),
            absl::StatusCode::kInvalidArgument);
}

// mass[i] in double, from the definition in compute.h.
std::vector<double> NaiveMass(const AttentionMassItem& item) {
  const int t = item.keys.rows, d = item.keys.cols;
  std::vector<double> out(t, 0.0);
  for (int r = 0; r < item.queries.rows; ++r) {
    const int visible = item.causal.empty() ? t : item.causal[r] + 1;
    std::vector<double> x(visible);
    for (int i = 0; i < visible; ++i) {
      x[i] = item.scale * Dot(&item.queries.data[r * d], &item.keys.data[i * d], d);
    }
    NaiveSoftmax(&x);
    for (int i = 0; i < visible; ++i) out[i] += item.row_weight * x[i];
  }
  return out;
}

// Owns what an AttentionMassItem borrows.
struct OwnedMassItem {
  int r = 0, t = 0, d = 0;
  float weight = 1.0f;
  std::vector<float> queries, keys;
  std::vector<int32_t> causal;

  AttentionMassItem view() const {
    return {.queries = Matrix(queries, r, d),
            .keys = Matrix(keys, t, d),
            .scale = 1.0f / std::sqrt(static_cast<float>(d)),
            .row_weight = weight,
            .causal = causal};
  }
  std::string shape() const {
    return "R=" + std::to_string(r) + " T=" + std::to_string(t) + " D=" + std::to_string(d) +
           (causal.empty() ? "" : " causal") + " weight=" + std::to_string(weight);
  }
};

OwnedMassItem RandomMassItem(std::mt19937* rng, int r, int t, int d, bool causal, float weight) {
  OwnedMassItem o{.r = r, .t = t, .d = d, .weight = weight};
  o.queries = Random(static_cast<size_t>(r) * d, rng);
  o.keys = Random(static_cast<size_t>(t) * d, rng);
  if (causal) {
    std::uniform_int_distribution<int32_t> pick(0, t - 1);
    for (int i = 0; i < r; ++i) o.causal.push_back(pick(*rng));
    if (r > 0) o.causal[0] = 0;          // a row that sees only the first key
    if (r > 1) o.causal[r - 1] = t - 1;  // and one that sees them all
  }
  return o;
}

TEST(ComputeTest, AttentionMassMatchesNaiveOnRandomBatches) {
  for (uint32_t seed = 1; seed <= 12; ++seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> size(1, 40);
    const int items = 1 + static_cast<int>(seed % 4);
    std::vector<OwnedMassItem> owned;
    std::vector<AttentionMassItem> batch;
    size_t total = 0;
    for (int k = 0; k < items; ++k) {
      const int r = seed % 5 == 0 ? 0 : size(rng);  // R = 0 gives zeros
      const int t = seed % 3 == 0 ? 1 : size(rng);  // T = 1 gives R * weight on the one key
      const int d = 1 + size(rng) % 16;
      owned.push_back(RandomMassItem(&rng, r, t, d, (seed + k) % 2 == 0, k % 2 == 0 ? 1.0f : 3.0f));
      total += static_cast<size_t>(t);
    }
    for (const OwnedMassItem& o : owned) batch.push_back(o.view());
    std::vector<float> mass(total, -1.0f);
    ASSERT_TRUE(CpuCompute().AttentionMass(batch, mass).ok());
    size_t offset = 0;
    for (int k = 0; k < items; ++k) {
      const std::vector<double> want = NaiveMass(batch[k]);
      for (size_t i = 0; i < want.size(); ++i) {
        ExpectNear(mass[offset + i], want[i],
                   "seed " + std::to_string(seed) + " item " + std::to_string(k) + " " +
                       owned[k].shape() + " token " + std::to_string(i));
      }
      // The same item alone gives the same bits: batching never changes a result.
      std::vector<float> alone(want.size());
      ASSERT_TRUE(CpuCompute().AttentionMass({&batch[k], 1}, alone).ok());
      EXPECT_EQ(0, std::memcmp(alone.data(), mass.data() + offset, alone.size() * sizeof(float)))
          << "seed " << seed << " item " << k << " " << owned[k].shape();
      offset += want.size();
    }
  }
}

TEST(ComputeTest, AttentionMassEdges) {
  // Empty batch.
  EXPECT_TRUE(CpuCompute().AttentionMass({}, {}).ok());
  // T = 1: every row puts its whole weight on the one key.
  std::mt19937 rng(3);
  OwnedMassItem one = RandomMassItem(&rng, 4, 1, 8, true, 2.5f);
  std::vector<float> mass(1);
  const AttentionMassItem item = one.view();
  ASSERT_TRUE(CpuCompute().AttentionMass({&item, 1}, mass).ok());
  EXPECT_FLOAT_EQ(mass[0], 10.0f);
  // Overflowing dot products: the keys are huge, yet the mass is finite and each row sums to 1.
  OwnedMassItem huge = RandomMassItem(&rng, 3, 5, 4, false, 1.0f);
  for (float& k : huge.keys) k *= 1e37f;
  huge.keys[0] = kInf;
  std::vector<float> huge_mass(5);
  const AttentionMassItem huge_item = huge.view();
  ASSERT_TRUE(CpuCompute().AttentionMass({&huge_item, 1}, huge_mass).ok());
  for (float m : huge_mass) EXPECT_TRUE(std::isfinite(m));
  EXPECT_NEAR(std::accumulate(huge_mass.begin(), huge_mass.end(), 0.0), 3.0, 1e-5);
}

TEST(ComputeTest, AttentionMassRefusesBadShapes) {
  std::mt19937 rng(4);
  OwnedMassItem o = RandomMassItem(&rng, 2, 3, 4, false, 1.0f);
  AttentionMassItem item = o.view();
  std::vector<float> mass(3);
  std::vector<float> short_mass(2);
  EXPECT_EQ(CpuCompute().AttentionMass({&item, 1}, short_mass).code(),
            absl::StatusCode::kInvalidArgument);
  item.queries.cols = 3;  // data no longer matches [2, 3]
  EXPECT_EQ(CpuCompute().AttentionMass({&item, 1}, mass).code(),
            absl::StatusCode::kInvalidArgument);
  item = o.view();
  const std::vector<int32_t> causal = {0, 3};  // 3 is past the last key
  item.causal = causal;
  EXPECT_EQ(CpuCompute().AttentionMass({&item, 1}, mass).code(),
            absl::StatusCode::kInvalidArgument);
}

// log_mass, outputs and key_mass of one Attend item in double.
void NaiveAttend(const AttendItem& item, std::vector<double>* log_mass,
                 std::vector<double>* outputs, std::vector<double>* key_mass) {
  const int m = item.keys.rows, d = item.keys.cols, dv = item.values.cols;
  key_mass->assign(m, 0.0);
  for (int r = 0; r < item.queries.rows; ++r) {
    std::vector<double> x(m);
    for (int i = 0; i < m; ++i) {
      x[i] = FiniteLogit(static_cast<float>(
                 item.scale * Dot(&item.queries.data[r * d], &item.keys.data[i * d], d))) +
             (item.key_bias.empty() ? 0.0 : item.key_bias[i]);
    }
    log_mass->push_back(NaiveSoftmax(&x));
    for (int c = 0; c < dv; ++c) {
      double o = 0.0;
      for (int i = 0; i < m; ++i) o += x[i] * item.values.data[i * dv + c];
      outputs->push_back(o);
    }
    for (int i = 0; i < m; ++i) (*key_mass)[i] += x[i];
  }
}

TEST(ComputeTest, AttendMatchesNaiveWithAndWithoutBias) {
  for (uint32_t seed = 1; seed <= 8; ++seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> size(1, 30);
    const int items = 1 + static_cast<int>(seed % 3);
    std::vector<std::vector<float>> q(items), k(items), v(items), bias(items);
    std::vector<AttendItem> batch;
    std::vector<std::string> shapes;
    size_t rows = 0, outs = 0, keys = 0;
    for (int i = 0; i < items; ++i) {
      const int r = size(rng), m = seed == 4 && i == 0 ? 0 : size(rng), d = 1 + size(rng) % 9;
      const int dv = 1 + size(rng) % 7;
      q[i] = Random(static_cast<size_t>(r) * d, &rng);
      k[i] = Random(static_cast<size_t>(m) * d, &rng);
      v[i] = Random(static_cast<size_t>(m) * dv, &rng);
      if ((seed + i) % 2 == 0) bias[i] = Random(m, &rng, 3.0f);
      batch.push_back({.queries = Matrix(q[i], r, d),
                       .keys = Matrix(k[i], m, d),
                       .values = Matrix(v[i], m, dv),
                       .key_bias = bias[i],
                       .scale = 1.0f / std::sqrt(static_cast<float>(d))});
      shapes.push_back("seed " + std::to_string(seed) + " item " + std::to_string(i) + " R=" +
                       std::to_string(r) + " M=" + std::to_string(m) + " D=" + std::to_string(d) +
                       " Dv=" + std::to_string(dv) + (bias[i].empty() ? "" : " bias"));
      rows += r;
      outs += static_cast<size_t>(r) * dv;
      keys += m;
    }
    std::vector<float> log_mass(rows), outputs(outs), key_mass(keys);
    ASSERT_TRUE(CpuCompute().Attend(batch, {log_mass, outputs, key_mass}).ok());
    size_t ro = 0, oo = 0, ko = 0;
    for (int i = 0; i < items; ++i) {
      std::vector<double> want_lse, want_out, want_mass;
      NaiveAttend(batch[i], &want_lse, &want_out, &want_mass);
      for (size_t j = 0; j < want_lse.size(); ++j) {
        if (std::isinf(want_lse[j])) {
          EXPECT_EQ(log_mass[ro + j], -kInf) << shapes[i];
        } else {
          EXPECT_NEAR(log_mass[ro + j], want_lse[j], 1e-5) << shapes[i] << " row " << j;
        }
      }
      for (size_t j = 0; j < want_out.size(); ++j) {
        EXPECT_NEAR(outputs[oo + j], want_out[j], 1e-5) << shapes[i] << " output " << j;
      }
      for (size_t j = 0; j < want_mass.size(); ++j) {
        ExpectNear(key_mass[ko + j], want_mass[j], shapes[i] + " key " + std::to_string(j));
      }
      ro += want_lse.size();
      oo += want_out.size();
      ko += want_mass.size();
    }
  }
}

TEST(ComputeTest, ColumnLogSumExpMatchesNaive) {
  std::mt19937 rng(11);
  const int r = 9, m = 6, d = 5;
  const std::vector<float> q = Random(r * d, &rng), c = Random(m * d, &rng, 3.0f);
  const std::vector<float> shift = Random(r, &rng, 10.0f);
  const float scale = 0.5f;
  const std::vector<float> no_rows;
  const ColumnLogSumExpItem items[] = {
      {.queries = Matrix(q, r, d), .columns = Matrix(c, m, d), .row_shift = shift, .scale = scale},
      {.queries = Matrix(no_rows, 0, d), .columns = Matrix(c, m, d), .scale = scale}};
  std::vector<double> out(2 * m);
  ASSERT_TRUE(CpuCompute().ColumnLogSumExp(items, out).ok());
  for (int j = 0; j < m; ++j) {
    double max = -std::numeric_limits<double>::infinity();
    std::vector<double> x(r);
    for (int i = 0; i < r; ++i) {
      x[i] = FiniteLogit(static_cast<float>(scale * Dot(&q[i * d], &c[j * d], d))) - shift[i];
      max = std::max(max, x[i]);
    }
    double sum = 0.0;
    for (double v : x) sum += std::exp(v - max);
    EXPECT_NEAR(out[j], max + std::log(sum), 1e-5) << "column " << j;
    EXPECT_EQ(out[m + j], -std::numeric_limits<double>::infinity()) << "R = 0, column " << j;
  }
}

TEST(ComputeTest, WeightedKMeansFindsSeparatedClustersAndTheirWeightedMeans) {
  // Two well separated clusters in D = 3 around (+10, 0, 0) and (-10, 0, 0), points interleaved.
  std::mt19937 rng(5);
  const int n = 20, d = 3;
  std::vector<float> pool = Random(static_cast<size_t>(n + 2) * d, &rng, 0.5f);
  for (int i = 0; i < n + 2; ++i) pool[i * d] += i % 2 == 0 ? 10.0f : -10.0f;
  std::vector<uint32_t> members(n);
  std::iota(members.begin(), members.end(), 2u);  // rows 2 .. n+1 of the pool
  std::vector<float> weights = Random(n, &rng);
  for (float& w : weights) w = std::abs(w) + 0.1f;
  const std::vector<uint32_t> seeds = {1, 0};  // an odd then an even member
  const KMeansItem item{
      .points = Matrix(pool, n + 2, d), .members = members, .weights = weights, .seeds = seeds};
  // iterations = 0: the centroids are the seed points, exactly.
  std::vector<float> centroids(2 * d);
  std::vector<uint32_t> assignment(n);
  ASSERT_TRUE(CpuCompute().WeightedKMeans({&item, 1}, 0, centroids, assignment).ok());
  for (int c = 0; c < d; ++c) {
    EXPECT_EQ(centroids[c], pool[(2 + 1) * d + c]);
    EXPECT_EQ(centroids[d + c], pool[2 * d + c]);
  }
  ASSERT_TRUE(CpuCompute().WeightedKMeans({&item, 1}, 3, centroids, assignment).ok());
  for (int j = 0; j < 2; ++j) {
    double sum[3] = {0, 0, 0}, mass = 0.0;
    for (int i = 0; i < n; ++i) {
      const uint32_t want = i % 2 == 0 ? 1 : 0;  // member i is pool row i + 2
      EXPECT_EQ(assignment[i], want) << "member " << i;
      if (static_cast<int>(want) != j) continue;
      mass += weights[i];
      for (int c = 0; c < d; ++c) sum[c] += double{weights[i]} * pool[(i + 2) * d + c];
    }
    for (int c = 0; c < d; ++c) EXPECT_NEAR(centroids[j * d + c], sum[c] / mass, 1e-5);
  }
}

TEST(ComputeTest, WeightedKMeansBreaksTiesToTheLowerCentroidAndKeepsAnEmptyOne) {
  // Seeds 0 and 1 are the same point, so every member is as near to both: the first assignment
  // sends all of them to centroid 0. One move takes centroid 0 to their mean (2, 2) and leaves
  // centroid 1, which had no members, where it was; the final assignment follows the move.
  const std::vector<float> pool = {1, 1, 1, 1, 4, 4};
  const std::vector<uint32_t> members = {0, 1, 2};
  const std::vector<float> weights = {1, 1, 1};
  const std::vector<uint32_t> seeds = {0, 1};
  const KMeansItem item{
      .points = Matrix(pool, 3, 2), .members = members, .weights = weights, .seeds = seeds};
  std::vector<float> centroids(4);
  std::vector<uint32_t> assignment(3);
  ASSERT_TRUE(CpuCompute().WeightedKMeans({&item, 1}, 0, centroids, assignment).ok());
  EXPECT_THAT(assignment, ::testing::ElementsAre(0u, 0u, 0u));
  ASSERT_TRUE(CpuCompute().WeightedKMeans({&item, 1}, 1, centroids, assignment).ok());
  EXPECT_THAT(centroids, ::testing::ElementsAre(2.0f, 2.0f, 1.0f, 1.0f));
  EXPECT_THAT(assignment, ::testing::ElementsAre(1u, 1u, 0u));
  const std::vector<uint32_t> bad_seeds = {0, 3};
  const KMeansItem bad{
      .points = Matrix(pool, 3, 2), .members = members, .weights = weights, .seeds = bad_seeds};
  EXPECT_EQ(CpuCompute().WeightedKMeans({&bad, 1}, 1, centroids, assignment).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ComputeTest, FoldVectorsSolveTheRidgeSystem) {
  std::mt19937 rng(13);
  const int r = 12, d = 4;
  const std::vector<float> rows = Random(r * d, &rng);
  const double scale = 0.5, ridge = 0.1;
  const std::vector<float> none;
  const FoldItem items[] = {{Matrix(rows, r, d), scale, ridge}, {Matrix(none, 0, d), scale, ridge}};
  std::vector<float> out(2 * d);
  ASSERT_TRUE(CpuCompute().FoldVectors(items, out).ok());
  // (G + lambda I) u = sum q by Gaussian elimination in double.
  std::vector<std::vector<double>> a(d, std::vector<double>(d + 1, 0.0));
  for (int i = 0; i < r; ++i) {
    for (int x = 0; x < d; ++x) {
      for (int y = 0; y < d; ++y) a[x][y] += scale * rows[i * d + x] * scale * rows[i * d + y];
      a[x][d] += scale * rows[i * d + x];
    }
  }
  double trace = 0.0;
  for (int x = 0; x < d; ++x) trace += a[x][x];
  for (int x = 0; x < d; ++x) a[x][x] += ridge * trace / d;
  for (int p = 0; p < d; ++p) {
    for (int x = p + 1; x < d; ++x) {
      const double f = a[x][p] / a[p][p];
      for (int y = p; y <= d; ++y) a[x][y] -= f * a[p][y];
    }
  }
  std::vector<double> u(d);
  for (int x = d - 1; x >= 0; --x) {
    double v = a[x][d];
    for (int y = x + 1; y < d; ++y) v -= a[x][y] * u[y];
    u[x] = v / a[x][x];
  }
  for (int c = 0; c < d; ++c) {
    EXPECT_NEAR(out[c], u[c], 1e-5 * (1.0 + std::abs(u[c]))) << "component " << c;
    EXPECT_EQ(out[d + c], 0.0f) << "no rows: component " << c;
  }
}

// The k best of a row by a full stable sort: higher first, NaN as -inf, ties to the lower offset.
std::vector<uint32_t> NaiveTopK(std::span<const float> row, size_t k) {
  std::vector<uint32_t> order(row.size());
  std::iota(order.begin(), order.end(), 0u);
  const auto key = [&](uint32_t i) { return row[i] == row[i] ? row[i] : -kInf; };
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return key(a) > key(b); });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

TEST(ComputeTest, TopKMatchesAFullSortWithTiesNaNAndInfinities) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> length(0, 50), level(-3, 3);
    const int rows = 1 + static_cast<int>(seed % 5);
    std::vector<float> scores;
    std::vector<int64_t> starts = {0}, k;
    for (int r = 0; r < rows; ++r) {
      const int n = length(rng);
      for (int i = 0; i < n; ++i) {
        const int v = level(rng);  // few levels: many ties
        scores.push_back(v == -3 ? kNaN : v == 3 ? (i % 2 ? kInf : -kInf) : static_cast<float>(v));
      }
      starts.push_back(static_cast<int64_t>(scores.size()));
      k.push_back(n == 0 ? 0 : std::uniform_int_distribution<int64_t>(0, n)(rng));
    }
    std::vector<uint32_t> selected(static_cast<size_t>(std::accumulate(k.begin(), k.end(), 0L)));
    ASSERT_TRUE(CpuCompute().TopK(scores, starts, k, selected).ok()) << "seed " << seed;
    size_t offset = 0;
    for (int r = 0; r < rows; ++r) {
      const std::span<const float> row(scores.data() + starts[r],
                                       static_cast<size_t>(starts[r + 1] - starts[r]));
      const std::vector<uint32_t> want = NaiveTopK(row, static_cast<size_t>(k[r]));
      const std::vector<uint32_t> got(selected.begin() + offset,
                                      selected.begin() + offset + want.size());
      EXPECT_EQ(got, want) << "seed " << seed << " row " << r << " of " << row.size()
                           << " scores, k = " << k[r];
      offset += want.size();
    }
  }
}

TEST(ComputeTest, TopKEdgesAndErrors) {
  std::vector<uint32_t> none;
  const std::vector<int64_t> zero = {0};
  EXPECT_TRUE(CpuCompute().TopK({}, zero, {}, none).ok());  // empty batch
  const std::vector<float> tied = {1, 1, 1, 1};
  const std::vector<int64_t> starts = {0, 4}, two = {2}, five = {5};
  std::vector<uint32_t> out(2);
  ASSERT_TRUE(CpuCompute().TopK(tied, starts, two, out).ok());
  EXPECT_THAT(out, ::testing::ElementsAre(0u, 1u));
  std::vector<uint32_t> out5(5);
  EXPECT_EQ(CpuCompute().TopK(tied, starts, five, out5).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int64_t> bad_starts = {0, 3};
  EXPECT_EQ(CpuCompute().TopK(tied, bad_starts, two, out).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ComputeTest, GatherCopiesRowsInOrder) {
  const std::vector<float> a = {0, 1, 10, 11, 20, 21}, b = {5, 6, 7};
  const std::vector<uint32_t> rows_a = {2, 0, 2}, rows_b = {0};
  const GatherItem items[] = {{Matrix(a, 3, 2), rows_a}, {Matrix(b, 1, 3), rows_b}};
  std::vector<float> out(9);
  ASSERT_TRUE(CpuCompute().Gather(items, out).ok());
  EXPECT_THAT(out, ::testing::ElementsAre(20, 21, 0, 1, 20, 21, 5, 6, 7));
  const std::vector<uint32_t> past = {3};
  const GatherItem bad = {Matrix(a, 3, 2), past};
  std::vector<float> two(2);
  EXPECT_EQ(CpuCompute().Gather({&bad, 1}, two).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CpuCompute().Gather({}, {}).ok());
}

TEST(ComputeTest, MergeRunsAreWeightedMeansWithLogCountBias) {
  const std::vector<float> keys = {1, 2, 3, 4, 5, 6}, values = {-1, -2, -3, -4, -5, -6};
  const std::vector<uint32_t> members = {0, 2}, single = {1};
  const std::vector<double> weights = {1.0, 3.0}, one = {0.5};
  const MergeRunItem items[] = {{Matrix(keys, 3, 2), Matrix(values, 3, 2), members, weights},
                                {Matrix(keys, 3, 2), Matrix(values, 3, 2), single, one}};
  std::vector<float> k(4), v(4), bias(2);
  ASSERT_TRUE(CpuCompute().MergeRuns(items, k, v, bias).ok());
  EXPECT_THAT(k, ::testing::ElementsAre(4.0f, 5.0f, 3.0f, 4.0f));
  EXPECT_THAT(v, ::testing::ElementsAre(-4.0f, -5.0f, -3.0f, -4.0f));
  EXPECT_FLOAT_EQ(bias[0], std::log(2.0f));
  EXPECT_EQ(bias[1], 0.0f);
  const std::vector<double> zeros = {0.0, 0.0};
  const MergeRunItem bad = {Matrix(keys, 3, 2), Matrix(values, 3, 2), members, zeros};
  std::vector<float> k2(2), v2(2), b2(1);
  EXPECT_EQ(CpuCompute().MergeRuns({&bad, 1}, k2, v2, b2).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ComputeTest, ConversionMatchesTensorDtype) {
  std::mt19937 rng(9);
  std::vector<float> values = Random(257, &rng, 100.0f);
  values.push_back(kInf);
  values.push_back(kNaN);
  values.push_back(1e30f);  // overflows float16
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<std::byte> bytes(values.size() * DTypeSize(dtype));
    ASSERT_TRUE(CpuCompute().EncodeFromFloat(values, dtype, bytes).ok());
    const std::string want = ::nexuskv::EncodeFromFloat(values, dtype);
    ASSERT_EQ(0, std::memcmp(bytes.data(), want.data(), want.size())) << DTypeName(dtype);
    std::vector<float> back(values.size()), want_back(values.size());
    ASSERT_TRUE(CpuCompute().DecodeToFloat(bytes, dtype, back).ok());
    ASSERT_TRUE(::nexuskv::DecodeToFloat(want, dtype, want_back).ok());
    EXPECT_EQ(0, std::memcmp(back.data(), want_back.data(), back.size() * sizeof(float)))
        << DTypeName(dtype);
  }
  std::vector<std::byte> short_bytes(3);
  EXPECT_EQ(CpuCompute().EncodeFromFloat(values, DType::kFloat16, short_bytes).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nexuskv::compressor
