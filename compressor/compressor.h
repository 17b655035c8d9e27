// Compressor: fits one turn's KV into fewer entries per kv head, on the CPU (the reference).
//
// Each method is a Compressor registered by name ("FULL", "H2O", "STREAMING_LLM", "SNAPKV", and
// later "SONIC"). Work is split in two so that one stored result serves every budget:
//   Fit(layer)                -> opaque bytes, computed once per (turn, layer) off the request path
//                                and stored (for selection methods, a ranking of the tokens).
//   Materialize(layer, fit, n) -> the n entries per kv head that the method keeps at that budget.
// Allocate() splits a session-wide budget across turns first.
//
//   const Compressor* h2o = CompressorRegistry::Default().Find("H2O");
//   NEXUSKV_ASSIGN_OR_RETURN(std::string fit, h2o->Fit(layer));
//   NEXUSKV_ASSIGN_OR_RETURN(LayerEntries kept, h2o->Materialize(layer, fit, 32));
//
// All math is float32; callers decode float16/bfloat16 first (tensor/dtype.h). Compressors are
// stateless and thread-safe; the registry is immutable after construction.
#ifndef NEXUSKV_COMPRESSOR_COMPRESSOR_H_
#define NEXUSKV_COMPRESSOR_COMPRESSOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace nexuskv::compressor {

// One layer of one segment, in float32. Borrowed: the caller keeps the buffers alive.
struct LayerView {
  int num_kv_heads = 0;     // H
  int num_query_heads = 0;  // Hq, a multiple of H; query head h belongs to kv head h / (Hq / H).
  int num_tokens = 0;       // T >= 1
  int head_dim = 0;         // D
  int num_probes = 0;       // P, 0..T: queries of the segment's last P tokens.
  int64_t first_position = 0;  // Absolute position of token 0.
  bool session_start = false;  // Turn 0: its first tokens are the session's attention sinks.
  std::span<const float> keys;    // [H, T, D], post-rotary.
  std::span<const float> values;  // [H, T, D]
  std::span<const float> probes;  // [Hq, P, D]; empty when P = 0.
};

// The entries a method keeps for one layer of one segment: n per kv head.
struct LayerEntries {
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_entries = 0;             // n, per kv head.
  std::vector<float> keys;         // [H, n, D]
  std::vector<float> values;       // [H, n, D]
  std::vector<float> bias;         // [H, n] log-weights; empty when the method adds none.
  std::vector<int64_t> positions;  // [H, n], ascending within each head.
};

// What Allocate knows of a turn.
struct TurnShape {
  int64_t num_tokens = 0;
  bool session_start = false;
};

class Compressor {
 public:
  virtual ~Compressor() = default;

  // The method's name as in the contract's Method enum, e.g. "H2O".
  virtual std::string_view name() const = 0;

  // Whether Fit does work worth storing. FULL and STREAMING_LLM need none: Fit returns "".
  virtual bool has_fit() const = 0;

  // Per-layer fit, computed once per turn. InvalidArgument when the view's shape is inconsistent.
  virtual absl::StatusOr<std::string> Fit(const LayerView& layer) const = 0;

  // The n entries per kv head kept at this budget, from the layer and its stored fit.
  // InvalidArgument when n is outside [0, T], or the fit does not belong to this layer's shape.
  virtual absl::StatusOr<LayerEntries> Materialize(const LayerView& layer, std::string_view fit,
                                                   int n) const = 0;

  // Splits `budget` entries per kv head across turns (result[i] <= turns[i].num_tokens, sum ==
  // min(budget, total tokens)). The default is proportional to turn length, largest remainder
  // first, ties to the later turn.
  virtual std::vector<int64_t> Allocate(std::span<const TurnShape> turns, int64_t budget) const;
};

// Methods by name. Thread-safe for lookups.
class CompressorRegistry {
 public:
  // FULL, STREAMING_LLM, H2O and SNAPKV with their default parameters.
  static const CompressorRegistry& Default();

  explicit CompressorRegistry(std::vector<std::unique_ptr<Compressor>> compressors);

  // nullptr when no method has that name.
  const Compressor* Find(std::string_view name) const;

  // Registered names, in registration order.
  std::vector<std::string_view> names() const;

 private:
  std::vector<std::unique_ptr<Compressor>> compressors_;
};

}  // namespace nexuskv::compressor

#endif  // NEXUSKV_COMPRESSOR_COMPRESSOR_H_
