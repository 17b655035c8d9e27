#include "clients/cpp/cli/format.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "clients/cpp/client.h"

namespace nexuskv::cli {

std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string FormatUnixMillis(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string DescribeModel(const nexuskv::v1::ModelSpec& model) {
  const absl::StatusOr<DType> dtype = ToTensorDType(model.dtype());
  return absl::StrCat(model.model_id(), " (L=", model.num_layers(), " H=", model.num_kv_heads(),
                      " Hq=", model.num_query_heads(), " D=", model.head_dim(), " ",
                      dtype.ok() ? std::string(DTypeName(*dtype)) : "unknown dtype", ")");
}

std::string DescribeFits(const nexuskv::v1::TurnInfo& turn) {
  if (turn.fits().empty()) return "-";
  std::vector<std::string> parts;
  for (const nexuskv::v1::FitStatus& fit : turn.fits()) {
    std::string state = fit.state() == nexuskv::v1::FIT_STORED      ? "stored"
                        : fit.state() == nexuskv::v1::FIT_FAILED    ? "failed"
                        : fit.state() == nexuskv::v1::FIT_ON_DEMAND ? "on-demand"
                                                                    : "pending";
    parts.push_back(
        absl::StrCat(absl::AsciiStrToLower(nexuskv::v1::Method_Name(fit.method())), ":", state));
  }
  return absl::StrJoin(parts, " ");
}

void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows,
                const std::vector<size_t>& right_aligned) {
  std::vector<size_t> widths(header.size());
  for (size_t c = 0; c < header.size(); ++c) widths[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < widths.size(); ++c) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  }
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size() && c < widths.size(); ++c) {
      const bool last = c + 1 == row.size();
      const std::string pad(widths[c] - row[c].size(), ' ');
      const bool right =
          std::find(right_aligned.begin(), right_aligned.end(), c) != right_aligned.end();
      if (right) line += pad;
      line += row[c];
      if (!right && !last) line += pad;
      if (!last) line += "  ";
    }
    out << line << "\n";
  };
  print_row(header);
  for (const auto& row : rows) print_row(row);
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  // Only fails for Any fields whose type cannot be resolved; the contract has none.
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) return absl::StrCat("{\"error\":\"cannot print ", message.GetTypeName(), "\"}");
  return json;
}

}  // namespace nexuskv::cli
