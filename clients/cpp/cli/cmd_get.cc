// get: fetch a cache fitted to a budget.
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "clients/cpp/cli/commands.h"
#include "clients/cpp/cli/format.h"
#include "clients/cpp/cli/turn_file.h"
#include "common/status_macros.h"

namespace nexuskv::cli {
namespace {

constexpr std::string_view kUsage =
    "nexuskv get SESSION [--keep-ratio R | --max-tokens N | --max-bytes B] [--method M] "
    "[--keep-recent-turns N] [--first-turn N] [--last-turn N] [--dtype D] [--no-bias] "
    "[--out FILE]";

struct GetOptions {
  v1::GetCacheRequest request;
  std::optional<std::string> out;
};

absl::StatusOr<v1::Method> ParseMethod(std::string_view name) {
  const std::string n = absl::AsciiStrToLower(std::string(name));
  if (n == "full") return v1::FULL;
  if (n == "sonic") return v1::SONIC;
  if (n == "h2o") return v1::H2O;
  if (n == "streaming_llm" || n == "streaming-llm" || n == "streamingllm") return v1::STREAMING_LLM;
  if (n == "snapkv") return v1::SNAPKV;
  return absl::InvalidArgumentError(absl::StrCat(
      "--method=", std::string(name), ": expected full, sonic, h2o, streaming_llm or snapkv"));
}

absl::StatusOr<GetOptions> ReadGetOptions(CommandLine& cl) {
  GetOptions o;
  v1::GetCacheRequest& r = o.request;
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<double> keep_ratio, cl.Double("keep-ratio"));
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> max_tokens, cl.Unsigned("max-tokens"));
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> max_bytes, cl.Unsigned("max-bytes"));
  const int budgets = keep_ratio.has_value() + max_tokens.has_value() + max_bytes.has_value();
  if (budgets > 1) {
    return absl::InvalidArgumentError(
        "give at most one of --keep-ratio, --max-tokens, --max-bytes");
  }
  if (keep_ratio) {
    if (!(*keep_ratio > 0 && *keep_ratio <= 1)) {
      return absl::InvalidArgumentError("--keep-ratio must be in (0, 1]");
    }
    r.mutable_budget()->set_keep_ratio(*keep_ratio);
  }
  if (max_tokens) r.mutable_budget()->set_max_tokens(*max_tokens);
  if (max_bytes) r.mutable_budget()->set_max_bytes(*max_bytes);
  if (std::optional<std::string> method = cl.String("method")) {
    NEXUSKV_ASSIGN_OR_RETURN(const v1::Method m, ParseMethod(*method));
    r.set_method(m);
  }
  if (budgets == 0 && r.method() != v1::FULL) {
    return absl::InvalidArgumentError(
        "give a budget (--keep-ratio, --max-tokens or --max-bytes) unless --method full");
  }
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> recent,
                           cl.Unsigned("keep-recent-turns", UINT32_MAX));
  r.set_keep_recent_turns(static_cast<uint32_t>(recent.value_or(0)));
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> first, cl.Unsigned("first-turn", UINT32_MAX));
  r.set_first_turn(static_cast<uint32_t>(first.value_or(0)));
  NEXUSKV_ASSIGN_OR_RETURN(std::optional<uint64_t> last, cl.Unsigned("last-turn", UINT32_MAX));
  if (last) r.set_last_turn(static_cast<uint32_t>(*last));
  if (std::optional<std::string> dtype_name = cl.String("dtype")) {
    const std::optional<DType> dtype = ParseDType(*dtype_name);
    if (!dtype) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dtype=", *dtype_name, ": expected float16, bfloat16 or float32"));
    }
    r.set_output_dtype(ToWireDType(*dtype));
  }
  NEXUSKV_ASSIGN_OR_RETURN(const bool no_bias, cl.Bool("no-bias"));
  if (no_bias) r.set_bias_mode(v1::BIAS_MODE_NONE);
  o.out = cl.String("out");
  if (o.out && o.out->empty()) return absl::InvalidArgumentError("--out must name a file");
  NEXUSKV_RETURN_IF_ERROR(CheckArguments(cl, 1, kUsage));
  r.set_session_id(cl.positionals()[1]);
  return o;
}

std::string EntriesSummary(const v1::CacheHeader& h) {
  if (h.entries_per_layer().empty()) return "-";
  const uint32_t first = h.entries_per_layer(0);
  for (uint32_t n : h.entries_per_layer()) {
    if (n != first) return absl::StrJoin(h.entries_per_layer(), ", ");
  }
  return absl::StrCat(first, " (every layer)");
}

void PrintHeader(const v1::CacheHeader& h) {
  const double ratio =
      h.original_tokens() == 0 || h.entries_per_layer().empty()
          ? 0.0
          : static_cast<double>(h.entries_per_layer(0)) / static_cast<double>(h.original_tokens());
  std::vector<std::vector<std::string>> rows = {
      {"model", DescribeModel(h.model())},
      {"method", v1::Method_Name(h.method())},
      {"entries/layer", EntriesSummary(h)},
      {"original tokens", absl::StrCat(h.original_tokens(), " (layer 0 keeps ",
                                       absl::StrFormat("%.1f%%", 100.0 * ratio), ")")},
      {"next position", absl::StrCat(h.next_position())},
      {"bias", h.has_bias() ? "yes" : "no"},
      {"cache bytes", absl::StrCat(HumanBytes(h.cache_bytes()), " (", h.cache_bytes(), ")")},
  };
  if (!h.notes().empty()) rows.push_back({"notes", h.notes()});
  PrintTable(std::cout, {"session", h.session_id()}, rows);
  std::cout << "\n";
  std::vector<std::vector<std::string>> turns;
  for (const v1::TurnAllocation& t : h.turns()) {
    turns.push_back({absl::StrCat(t.turn()), std::string(RoleName(t.role())),
                     absl::StrCat(t.original_tokens()), absl::StrCat(t.kept_entries()),
                     t.raw() ? "raw" : "compressed", v1::Method_Name(t.method())});
  }
  PrintTable(std::cout, {"TURN", "ROLE", "ORIGINAL", "KEPT", "FORM", "METHOD"}, turns, {0, 2, 3});
}

}  // namespace

int RunGet(CommandLine& cl, const GlobalOptions& options) {
  absl::StatusOr<GetOptions> get = ReadGetOptions(cl);
  if (!get.ok()) return UsageError(get.status());
  absl::StatusOr<std::unique_ptr<client::Client>> client = ConnectClient(options);
  if (!client.ok()) return OperationError(client.status());
  absl::StatusOr<client::Cache> cache = (*client)->GetCache(get->request);
  if (!cache.ok()) return OperationError(cache.status());

  if (options.json) {
    std::cout << ToJson(cache->header) << "\n";
  } else {
    PrintHeader(cache->header);
  }
  if (get->out) {
    absl::StatusOr<uint64_t> written = WriteCacheFile(*cache, *get->out);
    if (!written.ok()) return OperationError(written.status());
    // In JSON mode stdout carries only the header.
    (options.json ? std::cerr : std::cout)
        << "wrote " << *get->out << " (" << HumanBytes(*written) << ")\n";
  }
  return kExitOk;
}

}  // namespace nexuskv::cli
