#include "compressor/compressor.h"

#include <algorithm>
#include <numeric>

#include "compressor/full.h"
#include "compressor/h2o.h"
#include "compressor/snapkv.h"
#include "compressor/sonic.h"
#include "compressor/streaming_llm.h"

namespace nexuskv::compressor {

std::vector<int64_t> Compressor::Allocate(std::span<const TurnShape> turns, int64_t budget) const {
  const size_t count = turns.size();
  std::vector<int64_t> result(count, 0);
  std::vector<int64_t> tokens(count);
  int64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    tokens[i] = std::max<int64_t>(turns[i].num_tokens, 0);
    total += tokens[i];
  }
  const int64_t target = std::clamp<int64_t>(budget, 0, total);
  if (target == 0) return result;

  // Exact quotas target * tokens / total: floors first, then one more each to the largest
  // remainders. Since target <= total, a floor plus one never passes a turn's tokens.
  std::vector<int64_t> remainder(count);
  int64_t given = 0;
  for (size_t i = 0; i < count; ++i) {
    const __int128 share = static_cast<__int128>(target) * tokens[i];
    result[i] = static_cast<int64_t>(share / total);
    remainder[i] = static_cast<int64_t>(share % total);
    given += result[i];
  }
  std::vector<size_t> by_remainder(count);
  std::iota(by_remainder.begin(), by_remainder.end(), size_t{0});
  std::stable_sort(by_remainder.begin(), by_remainder.end(), [&](size_t a, size_t b) {
    return remainder[a] > remainder[b] || (remainder[a] == remainder[b] && a > b);
  });
  for (size_t k = 0; given < target; ++k, ++given) ++result[by_remainder[k]];
  return result;
}

CompressorRegistry::CompressorRegistry(std::vector<std::unique_ptr<Compressor>> compressors)
    : compressors_(std::move(compressors)) {}

const CompressorRegistry& CompressorRegistry::Default() {
  static const CompressorRegistry* const registry = Builtin(CpuCompute()).release();
  return *registry;
}

std::unique_ptr<CompressorRegistry> CompressorRegistry::Builtin(const ComputeBackend& compute) {
  std::vector<std::unique_ptr<Compressor>> methods;
  methods.push_back(NewFullCompressor());
  methods.push_back(NewStreamingLlmCompressor());
  methods.push_back(NewH2OCompressor(compute));
  methods.push_back(NewSnapKvCompressor(compute));
  methods.push_back(NewSonicCompressor(SonicParams(), compute));
  return std::make_unique<CompressorRegistry>(std::move(methods));
}

const Compressor* CompressorRegistry::Find(std::string_view name) const {
  for (const auto& compressor : compressors_) {
    if (compressor->name() == name) return compressor.get();
  }
  return nullptr;
}

const Compressor* CompressorRegistry::Fallback() const {
  for (const auto& compressor : compressors_) {
    if (compressor->capabilities().fallback) return compressor.get();
  }
  return nullptr;
}

const Compressor* CompressorRegistry::ServesWithoutRaw() const {
  for (const auto& compressor : compressors_) {
    if (compressor->capabilities().serves_without_raw) return compressor.get();
  }
  return nullptr;
}

std::vector<std::string_view> CompressorRegistry::names() const {
  std::vector<std::string_view> out;
  out.reserve(compressors_.size());
  for (const auto& compressor : compressors_) out.push_back(compressor->name());
  return out;
}

}  // namespace nexuskv::compressor
