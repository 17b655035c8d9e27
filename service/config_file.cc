#include "service/config_file.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace nexuskv::service {
namespace {

absl::Status Bad(std::string_view file, const YAML::Mark& mark, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config file ", std::string(file), ", line ",
                                                 mark.line + 1, ": ", std::string(what)));
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ConfigFileArguments(
    std::string_view yaml, std::string_view file_name,
    const std::function<bool(std::string_view)>& is_flag) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return Bad(file_name, e.mark, absl::StrCat("not YAML (", e.msg, ")"));
  }
  if (root.IsNull()) return std::vector<std::string>{};
  if (!root.IsMap()) {
    return Bad(file_name, root.Mark(), "expected a mapping of flag names to values");
  }
  std::vector<std::string> args;
  std::set<std::string> seen;
  for (const auto& entry : root) {
    if (!entry.first.IsScalar()) return Bad(file_name, entry.first.Mark(), "a key must be a name");
    const std::string name = entry.first.Scalar();
    if (name == "config") {
      return Bad(file_name, entry.first.Mark(), "a config file cannot name another one");
    }
    if (!is_flag(name)) {
      return Bad(file_name, entry.first.Mark(),
                 absl::StrCat("unknown flag \"", name, "\" (nexuskv-server --help lists them)"));
    }
    if (!seen.insert(name).second) {
      return Bad(file_name, entry.first.Mark(), absl::StrCat("\"", name, "\" is given twice"));
    }
    if (!entry.second.IsScalar()) {
      return Bad(file_name, entry.second.Mark(),
                 absl::StrCat("the value of \"", name, "\" must be a single value"));
    }
    args.push_back(absl::StrCat("--", name, "=", entry.second.Scalar()));
  }
  return args;
}

absl::StatusOr<std::vector<std::string>> ArgumentsWithConfigFile(
    int argc, const char* const* argv, const std::function<bool(std::string_view)>& is_flag) {
  std::vector<std::string> rest;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") {  // what follows is not a flag
      rest.insert(rest.end(), argv + i, argv + argc);
      break;
    }
    if (arg.starts_with("--config=")) {
      path = std::string(arg.substr(9));
    } else if (arg == "--config" && i + 1 < argc) {
      path = argv[++i];
    } else {
      rest.emplace_back(arg);
    }
  }
  std::vector<std::string> out = {argc > 0 ? argv[0] : "nexuskv-server"};
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
    std::stringstream text;
    text << in.rdbuf();
    absl::StatusOr<std::vector<std::string>> from_file =
        ConfigFileArguments(text.str(), path, is_flag);
    if (!from_file.ok()) return from_file.status();
    out.insert(out.end(), from_file->begin(), from_file->end());
  }
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

}  // namespace nexuskv::service
