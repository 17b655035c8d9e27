// ls, show and rm.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "clients/cpp/cli/commands.h"
#include "clients/cpp/cli/format.h"
#include "clients/cpp/cli/turn_file.h"

namespace nexuskv::cli {

int RunList(CommandLine& cl, const GlobalOptions& options) {
  const std::optional<std::string> prefix = cl.String("prefix");
  if (absl::Status s = CheckArguments(cl, 0, "nexuskv ls [--prefix P]"); !s.ok()) {
    return UsageError(s);
  }
  absl::StatusOr<std::unique_ptr<client::Client>> client = ConnectClient(options);
  if (!client.ok()) return OperationError(client.status());
  absl::StatusOr<std::vector<v1::SessionInfo>> sessions =
      (*client)->ListAllSessions(prefix.value_or(""));
  if (!sessions.ok()) return OperationError(sessions.status());

  if (options.json) {
    v1::ListSessionsResponse all;
    for (v1::SessionInfo& s : *sessions) *all.add_sessions() = std::move(s);
    std::cout << ToJson(all) << "\n";
    return kExitOk;
  }
  if (sessions->empty()) {
    std::cout << "no sessions" << (prefix ? absl::StrCat(" with prefix \"", *prefix, "\"") : "")
              << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const v1::SessionInfo& s : *sessions) {
    rows.push_back({s.session_id(), absl::StrCat(s.num_turns()), absl::StrCat(s.total_tokens()),
                    HumanBytes(s.raw_bytes()), HumanBytes(s.compressed_bytes()),
                    s.model().model_id(), FormatUnixMillis(s.update_time_unix_ms())});
  }
  PrintTable(std::cout, {"SESSION", "TURNS", "TOKENS", "RAW", "COMPRESSED", "MODEL", "UPDATED"},
             rows, {1, 2, 3, 4});
  return kExitOk;
}

int RunShow(CommandLine& cl, const GlobalOptions& options) {
  if (absl::Status s = CheckArguments(cl, 1, "nexuskv show SESSION"); !s.ok()) {
    return UsageError(s);
  }
  absl::StatusOr<std::unique_ptr<client::Client>> client = ConnectClient(options);
  if (!client.ok()) return OperationError(client.status());
  absl::StatusOr<v1::SessionInfo> info = (*client)->GetSession(cl.positionals()[1]);
  if (!info.ok()) return OperationError(info.status());

  if (options.json) {
    std::cout << ToJson(*info) << "\n";
    return kExitOk;
  }
  PrintTable(std::cout, {"session", info->session_id()},
             {
                 {"model", DescribeModel(info->model())},
                 {"turns", absl::StrCat(info->num_turns())},
                 {"tokens", absl::StrCat(info->total_tokens())},
                 {"next position", absl::StrCat(info->next_position())},
                 {"raw", HumanBytes(info->raw_bytes())},
                 {"compressed", HumanBytes(info->compressed_bytes())},
                 {"created", FormatUnixMillis(info->create_time_unix_ms())},
                 {"updated", FormatUnixMillis(info->update_time_unix_ms())},
             });
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows;
  for (const v1::TurnInfo& t : info->turns()) {
    const std::string positions =
        t.num_tokens() == 0
            ? "-"
            : absl::StrCat(t.first_position(), "..", t.first_position() + t.num_tokens() - 1);
    rows.push_back({absl::StrCat(t.turn()), std::string(RoleName(t.role())),
                    absl::StrCat(t.num_tokens()), positions, absl::StrCat(t.num_probe_queries()),
                    t.raw_dropped() ? "dropped" : HumanBytes(t.raw_bytes()), DescribeFits(t)});
  }
  PrintTable(std::cout, {"TURN", "ROLE", "TOKENS", "POSITIONS", "PROBES", "RAW", "FITS"}, rows,
             {0, 2, 4, 5});
  for (const v1::TurnInfo& t : info->turns()) {
    for (const v1::FitStatus& fit : t.fits()) {
      if (fit.state() != v1::FIT_FAILED) continue;
      std::cout << "turn " << t.turn() << ": the " << v1::Method_Name(fit.method())
                << " fit failed (" << fit.error() << "); answers serve the turn from its raw KV\n";
    }
  }
  std::cout << "Fits are computed in the background after each put; 'compressed' grows as they "
               "are stored.\n";
  return kExitOk;
}

int RunRemove(CommandLine& cl, const GlobalOptions& options) {
  if (absl::Status s = CheckArguments(cl, 1, "nexuskv rm SESSION"); !s.ok()) return UsageError(s);
  absl::StatusOr<std::unique_ptr<client::Client>> client = ConnectClient(options);
  if (!client.ok()) return OperationError(client.status());
  const std::string& session = cl.positionals()[1];
  absl::StatusOr<v1::DeleteSessionResponse> deleted = (*client)->DeleteSession(session);
  if (!deleted.ok()) return OperationError(deleted.status());
  if (options.json) {
    std::cout << ToJson(*deleted) << "\n";
  } else {
    std::cout << "deleted session " << session << ": " << deleted->deleted_turns()
              << (deleted->deleted_turns() == 1 ? " turn, " : " turns, ")
              << HumanBytes(deleted->freed_bytes()) << " freed\n";
  }
  return kExitOk;
}

}  // namespace nexuskv::cli
