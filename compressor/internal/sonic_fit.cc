#include "compressor/internal/sonic_fit.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/status_macros.h"

namespace nexuskv::compressor::internal {
namespace {

// Indices of `scores` at `members`, by descending score, ties to the lower index.
std::vector<uint32_t> ByAttention(std::span<const uint32_t> members, std::span<const float> a) {
  std::vector<uint32_t> order(members.begin(), members.end());
  std::stable_sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) { return a[x] > a[y]; });
  return order;
}

// One entry of a set before it is sorted by offset.
struct Entry {
  uint32_t offset;
  float bias;
  const float* key = nullptr;  // raw entries point into the segment; fitted ones own theirs
  const float* value = nullptr;
  std::vector<float> own_key, own_value;
  std::vector<uint32_t> members;  // tokens merged into a fitted entry (empty for raw ones)
};

// The head-wide state every rung reuses.
struct Segment {
  const HeadInput* in = nullptr;
  SegmentTargets targets;
  std::vector<float> weights;           // [T] k-means weights a_i + eps
  std::vector<uint32_t> nexus_by_mass;  // pass-through tokens, most attended first, then pinned
  std::vector<uint32_t> candidates;     // the other tokens, ascending
};

// One k-means problem: a contiguous chunk of a rung's candidates, clustered into m entries of
// the set `build` (an index into the (head, rung) builds).
struct Chunk {
  const Segment* seg = nullptr;
  size_t build = 0;
  std::span<const uint32_t> members;
  int m = 0;
  std::vector<float> weights;    // per member
  std::vector<float> attention;  // per member
  std::vector<uint32_t> seeds;   // indices into members (set by SeedChunks when it has rows)
};

Chunk MakeChunk(const Segment& seg, size_t build, std::span<const uint32_t> members, int m) {
  Chunk chunk{.seg = &seg, .build = build, .members = members, .m = m};
  const size_t n = members.size();
  chunk.weights.resize(n);
  chunk.attention.resize(n);
  for (size_t i = 0; i < n; ++i) {
    chunk.weights[i] = seg.weights[members[i]];
    chunk.attention[i] = seg.targets.attention[members[i]];
  }
  // Without rows the seeds are evenly spread members; with rows SeedChunks picks them.
  if (seg.in->rows.count == 0) {
    for (int j = 0; j < m; ++j) {
      chunk.seeds.push_back(static_cast<uint32_t>((2 * j + 1) * static_cast<int>(n) / (2 * m)));
    }
  }
  return chunk;
}

// Seeds every chunk with rows with its m most attended members, most attended first, ties to the
// lower index: one TopK batch (a row per chunk), then each pick in that order.
absl::Status SeedChunks(std::span<Chunk> chunks, const ComputeBackend& compute) {
  std::vector<float> scores;
  std::vector<int64_t> starts = {0}, counts;
  for (const Chunk& chunk : chunks) {
    if (chunk.seg->in->rows.count == 0) continue;
    scores.insert(scores.end(), chunk.attention.begin(), chunk.attention.end());
    starts.push_back(static_cast<int64_t>(scores.size()));
    counts.push_back(chunk.m);
  }
  std::vector<uint32_t> picked(
      static_cast<size_t>(std::accumulate(counts.begin(), counts.end(), int64_t{0})));
  NEXUSKV_RETURN_IF_ERROR(compute.TopK(scores, starts, counts, picked));
  size_t offset = 0;
  for (Chunk& chunk : chunks) {
    if (chunk.seg->in->rows.count == 0) continue;
    const size_t m = static_cast<size_t>(chunk.m);
    chunk.seeds =
        ByAttention(std::span<const uint32_t>(picked).subspan(offset, m), chunk.attention);
    offset += m;
  }
  return absl::OkStatus();
}

// Appends the chunk's m entries, from its k-means result (centroids [m, D], assignment [n]) and
// each centroid's unit log-mass (zeros without rows), to *out.
void FinishChunk(const Chunk& chunk, std::span<const float> centroids,
                 std::span<const uint32_t> assignment, std::span<const double> unit,
                 std::vector<Entry>* out) {
  const Segment& seg = *chunk.seg;
  const size_t d = static_cast<size_t>(seg.in->head_dim);
  const bool rowless = seg.in->rows.count == 0;
  const int n = static_cast<int>(chunk.members.size());
  const size_t mm = static_cast<size_t>(chunk.m);
  std::vector<double> mass(mm, 0.0), weight(mm, 0.0), value_sum(mm * d, 0.0);
  std::vector<int> heaviest(mm, -1);
  std::vector<std::vector<uint32_t>> member_lists(mm);
  for (int i = 0; i < n; ++i) {
    const uint32_t j = assignment[i];
    member_lists[j].push_back(chunk.members[i]);
    mass[j] += rowless ? 1.0 : chunk.attention[i];
    weight[j] += chunk.weights[i];
    const float* v = seg.in->values + chunk.members[i] * d;
    for (size_t c = 0; c < d; ++c) value_sum[j * d + c] += double{chunk.weights[i]} * v[c];
    if (heaviest[j] < 0 || chunk.attention[i] > chunk.attention[heaviest[j]]) heaviest[j] = i;
  }
  // Without rows there is no mass to match: an entry weighs as many tokens as its cluster holds.
  for (size_t j = 0; j < mm; ++j) {
    Entry e;
    e.members = std::move(member_lists[j]);
    const int rep = heaviest[j] >= 0 ? heaviest[j] : static_cast<int>(chunk.seeds[j]);
    e.offset = chunk.members[rep];
    double b = mass[j] > 0.0 ? std::log(mass[j]) - unit[j] : double{kSonicMinBias};
    if (!(b == b)) b = kSonicMinBias;
    e.bias = static_cast<float>(std::clamp<double>(b, kSonicMinBias, kSonicMaxBias));
    e.own_key.assign(centroids.begin() + j * d, centroids.begin() + (j + 1) * d);
    e.own_value.resize(d);
    if (weight[j] > 0.0) {
      for (size_t c = 0; c < d; ++c) {
        e.own_value[c] = static_cast<float>(value_sum[j * d + c] / weight[j]);
      }
    } else {
      std::copy_n(seg.in->values + chunk.members[chunk.seeds[j]] * d, d, e.own_value.data());
    }
    out->push_back(std::move(e));
  }
}

// The rung of m entries up to its clustering: the raw entries go to *entries, and the chunks of
// candidates to cluster (contiguous, at most max_cluster_tokens each, never more chunks than
// entries, each with a share of the fitted entries proportional to its size) to *chunks.
void PlanRung(const Segment& seg, size_t build, int m, const SonicParams& params,
              std::vector<Entry>* entries, std::vector<Chunk>* chunks) {
  const size_t d = static_cast<size_t>(seg.in->head_dim);
  const float* keys = seg.in->keys;
  const float* values = seg.in->values;
  const int keep_nexus = std::min<int>(m, static_cast<int>(seg.nexus_by_mass.size()));
  for (int i = 0; i < keep_nexus; ++i) {
    const uint32_t t = seg.nexus_by_mass[i];
    entries->push_back({.offset = t, .bias = 0.0f, .key = keys + t * d, .value = values + t * d});
  }
  const int fit_m = m - keep_nexus;
  const size_t n = seg.candidates.size();
  if (fit_m > 0 && static_cast<size_t>(fit_m) >= n) {
    // Room for every remaining token: keep them exactly.
    for (uint32_t t : seg.candidates) {
      entries->push_back({.offset = t, .bias = 0.0f, .key = keys + t * d, .value = values + t * d});
    }
    return;
  }
  if (fit_m <= 0) return;
  // Shares by largest remainder; every chunk gets >= 1.
  const size_t limit = static_cast<size_t>(std::max(params.max_cluster_tokens, 1));
  const size_t count = std::min<size_t>((n + limit - 1) / limit, static_cast<size_t>(fit_m));
  std::vector<size_t> bounds(count + 1);
  for (size_t c = 0; c <= count; ++c) bounds[c] = n * c / count;
  std::vector<int> share(count, 1);
  int given = static_cast<int>(count);
  std::vector<std::pair<double, size_t>> remainder;
  for (size_t c = 0; c < count; ++c) {
    const double quota = static_cast<double>(fit_m - static_cast<int>(count)) *
                         static_cast<double>(bounds[c + 1] - bounds[c]) / static_cast<double>(n);
    const int whole = static_cast<int>(quota);
    share[c] += whole;
    given += whole;
    remainder.push_back({quota - whole, c});
  }
  std::stable_sort(remainder.begin(), remainder.end(),
                   [](const auto& x, const auto& y) { return x.first > y.first; });
  for (size_t i = 0; given < fit_m; ++i, ++given) ++share[remainder[i % count].second];
  const std::span<const uint32_t> candidates(seg.candidates);
  for (size_t c = 0; c < count; ++c) {
    const size_t room = bounds[c + 1] - bounds[c];
    chunks->push_back(MakeChunk(seg, build, candidates.subspan(bounds[c], room),
                                std::min(share[c], static_cast<int>(room))));
  }
}

// The set of a rung's entries, sorted by offset (ties keep their order: raw, then by chunk).
NexusSet AssembleSet(const Segment& seg, std::vector<Entry> entries) {
  const size_t d = static_cast<size_t>(seg.in->head_dim);
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& x, const Entry& y) { return x.offset < y.offset; });
  NexusSet set;
  set.assignment.assign(static_cast<size_t>(seg.in->num_tokens), kNotMerged);
  for (const Entry& e : entries) {
    for (uint32_t t : e.members) set.assignment[t] = static_cast<uint32_t>(set.offsets.size());
    set.offsets.push_back(e.offset);
    set.bias.push_back(e.bias);
    const float* key = e.key != nullptr ? e.key : e.own_key.data();
    const float* value = e.value != nullptr ? e.value : e.own_value.data();
    set.keys.insert(set.keys.end(), key, key + d);
    set.values.insert(set.values.end(), value, value + d);
  }
  return set;
}

// The weights, pass-through order and candidates of a head whose targets are set.
void PrepareSegment(Segment* seg) {
  const HeadInput& head = *seg->in;
  const std::vector<float>& a = seg->targets.attention;
  const double mean = std::accumulate(a.begin(), a.end(), 0.0) / std::max(head.num_tokens, 1);
  const float eps = static_cast<float>(std::max(1e-6 * mean, 1e-30));
  seg->weights.resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) seg->weights[i] = a[i] + eps;
  // 0: a candidate; 1: a Nexus offset; 2: pinned (and not a Nexus offset).
  std::vector<uint8_t> kind(static_cast<size_t>(head.num_tokens), 0);
  for (uint32_t t : head.pinned) kind[t] = 2;
  for (uint32_t t : head.nexus_offsets) kind[t] = 1;
  std::vector<uint32_t> nexus, pinned;
  for (uint32_t t = 0; t < static_cast<uint32_t>(head.num_tokens); ++t) {
    (kind[t] == 1 ? nexus : kind[t] == 2 ? pinned : seg->candidates).push_back(t);
  }
  seg->nexus_by_mass = ByAttention(nexus, a);
  for (uint32_t t : ByAttention(pinned, a)) seg->nexus_by_mass.push_back(t);
}

// Clusters every (seeded) chunk (one WeightedKMeans batch), weighs the centroids (one
// ColumnLogSumExp batch over the chunks that have rows) and appends each chunk's entries to its
// build.
absl::Status ClusterChunks(std::span<const Chunk> chunks, const SonicParams& params,
                           const ComputeBackend& compute, std::vector<std::vector<Entry>>* builds) {
  std::vector<KMeansItem> kmeans;
  kmeans.reserve(chunks.size());
  size_t centroid_size = 0, member_size = 0;
  for (const Chunk& chunk : chunks) {
    const HeadInput& in = *chunk.seg->in;
    const size_t span = static_cast<size_t>(in.num_tokens) * static_cast<size_t>(in.head_dim);
    kmeans.push_back({.points = {{in.keys, span}, in.num_tokens, in.head_dim},
                      .members = chunk.members,
                      .weights = chunk.weights,
                      .seeds = chunk.seeds});
    centroid_size += static_cast<size_t>(chunk.m) * static_cast<size_t>(in.head_dim);
    member_size += chunk.members.size();
  }
  std::vector<float> centroids(centroid_size);
  std::vector<uint32_t> assignment(member_size);
  NEXUSKV_RETURN_IF_ERROR(
      compute.WeightedKMeans(kmeans, params.kmeans_iterations, centroids, assignment));

  std::vector<ColumnLogSumExpItem> columns;
  size_t centroid_offset = 0, unit_size = 0;
  for (const Chunk& chunk : chunks) {
    const HeadInput& in = *chunk.seg->in;
    const size_t size = static_cast<size_t>(chunk.m) * static_cast<size_t>(in.head_dim);
    if (in.rows.count > 0) {
      columns.push_back(
          {.queries = {{in.rows.data, static_cast<size_t>(in.rows.count) * in.head_dim},
                       in.rows.count,
                       in.head_dim},
           .columns = {std::span<const float>(centroids).subspan(centroid_offset, size), chunk.m,
                       in.head_dim},
           .row_shift = chunk.seg->targets.log_mass,
           .scale = 1.0f / std::sqrt(static_cast<float>(in.head_dim))});
      unit_size += static_cast<size_t>(chunk.m);
    }
    centroid_offset += size;
  }
  std::vector<double> units(unit_size);
  NEXUSKV_RETURN_IF_ERROR(compute.ColumnLogSumExp(columns, units));

  centroid_offset = 0;
  size_t member_offset = 0, unit_offset = 0;
  for (const Chunk& chunk : chunks) {
    const size_t m = static_cast<size_t>(chunk.m);
    const size_t size = m * static_cast<size_t>(chunk.seg->in->head_dim);
    const bool rowless = chunk.seg->in->rows.count == 0;
    const std::vector<double> zeros(rowless ? m : 0, 0.0);
    const std::span<const double> unit =
        rowless ? std::span<const double>(zeros)
                : std::span<const double>(units).subspan(unit_offset, m);
    FinishChunk(chunk, std::span<const float>(centroids).subspan(centroid_offset, size),
                std::span<const uint32_t>(assignment).subspan(member_offset, chunk.members.size()),
                unit, &(*builds)[chunk.build]);
    centroid_offset += size;
    member_offset += chunk.members.size();
    if (!rowless) unit_offset += m;
  }
  return absl::OkStatus();
}

// Every head's segment: its targets (one ComputeTargets batch), weights, pass-through order and
// candidates. segments[h].in points at heads[h].
absl::StatusOr<std::vector<Segment>> PrepareSegments(std::span<const HeadInput> heads,
                                                     const ComputeBackend& compute) {
  std::vector<TargetsInput> target_inputs;
  for (const HeadInput& head : heads) {
    target_inputs.push_back({.keys = head.keys,
                             .values = head.values,
                             .num_tokens = head.num_tokens,
                             .head_dim = head.head_dim,
                             .rows = head.rows});
  }
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<SegmentTargets> targets,
                           ComputeTargets(target_inputs, compute));
  std::vector<Segment> segments(heads.size());
  for (size_t h = 0; h < heads.size(); ++h) {
    segments[h].in = &heads[h];
    segments[h].targets = std::move(targets[h]);
    PrepareSegment(&segments[h]);
  }
  return segments;
}

// The sets of every rung of every head: fits[h].rungs[k] for rung_sizes[k], with every chunk of
// every rung seeded, clustered and weighed in one batch per step.
absl::Status BuildSets(std::span<const Segment> segments, std::span<const int> rung_sizes,
                       const SonicParams& params, const ComputeBackend& compute,
                       std::vector<HeadFit>* fits) {
  const size_t h_count = segments.size();
  const size_t k_count = rung_sizes.size();
  // builds[h * K + k]: the entries of head h's rung k.
  std::vector<std::vector<Entry>> builds(h_count * k_count);
  std::vector<Chunk> chunks;
  for (size_t h = 0; h < h_count; ++h) {
    for (size_t k = 0; k < k_count; ++k) {
      PlanRung(segments[h], h * k_count + k, rung_sizes[k], params, &builds[h * k_count + k],
               &chunks);
    }
  }
  NEXUSKV_RETURN_IF_ERROR(SeedChunks(chunks, compute));
  NEXUSKV_RETURN_IF_ERROR(ClusterChunks(chunks, params, compute, &builds));
  for (size_t h = 0; h < h_count; ++h) {
    for (size_t k = 0; k < k_count; ++k) {
      (*fits)[h].rungs.push_back(AssembleSet(segments[h], std::move(builds[h * k_count + k])));
    }
  }
  return absl::OkStatus();
}

// Every rung's error (one EvaluateNexusSets batch; without rows, the share of tokens merged
// away), then each head's token mass, moved out of its segment's targets.
absl::Status MeasureSets(std::span<const HeadInput> heads, std::span<Segment> segments,
                         std::span<const int> rung_sizes, const ComputeBackend& compute,
                         std::vector<HeadFit>* fits) {
  const size_t k_count = rung_sizes.size();
  std::vector<SetEvaluation> evaluations;
  for (size_t h = 0; h < heads.size(); ++h) {
    for (const NexusSet& set : (*fits)[h].rungs) {
      evaluations.push_back({.rows = heads[h].rows,
                             .head_dim = heads[h].head_dim,
                             .set = &set,
                             .targets = &segments[h].targets});
    }
  }
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<SonicRungError> errors,
                           EvaluateNexusSets(evaluations, compute));
  for (size_t h = 0; h < heads.size(); ++h) {
    const HeadInput& head = heads[h];
    HeadFit& fit = (*fits)[h];
    for (size_t k = 0; k < k_count; ++k) {
      if (head.rows.count > 0) {
        fit.errors.push_back(errors[h * k_count + k]);
      } else {
        // Nothing to measure against: the share of tokens merged away stands in for the error.
        const float merged =
            1.0f - static_cast<float>(rung_sizes[k]) / static_cast<float>(head.num_tokens);
        fit.errors.push_back({merged, 0.0f});
      }
    }
    fit.token_mass = std::move(segments[h].targets.attention);
  }
  return absl::OkStatus();
}

// Every head's fold vector: one FoldVectors batch.
absl::Status FoldHeads(std::span<const HeadInput> heads, const SonicParams& params,
                       const ComputeBackend& compute, std::vector<HeadFit>* fits) {
  std::vector<FoldItem> folds;
  size_t fold_size = 0;
  for (const HeadInput& head : heads) {
    folds.push_back(
        {.rows = {{head.rows.data, static_cast<size_t>(head.rows.count) * head.head_dim},
                  head.rows.count,
                  head.head_dim},
         .scale = 1.0 / std::sqrt(static_cast<double>(head.head_dim)),
         .ridge = params.fold_ridge});
    fold_size += static_cast<size_t>(head.head_dim);
  }
  std::vector<float> fold(fold_size);
  NEXUSKV_RETURN_IF_ERROR(compute.FoldVectors(folds, fold));
  size_t offset = 0;
  for (size_t h = 0; h < heads.size(); ++h) {
    const size_t d = static_cast<size_t>(heads[h].head_dim);
    (*fits)[h].fold.assign(fold.begin() + offset, fold.begin() + offset + d);
    offset += d;
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<int> SonicRungSizes(int num_tokens, int top_divisor) {
  std::vector<int> sizes;
  for (int m = num_tokens / std::max(top_divisor, 1); m >= 1; m /= 2) sizes.push_back(m);
  if (sizes.empty()) sizes.push_back(1);
  return sizes;
}

absl::StatusOr<std::vector<HeadFit>> FitHeads(std::span<const HeadInput> heads,
                                              std::span<const int> rung_sizes,
                                              const SonicParams& params,
                                              const ComputeBackend& compute) {
  NEXUSKV_ASSIGN_OR_RETURN(std::vector<Segment> segments, PrepareSegments(heads, compute));
  std::vector<HeadFit> fits(heads.size());
  NEXUSKV_RETURN_IF_ERROR(BuildSets(segments, rung_sizes, params, compute, &fits));
  NEXUSKV_RETURN_IF_ERROR(MeasureSets(heads, segments, rung_sizes, compute, &fits));
  NEXUSKV_RETURN_IF_ERROR(FoldHeads(heads, params, compute, &fits));
  return fits;
}

}  // namespace nexuskv::compressor::internal
