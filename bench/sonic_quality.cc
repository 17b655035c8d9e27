// sonic_quality: the issue-4 quality measure on real-KV files, every method side by side.
//
//   build/bin/sonic_quality tests/data/smollm2_dialogue0.safetensors ... [--layers=N]
//
// For each keep ratio (0.5, 0.2) prints, per method, the mean relative attention-output error of
// held-out queries over the whole concatenated history (compressor/testing/history_eval.h), plus
// SONIC bias-free and SONIC without probes (the proxy). Files in the tests/data format.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "compressor/compressor.h"
#include "compressor/sonic.h"
#include "compressor/testing/history_eval.h"

using nexuskv::compressor::CompressorRegistry;
using nexuskv::compressor::testing::EvaluateHistory;
using nexuskv::compressor::testing::HistoryOptions;
using nexuskv::compressor::testing::LoadRealDialogue;
using nexuskv::compressor::testing::RealDialogue;

int main(int argc, char** argv) {
  std::vector<RealDialogue> dialogues;
  int max_layers = 0;
  int keep_recent = 0;
  bool last_only = false;  // only the whole history (the eval's setting), not every prefix
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--layers=", 9) == 0) {
      max_layers = std::atoi(argv[i] + 9);
      continue;
    }
    if (std::strncmp(argv[i], "--keep_recent=", 14) == 0) {
      keep_recent = std::atoi(argv[i] + 14);
      continue;
    }
    if (std::strcmp(argv[i], "--last_only") == 0) {
      last_only = true;
      continue;
    }
    auto d = LoadRealDialogue(argv[i]);
    if (!d.ok()) {
      std::fprintf(stderr, "%s\n", d.status().ToString().c_str());
      return 1;
    }
    dialogues.push_back(*std::move(d));
  }
  const CompressorRegistry& registry = CompressorRegistry::Default();
  // Variants for the ablations in docs/experiments/sonic-ladder.md.
  const std::unique_ptr<nexuskv::compressor::Compressor> uniform_proxy =
      nexuskv::compressor::NewSonicCompressor({.proxy_rows = 0});
  struct Row {
    const char* label;
    const char* method;
    bool bias_free;
    bool proxy;
    const nexuskv::compressor::Compressor* custom = nullptr;
  };
  const Row rows[] = {{"STREAMING_LLM", "STREAMING_LLM", false, false},
                      {"H2O", "H2O", false, false},
                      {"SNAPKV", "SNAPKV", false, false},
                      {"SONIC", "SONIC", false, false},
                      {"SONIC bias-free", "SONIC", true, false},
                      {"SONIC proxy (no probes)", "SONIC", false, true},
                      {"SONIC rowless (no probes)", "SONIC", false, true, uniform_proxy.get()},
                      {"H2O proxy (no probes)", "H2O", false, true}};
  const char* only = std::getenv("SONIC_QUALITY_ROWS");  // substring filter on labels
  for (double ratio : {0.5, 0.2}) {
    for (const Row& row : rows) {
      if (only != nullptr && std::strstr(row.label, only) == nullptr) continue;
      double sum = 0.0, kept = 0.0;
      long samples = 0;
      for (const RealDialogue& d : dialogues) {
        HistoryOptions o{.keep_ratio = ratio,
                         .keep_recent_turns = keep_recent,
                         .min_history_turns = last_only ? static_cast<int>(d.turns.size()) : 2,
                         .bias_free = row.bias_free,
                         .drop_probes = row.proxy,
                         .max_layers = max_layers};
        auto e = EvaluateHistory(d, row.custom ? *row.custom : *registry.Find(row.method), o);
        if (!e.ok()) {
          std::fprintf(stderr, "%s: %s\n", row.label, e.status().ToString().c_str());
          return 1;
        }
        sum += e->mean_relative_error * e->samples;
        samples += e->samples;
        kept += e->kept_ratio;
      }
      std::printf("keep %.1f  %-24s rel_error %.4f  kept %.3f  (%ld samples)\n", ratio, row.label,
                  samples ? sum / samples : 0.0, kept / dialogues.size(), samples);
    }
  }
  return 0;
}
