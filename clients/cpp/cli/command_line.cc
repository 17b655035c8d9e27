#include "clients/cpp/cli/command_line.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace nexuskv::cli {
namespace {

std::string Normalize(std::string_view name) {
  std::string out(name);
  std::replace(out.begin(), out.end(), '_', '-');
  return out;
}

}  // namespace

absl::StatusOr<CommandLine> CommandLine::Parse(int argc, const char* const* argv,
                                               const std::set<std::string>& bool_flags) {
  CommandLine cl;
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (flags_done || arg == "-" || !arg.starts_with("-")) {
      cl.positionals_.emplace_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    if (!arg.starts_with("--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option ", std::string(arg), " (flags are spelled --name)"));
    }
    std::string_view body = arg.substr(2);
    std::string name;
    std::string value;
    const size_t eq = body.find('=');
    if (eq != std::string_view::npos) {
      name = Normalize(body.substr(0, eq));
      value = std::string(body.substr(eq + 1));
    } else {
      name = Normalize(body);
      if (bool_flags.count(name) > 0) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    if (name.empty())
      return absl::InvalidArgumentError(absl::StrCat("malformed flag ", std::string(arg)));
    if (!cl.flags_.emplace(name, value).second) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
  }
  return cl;
}

std::optional<std::string> CommandLine::String(std::string_view name) {
  used_.insert(std::string(name));
  const auto it = flags_.find(std::string(name));
  if (it == flags_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::optional<uint64_t>> CommandLine::Unsigned(std::string_view name, uint64_t max) {
  const std::optional<std::string> text = String(name);
  if (!text) return std::nullopt;
  uint64_t value = 0;
  if (text->empty() || (*text)[0] == '-' || !absl::SimpleAtoi(*text, &value) || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", std::string(name), "=", *text, ": expected an integer in 0..", max));
  }
  return value;
}

absl::StatusOr<std::optional<double>> CommandLine::Double(std::string_view name) {
  const std::optional<std::string> text = String(name);
  if (!text) return std::nullopt;
  double value = 0;
  if (!absl::SimpleAtod(*text, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", std::string(name), "=", *text, ": expected a number"));
  }
  return value;
}

absl::StatusOr<bool> CommandLine::Bool(std::string_view name) {
  const std::optional<std::string> text = String(name);
  if (!text) return false;
  if (*text == "true" || *text == "1") return true;
  if (*text == "false" || *text == "0") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("--", std::string(name), "=", *text, ": expected true or false"));
}

absl::Status CommandLine::CheckAllUsed() const {
  for (const auto& [name, value] : flags_) {
    if (used_.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return absl::OkStatus();
}

}  // namespace nexuskv::cli
