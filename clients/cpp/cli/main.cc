// nexuskv: the command-line client. Parses the command line and dispatches to commands.h.
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "clients/cpp/cli/command_line.h"
#include "clients/cpp/cli/commands.h"

int main(int argc, char** argv) {
  using namespace nexuskv::cli;
  absl::StatusOr<CommandLine> cl = CommandLine::Parse(argc, argv, {"json", "no-bias", "help"});
  if (!cl.ok()) return UsageError(cl.status());
  absl::StatusOr<bool> help = cl->Bool("help");
  if (!help.ok()) return UsageError(help.status());
  const std::vector<std::string>& args = cl->positionals();
  const bool help_command = !args.empty() && args[0] == "help";
  if (*help || help_command) {
    // `nexuskv get --help` and `nexuskv help get`: the command's page; otherwise the overview.
    const size_t command = help_command ? 1 : 0;
    if (args.size() <= command) {
      std::cout << HelpText();
      return kExitOk;
    }
    absl::StatusOr<std::string> text = CommandHelpText(args[command]);
    if (!text.ok()) return UsageError(text.status());
    std::cout << *text;
    return kExitOk;
  }
  if (cl->positionals().empty()) {
    std::cerr << HelpText();
    return kExitUsage;
  }
  absl::StatusOr<GlobalOptions> options = ReadGlobalOptions(*cl);
  if (!options.ok()) return UsageError(options.status());

  using Command = int (*)(CommandLine&, const GlobalOptions&);
  static const std::map<std::string, Command> kCommands = {
      {"ls", RunList}, {"show", RunShow}, {"rm", RunRemove},
      {"get", RunGet}, {"put", RunPut},   {"demo-turn", RunDemoTurn},
  };
  const auto it = kCommands.find(cl->positionals()[0]);
  if (it == kCommands.end()) {
    return UsageError(
        absl::InvalidArgumentError("unknown command \"" + cl->positionals()[0] + "\""));
  }
  return it->second(*cl, *options);
}
